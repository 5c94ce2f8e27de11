//! OpenAI: images and videos, with the key as `Authorization: Bearer`.
//!
//! Images (GPT image models): `POST /v1/images/generations`, or `POST /v1/images/edits`
//! with JSON `images: [{image_url}]` when the job gives reference images, answers at once
//! with `data[].b64_json`: these models always return the image itself, never a link.
//! Videos (Sora): multipart `POST /v1/videos` {prompt, model, seconds, size}, or JSON with
//! `input_reference: {image_url}` when the job gives an image, answers a video object;
//! `GET /v1/videos/{id}` reports `queued` / `in_progress` (with `progress`, 0–100) until
//! `completed` or `failed` (with `error {code, message}`), and paces polling with the
//! `openai-poll-after-ms` header; `GET /v1/videos/{id}/content`, with the key, answers the
//! MP4 until the video expires. There is no cancel (DELETE only removes a finished video).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, Response};
use serde_json::{Map, Value, json};

use super::http::{Upstream, inline_locator, inline_media, put, still_running};
use super::{
    ErrorClass, Media, MediaProvider, Polled, ProviderCall, ProviderError, ProviderSettings,
    Submitted, UpstreamOutput,
};
use crate::ErrorCode;
use crate::jobs::input::JobInput;
use crate::providers::{NumberedOutputs, SetupError};

/// The longest pause between polls an `openai-poll-after-ms` hint may ask for.
const MAX_POLL_HINT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct OpenAi {
    upstream: Upstream,
}

/// Sora models make videos; every other model here makes images.
fn makes_video(upstream_model: &str) -> bool {
    upstream_model.starts_with("sora")
}

impl MediaProvider for OpenAi {
    const NAME: &'static str = "openai";
    const DEFAULT_BASE_URL: &'static str = "https://api.openai.com";
    const API_KEY_ENV: &'static str = "OPENAI_API_KEY";

    fn from_settings(settings: &ProviderSettings) -> Result<OpenAi, SetupError> {
        Ok(OpenAi {
            upstream: Upstream::new(OpenAi::NAME, settings)?.reading_errors(read_error),
        })
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        if !makes_video(call.upstream_model) {
            let (upstream_id, outputs) = self.generate_images(call).await?;
            return Ok(Submitted::Done {
                upstream_id,
                outputs,
            });
        }
        let request = self.upstream.authorized(Method::POST, "/v1/videos");
        let request = match video_request(call.upstream_model, call.input) {
            VideoRequest::Form(fields) => {
                let (content_type, body) = multipart(&fields);
                request.header(CONTENT_TYPE, content_type).body(body)
            }
            VideoRequest::Json(body) => request.json(&body),
        };
        let response = self.upstream.send(request).await?;
        let poll_after = self.poll_after(call, response.headers());
        let video = self.read_json(response).await?;
        let id = video["id"].as_str().ok_or_else(|| {
            ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamError,
                "openai: the video object has no id",
            )
        })?;
        Ok(Submitted::Pending {
            upstream_id: id.to_owned(),
            poll_after,
        })
    }

    async fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        if !makes_video(call.upstream_model) {
            // Nothing upstream keeps a synchronous answer. A job polled here had its images
            // in hand once but never stored them (the process stopped before the copy, or
            // the copy failed): the only way to a result is to ask again, and pay again.
            tracing::warn!(
                provider = OpenAi::NAME,
                job_id = call.job_id,
                "images were never stored; generating them again"
            );
            let (_, outputs) = self.generate_images(call).await?;
            return Ok(Polled::Done { outputs });
        }
        let request = self
            .upstream
            .authorized(Method::GET, &format!("/v1/videos/{upstream_id}"));
        let response = self.upstream.send(request).await?;
        let poll_after = self.poll_after(call, response.headers());
        let video = self.read_json(response).await?;
        video_state(&video, upstream_id, poll_after)
    }

    /// Videos come from the content endpoint, with the key (a redirect to a CDN drops it);
    /// images are already in the locator.
    async fn fetch(
        &self,
        call: &ProviderCall<'_>,
        output: &UpstreamOutput,
    ) -> Result<Media, ProviderError> {
        if !makes_video(call.upstream_model) {
            return inline_media(OpenAi::NAME, &output.locator);
        }
        let request = self.upstream.authorized(
            Method::GET,
            &format!("/v1/videos/{}/content", output.locator),
        );
        self.upstream.download(request, "video/mp4").await
    }

    /// Sora's own thumbnail: the content endpoint's `variant=thumbnail`.
    async fn thumbnail(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Option<Media>, ProviderError> {
        if !makes_video(call.upstream_model) {
            return Ok(None);
        }
        let path = format!("/v1/videos/{upstream_id}/content?variant=thumbnail");
        let request = self.upstream.authorized(Method::GET, &path);
        Ok(Some(self.upstream.download(request, "image/webp").await?))
    }
}

impl OpenAi {
    /// One synchronous image call: the upstream's request id (our record of the call) and
    /// the images, carried inline to `fetch`.
    async fn generate_images(
        &self,
        call: &ProviderCall<'_>,
    ) -> Result<(String, Vec<UpstreamOutput>), ProviderError> {
        let (path, body) = image_request(call.upstream_model, call.input);
        let response = self
            .upstream
            .send(self.upstream.authorized(Method::POST, path).json(&body))
            .await?;
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answer = self.read_json(response).await?;
        let outputs = image_outputs(&answer);
        if outputs.is_empty() {
            return Err(ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamError,
                "openai: the answer holds no image",
            ));
        }
        let upstream_id = request_id.unwrap_or_else(|| format!("images-{}", call.job_id));
        Ok((upstream_id, outputs))
    }

    fn poll_after(&self, call: &ProviderCall<'_>, headers: &HeaderMap) -> Duration {
        poll_hint(headers).unwrap_or(self.upstream.poll_after(call))
    }

    async fn read_json(&self, response: Response) -> Result<Value, ProviderError> {
        response.json::<Value>().await.map_err(|e| {
            ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamError,
                format!(
                    "openai: unreadable answer: {}",
                    self.upstream.redact(&e.to_string())
                ),
            )
        })
    }
}

/// The `openai-poll-after-ms` hint, within reason.
fn poll_hint(headers: &HeaderMap) -> Option<Duration> {
    let ms = headers
        .get("openai-poll-after-ms")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_millis(ms).min(MAX_POLL_HINT))
}

/// The one place OpenAI's video status words are read.
fn video_state(video: &Value, id: &str, poll_after: Duration) -> Result<Polled, ProviderError> {
    let status = video["status"].as_str().unwrap_or_default();
    match status {
        "completed" => Ok(Polled::Done {
            outputs: vec![UpstreamOutput {
                index: 0,
                locator: id.to_owned(),
            }],
        }),
        "failed" => {
            let code = video.pointer("/error/code").and_then(Value::as_str);
            let message = video.pointer("/error/message").and_then(Value::as_str);
            let words = format!(
                "openai: video failed: {}: {}",
                code.unwrap_or("unknown"),
                message.unwrap_or("no detail")
            );
            // Moderation judged the prompt or the result: asking again gets the same answer.
            if code.is_some_and(is_moderation_code) {
                Err(ProviderError::new(
                    ErrorClass::Permanent,
                    ErrorCode::UpstreamModerated,
                    words,
                ))
            } else {
                Err(ProviderError::new(
                    ErrorClass::Rerun,
                    ErrorCode::UpstreamError,
                    words,
                ))
            }
        }
        other => {
            still_running(OpenAi::NAME, other, &["queued", "in_progress"]);
            Ok(Polled::Pending {
                progress: video["progress"].as_u64().map(|p| p.min(99) as u8),
                poll_after,
            })
        }
    }
}

enum VideoRequest {
    /// What the official SDK sends, and what every host of this API takes.
    Form(Vec<(&'static str, String)>),
    /// An image reference by URL needs the JSON form of the request.
    Json(Value),
}

/// Our input in `/v1/videos` words: `seconds` as a string, `size` from resolution and
/// aspect ratio.
fn video_request(model: &str, input: &JobInput) -> VideoRequest {
    let mut fields = vec![
        ("prompt", input.prompt.clone()),
        ("model", model.to_owned()),
    ];
    if let Some(seconds) = input.duration {
        fields.push(("seconds", seconds.to_string()));
    }
    if let Some(size) = video_size(input) {
        fields.push(("size", size.to_owned()));
    }
    match input.first_image() {
        None => VideoRequest::Form(fields),
        Some(url) => {
            let mut body: Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect();
            body.insert("input_reference".into(), json!({"image_url": url}));
            VideoRequest::Json(Value::Object(body))
        }
    }
}

/// Sora's sizes: 720p in both orientations, and the larger "1080p" class of Sora 2 Pro.
fn video_size(input: &JobInput) -> Option<&'static str> {
    let resolution = input.resolution.as_deref();
    let aspect = input.aspect_ratio.as_deref();
    if resolution.is_none() && aspect.is_none() {
        return None;
    }
    match (resolution.unwrap_or("720p"), aspect.unwrap_or("16:9")) {
        ("720p", "16:9") => Some("1280x720"),
        ("720p", "9:16") => Some("720x1280"),
        ("1080p", "16:9") => Some("1792x1024"),
        ("1080p", "9:16") => Some("1024x1792"),
        _ => None,
    }
}

/// A `multipart/form-data` body of text fields: its content type and bytes.
fn multipart(fields: &[(&str, String)]) -> (String, String) {
    let boundary = format!("mediagate-{}", uuid::Uuid::now_v7().simple());
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Our input in Images API words: the endpoint (edits when there are reference images)
/// and its JSON body.
fn image_request(model: &str, input: &JobInput) -> (&'static str, Value) {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("prompt".into(), json!(input.prompt));
    put(&mut body, "n", input.n);
    put(
        &mut body,
        "size",
        input.aspect_ratio.as_deref().and_then(image_size),
    );
    let images: Vec<Value> = input
        .images()
        .map(|url| json!({"image_url": url}))
        .collect();
    if images.is_empty() {
        return ("/v1/images/generations", Value::Object(body));
    }
    body.insert("images".into(), Value::Array(images));
    ("/v1/images/edits", Value::Object(body))
}

/// The GPT image sizes for each aspect ratio they offer.
fn image_size(aspect_ratio: &str) -> Option<&'static str> {
    match aspect_ratio {
        "1:1" => Some("1024x1024"),
        "3:2" => Some("1536x1024"),
        "2:3" => Some("1024x1536"),
        _ => None,
    }
}

fn image_outputs(answer: &Value) -> Vec<UpstreamOutput> {
    let content_type = format!(
        "image/{}",
        answer["output_format"].as_str().unwrap_or("png")
    );
    answer["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|image| image["b64_json"].as_str())
        .map(|b64| inline_locator(&content_type, b64))
        .numbered_outputs()
}

/// The safety system refuses an image prompt with a 400 whose `error.code` is
/// `moderation_blocked` (`content_policy_violation` on older models): a refusal, where
/// other 400s are input it could not use.
fn read_error(body: &Value) -> Option<(ErrorClass, ErrorCode)> {
    let code = body.pointer("/error/code")?.as_str()?;
    is_moderation_code(code).then_some((ErrorClass::Permanent, ErrorCode::UpstreamModerated))
}

fn is_moderation_code(code: &str) -> bool {
    code.contains("moderation") || code.contains("policy")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::input::typed;

    fn form(request: VideoRequest) -> Vec<(&'static str, String)> {
        match request {
            VideoRequest::Form(fields) => fields,
            VideoRequest::Json(body) => panic!("expected a form, got {body}"),
        }
    }

    #[test]
    fn video_input_maps_to_form_fields() {
        let input = typed(json!({"prompt": "p", "duration": 8, "resolution": "720p",
            "aspect_ratio": "9:16"}));
        assert_eq!(
            form(video_request("sora-2", &input)),
            [
                ("prompt", "p".to_owned()),
                ("model", "sora-2".to_owned()),
                ("seconds", "8".to_owned()),
                ("size", "720x1280".to_owned())
            ]
        );
        let input = typed(json!({"prompt": "p", "resolution": "1080p"}));
        assert_eq!(form(video_request("sora-2-pro", &input))[2].1, "1792x1024");
        assert_eq!(
            form(video_request("sora-2", &typed(json!({"prompt": "p"})))).len(),
            2
        );
    }

    #[test]
    fn an_image_makes_the_video_request_json() {
        let input = typed(json!({"prompt": "p", "duration": 4, "image": "https://a/1.png"}));
        let VideoRequest::Json(body) = video_request("sora-2", &input) else {
            panic!("expected JSON");
        };
        assert_eq!(
            body,
            json!({"prompt": "p", "model": "sora-2", "seconds": "4",
                "input_reference": {"image_url": "https://a/1.png"}})
        );
    }

    #[test]
    fn multipart_bodies_carry_each_field() {
        let (content_type, body) =
            multipart(&[("prompt", "a cat".into()), ("seconds", "4".into())]);
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        assert_eq!(
            body,
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"seconds\"\r\n\r\n4\r\n\
                 --{boundary}--\r\n"
            )
        );
    }

    #[test]
    fn image_input_maps_to_generations_or_edits() {
        let (path, body) = image_request(
            "gpt-image-1",
            &typed(json!({"prompt": "p", "aspect_ratio": "3:2", "n": 2})),
        );
        assert_eq!(path, "/v1/images/generations");
        assert_eq!(
            body,
            json!({"model": "gpt-image-1", "prompt": "p", "n": 2, "size": "1536x1024"})
        );
        let (path, body) = image_request(
            "gpt-image-1",
            &typed(
                json!({"prompt": "p", "reference_images": ["https://a/1.png", "https://a/2.png"]}),
            ),
        );
        assert_eq!(path, "/v1/images/edits");
        assert_eq!(
            body["images"],
            json!([{"image_url": "https://a/1.png"}, {"image_url": "https://a/2.png"}])
        );
    }

    #[test]
    fn video_statuses_map_to_outcomes() {
        let wait = Duration::from_millis(5);
        let state = |v: Value| video_state(&v, "video_1", wait);
        assert_eq!(
            state(json!({"status": "queued", "progress": 0})).unwrap(),
            Polled::Pending {
                progress: Some(0),
                poll_after: wait
            }
        );
        assert_eq!(
            state(json!({"status": "in_progress", "progress": 100})).unwrap(),
            Polled::Pending {
                progress: Some(99),
                poll_after: wait
            }
        );
        assert_eq!(
            state(json!({"status": "something_new"})).unwrap(),
            Polled::Pending {
                progress: None,
                poll_after: wait
            }
        );
        assert_eq!(
            state(json!({"status": "completed", "progress": 100})).unwrap(),
            Polled::Done {
                outputs: vec![UpstreamOutput {
                    index: 0,
                    locator: "video_1".into()
                }]
            }
        );
        let refused = state(json!({"status": "failed",
            "error": {"code": "moderation_blocked", "message": "blocked"}}))
        .unwrap_err();
        assert_eq!(
            (refused.class, refused.code),
            (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
        );
        let broken = state(json!({"status": "failed",
            "error": {"code": "internal_error", "message": "oops"}}))
        .unwrap_err();
        assert_eq!(
            (broken.class, broken.code),
            (ErrorClass::Rerun, ErrorCode::UpstreamError)
        );
    }

    #[test]
    fn poll_hints_are_honoured_within_reason() {
        let mut headers = HeaderMap::new();
        assert_eq!(poll_hint(&headers), None);
        headers.insert("openai-poll-after-ms", "1500".parse().unwrap());
        assert_eq!(poll_hint(&headers), Some(Duration::from_millis(1500)));
        headers.insert("openai-poll-after-ms", "99999999".parse().unwrap());
        assert_eq!(poll_hint(&headers), Some(MAX_POLL_HINT));
    }

    #[test]
    fn inline_media_round_trips() {
        let answer = json!({"data": [{"b64_json": "iVBORw0KGgo="}], "output_format": "png"});
        let outputs = image_outputs(&answer);
        let media = inline_media(OpenAi::NAME, &outputs[0].locator).unwrap();
        assert_eq!(media.content_type, "image/png");
        assert_eq!(media.extension, "png");
        assert_eq!(media.bytes.as_ref(), b"\x89PNG\r\n\x1a\n");
        assert_eq!(
            inline_media(OpenAi::NAME, "https://example.com/x.png")
                .unwrap_err()
                .code,
            ErrorCode::UpstreamBadMedia
        );
    }
}
