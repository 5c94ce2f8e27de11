//! Anthropic's Messages API as documented: `POST /v1/messages` with the key as
//! `x-api-key` and `anthropic-version`, `model`, `max_tokens` and `messages` required.
//!
//! - Unstreamed: a `message` with `content` blocks, `stop_reason` and `usage`
//!   (`input_tokens`, `output_tokens`).
//! - `stream: true`: SSE events named by `event:` — `message_start` (usage with the
//!   prompt's tokens), `content_block_start`, a `ping`, one `content_block_delta`
//!   (`text_delta`) per word, `content_block_stop`, then `message_delta` (`stop_reason`,
//!   cumulative `output_tokens`) and `message_stop`.
//! - A request with `tools` is answered with a short text block and then a `tool_use`
//!   of the first tool (its input streamed as `input_json_delta` pieces), stop reason
//!   `tool_use`.
//! - Errors: `{"type": "error", "error": {"type", "message"}}` with the status (429
//!   `rate_limit_error` with `retry-after`, 529 `overloaded_error`, 500 `api_error`…);
//!   a stream that breaks off after `chat_break_after` words sends an `error` event.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::Arc;

use super::{Fake, FakeState, chat, key, serve};

/// The text the fake says before calling a tool.
pub const TOOL_PREAMBLE: &str = "Let me check.";

pub async fn start(behaviour: crate::Behaviour) -> Fake {
    let state = FakeState::new(behaviour);
    let router = Router::new()
        .route("/v1/messages", post(messages))
        .with_state(state.clone());
    serve(router, state).await
}

/// Anthropic's error kind for a status.
fn kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind(status), "message": message}});
    (status, axum::Json(body)).into_response()
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

async fn messages(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if header("x-api-key") != key() {
        return error(StatusCode::UNAUTHORIZED, "invalid x-api-key");
    }
    if header("anthropic-version") != "2023-06-01" {
        return error(
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        );
    }
    if let Some(failure) = state.scripted_failure(|status| {
        let message = if status.as_u16() == 529 {
            "Overloaded"
        } else {
            "fake: the upstream is having trouble"
        };
        error(status, message)
    }) {
        return failure;
    }
    let behaviour = state.behaviour.clone();
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Request body is not valid JSON.");
    };
    for field in ["model", "max_tokens", "messages"] {
        if request[field].is_null() {
            return error(StatusCode::BAD_REQUEST, &format!("{field}: Field required"));
        }
    }
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let reply = behaviour
        .chat_reply
        .clone()
        .unwrap_or_else(|| chat::DEFAULT_REPLY.to_owned());
    let words: Vec<String> = reply
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    let tool = request["tools"][0]["name"].as_str().map(str::to_owned);
    let words = if tool.is_some() {
        vec![TOOL_PREAMBLE.to_owned()]
    } else {
        words
    };
    let input_tokens = request["messages"].as_array().map_or(0, Vec::len) as u64 * 5;
    let output_tokens = words.len() as u64 + u64::from(tool.is_some()) * 3;
    let id = format!(
        "msg_fake{}",
        state.submits.load(std::sync::atomic::Ordering::SeqCst)
    );
    let stop_reason = if tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    if request["stream"] != json!(true) {
        tokio::time::sleep(behaviour.chat_first_token_delay).await;
        let mut content = vec![json!({"type": "text", "text": words.concat()})];
        if let Some(name) = &tool {
            content.push(
                json!({"type": "tool_use", "id": "toolu_fake1", "name": name,
                "input": {"city": "Paris"}}),
            );
        }
        return axum::Json(json!({"id": id, "type": "message", "role": "assistant",
            "model": model, "content": content, "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}))
        .into_response();
    }
    let mut pieces = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": id,
            "type": "message", "role": "assistant", "content": [], "model": model,
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for (i, w) in words.iter().enumerate() {
        if behaviour.chat_break_after == Some(i) {
            pieces.push(event(
                "error",
                json!({"type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            return chat::sse(&state, pieces, false);
        }
        pieces.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta",
            "index": 0, "delta": {"type": "text_delta", "text": w}}),
        ));
    }
    pieces.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    if let Some(name) = &tool {
        pieces.push(event(
            "content_block_start",
            json!({"type": "content_block_start",
            "index": 1, "content_block": {"type": "tool_use", "id": "toolu_fake1",
            "name": name, "input": {}}}),
        ));
        for part in ["{\"city\"", ":\"Par", "is\"}"] {
            pieces.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta",
                "index": 1, "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        pieces.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ));
    }
    pieces.push(event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": output_tokens}}),
    ));
    pieces.push(event("message_stop", json!({"type": "message_stop"})));
    chat::sse(&state, pieces, false)
}
