//! What the adapters that translate OpenAI's chat format to another API (Anthropic,
//! Gemini) share: reading a message's content as text, `data:` URLs, assistant tool
//! calls, function tools, `tool_choice` and `stop`, and the loop that turns the upstream's
//! SSE events into OpenAI chunks through the adapter's own [`Translate`].
//!
//! Every reader takes the adapter's `refuse`, so a field that cannot be sent is a 400
//! naming it in the adapter's words.

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};

use super::ChunkStream;
use crate::ErrorCode;
use crate::providers::http::Upstream;
use crate::providers::{ErrorClass, ProviderError};

/// An adapter's refusal of a field it cannot translate: `refuse(field, why)`.
pub type Refuse = fn(&str, &str) -> ProviderError;

/// A request `api` cannot be sent: a 400 naming the field, with no fallback (another
/// provider of the same model would be asked the same thing).
pub fn refusal(api: &str, field: &str, why: &str) -> ProviderError {
    ProviderError::new(
        ErrorClass::InvalidInput,
        ErrorCode::InvalidField,
        format!("{field}: {why} ({api} has no equivalent)"),
    )
}

/// A translated request's POST to `url`, asking for SSE when the call streams; the
/// adapter adds its key and headers.
pub fn post(
    upstream: &Upstream,
    url: impl reqwest::IntoUrl,
    body: &Value,
    stream: bool,
) -> RequestBuilder {
    let request = upstream
        .request(Method::POST, url)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string());
    if stream {
        return request.header(ACCEPT, "text/event-stream");
    }
    request
}

/// A stream that stopped making sense or stopped early: worth another try elsewhere if
/// nothing reached the client yet.
pub fn broken(name: &str, why: &str) -> ProviderError {
    ProviderError::new(
        ErrorClass::Retryable,
        ErrorCode::UpstreamError,
        format!("{name}: {why}"),
    )
}

/// An unstreamed answer's JSON.
pub async fn answer(upstream: &Upstream, response: Response) -> Result<Value, ProviderError> {
    let text = response
        .text()
        .await
        .map_err(|e| upstream.transport_error(&e))?;
    serde_json::from_str(&text)
        .map_err(|e| broken(upstream.name, &format!("unreadable answer: {e}")))
}

/// Turns one upstream's stream events into OpenAI chunks.
pub trait Translate: Send + 'static {
    /// The chunks one event's JSON gives (often none), or the error it reports.
    fn event(&mut self, data: &Value) -> Result<Vec<String>, ProviderError>;
    /// The upstream's stream ended: the last chunks, or why it ended too early.
    fn end(&mut self) -> Result<Vec<String>, ProviderError>;
}

/// The OpenAI chunks of an SSE answer, translated event by event. An error (the
/// translator's, or the connection's) is the last item.
pub fn chunk_stream(
    upstream: &Upstream,
    response: Response,
    translator: impl Translate,
) -> ChunkStream {
    let upstream = upstream.clone();
    let name = upstream.name;
    let events = response.bytes_stream().eventsource();
    // `None` once the stream has ended.
    let chunks = futures::stream::unfold(Some((events, translator)), move |state| {
        let upstream = upstream.clone();
        async move {
            let (mut events, mut t) = state?;
            loop {
                let event = match events.next().await {
                    Some(Ok(event)) if event.data.is_empty() => continue,
                    Some(Ok(event)) => event,
                    Some(Err(eventsource_stream::EventStreamError::Transport(e))) => {
                        return Some((vec![Err(upstream.transport_error(&e))], None));
                    }
                    Some(Err(e)) => {
                        let e = broken(name, &format!("unreadable stream: {e}"));
                        return Some((vec![Err(e)], None));
                    }
                    None => {
                        let last = match t.end() {
                            Ok(chunks) => chunks.into_iter().map(Ok).collect(),
                            Err(e) => vec![Err(named(name, e))],
                        };
                        return Some((last, None));
                    }
                };
                let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                    return Some((vec![Err(broken(name, "an event that is not JSON"))], None));
                };
                match t.event(&data) {
                    Err(e) => return Some((vec![Err(named(name, e))], None)),
                    Ok(chunks) if chunks.is_empty() => continue,
                    Ok(chunks) => {
                        let out = chunks.into_iter().map(Ok).collect();
                        return Some((out, Some((events, t))));
                    }
                }
            }
        }
    })
    .flat_map(futures::stream::iter);
    Box::pin(chunks)
}

/// The error with the provider's name in front, as every upstream error says it.
pub fn named(name: &str, e: ProviderError) -> ProviderError {
    ProviderError {
        message: format!("{name}: {}", e.message),
        ..e
    }
}

/// A message's content as text: a string, or its text parts joined.
pub fn texts(content: &Value, at: &str, refuse: Refuse) -> Result<String, ProviderError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| {
                p["text"].as_str().map(str::to_owned).ok_or_else(|| {
                    refuse(&format!("{at}.content[{j}]"), "only text parts can go here")
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.join("\n")),
        _ => Err(refuse(
            &format!("{at}.content"),
            "must be a string or parts",
        )),
    }
}

/// The media type and base64 bytes of a `data:` URL; `None` for any other URL. `field`
/// names the URL in a refusal.
pub fn base64_data<'a>(
    url: &'a str,
    field: &str,
    refuse: Refuse,
) -> Result<Option<(&'a str, &'a str)>, ProviderError> {
    let Some(data) = url.strip_prefix("data:") else {
        return Ok(None);
    };
    data.split_once(";base64,")
        .map(Some)
        .ok_or_else(|| refuse(field, "a data: URL must be base64"))
}

/// One of an assistant message's `tool_calls`.
pub struct ToolCall<'a> {
    pub id: &'a Value,
    pub name: &'a Value,
    /// `function.arguments`, read as JSON.
    pub arguments: Value,
}

/// An assistant message's function calls (`at` names the message).
pub fn tool_calls<'a>(
    message: &'a Value,
    at: &str,
    refuse: Refuse,
) -> Result<Vec<ToolCall<'a>>, ProviderError> {
    let calls = message["tool_calls"].as_array().map(Vec::as_slice);
    calls
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let at = format!("{at}.tool_calls[{j}]");
            if call["type"] != "function" {
                return Err(refuse(&format!("{at}.type"), "only function calls"));
            }
            let args = call["function"]["arguments"].as_str().unwrap_or("{}");
            let arguments = serde_json::from_str(if args.is_empty() { "{}" } else { args })
                .map_err(|_| refuse(&format!("{at}.function.arguments"), "must be JSON"))?;
            Ok(ToolCall {
                id: &call["id"],
                name: &call["function"]["name"],
                arguments,
            })
        })
        .collect()
}

/// The `function` objects of `tools` (OpenAI function tools, the only kind translated).
pub fn function_tools(tools: &Value, refuse: Refuse) -> Result<Vec<&Value>, ProviderError> {
    let tools = tools
        .as_array()
        .ok_or_else(|| refuse("tools", "must be an array"))?;
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t["type"] != "function" {
                return Err(refuse(&format!("tools[{i}].type"), "only function tools"));
            }
            Ok(&t["function"])
        })
        .collect()
}

/// `tool_choice`, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChoice<'a> {
    Auto,
    None,
    Required,
    Function(&'a str),
}

pub fn tool_choice(choice: &Value, refuse: Refuse) -> Result<ToolChoice<'_>, ProviderError> {
    match choice {
        Value::String(s) if s == "auto" => Ok(ToolChoice::Auto),
        Value::String(s) if s == "none" => Ok(ToolChoice::None),
        Value::String(s) if s == "required" => Ok(ToolChoice::Required),
        Value::Object(_) if choice["type"] == "function" => match choice["function"]["name"] {
            Value::String(ref name) => Ok(ToolChoice::Function(name)),
            _ => Err(refuse("tool_choice.function.name", "is required")),
        },
        _ => Err(refuse(
            "tool_choice",
            "must be auto, none, required or a function",
        )),
    }
}

/// `stop`: one string or several.
pub fn stop_sequences(value: Value, refuse: Refuse) -> Result<Value, ProviderError> {
    match value {
        Value::String(s) => Ok(json!([s])),
        Value::Array(a) if a.iter().all(Value::is_string) => Ok(Value::Array(a)),
        _ => Err(refuse("stop", "must be a string or an array of strings")),
    }
}
