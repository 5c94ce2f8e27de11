//! fal's queue as documented: `POST /{model id}` (`Authorization: Key …`) answers
//! `{request_id, response_url, status_url, cancel_url}`, where those URLs use the app id
//! (the model id without its sub-path); `GET /{app}/requests/{id}/status` answers 202
//! `IN_QUEUE` (with `queue_position`) or `IN_PROGRESS`, then 200 `COMPLETED`;
//! `GET /{app}/requests/{id}` gives the output (`images[]` with `has_nsfw_concepts`) or,
//! when the content checker flags it, 422 `content_policy_violation`;
//! `PUT /{app}/requests/{id}/cancel`. Result files sit on a CDN that needs no key.
//! A request submitted with `?fal_webhook=URL` is POSTed there when it ends:
//! `{request_id, gateway_request_id, status: "OK" | "ERROR", payload, error}` (fal's
//! ED25519 signature headers are left out: mediagate does not check them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{Behaviour, Fake, FakeState, key, serve};

pub const CONTENT_TYPE: &str = "image/jpeg";

/// The fake's state plus the app id each request was queued under.
#[derive(Clone)]
struct Queue {
    state: Arc<FakeState>,
    apps: Arc<Mutex<HashMap<String, String>>>,
}

pub async fn start(behaviour: Behaviour) -> Fake {
    let state = FakeState::new(behaviour);
    let queue = Queue {
        state: state.clone(),
        apps: Arc::default(),
    };
    let router = Router::new()
        .route("/files/{file}", get(file))
        // Model ids have any number of segments, so the queue's paths are told apart here
        // rather than by the router.
        .fallback(queue_api)
        .with_state(queue);
    serve(router, state).await
}

async fn queue_api(
    State(queue): State<Queue>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_start_matches('/').to_owned();
    let request = path
        .split_once("/requests/")
        .map(|(app, rest)| (app.to_owned(), rest.to_owned()));
    match (&method, request) {
        (&Method::POST, None) => submit(&queue, path, &uri, &headers, &body),
        (&Method::GET, Some((app, rest))) => match rest.split_once('/') {
            Some((id, "status")) => status(&queue, &app, id, &headers),
            None => result(&queue, &app, &rest, &headers),
            Some(_) => not_found(),
        },
        (&Method::PUT, Some((app, rest))) => match rest.split_once('/') {
            Some((id, "cancel")) => cancel(&queue, &app, id, &headers),
            _ => not_found(),
        },
        _ => not_found(),
    }
}

fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Key {}", key());
    (headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str())).then(
        || {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"detail": "Unauthorized"})),
            )
                .into_response()
        },
    )
}

impl Queue {
    /// Whether `id` was queued under `app`: fal answers 404 for a request looked up
    /// under another path (such as the model id with its sub-path).
    fn known(&self, app: &str, id: &str) -> bool {
        self.apps.lock().unwrap().get(id).map(String::as_str) == Some(app)
    }

    /// The request has finished (as status polls or the clock say).
    fn ready(&self, id: &str) -> bool {
        self.state.is_done(id)
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"detail": "Request not found"})),
    )
        .into_response()
}

fn submit(queue: &Queue, model: String, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    let state = &queue.state;
    if let Some(denied) = unauthorized(headers) {
        return denied;
    }
    if let Some(res) = state.scripted_failure(|status| {
        (
            status,
            axum::Json(json!({"detail": format!("fake {status}"), "error_type": "internal_error"})),
        )
            .into_response()
    }) {
        return res;
    }
    let body: Value = serde_json::from_slice(body).unwrap_or_default();
    if body["prompt"].as_str().is_none_or(str::is_empty) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(
                json!({"detail": [{"loc": ["body", "prompt"], "msg": "field required",
                "type": "missing"}]}),
            ),
        )
            .into_response();
    }
    let app = model.split('/').take(2).collect::<Vec<_>>().join("/");
    let id = uuid::Uuid::now_v7().to_string();
    queue.apps.lock().unwrap().insert(id.clone(), app.clone());
    state.accept(&id);
    let webhook = reqwest::Url::parse(&format!("http://fal{uri}"))
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "fal_webhook")
                .map(|(_, v)| v.into_owned())
        });
    if let Some(url) = webhook {
        let id = id.clone();
        state.call_back(url, id.clone(), move |state| {
            let body = if state.behaviour.refuse {
                json!({"request_id": id, "gateway_request_id": id, "status": "ERROR",
                    "error": "Invalid status code: 422", "payload": {"detail": []}})
            } else {
                json!({"request_id": id, "gateway_request_id": id, "status": "OK",
                    "payload": output(state, &id)})
            };
            let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
            (headers, body.to_string().into_bytes())
        });
    }
    let at = format!("{}/{app}/requests/{id}", state.base());
    axum::Json(json!({
        "request_id": id, "gateway_request_id": id,
        "response_url": at, "status_url": format!("{at}/status"),
        "cancel_url": format!("{at}/cancel"), "queue_position": 0,
    }))
    .into_response()
}

fn status(queue: &Queue, app: &str, id: &str, headers: &HeaderMap) -> Response {
    let state = &queue.state;
    if let Some(denied) = unauthorized(headers) {
        return denied;
    }
    if !queue.known(app, id) {
        return not_found();
    }
    let at = format!("{}/{app}/requests/{id}", state.base());
    let urls = json!({"request_id": id, "response_url": at, "status_url": format!("{at}/status"),
        "cancel_url": format!("{at}/cancel")});
    let mut answer = urls.as_object().unwrap().clone();
    if state.poll_ready(id) {
        answer.insert("status".into(), json!("COMPLETED"));
        answer.insert("logs".into(), json!([]));
        answer.insert("metrics".into(), json!({"inference_time": 1.2}));
        return axum::Json(Value::Object(answer)).into_response();
    }
    let polls = state.polls.lock().unwrap().get(id).copied().unwrap_or(0);
    if polls <= 1 {
        answer.insert("status".into(), json!("IN_QUEUE"));
        answer.insert("queue_position".into(), json!(0));
    } else {
        answer.insert("status".into(), json!("IN_PROGRESS"));
        answer.insert("logs".into(), json!([]));
    }
    (StatusCode::ACCEPTED, axum::Json(Value::Object(answer))).into_response()
}

fn result(queue: &Queue, app: &str, id: &str, headers: &HeaderMap) -> Response {
    let state = &queue.state;
    if let Some(denied) = unauthorized(headers) {
        return denied;
    }
    if !queue.known(app, id) {
        return not_found();
    }
    if !queue.ready(id) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"detail": "Request is still in progress"})),
        )
            .into_response();
    }
    if state.behaviour.refuse {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"detail": [{
                "loc": ["body", "prompt"],
                "msg": "The content could not be processed because it contained material flagged by a content checker.",
                "type": "content_policy_violation",
                "url": "https://docs.fal.ai/errors#content_policy_violation",
            }]})),
        )
            .into_response();
    }
    axum::Json(output(state, id)).into_response()
}

/// The model's output for a finished request.
fn output(state: &FakeState, id: &str) -> Value {
    json!({
        "images": [{"url": format!("{}/files/{id}.jpg", state.base()), "width": 1344,
            "height": 768, "content_type": CONTENT_TYPE}],
        "timings": {"inference": 1.2}, "seed": 7, "has_nsfw_concepts": [false],
        "prompt": "…",
    })
}

fn cancel(queue: &Queue, app: &str, id: &str, headers: &HeaderMap) -> Response {
    if let Some(denied) = unauthorized(headers) {
        return denied;
    }
    if !queue.known(app, id) {
        return not_found();
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "CANCELLATION_REQUESTED"})),
    )
        .into_response()
}

async fn file(
    State(queue): State<Queue>,
    Path(_file): Path<String>,
    headers: HeaderMap,
) -> Response {
    // The CDN is not the API: an adapter sending the key here leaks it.
    if headers.contains_key("authorization") {
        return (StatusCode::BAD_REQUEST, "unexpected credentials").into_response();
    }
    if queue.state.behaviour.expire_results {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    (
        [("content-type", CONTENT_TYPE)],
        queue.state.media(CONTENT_TYPE),
    )
        .into_response()
}
