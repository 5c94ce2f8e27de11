//! What every HTTP adapter shares: the client and concurrency limit for one provider,
//! sorting HTTP failures into error classes (in one place, so every adapter treats a 429
//! or a 402 alike), and downloading result media without ever storing an error page.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use super::{
    ErrorClass, Media, Polled, ProviderCall, ProviderError, ProviderSettings, Submitted,
    UpstreamOutput,
};
use crate::ErrorCode;
use crate::providers::SetupError;

/// How long to wait after a 429 that gives no `Retry-After`.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(5);

/// How much of an upstream's error body is kept in a job's error message.
const ERROR_TEXT_LIMIT: usize = 500;

/// The HTTP client for one provider.
pub fn client(settings: &ProviderSettings) -> Result<reqwest::Client, SetupError> {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(Duration::from_secs(10).min(settings.timeout))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .map_err(SetupError::HttpClient)
}

/// An adapter's reading of its provider's error bodies (the JSON, `Value::Null` if the
/// body was not JSON): the class and code that replace the HTTP status's, when the body
/// says more (a moderation code, a machine-readable reason, a retry hint). `None` leaves
/// the status to decide.
pub type ErrorReader = fn(&Value) -> Option<(ErrorClass, ErrorCode)>;

/// One provider's connection: base URL, key, client and a cap on calls in flight.
#[derive(Clone)]
pub struct Upstream {
    pub name: &'static str,
    pub base_url: String,
    api_key: String,
    client: reqwest::Client,
    in_flight: Arc<Semaphore>,
    poll_interval: Duration,
    callback_poll_interval: Duration,
    read_error: Option<ErrorReader>,
    auth: Auth,
}

/// How a provider takes its key on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer KEY` (the default).
    Bearer,
    /// `Authorization: SCHEME KEY`, with a scheme of the provider's own (fal's `Key`).
    Scheme(&'static str),
    /// The key alone in a header of the provider's own (`x-key`).
    Header(&'static str),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(name: &'static str, settings: &ProviderSettings) -> Result<Upstream, SetupError> {
        Ok(Upstream {
            name,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone().ok_or(SetupError::NoKey(name))?,
            client: client(settings)?,
            in_flight: Arc::new(Semaphore::new(settings.max_concurrency.max(1))),
            poll_interval: settings.poll_interval,
            callback_poll_interval: settings.callback_poll_interval,
            read_error: None,
            auth: Auth::Bearer,
        })
    }

    /// Sends the key the way this provider takes it (see [`Auth`]).
    pub fn with_auth(mut self, auth: Auth) -> Upstream {
        self.auth = auth;
        self
    }

    /// A connection for streamed answers (chat): no overall timeout, since a stream
    /// lasts as long as its answer and the caller bounds each wait, no cap on calls in
    /// flight (a chat call is one request, not a job's step), and a key only where the
    /// host needs one (a local Ollama or vLLM may not).
    pub fn streaming(
        name: &'static str,
        settings: &ProviderSettings,
    ) -> Result<Upstream, SetupError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(settings.timeout))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(SetupError::HttpClient)?;
        Ok(Upstream {
            name,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone().unwrap_or_default(),
            client,
            in_flight: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            poll_interval: settings.poll_interval,
            callback_poll_interval: settings.callback_poll_interval,
            read_error: None,
            auth: Auth::Bearer,
        })
    }

    /// Sorts this provider's errors by their bodies first (see `ErrorReader`).
    pub fn reading_errors(mut self, read_error: ErrorReader) -> Upstream {
        self.read_error = Some(read_error);
        self
    }

    /// When to look at a running job again when the upstream gives no hint: the poll
    /// interval, or the longer safety-net interval when it will call us back.
    pub fn poll_after(&self, call: &ProviderCall<'_>) -> Duration {
        if call.callback_url.is_some() {
            self.callback_poll_interval
        } else {
            self.poll_interval
        }
    }

    /// The key, for the adapter to put in its provider's auth header.
    pub fn key(&self) -> &str {
        &self.api_key
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// [`Upstream::url`] parsed, for an endpoint every request goes to: a base URL that
    /// is no HTTP(S) URL is refused at start, not at each request.
    pub fn endpoint(&self, path: &str) -> Result<reqwest::Url, SetupError> {
        let url = self.url(path);
        let why = match reqwest::Url::parse(&url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => return Ok(parsed),
            Ok(parsed) => format!("the scheme {:?} is not http or https", parsed.scheme()),
            Err(e) => e.to_string(),
        };
        Err(SetupError::BadUrl {
            name: self.name,
            url,
            why,
        })
    }

    /// A request to `url`: a `reqwest::Url` parsed once (a chat adapter's endpoint) saves
    /// parsing it again for every request.
    pub fn request(&self, method: reqwest::Method, url: impl reqwest::IntoUrl) -> RequestBuilder {
        self.client.request(method, url)
    }

    /// A request to `path` under the base URL, carrying the key.
    pub fn authorized(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.authorized_url(method, &self.url(path))
    }

    /// A request to `url`, one of this provider's own (never a link from an answer that
    /// could point elsewhere), carrying the key.
    pub fn authorized_url(&self, method: reqwest::Method, url: &str) -> RequestBuilder {
        let request = self.request(method, url);
        match self.auth {
            Auth::Bearer => request.bearer_auth(&self.api_key),
            Auth::Scheme(scheme) => {
                request.header(AUTHORIZATION, format!("{scheme} {}", self.api_key))
            }
            Auth::Header(name) => request.header(name, &self.api_key),
        }
    }

    /// GETs `path` under the base URL with the key, and reads the JSON answer.
    pub async fn get_json(&self, path: &str) -> Result<Value, ProviderError> {
        self.json(self.authorized(reqwest::Method::GET, path)).await
    }

    /// The upstream job's id, the string at `field` of a submission's answer; an answer
    /// without one is worth another try.
    pub fn answer_id<'a>(&self, answer: &'a Value, field: &str) -> Result<&'a str, ProviderError> {
        answer[field].as_str().ok_or_else(|| {
            ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamError,
                format!("{}: the answer has no {field}", self.name),
            )
        })
    }

    /// A submission the upstream took: done if `outputs` are there already, else its id
    /// to poll after the usual wait.
    pub fn submitted(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
        outputs: Option<Vec<UpstreamOutput>>,
    ) -> Submitted {
        match outputs {
            Some(outputs) => Submitted::Done {
                upstream_id: upstream_id.to_owned(),
                outputs,
            },
            None => Submitted::Pending {
                upstream_id: upstream_id.to_owned(),
                poll_after: self.poll_after(call),
            },
        }
    }

    /// What a poll found: done with `outputs`, or still running (at `progress`, for an
    /// upstream that reports one), to be looked at again after the usual wait.
    pub fn polled(
        &self,
        call: &ProviderCall<'_>,
        outputs: Option<Vec<UpstreamOutput>>,
        progress: Option<u8>,
    ) -> Polled {
        match outputs {
            Some(outputs) => Polled::Done { outputs },
            None => Polled::Pending {
                progress,
                poll_after: self.poll_after(call),
            },
        }
    }

    /// Sends a request, holding one of the provider's slots; a non-2xx answer becomes a
    /// classified error carrying the upstream's own words (never the key).
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, ProviderError> {
        let _slot = self.in_flight.acquire().await.map_err(|_| {
            ProviderError::new(ErrorClass::Retryable, ErrorCode::UpstreamError, "closed")
        })?;
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.status_error(response).await)
    }

    /// Sends and reads a JSON answer.
    pub async fn json(&self, request: RequestBuilder) -> Result<Value, ProviderError> {
        let response = self.send(request).await?;
        response.json::<Value>().await.map_err(|e| {
            ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamError,
                format!(
                    "{}: unreadable answer: {}",
                    self.name,
                    self.redact(&e.to_string())
                ),
            )
        })
    }

    /// A request that never got an answer: timeouts and connection failures are worth
    /// another try.
    pub fn transport_error(&self, e: &reqwest::Error) -> ProviderError {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "request failed"
        };
        ProviderError::new(
            ErrorClass::Retryable,
            ErrorCode::UpstreamUnreachable,
            format!("{}: {what}: {}", self.name, self.redact(&error_chain(e))),
        )
    }

    /// Sorts a non-2xx answer into an error class, keeping the upstream's message: by
    /// what the adapter reads in the body, else by the status.
    pub async fn status_error(&self, response: Response) -> ProviderError {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let message = format!(
            "{} answered {status}: {}",
            self.name,
            self.redact(&upstream_message(&text))
        );
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        match self.read_error.and_then(|read| read(&body)) {
            Some((class, code)) => ProviderError::new(class, code, message),
            None => classify(status, &headers, message),
        }
    }

    /// The text with the key blanked out, should an upstream echo it back.
    pub fn redact(&self, text: &str) -> String {
        if self.api_key.is_empty() {
            return text.to_owned();
        }
        text.replace(&self.api_key, "[redacted]")
    }

    /// Downloads a result link that needs no key (a signed or public URL), typed by its
    /// answer or, failing that, by `fallback_type` or else by its file name.
    pub async fn download_link(
        &self,
        url: &str,
        fallback_type: Option<&str>,
    ) -> Result<Media, ProviderError> {
        let request = self.request(reqwest::Method::GET, url);
        let fallback_type = fallback_type.unwrap_or_else(|| content_type_for_url(url));
        self.download(request, fallback_type).await
    }

    /// Downloads result media. An answer that is not media (an error page, a JSON error,
    /// an expired link) is an error, never stored as the output.
    pub async fn download(
        &self,
        request: RequestBuilder,
        fallback_type: &str,
    ) -> Result<Media, ProviderError> {
        let response = {
            let _slot = self.in_flight.acquire().await.map_err(|_| {
                ProviderError::new(ErrorClass::Retryable, ErrorCode::UpstreamError, "closed")
            })?;
            request.send().await.map_err(|e| self.transport_error(&e))?
        };
        let status = response.status();
        if matches!(status.as_u16(), 401 | 403 | 404 | 410) {
            // A result link that no longer works has expired (upstream links live minutes).
            return Err(ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamResultExpired,
                format!("{}: the result link answered {status}", self.name),
            ));
        }
        if !status.is_success() {
            return Err(self.status_error(response).await);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty() && v != "application/octet-stream")
            .unwrap_or_else(|| fallback_type.to_owned());
        if content_type.starts_with("text/") || content_type.contains("json") {
            return Err(ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamBadMedia,
                format!("{}: result is {content_type}, not media", self.name),
            ));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if bytes.is_empty() {
            return Err(ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamBadMedia,
                format!("{}: result is empty", self.name),
            ));
        }
        Ok(Media {
            extension: extension_for(&content_type).to_owned(),
            content_type,
            bytes,
        })
    }
}

/// The one place HTTP statuses become error classes.
pub fn classify(status: StatusCode, headers: &HeaderMap, message: String) -> ProviderError {
    let (class, code) = match status.as_u16() {
        429 => (
            ErrorClass::RateLimited {
                retry_after: retry_after(headers).unwrap_or(DEFAULT_RATE_LIMIT_WAIT),
            },
            ErrorCode::UpstreamRateLimited,
        ),
        402 => (ErrorClass::OutOfCredit, ErrorCode::UpstreamOutOfCredit),
        401 | 403 => (ErrorClass::Unauthorized, ErrorCode::UpstreamUnauthorized),
        408 | 425 | 500..=599 => (ErrorClass::Retryable, ErrorCode::UpstreamError),
        400..=499 => (ErrorClass::InvalidInput, ErrorCode::UpstreamRejected),
        _ => (ErrorClass::Retryable, ErrorCode::UpstreamError),
    };
    ProviderError::new(class, code, message)
}

/// `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Sets `name` in a request body to `value` when the job gives one: the way an adapter
/// passes an optional input field upstream under its own name.
pub fn put(body: &mut Map<String, Value>, name: &str, value: Option<impl Serialize>) {
    if let Some(value) = value {
        body.insert(name.to_owned(), json!(value));
    }
}

/// A status word that is not terminal: the upstream job still runs. A word outside
/// `known` (the provider added one) is logged and treated the same, never as an end.
pub fn still_running(provider: &str, status: &str, known: &[&str]) {
    if !known.contains(&status) {
        tracing::warn!(provider, status, "unknown status; treating it as pending");
    }
}

/// The human part of an upstream error body: `error.message`, `detail`, `message`…, else
/// the text itself, shortened.
pub fn upstream_message(text: &str) -> String {
    let from_json = serde_json::from_str::<Value>(text).ok().and_then(|v| {
        [
            v.pointer("/error/message"),
            v.get("error").filter(|e| e.is_string()),
            v.get("detail").filter(|d| d.is_string()),
            v.pointer("/detail/0/msg"),
            v.get("message"),
            v.get("title"),
        ]
        .into_iter()
        .flatten()
        .find_map(|m| m.as_str().map(str::to_owned))
    });
    let mut text = from_json.unwrap_or_else(|| text.trim().to_owned());
    if text.len() > ERROR_TEXT_LIMIT {
        let mut end = ERROR_TEXT_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The file extension stored media gets for its content type.
pub fn extension_for(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpg",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "video/mp4" => "mp4",
        "video/webm" => "webm",
        "video/quicktime" => "mov",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "audio/ogg" => "ogg",
        "audio/flac" => "flac",
        "audio/aac" => "aac",
        _ => "bin",
    }
}

/// A locator carrying the media itself, as a `data:` URL, for upstreams that answer with
/// the media (OpenAI images, Imagen, Gemini, ElevenLabs). It lives in memory only: the
/// engine copies a finished submission's outputs in the same step.
pub fn inline_locator(content_type: &str, base64: &str) -> String {
    format!("data:{content_type};base64,{base64}")
}

/// The media inside an `inline_locator`.
pub fn inline_media(provider: &str, locator: &str) -> Result<Media, ProviderError> {
    let bad = |why: &str| {
        ProviderError::new(
            ErrorClass::Retryable,
            ErrorCode::UpstreamBadMedia,
            format!("{provider}: {why}"),
        )
    };
    let (content_type, data) = locator
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
        .ok_or_else(|| bad("the output does not hold its media"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| bad("the media is not valid base64"))?;
    if bytes.is_empty() {
        return Err(bad("the media is empty"));
    }
    Ok(Media {
        content_type: content_type.to_owned(),
        extension: extension_for(content_type).to_owned(),
        bytes: bytes.into(),
    })
}

/// What a result file is when its host does not say: from the file name's extension.
pub fn content_type_for_url(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let extension = path.rsplit_once('.').map_or("", |(_, e)| e);
    match extension.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "flac" => "audio/flac",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn upstream(auth: Auth) -> Upstream {
        let settings = ProviderSettings::for_tests("https://api.example.com/");
        Upstream::new("acme", &settings).unwrap().with_auth(auth)
    }

    #[test]
    fn the_key_goes_where_the_provider_takes_it() {
        let sent = |auth: Auth| {
            let request = upstream(auth)
                .authorized(reqwest::Method::GET, "/v1/x")
                .build()
                .unwrap();
            assert_eq!(request.url().as_str(), "https://api.example.com/v1/x");
            let headers = request.headers();
            let value = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
            (value("authorization"), value("x-key"))
        };
        assert_eq!(sent(Auth::Bearer), (Some("Bearer k3y".into()), None));
        assert_eq!(sent(Auth::Scheme("Key")), (Some("Key k3y".into()), None));
        assert_eq!(sent(Auth::Header("x-key")), (None, Some("k3y".into())));
    }

    #[test]
    fn an_answer_without_an_id_is_worth_another_try() {
        let up = upstream(Auth::Bearer);
        assert_eq!(up.answer_id(&json!({"id": "j1"}), "id").unwrap(), "j1");
        let e = up.answer_id(&json!({"id": 5}), "id").unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable);
        assert_eq!(e.message, "acme: the answer has no id");
    }

    #[test]
    fn statuses_sort_into_classes() {
        let mut headers = HeaderMap::new();
        let class = |s: u16, h: &HeaderMap| {
            classify(StatusCode::from_u16(s).unwrap(), h, String::new()).class
        };
        assert_eq!(class(500, &headers), ErrorClass::Retryable);
        assert_eq!(class(503, &headers), ErrorClass::Retryable);
        assert_eq!(class(402, &headers), ErrorClass::OutOfCredit);
        assert_eq!(class(401, &headers), ErrorClass::Unauthorized);
        assert_eq!(class(422, &headers), ErrorClass::InvalidInput);
        assert_eq!(
            class(429, &headers),
            ErrorClass::RateLimited {
                retry_after: DEFAULT_RATE_LIMIT_WAIT
            }
        );
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            class(429, &headers),
            ErrorClass::RateLimited {
                retry_after: Duration::from_secs(7)
            }
        );
    }

    #[test]
    fn upstream_messages_are_found_and_shortened() {
        assert_eq!(
            upstream_message(r#"{"error":{"message":"bad prompt"}}"#),
            "bad prompt"
        );
        assert_eq!(upstream_message(r#"{"detail":"nope"}"#), "nope");
        assert_eq!(
            upstream_message(r#"{"detail":[{"msg":"field required"}]}"#),
            "field required"
        );
        assert_eq!(upstream_message("  plain  "), "plain");
        assert!(upstream_message(&"é".repeat(600)).ends_with('…'));
    }

    #[test]
    fn content_types_come_from_file_names() {
        assert_eq!(content_type_for_url("https://h/a/out.MP4?x=1"), "video/mp4");
        assert_eq!(content_type_for_url("https://h/a/out.webp"), "image/webp");
        assert_eq!(
            content_type_for_url("https://h/a/out"),
            "application/octet-stream"
        );
    }
}
