//! Chat completions as OpenAI and OpenRouter document them, for both fakes:
//! `POST …/chat/completions` with the key as `Authorization: Bearer`.
//!
//! - Unstreamed: a `chat.completion` with `choices[0].message` and `usage`.
//! - `stream: true`: SSE `data: {chunk}` events, a first chunk with the role, one chunk
//!   per word, a last one with `finish_reason`, then `data: [DONE]`. OpenAI adds a usage
//!   chunk (`choices: []`) only when `stream_options.include_usage` is set, and then
//!   `usage: null` on every other chunk. OpenRouter always ends with a usage chunk that
//!   repeats the finish reason with an empty delta, names its upstream in `provider`,
//!   and sends `: OPENROUTER PROCESSING` comments while the first token is on its way.
//! - A request with `tools` is answered with a call of the first tool (arguments
//!   streamed in pieces, `finish_reason: "tool_calls"`).
//! - Errors: OpenAI's `{"error": {message, type, param, code}}`, OpenRouter's
//!   `{"error": {code, message}}`, with the status; a 429 carries `Retry-After`. A
//!   stream that breaks off after `chat_break_after` words sends OpenAI's
//!   `data: {"error": …}` or OpenRouter's error chunk (`finish_reason: "error"`), then
//!   ends.
//!
//! Every stream notes in the fake's state whether it ran to its end or was dropped
//! first (the client went away), so tests can see a disconnect reach the upstream.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{FakeState, key};

/// Whose documented format a fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    OpenRouter,
}

/// What the fake says when the behaviour does not choose.
pub const DEFAULT_REPLY: &str = "Hello from the fake upstream, one word at a time.";

/// The fake's state and dialect, as its handler's state.
#[derive(Clone)]
pub struct Chat {
    pub state: Arc<FakeState>,
    pub dialect: Dialect,
}

fn error(dialect: Dialect, status: StatusCode, message: &str) -> Response {
    let body = match dialect {
        Dialect::OpenAi => json!({"error": {"message": message, "type": match status.as_u16() {
            429 => "requests", 400..=499 => "invalid_request_error", _ => "server_error" },
            "param": null, "code": null}}),
        Dialect::OpenRouter => json!({"error": {"code": status.as_u16(), "message": message}}),
    };
    (status, axum::Json(body)).into_response()
}

pub async fn completions(State(chat): State<Chat>, headers: HeaderMap, body: Bytes) -> Response {
    let Chat { state, dialect } = chat;
    let expected = format!("Bearer {}", key());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return error(
            dialect,
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
        );
    }
    if let Some(failure) = state.scripted_failure(|status| {
        error(
            dialect,
            status,
            &format!("fake {status}: the upstream is having trouble"),
        )
    }) {
        return failure;
    }
    let behaviour = state.behaviour.clone();
    if behaviour.chat_hang {
        // Never answers; the client gives up.
        std::future::pending::<()>().await;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            dialect,
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
        );
    };
    let Some(model) = request["model"].as_str().map(str::to_owned) else {
        return error(
            dialect,
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
        );
    };
    if !request["messages"].is_array() {
        return error(
            dialect,
            StatusCode::BAD_REQUEST,
            "'messages' is a required property",
        );
    }
    let reply = behaviour
        .chat_reply
        .clone()
        .unwrap_or_else(|| DEFAULT_REPLY.to_owned());
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
    let prompt_tokens = request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    m["content"]
                        .as_str()
                        .map_or(1, |c| c.split_whitespace().count())
                })
                .sum::<usize>()
        })
        .unwrap_or(0) as u64;
    let tool = request["tools"][0]["function"]["name"]
        .as_str()
        .map(str::to_owned);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": words.len(),
        "total_tokens": prompt_tokens + words.len() as u64});
    let id = format!("chatcmpl-fake{}", state.submits.load(Ordering::SeqCst));
    // OpenAI answers with a dated model; OpenRouter with the name asked for.
    let served = match dialect {
        Dialect::OpenAi => format!("{model}-2024-07-18"),
        Dialect::OpenRouter => model.clone(),
    };
    if request["stream"] != json!(true) {
        tokio::time::sleep(behaviour.chat_first_token_delay).await;
        let message = match &tool {
            Some(name) => json!({"role": "assistant", "content": null, "refusal": null,
                "tool_calls": [{"id": "call_fake1", "type": "function",
                    "function": {"name": name, "arguments": "{\"city\":\"Paris\"}"}}]}),
            None => json!({"role": "assistant", "content": words.concat(), "refusal": null}),
        };
        let mut answer = json!({"id": id, "object": "chat.completion", "created": 1_790_000_000,
            "model": served, "choices": [{"index": 0, "message": message, "logprobs": null,
            "finish_reason": if tool.is_some() { "tool_calls" } else { "stop" }}],
            "usage": usage, "system_fingerprint": "fp_fake"});
        if dialect == Dialect::OpenRouter {
            answer["provider"] = json!("OpenAI");
        }
        return axum::Json(answer).into_response();
    }
    let include_usage =
        dialect == Dialect::OpenRouter || request["stream_options"]["include_usage"] == json!(true);
    let chunk = {
        let (id, served) = (id.clone(), served.clone());
        move |delta: Value, finish: Value| {
            let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_790_000_000,
                "model": served, "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
            match dialect {
                Dialect::OpenAi if include_usage => c["usage"] = Value::Null,
                Dialect::OpenRouter => c["provider"] = json!("OpenAI"),
                Dialect::OpenAi => {}
            }
            format!("data: {c}\n\n")
        }
    };
    let mut pieces: Vec<String> = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    match &tool {
        Some(name) => {
            pieces.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_fake1", "type": "function",
                "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            for part in ["{\"city\"", ":\"Par", "is\"}"] {
                pieces.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                    Value::Null,
                ));
            }
        }
        None => pieces.extend(
            words
                .iter()
                .map(|w| chunk(json!({"content": w}), Value::Null)),
        ),
    }
    let broken_at = behaviour.chat_break_after.map(|n| n + 1);
    if let Some(at) = broken_at.filter(|at| *at < pieces.len()) {
        pieces.truncate(at);
        let event = match dialect {
            Dialect::OpenAi => {
                json!({"error": {"message": "The server had an error while processing your request.",
                "type": "server_error", "param": null, "code": null}})
            }
            Dialect::OpenRouter => {
                json!({"id": id, "object": "chat.completion.chunk", "created": 1_790_000_000,
                "model": served, "provider": "OpenAI",
                "error": {"code": 502, "message": "Provider disconnected"},
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]})
            }
        };
        pieces.push(format!("data: {event}\n\n"));
    } else {
        let finish = if tool.is_some() { "tool_calls" } else { "stop" };
        pieces.push(chunk(json!({}), json!(finish)));
        if include_usage {
            let last = match dialect {
                Dialect::OpenAi => {
                    json!({"id": id, "object": "chat.completion.chunk", "created": 1_790_000_000,
                    "model": served, "system_fingerprint": "fp_fake", "choices": [], "usage": usage})
                }
                Dialect::OpenRouter => {
                    json!({"id": id, "object": "chat.completion.chunk", "created": 1_790_000_000,
                    "model": served, "provider": "OpenAI",
                    "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": finish}], "usage": usage})
                }
            };
            pieces.push(format!("data: {last}\n\n"));
        }
        pieces.push("data: [DONE]\n\n".to_owned());
    }
    sse(&state, pieces, dialect == Dialect::OpenRouter)
}

/// An SSE answer of `pieces`, paced as the behaviour says (`keep_alive`: OpenRouter's
/// comment first); it notes in the state whether it ran to its end.
pub(crate) fn sse(state: &Arc<FakeState>, pieces: Vec<String>, keep_alive: bool) -> Response {
    let behaviour = &state.behaviour;
    let stream = Paced {
        state: state.clone(),
        pieces: pieces.into_iter(),
        first: true,
        done: false,
        first_delay: Some(behaviour.chat_first_token_delay).filter(|d| !d.is_zero()),
        interval: behaviour.chat_token_interval,
        keep_alive,
    };
    let body = futures::stream::unfold(stream, |mut s| async move {
        let piece = s.next().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(Bytes::from(piece)), s))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

/// A stream's pieces, paced; dropped before its end, it counts as cancelled.
struct Paced {
    state: Arc<FakeState>,
    pieces: std::vec::IntoIter<String>,
    first: bool,
    done: bool,
    /// Before the first piece (the model thinking).
    first_delay: Option<Duration>,
    interval: Duration,
    /// OpenRouter's comment while the first token is on its way.
    keep_alive: bool,
}

impl Paced {
    async fn next(&mut self) -> Option<String> {
        if let Some(delay) = self.first_delay.take() {
            if std::mem::take(&mut self.keep_alive) {
                self.first_delay = Some(delay);
                return Some(": OPENROUTER PROCESSING\n\n".to_owned());
            }
            tokio::time::sleep(delay).await;
        } else if !self.first && !self.interval.is_zero() {
            tokio::time::sleep(self.interval).await;
        }
        self.first = false;
        match self.pieces.next() {
            Some(piece) => Some(piece),
            None => {
                self.done = true;
                self.state.streams_finished.fetch_add(1, Ordering::SeqCst);
                None
            }
        }
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        if !self.done {
            self.state.streams_cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}
