//! Black Forest Labs (FLUX): `POST /v1/{model}` with the `x-key` header answers
//! `{id, polling_url}`; `GET /v1/get_result?id=` reports `Pending` until `Ready` with
//! `result.sample`, a signed link that expires after about ten minutes (so the media is
//! copied at once). Moderation ends the job; there is no cancel.
//!
//! Callbacks: `webhook_url` in the submission is POSTed `{id, status, result}` when the
//! task ends. BFL documents no signature scheme for them, so we rely on the per-job token
//! in the URL (a callback only makes us look at the task sooner).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::http::{Auth, Upstream, put, still_running};
use super::{
    ErrorClass, MediaProvider, Polled, ProviderCall, ProviderError, ProviderSettings, Submitted,
    UpstreamOutput,
};
use crate::ErrorCode;
use crate::catalog::ASPECT_RATIOS;
use crate::jobs::input::JobInput;
use crate::providers::SetupError;

#[derive(Debug, Clone)]
pub struct Bfl {
    upstream: Upstream,
}

impl MediaProvider for Bfl {
    const NAME: &'static str = "bfl";
    const DEFAULT_BASE_URL: &'static str = "https://api.bfl.ai";
    const API_KEY_ENV: &'static str = "BFL_API_KEY";
    /// The sample link is signed: the default fetch downloads it without the key.
    const LINK_MEDIA_TYPE: Option<&'static str> = Some("image/jpeg");
    /// The task a callback is about.
    const CALLBACK_ID: Option<&'static str> = Some("/id");

    fn from_settings(settings: &ProviderSettings) -> Result<Bfl, SetupError> {
        Ok(Bfl {
            upstream: Upstream::new(Self::NAME, settings)?.with_auth(Auth::Header("x-key")),
        })
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        let path = format!("/v1/{}", call.upstream_model);
        let request = self
            .upstream
            .authorized(Method::POST, &path)
            .json(&request_body(call.input, call.callback_url));
        let answer = self.upstream.json(request).await?;
        let id = self.upstream.answer_id(&answer, "id")?;
        Ok(Submitted::Pending {
            upstream_id: id.to_owned(),
            poll_after: self.poll_after(call),
        })
    }

    async fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        let request = self
            .upstream
            .authorized(Method::GET, "/v1/get_result")
            .query(&[("id", upstream_id)]);
        let answer = self.upstream.json(request).await?;
        let status = answer["status"].as_str().unwrap_or_default();
        match status {
            "Ready" => {
                let sample = answer
                    .pointer("/result/sample")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ProviderError::new(
                            ErrorClass::Retryable,
                            ErrorCode::UpstreamError,
                            "bfl: Ready without result.sample",
                        )
                    })?;
                Ok(Polled::Done {
                    outputs: vec![UpstreamOutput {
                        index: 0,
                        locator: sample.to_owned(),
                    }],
                })
            }
            "Request Moderated" | "Content Moderated" => Err(ProviderError::new(
                ErrorClass::Permanent,
                ErrorCode::UpstreamModerated,
                format!("bfl: {status}{}", details(&answer)),
            )),
            "Error" => Err(ProviderError::new(
                ErrorClass::Rerun,
                ErrorCode::UpstreamError,
                format!("bfl: generation failed{}", details(&answer)),
            )),
            "Task not found" => Err(ProviderError::new(
                ErrorClass::Rerun,
                ErrorCode::UpstreamTaskLost,
                format!("bfl: task {upstream_id} not found"),
            )),
            other => {
                still_running(Self::NAME, other, &["Pending"]);
                let progress = answer["progress"]
                    .as_f64()
                    .map(|p| if p <= 1.0 { p * 100.0 } else { p })
                    .map(|p| p.clamp(0.0, 99.0) as u8);
                Ok(Polled::Pending {
                    progress,
                    poll_after: self.poll_after(call),
                })
            }
        }
    }
}

impl Bfl {
    /// BFL's images take seconds: look again within a second, unless BFL will call us back.
    fn poll_after(&self, call: &ProviderCall<'_>) -> Duration {
        let after = self.upstream.poll_after(call);
        match call.callback_url {
            Some(_) => after,
            None => after.min(Duration::from_secs(1)),
        }
    }
}

/// Our input in BFL's words: size as width/height or aspect ratio, reference images as
/// `input_image`, `input_image_2`, ….
fn request_body(input: &JobInput, callback_url: Option<&str>) -> Value {
    let mut body = Map::new();
    body.insert("prompt".into(), json!(input.prompt));
    put(&mut body, "webhook_url", callback_url);
    put(&mut body, "seed", input.seed);
    if let Some(size) = input.size {
        body.insert("width".into(), json!(size.width));
        body.insert("height".into(), json!(size.height));
    } else if let Some(ratio) = input
        .aspect_ratio
        .as_deref()
        .filter(|a| ASPECT_RATIOS.iter().any(|r| r.0 == *a))
    {
        body.insert("aspect_ratio".into(), json!(ratio));
    }
    for (i, url) in input.images().enumerate() {
        let key = if i == 0 {
            "input_image".to_owned()
        } else {
            format!("input_image_{}", i + 1)
        };
        body.insert(key, json!(url));
    }
    Value::Object(body)
}

fn details(answer: &Value) -> String {
    match answer.get("details").filter(|d| !d.is_null()) {
        Some(d) => format!(": {d}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::input::typed;

    #[test]
    fn input_maps_to_bfl_fields() {
        let body = request_body(
            &typed(json!({"prompt": "p", "size": "512x768", "seed": 3,
            "reference_images": ["https://a/1.png", "https://a/2.png"]})),
            Some("https://gw/cb"),
        );
        assert_eq!(
            body,
            json!({"prompt": "p", "seed": 3, "width": 512, "height": 768,
                "input_image": "https://a/1.png", "input_image_2": "https://a/2.png",
                "webhook_url": "https://gw/cb"})
        );
        let body = request_body(&typed(json!({"prompt": "p", "aspect_ratio": "16:9"})), None);
        assert_eq!(body, json!({"prompt": "p", "aspect_ratio": "16:9"}));
    }
}
