//! Replicate: `POST /v1/models/{owner}/{name}/predictions` (Bearer token) with `{input}`
//! creates a prediction `{id, status, output, error}`; `Prefer: wait=N` holds the request
//! open up to N seconds, so a quick model is done at submit. `GET /v1/predictions/{id}`
//! reports `starting` / `processing` until `succeeded` (`output`: a URL or a list of URLs,
//! deleted after an hour, so the media is copied at once), `failed` (with `error`;
//! content-policy refusals among them), `canceled` or `aborted`.
//! `POST /v1/predictions/{id}/cancel` stops one.
//!
//! Callbacks: a prediction created with `webhook` (and `webhook_events_filter:
//! ["completed"]`) is POSTed there when it ends, signed per Standard Webhooks with the
//! account's secret from `GET /v1/webhooks/default/secret` (`{"key": "whsec_…"}`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use super::http::{Upstream, put, still_running};
use super::{
    CallbackRefused, ErrorClass, MediaProvider, Polled, ProviderCall, ProviderError,
    ProviderSettings, Submitted, UpstreamOutput,
};
use crate::ErrorCode;
use crate::ids::now_ms;
use crate::jobs::input::JobInput;
use crate::providers::{NumberedOutputs, SetupError};
use crate::webhooks::signature::{self, DEFAULT_TOLERANCE_SECS, Secret};

/// The longest `Prefer: wait`: long enough for an image model to finish at submit (saving
/// a poll interval), short enough that a video submission holds its worker only briefly.
const LONGEST_WAIT: Duration = Duration::from_secs(5);

/// How soon a callback that fails verification may make us fetch the signing secret
/// again (it may have been rotated): often enough to follow a rotation, never so often
/// that forged callbacks turn into calls to Replicate.
const SECRET_REFETCH_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Replicate {
    upstream: Upstream,
    /// Seconds for `Prefer: wait`; none when the request timeout is too short to wait.
    wait_secs: Option<u64>,
    /// The account's webhook signing secret, fetched at the first callback, and when.
    webhook_secret: Arc<Mutex<Option<(Secret, Instant)>>>,
}

impl MediaProvider for Replicate {
    const NAME: &'static str = "replicate";
    const DEFAULT_BASE_URL: &'static str = "https://api.replicate.com";
    const API_KEY_ENV: &'static str = "REPLICATE_API_TOKEN";
    /// The prediction a callback is about (read once its signature is checked).
    const CALLBACK_ID: Option<&'static str> = Some("/id");

    fn from_settings(settings: &ProviderSettings) -> Result<Replicate, SetupError> {
        // At most half the request timeout, so Replicate answers before we give up on it.
        let wait_secs = LONGEST_WAIT.min(settings.timeout / 2).as_secs();
        Ok(Replicate {
            upstream: Upstream::new(Replicate::NAME, settings)?,
            wait_secs: (wait_secs > 0).then_some(wait_secs),
            webhook_secret: Arc::default(),
        })
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        let (path, version) = prediction_target(call.upstream_model);
        let mut body = json!({"input": request_input(call.upstream_model, call.input)});
        if let Some(version) = version {
            body["version"] = json!(version);
        }
        if let Some(url) = call.callback_url {
            // Only the end matters to us; start, output and log events would be noise.
            body["webhook"] = json!(url);
            body["webhook_events_filter"] = json!(["completed"]);
        }
        let mut request = self.upstream.authorized(Method::POST, &path).json(&body);
        if let Some(secs) = self.wait_secs {
            request = request.header("Prefer", format!("wait={secs}"));
        }
        let prediction = self.upstream.json(request).await?;
        let id = self.upstream.answer_id(&prediction, "id")?;
        let outputs = outcome(&prediction).map_err(|e| self.redacted(e))?;
        Ok(self.upstream.submitted(call, id, outputs))
    }

    async fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        let path = format!("/v1/predictions/{upstream_id}");
        let prediction = self.upstream.get_json(&path).await?;
        let outputs = outcome(&prediction).map_err(|e| self.redacted(e))?;
        // Replicate reports no progress figure, only log lines.
        Ok(self.upstream.polled(call, outputs, None))
    }

    async fn cancel(
        &self,
        _call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<(), ProviderError> {
        let path = format!("/v1/predictions/{upstream_id}/cancel");
        let request = self.upstream.authorized(Method::POST, &path);
        self.upstream.send(request).await.map(drop)
    }

    /// Checks a callback's Standard Webhooks signature and returns the prediction's id.
    async fn verify_callback(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Option<String>, CallbackRefused> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let check = |secret: &Secret| {
            signature::verify(
                secret,
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
                body,
                now_ms() / 1000,
                DEFAULT_TOLERANCE_SECS,
            )
        };
        if let Err(first) = check(&self.signing_secret(false).await?) {
            // Perhaps the secret was rotated since we fetched it.
            check(&self.signing_secret(true).await?)
                .map_err(|e| format!("replicate: {e} (first try: {first})"))?;
        }
        let prediction: Value = serde_json::from_slice(body)
            .map_err(|e| format!("replicate: the callback is not a prediction: {e}"))?;
        Ok(prediction["id"].as_str().map(str::to_owned))
    }
}

impl Replicate {
    /// The account's signing secret, fetched once and then kept; `refresh` fetches it
    /// again unless that was done moments ago.
    async fn signing_secret(&self, refresh: bool) -> Result<Secret, CallbackRefused> {
        let mut cached = self.webhook_secret.lock().await;
        if let Some((secret, fetched)) = cached.as_ref()
            && (!refresh || fetched.elapsed() < SECRET_REFETCH_AFTER)
        {
            return Ok(secret.clone());
        }
        let answer = self
            .upstream
            .get_json("/v1/webhooks/default/secret")
            .await
            .map_err(|e| CallbackRefused(format!("replicate: fetching the webhook secret: {e}")))?;
        let secret = answer["key"]
            .as_str()
            .ok_or("replicate: the webhook secret answer has no key")
            .and_then(|k| Secret::parse(k).map_err(|_| "replicate: unusable webhook secret"))?;
        *cached = Some((secret.clone(), Instant::now()));
        Ok(secret)
    }

    fn redacted(&self, mut e: ProviderError) -> ProviderError {
        e.message = self.upstream.redact(&e.message);
        e
    }
}

/// Official models run by name at `/v1/models/{owner}/{name}/predictions`; a pinned
/// version (`owner/name:version`, how community models run) goes to `/v1/predictions`
/// with `version`.
fn prediction_target(model: &str) -> (String, Option<&str>) {
    match model.split_once(':') {
        Some((_, version)) => ("/v1/predictions".to_owned(), Some(version)),
        None => (format!("/v1/models/{model}/predictions"), None),
    }
}

/// Where a prediction stands, in the one place Replicate's status words are read:
/// `Some(outputs)` once it succeeded, `None` while it runs.
fn outcome(prediction: &Value) -> Result<Option<Vec<UpstreamOutput>>, ProviderError> {
    let id = prediction["id"].as_str().unwrap_or("?");
    match prediction["status"].as_str().unwrap_or_default() {
        "succeeded" => {
            let outputs = output_urls(&prediction["output"]);
            if outputs.is_empty() {
                return Err(ProviderError::new(
                    ErrorClass::Retryable,
                    ErrorCode::UpstreamError,
                    format!("replicate: prediction {id} succeeded without media URLs"),
                ));
            }
            Ok(Some(outputs))
        }
        "failed" => {
            let error = match &prediction["error"] {
                Value::String(s) => s.clone(),
                Value::Null => "no error given".to_owned(),
                other => other.to_string(),
            };
            let message = format!("replicate: prediction {id} failed: {error}");
            Err(if is_refusal(&error) {
                ProviderError::new(ErrorClass::Permanent, ErrorCode::UpstreamModerated, message)
            } else {
                ProviderError::new(ErrorClass::Rerun, ErrorCode::UpstreamError, message)
            })
        }
        // Someone with this account's token stopped it; it is not coming back.
        "canceled" => Err(ProviderError::new(
            ErrorClass::Permanent,
            ErrorCode::UpstreamCancelled,
            format!("replicate: prediction {id} was canceled"),
        )),
        // Replicate ended it before it ran (a deadline on its side): worth another try.
        "aborted" => Err(ProviderError::new(
            ErrorClass::Rerun,
            ErrorCode::UpstreamError,
            format!("replicate: prediction {id} was aborted before it ran"),
        )),
        other => {
            still_running(Replicate::NAME, other, &["starting", "processing"]);
            Ok(None)
        }
    }
}

/// Replicate's own filter fails a prediction with E005 ("flagged as sensitive"); models'
/// safety checkers and Google's filter (for Veo and Imagen) use their own words.
fn is_refusal(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    [
        "e005",
        "flagged",
        "sensitive",
        "nsfw",
        "content policy",
        "safety filter",
        "responsible ai",
    ]
    .iter()
    .any(|w| error.contains(w))
}

/// `output` is one URL or a list of them (some models also return text; it is skipped).
fn output_urls(output: &Value) -> Vec<UpstreamOutput> {
    let urls: Vec<&str> = match output {
        Value::String(url) => vec![url],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    urls.into_iter()
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .numbered_outputs()
}

/// How a model on Replicate takes reference images: most take `image` (the start image)
/// and `reference_images`, as we do; some families name them their own way.
enum ImageInputs {
    Ours,
    FirstAs(&'static str),
    AllAs(&'static str),
}

fn image_inputs(model: &str) -> ImageInputs {
    let name = model.split_once(':').map_or(model, |(name, _)| name);
    match name {
        "black-forest-labs/flux-kontext-pro" => ImageInputs::FirstAs("input_image"),
        "black-forest-labs/flux-1.1-pro" => ImageInputs::FirstAs("image_prompt"),
        "black-forest-labs/flux-2-pro" => ImageInputs::AllAs("input_images"),
        "google/nano-banana" => ImageInputs::AllAs("image_input"),
        n if n.starts_with("kwaivgi/kling") => ImageInputs::FirstAs("start_image"),
        _ => ImageInputs::Ours,
    }
}

/// Our input in Replicate's words. Most models there take our field names; a free size is
/// `aspect_ratio: "custom"` plus width and height for FLUX, `size: "WxH"` elsewhere.
fn request_input(model: &str, input: &JobInput) -> Value {
    let mut out = Map::new();
    out.insert("prompt".into(), json!(input.prompt));
    put(&mut out, "seed", input.seed);
    put(&mut out, "duration", input.duration);
    put(&mut out, "resolution", input.resolution.as_ref());
    put(&mut out, "aspect_ratio", input.aspect_ratio.as_ref());
    put(&mut out, "generate_audio", input.generate_audio);
    put(&mut out, "num_outputs", input.n);
    if let Some(size) = input.size {
        if model.starts_with("black-forest-labs/") {
            out.insert("aspect_ratio".into(), json!("custom"));
            out.insert("width".into(), json!(size.width));
            out.insert("height".into(), json!(size.height));
        } else {
            out.insert("size".into(), json!(size.to_string()));
        }
    }
    match image_inputs(model) {
        ImageInputs::Ours => {
            put(&mut out, "image", input.image.as_ref());
            put(
                &mut out,
                "reference_images",
                input.reference_images.as_ref(),
            );
        }
        ImageInputs::FirstAs(field) => put(&mut out, field, input.first_image()),
        ImageInputs::AllAs(field) => {
            let images: Vec<&str> = input.images().collect();
            if !images.is_empty() {
                out.insert(field.into(), json!(images));
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::input::typed;

    #[test]
    fn input_maps_to_replicate_fields() {
        let input = typed(json!({"prompt": "p", "duration": 8, "resolution": "1080p",
            "aspect_ratio": "16:9", "generate_audio": true, "seed": 3,
            "image": "https://a/start.png", "reference_images": ["https://a/r.png"]}));
        assert_eq!(
            request_input("google/veo-3.1", &input),
            json!({"prompt": "p", "duration": 8, "resolution": "1080p",
                "aspect_ratio": "16:9", "generate_audio": true, "seed": 3,
                "image": "https://a/start.png", "reference_images": ["https://a/r.png"]})
        );
        let input = typed(json!({"prompt": "p", "size": "512x768", "image": "https://a/1.png"}));
        assert_eq!(
            request_input("black-forest-labs/flux-1.1-pro", &input),
            json!({"prompt": "p", "aspect_ratio": "custom", "width": 512, "height": 768,
                "image_prompt": "https://a/1.png"})
        );
        assert_eq!(
            request_input(
                "recraft-ai/recraft-v3",
                &typed(json!({"prompt": "p", "size": "1024x1024"}))
            ),
            json!({"prompt": "p", "size": "1024x1024"})
        );
        let input = typed(
            json!({"prompt": "p", "n": 2, "reference_images": ["https://a/1.png", "https://a/2.png"]}),
        );
        assert_eq!(
            request_input("google/nano-banana", &input),
            json!({"prompt": "p", "num_outputs": 2,
                "image_input": ["https://a/1.png", "https://a/2.png"]})
        );
    }

    #[test]
    fn official_models_run_by_name_and_pinned_versions_by_version() {
        assert_eq!(
            prediction_target("google/veo-3.1"),
            ("/v1/models/google/veo-3.1/predictions".to_owned(), None)
        );
        assert_eq!(
            prediction_target("someone/model:5c7d5dc6dd8b"),
            ("/v1/predictions".to_owned(), Some("5c7d5dc6dd8b"))
        );
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let running = |status: &str| outcome(&json!({"id": "p1", "status": status}));
        assert_eq!(running("starting"), Ok(None));
        assert_eq!(running("processing"), Ok(None));
        assert_eq!(running("queued-somewhere-new"), Ok(None));
        let done = outcome(&json!({"id": "p1", "status": "succeeded",
            "output": "https://replicate.delivery/x/out.mp4"}))
        .unwrap()
        .unwrap();
        assert_eq!(done[0].locator, "https://replicate.delivery/x/out.mp4");
        let done = outcome(&json!({"id": "p1", "status": "succeeded",
            "output": ["https://r.d/a.webp", "https://r.d/b.webp"]}))
        .unwrap()
        .unwrap();
        assert_eq!((done.len(), done[1].index), (2, 1));

        let refused = outcome(&json!({"id": "p1", "status": "failed", "error":
            "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"}))
        .unwrap_err();
        assert_eq!(
            (refused.class, refused.code),
            (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
        );
        let crashed = outcome(&json!({"id": "p1", "status": "failed",
            "error": "CUDA out of memory"}))
        .unwrap_err();
        assert_eq!(crashed.class, ErrorClass::Rerun);
        assert!(crashed.message.contains("CUDA out of memory"));
        assert_eq!(
            running("canceled").unwrap_err().class,
            ErrorClass::Permanent
        );
        assert_eq!(running("aborted").unwrap_err().class, ErrorClass::Rerun);
        assert_eq!(
            running("succeeded").unwrap_err().class,
            ErrorClass::Retryable,
            "succeeded without output"
        );
    }
}
