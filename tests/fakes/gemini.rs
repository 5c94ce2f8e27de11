//! The Gemini API's text side as documented, served by the `google` fake (one host and
//! one key, as Google's): `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` for every Gemini model that is not an image model.
//!
//! - The request is checked as Google checks it: only documented field names at the top,
//!   in `generationConfig`, in parts and in function declarations (another name is a 400
//!   "Invalid JSON payload received. Unknown name …"); `contents` non-empty, roles `user`
//!   or `model`, each part one kind of data; a `functionResponse` names its function.
//! - The answer: `candidates` (`candidateCount` of them) with `content.parts` and
//!   `finishReason` (`STOP`, or `MAX_TOKENS` when `maxOutputTokens` cuts the reply), and
//!   `usageMetadata`: `promptTokenCount` (a word of text, 258 a picture or other blob, 5
//!   a function call or response), `candidatesTokenCount` (a word of each answer) and
//!   `thoughtsTokenCount` (`THOUGHTS` unless `thinkingBudget` is 0; Flash-Lite thinks only
//!   with a budget), with `modelVersion` and `responseId`.
//! - With `functionDeclarations`, mode not `NONE`, and a last turn that is not a function
//!   response: `TOOL_PREAMBLE` then a `functionCall` of the first allowed function (args
//!   `{"city": "Paris"}`, with a `thoughtSignature`), finish `STOP`. A last turn with
//!   function responses is answered `The {name} tool said {response}`.
//! - `:streamGenerateContent?alt=sse`: `data: {GenerateContentResponse}` events, a word
//!   each, each with `usageMetadata` so far, `finishReason` on the last; no `[DONE]`: the
//!   stream just ends. Without `alt=sse`, one JSON array of those responses.
//! - `refuse`: the prompt is blocked (`promptFeedback.blockReason`, no candidates).
//! - Errors are google.rpc.Status: the `google` fake's scripted ones (429
//!   RESOURCE_EXHAUSTED with RetryInfo, 500 INTERNAL, 503 UNAVAILABLE…), 404 NOT_FOUND for
//!   a model that is not Gemini; a stream that breaks off after `chat_break_after` words
//!   sends a Status (503 UNAVAILABLE) as its last event.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{FakeState, chat, google};

/// What the fake says before calling a function.
pub const TOOL_PREAMBLE: &str = "Let me check.";
/// The thinking tokens of an answer when the model thinks.
pub const THOUGHTS: u64 = 8;
/// The thought signature on the function calls the fake makes.
pub const THOUGHT_SIGNATURE: &str = "ZmFrZSB0aG91Z2h0cw==";
/// A picture's (or other blob's) tokens in the prompt.
pub const BLOB_TOKENS: u64 = 258;

const REQUEST_FIELDS: &[&str] = &[
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
];
const CONFIG_FIELDS: &[&str] = &[
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
    "mediaResolution",
    "speechConfig",
];
/// A part's kinds of data (one each) and the fields that may go beside them.
const PART_DATA: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
];
const PART_EXTRAS: &[&str] = &["thought", "thoughtSignature", "videoMetadata"];
const DECLARATION_FIELDS: &[&str] = &[
    "name",
    "description",
    "parameters",
    "parametersJsonSchema",
    "response",
    "responseJsonSchema",
    "behavior",
];

/// A request the API refuses: a 400 INVALID_ARGUMENT with these words.
struct Invalid(String);

fn invalid(message: &str) -> Invalid {
    Invalid(message.to_owned())
}

fn unknown_name(name: &str, at: &str) -> Invalid {
    Invalid(format!(
        "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
    ))
}

/// The first field of `object` not in `known`, as Google's error names it.
fn check_fields(object: &Value, known: &[&str], at: &str) -> Result<(), Invalid> {
    let unknown = object
        .as_object()
        .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())));
    match unknown {
        Some(name) => Err(unknown_name(name, at)),
        None => Ok(()),
    }
}

/// Checks a request as the API does; its prompt's token count.
fn check(request: &Value) -> Result<u64, Invalid> {
    check_fields(request, REQUEST_FIELDS, "")?;
    check_fields(
        &request["generationConfig"],
        CONFIG_FIELDS,
        "generation_config",
    )?;
    let contents = request["contents"].as_array().map(Vec::as_slice);
    let contents = contents.unwrap_or_default();
    if contents.is_empty() {
        return Err(invalid(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    }
    let mut tokens = 0;
    let system = request["systemInstruction"]["parts"].as_array();
    let mut turns: Vec<(String, &Value)> = system
        .into_iter()
        .flatten()
        .map(|p| ("system_instruction".to_owned(), p))
        .collect();
    for (i, content) in contents.iter().enumerate() {
        if !matches!(content["role"].as_str(), Some("user" | "model")) {
            return Err(invalid("Please use a valid role: user, model."));
        }
        let parts = content["parts"].as_array().map(Vec::as_slice);
        let parts = parts.unwrap_or_default();
        if parts.is_empty() {
            return Err(invalid(&format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            )));
        }
        turns.extend(parts.iter().map(|p| (format!("contents[{i}].parts"), p)));
    }
    for (at, part) in turns {
        let mut known = PART_DATA.to_vec();
        known.extend_from_slice(PART_EXTRAS);
        check_fields(part, &known, &at)?;
        let kinds: Vec<&&str> = PART_DATA
            .iter()
            .filter(|k| part.get(**k).is_some())
            .collect();
        if kinds.len() != 1 {
            return Err(invalid(&format!(
                "* GenerateContentRequest.{at}: a part must hold exactly one of text, inlineData, \
                 fileData, functionCall, functionResponse"
            )));
        }
        tokens += match *kinds[0] {
            "text" => part["text"]
                .as_str()
                .map_or(0, |t| t.split_whitespace().count() as u64),
            "inlineData" | "fileData" => BLOB_TOKENS,
            "functionResponse" if !part["functionResponse"]["name"].is_string() => {
                return Err(invalid(&format!(
                    "* GenerateContentRequest.{at}.function_response.name: Name cannot be empty."
                )));
            }
            _ => 5,
        };
    }
    for tool in request["tools"].as_array().into_iter().flatten() {
        for d in tool["functionDeclarations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            check_fields(d, DECLARATION_FIELDS, "tools[0].function_declarations[0]")?;
            if d.get("parameters").is_some() && d.get("parametersJsonSchema").is_some() {
                return Err(invalid(
                    "parameters and parameters_json_schema are mutually exclusive",
                ));
            }
        }
    }
    Ok(tokens)
}

/// The function the model calls, if it calls one.
fn function_to_call(request: &Value) -> Option<String> {
    let config = &request["toolConfig"]["functionCallingConfig"];
    if config["mode"] == "NONE" {
        return None;
    }
    let last = request["contents"].as_array()?.last()?;
    let answering = last["parts"]
        .as_array()?
        .iter()
        .any(|p| p.get("functionResponse").is_some());
    if answering {
        return None;
    }
    let allowed = config["allowedFunctionNames"][0].as_str();
    let first = request["tools"][0]["functionDeclarations"][0]["name"].as_str();
    allowed.or(first).map(str::to_owned)
}

/// What the answer says: the tool's words when the last turn answers a call.
fn reply(state: &FakeState, request: &Value) -> String {
    let last = request["contents"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["parts"].as_array());
    let answered: Vec<String> = last
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("functionResponse"))
        .map(|r| {
            format!(
                "The {} tool said {}",
                r["name"].as_str().unwrap_or(""),
                r["response"]
            )
        })
        .collect();
    if !answered.is_empty() {
        return answered.join(" and ");
    }
    (state.behaviour.chat_reply.clone()).unwrap_or_else(|| chat::DEFAULT_REPLY.to_owned())
}

/// Answers one text call; `streamed`: `:streamGenerateContent`, with `sse` for `alt=sse`.
pub async fn generate(
    state: &Arc<FakeState>,
    model: &str,
    streamed: bool,
    sse: bool,
    body: &[u8],
) -> Response {
    if !model.starts_with("gemini") {
        return google::status(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!(
                "models/{model} is not found for API version v1beta, or is not supported for \
                 generateContent."
            ),
        );
    }
    if state.behaviour.chat_hang {
        std::future::pending::<()>().await;
    }
    let refuse =
        |Invalid(message)| google::status(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &message);
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return refuse(invalid("Invalid JSON payload received."));
    };
    let prompt_tokens = match check(&request) {
        Ok(n) => n,
        Err(refused) => return refuse(refused),
    };
    let config = &request["generationConfig"];
    let candidates = config["candidateCount"].as_u64().unwrap_or(1);
    let thinks = config["thinkingConfig"]["thinkingBudget"]
        .as_i64()
        .map_or(!model.contains("lite"), |b| b != 0);
    let thoughts = if thinks { THOUGHTS } else { 0 };
    let id = uuid::Uuid::now_v7().simple().to_string();
    let usage = |answer_tokens: u64| {
        let mut usage = json!({"promptTokenCount": prompt_tokens,
            "candidatesTokenCount": answer_tokens,
            "totalTokenCount": prompt_tokens + answer_tokens + thoughts});
        if thoughts > 0 {
            usage["thoughtsTokenCount"] = json!(thoughts);
        }
        usage
    };
    let response = |candidates: Value, usage: Value| {
        json!({"candidates": candidates, "usageMetadata": usage, "modelVersion": model,
            "responseId": id})
    };
    // The answer's pieces, each a part of every candidate: words, or a preamble and a call.
    let mut pieces: Vec<Value> = Vec::new();
    let mut finish = "STOP";
    match function_to_call(&request) {
        Some(name) => {
            pieces.push(json!({"text": TOOL_PREAMBLE}));
            pieces.push(
                json!({"functionCall": {"name": name, "args": {"city": "Paris"}},
                "thoughtSignature": THOUGHT_SIGNATURE}),
            );
        }
        None => {
            let text = reply(state, &request);
            let words = text.split(' ').enumerate().map(|(i, w)| {
                if i == 0 {
                    w.to_owned()
                } else {
                    format!(" {w}")
                }
            });
            pieces.extend(words.map(|w| json!({"text": w})));
            if let Some(max) = config["maxOutputTokens"].as_u64()
                && pieces.len() as u64 > max
            {
                pieces.truncate(max as usize);
                finish = "MAX_TOKENS";
            }
        }
    }
    let tokens = pieces.len() as u64 * candidates;
    let candidate = |parts: Vec<Value>, i: u64, finish: Option<&str>| {
        let mut c = json!({"content": {"parts": parts, "role": "model"}});
        if let Some(finish) = finish {
            c["finishReason"] = json!(finish);
        }
        // Streamed candidates name their index only when there are several.
        if candidates > 1 || !streamed {
            c["index"] = json!(i);
        }
        c
    };
    if state.behaviour.refuse {
        let blocked = json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
            "modelVersion": model, "responseId": id});
        return if streamed {
            chat::sse(state, vec![format!("data: {blocked}\r\n\r\n")], false)
        } else {
            axum::Json(blocked).into_response()
        };
    }
    if !streamed {
        tokio::time::sleep(state.behaviour.chat_first_token_delay).await;
        // One text part for the words, as Gemini answers.
        let mut parts: Vec<Value> = Vec::new();
        for piece in &pieces {
            match (parts.last_mut(), piece["text"].as_str()) {
                (Some(last), Some(text)) if last["text"].is_string() => {
                    let joined = format!("{}{text}", last["text"].as_str().unwrap());
                    last["text"] = json!(joined);
                }
                _ => parts.push(piece.clone()),
            }
        }
        let all = (0..candidates).map(|i| candidate(parts.clone(), i, Some(finish)));
        return axum::Json(response(all.collect(), usage(tokens))).into_response();
    }
    let mut events: Vec<Value> = Vec::new();
    for (n, piece) in pieces.iter().enumerate() {
        if state.behaviour.chat_break_after == Some(n) {
            events.push(json!({"error": {"code": 503,
                "message": "The model is overloaded. Please try again later.",
                "status": "UNAVAILABLE"}}));
            break;
        }
        let last = n + 1 == pieces.len();
        let all =
            (0..candidates).map(|i| candidate(vec![piece.clone()], i, last.then_some(finish)));
        let so_far = (n as u64 + 1) * candidates;
        events.push(response(all.collect(), usage(so_far)));
    }
    if !sse {
        return axum::Json(Value::Array(events)).into_response();
    }
    // Google ends its SSE lines with CRLF.
    let events = events
        .iter()
        .map(|e| format!("data: {e}\r\n\r\n"))
        .collect();
    chat::sse(state, events, false)
}

/// A scripted failure's Status word, for each status the fakes are told to answer.
pub fn status_word(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNAVAILABLE",
    }
}
