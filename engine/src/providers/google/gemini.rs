//! Nano Banana and the other Gemini image models: `POST
//! /v1beta/models/{model}:generateContent` with the prompt and input images as parts
//! answers at once with the image as `inlineData` in the candidate's parts; a refusal is a
//! `promptFeedback.blockReason` or a `finishReason` such as `IMAGE_SAFETY`.

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{Blob, Google};
use crate::ErrorCode;
use crate::jobs::input::JobInput;
use crate::providers::http::inline_locator;
use crate::providers::http::put;
use crate::providers::{ErrorClass, NumberedOutputs, ProviderCall, ProviderError, UpstreamOutput};

impl Google {
    /// One `:generateContent` call: the answer's id and the images, inline.
    pub(super) async fn generate_gemini(
        &self,
        call: &ProviderCall<'_>,
    ) -> Result<(String, Vec<UpstreamOutput>), ProviderError> {
        let model = call.upstream_model;
        let images = self.input_images(call.input.images()).await?;
        let path = format!("/v1beta/models/{model}:generateContent");
        let body = gemini_request(call.input, images);
        let answer = self
            .upstream
            .json(self.upstream.authorized(Method::POST, &path).json(&body))
            .await?;
        let outputs = gemini_outputs(&answer)?;
        let upstream_id = answer["responseId"]
            .as_str()
            .map_or_else(|| format!("gemini-{}", call.job_id), str::to_owned);
        Ok((upstream_id, outputs))
    }
}

/// Our input in `generateContent` words: the prompt and input images as parts, an image
/// as the only answer, in the requested aspect ratio.
fn gemini_request(input: &JobInput, images: Vec<Blob>) -> Value {
    let mut parts = vec![json!({"text": input.prompt})];
    parts.extend(
        images.into_iter().map(
            |image| json!({"inlineData": {"mimeType": image.mime_type, "data": image.base64}}),
        ),
    );
    let mut config = Map::new();
    config.insert("responseModalities".into(), json!(["IMAGE"]));
    put(
        &mut config,
        "imageConfig",
        input
            .aspect_ratio
            .as_ref()
            .map(|ratio| json!({"aspectRatio": ratio})),
    );
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
        .numbered_outputs();
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
            ErrorCode::UpstreamModerated,
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
        ErrorCode::UpstreamError,
        format!("google: no image in the answer (finishReason {finish:?}): {said}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::blob;
    use super::*;
    use crate::jobs::input::typed;
    use crate::providers::MediaProvider;
    use crate::providers::http::inline_media;

    #[test]
    fn input_maps_to_generate_content_fields() {
        assert_eq!(
            gemini_request(
                &typed(json!({"prompt": "p", "aspect_ratio": "3:2"})),
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
            (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
        );
        assert_eq!(
            code(json!({"candidates": [{"finishReason": "IMAGE_SAFETY"}]})),
            (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
        );
        assert_eq!(
            code(
                json!({"candidates": [{"content": {"parts": [{"text": "no"}]},
                "finishReason": "STOP"}]})
            ),
            (ErrorClass::Retryable, ErrorCode::UpstreamError)
        );
    }
}
