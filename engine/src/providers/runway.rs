//! Runway: `POST /v1/image_to_video` (when the job gives an image) or
//! `POST /v1/text_to_video`, with `Authorization: Bearer` and the `X-Runway-Version` the
//! requests are written for, answers `{id}`; `GET /v1/tasks/{id}` reports `PENDING`,
//! `THROTTLED` (queued behind the account's concurrency limit) and `RUNNING` (with
//! `progress`, 0–1) until `SUCCEEDED` with `output[]`, signed links that expire within a
//! day or two (so the media is copied at once), or `FAILED` with a `failureCode` such as
//! `SAFETY.INPUT.TEXT`, or `CANCELLED`. `DELETE /v1/tasks/{id}` cancels a task.

use reqwest::{Method, RequestBuilder};
use serde_json::{Map, Value, json};

use super::http::{Upstream, still_running};
use super::{
    ErrorClass, MediaProvider, Polled, ProviderCall, ProviderError, ProviderSettings, Submitted,
    UpstreamOutput,
};
use crate::ErrorCode;
use crate::jobs::input::JobInput;
use crate::providers::{NumberedOutputs, SetupError};

/// The API version these requests and answers follow.
const API_VERSION: &str = "2024-11-06";

#[derive(Debug, Clone)]
pub struct Runway {
    upstream: Upstream,
}

impl MediaProvider for Runway {
    const NAME: &'static str = "runway";
    const DEFAULT_BASE_URL: &'static str = "https://api.dev.runwayml.com";
    const API_KEY_ENV: &'static str = "RUNWAYML_API_SECRET";
    /// The output links are signed: the default fetch downloads them without the key.
    const LINK_MEDIA_TYPE: Option<&'static str> = Some("video/mp4");

    fn from_settings(settings: &ProviderSettings) -> Result<Runway, SetupError> {
        Ok(Runway {
            upstream: Upstream::new(Self::NAME, settings)?,
        })
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    async fn submit(&self, call: &ProviderCall<'_>) -> Result<Submitted, ProviderError> {
        let (path, body) = task_request(call.upstream_model, call.input);
        let answer = self
            .upstream
            .json(self.authorized(Method::POST, path).json(&body))
            .await?;
        let id = self.upstream.answer_id(&answer, "id")?;
        Ok(self.upstream.submitted(call, id, None))
    }

    async fn poll(
        &self,
        call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<Polled, ProviderError> {
        let request = self.authorized(Method::GET, &format!("/v1/tasks/{upstream_id}"));
        let task = self.upstream.json(request).await?;
        task_state(&task, upstream_id).map(|state| match state {
            TaskState::Pending { progress } => self.upstream.polled(call, None, progress),
            TaskState::Done { outputs } => Polled::Done { outputs },
        })
    }

    async fn cancel(
        &self,
        _call: &ProviderCall<'_>,
        upstream_id: &str,
    ) -> Result<(), ProviderError> {
        let request = self.authorized(Method::DELETE, &format!("/v1/tasks/{upstream_id}"));
        self.upstream.send(request).await.map(drop)
    }
}

impl Runway {
    fn authorized(&self, method: Method, path: &str) -> RequestBuilder {
        self.upstream
            .authorized(method, path)
            .header("X-Runway-Version", API_VERSION)
    }
}

enum TaskState {
    Pending { progress: Option<u8> },
    Done { outputs: Vec<UpstreamOutput> },
}

/// The one place Runway's status words and failure codes are read.
fn task_state(task: &Value, id: &str) -> Result<TaskState, ProviderError> {
    let status = task["status"].as_str().unwrap_or_default();
    match status {
        "SUCCEEDED" => {
            let outputs: Vec<UpstreamOutput> = task["output"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .numbered_outputs();
            if outputs.is_empty() {
                return Err(ProviderError::new(
                    ErrorClass::Retryable,
                    ErrorCode::UpstreamError,
                    format!("runway: task {id} succeeded without output"),
                ));
            }
            Ok(TaskState::Done { outputs })
        }
        "FAILED" => {
            let code = task["failureCode"].as_str().unwrap_or("unknown");
            let words = format!(
                "runway: task failed: {code}: {}",
                task["failure"].as_str().unwrap_or("no detail")
            );
            // Runway's codes say whose fault it is: moderation (`SAFETY.…`, also under
            // `INPUT_PREPROCESSING.`) and unusable inputs (`ASSET.…`) fail the same way
            // again; internal failures may not.
            let (class, our_code) = if code.contains("SAFETY") {
                (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
            } else if code.starts_with("ASSET.") {
                (ErrorClass::InvalidInput, ErrorCode::UpstreamRejected)
            } else {
                (ErrorClass::Rerun, ErrorCode::UpstreamError)
            };
            Err(ProviderError::new(class, our_code, words))
        }
        "CANCELLED" => Err(ProviderError::new(
            ErrorClass::Permanent,
            ErrorCode::UpstreamCancelled,
            format!("runway: task {id} was cancelled upstream"),
        )),
        other => {
            still_running(Runway::NAME, other, &["PENDING", "THROTTLED", "RUNNING"]);
            let progress = task["progress"]
                .as_f64()
                .map(|p| (p * 100.0).clamp(0.0, 99.0) as u8);
            Ok(TaskState::Pending { progress })
        }
    }
}

/// Our input in Runway's words: the endpoint (image to video when there is an image),
/// `promptText`, `promptImage`, `ratio` in pixels, `duration`, `seed`.
fn task_request(model: &str, input: &JobInput) -> (&'static str, Value) {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("promptText".into(), json!(input.prompt));
    if let Some(ratio) = input.aspect_ratio.as_deref().and_then(ratio) {
        body.insert("ratio".into(), json!(ratio));
    }
    if let Some(duration) = input.duration {
        body.insert("duration".into(), json!(duration));
    }
    if let Some(seed) = input.seed {
        body.insert("seed".into(), json!(seed));
    }
    match input.first_image() {
        Some(url) => {
            body.insert("promptImage".into(), json!(url));
            ("/v1/image_to_video", Value::Object(body))
        }
        None => ("/v1/text_to_video", Value::Object(body)),
    }
}

/// Runway's output sizes (720p class) for each aspect ratio.
fn ratio(aspect_ratio: &str) -> Option<&'static str> {
    match aspect_ratio {
        "16:9" => Some("1280:720"),
        "9:16" => Some("720:1280"),
        "4:3" => Some("1104:832"),
        "3:4" => Some("832:1104"),
        "1:1" => Some("960:960"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::input::typed;

    #[test]
    fn input_maps_to_runway_fields() {
        let (path, body) = task_request(
            "gen4.5",
            &typed(json!({"prompt": "p", "duration": 5, "aspect_ratio": "9:16", "seed": 3})),
        );
        assert_eq!(path, "/v1/text_to_video");
        assert_eq!(
            body,
            json!({"model": "gen4.5", "promptText": "p", "ratio": "720:1280",
                "duration": 5, "seed": 3})
        );
        let (path, body) = task_request(
            "gen4_turbo",
            &typed(json!({"prompt": "p", "image": "https://a/1.png", "aspect_ratio": "1:1"})),
        );
        assert_eq!(path, "/v1/image_to_video");
        assert_eq!(
            body,
            json!({"model": "gen4_turbo", "promptText": "p", "ratio": "960:960",
                "promptImage": "https://a/1.png"})
        );
    }

    fn pending_progress(task: Value) -> Option<u8> {
        match task_state(&task, "t").unwrap() {
            TaskState::Pending { progress } => progress,
            TaskState::Done { .. } => panic!("expected pending"),
        }
    }

    fn failure(task: Value) -> (ErrorClass, ErrorCode) {
        let Err(e) = task_state(&task, "t") else {
            panic!("expected a failure");
        };
        (e.class, e.code)
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(pending_progress(json!({"status": "PENDING"})), None);
        assert_eq!(pending_progress(json!({"status": "THROTTLED"})), None);
        assert_eq!(
            pending_progress(json!({"status": "RUNNING", "progress": 0.42})),
            Some(42)
        );
        assert_eq!(
            pending_progress(json!({"status": "SOMETHING_NEW", "progress": 1.0})),
            Some(99)
        );
        let Ok(TaskState::Done { outputs }) = task_state(
            &json!({"status": "SUCCEEDED", "output": ["https://cdn/a.mp4"]}),
            "t",
        ) else {
            panic!("expected done");
        };
        assert_eq!(outputs[0].locator, "https://cdn/a.mp4");
        assert_eq!(
            failure(json!({"status": "SUCCEEDED", "output": []})).1,
            ErrorCode::UpstreamError
        );
        assert_eq!(
            failure(json!({"status": "FAILED", "failureCode": "SAFETY.INPUT.TEXT"})),
            (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
        );
        assert_eq!(
            failure(json!({"status": "FAILED", "failureCode": "INPUT_PREPROCESSING.SAFETY.TEXT"})),
            (ErrorClass::Permanent, ErrorCode::UpstreamModerated)
        );
        assert_eq!(
            failure(json!({"status": "FAILED", "failureCode": "ASSET.INVALID"})),
            (ErrorClass::InvalidInput, ErrorCode::UpstreamRejected)
        );
        assert_eq!(
            failure(json!({"status": "FAILED", "failureCode": "INTERNAL.BAD_OUTPUT.CODE01"})),
            (ErrorClass::Rerun, ErrorCode::UpstreamError)
        );
        assert_eq!(
            failure(json!({"status": "CANCELLED"})),
            (ErrorClass::Permanent, ErrorCode::UpstreamCancelled)
        );
    }
}
