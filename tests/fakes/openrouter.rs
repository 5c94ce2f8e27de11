//! OpenRouter's video API as documented: `POST /api/v1/videos` (Bearer) answers 202
//! `{id, polling_url, status: "pending"}`; `GET /api/v1/videos/{id}` goes `pending` →
//! `in_progress` → `completed` with `unsigned_urls` and `usage.cost`, or `failed` with
//! `error` when the provider's content policy blocks it;
//! `GET /api/v1/videos/{id}/content?index=0` streams the MP4 and needs the key too.
//! Errors are `{"error": {"code", "message"}}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Behaviour, Fake, FakeState, key, media, serve};

pub const CONTENT_TYPE: &str = "video/mp4";

pub async fn start(behaviour: Behaviour) -> Fake {
    let state = FakeState::new(behaviour);
    let router = Router::new()
        .route("/api/v1/videos", post(submit))
        .route("/api/v1/videos/{id}", get(job))
        .route("/api/v1/videos/{id}/content", get(content))
        .with_state(state.clone());
    serve(router, state).await
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": status.as_u16(), "message": message}})),
    )
        .into_response()
}

fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", key());
    (headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()))
        .then(|| error(StatusCode::UNAUTHORIZED, "No auth credentials found"))
}

async fn submit(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.record(&method, &uri, &headers, &body);
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    if let Some(res) = state.scripted_failure(|status| error(status, &format!("fake {status}"))) {
        return res;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    if body["model"].as_str().is_none_or(str::is_empty)
        || body["prompt"].as_str().is_none_or(str::is_empty)
    {
        return error(StatusCode::BAD_REQUEST, "model and prompt are required");
    }
    let id = format!("vgen-{}", uuid::Uuid::now_v7().simple());
    (
        StatusCode::ACCEPTED,
        axum::Json(
            json!({"id": id, "polling_url": format!("/api/v1/videos/{id}"),
            "status": "pending"}),
        ),
    )
        .into_response()
}

async fn job(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    state.record(&method, &uri, &headers, b"");
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    let polling_url = format!("/api/v1/videos/{id}");
    if state.behaviour.refuse {
        return axum::Json(
            json!({"id": id, "polling_url": polling_url, "status": "failed",
            "error": "The request was blocked by the provider's content policy."}),
        )
        .into_response();
    }
    if !state.poll_ready(&id) {
        return axum::Json(json!({"id": id, "polling_url": polling_url,
            "status": "in_progress"}))
        .into_response();
    }
    axum::Json(json!({
        "id": id, "polling_url": polling_url, "status": "completed",
        "generation_id": format!("gen-{id}"),
        "unsigned_urls": [format!("{}/api/v1/videos/{id}/content?index=0", state.base())],
        "usage": {"cost": 0.4, "is_byok": false},
    }))
    .into_response()
}

async fn content(
    State(state): State<Arc<FakeState>>,
    Path(_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    state.record(&method, &uri, &headers, b"");
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    if q.get("index").map(String::as_str) != Some("0") {
        return error(StatusCode::NOT_FOUND, "No video at that index");
    }
    if state.behaviour.expire_results {
        return error(StatusCode::NOT_FOUND, "Video not found or expired");
    }
    ([("content-type", CONTENT_TYPE)], media(CONTENT_TYPE)).into_response()
}
