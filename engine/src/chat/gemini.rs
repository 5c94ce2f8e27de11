//! Google's Gemini API as a chat upstream: `POST {base}/v1beta/models/{model}:generateContent`,
//! or `:streamGenerateContent?alt=sse` for a stream, with the key in `x-goog-api-key`. The
//! `google` provider's base URL, key variable, key header and reading of its error bodies
//! are the media adapters' (`providers::google`). The OpenAI request is translated into a
//! `GenerateContentRequest`, and the answer, or each SSE event (a whole
//! `GenerateContentResponse`), back into a `chat.completion` or `chat.completion.chunk`s.
//!
//! Request: system and developer messages become `systemInstruction`; user and assistant
//! turns become `contents` of roles `user` and `model` in their order (consecutive turns
//! of one role merged); image parts become `inlineData` (from a `data:` URL) or
//! `fileData` (a link), audio and file parts `inlineData`; assistant `tool_calls` become
//! `functionCall` parts, and `tool` messages `functionResponse` parts of a user turn, named
//! after the call they answer (Gemini wants the function's name, OpenAI gives the call's
//! id). Sampling fields go into `generationConfig`; function tools into
//! `tools[0].functionDeclarations` (their JSON Schema as `parametersJsonSchema`) and
//! `tool_choice` into `toolConfig`. What has no Gemini equivalent is refused with a 400
//! naming the field, never silently dropped.
//!
//! Answer: each candidate is a choice; a `functionCall` part is a tool call (Gemini names
//! no id, so one is made) carrying its thought signature in `extra_content`, where
//! Google's OpenAI-compatible endpoint puts it, so that the next turn can send it back
//! (Gemini 3 requires it); thinking tokens count as answer tokens, as Google bills
//! them. Errors are google.rpc.Status bodies, sorted by HTTP status as every upstream's
//! are (429 and 5xx fall back; 400 and 404 refuse), after `providers::google` has read
//! them for a refused key or a `RetryInfo` delay; a Status sent in place of an event
//! mid-stream is sorted the same way by its `code`.

use std::collections::BTreeMap;

use reqwest::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::translate::{self, ToolChoice, Translate};
use super::{ChatCall, ChatProvider, ChunkStream};
use crate::ErrorCode;
use crate::providers::google::{KEY_HEADER, read_error};
use crate::providers::http::{self, Upstream};
use crate::providers::{ErrorClass, ProviderError, ProviderSettings, SetupError};

/// Request fields with no effect on the answer worth translating: OpenAI-side storage,
/// tiers and end-user ids.
const IGNORED: &[&str] = &["store", "metadata", "service_tier", "user"];

/// `reasoning_effort` as a Gemini 2.5 `thinkingBudget`, the budgets Google's own
/// OpenAI-compatible endpoint gives these levels (`minimal` taken as `low`).
const THINKING_BUDGETS: &[(&str, u64)] = &[
    ("none", 0),
    ("minimal", 1024),
    ("low", 1024),
    ("medium", 8192),
    ("high", 24576),
];

#[derive(Debug, Clone)]
pub struct Gemini {
    upstream: Upstream,
}

impl ChatProvider for Gemini {
    const API: &'static str = "gemini";
    const SERVES: &'static [&'static str] = &["google"];

    fn from_settings(
        name: &'static str,
        settings: &ProviderSettings,
    ) -> Result<Gemini, SetupError> {
        Ok(Gemini {
            upstream: Upstream::streaming(name, settings)?.reading_errors(read_error),
        })
    }

    async fn complete(&self, call: &ChatCall) -> Result<String, ProviderError> {
        let response = self.send(call).await?;
        let answer = translate::answer(&self.upstream, response).await?;
        completion(&answer, &call.upstream_model)
            .map(|c| c.to_string())
            .map_err(|e| translate::named(self.upstream.name, e))
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

impl Gemini {
    /// Translates and posts the request; a non-2xx answer is a classified error.
    async fn send(&self, call: &ChatCall) -> Result<Response, ProviderError> {
        let body = request_body(call)?;
        let model = &call.upstream_model;
        let path = if call.request.stream {
            format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("/v1beta/models/{model}:generateContent")
        };
        let url = self.upstream.url(&path);
        let mut request = translate::post(&self.upstream, &url, &body, call.request.stream);
        // A host of the operator's own (`api = "gemini"`) may take no key.
        if !self.upstream.key().is_empty() {
            request = request.header(KEY_HEADER, self.upstream.key());
        }
        self.upstream.send(request).await
    }
}

/// A field the Gemini API cannot be sent (see `translate::refusal`).
fn refuse(field: &str, why: &str) -> ProviderError {
    translate::refusal("the Gemini API", field, why)
}

/// The `GenerateContentRequest` for a call.
pub fn request_body(call: &ChatCall) -> Result<Value, ProviderError> {
    let request = &call.request;
    let messages: Vec<Value> = serde_json::from_str(request.messages.get())
        .map_err(|_| refuse("messages", "must be an array of messages"))?;
    let (system, contents) = translate_messages(&messages)?;
    if contents.is_empty() {
        return Err(refuse(
            "messages",
            "must hold a user or assistant message with content",
        ));
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        let parts: Vec<Value> = system.into_iter().map(|t| json!({"text": t})).collect();
        body.insert("systemInstruction".into(), json!({"parts": parts}));
    }
    let mut config = Map::new();
    if let Some(max) = request.max_tokens {
        config.insert("maxOutputTokens".into(), json!(max));
    }
    for (key, raw) in request.other_fields() {
        let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        if value.is_null() || IGNORED.contains(&key) {
            continue;
        }
        match key {
            "max_tokens" | "max_completion_tokens" => {}
            "temperature" | "top_p" | "presence_penalty" | "frequency_penalty" => {
                if !value.is_number() {
                    return Err(refuse(key, "must be a number"));
                }
                // A zero penalty is no penalty, and not every Gemini model takes one.
                if key.ends_with("_penalty") && value.as_f64() == Some(0.0) {
                    continue;
                }
                let name = match key {
                    "top_p" => "topP",
                    "presence_penalty" => "presencePenalty",
                    "frequency_penalty" => "frequencyPenalty",
                    _ => "temperature",
                };
                config.insert(name.into(), value);
            }
            "seed" => {
                if !value.is_i64() {
                    return Err(refuse(key, "must be an integer"));
                }
                config.insert("seed".into(), value);
            }
            "stop" => {
                let stops = translate::stop_sequences(value, refuse)?;
                config.insert("stopSequences".into(), stops);
            }
            "n" => match value.as_u64() {
                Some(1) => {}
                Some(n) if n > 1 => {
                    config.insert("candidateCount".into(), json!(n));
                }
                _ => return Err(refuse(key, "must be a positive integer")),
            },
            "response_format" => response_format(&value, &mut config)?,
            "reasoning_effort" => {
                let budget = THINKING_BUDGETS
                    .iter()
                    .find(|(effort, _)| value == *effort)
                    .ok_or_else(|| refuse(key, "must be none, minimal, low, medium or high"))?;
                config.insert("thinkingConfig".into(), json!({"thinkingBudget": budget.1}));
            }
            "tools" => {
                let declarations = function_declarations(&value)?;
                if !declarations.is_empty() {
                    body.insert(
                        "tools".into(),
                        json!([{"functionDeclarations": declarations}]),
                    );
                }
            }
            "tool_choice" => {
                body.insert("toolConfig".into(), tool_config(&value)?);
            }
            "parallel_tool_calls" if value == json!(true) => {}
            "parallel_tool_calls" => {
                return Err(refuse(
                    key,
                    "Gemini may always call several functions at once",
                ));
            }
            "logprobs" if value == json!(false) => {}
            "modalities" if value == json!(["text"]) => {}
            other => return Err(refuse(other, "cannot be translated")),
        }
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(body))
}

/// The system texts, and the conversation as Gemini `contents`.
fn translate_messages(messages: &[Value]) -> Result<(Vec<String>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    // Tool call id → the function called: a `functionResponse` names the function, a
    // `tool` message only the call's id.
    let mut called: BTreeMap<&str, &Value> = BTreeMap::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m["role"].as_str().unwrap_or_default();
        let (role, parts) = match role {
            "system" | "developer" => {
                system.push(translate::texts(&m["content"], &at, refuse)?);
                continue;
            }
            "user" => ("user", content_parts(&m["content"], &at)?),
            "assistant" => {
                let mut parts = content_parts(&m["content"], &at)?;
                for (j, call) in translate::tool_calls(m, &at, refuse)?
                    .into_iter()
                    .enumerate()
                {
                    if !call.arguments.is_object() {
                        let field = format!("{at}.tool_calls[{j}].function.arguments");
                        return Err(refuse(&field, "must be a JSON object"));
                    }
                    let mut function_call = json!({"name": call.name, "args": call.arguments});
                    if let Some(id) = call.id.as_str() {
                        called.insert(id, call.name);
                        function_call["id"] = json!(id);
                    }
                    let mut part = json!({"functionCall": function_call});
                    if let Some(signature) = thought_signature(&m["tool_calls"][j], j) {
                        part["thoughtSignature"] = json!(signature);
                    }
                    parts.push(part);
                }
                ("model", parts)
            }
            "tool" => {
                let field = format!("{at}.tool_call_id");
                let id = m["tool_call_id"]
                    .as_str()
                    .ok_or_else(|| refuse(&field, "is required"))?;
                let name = called.get(id).ok_or_else(|| {
                    refuse(&field, "names no tool call of an earlier assistant message")
                })?;
                let output = translate::texts(&m["content"], &at, refuse)?;
                // Gemini takes an object: a tool's JSON object as it is, other output
                // under `output`, the key Google's docs name for it.
                let response = match serde_json::from_str::<Value>(&output) {
                    Ok(object @ Value::Object(_)) => object,
                    _ => json!({"output": output}),
                };
                let part = json!({"functionResponse": {"id": id, "name": name,
                    "response": response}});
                ("user", vec![part])
            }
            _ => {
                return Err(refuse(
                    &format!("{at}.role"),
                    &format!("{role:?} cannot be translated"),
                ));
            }
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, prior)) if *last == role => prior.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    let contents = turns
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    Ok((system, contents))
}

/// A user or assistant message's content as Gemini parts.
fn content_parts(content: &Value, at: &str) -> Result<Vec<Value>, ProviderError> {
    let parts = match content {
        Value::Null => return Ok(Vec::new()),
        Value::String(s) if s.is_empty() => return Ok(Vec::new()),
        Value::String(s) => return Ok(vec![json!({"text": s})]),
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
            let required = |field: &str| {
                let path: Vec<&str> = field.split('.').collect();
                path.iter()
                    .fold(p, |v, key| &v[*key])
                    .as_str()
                    .ok_or_else(|| refuse(&format!("{at}.{field}"), "is required"))
            };
            match p["type"].as_str().unwrap_or_default() {
                "text" => Ok(json!({"text": required("text")?})),
                "refusal" => Ok(json!({"text": required("refusal")?})),
                "image_url" => {
                    let url = required("image_url.url")?;
                    image_part(url, &format!("{at}.image_url.url"))
                }
                "input_audio" => {
                    let data = required("input_audio.data")?;
                    let mime_type = match p["input_audio"]["format"].as_str() {
                        Some("wav") => "audio/wav",
                        Some("mp3") => "audio/mp3",
                        _ => {
                            return Err(refuse(
                                &format!("{at}.input_audio.format"),
                                "must be wav or mp3",
                            ));
                        }
                    };
                    Ok(json!({"inlineData": {"mimeType": mime_type, "data": data}}))
                }
                "file" => {
                    let field = format!("{at}.file.file_data");
                    if p["file"]["file_id"].is_string() {
                        return Err(refuse(
                            &format!("{at}.file.file_id"),
                            "files uploaded to OpenAI cannot be sent",
                        ));
                    }
                    let url = required("file.file_data")?;
                    match translate::base64_data(url, &field, refuse)? {
                        Some((mime_type, data)) => {
                            Ok(json!({"inlineData": {"mimeType": mime_type, "data": data}}))
                        }
                        None => Err(refuse(&field, "must be a base64 data: URL")),
                    }
                }
                other => Err(refuse(
                    &format!("{at}.type"),
                    &format!("{other:?} parts cannot be translated"),
                )),
            }
        })
        .collect()
}

/// An image as a part: its bytes from a `data:` URL, else its link (typed by its file
/// name where that says, else left to Google).
fn image_part(url: &str, field: &str) -> Result<Value, ProviderError> {
    if let Some((mime_type, data)) = translate::base64_data(url, field, refuse)? {
        return Ok(json!({"inlineData": {"mimeType": mime_type, "data": data}}));
    }
    let mut file = json!({"fileUri": url});
    let guessed = http::content_type_for_url(url);
    if guessed.starts_with("image/") {
        file["mimeType"] = json!(guessed);
    }
    Ok(json!({"fileData": file}))
}

/// `response_format` in `generationConfig` words.
fn response_format(format: &Value, config: &mut Map<String, Value>) -> Result<(), ProviderError> {
    match format["type"].as_str() {
        Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), json!("application/json"));
            let schema = &format["json_schema"]["schema"];
            if schema.is_object() {
                config.insert("responseJsonSchema".into(), schema.clone());
            }
        }
        _ => {
            return Err(refuse(
                "response_format.type",
                "must be text, json_object or json_schema",
            ));
        }
    }
    Ok(())
}

/// OpenAI function tools as Gemini function declarations.
fn function_declarations(tools: &Value) -> Result<Vec<Value>, ProviderError> {
    let functions = translate::function_tools(tools, refuse)?;
    Ok(functions
        .into_iter()
        .map(|f| {
            let mut declaration = json!({"name": f["name"]});
            if let Some(d) = f["description"].as_str() {
                declaration["description"] = json!(d);
            }
            // As JSON Schema: `parameters` would want Google's OpenAPI subset.
            if f["parameters"].is_object() {
                declaration["parametersJsonSchema"] = f["parameters"].clone();
            }
            declaration
        })
        .collect())
}

fn tool_config(choice: &Value) -> Result<Value, ProviderError> {
    let config = match translate::tool_choice(choice, refuse)? {
        ToolChoice::Auto => json!({"mode": "AUTO"}),
        ToolChoice::None => json!({"mode": "NONE"}),
        ToolChoice::Required => json!({"mode": "ANY"}),
        ToolChoice::Function(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    };
    Ok(json!({"functionCallingConfig": config}))
}

/// OpenAI's `finish_reason` for a candidate's `finishReason` (`called`: it called a
/// function, which Gemini reports as `STOP`).
fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "LANGUAGE" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
        | "IMAGE_SAFETY" => "content_filter",
        // STOP, OTHER, MALFORMED_FUNCTION_CALL, reasons not invented yet.
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// Gemini 3 refuses a conversation whose earlier function calls come back without the
/// thought signature they were answered with. Our answers carry it where Google's own
/// OpenAI-compatible endpoint does (`extra_content.google.thought_signature` of the
/// tool call), and it goes back on the call's part. A turn's first call that has none
/// (a history from another model, or a client that dropped the field) gets the value
/// Google documents for skipping the check, so such histories still work.
fn thought_signature(tool_call: &Value, index: usize) -> Option<&str> {
    match tool_call["extra_content"]["google"]["thought_signature"].as_str() {
        Some(signature) => Some(signature),
        None if index == 0 => Some(SKIP_SIGNATURE_CHECK),
        None => None,
    }
}

/// The thought signature Google documents for function calls that have none of their own.
const SKIP_SIGNATURE_CHECK: &str = "skip_thought_signature_validator";

/// A candidate's parts read: the answer's text (thoughts left out) and its function
/// calls as OpenAI tool calls, each with its thought signature if it has one.
fn read_parts(candidate: &Value) -> (String, Vec<Value>) {
    let parts = candidate["content"]["parts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let text = parts
        .iter()
        .filter(|p| p["thought"] != json!(true))
        .filter_map(|p| p["text"].as_str())
        .collect();
    let calls = parts
        .iter()
        .filter_map(|part| Some((part, part.get("functionCall")?)))
        .map(|(part, call)| {
            let id = call["id"].as_str().map_or_else(
                || format!("call_{}", uuid::Uuid::now_v7().simple()),
                str::to_owned,
            );
            let arguments = if call["args"].is_object() {
                call["args"].to_string()
            } else {
                "{}".to_owned()
            };
            let mut tool_call = json!({"id": id, "type": "function",
                "function": {"name": call["name"], "arguments": arguments}});
            if let Some(signature) = part["thoughtSignature"].as_str() {
                tool_call["extra_content"] = json!({"google": {"thought_signature": signature}});
            }
            tool_call
        })
        .collect();
    (text, calls)
}

/// OpenAI's usage for `usageMetadata`: tool-use prompts count as prompt, thoughts as
/// answer tokens (both are billed so).
fn usage(meta: &Value) -> Value {
    let count = |key: &str| meta[key].as_u64().unwrap_or(0);
    let prompt = count("promptTokenCount") + count("toolUsePromptTokenCount");
    let thoughts = count("thoughtsTokenCount");
    let completion = count("candidatesTokenCount") + thoughts;
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": count("cachedContentTokenCount")},
        "completion_tokens_details": {"reasoning_tokens": thoughts}})
}

/// A google.rpc.Status given in place of an answer or event, sorted as its HTTP status
/// would be.
fn status_error(error: &Value) -> ProviderError {
    let message = format!(
        "reported {}: {}",
        error["status"].as_str().unwrap_or("an error"),
        error["message"].as_str().unwrap_or_default()
    );
    if let Some((class, code)) = read_error(&json!({ "error": error })) {
        return ProviderError::new(class, code, message);
    }
    let status = error["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    http::classify(status, &Default::default(), message)
}

/// A `GenerateContentResponse` as a `chat.completion`.
pub fn completion(answer: &Value, model: &str) -> Result<Value, ProviderError> {
    if answer["error"].is_object() {
        return Err(status_error(&answer["error"]));
    }
    let candidates = answer["candidates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut choices: Vec<Value> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (text, calls) = read_parts(c);
            let finish = finish_reason(
                c["finishReason"].as_str().unwrap_or_default(),
                !calls.is_empty(),
            );
            let content = if text.is_empty() && !calls.is_empty() {
                Value::Null
            } else {
                json!(text)
            };
            let mut message = json!({"role": "assistant", "content": content, "refusal": null});
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(calls);
            }
            json!({"index": c["index"].as_u64().unwrap_or(i as u64), "message": message,
                "logprobs": null, "finish_reason": finish})
        })
        .collect();
    if choices.is_empty() {
        // The prompt itself was blocked: no candidate at all.
        if !answer["promptFeedback"]["blockReason"].is_string() {
            return Err(ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamError,
                "an answer without candidates",
            ));
        }
        choices.push(json!({"index": 0,
            "message": {"role": "assistant", "content": "", "refusal": null},
            "logprobs": null, "finish_reason": "content_filter"}));
    }
    Ok(json!({
        "id": answer["responseId"],
        "object": "chat.completion",
        "created": crate::ids::now_ms() / 1000,
        "model": model,
        "choices": choices,
        "usage": usage(&answer["usageMetadata"]),
    }))
}

/// Turns Gemini's stream, one `GenerateContentResponse` an event, into OpenAI chunks.
pub struct Translator {
    model: String,
    id: Value,
    created: i64,
    /// The latest `usageMetadata` (each event carries the counts so far).
    usage: Value,
    /// Candidate index → what its choice has been sent.
    choices: BTreeMap<u64, Sent>,
    /// The prompt was blocked: the stream holds no candidate.
    blocked: bool,
}

/// What one choice of a stream has been sent so far.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    role: bool,
    tool_calls: usize,
    finished: bool,
}

impl Translator {
    pub fn new(model: &str) -> Translator {
        Translator {
            model: model.to_owned(),
            id: Value::Null,
            created: crate::ids::now_ms() / 1000,
            usage: Value::Null,
            choices: BTreeMap::new(),
            blocked: false,
        }
    }

    fn chunk(&self, index: u64, delta: Value, finish: Option<&str>) -> String {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        .to_string()
    }

    /// One candidate of an event: its new text, its calls, and its finish.
    fn candidate(&mut self, index: u64, candidate: &Value) -> Vec<String> {
        let mut sent = self.choices.get(&index).copied().unwrap_or_default();
        let (text, calls) = read_parts(candidate);
        let mut deltas = Vec::new();
        if !text.is_empty() {
            deltas.push(json!({"content": text}));
        }
        for mut call in calls {
            // OpenAI streams each call with its index among the choice's calls, first.
            let mut indexed = Map::new();
            indexed.insert("index".into(), json!(sent.tool_calls));
            indexed.append(call.as_object_mut().expect("a tool call is an object"));
            deltas.push(json!({"tool_calls": [indexed]}));
            sent.tool_calls += 1;
        }
        let finish = candidate["finishReason"]
            .as_str()
            .map(|r| finish_reason(r, sent.tool_calls > 0));
        let mut chunks = Vec::new();
        if !sent.role && (!deltas.is_empty() || finish.is_some()) {
            sent.role = true;
            chunks.push(self.chunk(index, json!({"role": "assistant", "content": ""}), None));
        }
        chunks.extend(deltas.into_iter().map(|d| self.chunk(index, d, None)));
        if let Some(finish) = finish.filter(|_| !sent.finished) {
            sent.finished = true;
            chunks.push(self.chunk(index, json!({}), Some(finish)));
        }
        self.choices.insert(index, sent);
        chunks
    }
}

impl Translate for Translator {
    fn event(&mut self, data: &Value) -> Result<Vec<String>, ProviderError> {
        if data["error"].is_object() {
            return Err(status_error(&data["error"]));
        }
        if data["responseId"].is_string() {
            self.id = data["responseId"].clone();
        }
        if data["usageMetadata"].is_object() {
            self.usage = data["usageMetadata"].clone();
        }
        let candidates = data["candidates"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if candidates.is_empty() && data["promptFeedback"]["blockReason"].is_string() {
            self.blocked = true;
            return Ok(vec![
                self.chunk(0, json!({"role": "assistant", "content": ""}), None),
                self.chunk(0, json!({}), Some("content_filter")),
            ]);
        }
        let mut chunks = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            let index = c["index"].as_u64().unwrap_or(i as u64);
            chunks.extend(self.candidate(index, c));
        }
        Ok(chunks)
    }

    /// Gemini's stream just ends; it ended well if every candidate got its finish.
    fn end(&mut self) -> Result<Vec<String>, ProviderError> {
        let finished = !self.choices.is_empty() && self.choices.values().all(|s| s.finished);
        if !(finished || self.blocked) {
            return Err(ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamError,
                "the stream ended before its finishReason",
            ));
        }
        Ok(vec![
            json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": usage(&self.usage)})
            .to_string(),
        ])
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
            model: "google/gemini-2.5-flash".into(),
            upstream_model: "gemini-2.5-flash".into(),
        }
    }

    #[test]
    fn requests_translate_to_generate_content() {
        let body = request_body(&call(json!({
            "model": "google/gemini-2.5-flash",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "in French"}]},
                {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg?v=1"}}]},
                {"role": "user", "content": [{"type": "input_audio",
                    "input_audio": {"data": "UklG", "format": "wav"}}]},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [{"id": "call_1",
                    "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_2", "type": "function",
                        "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"},
                        "extra_content": {"google": {"thought_signature": "c2ln"}}},
                    {"id": "call_3", "type": "function",
                        "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_2", "content": "warm"},
                {"role": "tool", "tool_call_id": "call_3", "content": "cold"},
                {"role": "user", "content": "thanks"}
            ],
            "temperature": 0.5, "top_p": 0.9, "stop": "END", "max_completion_tokens": 100,
            "n": 2, "seed": 7, "presence_penalty": 0, "user": "u1", "reasoning_effort": "low",
            "response_format": {"type": "json_schema", "json_schema": {"name": "a",
                "schema": {"type": "object"}}},
            "tools": [{"type": "function", "function": {"name": "weather",
                "description": "the weather", "parameters": {"type": "object",
                    "additionalProperties": false}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "parallel_tool_calls": true
        })))
        .unwrap();
        assert_eq!(
            body,
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "what is this?"},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
                        {"fileData": {"fileUri": "https://x.test/a.jpg?v=1", "mimeType": "image/jpeg"}},
                        {"inlineData": {"mimeType": "audio/wav", "data": "UklG"}}]},
                    // A first call without a signature of its own gets the one that skips
                    // the check; a signature given comes back on its part.
                    {"role": "model", "parts": [{"text": "Let me look."},
                        {"functionCall": {"id": "call_1", "name": "weather", "args": {"city": "Paris"}},
                            "thoughtSignature": "skip_thought_signature_validator"}]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"id": "call_1", "name": "weather",
                            "response": {"output": "sunny"}}}]},
                    {"role": "model", "parts": [
                        {"functionCall": {"id": "call_2", "name": "weather", "args": {"city": "Rome"}},
                            "thoughtSignature": "c2ln"},
                        {"functionCall": {"id": "call_3", "name": "weather", "args": {"city": "Oslo"}}}]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"id": "call_2", "name": "weather",
                            "response": {"output": "warm"}}},
                        {"functionResponse": {"id": "call_3", "name": "weather",
                            "response": {"output": "cold"}}},
                        {"text": "thanks"}]}
                ],
                "systemInstruction": {"parts": [{"text": "be brief"}, {"text": "in French"}]},
                "generationConfig": {"maxOutputTokens": 100, "temperature": 0.5, "topP": 0.9,
                    "stopSequences": ["END"], "candidateCount": 2, "seed": 7,
                    "thinkingConfig": {"thinkingBudget": 1024},
                    "responseMimeType": "application/json",
                    "responseJsonSchema": {"type": "object"}},
                "tools": [{"functionDeclarations": [{"name": "weather", "description": "the weather",
                    "parametersJsonSchema": {"type": "object", "additionalProperties": false}}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                    "allowedFunctionNames": ["weather"]}}
            })
        );
    }

    #[test]
    fn untranslatable_fields_are_refused_by_name() {
        for (field, value) in [
            ("logprobs", json!(true)),
            ("top_logprobs", json!(2)),
            ("n", json!(0)),
            ("parallel_tool_calls", json!(false)),
            ("response_format", json!({"type": "xml"})),
            ("reasoning_effort", json!("extreme")),
            ("tool_choice", json!("sometimes")),
            ("logit_bias", json!({"1": 2})),
            ("audio", json!({"voice": "alloy"})),
        ] {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            body[field] = value;
            let e = request_body(&call(body)).unwrap_err();
            assert_eq!(e.class, ErrorClass::InvalidInput, "{field}");
            assert!(e.message.starts_with(field), "{field}: {}", e.message);
        }
        for (messages, field) in [
            (
                json!([{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]),
                "messages[0].content[0].file.file_id",
            ),
            (
                json!([{"role": "user", "content": "hi"},
                    {"role": "tool", "tool_call_id": "call_9", "content": "x"}]),
                "messages[1].tool_call_id",
            ),
            (
                json!([{"role": "assistant", "content": null, "tool_calls": [{"id": "c",
                    "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                json!([{"role": "function", "name": "f", "content": "x"}]),
                "messages[0].role",
            ),
            (
                json!([{"role": "system", "content": "only this"}]),
                "messages",
            ),
        ] {
            let body = json!({"model": "m", "messages": messages});
            let e = request_body(&call(body)).unwrap_err();
            assert!(e.message.starts_with(field), "{field}: {}", e.message);
        }
    }

    #[test]
    fn answers_translate_to_completions() {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking hard", "thought": true},
                {"text": "Let me look."},
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "c2ln"}]},
                "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5,
                "thoughtsTokenCount": 20, "totalTokenCount": 35},
            "modelVersion": "gemini-2.5-flash", "responseId": "r1"});
        let c = completion(&answer, "gemini-2.5-flash").unwrap();
        let choice = &c["choices"][0];
        assert_eq!(choice["message"]["content"], "Let me look.");
        let call = &choice["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
        assert_eq!(
            call["function"],
            json!({"name": "weather", "arguments": "{\"city\":\"Paris\"}"})
        );
        // Where Google's OpenAI-compatible endpoint puts it, for the next turn.
        assert_eq!(
            call["extra_content"],
            json!({"google": {"thought_signature": "c2ln"}})
        );
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 10, "completion_tokens": 25, "total_tokens": 35,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 20}})
        );
        for (reason, finish) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("OTHER", "stop"),
        ] {
            assert_eq!(finish_reason(reason, false), finish);
        }
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}});
        let c = completion(&blocked, "gemini-2.5-flash").unwrap();
        assert_eq!(c["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(c["choices"][0]["message"]["content"], "");
        let e = completion(&json!({}), "gemini-2.5-flash").unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable);
    }

    #[test]
    fn stream_events_translate_to_chunks() {
        let mut t = Translator::new("gemini-2.5-flash");
        let usage = |n: u64| json!({"promptTokenCount": 7, "candidatesTokenCount": n, "totalTokenCount": 7 + n});
        let events = [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}}],
                "usageMetadata": usage(1), "responseId": "r1"}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " there"},
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}}}]}}],
                "usageMetadata": usage(5)}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]},
                "finishReason": "STOP"}], "usageMetadata": usage(6)}),
        ];
        let mut chunks: Vec<Value> = events
            .iter()
            .flat_map(|e| t.event(e).unwrap())
            .map(|c| serde_json::from_str::<Value>(&c).unwrap())
            .collect();
        chunks.extend(
            t.end()
                .unwrap()
                .iter()
                .map(|c| serde_json::from_str::<Value>(c).unwrap()),
        );
        let deltas: Vec<Value> = chunks.iter().map(|c| c["choices"][0].clone()).collect();
        assert_eq!(deltas.len(), 6, "{chunks:?}");
        assert_eq!(
            deltas[0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(deltas[1]["delta"], json!({"content": "Hi"}));
        assert_eq!(deltas[2]["delta"], json!({"content": " there"}));
        let call = &deltas[3]["delta"]["tool_calls"][0];
        assert_eq!(
            (call["index"].clone(), call["function"].clone()),
            (
                json!(0),
                json!({"name": "weather", "arguments": "{\"city\":\"Paris\"}"})
            )
        );
        assert_eq!(deltas[4]["finish_reason"], "tool_calls");
        assert_eq!(chunks[5]["choices"], json!([]));
        assert_eq!(chunks[5]["usage"]["completion_tokens"], 6);
        assert!(chunks.iter().all(|c| c["id"] == "r1"));

        // A stream that ends without a finishReason broke off; a Status event is sorted
        // by its code.
        let mut t = Translator::new("gemini-2.5-flash");
        t.event(&events[0]).unwrap();
        assert_eq!(t.end().unwrap_err().class, ErrorClass::Retryable);
        for (code, status, class) in [
            (503, "UNAVAILABLE", ErrorClass::Retryable),
            (400, "INVALID_ARGUMENT", ErrorClass::InvalidInput),
        ] {
            let e = Translator::new("m")
                .event(&json!({"error": {"code": code, "message": "no", "status": status}}))
                .unwrap_err();
            assert_eq!(e.class, class, "{status}");
        }
        let e = Translator::new("m")
            .event(
                &json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}]}}),
            )
            .unwrap_err();
        assert_eq!(
            e.class,
            ErrorClass::RateLimited {
                retry_after: std::time::Duration::from_secs(3)
            }
        );
    }
}
