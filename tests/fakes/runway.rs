//! Runway as documented: `POST /v1/text_to_video` or `/v1/image_to_video` (Bearer key and
//! an `X-Runway-Version` header, both required) → `{id}`; `GET /v1/tasks/{id}` →
//! `PENDING`, `RUNNING` (with `progress` 0–1) … `SUCCEEDED` with `output[]`, or `FAILED`
//! with `failureCode: SAFETY.INPUT.TEXT` when moderation refuses the prompt;
//! `DELETE /v1/tasks/{id}` cancels. Outputs are signed CloudFront links (no key) that
//! answer 403 once expired. A 429 carries no `Retry-After`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Behaviour, Fake, FakeState, key, media, serve};

pub const CONTENT_TYPE: &str = "video/mp4";

pub async fn start(behaviour: Behaviour) -> Fake {
    let state = FakeState::new(behaviour);
    let router = Router::new()
        .route("/v1/text_to_video", post(submit))
        .route("/v1/image_to_video", post(submit))
        .route("/v1/tasks/{id}", get(task).delete(cancel))
        .route("/outputs/{file}", get(output))
        .with_state(state.clone());
    serve(router, state).await
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

fn refused(headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", key());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "Invalid or missing API key",
        ));
    }
    headers.get("x-runway-version").is_none().then(|| {
        error(
            StatusCode::BAD_REQUEST,
            "The X-Runway-Version header is required",
        )
    })
}

async fn submit(
    State(state): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = refused(&headers) {
        return denied;
    }
    if let Some(status) = state.next_submit_failure() {
        let status = StatusCode::from_u16(status).unwrap();
        return error(status, &format!("fake {status}"));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let image_to_video = uri.path() == "/v1/image_to_video";
    if body["model"].as_str().is_none()
        || (!image_to_video && body["promptText"].as_str().is_none_or(str::is_empty))
        || (image_to_video && body["promptImage"].is_null())
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "Validation of body failed",
                "issues": [{"message": "Required", "path": ["promptText"]}]})),
        )
            .into_response();
    }
    axum::Json(json!({"id": uuid::Uuid::now_v7().to_string()})).into_response()
}

async fn task(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = refused(&headers) {
        return denied;
    }
    let created = "2026-11-22T08:00:00.000Z";
    if state.behaviour.refuse {
        return axum::Json(json!({"id": id, "status": "FAILED", "createdAt": created,
            "failure": "The prompt was flagged by our content moderation system.",
            "failureCode": "SAFETY.INPUT.TEXT"}))
        .into_response();
    }
    if !state.poll_ready(&id) {
        return axum::Json(json!({"id": id, "status": "RUNNING", "createdAt": created,
            "progress": 0.4}))
        .into_response();
    }
    let output = format!(
        "{}/outputs/{id}.mp4?_jwt=eyJhbGciOiJIUzI1NiJ9.fake",
        state.base()
    );
    axum::Json(
        json!({"id": id, "status": "SUCCEEDED", "createdAt": created,
        "output": [output]}),
    )
    .into_response()
}

async fn cancel(headers: HeaderMap) -> Response {
    if let Some(denied) = refused(&headers) {
        return denied;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn output(State(state): State<Arc<FakeState>>, headers: HeaderMap) -> Response {
    if headers.contains_key("authorization") {
        return error(StatusCode::BAD_REQUEST, "the key was sent to the CDN");
    }
    if state.behaviour.expire_results {
        return (
            StatusCode::FORBIDDEN,
            [("content-type", "application/xml")],
            "<Error><Code>AccessDenied</Code><Message>Access denied</Message></Error>",
        )
            .into_response();
    }
    ([("content-type", CONTENT_TYPE)], media(CONTENT_TYPE)).into_response()
}
