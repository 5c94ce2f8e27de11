//! ElevenLabs as documented: `POST /v1/music` {prompt, music_length_ms, model_id} and
//! `POST /v1/sound-generation` {text, duration_seconds, model_id}, key in `xi-api-key`,
//! answer with the MP3 itself (and a `request-id` header). Errors are
//! `{"detail": {"status", "message"}}`: a refused music prompt is a 400 `bad_prompt`, a
//! wrong key a 401 `invalid_api_key`; a 429 carries no `Retry-After`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Behaviour, Fake, FakeState, key, media, serve};

pub const CONTENT_TYPE: &str = "audio/mpeg";

pub async fn start(behaviour: Behaviour) -> Fake {
    let state = FakeState::new(behaviour);
    let router = Router::new()
        .route("/v1/music", post(generate))
        .route("/v1/sound-generation", post(generate))
        .with_state(state.clone());
    serve(router, state).await
}

fn error(status: StatusCode, word: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"detail": {"status": word, "message": message}})),
    )
        .into_response()
}

async fn generate(
    axum::extract::State(state): axum::extract::State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if headers.get("xi-api-key").and_then(|v| v.to_str().ok()) != Some(key().as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Invalid API key",
        );
    }
    if let Some(status) = state.next_submit_failure() {
        let status = StatusCode::from_u16(status).unwrap();
        let word = if status == StatusCode::TOO_MANY_REQUESTS {
            "system_busy"
        } else {
            "internal_error"
        };
        return error(status, word, &format!("fake {status}"));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let text_field = if uri.path() == "/v1/music" {
        "prompt"
    } else {
        "text"
    };
    if body[text_field].as_str().is_none_or(str::is_empty) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"detail": [{"loc": ["body", text_field],
                "msg": "Field required", "type": "missing"}]})),
        )
            .into_response();
    }
    if state.behaviour.refuse {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_prompt",
            "The prompt violates our Terms of Service.",
        );
    }
    (
        [
            ("content-type", CONTENT_TYPE.to_owned()),
            ("request-id", uuid::Uuid::now_v7().simple().to_string()),
        ],
        media(CONTENT_TYPE),
    )
        .into_response()
}
