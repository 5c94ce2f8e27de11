//! OpenAI's `/v1/videos` as the official SDK drives it: create (multipart, as the SDK
//! always sends it, or JSON), retrieve (with `openai-poll-after-ms`), list, delete,
//! content (`variant=video|thumbnail`) and remix. A video is a video job: its id is the
//! job id, and `/v1/jobs/{id}` shows the same job.

use axum::Json;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use mediagate_engine::ErrorCode;
use mediagate_engine::catalog::{ASPECT_RATIOS, Model, VIDEO_RESOLUTIONS};
use mediagate_engine::db::jobs::JobFilter;
use mediagate_engine::ids::{IdKind, new_id, now_ms};
use mediagate_engine::jobs::intake::{self, Cancelled};
use mediagate_engine::jobs::job::{Job, JobKind, JobStatus};
use mediagate_engine::media::links::upload_key;
use mediagate_engine::media::thumbnail::{self, ThumbnailError};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::images::nearest_ratio;
use super::{
    bytes_response, client_param, model_id, model_name, named_model, refuse_unknown,
    request_object, sides, string_field, unknown,
};
use crate::api::auth::Authed;
use crate::api::content;
use crate::api::error::{ApiError, ApiResult};
use crate::api::jobs::{find_job, intake, list_page, page_params};
use crate::api::{AppState, JsonBody, Params, Path, RawBody};

/// OpenAI's create fields, then ours (OpenRouter-style routing, a seed, metadata).
const CREATE_FIELDS: &[&str] = &[
    "prompt",
    "model",
    "seconds",
    "size",
    "input_reference",
    "seed",
    "models",
    "provider",
    "metadata",
];

/// The model OpenAI's API uses when none is named.
const DEFAULT_MODEL: &str = "sora-2";

/// Native parameter names as the client wrote them.
const PARAMS: &[(&str, &str)] = &[
    ("input.prompt", "prompt"),
    ("input.duration", "seconds"),
    ("input.resolution", "size"),
    ("input.aspect_ratio", "size"),
    ("input.size", "size"),
    ("input.image", "input_reference"),
    ("input.seed", "seed"),
];

/// The create request's fields, from a multipart form or a JSON object, with the file.
pub struct VideoForm {
    fields: Map<String, Value>,
    file: Option<Upload>,
    /// What idempotency hashes: the fields and the file's digest, not the multipart
    /// bytes (their boundary changes with every send).
    canonical: Vec<u8>,
}

struct Upload {
    bytes: axum::body::Bytes,
    extension: &'static str,
}

impl<S: Send + Sync> FromRequest<S> for VideoForm {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("multipart/form-data"));
        if !multipart {
            let body = JsonBody::from_request(req, state).await?;
            let Value::Object(fields) = body.value else {
                return Err(ApiError::invalid_field(
                    "",
                    "the request body must be a JSON object",
                ));
            };
            let canonical = body.raw.to_vec();
            return Ok(VideoForm {
                fields,
                file: None,
                canonical,
            });
        }
        let mut form = Multipart::from_request(req, state).await.map_err(|e| {
            ApiError::invalid(
                ErrorCode::UnreadableBody,
                format!("could not read the form: {e}"),
            )
        })?;
        let mut fields = Map::new();
        let mut file = None;
        let unreadable = |e: axum::extract::multipart::MultipartError| {
            ApiError::invalid(
                ErrorCode::UnreadableBody,
                format!("could not read the form: {e}"),
            )
        };
        while let Some(part) = form.next_field().await.map_err(unreadable)? {
            let name = part.name().unwrap_or_default().to_owned();
            if !CREATE_FIELDS.contains(&name.as_str()) {
                return Err(unknown(&name, CREATE_FIELDS));
            }
            if name == "input_reference" {
                let content_type = part.content_type().unwrap_or_default().to_owned();
                let bytes = part.bytes().await.map_err(unreadable)?;
                file = Some(Upload {
                    extension: image_extension(&content_type, &bytes)?,
                    bytes,
                });
                continue;
            }
            let text = part.text().await.map_err(unreadable)?;
            if text.contains('\0') {
                return Err(mediagate_engine::fields::nul_in(&name).into());
            }
            // Our structured extras arrive as JSON text in a form; the rest are text.
            let value = match name.as_str() {
                "models" | "provider" | "metadata" => {
                    serde_json::from_str(&text).unwrap_or(Value::String(text))
                }
                _ => Value::String(text),
            };
            if let Some(bad) = mediagate_engine::fields::find_unstorable(&value) {
                return Err(bad.into());
            }
            fields.insert(name, value);
        }
        let mut canonical = serde_json::to_vec(&fields).expect("a map serializes");
        if let Some(f) = &file {
            canonical.extend_from_slice(&Sha256::digest(&f.bytes));
        }
        Ok(VideoForm {
            fields,
            file,
            canonical,
        })
    }
}

/// The extension an `input_reference` image is stored under, from its declared type or
/// its first bytes; anything but PNG, JPEG or WebP is refused.
fn image_extension(content_type: &str, bytes: &[u8]) -> ApiResult<&'static str> {
    let sniffed = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("jpg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    };
    let declared = match content_type {
        "image/png" => Some("png"),
        "image/jpeg" => Some("jpg"),
        "image/webp" => Some("webp"),
        _ => None,
    };
    sniffed.or(declared).ok_or_else(|| {
        ApiError::invalid_field(
            "input_reference",
            "input_reference must be a PNG, JPEG or WebP image",
        )
    })
}

/// `POST /v1/videos` → the new video (queued).
pub async fn create(
    State(state): State<AppState>,
    Authed(caller): Authed,
    headers: HeaderMap,
    form: VideoForm,
) -> ApiResult<Json<Value>> {
    let fields = &form.fields;
    refuse_unknown(fields, CREATE_FIELDS)?;
    if fields.contains_key("input_reference") {
        return Err(ApiError::invalid_field(
            "input_reference",
            "input_reference must be an image file part of a multipart form",
        ));
    }
    let catalog = &state.engine.config.catalog;
    let name = model_name(fields, Some(DEFAULT_MODEL))?;
    let model = named_model(catalog, name, JobKind::Video)?;
    let mut input = Map::new();
    if let Some(p) = fields.get("prompt") {
        input.insert("prompt".into(), p.clone());
    }
    if let Some(s) = fields.get("seconds").filter(|v| !v.is_null()) {
        input.insert("duration".into(), json!(seconds(s)?));
    }
    if let Some(seed) = fields.get("seed").filter(|v| !v.is_null()) {
        let seed = match seed {
            Value::String(text) => mediagate_engine::fields::parse_digits::<u64>(text)
                .map(Value::from)
                .ok_or_else(|| {
                    ApiError::invalid_field("seed", "seed must be a non-negative integer")
                })?,
            other => other.clone(),
        };
        input.insert("seed".into(), seed);
    }
    if let Some(model) = model {
        if let Some(size) = fields.get("size").filter(|v| !v.is_null()) {
            map_size(model, string_field(size, "size")?, &mut input)?;
        }
        if let Some(file) = &form.file {
            if model.reference_images == 0 {
                return Err(ApiError::invalid_field(
                    "input_reference",
                    format!(
                        "{} takes no reference image; leave input_reference out",
                        model.id
                    ),
                ));
            }
            input.insert("image".into(), json!(store_upload(&state, file).await?));
        }
    }
    let mut native = json!({"model": model_id(catalog, name), "input": input});
    for field in ["models", "provider", "metadata"] {
        if let Some(v) = fields.get(field) {
            native[field] = v.clone();
        }
    }
    let (job, _) = intake(&state, &caller, &headers, &native, &form.canonical)
        .await
        .map_err(|e| client_param(e, PARAMS))?;
    Ok(Json(video_object(&state, &job)))
}

/// OpenAI's `seconds` ("4", as the SDK sends it, or a JSON integer) as whole seconds.
fn seconds(value: &Value) -> ApiResult<i64> {
    let parsed = match value {
        Value::String(text) => mediagate_engine::fields::parse_digits::<i64>(text),
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        ApiError::invalid_field(
            "seconds",
            "seconds must be a whole number of seconds, e.g. \"4\"",
        )
    })
}

/// OpenAI's `size` (`1280x720`) on this model's catalog entry: a free-size model takes it
/// as it is; otherwise the short side picks the nearest of the model's resolutions (within
/// a quarter) and the ratio the nearest of its aspect ratios (within 5 %).
fn map_size(model: &Model, size: &str, input: &mut Map<String, Value>) -> ApiResult<()> {
    let (w, h) = sides(size, "WIDTHxHEIGHT, e.g. \"1280x720\"")?;
    if model.sizes {
        input.insert("size".into(), json!(size));
        return Ok(());
    }
    let (Some(resolutions), Some(ratios)) = (&model.resolutions, &model.aspect_ratios) else {
        return Err(ApiError::invalid_field(
            "size",
            format!("{} takes no size; leave size out", model.id),
        ));
    };
    let short = w.min(h);
    let resolution = resolutions
        .iter()
        .filter_map(|r| {
            let lines = VIDEO_RESOLUTIONS.iter().find(|v| v.0 == r)?.1;
            Some((r, lines.abs_diff(short)))
        })
        .filter(|(_, off)| *off * 4 <= short)
        .min_by_key(|(_, off)| *off)
        .map(|(r, _)| r.clone());
    let ratio = nearest_ratio(ratios, w, h);
    match (resolution, ratio) {
        (Some(resolution), Some(ratio)) => {
            input.insert("resolution".into(), json!(resolution));
            input.insert("aspect_ratio".into(), json!(ratio));
            Ok(())
        }
        _ => Err(ApiError::invalid_field(
            "size",
            format!(
                "{} makes {} in {}; {size} is none of them",
                model.id,
                resolutions.join(", "),
                ratios.join(", ")
            ),
        )),
    }
}

/// Stores an `input_reference` and returns the signed link the provider reads it from.
async fn store_upload(state: &AppState, file: &Upload) -> ApiResult<String> {
    let id = new_id(IdKind::File);
    let key = upload_key(&id, file.extension);
    state
        .engine
        .storage
        .put_at(&key, file.bytes.clone())
        .await
        .map_err(|e| {
            tracing::error!(key, error = %e, "could not store an upload");
            ApiError::internal()
        })?;
    let engine = &state.engine;
    Ok(engine
        .signer
        .upload_url(&engine.config.public_url, &id, file.extension, now_ms()))
}

/// The caller's video: a video job of theirs, or 404.
pub(super) async fn find_video(state: &AppState, account_id: &str, id: &str) -> ApiResult<Job> {
    let job = find_job(state, account_id, id)
        .await
        .map_err(|_| ApiError::not_found("video"))?;
    if job.kind != JobKind::Video {
        return Err(ApiError::not_found("video"));
    }
    Ok(job)
}

/// `GET /v1/videos/{id}`; a pending video says when to look again.
pub async fn retrieve(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = find_video(&state, &caller.account_id, &id).await?;
    let mut res = Json(video_object(&state, &job)).into_response();
    if !job.status.is_terminal() {
        let after = state.config.compat.video_poll_after_ms.to_string();
        res.headers_mut().insert(
            "openai-poll-after-ms",
            HeaderValue::from_str(&after).expect("digits"),
        );
    }
    Ok(res)
}

/// `GET /v1/videos?after=&limit=&order=asc|desc`, newest first by default.
pub async fn list(
    State(state): State<AppState>,
    Authed(caller): Authed,
    params: Params,
) -> ApiResult<Json<Value>> {
    for (name, _) in &params.0 {
        if !["after", "limit", "order"].contains(&name.as_str()) {
            return Err(unknown(name, &["after", "limit", "order"]));
        }
    }
    let mut filter = JobFilter {
        kind: Some(JobKind::Video),
        limit: 20,
        ..Default::default()
    };
    filter.oldest_first = match params.get("order") {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "order",
                "order must be asc or desc",
            ));
        }
    };
    page_params(&params, &mut filter, "video")?;
    list_page(&state, &caller.account_id, &filter, |j| {
        video_object(&state, j)
    })
    .await
}

/// `DELETE /v1/videos/{id}`: the video, its record (events, attempts, deliveries) and its
/// stored media are gone; a pending video is cancelled first.
pub async fn delete(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    // The SDK sends `Content-Type: application/json` and no body; any body is ignored.
    _body: RawBody,
) -> ApiResult<Json<Value>> {
    let job = find_video(&state, &caller.account_id, &id).await?;
    let engine = &state.engine;
    if !job.status.is_terminal() {
        match intake::cancel_job(engine, &caller.account_id, &job.id).await? {
            Cancelled::Cancelled(_) | Cancelled::AlreadyTerminal(_) => {}
            Cancelled::NotFound => return Err(ApiError::not_found("video")),
        }
    }
    let Some(gone) = engine
        .db
        .delete_finished_job(&caller.account_id, &job.id)
        .await?
    else {
        return Err(ApiError::not_found("video"));
    };
    let keys = gone
        .outputs
        .iter()
        .map(|o| o.key.clone())
        .chain(thumbnail::keys(&gone.id));
    for key in keys {
        // The row is gone, so nothing links to the file any more; a file left behind is
        // logged, not an error for the client.
        if let Err(e) = engine.storage.delete(&key).await {
            tracing::warn!(key, error = %e, "could not delete a deleted video's file");
        }
    }
    Ok(Json(
        json!({"id": gone.id, "object": "video.deleted", "deleted": true}),
    ))
}

/// `GET /v1/videos/{id}/content?variant=video|thumbnail`.
pub async fn content(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let job = find_video(&state, &caller.account_id, &id).await?;
    match params.get("variant").unwrap_or("video") {
        "video" => {
            let index = job
                .outputs
                .iter()
                .find(|o| o.content_type.starts_with("video/"))
                .map_or(0, |o| o.index);
            content::serve(&state, &job, index, &headers).await
        }
        "thumbnail" => match state.engine.thumbnail(&job).await {
            Ok(thumb) => Ok(bytes_response(thumb.content_type, thumb.bytes)),
            Err(ThumbnailError::NoVideo(_)) => Err(ApiError::conflict(
                ErrorCode::JobNotCompleted,
                format!(
                    "video {} is {}; its thumbnail exists once it is completed",
                    job.id,
                    job.status.as_str()
                ),
            )),
            Err(ThumbnailError::Undecodable(why)) => Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found_error",
                ErrorCode::ThumbnailUnavailable,
                why,
            )),
            Err(ThumbnailError::Engine(e)) => Err(e.into()),
        },
        "spritesheet" => Err(ApiError::invalid_field(
            "variant",
            "spritesheets are not made here; variant must be video or thumbnail",
        )),
        _ => Err(ApiError::invalid_field(
            "variant",
            "variant must be video or thumbnail",
        )),
    }
}

/// `POST /v1/videos/{id}/remix` `{"prompt"}`: a new video from the same model and
/// settings with the new prompt, linked by `remixed_from_video_id`.
pub async fn remix(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let obj = request_object(&body.value, &["prompt"])?;
    let source = find_video(&state, &caller.account_id, &id).await?;
    if source.status != JobStatus::Completed {
        return Err(ApiError::conflict(
            ErrorCode::JobNotCompleted,
            format!(
                "video {} is {}; only a completed video can be remixed",
                source.id,
                source.status.as_str()
            ),
        ));
    }
    let mut input = source.input.clone();
    input["prompt"] = obj.get("prompt").cloned().unwrap_or(Value::Null);
    if input["prompt"].is_null() {
        return Err(ApiError::invalid_field("prompt", "prompt is required"));
    }
    let native = json!({
        "model": source.model,
        "input": input,
        "metadata": {"remixed_from_video_id": source.id},
    });
    let (job, _) = intake(&state, &caller, &headers, &native, &body.raw)
        .await
        .map_err(|e| client_param(e, PARAMS))?;
    Ok(Json(video_object(&state, &job)))
}

/// A video job as OpenAI's `Video` object. Our `cancelled` and `expired` read as `failed`
/// with the reason in `error.code`.
pub fn video_object(state: &AppState, job: &Job) -> Value {
    let (status, error) = match job.status {
        JobStatus::Queued => ("queued", Value::Null),
        JobStatus::InProgress => ("in_progress", Value::Null),
        JobStatus::Completed => ("completed", Value::Null),
        JobStatus::Failed | JobStatus::Cancelled | JobStatus::Expired => {
            let (code, message) = match (&job.error, job.status) {
                (Some(e), _) => (e.code, e.message.clone()),
                (None, JobStatus::Cancelled) => (
                    ErrorCode::JobCancelled,
                    "the video was cancelled".to_owned(),
                ),
                (None, JobStatus::Expired) => (
                    ErrorCode::DeadlineExceeded,
                    "the video did not finish before its deadline".to_owned(),
                ),
                (None, _) => (ErrorCode::UpstreamError, "the video failed".to_owned()),
            };
            ("failed", json!({"code": code, "message": message}))
        }
    };
    let model = state.engine.config.catalog.find(&job.model);
    let seconds = job
        .input
        .get("duration")
        .and_then(Value::as_i64)
        .or_else(|| model.and_then(|m| m.default_duration));
    let secs = |ms: i64| ms.div_euclid(1000);
    json!({
        "id": job.id,
        "object": "video",
        "created_at": secs(job.created_at),
        "completed_at": job.completed_at.map(secs),
        "expires_at": null,
        "model": job.model,
        "progress": if job.status == JobStatus::Completed { 100 } else { job.progress },
        "prompt": job.input.get("prompt"),
        "remixed_from_video_id": job.metadata.get("remixed_from_video_id"),
        "seconds": seconds.map(|s| s.to_string()),
        "size": video_size(model, &job.input),
        "status": status,
        "error": error,
        // Ours, beside OpenAI's fields.
        "provider": job.provider,
        "usage": {"cost_usd": job.cost_usd},
    })
}

/// The frame size a video job makes, as OpenAI writes it (`1280x720`).
fn video_size(model: Option<&Model>, input: &Value) -> Option<String> {
    if let Some(size) = input.get("size").and_then(Value::as_str) {
        return Some(size.to_owned());
    }
    let model = model?;
    // Unset fields take the model's usual choice: 720p and 16:9 where it has them.
    let pick = |given: Option<&str>, list: &Option<Vec<String>>, usual: &str| -> Option<String> {
        given.map(str::to_owned).or_else(|| {
            let list = list.as_ref()?;
            Some(if list.iter().any(|x| x == usual) {
                usual.to_owned()
            } else {
                list.first()?.clone()
            })
        })
    };
    let resolution = pick(input["resolution"].as_str(), &model.resolutions, "720p")?;
    let ratio = pick(input["aspect_ratio"].as_str(), &model.aspect_ratios, "16:9")?;
    let lines = VIDEO_RESOLUTIONS.iter().find(|v| v.0 == resolution)?.1;
    let (_, aw, ah) = ASPECT_RATIOS.iter().find(|r| r.0 == ratio)?;
    let even = |v: u32| v.div_ceil(2) * 2;
    let (w, h) = if aw >= ah {
        (even(lines * aw / ah), lines)
    } else {
        (lines, even(lines * ah / aw))
    };
    Some(format!("{w}x{h}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use mediagate_engine::catalog::Catalog;

    fn mapped(model: &str, size: &str) -> Result<BTreeMap<String, Value>, Option<String>> {
        let catalog = Catalog::builtin();
        let mut input = Map::new();
        map_size(catalog.find(model).unwrap(), size, &mut input)
            .map(|()| input.into_iter().collect())
            .map_err(|e| e.param)
    }

    #[test]
    fn openai_sizes_land_on_the_catalogs_resolutions_and_ratios() {
        let ok = mapped("openai/sora-2", "1280x720").unwrap();
        assert_eq!(ok["resolution"], "720p");
        assert_eq!(ok["aspect_ratio"], "16:9");
        let ok = mapped("openai/sora-2", "720x1280").unwrap();
        assert_eq!(ok["aspect_ratio"], "9:16");
        let ok = mapped("openai/sora-2-pro", "1792x1024").unwrap();
        assert_eq!(ok["resolution"], "1080p");
        assert_eq!(ok["aspect_ratio"], "16:9");
        let ok = mapped("local/video", "640x360").unwrap();
        assert_eq!(ok["resolution"], "360p");
        // Square is not a ratio Sora makes; a bad size names the field.
        assert_eq!(
            mapped("openai/sora-2", "1024x1024").unwrap_err().as_deref(),
            Some("size")
        );
        assert_eq!(
            mapped("openai/sora-2", "big").unwrap_err().as_deref(),
            Some("size")
        );
    }

    #[test]
    fn a_video_reports_the_frame_size_it_makes() {
        let catalog = Catalog::builtin();
        let local = catalog.find("local/video");
        assert_eq!(video_size(local, &json!({})).as_deref(), Some("1280x720"));
        assert_eq!(
            video_size(
                local,
                &json!({"resolution": "360p", "aspect_ratio": "9:16"})
            )
            .as_deref(),
            Some("360x640")
        );
    }

    #[test]
    fn uploads_are_images_by_their_bytes_or_declared_type() {
        assert_eq!(
            image_extension("", b"\x89PNG\r\n\x1a\nrest").unwrap(),
            "png"
        );
        assert_eq!(image_extension("image/jpeg", b"?").unwrap(), "jpg");
        assert!(image_extension("text/plain", b"hello").is_err());
    }
}
