//! OpenRouter's video API (`/api/v1/videos`): submit → `202 {id, polling_url, status:
//! "pending"}`, poll, download; `callback_url` is the job's webhook, delivered by the
//! native pipeline in OpenRouter's format and signature. Errors on `/api/v1/…` take
//! OpenRouter's shape, `{"error": {"code": <HTTP status>, "message", "metadata"}}`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use mediagate_engine::jobs::job::{Job, JobKind};
use mediagate_engine::webhooks::openrouter;
use serde_json::{Map, Value, json};

use super::videos::find_video;
use super::{client_param, model_id, model_name, named_model, request_object, string_field};
use crate::api::auth::Authed;
use crate::api::content;
use crate::api::error::{ApiError, ApiResult};
use crate::api::jobs::intake;
use crate::api::{AppState, JsonBody, Params, Path};

const FIELDS: &[&str] = &[
    "model",
    "prompt",
    "duration",
    "resolution",
    "aspect_ratio",
    "size",
    "frame_images",
    "input_references",
    "generate_audio",
    "seed",
    "callback_url",
    "provider",
    "models",
    "metadata",
];

/// Input fields OpenRouter and the native API name alike.
const SAME_NAME: &[&str] = &[
    "prompt",
    "duration",
    "resolution",
    "aspect_ratio",
    "size",
    "generate_audio",
    "seed",
];

/// Native parameter names as the client wrote them.
const PARAMS: &[(&str, &str)] = &[
    ("input.image", "frame_images"),
    ("input.reference_images", "input_references"),
    ("webhook.url", "callback_url"),
    ("input.prompt", "prompt"),
    ("input.duration", "duration"),
    ("input.resolution", "resolution"),
    ("input.aspect_ratio", "aspect_ratio"),
    ("input.size", "size"),
    ("input.generate_audio", "generate_audio"),
    ("input.seed", "seed"),
];

/// The job's end events, which OpenRouter calls back with.
const CALLBACK_EVENTS: &[&str] = &[
    "job.completed",
    "job.failed",
    "job.cancelled",
    "job.expired",
];

/// `POST /api/v1/videos` → `202 {id, polling_url, status: "pending"}`.
pub async fn create(
    State(state): State<AppState>,
    Authed(caller): Authed,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult<Response> {
    let obj = request_object(&body.value, FIELDS)?;
    let catalog = &state.engine.config.catalog;
    let name = model_name(obj, None)?;
    named_model(catalog, name, JobKind::Video)?;
    let mut input = Map::new();
    for field in SAME_NAME {
        if let Some(v) = obj.get(*field).filter(|v| !v.is_null()) {
            input.insert((*field).into(), v.clone());
        }
    }
    // The first frame is the native `image`; references are `reference_images`.
    // `frame_images` wins over `input_references` when both are given, as on OpenRouter.
    let frames = image_urls(obj.get("frame_images"), "frame_images")?;
    let references = image_urls(obj.get("input_references"), "input_references")?;
    if let Some((url, kind)) = frames.first() {
        if frames.len() > 1 || kind.as_deref().is_some_and(|k| k != "first_frame") {
            return Err(ApiError::invalid_field(
                "frame_images",
                "only a first_frame image is supported here",
            ));
        }
        input.insert("image".into(), json!(url));
    } else if !references.is_empty() {
        let urls: Vec<&String> = references.iter().map(|(u, _)| u).collect();
        input.insert("reference_images".into(), json!(urls));
    }
    let mut native = json!({"model": model_id(catalog, name), "input": input});
    for field in ["models", "provider", "metadata"] {
        if let Some(v) = obj.get(field) {
            native[field] = v.clone();
        }
    }
    if let Some(url) = obj.get("callback_url").filter(|v| !v.is_null()) {
        native["webhook"] = json!({
            "url": string_field(url, "callback_url")?,
            "events": CALLBACK_EVENTS,
            "format": openrouter::FORMAT,
        });
    }
    let (job, _) = intake(&state, &caller, &headers, &native, &body.raw)
        .await
        .map_err(|e| client_param(e, PARAMS))?;
    let answer = json!({
        "id": job.id,
        "polling_url": polling_url(&state, &job.id),
        "status": "pending",
    });
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// `[{type: "image_url", image_url: {url}, frame_type?}]` → (url, frame_type) pairs.
fn image_urls(value: Option<&Value>, param: &str) -> ApiResult<Vec<(String, Option<String>)>> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(items) = value.as_array() else {
        return Err(ApiError::invalid_field(
            param,
            format!("{param} must be an array"),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let url = item["image_url"]["url"].as_str().ok_or_else(|| {
                ApiError::invalid_field(
                    &format!("{param}[{i}]"),
                    format!("{param}[{i}] must be {{\"type\": \"image_url\", \"image_url\": {{\"url\": …}}}}"),
                )
            })?;
            let kind = item.get("frame_type").and_then(Value::as_str).map(str::to_owned);
            Ok((url.to_owned(), kind))
        })
        .collect()
}

fn polling_url(state: &AppState, id: &str) -> String {
    format!("{}/api/v1/videos/{id}", state.engine.config.public_url)
}

/// `GET /api/v1/videos/{id}`.
pub async fn retrieve(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = find_video(&state, &caller.account_id, &id).await?;
    Ok(Json(video_status(&state, &job)))
}

/// `GET /api/v1/videos/{id}/content?index=0`.
pub async fn content(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let job = find_video(&state, &caller.account_id, &id).await?;
    content::serve(&state, &job, content::output_index(&params)?, &headers).await
}

/// A video job as OpenRouter's poll answer, the same `data` its callbacks carry.
fn video_status(state: &AppState, job: &Job) -> Value {
    let engine = &state.engine;
    openrouter::video_status(&engine.config.public_url, &engine.job_json(job))
}

/// Errors on `/api/v1/…` in OpenRouter's shape: `code` is the HTTP status; our type, code
/// and param stay under `metadata`.
pub async fn error_shape(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || !is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    // Error bodies are a few hundred bytes of our own making.
    let Ok(bytes) = body.collect().await.map(|c| c.to_bytes()) else {
        return ApiError::internal().into_response();
    };
    let Ok(Value::Object(mut outer)) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let Some(Value::Object(error)) = outer.remove("error") else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let shaped = json!({"error": {
        "code": status.as_u16(),
        "message": error.get("message"),
        "metadata": {
            "type": error.get("type"),
            "code": error.get("code"),
            "param": error.get("param"),
        },
    }});
    let body = shaped.to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
