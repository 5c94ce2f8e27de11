//! Replicate as documented: `POST /v1/models/{owner}/{name}/predictions` (Bearer) creates
//! a prediction (201), finished at once under `Prefer: wait` when the model is quick;
//! `GET /v1/predictions/{id}` goes `starting` → `processing` → `succeeded` with `output`
//! (a URL on the delivery host, which needs no key), or `failed` with E005 when the
//! content is flagged; `POST /v1/predictions/{id}/cancel`. Errors are problem details
//! (`{title, detail, status}`). A prediction created with `webhook` is POSTed there when it
//! ends, signed per Standard Webhooks with the secret `GET /v1/webhooks/default/secret`
//! hands out.

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

/// The account's webhook signing secret.
pub const WEBHOOK_SECRET: &str = "whsec_BwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSY=";

/// What a bad signature is made with.
const WRONG_SECRET: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

const FLAGGED: &str =
    "The input or output was flagged as sensitive. Please try again with different inputs. (E005)";

pub async fn start(behaviour: Behaviour) -> Fake {
    let state = FakeState::new(behaviour);
    let router = Router::new()
        .route("/v1/models/{owner}/{name}/predictions", post(create))
        .route("/v1/predictions/{id}", get(prediction))
        .route("/v1/predictions/{id}/cancel", post(cancel))
        .route("/v1/webhooks/default/secret", get(webhook_secret))
        .route("/delivery/{file}", get(delivery))
        .with_state(state.clone());
    serve(router, state).await
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    (
        status,
        [("content-type", "application/problem+json")],
        axum::Json(json!({"title": title, "detail": detail, "status": status.as_u16()})),
    )
        .into_response()
}

fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", key());
    (headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str())).then(
        || {
            problem(
                StatusCode::UNAUTHORIZED,
                "Unauthenticated",
                "You did not pass a valid authentication token",
            )
        },
    )
}

/// The prediction object in one of its states.
fn prediction_object(state: &FakeState, id: &str, model: &str, status: &str) -> Value {
    let base = state.base();
    let (output, error) = match status {
        "succeeded" => (json!(format!("{base}/delivery/{id}.mp4")), Value::Null),
        "failed" => (Value::Null, json!(FLAGGED)),
        _ => (Value::Null, Value::Null),
    };
    json!({
        "id": id, "model": model, "version": "hidden", "status": status,
        "input": {}, "output": output, "error": error, "logs": "",
        "created_at": "2026-11-22T08:00:00.000Z", "data_removed": false,
        "urls": {
            "get": format!("{base}/v1/predictions/{id}"),
            "cancel": format!("{base}/v1/predictions/{id}/cancel"),
            "web": format!("https://replicate.com/p/{id}"),
        },
    })
}

async fn create(
    State(state): State<Arc<FakeState>>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    if let Some(res) =
        state.scripted_failure(|status| problem(status, "Fake failure", &format!("fake {status}")))
    {
        return res;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    if body["input"]["prompt"].as_str().is_none_or(str::is_empty) {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Input validation failed",
            "- input: prompt is required",
        );
    }
    let id = uuid::Uuid::now_v7().simple().to_string();
    state.accept(&id);
    let model = format!("{owner}/{name}");
    let mut callback = None;
    if let Some(url) = body["webhook"].as_str() {
        let (id, model) = (id.clone(), model.clone());
        callback = Some(state.call_back(url.to_owned(), id.clone(), move |state| {
            let status = if state.behaviour.refuse {
                "failed"
            } else {
                "succeeded"
            };
            let body = prediction_object(state, &id, &model, status).to_string();
            let secret = if state.behaviour.bad_callback_signature {
                WRONG_SECRET
            } else {
                WEBHOOK_SECRET
            };
            let headers = super::standard_webhooks_headers(secret, body.as_bytes());
            (headers, body.into_bytes())
        }));
    }
    if let Some(callback) = callback.filter(|_| state.behaviour.call_back_first) {
        callback.await.unwrap();
    }
    // Under `Prefer: wait` a prediction that finishes within the wait comes back finished;
    // a quick model here is one the behaviour says needs no polls.
    let waits = headers.contains_key("prefer");
    let status = match (waits, state.behaviour.refuse) {
        (true, true) => "failed",
        (true, false) if state.poll_ready(&id) => "succeeded",
        _ => "starting",
    };
    (
        StatusCode::CREATED,
        axum::Json(prediction_object(&state, &id, &model, status)),
    )
        .into_response()
}

async fn prediction(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    let status = if state.behaviour.refuse {
        "failed"
    } else if state.poll_ready(&id) {
        "succeeded"
    } else {
        "processing"
    };
    axum::Json(prediction_object(&state, &id, "owner/model", status)).into_response()
}

async fn cancel(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    axum::Json(prediction_object(&state, &id, "owner/model", "canceled")).into_response()
}

async fn webhook_secret(headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&headers) {
        return denied;
    }
    axum::Json(json!({"key": WEBHOOK_SECRET})).into_response()
}

async fn delivery(
    State(state): State<Arc<FakeState>>,
    Path(_file): Path<String>,
    headers: HeaderMap,
) -> Response {
    // The delivery host is not the API: an adapter sending the key here leaks it.
    if headers.contains_key("authorization") {
        return (StatusCode::BAD_REQUEST, "unexpected credentials").into_response();
    }
    if state.behaviour.expire_results {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    ([("content-type", CONTENT_TYPE)], state.media(CONTENT_TYPE)).into_response()
}
