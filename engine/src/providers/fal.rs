//! fal's queue: `POST {base}/{model id}` (`Authorization: Key …`) answers
//! `{request_id, status_url, response_url, cancel_url}`. Status, result and cancel live
//! under the app id alone, without the model id's sub-path: `GET …/requests/{id}/status`
//! reports `IN_QUEUE` (with `queue_position`) or `IN_PROGRESS` until `COMPLETED`, then
//! `GET …/requests/{id}` gives the model's output (`images[].url`, `video.url`,
//! `audio.url`; kept about an hour, so the media is copied at once) or the model's error
//! (422 with `detail[].type`, `content_policy_violation` among them).
//! `PUT …/requests/{id}/cancel` stops a request that has not started.
//!
//! Callbacks: `?fal_webhook=URL` on the submission makes fal POST `{request_id, status:
//! "OK" | "ERROR", payload, error}` there when the request ends. fal signs them with
//! ED25519, but its documentation does not pin down the signed message, so we rely on the
//! per-job token in the URL (a callback only makes us look at the request sooner).
//!
//! The upstream id is fal's request id; the app id comes from the job's upstream model,
//! which the route stores with the job, so every later call finds the same paths.

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::http::{Auth, Upstream, put, still_running};
use super::{
    ErrorClass, MediaProvider, Polled, ProviderCall, ProviderError, ProviderSettings, Submitted,
    UpstreamOutput,
};
use crate::ErrorCode;
use crate::jobs::input::JobInput;
use crate::providers::{NumberedOutputs, SetupError};

#[derive(Debug, Clone)]
pub struct Fal {
    upstream: Upstream,
}

impl MediaProvider for Fal {
    const NAME: &'static str = "fal";
    const DEFAULT_BASE_URL: &'static str = "https://queue.fal.run";
    const API_KEY_ENV: &'static str = "FAL_KEY";
    /// The request a callback is about.
    const CALLBACK_ID: Option<&'static str> = Some("/request_id");

    fn from_settings(settings: &ProviderSettings) -> Result<Fal, SetupError> {
        Ok(Fal {
            upstream: Upstream::new(Fal::NAME, settings)?
                .with_auth(Auth::Scheme("Key"))
                .reading_errors(read_error),
        })
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        let path = format!("/{}", call.upstream_model);
        let mut request = self.upstream.authorized(Method::POST, &path);
        if let Some(callback) = call.callback_url {
            request = request.query(&[("fal_webhook", callback)]);
        }
        let request = request.json(&request_body(call.upstream_model, call.input));
        let answer = self.upstream.json(request).await?;
        let id = self.upstream.answer_id(&answer, "request_id")?;
        Ok(self.upstream.submitted(call, id, None))
    }

    async fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        let url = self.request_url(call.upstream_model, upstream_id, "/status");
        let request = self.upstream.authorized_url(Method::GET, &url);
        let status = self.upstream.json(request).await?;
        match status["status"].as_str().unwrap_or_default() {
            // Completed means finished, not succeeded: the result says which.
            "COMPLETED" => {
                let url = self.request_url(call.upstream_model, upstream_id, "");
                let request = self.upstream.authorized_url(Method::GET, &url);
                let result = self.upstream.json(request).await?;
                Ok(Polled::Done {
                    outputs: result_outputs(&result)?,
                })
            }
            other => {
                still_running(Fal::NAME, other, &["IN_QUEUE", "IN_PROGRESS"]);
                // fal gives a queue position but no progress figure.
                Ok(self.upstream.polled(call, None, None))
            }
        }
    }

    async fn cancel(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<(), ProviderError> {
        let url = self.request_url(call.upstream_model, upstream_id, "/cancel");
        let request = self.upstream.authorized_url(Method::PUT, &url);
        self.upstream.send(request).await.map(drop)
    }
}

impl Fal {
    /// `{base}/{app id}/requests/{request id}{rest}`.
    fn request_url(&self, model: &str, request_id: &str, rest: &str) -> String {
        self.upstream
            .url(&format!("/{}/requests/{request_id}{rest}", app_id(model)))
    }
}

/// The app id a model id belongs to: its first two segments (`fal-ai/flux-pro/v1.1` →
/// `fal-ai/flux-pro`), three under a namespace (`workflows/…`, `comfy/…`), as fal's own
/// client computes it.
fn app_id(model: &str) -> String {
    let parts: Vec<&str> = model.split('/').collect();
    let keep = if matches!(parts[0], "workflows" | "comfy") {
        3
    } else {
        2
    };
    parts[..keep.min(parts.len())].join("/")
}

/// fal answers a content-policy violation with 422 and `detail[].type`
/// `content_policy_violation`: a refusal, where other 422s are input it could not use.
fn read_error(body: &Value) -> Option<(ErrorClass, ErrorCode)> {
    let details = body["detail"].as_array()?;
    details
        .iter()
        .any(|d| d["type"] == "content_policy_violation")
        .then_some((ErrorClass::Permanent, ErrorCode::UpstreamModerated))
}

/// The media URLs in a model's output: `images[]`, `image`, `video`, `audio` (or
/// `audio_file`). Images the safety checker flagged (`has_nsfw_concepts`) come back
/// blacked out, so they are dropped; if nothing is left, the job was refused.
fn result_outputs(result: &Value) -> Result<Vec<UpstreamOutput>, ProviderError> {
    let flagged = |i: usize| result["has_nsfw_concepts"][i].as_bool() == Some(true);
    let images = result["images"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let kept_images: Vec<&Value> = images
        .iter()
        .enumerate()
        .filter(|(i, _)| !flagged(*i))
        .map(|(_, image)| image)
        .collect();
    if !images.is_empty() && kept_images.is_empty() {
        return Err(ProviderError::new(
            ErrorClass::Permanent,
            ErrorCode::UpstreamModerated,
            "fal: the safety checker flagged every image",
        ));
    }
    let files = kept_images.into_iter().chain(
        ["image", "video", "audio", "audio_file"]
            .into_iter()
            .map(|k| &result[k]),
    );
    let outputs: Vec<UpstreamOutput> = files
        .filter_map(|file| file["url"].as_str())
        .filter(|url| url.starts_with("https://") || url.starts_with("http://"))
        .numbered_outputs();
    if outputs.is_empty() {
        return Err(ProviderError::new(
            ErrorClass::Retryable,
            ErrorCode::UpstreamError,
            "fal: the result has no media URL",
        ));
    }
    Ok(outputs)
}

/// fal's video models spell a duration three ways: Veo as `"8s"`, Sora as a number, the
/// others (Kling, Seedance, Wan) as a string of digits.
fn duration_value(model: &str, seconds: u32) -> Value {
    if model.starts_with("fal-ai/veo") {
        json!(format!("{seconds}s"))
    } else if model.starts_with("fal-ai/sora") {
        json!(seconds)
    } else {
        json!(seconds.to_string())
    }
}

/// FLUX (but Kontext and Ultra), Recraft and Ideogram take the frame as `image_size`, a
/// preset name or `{width, height}`; fal's other models take `aspect_ratio`.
fn takes_image_size(model: &str) -> bool {
    (model.starts_with("fal-ai/flux") && !model.contains("kontext") && !model.contains("ultra"))
        || model.starts_with("fal-ai/recraft")
        || model.starts_with("fal-ai/ideogram")
}

/// The `image_size` for an aspect ratio: fal's preset where there is one, else a size of
/// about a megapixel.
fn image_size_for(aspect_ratio: &str) -> Option<Value> {
    Some(match aspect_ratio {
        "1:1" => json!("square_hd"),
        "16:9" => json!("landscape_16_9"),
        "9:16" => json!("portrait_16_9"),
        "4:3" => json!("landscape_4_3"),
        "3:4" => json!("portrait_4_3"),
        "3:2" => json!({"width": 1536, "height": 1024}),
        "2:3" => json!({"width": 1024, "height": 1536}),
        _ => return None,
    })
}

/// Our input in fal's words. Reference images go as `image_url` (the first, for
/// image-to-X and edit models) and `image_urls` (all, for reference and multi-image
/// models); fal's models ignore the one they do not take.
fn request_body(model: &str, input: &JobInput) -> Value {
    let mut body = Map::new();
    body.insert("prompt".into(), json!(input.prompt));
    put(&mut body, "seed", input.seed);
    put(&mut body, "resolution", input.resolution.as_ref());
    put(&mut body, "generate_audio", input.generate_audio);
    put(
        &mut body,
        "duration",
        input.duration.map(|s| duration_value(model, s)),
    );
    put(&mut body, "num_images", input.n);
    if let Some(size) = input.size {
        body.insert(
            "image_size".into(),
            json!({"width": size.width, "height": size.height}),
        );
    } else if let Some(ratio) = &input.aspect_ratio {
        match image_size_for(ratio).filter(|_| takes_image_size(model)) {
            Some(image_size) => body.insert("image_size".into(), image_size),
            None => body.insert("aspect_ratio".into(), json!(ratio)),
        };
    }
    let images: Vec<&str> = input.images().collect();
    if let Some(first) = images.first() {
        body.insert("image_url".into(), json!(first));
        body.insert("image_urls".into(), json!(images));
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::input::typed;

    #[test]
    fn input_maps_to_fal_fields() {
        let input = typed(json!({"prompt": "p", "duration": 8, "resolution": "720p",
            "aspect_ratio": "16:9", "generate_audio": false, "seed": 3}));
        assert_eq!(
            request_body("fal-ai/veo3.1", &input),
            json!({"prompt": "p", "duration": "8s", "resolution": "720p",
                "aspect_ratio": "16:9", "generate_audio": false, "seed": 3})
        );
        assert_eq!(
            request_body("fal-ai/sora-2/text-to-video", &input)["duration"],
            8
        );
        assert_eq!(
            request_body("fal-ai/kling-video/v2.5-turbo/pro/text-to-video", &input)["duration"],
            "8"
        );
        let input = typed(json!({"prompt": "p", "aspect_ratio": "9:16", "n": 2}));
        assert_eq!(
            request_body("fal-ai/flux-pro/v1.1", &input),
            json!({"prompt": "p", "image_size": "portrait_16_9", "num_images": 2})
        );
        assert_eq!(
            request_body("fal-ai/imagen4/preview", &input),
            json!({"prompt": "p", "aspect_ratio": "9:16", "num_images": 2})
        );
        let input = typed(json!({"prompt": "p", "size": "512x768",
            "reference_images": ["https://a/1.png", "https://a/2.png"]}));
        assert_eq!(
            request_body("fal-ai/flux-2-pro", &input),
            json!({"prompt": "p", "image_size": {"width": 512, "height": 768},
                "image_url": "https://a/1.png",
                "image_urls": ["https://a/1.png", "https://a/2.png"]})
        );
    }

    #[test]
    fn status_paths_use_the_app_id() {
        assert_eq!(app_id("fal-ai/flux-pro/v1.1"), "fal-ai/flux-pro");
        assert_eq!(app_id("fal-ai/veo3.1"), "fal-ai/veo3.1");
        assert_eq!(
            app_id("fal-ai/kling-video/v2.5-turbo/pro/text-to-video"),
            "fal-ai/kling-video"
        );
        assert_eq!(app_id("workflows/someone/flow/x"), "workflows/someone/flow");
    }

    #[test]
    fn results_give_media_urls() {
        let video = result_outputs(&json!({"video": {"url": "https://v3.fal.media/v.mp4",
            "content_type": "video/mp4"}}))
        .unwrap();
        assert_eq!(video[0].locator, "https://v3.fal.media/v.mp4");
        let images = result_outputs(&json!({"images": [
            {"url": "https://fal.media/a.jpg"}, {"url": "https://fal.media/b.jpg"}],
            "has_nsfw_concepts": [true, false]}))
        .unwrap();
        assert_eq!(images.len(), 1, "the flagged image is dropped");
        assert_eq!(
            (images[0].index, images[0].locator.as_str()),
            (0, "https://fal.media/b.jpg")
        );
        let refused = result_outputs(&json!({"images": [{"url": "https://fal.media/a.jpg"}],
            "has_nsfw_concepts": [true]}))
        .unwrap_err();
        assert_eq!(refused.code, ErrorCode::UpstreamModerated);
        assert_eq!(
            result_outputs(&json!({"seed": 1})).unwrap_err().class,
            ErrorClass::Retryable
        );
    }

    #[test]
    fn content_policy_rejections_are_refusals() {
        let read = |body: Value| read_error(&body);
        let flagged = json!({"detail": [{"loc": ["body", "prompt"], "type": "content_policy_violation",
            "msg": "The content could not be processed because it contained material flagged by a content checker."}]});
        assert_eq!(
            read(flagged),
            Some((ErrorClass::Permanent, ErrorCode::UpstreamModerated))
        );
        let invalid = json!({"detail": [{"loc": ["body", "prompt"], "type": "missing",
            "msg": "field required"}]});
        assert_eq!(read(invalid), None, "the status decides");
        assert_eq!(read(Value::Null), None);
    }
}
