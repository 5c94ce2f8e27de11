//! `POST /v1/images/generations` as OpenAI answers it: the request becomes a native image
//! job, waits for it (at most `[compat] image_wait_secs`), and answers `{created, data:
//! [{b64_json} | {url}], …}`.
//!
//! OpenAI's fields are mapped onto the catalog entry: `n` → `input.n`, `size` →
//! `input.size` (free sizes) or `input.aspect_ratio` (the nearest of the model's ratios);
//! `quality`, `output_format` and `background` are taken where the model does what they
//! ask and refused by name where it cannot (we never transcode or pretend).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mediagate_engine::ErrorCode;
use mediagate_engine::catalog::{ASPECT_RATIOS, Model};
use mediagate_engine::jobs::job::{Job, JobKind, JobStatus};
use serde_json::{Map, Value, json};

use super::{client_param, model_id, model_name, named_model, request_object, sides, string_field};
use crate::api::auth::Authed;
use crate::api::error::{ApiError, ApiResult};
use crate::api::jobs::intake;
use crate::api::{AppState, JsonBody};

/// OpenAI's parameters, then ours (OpenRouter-style routing and the local knobs).
const FIELDS: &[&str] = &[
    "prompt",
    "model",
    "n",
    "size",
    "quality",
    "output_format",
    "background",
    "response_format",
    "user",
    "moderation",
    "stream",
    "seed",
    "simulate",
    "models",
    "provider",
    "metadata",
];

/// Native parameter names as the client wrote them.
const PARAMS: &[(&str, &str)] = &[
    ("input.prompt", "prompt"),
    ("input.n", "n"),
    ("input.size", "size"),
    ("input.aspect_ratio", "size"),
    ("input.seed", "seed"),
    ("input.simulate", "simulate"),
];

/// The largest relative difference between a requested `size`'s ratio and the aspect
/// ratio it is mapped to (1792x1024 is 1.75, 16:9 is 1.78).
const RATIO_TOLERANCE: f64 = 0.05;

pub async fn generate(
    State(state): State<AppState>,
    Authed(caller): Authed,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult<Response> {
    let obj = request_object(&body.value, FIELDS)?;
    let catalog = &state.engine.config.catalog;
    let model_name = model_name(obj, None)?;
    let model = named_model(catalog, model_name, JobKind::Image)?;
    let url_wanted = match obj.get("response_format").filter(|v| !v.is_null()) {
        None => false,
        Some(v) => match string_field(v, "response_format")? {
            "b64_json" => false,
            "url" => true,
            _ => {
                return Err(ApiError::invalid_field(
                    "response_format",
                    "response_format must be url or b64_json",
                ));
            }
        },
    };
    if obj
        .get("stream")
        .is_some_and(|v| v != &json!(false) && !v.is_null())
    {
        return Err(ApiError::invalid_field(
            "stream",
            "streamed image generation is not supported; leave stream unset",
        ));
    }
    let mut input = Map::new();
    if let Some(p) = obj.get("prompt") {
        input.insert("prompt".into(), p.clone());
    }
    for field in ["n", "seed", "simulate"] {
        if let Some(v) = obj.get(field).filter(|v| !v.is_null()) {
            input.insert(field.into(), v.clone());
        }
    }
    if let Some(model) = model {
        map_size(model, obj.get("size"), &mut input)?;
        check_looks(model, obj)?;
    }
    let mut native = json!({"model": model_id(catalog, model_name), "input": input});
    for field in ["models", "provider", "metadata"] {
        if let Some(v) = obj.get(field) {
            native[field] = match (field, v) {
                ("models", Value::Array(list)) => Value::Array(
                    list.iter()
                        .map(|m| {
                            m.as_str()
                                .map_or(m.clone(), |m| json!(model_id(catalog, m)))
                        })
                        .collect(),
                ),
                _ => v.clone(),
            };
        }
    }
    let (job, _) = intake(&state, &caller, &headers, &native, &body.raw)
        .await
        .map_err(|e| client_param(e, PARAMS))?;
    let limit = Duration::from_secs(state.config.compat.image_wait_secs);
    let job = state.engine.wait_until_finished(&job.id, limit).await?;
    match job.status {
        JobStatus::Completed => {
            Ok(Json(images_response(&state, &job, url_wanted).await?).into_response())
        }
        JobStatus::Queued | JobStatus::InProgress => Ok(still_running(&job, limit)),
        _ => Err(job_failed(&job)),
    }
}

/// OpenAI's `size` on this model: `auto` (or none) leaves the model's default; a free-size
/// model takes it as it is; otherwise it names the nearest of the model's aspect ratios.
fn map_size(model: &Model, size: Option<&Value>, input: &mut Map<String, Value>) -> ApiResult<()> {
    let Some(size) = size.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let size = string_field(size, "size")?;
    if size == "auto" {
        return Ok(());
    }
    if model.sizes {
        input.insert("size".into(), json!(size));
        return Ok(());
    }
    let (w, h) = sides(size, "auto or WIDTHxHEIGHT, e.g. \"1024x1024\"")?;
    let ratios = model.aspect_ratios.as_deref().unwrap_or_default();
    match nearest_ratio(ratios, w, h) {
        Some(ratio) => {
            input.insert("aspect_ratio".into(), json!(ratio));
            Ok(())
        }
        None if ratios.is_empty() => Err(ApiError::invalid_field(
            "size",
            format!("{} takes no size; leave size unset or auto", model.id),
        )),
        None => Err(ApiError::invalid_field(
            "size",
            format!(
                "{} makes the aspect ratios {}; {size} is none of them",
                model.id,
                ratios.join(", ")
            ),
        )),
    }
}

/// The aspect ratio of `ratios` closest to `w`:`h`, if one is within [`RATIO_TOLERANCE`].
pub fn nearest_ratio(ratios: &[String], w: u32, h: u32) -> Option<String> {
    let want = f64::from(w) / f64::from(h);
    ratios
        .iter()
        .filter_map(|name| {
            let (_, rw, rh) = ASPECT_RATIOS.iter().find(|r| r.0 == name)?;
            let ratio = f64::from(*rw) / f64::from(*rh);
            Some((name, (ratio - want).abs() / want))
        })
        .filter(|(_, off)| *off <= RATIO_TOLERANCE)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(name, _)| name.clone())
}

/// `quality`, `output_format`, `background`: what the model makes is fixed (one quality,
/// its own format, opaque pictures), so each is taken when it asks for that and refused by
/// name otherwise.
fn check_looks(model: &Model, obj: &Map<String, Value>) -> ApiResult<()> {
    let format = native_format(model);
    let given = |field: &str| -> ApiResult<Option<&str>> {
        obj.get(field)
            .filter(|v| !v.is_null())
            .map(|v| string_field(v, field))
            .transpose()
    };
    if let Some(q) = given("quality")?
        && q != "auto"
    {
        return Err(ApiError::invalid_field(
            "quality",
            format!(
                "{} has one quality; quality must be auto (or unset), not {q:?}",
                model.id
            ),
        ));
    }
    if let Some(f) = given("output_format")?
        && Some(f) != format
    {
        return Err(ApiError::invalid_field(
            "output_format",
            match format {
                Some(native) => format!(
                    "{} makes {native} images; output_format must be {native} (or unset)",
                    model.id
                ),
                None => format!(
                    "{}'s provider chooses the image format; leave output_format unset",
                    model.id
                ),
            },
        ));
    }
    if let Some(b) = given("background")?
        && b != "auto"
        && !(b == "opaque" && format.is_some())
    {
        return Err(ApiError::invalid_field(
            "background",
            format!(
                "{} cannot make a {b} background; background must be auto (or unset)",
                model.id
            ),
        ));
    }
    if let Some(m) = given("moderation")?
        && m != "auto"
    {
        return Err(ApiError::invalid_field(
            "moderation",
            "moderation is the provider's own; it must be auto (or unset)",
        ));
    }
    Ok(())
}

/// The image format a model is known to make (the built-in renderer's PNG); others are
/// their provider's choice.
fn native_format(model: &Model) -> Option<&'static str> {
    model
        .providers
        .iter()
        .all(|s| s.provider == "local")
        .then_some("png")
}

/// The completed job as OpenAI's `ImagesResponse`.
async fn images_response(state: &AppState, job: &Job, url_wanted: bool) -> ApiResult<Value> {
    let view = state.engine.public_view();
    let mut data = Vec::with_capacity(job.outputs.len());
    let mut format = None;
    for output in &job.outputs {
        format = output
            .content_type
            .strip_prefix("image/")
            .map(str::to_owned);
        if url_wanted {
            let url = view
                .signer
                .url(view.public_url, &job.id, output.index, view.now_ms);
            data.push(json!({"url": url, "revised_prompt": null}));
            continue;
        }
        let bytes = state.engine.storage.get(&output.key).await.map_err(|e| {
            tracing::error!(job_id = %job.id, key = %output.key, error = %e, "stored image unreadable");
            ApiError::internal()
        })?;
        let bytes = bytes.ok_or_else(|| {
            tracing::error!(job_id = %job.id, key = %output.key, "stored image missing");
            ApiError::internal()
        })?;
        data.push(json!({"b64_json": STANDARD.encode(&bytes), "revised_prompt": null}));
    }
    let size = job.input.get("size").cloned().unwrap_or(Value::Null);
    Ok(json!({
        "created": job.created_at.div_euclid(1000),
        "data": data,
        "output_format": format,
        "size": size,
        // Ours, beside OpenAI's fields: the job behind the answer and what it cost.
        "id": job.id,
        "model": job.model,
        "provider": job.provider,
        "usage": {"cost_usd": job.cost_usd},
    }))
}

/// Past the wait: a 504 naming the job, which goes on. `x-should-retry: false`, so the
/// SDK does not send the request again and start a second job.
fn still_running(job: &Job, waited: Duration) -> Response {
    let mut res = ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout_error",
        ErrorCode::JobStillRunning,
        format!(
            "image job {} is still {} after {} s; it goes on: GET /v1/jobs/{} fetches it",
            job.id,
            job.status.as_str(),
            waited.as_secs(),
            job.id
        ),
    )
    .into_response();
    res.headers_mut()
        .insert("x-should-retry", HeaderValue::from_static("false"));
    res
}

/// A job that ended without images, as the error its cause deserves: the upstream's
/// refusal of the input is the client's (400), anything else a gateway failure (502).
pub fn job_failed(job: &Job) -> ApiError {
    let (code, message) = match &job.error {
        Some(e) => (e.code, e.message.clone()),
        None => (
            ErrorCode::UpstreamError,
            format!("job {} {}", job.id, job.status.as_str()),
        ),
    };
    let refused = matches!(
        code,
        ErrorCode::UpstreamRejected | ErrorCode::UpstreamModerated | ErrorCode::InvalidInput
    );
    let status = if refused {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::BAD_GATEWAY
    };
    let kind = if refused {
        "invalid_request_error"
    } else {
        "api_error"
    };
    ApiError::new(status, kind, code, format!("job {}: {message}", job.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_map_to_the_nearest_ratio_within_five_percent() {
        let ratios: Vec<String> = ["1:1", "16:9", "9:16", "3:2"].map(String::from).to_vec();
        assert_eq!(nearest_ratio(&ratios, 1024, 1024).as_deref(), Some("1:1"));
        assert_eq!(nearest_ratio(&ratios, 1792, 1024).as_deref(), Some("16:9"));
        assert_eq!(nearest_ratio(&ratios, 1024, 1792).as_deref(), Some("9:16"));
        assert_eq!(nearest_ratio(&ratios, 1536, 1024).as_deref(), Some("3:2"));
        assert_eq!(nearest_ratio(&ratios, 1024, 1536), None);
        assert_eq!(nearest_ratio(&[], 1024, 1024), None);
    }
}
