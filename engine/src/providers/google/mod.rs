//! Google's Gemini API, with the key in `x-goog-api-key`; errors are google.rpc.Status,
//! `{"error": {code, message, status}}`. One key reaches three media APIs, a file each: Veo
//! (`veo.rs`, long-running operations), Imagen (`imagen.rs`) and the Gemini image models
//! such as Nano Banana (`gemini.rs`), both of which answer at once with the images. The
//! same key, header and error reading serve Gemini's chat models (`chat::gemini`).
//!
//! The Gemini API takes input images as bytes, not links: they are downloaded first,
//! through the same guard that keeps webhooks off private networks.

mod gemini;
mod imagen;
mod veo;

use base64::Engine as _;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use super::http::{Auth, Upstream, inline_media};
use super::{
    ErrorClass, Media, MediaProvider, Polled, ProviderCall, ProviderError, ProviderSettings,
    Submitted, UpstreamOutput,
};
use crate::ErrorCode;
use crate::egress::{self, AllowList};
use crate::providers::SetupError;

/// The header the key goes in, for media and chat (`chat::gemini`) alike.
pub(crate) const KEY_HEADER: &str = "x-goog-api-key";

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

    fn from_settings(settings: &ProviderSettings) -> Result<Google, SetupError> {
        Ok(Google {
            upstream: Upstream::new(Google::NAME, settings)?
                .with_auth(Auth::Header(KEY_HEADER))
                .reading_errors(read_error),
            image_client: egress::delivery_client(AllowList::default(), settings.timeout)?,
        })
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        if kind(call.upstream_model) == Kind::Veo {
            return self.submit_veo(call).await;
        }
        let (upstream_id, outputs) = self.generate_images(call).await?;
        Ok(Submitted::Done {
            upstream_id,
            outputs,
        })
    }

    async fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        if kind(call.upstream_model) == Kind::Veo {
            return self.poll_veo(call, upstream_id).await;
        }
        // Nothing upstream keeps a synchronous answer. A job polled here had its images
        // in hand once but never stored them (the process stopped before the copy, or
        // the copy failed): the only way to a result is to ask again, and pay again.
        tracing::warn!(
            provider = Google::NAME,
            job_id = call.job_id,
            "images were never stored; generating them again"
        );
        let (_, outputs) = self.generate_images(call).await?;
        Ok(Polled::Done { outputs })
    }

    async fn fetch(
        &self,
        call: &ProviderCall<'_>,
        output: &UpstreamOutput,
    ) -> Result<Media, ProviderError> {
        if kind(call.upstream_model) == Kind::Veo {
            return self.fetch_veo(output).await;
        }
        inline_media(Google::NAME, &output.locator)
    }
}

impl Google {
    /// One synchronous image call: an id for it and the images, carried inline to `fetch`.
    async fn generate_images(
        &self,
        call: &ProviderCall<'_>,
    ) -> Result<(String, Vec<UpstreamOutput>), ProviderError> {
        match kind(call.upstream_model) {
            Kind::Imagen => self.generate_imagen(call).await,
            Kind::Gemini | Kind::Veo => self.generate_gemini(call).await,
        }
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
                ErrorCode::InputImageUnavailable,
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

/// Errors are google.rpc.Status with typed `details`. A key Google refuses is a 400 with
/// an ErrorInfo reason `API_KEY_INVALID` (or another `API_KEY_*`): about our key, not the
/// input. A 429 gives its wait as RetryInfo's `retryDelay` ("17s"), not as `Retry-After`.
pub(crate) fn read_error(body: &Value) -> Option<(ErrorClass, ErrorCode)> {
    let details = body.pointer("/error/details")?.as_array()?;
    details.iter().find_map(|detail| {
        let kind = detail["@type"].as_str()?;
        if kind.ends_with("google.rpc.ErrorInfo") {
            let reason = detail["reason"].as_str()?;
            return reason
                .starts_with("API_KEY_")
                .then_some((ErrorClass::Unauthorized, ErrorCode::UpstreamUnauthorized));
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
                ErrorCode::UpstreamRateLimited,
            ));
        }
        None
    })
}

#[cfg(test)]
fn blob(data: &str) -> Blob {
    Blob {
        mime_type: "image/png".into(),
        base64: data.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    #[test]
    fn models_pick_their_api() {
        assert_eq!(kind("veo-3.1-generate-preview"), Kind::Veo);
        assert_eq!(kind("imagen-4.0-generate-001"), Kind::Imagen);
        assert_eq!(kind("gemini-2.5-flash-image"), Kind::Gemini);
    }

    #[tokio::test]
    async fn input_images_on_private_networks_are_refused() {
        let settings = ProviderSettings::for_tests("https://generativelanguage.googleapis.com");
        let google = Google::from_settings(&settings).unwrap();
        let e = google
            .input_image("http://127.0.0.1:1/a.png")
            .await
            .unwrap_err();
        assert_eq!(
            (e.class, e.code),
            (ErrorClass::InvalidInput, ErrorCode::InputImageUnavailable)
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
            Some((ErrorClass::Unauthorized, ErrorCode::UpstreamUnauthorized))
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
                ErrorCode::UpstreamRateLimited
            ))
        );
        let invalid = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "durationSeconds out of bound"}});
        assert_eq!(read(invalid), None, "the status decides");
        assert_eq!(read(Value::Null), None);
    }
}
