//! Luma AI's Dream Machine: `POST /dream-machine/v1/generations` (Bearer key) with
//! `{model, prompt, resolution, duration: "5s", aspect_ratio, keyframes?, callback_url?}`
//! answers 201 with a generation `{id, state, failure_reason, assets}`;
//! `GET /dream-machine/v1/generations/{id}` reports `queued` / `dreaming` until
//! `completed` (with `assets.video`, a CDN link that needs no key) or `failed` (with
//! `failure_reason`: moderation, unreadable keyframes, or an internal failure).
//! `DELETE /dream-machine/v1/generations/{id}` removes a generation, which stops it.
//! Errors before submission are `{"detail": "…"}` with the HTTP status saying whose fault.
//!
//! Callbacks: `callback_url` is POSTed the generation object at each change of state.
//! Luma documents no signature for them, so we rely on the per-job token in the URL (a
//! callback only makes us look at the generation sooner).

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::http::{Upstream, still_running};
use super::{
    ErrorClass, MediaProvider, Polled, ProviderCall, ProviderError, ProviderSettings, Submitted,
    UpstreamOutput,
};
use crate::ErrorCode;
use crate::jobs::input::JobInput;
use crate::providers::SetupError;

/// Where generations live, under the base URL.
const GENERATIONS_PATH: &str = "/dream-machine/v1/generations";

#[derive(Debug, Clone)]
pub struct Luma {
    upstream: Upstream,
}

impl MediaProvider for Luma {
    const NAME: &'static str = "luma";
    const DEFAULT_BASE_URL: &'static str = "https://api.lumalabs.ai";
    const API_KEY_ENV: &'static str = "LUMAAI_API_KEY";
    /// `assets.video` is a public CDN link: the default fetch downloads it without the key.
    const LINK_MEDIA_TYPE: Option<&'static str> = Some("video/mp4");
    /// A callback carries the whole generation.
    const CALLBACK_ID: Option<&'static str> = Some("/id");

    fn from_settings(settings: &ProviderSettings) -> Result<Luma, SetupError> {
        Ok(Luma {
            upstream: Upstream::new(Self::NAME, settings)?,
        })
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        let body = request_body(call.upstream_model, call.input, call.callback_url);
        let request = self.upstream.authorized(Method::POST, GENERATIONS_PATH);
        let generation = self.upstream.json(request.json(&body)).await?;
        let id = self.upstream.answer_id(&generation, "id")?;
        Ok(self.upstream.submitted(call, id, None))
    }

    async fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        let path = format!("{GENERATIONS_PATH}/{upstream_id}");
        let generation = self.upstream.get_json(&path).await?;
        // Generations report no progress figure.
        let outputs = outcome(upstream_id, &generation)?;
        Ok(self.upstream.polled(call, outputs, None))
    }

    async fn cancel(
        &self,
        _call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<(), ProviderError> {
        let path = format!("{GENERATIONS_PATH}/{upstream_id}");
        self.upstream
            .send(self.upstream.authorized(Method::DELETE, &path))
            .await
            .map(drop)
    }
}

/// The one place a generation's state is read: `None` while it runs, the video once done.
fn outcome(id: &str, generation: &Value) -> Result<Option<Vec<UpstreamOutput>>, ProviderError> {
    let state = generation["state"].as_str().unwrap_or_default();
    match state {
        "completed" => {
            let video = generation
                .pointer("/assets/video")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ProviderError::new(
                        ErrorClass::Retryable,
                        ErrorCode::UpstreamError,
                        format!("luma: generation {id} completed without assets.video"),
                    )
                })?;
            Ok(Some(vec![UpstreamOutput {
                index: 0,
                locator: video.to_owned(),
            }]))
        }
        "failed" => {
            let reason = generation["failure_reason"]
                .as_str()
                .unwrap_or("no reason given");
            Err(failure(reason))
        }
        other => {
            still_running(Luma::NAME, other, &["queued", "dreaming"]);
            Ok(None)
        }
    }
}

/// A failed generation, sorted by its documented `failure_reason`s: moderation ("Advanced
/// prompt moderation failed", "Frame moderation failed", "Contains blacklisted words")
/// fails the same way anywhere; keyframes Luma could not read are the input's fault; the
/// rest ("Job failed", "Prompt processing failed") may pass on a new submission.
fn failure(reason: &str) -> ProviderError {
    let words = format!("luma: generation failed: {reason}");
    let lower = reason.to_ascii_lowercase();
    if lower.contains("moderation") || lower.contains("blacklisted") {
        ProviderError::new(ErrorClass::Permanent, ErrorCode::UpstreamModerated, words)
    } else if lower.contains("input frames") {
        ProviderError::new(ErrorClass::InvalidInput, ErrorCode::UpstreamRejected, words)
    } else {
        ProviderError::new(ErrorClass::Rerun, ErrorCode::UpstreamError, words)
    }
}

/// Our input in Luma's words: `duration` as "5s", the starting image as keyframe
/// `frame0`.
fn request_body(model: &str, input: &JobInput, callback_url: Option<&str>) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("prompt".into(), json!(input.prompt));
    if let Some(resolution) = &input.resolution {
        body.insert("resolution".into(), json!(resolution));
    }
    if let Some(seconds) = input.duration {
        body.insert("duration".into(), json!(format!("{seconds}s")));
    }
    if let Some(ratio) = &input.aspect_ratio {
        body.insert("aspect_ratio".into(), json!(ratio));
    }
    if let Some(url) = input.first_image() {
        body.insert(
            "keyframes".into(),
            json!({"frame0": {"type": "image", "url": url}}),
        );
    }
    if let Some(url) = callback_url {
        body.insert("callback_url".into(), json!(url));
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::input::typed;

    #[test]
    fn input_maps_to_luma_fields() {
        let body = request_body(
            "ray-2",
            &typed(json!({"prompt": "p", "duration": 9, "resolution": "720p",
                "aspect_ratio": "9:16", "image": "https://a/1.png"})),
            Some("https://gw/cb"),
        );
        assert_eq!(
            body,
            json!({"model": "ray-2", "prompt": "p", "resolution": "720p", "duration": "9s",
                "aspect_ratio": "9:16",
                "keyframes": {"frame0": {"type": "image", "url": "https://a/1.png"}},
                "callback_url": "https://gw/cb"})
        );
        assert_eq!(
            request_body("ray-2", &typed(json!({"prompt": "p"})), None),
            json!({"model": "ray-2", "prompt": "p"})
        );
    }

    fn failed(reason: &str) -> (ErrorClass, ErrorCode) {
        let e = outcome("g", &json!({"state": "failed", "failure_reason": reason})).unwrap_err();
        (e.class, e.code)
    }

    #[test]
    fn states_map_to_outcomes() {
        assert_eq!(outcome("g", &json!({"state": "queued"})).unwrap(), None);
        assert_eq!(outcome("g", &json!({"state": "dreaming"})).unwrap(), None);
        assert_eq!(outcome("g", &json!({"state": "new"})).unwrap(), None);
        let done = json!({"state": "completed", "assets": {"video": "https://cdn/v.mp4"}});
        assert_eq!(
            outcome("g", &done).unwrap(),
            Some(vec![UpstreamOutput {
                index: 0,
                locator: "https://cdn/v.mp4".into()
            }])
        );
        assert_eq!(
            outcome("g", &json!({"state": "completed", "assets": {}}))
                .unwrap_err()
                .code,
            ErrorCode::UpstreamError
        );
        assert_eq!(
            failed("Advanced prompt moderation failed"),
            (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
        );
        assert_eq!(
            failed("Contains blacklisted words"),
            (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
        );
        assert_eq!(
            failed("Failed to read user input frames"),
            (ErrorClass::InvalidInput, ErrorCode::UpstreamRejected)
        );
        assert_eq!(
            failed("Job failed"),
            (ErrorClass::Rerun, ErrorCode::UpstreamError)
        );
    }
}
