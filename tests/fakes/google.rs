//! Google's Gemini API as documented, key in `x-goog-api-key` (or the `key` query
//! parameter). Text models' `:generateContent` and `:streamGenerateContent` (chat) are
//! answered by `gemini`. Veo: `POST /v1beta/models/{model}:predictLongRunning` → `{name}`;
//! `GET /v1beta/{name}` → `{done: false}` … `{done: true, response:
//! {generateVideoResponse: {generatedSamples: [{video: {uri}}]}}}`, or with
//! `raiMediaFilteredReasons` and no samples when safety filters refuse; the uri
//! (`/v1beta/files/{id}:download?alt=media`) needs the key and redirects to a signed storage
//! link that must not get it, and answers 404 once the file is gone. Imagen `:predict` and
//! Gemini `:generateContent` answer at once with base64 images; refusals are
//! `raiFilteredReason` and `promptFeedback.blockReason`. Errors are google.rpc.Status; a
//! wrong key is a 400 `API_KEY_INVALID`, and a 429 carries its delay in `RetryInfo`, not
//! in a `Retry-After` header.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Behaviour, Fake, FakeState, gemini, key, media, serve};

pub const VIDEO_CONTENT_TYPE: &str = "video/mp4";
pub const IMAGE_CONTENT_TYPE: &str = "image/png";

pub async fn start(behaviour: Behaviour) -> Fake {
    let state = FakeState::new(behaviour);
    let router = Router::new()
        .route("/v1beta/models/{call}", post(model_call))
        .route("/v1beta/models/{model}/operations/{id}", get(operation))
        .route("/v1beta/files/{call}", get(file))
        .route("/storage/{file}", get(storage))
        .with_state(state.clone());
    serve(router, state).await
}

/// A google.rpc.Status error.
pub(crate) fn status(code: StatusCode, word: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({"error": {"code": code.as_u16(), "message": message,
            "status": word}})),
    )
        .into_response()
}

fn unauthorized(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<Response> {
    let given = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .or(query.get("key").map(String::as_str));
    match given {
        Some(k) if k == key() => None,
        Some(_) => {
            let message = "API key not valid. Please pass a valid API key.";
            Some(
                (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": {"code": 400, "message": message,
                        "status": "INVALID_ARGUMENT", "details": [
                            {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                             "metadata": {"service": "generativelanguage.googleapis.com"}},
                            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                             "locale": "en-US", "message": message}]}})),
                )
                    .into_response(),
            )
        }
        None => Some(status(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity).",
        )),
    }
}

fn submit_failure(state: &FakeState) -> Option<Response> {
    let code = StatusCode::from_u16(state.next_submit_failure()?).unwrap();
    if code == StatusCode::TOO_MANY_REQUESTS {
        let delay = state.behaviour.retry_after.unwrap_or(1);
        return Some(
            (
                code,
                axum::Json(json!({"error": {"code": 429,
                    "message": "Resource has been exhausted (e.g. check quota).",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": format!("{delay}s")}]}})),
            )
                .into_response(),
        );
    }
    let message = match code.as_u16() {
        503 => "The model is overloaded. Please try again later.",
        500 => {
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
        }
        _ => "fake: the request failed",
    };
    Some(status(code, gemini::status_word(code), message))
}

async fn model_call(
    State(state): State<Arc<FakeState>>,
    Path(call): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = unauthorized(&headers, &query) {
        return denied;
    }
    let Some((model, action)) = call.split_once(':') else {
        return status(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found.");
    };
    if let Some(failure) = submit_failure(&state) {
        return failure;
    }
    let streamed = action == "streamGenerateContent";
    if (streamed || action == "generateContent") && !model.contains("image") {
        let sse = query.get("alt").is_some_and(|alt| alt == "sse");
        return gemini::generate(&state, model, streamed, sse, &body).await;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let prompt = match action {
        "generateContent" => body.pointer("/contents/0/parts/0/text"),
        _ => body.pointer("/instances/0/prompt"),
    };
    if prompt.and_then(Value::as_str).is_none_or(str::is_empty) {
        return status(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "* GenerateVideoRequest.prompt: prompt is required",
        );
    }
    let image = base64::engine::general_purpose::STANDARD.encode(media(IMAGE_CONTENT_TYPE));
    match action {
        "predictLongRunning" => {
            let id = uuid::Uuid::now_v7().simple().to_string();
            axum::Json(json!({"name": format!("models/{model}/operations/{id}")}))
                .into_response()
        }
        "predict" if state.behaviour.refuse => axum::Json(json!({"predictions": [
            {"raiFilteredReason": "Unable to show generated images. All images were filtered out because they violated Gemini API's usage guidelines."}]}))
        .into_response(),
        "predict" => {
            let count = body.pointer("/parameters/sampleCount").and_then(Value::as_u64);
            let predictions: Vec<Value> = (0..count.unwrap_or(1))
                .map(|_| json!({"bytesBase64Encoded": image, "mimeType": IMAGE_CONTENT_TYPE}))
                .collect();
            axum::Json(json!({"predictions": predictions})).into_response()
        }
        "generateContent" if state.behaviour.refuse => axum::Json(json!({
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
            "modelVersion": model, "responseId": uuid::Uuid::now_v7().simple().to_string()}))
        .into_response(),
        "generateContent" => axum::Json(json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"inlineData": {"mimeType": IMAGE_CONTENT_TYPE, "data": image}}]},
                "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1290,
                "totalTokenCount": 1299},
            "modelVersion": model, "responseId": uuid::Uuid::now_v7().simple().to_string()}))
        .into_response(),
        _ => status(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found."),
    }
}

async fn operation(
    State(state): State<Arc<FakeState>>,
    Path((model, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = unauthorized(&headers, &query) {
        return denied;
    }
    let name = format!("models/{model}/operations/{id}");
    if !state.poll_ready(&id) {
        return axum::Json(json!({"name": name, "done": false})).into_response();
    }
    let result = if state.behaviour.refuse {
        json!({"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
            "generateVideoResponse": {"raiMediaFilteredCount": 1,
                "raiMediaFilteredReasons": ["We encountered an issue with the audio for your prompt. You have not been charged for this request."]}})
    } else {
        let uri = format!("{}/v1beta/files/{id}:download?alt=media", state.base());
        json!({"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
            "generateVideoResponse": {"generatedSamples": [{"video": {"uri": uri}}]}})
    };
    axum::Json(json!({"name": name, "done": true, "response": result})).into_response()
}

/// A generated file: with the key, a redirect to its signed storage link.
async fn file(
    State(state): State<Arc<FakeState>>,
    Path(call): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = unauthorized(&headers, &query) {
        return denied;
    }
    let Some((id, "download")) = call.split_once(':') else {
        return status(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found.");
    };
    if state.behaviour.expire_results {
        return status(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("File {id} does not exist or has expired."),
        );
    }
    let location = format!("{}/storage/{id}.mp4?signature=fake", state.base());
    (StatusCode::FOUND, [("location", location)]).into_response()
}

async fn storage(Query(query): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    if headers.contains_key("x-goog-api-key") || query.contains_key("key") {
        return status(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "the API key was sent to storage",
        );
    }
    (
        [("content-type", VIDEO_CONTENT_TYPE)],
        media(VIDEO_CONTENT_TYPE),
    )
        .into_response()
}
