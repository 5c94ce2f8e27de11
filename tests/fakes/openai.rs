//! OpenAI as documented, images, videos and chat completions (`chat`), key as
//! `Authorization: Bearer`.
//! Images: `POST /v1/images/generations` (and JSON `/v1/images/edits`) answer at once with
//! `data[].b64_json`; the safety system refuses with a 400 `moderation_blocked`.
//! Videos: multipart `POST /v1/videos` → a video object; `GET /v1/videos/{id}` → `queued`,
//! `in_progress` (with `progress`) … `completed`, or `failed` with `error {code, message}`
//! when moderation blocks the result, each answer with an `openai-poll-after-ms` hint;
//! `GET /v1/videos/{id}/content` (with the key) → the MP4, or a 404 once it has expired.
//! Errors are `{"error": {"message", "type", "param", "code"}}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Behaviour, Fake, FakeState, chat, key, media, serve};

pub const VIDEO_CONTENT_TYPE: &str = "video/mp4";
/// What `GET /v1/videos/{id}/content?variant=thumbnail` answers.
pub const THUMBNAIL_CONTENT_TYPE: &str = "image/webp";
pub const IMAGE_CONTENT_TYPE: &str = "image/png";

/// The pause the fake asks for between polls.
pub const POLL_AFTER_MS: u64 = 30;

struct OpenAi {
    shared: Arc<FakeState>,
    /// Each video's creation request, echoed in its video object.
    videos: Mutex<HashMap<String, Value>>,
}

/// `POST /v1/chat/completions` in OpenAI's format (see `chat`).
fn chat_routes(state: Arc<FakeState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .with_state(chat::Chat {
            state,
            dialect: chat::Dialect::OpenAi,
        })
}

pub async fn start(behaviour: Behaviour) -> Fake {
    let shared = FakeState::new(behaviour);
    let fake = Arc::new(OpenAi {
        shared: shared.clone(),
        videos: Mutex::default(),
    });
    let router = Router::new()
        .route("/v1/images/generations", post(images))
        .route("/v1/images/edits", post(images))
        .route("/v1/videos", post(create_video))
        .route("/v1/videos/{id}", get(get_video))
        .route("/v1/videos/{id}/content", get(video_content))
        .with_state(fake)
        .merge(chat_routes(shared.clone()));
    serve(router, shared).await
}

fn error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({"error": {"message": message, "type": kind, "param": null,
            "code": code}}),
        ),
    )
        .into_response()
}

fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", key());
    (headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str())).then(
        || {
            error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                "Incorrect API key provided.",
            )
        },
    )
}

/// The scripted failure of this submission, if any.
fn submit_failure(state: &FakeState) -> Option<Response> {
    state.scripted_failure(|status| {
        error(
            status,
            "server_error",
            None,
            &format!("fake {status}: the server had an error while processing your request"),
        )
    })
}

async fn images(State(fake): State<Arc<OpenAi>>, headers: HeaderMap, body: Bytes) -> Response {
    let state = &fake.shared;
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    if let Some(failure) = submit_failure(state) {
        return failure;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    if body["prompt"].as_str().is_none_or(str::is_empty) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "Missing required parameter: 'prompt'.",
        );
    }
    if state.behaviour.refuse {
        return error(
            StatusCode::BAD_REQUEST,
            "image_generation_user_error",
            Some("moderation_blocked"),
            "Your request was rejected as a result of our safety system.",
        );
    }
    let n = body["n"].as_u64().unwrap_or(1);
    let image = base64::engine::general_purpose::STANDARD.encode(media(IMAGE_CONTENT_TYPE));
    let data: Vec<Value> = (0..n).map(|_| json!({"b64_json": image})).collect();
    let mut res = axum::Json(json!({"created": 1_790_000_000, "data": data,
        "output_format": "png", "size": body["size"].as_str().unwrap_or("1024x1024"),
        "usage": {"input_tokens": 12, "output_tokens": 4160, "total_tokens": 4172}}))
    .into_response();
    res.headers_mut().insert(
        "x-request-id",
        format!("req_{}", uuid::Uuid::now_v7().simple())
            .parse()
            .unwrap(),
    );
    res
}

/// The text fields of a `multipart/form-data` body.
fn form_fields(headers: &HeaderMap, body: &[u8]) -> Option<HashMap<String, String>> {
    let content_type = headers.get("content-type")?.to_str().ok()?;
    let boundary = content_type
        .strip_prefix("multipart/form-data")?
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?;
    let body = std::str::from_utf8(body).ok()?;
    let mut fields = HashMap::new();
    for part in body.split(&format!("--{boundary}")).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let (head, value) = part.split_once("\r\n\r\n")?;
        let name = head.split("name=\"").nth(1)?.split('"').next()?;
        fields.insert(
            name.to_owned(),
            value.strip_suffix("\r\n").unwrap_or(value).to_owned(),
        );
    }
    Some(fields)
}

/// The video object as the API shows it.
fn video_object(id: &str, request: &Value, status: &str, progress: u64) -> Value {
    json!({"id": id, "object": "video", "model": request["model"], "status": status,
        "progress": progress, "created_at": 1_790_000_000,
        "seconds": request["seconds"].as_str().unwrap_or("4"),
        "size": request["size"].as_str().unwrap_or("720x1280")})
}

fn paced(body: Value) -> Response {
    let mut res = axum::Json(body).into_response();
    res.headers_mut()
        .insert("openai-poll-after-ms", POLL_AFTER_MS.into());
    res
}

async fn create_video(
    State(fake): State<Arc<OpenAi>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let state = &fake.shared;
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    if let Some(failure) = submit_failure(state) {
        return failure;
    }
    // The official SDK always sends a form (fields arrive as strings); JSON is accepted too.
    let request: Value = match form_fields(&headers, &body) {
        Some(fields) => json!(fields),
        None => serde_json::from_slice(&body).unwrap_or_default(),
    };
    if request["prompt"].as_str().is_none_or(str::is_empty) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "Missing required parameter: 'prompt'.",
        );
    }
    if let Some(seconds) = request["seconds"].as_str()
        && !["4", "8", "12"].contains(&seconds)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("invalid_value"),
            "Invalid value for 'seconds': expected one of '4', '8' or '12'.",
        );
    }
    let id = format!("video_{}", uuid::Uuid::now_v7().simple());
    let video = video_object(&id, &request, "queued", 0);
    fake.videos.lock().unwrap().insert(id, request);
    paced(video)
}

async fn get_video(
    State(fake): State<Arc<OpenAi>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let state = &fake.shared;
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    let Some(request) = fake.videos.lock().unwrap().get(&id).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            None,
            &format!("Video with id '{id}' not found."),
        );
    };
    if state.behaviour.refuse {
        let mut video = video_object(&id, &request, "failed", 0);
        video["error"] = json!({"code": "moderation_blocked",
            "message": "Your request was blocked by our moderation system."});
        return paced(video);
    }
    if !state.poll_ready(&id) {
        return paced(video_object(&id, &request, "in_progress", 40));
    }
    let mut video = video_object(&id, &request, "completed", 100);
    video["completed_at"] = json!(1_790_000_060);
    video["expires_at"] = json!(1_790_003_660);
    paced(video)
}

async fn video_content(
    State(fake): State<Arc<OpenAi>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let state = &fake.shared;
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    if state.behaviour.expire_results || !fake.videos.lock().unwrap().contains_key(&id) {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            None,
            &format!("Video content for '{id}' is not available; it may have expired."),
        );
    }
    // `variant=thumbnail`: Sora's own thumbnail, a WebP.
    let content_type = match query.get("variant").map(String::as_str) {
        Some("thumbnail") => THUMBNAIL_CONTENT_TYPE,
        _ => VIDEO_CONTENT_TYPE,
    };
    ([("content-type", content_type)], media(content_type)).into_response()
}
