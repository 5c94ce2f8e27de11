//! Google's Gemini API, with the key in `x-goog-api-key`; errors are google.rpc.Status,
//! `{"error": {code, message, status}}`.
//!
//! Veo: `POST /v1beta/models/{model}:predictLongRunning` {instances: [{prompt, image?,
//! referenceImages?}], parameters: {aspectRatio, durationSeconds, resolution}} answers an
//! operation `{name}`; `GET /v1beta/{name}` until `done: true`, then either `error` (a
//! Status), or `response.generateVideoResponse.generatedSamples[].video.uri`, or, when
//! safety filters removed every video, `raiMediaFilteredReasons` and no samples. The uri is
//! a file download that needs the key: it goes only to the API's own host, and as the
//! `key` query parameter so that the redirect to storage does not carry it (reqwest would
//! forward a custom header). The Gemini API takes neither `seed` nor `generateAudio` (they
//! are Vertex AI's): Veo 3 always makes sound, and a seed is not sent.
//!
//! Imagen: `POST …:predict` {instances: [{prompt}], parameters: {sampleCount, aspectRatio}}
//! answers at once with `predictions[].bytesBase64Encoded` (no seed on this API either).
//! Nano Banana and the other Gemini image models: `POST …:generateContent` answers at once
//! with the image as `inlineData` in the candidate's parts; a refusal is a
//! `promptFeedback.blockReason` or a `finishReason` such as `IMAGE_SAFETY`.
//!
//! The Gemini API takes input images as bytes, not links: they are downloaded first,
//! through the same guard that keeps webhooks off private networks.

use base64::Engine as _;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder};
use serde_json::{Map, Value, json};

use super::http::Upstream;
use super::http::{inline_locator, inline_media};
use super::{
    ErrorClass, Media, MediaProvider, Polled, ProviderCall, ProviderError, ProviderSettings,
    Submitted, UpstreamOutput,
};
use crate::egress::{self, AllowList};

const KEY_HEADER: &str = "x-goog-api-key";

/// The largest input image sent inline (the API's limit for a whole request is 20 MB).
const MAX_INPUT_IMAGE_BYTES: usize = 15 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Google {
    upstream: Upstream,
    /// For input images at the job's URLs: public addresses only, no redirects.
    image_client: reqwest::Client,
}

/// Which API a model is served through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Veo: a long-running operation.
    Veo,
    /// Imagen: `:predict`, synchronous.
    Imagen,
    /// Gemini image models: `:generateContent`, synchronous.
    Gemini,
}

fn kind(upstream_model: &str) -> Kind {
    if upstream_model.starts_with("veo") {
        Kind::Veo
    } else if upstream_model.starts_with("imagen") {
        Kind::Imagen
    } else {
        Kind::Gemini
    }
}

/// Image bytes as the API takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blob {
    mime_type: String,
    base64: String,
}

impl MediaProvider for Google {
    const NAME: &'static str = "google";
    const DEFAULT_BASE_URL: &'static str = "https://generativelanguage.googleapis.com";
    const API_KEY_ENV: &'static str = "GEMINI_API_KEY";

    fn from_settings(settings: &ProviderSettings) -> Result<Google, String> {
        Ok(Google {
            upstream: Upstream::new(Google::NAME, settings)?.reading_errors(read_error),
            image_client: egress::delivery_client(AllowList::default(), settings.timeout)
                .map_err(|e| format!("HTTP client for input images: {e}"))?,
        })
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        if kind(call.upstream_model) != Kind::Veo {
            let (upstream_id, outputs) = self.generate_images(call).await?;
            return Ok(Submitted::Done {
                upstream_id,
                outputs,
            });
        }
        let first_frame = match call.input["image"].as_str() {
            Some(url) => Some(self.input_image(url).await?),
            None => None,
        };
        let references = self.input_images(reference_urls(call.input)).await?;
        let body = veo_request(call.input, first_frame, references);
        let path = format!("/v1beta/models/{}:predictLongRunning", call.upstream_model);
        let operation = self
            .upstream
            .json(self.authorized(Method::POST, &path).json(&body))
            .await?;
        let name = operation["name"].as_str().ok_or_else(|| {
            ProviderError::new(
                ErrorClass::Retryable,
                "upstream_error",
                "google: the operation has no name",
            )
        })?;
        Ok(Submitted::Pending {
            upstream_id: name.to_owned(),
            poll_after: self.upstream.poll_after(call),
        })
    }

    async fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        if kind(call.upstream_model) != Kind::Veo {
            // Nothing upstream keeps a synchronous answer. A job polled here had its images
            // in hand once but never stored them (the process stopped before the copy, or
            // the copy failed): the only way to a result is to ask again, and pay again.
            tracing::warn!(
                provider = Google::NAME,
                job_id = call.job_id,
                "images were never stored; generating them again"
            );
            let (_, outputs) = self.generate_images(call).await?;
            return Ok(Polled::Done { outputs });
        }
        let request = self.authorized(Method::GET, &format!("/v1beta/{upstream_id}"));
        let operation = self.upstream.json(request).await?;
        Ok(match operation_state(&operation)? {
            Some(outputs) => Polled::Done { outputs },
            // Operations report no progress.
            None => Polled::Pending {
                progress: None,
                poll_after: self.upstream.poll_after(call),
            },
        })
    }

    async fn fetch(
        &self,
        call: &ProviderCall<'_>,
        output: &UpstreamOutput,
    ) -> Result<Media, ProviderError> {
        if kind(call.upstream_model) != Kind::Veo {
            return inline_media(Google::NAME, &output.locator);
        }
        let url = self.download_url(&output.locator)?;
        let request = self.upstream.request(Method::GET, url.as_str());
        self.upstream.download(request, "video/mp4").await
    }
}

impl Google {
    fn authorized(&self, method: Method, path: &str) -> RequestBuilder {
        self.upstream
            .request(method, &self.upstream.url(path))
            .header(KEY_HEADER, self.upstream.key())
    }

    /// Where to download a video: with the key if the link is on the API's own host,
    /// as it is; without it anywhere else.
    fn download_url(&self, uri: &str) -> Result<url::Url, ProviderError> {
        let mut url = url::Url::parse(uri).map_err(|e| {
            ProviderError::new(
                ErrorClass::Retryable,
                "upstream_error",
                format!("google: the video link is not a URL: {e}"),
            )
        })?;
        if same_origin(&url, &self.upstream.base_url) {
            url.query_pairs_mut()
                .append_pair("key", self.upstream.key());
        }
        Ok(url)
    }

    /// One synchronous image call: an id for it and the images, carried inline to `fetch`.
    async fn generate_images(
        &self,
        call: &ProviderCall<'_>,
    ) -> Result<(String, Vec<UpstreamOutput>), ProviderError> {
        let model = call.upstream_model;
        if kind(model) == Kind::Imagen {
            let path = format!("/v1beta/models/{model}:predict");
            let body = imagen_request(call.input);
            let answer = self
                .upstream
                .json(self.authorized(Method::POST, &path).json(&body))
                .await?;
            // `:predict` answers carry no id of their own.
            return Ok((format!("imagen-{}", call.job_id), imagen_outputs(&answer)?));
        }
        let images = self
            .input_images(
                call.input["image"]
                    .as_str()
                    .into_iter()
                    .chain(reference_urls(call.input)),
            )
            .await?;
        let path = format!("/v1beta/models/{model}:generateContent");
        let body = gemini_request(call.input, images);
        let answer = self
            .upstream
            .json(self.authorized(Method::POST, &path).json(&body))
            .await?;
        let outputs = gemini_outputs(&answer)?;
        let upstream_id = answer["responseId"]
            .as_str()
            .map_or_else(|| format!("gemini-{}", call.job_id), str::to_owned);
        Ok((upstream_id, outputs))
    }

    async fn input_images<'a>(
        &self,
        urls: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<Blob>, ProviderError> {
        let mut images = Vec::new();
        for url in urls {
            images.push(self.input_image(url).await?);
        }
        Ok(images)
    }

    /// Downloads an input image from the job's URL. A URL that cannot be read is the
    /// input's fault: retrying or another provider would not read it either.
    async fn input_image(&self, url: &str) -> Result<Blob, ProviderError> {
        let unusable = |why: String| {
            ProviderError::new(
                ErrorClass::InvalidInput,
                "input_image_unavailable",
                format!("the input image {url} could not be used: {why}"),
            )
        };
        let checked =
            egress::check_url(url, &AllowList::default()).map_err(|e| unusable(e.to_string()))?;
        let response = self
            .image_client
            .get(checked)
            .send()
            .await
            .map_err(|e| unusable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unusable(format!("it answered {}", response.status())));
        }
        let mime_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase())
            .unwrap_or_default();
        if !mime_type.starts_with("image/") {
            return Err(unusable(format!("it is {mime_type:?}, not an image")));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_INPUT_IMAGE_BYTES as u64)
        {
            return Err(unusable("it is larger than 15 MB".to_owned()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unusable(e.to_string()))?;
        if bytes.is_empty() || bytes.len() > MAX_INPUT_IMAGE_BYTES {
            return Err(unusable("it is empty or larger than 15 MB".to_owned()));
        }
        Ok(Blob {
            mime_type,
            base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
        })
    }
}

fn same_origin(url: &url::Url, base: &str) -> bool {
    url::Url::parse(base).is_ok_and(|base| {
        base.scheme() == url.scheme()
            && base.host_str() == url.host_str()
            && base.port_or_known_default() == url.port_or_known_default()
    })
}

fn reference_urls(input: &Value) -> impl Iterator<Item = &str> {
    input["reference_images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Our input in Veo's words: the first frame as `image`, reference images as assets.
fn veo_request(input: &Value, first_frame: Option<Blob>, references: Vec<Blob>) -> Value {
    let mut instance = Map::new();
    instance.insert("prompt".into(), input["prompt"].clone());
    if let Some(image) = first_frame {
        instance.insert(
            "image".into(),
            json!({"bytesBase64Encoded": image.base64, "mimeType": image.mime_type}),
        );
    }
    if !references.is_empty() {
        let assets: Vec<Value> = references
            .into_iter()
            .map(|image| {
                json!({"image": {"bytesBase64Encoded": image.base64,
                    "mimeType": image.mime_type}, "referenceType": "asset"})
            })
            .collect();
        instance.insert("referenceImages".into(), Value::Array(assets));
    }
    let mut parameters = Map::new();
    if let Some(ratio) = input.get("aspect_ratio").filter(|v| !v.is_null()) {
        parameters.insert("aspectRatio".into(), ratio.clone());
    }
    if let Some(seconds) = input.get("duration").filter(|v| !v.is_null()) {
        parameters.insert("durationSeconds".into(), seconds.clone());
    }
    if let Some(resolution) = input.get("resolution").filter(|v| !v.is_null()) {
        parameters.insert("resolution".into(), resolution.clone());
    }
    json!({"instances": [instance], "parameters": parameters})
}

/// The one place a Veo operation is read: `None` while it runs, the videos once done.
fn operation_state(operation: &Value) -> Result<Option<Vec<UpstreamOutput>>, ProviderError> {
    if operation["done"].as_bool() != Some(true) {
        return Ok(None);
    }
    if let Some(error) = operation.get("error").filter(|e| !e.is_null()) {
        let words = format!(
            "google: the operation failed: {}: {}",
            error["status"]
                .as_str()
                .or_else(|| error["code"].as_i64().map(status_name))
                .unwrap_or("UNKNOWN"),
            error["message"].as_str().unwrap_or("no detail")
        );
        // google.rpc.Code: INVALID_ARGUMENT, FAILED_PRECONDITION and OUT_OF_RANGE say the
        // request was wrong; the rest (INTERNAL, UNAVAILABLE, …) may pass.
        return Err(match error["code"].as_i64() {
            Some(3 | 9 | 11) => {
                ProviderError::new(ErrorClass::InvalidInput, "upstream_rejected", words)
            }
            _ => ProviderError::new(ErrorClass::Rerun, "upstream_error", words),
        });
    }
    let result = &operation["response"]["generateVideoResponse"];
    let outputs: Vec<UpstreamOutput> = result["generatedSamples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|sample| sample.pointer("/video/uri").and_then(Value::as_str))
        .enumerate()
        .map(|(i, uri)| UpstreamOutput {
            index: i as u32,
            locator: uri.to_owned(),
        })
        .collect();
    if !outputs.is_empty() {
        return Ok(Some(outputs));
    }
    let filtered = result["raiMediaFilteredReasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>();
    if !filtered.is_empty() || result["raiMediaFilteredCount"].as_u64() > Some(0) {
        return Err(ProviderError::new(
            ErrorClass::Permanent,
            "upstream_moderated",
            format!(
                "google: safety filters removed the video: {}",
                filtered.join("; ")
            ),
        ));
    }
    Err(ProviderError::new(
        ErrorClass::Retryable,
        "upstream_error",
        "google: the operation finished without a video",
    ))
}

fn status_name(code: i64) -> &'static str {
    match code {
        3 => "INVALID_ARGUMENT",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        11 => "OUT_OF_RANGE",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// Our input in Imagen's words; filtered images come back with their reason.
fn imagen_request(input: &Value) -> Value {
    let mut parameters = Map::new();
    parameters.insert(
        "sampleCount".into(),
        json!(input["n"].as_u64().unwrap_or(1)),
    );
    if let Some(ratio) = input.get("aspect_ratio").filter(|v| !v.is_null()) {
        parameters.insert("aspectRatio".into(), ratio.clone());
    }
    parameters.insert("includeRaiReason".into(), json!(true));
    json!({"instances": [{"prompt": input["prompt"]}], "parameters": parameters})
}

fn imagen_outputs(answer: &Value) -> Result<Vec<UpstreamOutput>, ProviderError> {
    let predictions = answer["predictions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let outputs: Vec<UpstreamOutput> = predictions
        .iter()
        .filter_map(|p| {
            let data = p["bytesBase64Encoded"].as_str()?;
            let mime_type = p["mimeType"].as_str().unwrap_or("image/png");
            Some(inline_locator(mime_type, data))
        })
        .enumerate()
        .map(|(i, locator)| UpstreamOutput {
            index: i as u32,
            locator,
        })
        .collect();
    if !outputs.is_empty() {
        return Ok(outputs);
    }
    // Imagen leaves filtered images out of its answer, keeping at most their reason.
    let reasons = predictions
        .iter()
        .filter_map(|p| p["raiFilteredReason"].as_str())
        .collect::<Vec<_>>();
    Err(ProviderError::new(
        ErrorClass::Permanent,
        "upstream_moderated",
        format!(
            "google: safety filters removed every image{}",
            if reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", reasons.join("; "))
            }
        ),
    ))
}

/// Our input in `generateContent` words: the prompt and input images as parts, an image
/// as the only answer, in the requested aspect ratio.
fn gemini_request(input: &Value, images: Vec<Blob>) -> Value {
    let mut parts = vec![json!({"text": input["prompt"]})];
    parts.extend(
        images.into_iter().map(
            |image| json!({"inlineData": {"mimeType": image.mime_type, "data": image.base64}}),
        ),
    );
    let mut config = Map::new();
    config.insert("responseModalities".into(), json!(["IMAGE"]));
    if let Some(ratio) = input.get("aspect_ratio").filter(|v| !v.is_null()) {
        config.insert("imageConfig".into(), json!({"aspectRatio": ratio}));
    }
    json!({"contents": [{"role": "user", "parts": parts}], "generationConfig": config})
}

/// The one place a `generateContent` answer is read.
fn gemini_outputs(answer: &Value) -> Result<Vec<UpstreamOutput>, ProviderError> {
    let candidate = &answer["candidates"][0];
    let parts = candidate
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let outputs: Vec<UpstreamOutput> = parts
        .iter()
        .filter_map(|part| {
            let inline = part.get("inlineData").or_else(|| part.get("inline_data"))?;
            let data = inline["data"].as_str()?;
            let mime_type = inline["mimeType"]
                .as_str()
                .or_else(|| inline["mime_type"].as_str())
                .unwrap_or("image/png");
            Some(inline_locator(mime_type, data))
        })
        .enumerate()
        .map(|(i, locator)| UpstreamOutput {
            index: i as u32,
            locator,
        })
        .collect();
    if !outputs.is_empty() {
        return Ok(outputs);
    }
    let blocked = answer
        .pointer("/promptFeedback/blockReason")
        .and_then(Value::as_str);
    let finish = candidate["finishReason"].as_str().unwrap_or_default();
    let moderated = |reason: &str| {
        ["SAFETY", "PROHIBITED", "BLOCKLIST", "SPII", "RECITATION"]
            .iter()
            .any(|word| reason.contains(word))
    };
    if let Some(reason) = blocked.or(Some(finish).filter(|f| moderated(f))) {
        return Err(ProviderError::new(
            ErrorClass::Permanent,
            "upstream_moderated",
            format!("google: the request was blocked: {reason}"),
        ));
    }
    // The model answered in words only (or ran out of room): another try may draw.
    let said = parts
        .iter()
        .filter_map(|part| part["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    Err(ProviderError::new(
        ErrorClass::Retryable,
        "upstream_error",
        format!("google: no image in the answer (finishReason {finish:?}): {said}"),
    ))
}

/// Errors are google.rpc.Status with typed `details`. A key Google refuses is a 400 with
/// an ErrorInfo reason `API_KEY_INVALID` (or another `API_KEY_*`): about our key, not the
/// input. A 429 gives its wait as RetryInfo's `retryDelay` ("17s"), not as `Retry-After`.
fn read_error(body: &Value) -> Option<(ErrorClass, &'static str)> {
    let details = body.pointer("/error/details")?.as_array()?;
    details.iter().find_map(|detail| {
        let kind = detail["@type"].as_str()?;
        if kind.ends_with("google.rpc.ErrorInfo") {
            let reason = detail["reason"].as_str()?;
            return reason
                .starts_with("API_KEY_")
                .then_some((ErrorClass::Unauthorized, "upstream_unauthorized"));
        }
        if kind.ends_with("google.rpc.RetryInfo") {
            let delay = detail["retryDelay"].as_str()?.strip_suffix('s')?;
            let secs = delay
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)?;
            let retry_after = std::time::Duration::from_secs_f64(secs);
            return Some((
                ErrorClass::RateLimited { retry_after },
                "upstream_rate_limited",
            ));
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn blob(data: &str) -> Blob {
        Blob {
            mime_type: "image/png".into(),
            base64: data.into(),
        }
    }

    #[test]
    fn models_pick_their_api() {
        assert_eq!(kind("veo-3.1-generate-preview"), Kind::Veo);
        assert_eq!(kind("imagen-4.0-generate-001"), Kind::Imagen);
        assert_eq!(kind("gemini-2.5-flash-image"), Kind::Gemini);
    }

    #[test]
    fn input_maps_to_veo_fields() {
        let input = json!({"prompt": "p", "duration": 6, "resolution": "1080p",
            "aspect_ratio": "9:16", "seed": 4, "generate_audio": false});
        assert_eq!(
            veo_request(&input, None, Vec::new()),
            json!({"instances": [{"prompt": "p"}], "parameters": {"aspectRatio": "9:16",
                "durationSeconds": 6, "resolution": "1080p"}})
        );
        let body = veo_request(
            &json!({"prompt": "p"}),
            Some(blob("AAA")),
            vec![blob("BBB")],
        );
        assert_eq!(
            body["instances"][0],
            json!({"prompt": "p",
                "image": {"bytesBase64Encoded": "AAA", "mimeType": "image/png"},
                "referenceImages": [{"image": {"bytesBase64Encoded": "BBB",
                    "mimeType": "image/png"}, "referenceType": "asset"}]})
        );
    }

    #[test]
    fn operations_map_to_outcomes() {
        assert_eq!(
            operation_state(&json!({"name": "operations/x"})).unwrap(),
            None
        );
        assert_eq!(
            operation_state(&json!({"name": "operations/x", "done": false})).unwrap(),
            None
        );
        let done = json!({"name": "operations/x", "done": true, "response": {
            "generateVideoResponse": {"generatedSamples": [{"video": {"uri": "https://g/v"}}]}}});
        assert_eq!(
            operation_state(&done).unwrap(),
            Some(vec![UpstreamOutput {
                index: 0,
                locator: "https://g/v".into()
            }])
        );
        let filtered = json!({"done": true, "response": {"generateVideoResponse": {
            "raiMediaFilteredCount": 1, "raiMediaFilteredReasons": ["celebrity"]}}});
        let e = operation_state(&filtered).unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Permanent, "upstream_moderated")
        );
        assert!(e.message.contains("celebrity"));
        let invalid = json!({"done": true, "error": {"code": 3, "message": "bad"}});
        let e = operation_state(&invalid).unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::InvalidInput, "upstream_rejected")
        );
        assert!(e.message.contains("INVALID_ARGUMENT: bad"));
        let internal = json!({"done": true, "error": {"code": 13, "message": "oops"}});
        assert_eq!(
            operation_state(&internal).unwrap_err().class,
            ErrorClass::Rerun
        );
        let empty = json!({"done": true, "response": {"generateVideoResponse": {}}});
        assert_eq!(operation_state(&empty).unwrap_err().code, "upstream_error");
    }

    #[test]
    fn input_maps_to_imagen_fields() {
        assert_eq!(
            imagen_request(&json!({"prompt": "p", "aspect_ratio": "4:3", "n": 2, "seed": 1})),
            json!({"instances": [{"prompt": "p"}], "parameters": {"sampleCount": 2,
                "aspectRatio": "4:3", "includeRaiReason": true}})
        );
    }

    #[test]
    fn imagen_answers_map_to_outcomes() {
        let answer = json!({"predictions": [
            {"bytesBase64Encoded": "iVBORw0KGgo=", "mimeType": "image/png"},
            {"raiFilteredReason": "filtered"}]});
        let outputs = imagen_outputs(&answer).unwrap();
        assert_eq!(outputs.len(), 1);
        assert_eq!(
            inline_media(Google::NAME, &outputs[0].locator)
                .unwrap()
                .content_type,
            "image/png"
        );
        let e = imagen_outputs(&json!({"predictions": [{"raiFilteredReason": "r1"}]})).unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Permanent, "upstream_moderated")
        );
        assert!(e.message.ends_with(": r1"));
        assert_eq!(
            imagen_outputs(&json!({})).unwrap_err().code,
            "upstream_moderated"
        );
    }

    #[test]
    fn input_maps_to_generate_content_fields() {
        assert_eq!(
            gemini_request(
                &json!({"prompt": "p", "aspect_ratio": "3:2"}),
                vec![blob("AAA")]
            ),
            json!({"contents": [{"role": "user", "parts": [{"text": "p"},
                {"inlineData": {"mimeType": "image/png", "data": "AAA"}}]}],
                "generationConfig": {"responseModalities": ["IMAGE"],
                    "imageConfig": {"aspectRatio": "3:2"}}})
        );
    }

    #[test]
    fn generate_content_answers_map_to_outcomes() {
        let answer = json!({"candidates": [{"content": {"parts": [{"text": "here"},
            {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4A=="}}]},
            "finishReason": "STOP"}]});
        let outputs = gemini_outputs(&answer).unwrap();
        assert_eq!(outputs.len(), 1);
        assert_eq!(
            inline_media(Google::NAME, &outputs[0].locator)
                .unwrap()
                .content_type,
            "image/jpeg"
        );
        let code = |answer: Value| {
            let e = gemini_outputs(&answer).unwrap_err();
            (e.class, e.code)
        };
        assert_eq!(
            code(json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})),
            (ErrorClass::Permanent, "upstream_moderated".into())
        );
        assert_eq!(
            code(json!({"candidates": [{"finishReason": "IMAGE_SAFETY"}]})),
            (ErrorClass::Permanent, "upstream_moderated".into())
        );
        assert_eq!(
            code(
                json!({"candidates": [{"content": {"parts": [{"text": "no"}]},
                "finishReason": "STOP"}]})
            ),
            (ErrorClass::Retryable, "upstream_error".into())
        );
    }

    #[test]
    fn the_key_goes_only_to_the_api_host() {
        let base = "https://generativelanguage.googleapis.com";
        let own = url::Url::parse(&format!("{base}/v1beta/files/a:download?alt=media")).unwrap();
        assert!(same_origin(&own, base));
        let elsewhere = url::Url::parse("https://storage.googleapis.com/x.mp4").unwrap();
        assert!(!same_origin(&elsewhere, base));
        let other_port =
            url::Url::parse("https://generativelanguage.googleapis.com:8443/f").unwrap();
        assert!(!same_origin(&other_port, base));
    }

    #[tokio::test]
    async fn input_images_on_private_networks_are_refused() {
        let settings = ProviderSettings {
            base_url: "https://generativelanguage.googleapis.com".into(),
            api_key: Some("k".into()),
            enabled: true,
            timeout: Duration::from_secs(2),
            max_concurrency: 1,
            poll_interval: Duration::from_secs(1),
            callback_poll_interval: Duration::from_secs(30),
            webhook_secret: None,
        };
        let google = Google::from_settings(&settings).unwrap();
        let e = google
            .input_image("http://127.0.0.1:1/a.png")
            .await
            .unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::InvalidInput, "input_image_unavailable")
        );
    }

    #[test]
    fn error_details_sort_errors() {
        let read = |body: Value| read_error(&body);
        let bad_key = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}});
        assert_eq!(
            read(bad_key),
            Some((ErrorClass::Unauthorized, "upstream_unauthorized"))
        );
        let quota = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}});
        assert_eq!(
            read(quota),
            Some((
                ErrorClass::RateLimited {
                    retry_after: Duration::from_secs(17)
                },
                "upstream_rate_limited"
            ))
        );
        let invalid = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "durationSeconds out of bound"}});
        assert_eq!(read(invalid), None, "the status decides");
        assert_eq!(read(Value::Null), None);
    }
}
