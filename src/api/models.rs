//! `GET /v1/models`: the catalog, which is also a valid OpenAI models list (each entry
//! has `id`, `object: "model"`, `created` and `owned_by`).

use axum::Json;
use axum::extract::State;
use mediagate_engine::ErrorCode;
use mediagate_engine::catalog::Modality;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::{AppState, Params};

pub async fn list(State(state): State<AppState>, params: Params) -> ApiResult<Json<Value>> {
    let mut modality = None;
    for (k, v) in params.0 {
        if k == "output_modality" {
            modality = Some(match v.as_str() {
                "image" => Modality::Image,
                "video" => Modality::Video,
                "audio" => Modality::Audio,
                "text" => Modality::Text,
                _ => {
                    return Err(ApiError::invalid(
                        ErrorCode::InvalidField,
                        "output_modality must be image, video, audio or text",
                    )
                    .with_param("output_modality"));
                }
            });
        }
    }
    let engine = &state.engine;
    let data: Vec<Value> = engine
        .config
        .catalog
        .models()
        .filter(|m| modality.is_none_or(|k| k == m.modality))
        .map(|m| {
            let mut entry = m.to_public(|p| engine.serves(m.modality, p));
            entry["created"] = json!(super::compat::models::CREATED);
            entry
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
