//! Black Forest Labs as documented: `POST /v1/{model}` (`x-key`) → `{id, polling_url}`;
//! `GET /v1/get_result?id=` → `Pending` (with `progress`) … `Ready` with `result.sample`,
//! or `Request Moderated`; the sample is a signed link (no key) that expires.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::{Behaviour, Fake, FakeState, key, serve};

pub const CONTENT_TYPE: &str = "image/jpeg";

pub async fn start(behaviour: Behaviour) -> Fake {
    let state = FakeState::new(behaviour);
    let router = Router::new()
        .route("/v1/get_result", get(get_result))
        .route("/v1/{model}", post(submit))
        .route("/results/{file}", get(sample))
        .with_state(state.clone());
    serve(router, state).await
}

fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    (headers.get("x-key").and_then(|v| v.to_str().ok()) != Some(key().as_str())).then(|| {
        (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"detail": "Not authenticated - Invalid Authentication"})),
        )
            .into_response()
    })
}

async fn submit(
    State(state): State<Arc<FakeState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    if let Some(res) = state.scripted_failure(|status| {
        (
            status,
            axum::Json(json!({"detail": format!("fake {status}")})),
        )
            .into_response()
    }) {
        return res;
    }
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if body["prompt"].as_str().is_none_or(str::is_empty) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]})),
        )
            .into_response();
    }
    let id = format!("{model}-{}", uuid::Uuid::now_v7().simple());
    state.accept(&id);
    if let Some(url) = body["webhook_url"].as_str() {
        // BFL documents no signature for its callbacks; none is sent.
        let callback = state.call_back(url.to_owned(), id.clone(), {
            let id = id.clone();
            move |state| {
                let body = json!({"id": id, "status": "Ready",
                    "result": {"sample": sample_url(state, &id)}});
                let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
                (headers, body.to_string().into_bytes())
            }
        });
        if state.behaviour.call_back_first {
            callback.await.unwrap();
        }
    }
    let polling_url = format!("{}/v1/get_result?id={id}", state.base());
    axum::Json(json!({"id": id, "polling_url": polling_url})).into_response()
}

async fn get_result(
    State(state): State<Arc<FakeState>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    let Some(id) = q.get("id") else {
        return (StatusCode::UNPROCESSABLE_ENTITY, "id required").into_response();
    };
    if state.behaviour.refuse {
        return axum::Json(json!({"id": id, "status": "Request Moderated",
            "details": {"Moderation Reasons": ["Derivative Works Filter"]}, "result": null}))
        .into_response();
    }
    if state.doomed(id) {
        return axum::Json(
            json!({"id": id, "status": "Error", "details": "internal error", "result": null}),
        )
        .into_response();
    }
    if !state.poll_ready(id) {
        return axum::Json(json!({"id": id, "status": "Pending", "progress": 0.4, "result": null}))
            .into_response();
    }
    let sample = sample_url(&state, id);
    axum::Json(json!({"id": id, "status": "Ready", "result": {"sample": sample, "prompt": "…"}}))
        .into_response()
}

/// The signed link a finished task's sample is served from.
fn sample_url(state: &FakeState, id: &str) -> String {
    format!(
        "{}/results/{id}.jpg?se=2026-11-22T08%3A10%3A00Z&sig=fake",
        state.base()
    )
}

async fn sample(State(state): State<Arc<FakeState>>, Path(_file): Path<String>) -> Response {
    if state.behaviour.expire_results {
        return (
            StatusCode::FORBIDDEN,
            [("content-type", "application/xml")],
            "<Error><Code>AuthenticationFailed</Code><Message>Signed expiry time has passed</Message></Error>",
        )
            .into_response();
    }
    ([("content-type", CONTENT_TYPE)], state.media(CONTENT_TYPE)).into_response()
}
