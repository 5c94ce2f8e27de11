//! Imagen through the Gemini API: `POST /v1beta/models/{model}:predict` {instances:
//! [{prompt}], parameters: {sampleCount, aspectRatio}} answers at once with
//! `predictions[].bytesBase64Encoded` (no seed on this API either); images the safety
//! filters removed are left out, keeping at most their `raiFilteredReason`.

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::Google;
use crate::ErrorCode;
use crate::jobs::input::JobInput;
use crate::providers::http::inline_locator;
use crate::providers::http::put;
use crate::providers::{ErrorClass, NumberedOutputs, ProviderCall, ProviderError, UpstreamOutput};

impl Google {
    /// One `:predict` call: an id for it and the images, inline.
    pub(super) async fn generate_imagen(
        &self,
        call: &ProviderCall<'_>,
    ) -> Result<(String, Vec<UpstreamOutput>), ProviderError> {
        let model = call.upstream_model;
        let path = format!("/v1beta/models/{model}:predict");
        let body = imagen_request(call.input);
        let answer = self
            .upstream
            .json(self.upstream.authorized(Method::POST, &path).json(&body))
            .await?;
        // `:predict` answers carry no id of their own.
        Ok((format!("imagen-{}", call.job_id), imagen_outputs(&answer)?))
    }
}

/// Our input in Imagen's words; filtered images come back with their reason.
fn imagen_request(input: &JobInput) -> Value {
    let mut parameters = Map::new();
    parameters.insert("sampleCount".into(), json!(input.n.unwrap_or(1)));
    put(&mut parameters, "aspectRatio", input.aspect_ratio.as_ref());
    parameters.insert("includeRaiReason".into(), json!(true));
    json!({"instances": [{"prompt": input.prompt}], "parameters": parameters})
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
        .numbered_outputs();
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
        ErrorCode::UpstreamModerated,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::input::typed;
    use crate::providers::MediaProvider;
    use crate::providers::http::inline_media;

    #[test]
    fn input_maps_to_imagen_fields() {
        assert_eq!(
            imagen_request(&typed(
                json!({"prompt": "p", "aspect_ratio": "4:3", "n": 2, "seed": 1})
            )),
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
            (e.class, e.code),
            (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
        );
        assert!(e.message.ends_with(": r1"));
        assert_eq!(
            imagen_outputs(&json!({})).unwrap_err().code,
            ErrorCode::UpstreamModerated
        );
    }
}
