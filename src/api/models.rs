//! `GET /v1/models`: the catalog.

use axum::Json;
use mediagate_workers::catalog::MODELS;
use mediagate_workers::job::JobKind;
use serde_json::{Value, json};

use super::Params;
use super::error::{ApiError, ApiResult};

pub async fn list(params: Params) -> ApiResult<Json<Value>> {
    let mut modality = None;
    for (k, v) in params.0 {
        if k == "output_modality" {
            modality = Some(match v.as_str() {
                "image" => JobKind::Image,
                "video" => JobKind::Video,
                "audio" => JobKind::Audio,
                "text" => return Ok(Json(json!({"object": "list", "data": []}))),
                _ => {
                    return Err(ApiError::invalid(
                        "invalid_field",
                        "output_modality must be image, video, audio or text",
                    )
                    .with_param("output_modality"));
                }
            });
        }
    }
    let data: Vec<Value> = MODELS
        .iter()
        .filter(|m| modality.is_none_or(|k| k == m.kind))
        .map(|m| {
            json!({
                "id": m.id,
                "object": "model",
                "owned_by": m.id.split('/').next().unwrap_or_default(),
                "output_modality": m.kind.as_str(),
                "providers": m.providers.iter().map(|(p, upstream)| json!({"name": p, "model": upstream})).collect::<Vec<_>>(),
                "pricing": {"unit": "job", "usd": "0.0000"},
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
