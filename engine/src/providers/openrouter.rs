//! OpenRouter's video API (Bearer key): `POST /api/v1/videos` with `{model, prompt,
//! duration, resolution, aspect_ratio, …}` answers 202 `{id, polling_url, status}`;
//! `GET /api/v1/videos/{id}` reports `pending` / `in_progress` until `completed` (with
//! `unsigned_urls` and `usage.cost`), `failed` (with `error`), `cancelled` or `expired`.
//! Each video streams from `GET /api/v1/videos/{id}/content?index=N`, which needs the key:
//! that path is the output's locator, and `fetch` only ever joins it to OpenRouter's own
//! base URL, so the key goes nowhere else. No cancel is documented.
//!
//! Callbacks: `callback_url` in the submission is POSTed once the job ends, with
//! `{type, created_at, data: {id, status, …}}`. When a signing secret is set in the
//! workspace (and given to us as `webhook_secret_env`), each carries
//! `X-OpenRouter-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "{t},{body}")>`.
//!
//! Only video: OpenRouter makes images through chat completions, a different API.

use hmac::{Hmac, Mac};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::http::{Upstream, put, still_running};
use super::{
    CallbackRefused, ErrorClass, Media, MediaProvider, Polled, ProviderCall, ProviderError,
    ProviderSettings, Submitted, UpstreamOutput,
};
use crate::ErrorCode;
use crate::jobs::input::JobInput;
use crate::providers::SetupError;

/// Where every job's videos stream from, under the base URL.
const VIDEOS_PATH: &str = "/api/v1/videos";

/// The replay window the documentation's own verifier uses.
const SIGNATURE_TOLERANCE_SECS: i64 = 300;

#[derive(Clone)]
pub struct OpenRouter {
    upstream: Upstream,
    /// The workspace's callback signing secret; without one, callbacks are unsigned.
    webhook_secret: Option<String>,
}

impl std::fmt::Debug for OpenRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRouter")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl MediaProvider for OpenRouter {
    const NAME: &'static str = "openrouter";
    const DEFAULT_BASE_URL: &'static str = "https://openrouter.ai";
    const API_KEY_ENV: &'static str = "OPENROUTER_API_KEY";
    /// The video job a callback is about (read once its signature is checked).
    const CALLBACK_ID: Option<&'static str> = Some("/data/id");

    fn from_settings(settings: &ProviderSettings) -> Result<OpenRouter, SetupError> {
        Ok(OpenRouter {
            upstream: Upstream::new(OpenRouter::NAME, settings)?,
            webhook_secret: settings.webhook_secret.clone(),
        })
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    /// Checks a callback's signature (when a secret is configured) and returns the video
    /// job's id.
    async fn verify_callback(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Option<String>, CallbackRefused> {
        if let Some(secret) = &self.webhook_secret {
            let header = headers
                .get("x-openrouter-signature")
                .and_then(|v| v.to_str().ok())
                .ok_or("openrouter: the callback is not signed")?;
            verify_signature(secret, header, body, crate::ids::now_ms() / 1000)?;
        }
        let event: Value = serde_json::from_slice(body)
            .map_err(|e| format!("openrouter: the callback is not JSON: {e}"))?;
        Ok(event
            .pointer("/data/id")
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        let request = self
            .upstream
            .authorized(Method::POST, VIDEOS_PATH)
            .json(&request_body(
                call.upstream_model,
                call.input,
                call.callback_url,
            ));
        let answer = self
            .upstream
            .json(request)
            .await
            .map_err(refusal_from_forbidden)?;
        let id = self.upstream.answer_id(&answer, "id")?;
        Ok(self.upstream.submitted(call, id, None))
    }

    async fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        let path = format!("{VIDEOS_PATH}/{upstream_id}");
        let answer = self.upstream.get_json(&path).await?;
        let polled = outcome(upstream_id, &answer).map_err(|mut e| {
            e.message = self.upstream.redact(&e.message);
            e
        })?;
        if let Some(cost) = answer.pointer("/usage/cost").and_then(Value::as_f64) {
            // Our price comes from the catalog; OpenRouter's own figure is kept in the log
            // so the two can be compared.
            tracing::info!(
                provider = OpenRouter::NAME,
                upstream_id,
                upstream_cost_usd = cost,
                "upstream reported cost"
            );
        }
        // The API reports no progress figure.
        Ok(self.upstream.polled(call, polled, None))
    }

    /// Streams one video through OpenRouter's authenticated content endpoint.
    async fn fetch(
        &self,
        _call: &ProviderCall<'_>,
        output: &UpstreamOutput,
    ) -> Result<Media, ProviderError> {
        // Locators are paths this adapter made; anything else must not get the key.
        if !output.locator.starts_with(&format!("{VIDEOS_PATH}/")) {
            return Err(ProviderError::new(
                ErrorClass::Permanent,
                ErrorCode::UpstreamError,
                format!(
                    "openrouter: not a content path of this API: {}",
                    output.locator
                ),
            ));
        }
        let request = self.upstream.authorized(Method::GET, &output.locator);
        self.upstream.download(request, "video/mp4").await
    }
}

/// Where a video job stands, in the one place OpenRouter's status words are read:
/// `Some(outputs)` once completed, `None` while it runs.
fn outcome(id: &str, answer: &Value) -> Result<Option<Vec<UpstreamOutput>>, ProviderError> {
    let error = || match &answer["error"] {
        Value::String(s) => s.clone(),
        Value::Null => "no error given".to_owned(),
        other => other.to_string(),
    };
    match answer["status"].as_str().unwrap_or_default() {
        "completed" => {
            // One video per entry of `unsigned_urls`; each streams by its index.
            let count = answer["unsigned_urls"]
                .as_array()
                .map_or(1, Vec::len)
                .max(1);
            Ok(Some(
                (0..count)
                    .map(|i| UpstreamOutput {
                        index: i as u32,
                        locator: format!("{VIDEOS_PATH}/{id}/content?index={i}"),
                    })
                    .collect(),
            ))
        }
        "failed" => {
            let error = error();
            let message = format!("openrouter: video {id} failed: {error}");
            Err(if is_refusal(&error) {
                ProviderError::new(ErrorClass::Permanent, ErrorCode::UpstreamModerated, message)
            } else {
                ProviderError::new(ErrorClass::Rerun, ErrorCode::UpstreamError, message)
            })
        }
        // Not by us (we never cancel here): someone else with this key did.
        "cancelled" => Err(ProviderError::new(
            ErrorClass::Permanent,
            ErrorCode::UpstreamCancelled,
            format!("openrouter: video {id} was cancelled"),
        )),
        // OpenRouter gave up on the job or no longer keeps it; another provider may serve it.
        "expired" => Err(ProviderError::new(
            ErrorClass::Rerun,
            ErrorCode::UpstreamExpired,
            format!("openrouter: video {id} expired: {}", error()),
        )),
        other => {
            still_running(OpenRouter::NAME, other, &["pending", "in_progress"]);
            Ok(None)
        }
    }
}

/// `t=<unix>,v1=<hex>`: the HMAC-SHA256 of `"{t},{body}"` under the workspace secret,
/// made within the replay window of `now`.
fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), CallbackRefused> {
    let field = |name: &str| {
        header
            .split(',')
            .find_map(|part| part.trim().strip_prefix(name)?.strip_prefix('='))
    };
    let t = field("t").ok_or("openrouter: the signature has no timestamp")?;
    let at = t
        .parse::<i64>()
        .map_err(|_| "openrouter: the signature's timestamp is not a number")?;
    if (now - at).abs() > SIGNATURE_TOLERANCE_SECS {
        return Err("openrouter: the signature is outside the replay window".into());
    }
    let tag = field("v1")
        .and_then(|v| hex::decode(v).ok())
        .ok_or("openrouter: the signature has no v1 value")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.as_bytes());
    mac.update(b",");
    mac.update(body);
    mac.verify_slice(&tag)
        .map_err(|_| "openrouter: the signature does not match".into())
}

fn is_refusal(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    [
        "content policy",
        "content_policy",
        "moderat",
        "flagged",
        "safety",
    ]
    .iter()
    .any(|w| error.contains(w))
}

/// OpenRouter answers 403 both for a key it refuses and for input its moderation flagged
/// ("… your input was flagged"); only the first is about our key.
fn refusal_from_forbidden(e: ProviderError) -> ProviderError {
    if e.class == ErrorClass::Unauthorized && is_refusal(&e.message) {
        return ProviderError::new(
            ErrorClass::Permanent,
            ErrorCode::UpstreamModerated,
            e.message,
        );
    }
    e
}

/// Our input in OpenRouter's words: the same field names; `image` is the first frame and
/// `reference_images` are references.
fn request_body(model: &str, input: &JobInput, callback_url: Option<&str>) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("prompt".into(), json!(input.prompt));
    put(&mut body, "callback_url", callback_url);
    put(&mut body, "duration", input.duration);
    put(&mut body, "resolution", input.resolution.as_ref());
    put(&mut body, "aspect_ratio", input.aspect_ratio.as_ref());
    put(&mut body, "size", input.size.map(|s| s.to_string()));
    put(&mut body, "seed", input.seed);
    put(&mut body, "generate_audio", input.generate_audio);
    let image_url = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
    if let Some(first) = &input.image {
        let mut frame = image_url(first);
        frame["frame_type"] = json!("first_frame");
        body.insert("frame_images".into(), json!([frame]));
    }
    if input.reference_images.is_some() {
        let references: Vec<Value> = input.references().map(image_url).collect();
        body.insert("input_references".into(), json!(references));
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::input::typed;

    #[test]
    fn input_maps_to_openrouter_fields() {
        let input = typed(json!({"prompt": "p", "duration": 8, "resolution": "720p",
            "aspect_ratio": "9:16", "generate_audio": true, "seed": 5,
            "image": "https://a/start.png", "reference_images": ["https://a/r.png"]}));
        assert_eq!(
            request_body("google/veo-3.1", &input, None),
            json!({"model": "google/veo-3.1", "prompt": "p", "duration": 8,
                "resolution": "720p", "aspect_ratio": "9:16", "generate_audio": true,
                "seed": 5,
                "frame_images": [{"type": "image_url", "image_url": {"url": "https://a/start.png"},
                    "frame_type": "first_frame"}],
                "input_references": [{"type": "image_url", "image_url": {"url": "https://a/r.png"}}]})
        );
        assert_eq!(
            request_body(
                "openai/sora-2",
                &typed(json!({"prompt": "p"})),
                Some("https://gw/cb")
            ),
            json!({"model": "openai/sora-2", "prompt": "p", "callback_url": "https://gw/cb"})
        );
    }

    #[test]
    fn callback_signatures_are_checked() {
        let body = br#"{"type":"video.generation.completed","data":{"id":"v1"}}"#;
        let sign = |secret: &str, t: &str| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(format!("{t},").as_bytes());
            mac.update(body);
            format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
        };
        let now = 1_800_000_000;
        let good = sign("s3cret", "1800000000");
        assert_eq!(verify_signature("s3cret", &good, body, now), Ok(()));
        assert_eq!(verify_signature("s3cret", &good, body, now + 299), Ok(()));
        assert!(
            verify_signature("s3cret", &good, body, now + 301).is_err(),
            "replayed"
        );
        assert!(
            verify_signature("other", &good, body, now).is_err(),
            "wrong secret"
        );
        assert!(
            verify_signature("s3cret", &good, b"{}", now).is_err(),
            "other body"
        );
        assert!(
            verify_signature("s3cret", "v1=00", body, now).is_err(),
            "no timestamp"
        );
        assert!(
            verify_signature("s3cret", "t=1800000000", body, now).is_err(),
            "no tag"
        );
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let at = |answer: Value| outcome("job-1", &answer);
        assert_eq!(at(json!({"status": "pending"})), Ok(None));
        assert_eq!(at(json!({"status": "in_progress"})), Ok(None));
        assert_eq!(at(json!({"status": "rendering"})), Ok(None));
        let done = at(json!({"status": "completed", "usage": {"cost": 0.4},
            "unsigned_urls": ["https://openrouter.ai/api/v1/videos/job-1/content?index=0",
                              "https://openrouter.ai/api/v1/videos/job-1/content?index=1"]}))
        .unwrap()
        .unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(done[1].locator, "/api/v1/videos/job-1/content?index=1");
        let refused = at(json!({"status": "failed",
            "error": "Request blocked by the provider's content policy"}))
        .unwrap_err();
        assert_eq!(
            (refused.class, refused.code),
            (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
        );
        let failed = at(json!({"status": "failed", "error": "provider timeout"})).unwrap_err();
        assert_eq!(failed.class, ErrorClass::Rerun);
        assert!(failed.message.contains("provider timeout"));
        assert_eq!(
            at(json!({"status": "cancelled"})).unwrap_err().code,
            ErrorCode::UpstreamCancelled
        );
        assert_eq!(
            at(json!({"status": "expired"})).unwrap_err().class,
            ErrorClass::Rerun
        );
    }

    #[test]
    fn a_flagged_input_is_a_refusal_not_a_bad_key() {
        let flagged = refusal_from_forbidden(ProviderError::new(
            ErrorClass::Unauthorized,
            ErrorCode::UpstreamUnauthorized,
            "openrouter answered 403 Forbidden: Your chosen model requires moderation and your input was flagged",
        ));
        assert_eq!(flagged.code, ErrorCode::UpstreamModerated);
        let bad_key = refusal_from_forbidden(ProviderError::new(
            ErrorClass::Unauthorized,
            ErrorCode::UpstreamUnauthorized,
            "openrouter answered 401 Unauthorized: No auth credentials found",
        ));
        assert_eq!(bad_key.class, ErrorClass::Unauthorized);
    }
}
