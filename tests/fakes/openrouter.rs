//! OpenRouter's chat completions (`chat`), and its video API as documented: `POST /api/v1/videos` (Bearer) answers 202
//! `{id, polling_url, status: "pending"}`; `GET /api/v1/videos/{id}` goes `pending` →
//! `in_progress` → `completed` with `unsigned_urls` and `usage.cost`, or `failed` with
//! `error` when the provider's content policy blocks it;
//! `GET /api/v1/videos/{id}/content?index=0` streams the MP4 and needs the key too.
//! Errors are `{"error": {"code", "message"}}`. A job submitted with `callback_url` is
//! POSTed there once it ends (`{type, created_at, data}`), signed with the workspace's
//! secret in `X-OpenRouter-Signature: t=…,v1=<hex HMAC-SHA256 of "{t},{body}">`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Behaviour, Fake, FakeState, chat, key, serve};

pub const CONTENT_TYPE: &str = "video/mp4";

/// The variable holding the workspace's callback signing secret (set in
/// `.cargo/config.toml`); mediagate is given its name as `webhook_secret_env`.
pub const SECRET_VAR: &str = "TEST_OPENROUTER_WEBHOOK_SECRET";

fn webhook_secret() -> String {
    std::env::var(SECRET_VAR).unwrap_or_else(|_| {
        panic!("{SECRET_VAR} is not set; cargo sets it from .cargo/config.toml")
    })
}

pub async fn start(behaviour: Behaviour) -> Fake {
    let state = FakeState::new(behaviour);
    let router = Router::new()
        .route("/api/v1/videos", post(submit))
        .route("/api/v1/videos/{id}", get(job))
        .route("/api/v1/videos/{id}/content", get(content))
        .with_state(state.clone())
        .merge(
            Router::new()
                .route("/api/v1/chat/completions", post(chat::completions))
                .with_state(chat::Chat {
                    state: state.clone(),
                    dialect: chat::Dialect::OpenRouter,
                }),
        );
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

async fn submit(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
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
    state.accept(&id);
    if let Some(url) = body["callback_url"].as_str() {
        let callback = state.call_back(url.to_owned(), id.clone(), {
            let id = id.clone();
            move |state| callback_request(state, &id)
        });
        if state.behaviour.call_back_first {
            callback.await.unwrap();
        }
    }
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
    headers: HeaderMap,
) -> Response {
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
    let mut video = finished_video(&state, &id);
    video["polling_url"] = json!(polling_url);
    axum::Json(video).into_response()
}

/// A finished job as the API and its callbacks describe it.
fn finished_video(state: &FakeState, id: &str) -> Value {
    if state.behaviour.refuse {
        return json!({"id": id, "status": "failed", "generation_id": null, "model": null,
            "error": "The request was blocked by the provider's content policy."});
    }
    json!({
        "id": id, "status": "completed", "generation_id": format!("gen-{id}"),
        "model": "openai/sora-2",
        "unsigned_urls": [format!("{}/api/v1/videos/{id}/content?index=0", state.base())],
        "usage": {"cost": 0.4, "is_byok": false},
    })
}

/// The callback for a finished job, signed with the workspace secret (or a wrong one).
fn callback_request(state: &FakeState, id: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let data = finished_video(state, id);
    let status = data["status"].as_str().unwrap().to_owned();
    let body = json!({"type": format!("video.generation.{status}"),
        "created_at": "2026-12-01T12:00:00.000Z", "data": data})
    .to_string();
    let secret = if state.behaviour.bad_callback_signature {
        "not-the-workspace-secret".to_owned()
    } else {
        webhook_secret()
    };
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tag = super::hmac_sha256(secret.as_bytes(), format!("{t},{body}").as_bytes());
    let headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        (
            "x-openrouter-signature".to_owned(),
            format!("t={t},v1={}", hex::encode(tag)),
        ),
        (
            "x-openrouter-idempotency-key".to_owned(),
            format!("{id}-{status}"),
        ),
    ];
    (headers, body.into_bytes())
}

async fn content(
    State(state): State<Arc<FakeState>>,
    Path(_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    if q.get("index").map(String::as_str) != Some("0") {
        return error(StatusCode::NOT_FOUND, "No video at that index");
    }
    if state.behaviour.expire_results {
        return error(StatusCode::NOT_FOUND, "Video not found or expired");
    }
    ([("content-type", CONTENT_TYPE)], state.media(CONTENT_TYPE)).into_response()
}
