//! Veo through the Gemini API: `POST /v1beta/models/{model}:predictLongRunning`
//! {instances: [{prompt, image?, referenceImages?}], parameters: {aspectRatio,
//! durationSeconds, resolution}} answers an operation `{name}`; `GET /v1beta/{name}` until
//! `done: true`, then either `error` (a Status), or
//! `response.generateVideoResponse.generatedSamples[].video.uri`, or, when safety filters
//! removed every video, `raiMediaFilteredReasons` and no samples. The uri is a file
//! download that needs the key: it goes only to the API's own host, and as the `key` query
//! parameter so that the redirect to storage does not carry it (reqwest would forward a
//! custom header). The Gemini API takes neither `seed` nor `generateAudio` (they are
//! Vertex AI's): Veo 3 always makes sound, and a seed is not sent.

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{Blob, Google};
use crate::ErrorCode;
use crate::jobs::input::JobInput;
use crate::providers::http::put;
use crate::providers::{
    ErrorClass, Media, NumberedOutputs, Polled, ProviderCall, ProviderError, Submitted,
    UpstreamOutput,
};

impl Google {
    pub(super) async fn submit_veo(
        &self,
        call: &ProviderCall<'_>,
    ) -> Result<Submitted, ProviderError> {
        let first_frame = match &call.input.image {
            Some(url) => Some(self.input_image(url).await?),
            None => None,
        };
        let references = self.input_images(call.input.references()).await?;
        let body = veo_request(call.input, first_frame, references);
        let path = format!("/v1beta/models/{}:predictLongRunning", call.upstream_model);
        let operation = self
            .upstream
            .json(self.upstream.authorized(Method::POST, &path).json(&body))
            .await?;
        let name = operation["name"].as_str().ok_or_else(|| {
            ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamError,
                "google: the operation has no name",
            )
        })?;
        Ok(Submitted::Pending {
            upstream_id: name.to_owned(),
            poll_after: self.upstream.poll_after(call),
        })
    }

    pub(super) async fn poll_veo(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        let request = self
            .upstream
            .authorized(Method::GET, &format!("/v1beta/{upstream_id}"));
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

    pub(super) async fn fetch_veo(&self, output: &UpstreamOutput) -> Result<Media, ProviderError> {
        let url = self.download_url(&output.locator)?;
        let request = self.upstream.request(Method::GET, url.as_str());
        self.upstream.download(request, "video/mp4").await
    }

    /// Where to download a video: with the key if the link is on the API's own host,
    /// as it is; without it anywhere else.
    fn download_url(&self, uri: &str) -> Result<url::Url, ProviderError> {
        let mut url = url::Url::parse(uri).map_err(|e| {
            ProviderError::new(
                ErrorClass::Retryable,
                ErrorCode::UpstreamError,
                format!("google: the video link is not a URL: {e}"),
            )
        })?;
        if same_origin(&url, &self.upstream.base_url) {
            url.query_pairs_mut()
                .append_pair("key", self.upstream.key());
        }
        Ok(url)
    }
}

fn same_origin(url: &url::Url, base: &str) -> bool {
    url::Url::parse(base).is_ok_and(|base| {
        base.scheme() == url.scheme()
            && base.host_str() == url.host_str()
            && base.port_or_known_default() == url.port_or_known_default()
    })
}

/// Our input in Veo's words: the first frame as `image`, reference images as assets.
fn veo_request(input: &JobInput, first_frame: Option<Blob>, references: Vec<Blob>) -> Value {
    let mut instance = Map::new();
    instance.insert("prompt".into(), json!(input.prompt));
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
    put(&mut parameters, "aspectRatio", input.aspect_ratio.as_ref());
    put(&mut parameters, "durationSeconds", input.duration);
    put(&mut parameters, "resolution", input.resolution.as_ref());
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
                ProviderError::new(ErrorClass::InvalidInput, ErrorCode::UpstreamRejected, words)
            }
            _ => ProviderError::new(ErrorClass::Rerun, ErrorCode::UpstreamError, words),
        });
    }
    let result = &operation["response"]["generateVideoResponse"];
    let outputs: Vec<UpstreamOutput> = result["generatedSamples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|sample| sample.pointer("/video/uri").and_then(Value::as_str))
        .numbered_outputs();
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
            ErrorCode::UpstreamModerated,
            format!(
                "google: safety filters removed the video: {}",
                filtered.join("; ")
            ),
        ));
    }
    Err(ProviderError::new(
        ErrorClass::Retryable,
        ErrorCode::UpstreamError,
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

#[cfg(test)]
mod tests {
    use super::super::blob;
    use super::*;
    use crate::jobs::input::typed;

    #[test]
    fn input_maps_to_veo_fields() {
        let input = typed(json!({"prompt": "p", "duration": 6, "resolution": "1080p",
            "aspect_ratio": "9:16", "seed": 4, "generate_audio": false}));
        assert_eq!(
            veo_request(&input, None, Vec::new()),
            json!({"instances": [{"prompt": "p"}], "parameters": {"aspectRatio": "9:16",
                "durationSeconds": 6, "resolution": "1080p"}})
        );
        let body = veo_request(
            &typed(json!({"prompt": "p"})),
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
            (e.class, e.code),
            (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
        );
        assert!(e.message.contains("celebrity"));
        let invalid = json!({"done": true, "error": {"code": 3, "message": "bad"}});
        let e = operation_state(&invalid).unwrap_err();
        assert_eq!(
            (e.class, e.code),
            (ErrorClass::InvalidInput, ErrorCode::UpstreamRejected)
        );
        assert!(e.message.contains("INVALID_ARGUMENT: bad"));
        let internal = json!({"done": true, "error": {"code": 13, "message": "oops"}});
        assert_eq!(
            operation_state(&internal).unwrap_err().class,
            ErrorClass::Rerun
        );
        let empty = json!({"done": true, "response": {"generateVideoResponse": {}}});
        assert_eq!(
            operation_state(&empty).unwrap_err().code,
            ErrorCode::UpstreamError
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
}
