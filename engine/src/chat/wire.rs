//! The OpenAI wire format of chat completions: the request as a client sends it, and the
//! answers and stream chunks as upstreams send them back.
//!
//! Only what routing and accounting need is typed (`model`, `models`, `provider`,
//! `stream`, `stream_options`, `simulate`, `usage`, `error`). Everything else — `tools`,
//! `tool_choice`, `response_format`, images in `messages`, fields not invented yet — is
//! kept as the exact text the client sent ([`RawObject`]), so an OpenAI-compatible
//! upstream receives it byte for byte. (`#[serde(flatten)]` into a map cannot hold raw
//! values, and a `serde_json::Value` would reorder keys and rewrite numbers.)

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::catalog::InvalidField;
use crate::fields;
use crate::jobs::routing::{self, ProviderPrefs};

/// A JSON object field by field, in order, each value kept as the text it arrived as.
#[derive(Debug, Clone, Default)]
pub struct RawObject {
    fields: Vec<(String, Box<RawValue>)>,
}

impl RawObject {
    /// Reads a JSON object; anything else is an error.
    pub fn parse(text: &str) -> Result<RawObject, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The field, unless it is absent or `null`.
    pub fn present(&self, key: &str) -> Option<&RawValue> {
        self.get(key).filter(|v| v.get() != "null")
    }

    pub fn remove(&mut self, key: &str) -> Option<Box<RawValue>> {
        let at = self.fields.iter().position(|(k, _)| k == key)?;
        Some(self.fields.remove(at).1)
    }

    /// Sets `key` to `value`, in place if it is there, else at the end.
    pub fn set_raw(&mut self, key: &str, value: Box<RawValue>) {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.fields.push((key.to_owned(), value)),
        }
    }

    pub fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        let raw = serde_json::value::to_raw_value(value).expect("plain values serialize");
        self.set_raw(key, raw);
    }

    /// The JSON text.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("raw values serialize")
    }
}

impl Serialize for RawObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.fields.len()))?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawObject, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = RawObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut object = RawObject::default();
                while let Some(key) = map.next_key::<String>()? {
                    let value: Box<RawValue> = map.next_value()?;
                    // A repeated key: the last one counts, as in every JSON parser we
                    // forward to.
                    object.set_raw(&key, value);
                }
                Ok(object)
            }
        }
        d.deserialize_map(Fields)
    }
}

/// `simulate` on a request for a built-in chat model: when to start answering, how fast,
/// and how to fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Simulate {
    /// Before the first token.
    pub latency_ms: u64,
    /// Between two tokens of a stream.
    pub token_interval_ms: u64,
    pub fail: SimulatedFailure,
    /// How many calls fail with `fail: "transient"` (each call of a request counts once).
    pub fail_times: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SimulatedFailure {
    #[default]
    None,
    /// An outage: the request moves to its next model, or gets a 502.
    Transient,
    /// A refusal of the request (`upstream_rejected`).
    Permanent,
}

/// A chat completion request, checked: what routing needs, typed; the rest kept as sent.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// `model`, then `models`, each once: the catalog models to try, in order.
    pub models: Vec<String>,
    /// Whether `models[0]` came from `model` (it names the field in errors).
    pub from_model: bool,
    pub stream: bool,
    /// `stream_options.include_usage`: the client wants the final usage chunk.
    pub include_usage: bool,
    pub provider: ProviderPrefs,
    /// `provider.sort: "price"`: cheapest models first.
    pub sort_by_price: bool,
    /// `provider.max_price`: the most a million prompt and answer tokens may cost, in
    /// millionths of a dollar.
    pub max_price: MaxPrice,
    pub simulate: Option<Simulate>,
    /// `max_completion_tokens` or `max_tokens`, or the limit the gateway set
    /// ([`ChatRequest::limit_answer`]).
    pub max_tokens: Option<u64>,
    /// The client set no answer limit and the gateway did: it is added to the body.
    limited_by_gateway: bool,
    /// The conversation, byte for byte.
    pub messages: Box<RawValue>,
    /// How many image parts the conversation holds (their tokens are not in its bytes).
    pub images: u64,
    /// The conversation holds a part whose tokens nothing in the request bounds: a file
    /// (by `file_id`, or a document whose compressed bytes make more tokens than they
    /// weigh), audio, or a kind of part not known here.
    pub unbounded_parts: bool,
    /// `stream_options` as sent (its `include_usage` aside).
    stream_options: RawObject,
    /// Every other field, byte for byte, in the client's order.
    rest: RawObject,
}

/// `provider.max_price`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxPrice {
    pub prompt: Option<i64>,
    pub completion: Option<i64>,
}

/// Roles a message may have (OpenAI's, with the legacy `function`).
const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Fields of `provider` a chat request takes.
const PROVIDER_FIELDS: &[&str] = &[
    "order",
    "only",
    "ignore",
    "allow_fallbacks",
    "sort",
    "max_price",
];

/// Most models one request may list.
pub const MAX_MODELS: usize = 10;

impl ChatRequest {
    /// Reads and checks a request body; `is_provider` says which names
    /// `provider.order` / `only` / `ignore` may hold.
    pub fn parse(
        body: &[u8],
        is_provider: &dyn Fn(&str) -> bool,
        providers: &str,
    ) -> Result<ChatRequest, InvalidField> {
        let text = std::str::from_utf8(body)
            .map_err(|_| InvalidField::new("", "the request body is not UTF-8 text"))?;
        let mut rest: RawObject = serde_json::from_str(text).map_err(|e| {
            InvalidField::new("", format!("the request body is not a JSON object: {e}"))
                .with_code(crate::ErrorCode::InvalidJson)
        })?;
        let model: Option<String> = take(&mut rest, "model", "model must be a string")?;
        let listed: Option<Vec<String>> =
            take(&mut rest, "models", "models must be an array of model ids")?;
        let from_model = model.is_some();
        let mut models = Vec::new();
        for id in model.into_iter().chain(listed.unwrap_or_default()) {
            if id.trim().is_empty() || id.contains('\0') {
                let param = if models.is_empty() && from_model {
                    "model"
                } else {
                    "models"
                };
                return Err(InvalidField::new(
                    param,
                    format!("{param} must name a model"),
                ));
            }
            if !models.contains(&id) {
                models.push(id);
            }
        }
        if models.is_empty() {
            return Err(InvalidField::new(
                "model",
                "model is required; GET /v1/models?output_modality=text lists chat models",
            ));
        }
        if models.len() > MAX_MODELS {
            return Err(InvalidField::new(
                "models",
                format!("at most {MAX_MODELS} models may be listed"),
            ));
        }
        let messages = rest
            .remove("messages")
            .ok_or_else(|| InvalidField::new("messages", "messages is required"))?;
        let MediaParts {
            images,
            unbounded: unbounded_parts,
        } = check_messages(&messages)?;
        let stream: Option<bool> = take(&mut rest, "stream", "stream must be true or false")?;
        let stream = stream.unwrap_or(false);
        let mut stream_options: RawObject = take(
            &mut rest,
            "stream_options",
            "stream_options must be an object",
        )?
        .unwrap_or_default();
        let include_usage: Option<bool> = take(
            &mut stream_options,
            "include_usage",
            "stream_options.include_usage must be true or false",
        )
        .map_err(|e| InvalidField::new("stream_options.include_usage", e.message))?;
        let provider: Option<Value> = take(&mut rest, "provider", "provider must be an object")?;
        let (prefs, sort_by_price, max_price) = parse_provider(provider, is_provider, providers)?;
        let simulate: Option<Value> = take(&mut rest, "simulate", "simulate must be an object")?;
        let simulate = simulate.map(|v| parse_simulate(&v)).transpose()?;
        let max_tokens = max_tokens(&rest)?;
        Ok(ChatRequest {
            models,
            from_model,
            stream,
            include_usage: stream && include_usage.unwrap_or(false),
            provider: prefs,
            sort_by_price,
            max_price,
            simulate,
            max_tokens,
            limited_by_gateway: false,
            messages,
            images,
            unbounded_parts,
            stream_options,
            rest,
        })
    }

    /// Names `models[i]` the way the client wrote it.
    pub fn model_param(&self, i: usize) -> String {
        match (i, self.from_model) {
            (0, true) => "model".to_owned(),
            (i, true) => format!("models[{}]", i - 1),
            (i, false) => format!("models[{i}]"),
        }
    }

    /// The body for an OpenAI-compatible upstream: the client's own fields with `model`
    /// set to the upstream's name, our routing fields taken out, and on a stream the
    /// final usage chunk always asked for (we record usage; the relay drops the chunk
    /// again if the client did not ask for it).
    /// Limits the answer to `tokens` when the client set no limit: what a chat's hold of
    /// money covers, so that an answer can never cost more than was held for it.
    pub fn limit_answer(&mut self, tokens: u64) {
        if self.max_tokens.is_none() {
            self.max_tokens = Some(tokens);
            self.limited_by_gateway = true;
        }
    }

    /// The body for an OpenAI-compatible host: the client's, byte for byte, with its
    /// model's name there, and the answer limit the gateway set under `limit_field` (hosts
    /// differ in which name they take).
    pub fn upstream_body(&self, upstream_model: &str, limit_field: &str) -> Vec<u8> {
        let mut body = RawObject::default();
        body.set("model", upstream_model);
        body.set_raw("messages", self.messages.clone());
        for (k, v) in &self.rest.fields {
            body.set_raw(k, v.clone());
        }
        if let (true, Some(tokens)) = (self.limited_by_gateway, self.max_tokens) {
            body.set(limit_field, &tokens);
        }
        if self.stream {
            body.set("stream", &true);
            let mut options = self.stream_options.clone();
            options.set("include_usage", &true);
            body.set("stream_options", &options);
        }
        body.to_vec()
    }

    /// The client's other fields (not the routing ones, `messages` or `stream`), in
    /// order, for an adapter that translates them to another API.
    pub fn other_fields(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.rest
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    /// The conversation as text, message by message (role, text), for the built-in model.
    pub fn texts(&self) -> Vec<(String, String)> {
        let messages: Vec<Value> = serde_json::from_str(self.messages.get()).unwrap_or_default();
        messages
            .iter()
            .map(|m| {
                let role = m["role"].as_str().unwrap_or_default().to_owned();
                let text = match &m["content"] {
                    Value::String(s) => s.clone(),
                    Value::Array(parts) => parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                    _ => String::new(),
                };
                (role, text)
            })
            .collect()
    }
}

/// Takes `key` out of `obj` as a `T`; absent and `null` are `None`, another type is a 400
/// naming the field.
fn take<T: serde::de::DeserializeOwned>(
    obj: &mut RawObject,
    key: &str,
    message: &str,
) -> Result<Option<T>, InvalidField> {
    match obj.remove(key) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|_| InvalidField::new(key, message)),
    }
}

/// What a conversation's parts add to its prompt beyond its bytes.
#[derive(Debug, Default, PartialEq, Eq)]
struct MediaParts {
    images: u64,
    /// A part neither text nor an image (see [`ChatRequest::unbounded_parts`]).
    unbounded: bool,
}

/// `messages`: a non-empty array of objects, each with a known `role` and a `content`
/// that is text, an array of parts, or (for an assistant's tool calls) absent or null.
fn check_messages(raw: &RawValue) -> Result<MediaParts, InvalidField> {
    let Ok(messages) = serde_json::from_str::<Vec<Value>>(raw.get()) else {
        return Err(InvalidField::new(
            "messages",
            "messages must be an array of message objects",
        ));
    };
    if messages.is_empty() {
        return Err(InvalidField::new(
            "messages",
            "messages must hold at least one message",
        ));
    }
    let mut media = MediaParts::default();
    for (i, m) in messages.iter().enumerate() {
        let at = |field: &str| {
            if field.is_empty() {
                format!("messages[{i}]")
            } else {
                format!("messages[{i}].{field}")
            }
        };
        let Some(obj) = m.as_object() else {
            return Err(InvalidField::new(&at(""), "each message must be an object"));
        };
        let role = match obj.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
            Some(_) => {
                return Err(InvalidField::new(
                    &at("role"),
                    format!("{} must be one of {}", at("role"), ROLES.join(", ")),
                ));
            }
            None => {
                return Err(InvalidField::new(
                    &at("role"),
                    format!("{} is required", at("role")),
                ));
            }
        };
        match obj.get("content") {
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            None | Some(Value::Null) if role == "assistant" => {}
            None => {
                return Err(InvalidField::new(
                    &at("content"),
                    format!("{} is required", at("content")),
                ));
            }
            Some(_) => {
                return Err(InvalidField::new(
                    &at("content"),
                    format!("{} must be a string or an array of parts", at("content")),
                ));
            }
        }
        if let Some(bad) = fields::find_unstorable(m) {
            return Err(InvalidField::new(&at(""), bad.message).with_code(bad.code));
        }
        if let Some(Value::Array(parts)) = obj.get("content") {
            for part in parts {
                match part["type"].as_str() {
                    Some("text" | "refusal") => {}
                    Some("image_url") => media.images += 1,
                    _ => media.unbounded = true,
                }
            }
        }
    }
    Ok(media)
}

/// `max_completion_tokens` (or the older `max_tokens`), left in the body for the upstream.
fn max_tokens(rest: &RawObject) -> Result<Option<u64>, InvalidField> {
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(raw) = rest.present(key) {
            return serde_json::from_str::<u64>(raw.get())
                .map(Some)
                .map_err(|_| InvalidField::new(key, format!("{key} must be a positive integer")));
        }
    }
    Ok(None)
}

/// The `provider` object: the routing preferences jobs share, plus `sort` and
/// `max_price`, which only chat takes.
fn parse_provider(
    value: Option<Value>,
    is_provider: &dyn Fn(&str) -> bool,
    providers: &str,
) -> Result<(ProviderPrefs, bool, MaxPrice), InvalidField> {
    let prefs = routing::parse_prefs_with(value.as_ref(), PROVIDER_FIELDS, is_provider, providers)?;
    let Some(obj) = value.as_ref().and_then(Value::as_object) else {
        return Ok((prefs, false, MaxPrice::default()));
    };
    let sort_by_price = match obj.get("sort") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "price" => true,
        Some(_) => {
            return Err(InvalidField::new(
                "provider.sort",
                "provider.sort must be \"price\" (this gateway does not measure throughput or \
                 latency to sort by)",
            ));
        }
    };
    let max_price = match obj.get("max_price") {
        None | Some(Value::Null) => MaxPrice::default(),
        Some(Value::Object(m)) => {
            fields::refuse_unknown(m, &["prompt", "completion"], "provider.max_price")?;
            let price = |key: &str| -> Result<Option<i64>, InvalidField> {
                let param = format!("provider.max_price.{key}");
                let usd = match m.get(key) {
                    None | Some(Value::Null) => return Ok(None),
                    Some(Value::Number(n)) => n.as_f64(),
                    Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
                    Some(_) => None,
                };
                match usd {
                    Some(usd) if usd.is_finite() && usd >= 0.0 => {
                        Ok(Some((usd * 1_000_000.0).round() as i64))
                    }
                    _ => Err(InvalidField::new(
                        &param,
                        format!("{param} must be a price in USD per million tokens"),
                    )),
                }
            };
            MaxPrice {
                prompt: price("prompt")?,
                completion: price("completion")?,
            }
        }
        Some(_) => {
            return Err(InvalidField::new(
                "provider.max_price",
                "provider.max_price must be an object {prompt, completion} (USD per million tokens)",
            ));
        }
    };
    Ok((prefs, sort_by_price, max_price))
}

/// `simulate`, for the built-in chat model.
fn parse_simulate(value: &Value) -> Result<Simulate, InvalidField> {
    let Some(obj) = value.as_object() else {
        return Err(InvalidField::new("simulate", "simulate must be an object"));
    };
    fields::refuse_unknown(
        obj,
        &["latency_ms", "token_interval_ms", "fail", "fail_times"],
        "simulate",
    )?;
    let int = |key: &str, max: u64| -> Result<u64, InvalidField> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v.as_u64().filter(|n| *n <= max).ok_or_else(|| {
                InvalidField::new(
                    &format!("simulate.{key}"),
                    format!("simulate.{key} must be an integer from 0 to {max}"),
                )
            }),
        }
    };
    let fail = match obj.get("fail").and_then(Value::as_str) {
        None if obj.get("fail").is_none_or(Value::is_null) => SimulatedFailure::None,
        Some("none") => SimulatedFailure::None,
        Some("transient") => SimulatedFailure::Transient,
        Some("permanent") => SimulatedFailure::Permanent,
        _ => {
            return Err(InvalidField::new(
                "simulate.fail",
                "simulate.fail must be one of \"none\", \"transient\", \"permanent\"",
            ));
        }
    };
    let fail_times = match obj.get("fail_times") {
        None | Some(Value::Null) if fail == SimulatedFailure::Transient => 1,
        _ => int("fail_times", 100)?,
    };
    Ok(Simulate {
        latency_ms: int("latency_ms", 600_000)?,
        token_interval_ms: int("token_interval_ms", 60_000)?,
        fail,
        fail_times,
    })
}

/// Token counts of an answer, as OpenAI reports them in `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

/// An `error` object inside a stream chunk or answer (OpenRouter's mid-stream error, an
/// upstream's `{"error": …}`): its numeric `code` when it gives one, and its message.
pub fn embedded_error(raw: &RawValue) -> (Option<u16>, String) {
    let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
    let code = value["code"]
        .as_u64()
        .or_else(|| value["code"].as_str().and_then(|c| c.parse().ok()))
        .and_then(|c| u16::try_from(c).ok());
    let message = value["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, InvalidField> {
        ChatRequest::parse(
            body.as_bytes(),
            &|p| p == "openai" || p == "local",
            "openai, local",
        )
    }

    #[test]
    fn an_answer_limit_is_added_only_where_the_client_set_none() {
        let one = r#""messages":[{"role":"user","content":"hi"}]"#;
        let mut open = parse(&format!(r#"{{"model":"local/chat",{one}}}"#)).unwrap();
        open.limit_answer(4096);
        assert_eq!(open.max_tokens, Some(4096));
        let up = String::from_utf8(open.upstream_body("m", "max_completion_tokens")).unwrap();
        assert!(up.ends_with(r#","max_completion_tokens":4096}"#), "{up}");
        let mut set = parse(&format!(r#"{{"model":"local/chat",{one},"max_tokens":7}}"#)).unwrap();
        set.limit_answer(4096);
        assert_eq!(set.max_tokens, Some(7));
        let up = String::from_utf8(set.upstream_body("m", "max_completion_tokens")).unwrap();
        assert!(
            up.contains(r#""max_tokens":7"#) && !up.contains("max_completion_tokens"),
            "{up}"
        );
        let plain = parse(&format!(r#"{{"model":"local/chat",{one}}}"#)).unwrap();
        let up = String::from_utf8(plain.upstream_body("m", "max_tokens")).unwrap();
        assert!(!up.contains("max_tokens"), "{up}");
    }

    #[test]
    fn unknown_fields_reach_the_upstream_byte_for_byte() {
        let tools =
            r#"[{"type":"function","function":{"name":"f","parameters":{"z":1.0,"a":1e2}}}]"#;
        let body = format!(
            r#"{{"model":"openai/gpt-4o-mini","messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"data:image/png;base64,AAAA"}}}}]}}],"tools":{tools},"tool_choice":"auto","provider":{{"order":["openai"]}},"models":["local/chat"],"stream":true,"stream_options":{{"include_usage":false,"include_obfuscation":false}}}}"#
        );
        let r = parse(&body).unwrap();
        assert_eq!(r.models, ["openai/gpt-4o-mini", "local/chat"]);
        assert!(r.stream && !r.include_usage);
        let up = String::from_utf8(r.upstream_body("gpt-4o-mini", "max_tokens")).unwrap();
        assert!(up.contains(&format!(r#""tools":{tools}"#)), "{up}");
        assert!(
            up.starts_with(r#"{"model":"gpt-4o-mini","messages":[{"role":"user""#),
            "{up}"
        );
        assert!(
            up.contains(r#""stream_options":{"include_obfuscation":false,"include_usage":true}"#),
            "{up}"
        );
        assert!(!up.contains("provider") && !up.contains("models"), "{up}");
    }

    #[test]
    fn bad_requests_name_their_field() {
        let param = |body: &str| parse(body).unwrap_err().param;
        let one = r#""messages":[{"role":"user","content":"x"}]"#;
        for (body, expected) in [
            (r#"{"messages":[{"role":"user","content":"hi"}]}"#.to_owned(), "model"),
            (r#"{"model":"local/chat"}"#.to_owned(), "messages"),
            (r#"{"model":"local/chat","messages":[]}"#.to_owned(), "messages"),
            (r#"{"model":"local/chat","messages":[{"role":"robot","content":"x"}]}"#.to_owned(), "messages[0].role"),
            (r#"{"model":"local/chat","messages":[{"role":"user","content":"x"},{"role":"user"}]}"#.to_owned(), "messages[1].content"),
            (r#"{"model":"local/chat","messages":[{"role":"user","content":5}]}"#.to_owned(), "messages[0].content"),
            (r#"{"model":"local/chat","messages":[{"role":"user","content":"a\u0000b"}]}"#.to_owned(), "messages[0]"),
            (format!(r#"{{"model":"local/chat",{one},"stream":"yes"}}"#), "stream"),
            (format!(r#"{{"model":"local/chat",{one},"provider":{{"order":["nobody"]}}}}"#), "provider.order[0]"),
            (format!(r#"{{"model":"local/chat",{one},"provider":{{"sort":"latency"}}}}"#), "provider.sort"),
            (format!(r#"{{"model":"local/chat",{one},"provider":{{"max_price":{{"prompt":-1}}}}}}"#), "provider.max_price.prompt"),
            (format!(r#"{{"model":"local/chat",{one},"simulate":{{"fail":"often"}}}}"#), "simulate.fail"),
            (format!(r#"{{"model":"local/chat",{one},"max_tokens":-3}}"#), "max_tokens"),
        ] {
            assert_eq!(param(&body), expected, "{body}");
        }
        assert_eq!(
            parse("[1]").unwrap_err().code,
            crate::ErrorCode::InvalidJson
        );
    }

    #[test]
    fn provider_preferences_read_sort_and_max_price() {
        let r = parse(
            r#"{"model":"local/chat","messages":[{"role":"user","content":"x"}],
                "provider":{"sort":"price","max_price":{"prompt":1,"completion":"2.5"},"allow_fallbacks":false}}"#,
        )
        .unwrap();
        assert!(r.sort_by_price && !r.provider.allow_fallbacks);
        assert_eq!(
            r.max_price,
            MaxPrice {
                prompt: Some(1_000_000),
                completion: Some(2_500_000)
            }
        );
    }
}
