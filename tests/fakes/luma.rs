//! Luma AI's Dream Machine as documented: `POST /dream-machine/v1/generations` (Bearer
//! key) → 201 with the generation `{id, state: "queued", …}`; `GET …/generations/{id}` →
//! `dreaming` … `completed` with `assets.video`, or `failed` with a `failure_reason`
//! ("Advanced prompt moderation failed" when moderation refuses the prompt, "Job failed"
//! for an internal failure); `DELETE …/generations/{id}` removes one. Errors are
//! `{"detail": "…"}`: 401 for a bad key, 400 for a bad request (a prompt under three
//! characters, a duration not written like "5s"). The video is a public CDN link (no key)
//! that answers 403 once gone. With `callback_url` the finished generation is POSTed there
//! (Luma also posts the states before it; the fake sends only the last, the one that
//! matters), unsigned.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Behaviour, Fake, FakeState, key, serve};

pub const CONTENT_TYPE: &str = "video/mp4";

const CREATED_AT: &str = "2026-11-22T08:00:00.000Z";

pub async fn start(behaviour: Behaviour) -> Fake {
    let state = FakeState::new(behaviour);
    let router = Router::new()
        .route("/dream-machine/v1/generations", post(submit))
        .route(
            "/dream-machine/v1/generations/{id}",
            get(generation).delete(remove),
        )
        .route("/assets/{file}", get(video))
        .with_state(state.clone());
    serve(router, state).await
}

fn detail(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"detail": message}))).into_response()
}

fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", key());
    (headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()))
        .then(|| detail(StatusCode::UNAUTHORIZED, "Invalid API key provided"))
}

/// The generation object, as the API and its callbacks show it.
fn generation_object(state: &FakeState, id: &str, request: &Value) -> Value {
    let base = json!({"id": id, "generation_type": "video", "created_at": CREATED_AT,
        "model": request["model"], "request": request});
    let (status, failure, assets) = if state.behaviour.refuse {
        (
            "failed",
            json!("Advanced prompt moderation failed"),
            Value::Null,
        )
    } else if state.doomed(id) {
        ("failed", json!("Job failed"), Value::Null)
    } else if !state.is_done(id) {
        ("dreaming", Value::Null, Value::Null)
    } else {
        let video = format!("{}/assets/{id}.mp4", state.base());
        ("completed", Value::Null, json!({"video": video}))
    };
    let mut object = base;
    object["state"] = json!(status);
    object["failure_reason"] = failure;
    object["assets"] = assets;
    object
}

async fn submit(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    if let Some(res) = state.scripted_failure(|status| detail(status, &format!("fake {status}"))) {
        return res;
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let prompt = request["prompt"].as_str().unwrap_or_default();
    if prompt.is_empty() && request["keyframes"].is_null() {
        return detail(StatusCode::BAD_REQUEST, "Prompt is required");
    }
    if prompt.chars().count() < 3 {
        return detail(
            StatusCode::BAD_REQUEST,
            "Prompt is too short, minimum length is 3 characters",
        );
    }
    if request
        .get("duration")
        .is_some_and(|d| d.as_str().is_none_or(|d| !d.ends_with('s')))
    {
        return detail(
            StatusCode::BAD_REQUEST,
            "Invalid duration, expected e.g. \"5s\"",
        );
    }
    let id = uuid::Uuid::now_v7().to_string();
    state.accept(&id);
    if let Some(url) = request["callback_url"].as_str() {
        let callback = state.call_back(url.to_owned(), id.clone(), {
            let (id, request) = (id.clone(), request.clone());
            move |state| {
                let body = generation_object(state, &id, &request);
                let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
                (headers, body.to_string().into_bytes())
            }
        });
        if state.behaviour.call_back_first {
            callback.await.unwrap();
        }
    }
    let answer = json!({"id": id, "generation_type": "video", "state": "queued",
        "failure_reason": null, "created_at": CREATED_AT, "assets": null,
        "model": request["model"], "request": request});
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

async fn generation(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    if !state.accepted_at.lock().unwrap().contains_key(&id) {
        return detail(StatusCode::NOT_FOUND, "Generation not found");
    }
    // Counts the poll; the object then reads the state it leaves.
    state.poll_ready(&id);
    let request = json!({"model": "ray-2"});
    axum::Json(generation_object(&state, &id, &request)).into_response()
}

async fn remove(headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn video(State(state): State<Arc<FakeState>>, headers: HeaderMap) -> Response {
    if headers.contains_key("authorization") {
        return detail(StatusCode::BAD_REQUEST, "the key was sent to the CDN");
    }
    if state.behaviour.expire_results {
        return (
            StatusCode::FORBIDDEN,
            [("content-type", "application/xml")],
            "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
        )
            .into_response();
    }
    ([("content-type", CONTENT_TYPE)], state.media(CONTENT_TYPE)).into_response()
}
