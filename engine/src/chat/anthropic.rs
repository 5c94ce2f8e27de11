//! Anthropic's Messages API (`POST {base}/v1/messages`, key as `x-api-key`,
//! `anthropic-version: 2023-06-01`) behind the OpenAI chat format: the request is
//! translated into a Messages body, the answer and its SSE events back into a
//! `chat.completion` and `chat.completion.chunk`s as OpenAI shapes them.
//!
//! Request: system and developer messages become the top-level `system`; user and
//! assistant turns keep their order (consecutive turns of one role merged, as Anthropic
//! wants them alternating); image parts become image blocks (`url`, or `base64` from a
//! `data:` URL); assistant `tool_calls` become `tool_use` blocks and `tool` messages
//! `tool_result` blocks of a user turn. `max_tokens` is required upstream: the client's
//! `max_completion_tokens`/`max_tokens`, else [`DEFAULT_MAX_TOKENS`]. What has no
//! Anthropic equivalent is refused with a 400 naming the field, never silently dropped.
//!
//! Errors: non-2xx answers are sorted by status like every upstream's (429 rate limit
//! with `retry-after`, 500 and 529 outages fall back; 400/401/403/404 refuse); an `error`
//! event mid-stream is sorted by its `error.type` the same way.

use std::collections::BTreeMap;

use reqwest::Response;
use serde_json::{Map, Value, json};

use super::translate::{self, ToolChoice, Translate};
use super::wire::Usage;
use super::{ChatCall, ChatProvider, ChunkStream};
use crate::ErrorCode;
use crate::providers::http::Upstream;
use crate::providers::{ErrorClass, ProviderError, ProviderSettings, SetupError};

/// The Messages API version every request names.
pub const VERSION: &str = "2023-06-01";

/// `max_tokens` when the client gives none: Anthropic requires one, and every current
/// Claude model can write this much.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Request fields with no effect worth translating: OpenAI-side storage and tiers, and
/// `seed`, which OpenAI itself keeps only best-effort.
const IGNORED: &[&str] = &["seed", "store", "metadata", "service_tier"];

#[derive(Debug, Clone)]
pub struct Anthropic {
    upstream: Upstream,
    /// Where messages are posted (parsed once, not per request).
    endpoint: reqwest::Url,
}

impl ChatProvider for Anthropic {
    const API: &'static str = "anthropic";
    const SERVES: &'static [&'static str] = &["anthropic"];
    const DEFAULT_BASE_URL: &'static str = "https://api.anthropic.com";
    const API_KEY_ENV: &'static str = "ANTHROPIC_API_KEY";

    fn from_settings(
        name: &'static str,
        settings: &ProviderSettings,
    ) -> Result<Anthropic, SetupError> {
        let upstream = Upstream::streaming(name, settings)?;
        Ok(Anthropic {
            endpoint: upstream.endpoint("/v1/messages")?,
            upstream,
        })
    }

    async fn complete(&self, call: &ChatCall) -> Result<String, ProviderError> {
        let response = self.send(call).await?;
        let answer = translate::answer(&self.upstream, response).await?;
        Ok(completion(&answer, &call.upstream_model).to_string())
    }

    async fn stream(&self, call: &ChatCall) -> Result<ChunkStream, ProviderError> {
        let response = self.send(call).await?;
        let translator = Translator::new(&call.upstream_model);
        Ok(translate::chunk_stream(
            &self.upstream,
            response,
            translator,
        ))
    }
}

impl Anthropic {
    /// Translates and posts the request; a non-2xx answer is a classified error.
    async fn send(&self, call: &ChatCall) -> Result<Response, ProviderError> {
        let body = request_body(call)?;
        let request = translate::post(
            &self.upstream,
            self.endpoint.clone(),
            &body,
            call.request.stream,
        )
        .header("x-api-key", self.upstream.key())
        .header("anthropic-version", VERSION);
        self.upstream.send(request).await
    }
}

/// A field the Messages API cannot be sent (see `translate::refusal`).
fn refuse(field: &str, why: &str) -> ProviderError {
    translate::refusal("Anthropic's Messages API", field, why)
}

/// The Messages request for a call.
pub fn request_body(call: &ChatCall) -> Result<Value, ProviderError> {
    let request = &call.request;
    let messages: Vec<Value> = serde_json::from_str(request.messages.get())
        .map_err(|_| refuse("messages", "must be an array of messages"))?;
    let (system, turns) = translate_messages(&messages)?;
    let mut body = Map::new();
    body.insert("model".into(), json!(call.upstream_model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(turns));
    let mut tool_choice: Option<Value> = None;
    let mut parallel = true;
    for (key, raw) in request.other_fields() {
        let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        if value.is_null() || IGNORED.contains(&key) {
            continue;
        }
        match key {
            "max_tokens" | "max_completion_tokens" => {}
            "temperature" => {
                let t = value
                    .as_f64()
                    .ok_or_else(|| refuse(key, "must be a number"))?;
                if !(0.0..=1.0).contains(&t) {
                    return Err(refuse(key, "must be between 0 and 1 for Anthropic models"));
                }
                body.insert(key.into(), value);
            }
            "top_p" => {
                body.insert(key.into(), value);
            }
            "stop" => {
                body.insert(
                    "stop_sequences".into(),
                    translate::stop_sequences(value, refuse)?,
                );
            }
            "tools" => {
                body.insert("tools".into(), translate_tools(&value)?);
            }
            "tool_choice" => tool_choice = Some(translate_tool_choice(&value)?),
            "parallel_tool_calls" => parallel = value != json!(false),
            "user" => {
                let user = value
                    .as_str()
                    .ok_or_else(|| refuse(key, "must be a string"))?;
                body.insert("metadata".into(), json!({"user_id": user}));
            }
            "n" if value == json!(1) => {}
            "logprobs" if value == json!(false) => {}
            "frequency_penalty" | "presence_penalty" if value.as_f64() == Some(0.0) => {}
            "response_format" if value["type"] == "text" => {}
            "n" => return Err(refuse(key, "only one choice can be asked for")),
            other => return Err(refuse(other, "cannot be translated")),
        }
    }
    if !parallel {
        let mut choice = tool_choice.unwrap_or_else(|| json!({"type": "auto"}));
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        tool_choice = Some(choice);
    }
    if let Some(choice) = tool_choice {
        body.insert("tool_choice".into(), choice);
    }
    if request.stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

/// The system text, and the conversation as alternating Anthropic turns.
fn translate_messages(messages: &[Value]) -> Result<(Vec<String>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m["role"].as_str().unwrap_or_default();
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(translate::texts(&m["content"], &at, refuse)?);
                continue;
            }
            "user" => ("user", content_blocks(&m["content"], &at)?),
            "assistant" => {
                let mut blocks = content_blocks(&m["content"], &at)?;
                for call in translate::tool_calls(m, &at, refuse)? {
                    blocks.push(json!({"type": "tool_use", "id": call.id,
                        "name": call.name, "input": call.arguments}));
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = m["tool_call_id"]
                    .as_str()
                    .ok_or_else(|| refuse(&format!("{at}.tool_call_id"), "is required"))?;
                let content = translate::texts(&m["content"], &at, refuse)?;
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": content})],
                )
            }
            _ => {
                return Err(refuse(
                    &format!("{at}.role"),
                    &format!("{role:?} cannot be translated"),
                ));
            }
        };
        match turns.last_mut() {
            Some((last, prior)) if last == role => prior.extend(blocks),
            _ => turns.push((role.to_owned(), blocks)),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, turns))
}

/// A user or assistant message's content as Anthropic blocks.
fn content_blocks(content: &Value, at: &str) -> Result<Vec<Value>, ProviderError> {
    let parts = match content {
        Value::Null => return Ok(Vec::new()),
        Value::String(s) if s.is_empty() => return Ok(Vec::new()),
        Value::String(s) => return Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts,
        _ => {
            return Err(refuse(
                &format!("{at}.content"),
                "must be a string or parts",
            ));
        }
    };
    parts
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let at = format!("{at}.content[{j}]");
            match p["type"].as_str().unwrap_or_default() {
                "text" => Ok(json!({"type": "text", "text": p["text"]})),
                "refusal" => Ok(json!({"type": "text", "text": p["refusal"]})),
                "image_url" => {
                    let url = p["image_url"]["url"]
                        .as_str()
                        .ok_or_else(|| refuse(&format!("{at}.image_url.url"), "is required"))?;
                    Ok(json!({"type": "image", "source": image_source(url, &at)?}))
                }
                other => Err(refuse(
                    &format!("{at}.type"),
                    &format!("{other:?} parts cannot be translated"),
                )),
            }
        })
        .collect()
}

/// An image's `source`: its URL, or the bytes of a base64 `data:` URL.
fn image_source(url: &str, at: &str) -> Result<Value, ProviderError> {
    Ok(
        match translate::base64_data(url, &format!("{at}.image_url.url"), refuse)? {
            None => json!({"type": "url", "url": url}),
            Some((media_type, base64)) => {
                json!({"type": "base64", "media_type": media_type, "data": base64})
            }
        },
    )
}

/// OpenAI function tools as Anthropic tools.
fn translate_tools(tools: &Value) -> Result<Value, ProviderError> {
    let tools = translate::function_tools(tools, refuse)?;
    let tools = tools.into_iter().map(|f| {
        let mut tool = json!({"name": f["name"],
            "input_schema": if f["parameters"].is_object() { f["parameters"].clone() }
                else { json!({"type": "object", "properties": {}}) }});
        if let Some(d) = f["description"].as_str() {
            tool["description"] = json!(d);
        }
        tool
    });
    Ok(Value::Array(tools.collect()))
}

fn translate_tool_choice(choice: &Value) -> Result<Value, ProviderError> {
    Ok(match translate::tool_choice(choice, refuse)? {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    })
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
fn finish_reason(stop_reason: &Value) -> &'static str {
    match stop_reason.as_str() {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn.
        _ => "stop",
    }
}

/// OpenAI's usage for Anthropic's: cached prompt tokens count as prompt tokens, as
/// OpenAI counts them.
fn usage(input: &Value, output: u64) -> Usage {
    let prompt = [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .filter_map(|k| input[*k].as_u64())
    .sum();
    Usage {
        prompt_tokens: prompt,
        completion_tokens: output,
        total_tokens: prompt + output,
    }
}

/// A Messages answer as a `chat.completion`.
pub fn completion(answer: &Value, model: &str) -> Value {
    let blocks = answer["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let text: String = blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect();
    let calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| {
            json!({"id": b["id"], "type": "function",
                "function": {"name": b["name"], "arguments": b["input"].to_string()}})
        })
        .collect();
    let mut message = json!({"role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
        "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let usage = usage(
        &answer["usage"],
        answer["usage"]["output_tokens"].as_u64().unwrap_or(0),
    );
    json!({
        "id": answer["id"],
        "object": "chat.completion",
        "created": crate::ids::now_ms() / 1000,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null,
            "finish_reason": finish_reason(&answer["stop_reason"])}],
        "usage": usage,
    })
}

/// The class of an `error` event's (or body's) `error.type`.
fn error_class(kind: &str) -> (ErrorClass, ErrorCode) {
    match kind {
        "rate_limit_error" => (
            ErrorClass::RateLimited {
                retry_after: std::time::Duration::from_secs(5),
            },
            ErrorCode::UpstreamRateLimited,
        ),
        "invalid_request_error" | "not_found_error" | "request_too_large" => {
            (ErrorClass::InvalidInput, ErrorCode::UpstreamRejected)
        }
        "authentication_error" | "permission_error" => {
            (ErrorClass::Unauthorized, ErrorCode::UpstreamUnauthorized)
        }
        // overloaded_error, api_error, and kinds not invented yet.
        _ => (ErrorClass::Retryable, ErrorCode::UpstreamError),
    }
}

/// Turns Anthropic stream events into OpenAI chunks, one event at a time.
pub struct Translator {
    model: String,
    id: Value,
    created: i64,
    /// `message_start`'s usage (the prompt), and the answer's tokens so far.
    input_usage: Value,
    output_tokens: u64,
    /// Anthropic content block index → OpenAI tool call index.
    tool_calls: BTreeMap<u64, usize>,
    /// The role chunk of `message_start`, held until the first chunk of the answer:
    /// Anthropic sends `message_start` before the model has produced anything, and an
    /// error (overloaded) may follow it; held back, that error comes before anything
    /// reached the client, so the request can still fall back.
    pending: Option<String>,
    /// `message_stop` arrived.
    pub ended: bool,
}

impl Translator {
    pub fn new(model: &str) -> Translator {
        Translator {
            model: model.to_owned(),
            id: Value::Null,
            created: crate::ids::now_ms() / 1000,
            input_usage: Value::Null,
            output_tokens: 0,
            tool_calls: BTreeMap::new(),
            pending: None,
            ended: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        .to_string()
    }
}

impl Translate for Translator {
    fn event(&mut self, data: &Value) -> Result<Vec<String>, ProviderError> {
        let index = data["index"].as_u64().unwrap_or(0);
        let mut chunks = match data["type"].as_str().unwrap_or_default() {
            "message_start" => {
                self.id = data["message"]["id"].clone();
                self.input_usage = data["message"]["usage"].clone();
                self.output_tokens = self.input_usage["output_tokens"].as_u64().unwrap_or(0);
                self.pending = Some(self.chunk(json!({"role": "assistant", "content": ""}), None));
                Vec::new()
            }
            "content_block_start" if data["content_block"]["type"] == "tool_use" => {
                let n = self.tool_calls.len();
                self.tool_calls.insert(index, n);
                let block = &data["content_block"];
                vec![self.chunk(
                    json!({"tool_calls": [{"index": n, "id": block["id"], "type": "function",
                        "function": {"name": block["name"], "arguments": ""}}]}),
                    None,
                )]
            }
            "content_block_delta" => match data["delta"]["type"].as_str() {
                Some("text_delta") => {
                    vec![self.chunk(json!({"content": data["delta"]["text"]}), None)]
                }
                Some("input_json_delta") => {
                    let n = self.tool_calls.get(&index).copied().unwrap_or(0);
                    vec![self.chunk(
                        json!({"tool_calls": [{"index": n,
                            "function": {"arguments": data["delta"]["partial_json"]}}]}),
                        None,
                    )]
                }
                // thinking and signature deltas have no OpenAI chunk.
                _ => Vec::new(),
            },
            "message_delta" => {
                if let Some(n) = data["usage"]["output_tokens"].as_u64() {
                    self.output_tokens = n;
                }
                vec![self.chunk(
                    json!({}),
                    Some(finish_reason(&data["delta"]["stop_reason"])),
                )]
            }
            "message_stop" => {
                self.ended = true;
                let usage = usage(&self.input_usage, self.output_tokens);
                vec![
                    json!({"id": self.id, "object": "chat.completion.chunk",
                    "created": self.created, "model": self.model, "choices": [],
                    "usage": usage})
                    .to_string(),
                ]
            }
            "error" => {
                let (class, code) = error_class(data["error"]["type"].as_str().unwrap_or_default());
                let message = data["error"]["message"].as_str().unwrap_or("stream error");
                return Err(ProviderError::new(
                    class,
                    code,
                    format!("error event: {message}"),
                ));
            }
            // ping, content_block_stop, a text block's start, events not invented yet.
            _ => Vec::new(),
        };
        if !chunks.is_empty()
            && let Some(role) = self.pending.take()
        {
            chunks.insert(0, role);
        }
        Ok(chunks)
    }

    fn end(&mut self) -> Result<Vec<String>, ProviderError> {
        if !self.ended {
            return Err(ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamError,
                "the stream ended before message_stop",
            ));
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::chat::ChatRequest;

    fn call(body: Value) -> ChatCall {
        let request = ChatRequest::parse(body.to_string().as_bytes(), &|_| true, "").unwrap();
        ChatCall {
            request: Arc::new(request),
            model: "anthropic/claude-sonnet-4.5".into(),
            upstream_model: "claude-sonnet-4-5".into(),
        }
    }

    #[test]
    fn requests_translate_to_messages() {
        let body = request_body(&call(json!({
            "model": "anthropic/claude-sonnet-4.5",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                    "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": "thanks"}
            ],
            "temperature": 0.5, "stop": "END", "max_tokens": 100, "user": "u1",
            "tools": [{"type": "function", "function": {"name": "weather",
                "description": "the weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required", "parallel_tool_calls": false
        })))
        .unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5", "max_tokens": 100, "system": "be brief",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}}]},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1",
                        "name": "weather", "input": {"city": "Paris"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                        {"type": "text", "text": "thanks"}]}
                ],
                "temperature": 0.5, "stop_sequences": ["END"], "metadata": {"user_id": "u1"},
                "tools": [{"name": "weather", "description": "the weather",
                    "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
            })
        );
    }

    #[test]
    fn max_tokens_defaults_and_untranslatable_fields_are_refused() {
        let plain = call(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(
            request_body(&plain).unwrap()["max_tokens"],
            DEFAULT_MAX_TOKENS
        );
        for (field, value) in [
            ("logprobs", json!(true)),
            ("n", json!(2)),
            ("temperature", json!(1.5)),
            ("response_format", json!({"type": "json_object"})),
            ("tool_choice", json!("sometimes")),
        ] {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            body[field] = value;
            let e = request_body(&call(body)).unwrap_err();
            assert_eq!(e.class, ErrorClass::InvalidInput, "{field}");
            assert!(e.message.starts_with(field), "{field}: {}", e.message);
        }
        let audio = call(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}]}]}),
        );
        let e = request_body(&audio).unwrap_err();
        assert!(
            e.message.starts_with("messages[0].content[0].type"),
            "{}",
            e.message
        );
    }

    #[test]
    fn answers_translate_to_completions() {
        let answer = json!({"id": "msg_1", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 2, "output_tokens": 5}});
        let c = completion(&answer, "claude-sonnet-4-5");
        assert_eq!(c["choices"][0]["message"]["content"], "Let me look.");
        assert_eq!(
            c["choices"][0]["message"]["tool_calls"],
            json!([{"id": "toolu_1", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}])
        );
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17})
        );
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
        ] {
            assert_eq!(finish_reason(&json!(stop)), finish);
        }
    }

    #[test]
    fn stream_events_translate_to_chunks() {
        let mut t = Translator::new("claude-sonnet-4-5");
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 7, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ];
        let deltas: Vec<Value> = events
            .iter()
            .flat_map(|e| t.event(e).unwrap())
            .map(|c| serde_json::from_str::<Value>(&c).unwrap())
            .map(|c| c["choices"][0].clone())
            .collect();
        assert_eq!(deltas.len(), 6);
        assert_eq!(
            deltas[0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(deltas[1]["delta"], json!({"content": "Hi"}));
        assert_eq!(
            deltas[2]["delta"]["tool_calls"][0],
            json!({"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": ""}})
        );
        assert_eq!(
            deltas[3]["delta"]["tool_calls"][0],
            json!({"index": 0, "function": {"arguments": "{\"ci"}})
        );
        assert_eq!(deltas[4]["finish_reason"], "tool_calls");
        assert!(t.ended);
        // An error right after message_start is the first thing the relay sees.
        let mut t = Translator::new("claude-sonnet-4-5");
        assert_eq!(t.event(&events[0]).unwrap(), Vec::<String>::new());
        let e = t
            .event(&json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable);
    }
}
