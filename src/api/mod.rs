//! The HTTP front door: routes, shared state and the extractors that turn every kind of
//! bad input into a SPEC error. Handlers are thin: they parse, call an engine function
//! and shape the answer.

pub mod admin;
pub mod auth;
mod callbacks;
mod chat;
pub mod compat;
mod content;
pub mod error;
mod events;
pub mod gate;
mod health;
mod jobs;
mod key;
mod models;
pub mod money;
pub mod serve;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, Query, RawPathParams, Request,
};
use axum::http::request::Parts;
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mediagate_engine::ErrorCode;
use mediagate_engine::SharedEngine;
use mediagate_engine::fields;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use self::error::{ApiError, ApiResult};
use crate::config::Config;

#[derive(Clone)]
pub struct AppState {
    pub engine: SharedEngine,
    pub config: Arc<Config>,
    pub keys: Arc<auth::KeyCache>,
    /// `max_concurrent_requests` request slots.
    pub slots: Arc<gate::Slots>,
    /// The last readiness answer, reused for a second.
    pub readiness: Arc<health::Readiness>,
}

impl AppState {
    pub fn new(engine: SharedEngine, config: Arc<Config>) -> Self {
        Self {
            keys: Arc::new(auth::KeyCache::new(Duration::from_millis(
                config.auth_cache_ms,
            ))),
            slots: Arc::new(gate::Slots::new(config.max_concurrent_requests)),
            readiness: Arc::default(),
            engine,
            config,
        }
    }
}

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let max_body = state.config.max_body_bytes;
    let probes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    // Each group's gate checks what can be checked from the head, then reads the body,
    // then takes a request slot (see `gate`).
    let open = Router::new()
        .route("/v1/files/{token}", get(content::signed_file))
        .route_layer(middleware::from_fn_with_state(state.clone(), gate::open));
    let callbacks = Router::new()
        .route(
            "/v1/callbacks/{provider}/{token}",
            post(callbacks::receive)
                .layer(DefaultBodyLimit::max(gate::callback_max_body(max_body))),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gate::callback,
        ));
    let mut api = Router::new()
        .route("/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/content", get(content::job_content))
        .route("/v1/jobs/{id}/events", get(events::stream))
        .route("/v1/models", get(models::list))
        .route("/v1/chat/completions", post(chat::completions))
        .route("/api/v1/chat/completions", post(chat::completions))
        .route("/v1/webhook-secret", get(webhooks::secret))
        .route("/v1/webhook-secret/rotate", post(webhooks::rotate))
        .route(
            "/v1/webhook-endpoints",
            post(webhooks::create_endpoint).get(webhooks::list_endpoints),
        )
        .route(
            "/v1/webhook-endpoints/{id}",
            get(webhooks::get_endpoint).delete(webhooks::delete_endpoint),
        )
        .route(
            "/v1/webhook-endpoints/{id}/enable",
            post(webhooks::enable_endpoint),
        )
        .route("/v1/jobs/{id}/deliveries", get(webhooks::job_deliveries))
        .route("/v1/deliveries/{id}/redeliver", post(webhooks::redeliver))
        .route("/v1/key", get(key::show))
        .route("/v1/usage", get(key::usage))
        .route_layer(middleware::from_fn_with_state(state.clone(), gate::keyed))
        .merge(compat::router(&state));
    // Without an admin token there are no admin routes: each path is a plain 404.
    if let Some(admin) = admin::router(&state) {
        api = api.merge(admin);
    }
    api.merge(open)
        .merge(callbacks)
        // Before any gate: a path no database can store is refused from the path alone.
        .route_layer(middleware::from_fn(refuse_unstorable_path))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .merge(probes)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(gate::check_head))
        .layer(TraceLayer::new_for_http().on_failure(log_failure))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// 5xx answers are logged as errors, except `503`: shedding at capacity (counted and
/// reported by `gate::Slots`) and a not-ready probe are the server protecting itself;
/// `502`: an upstream's failure (chat), logged where it was seen; and `502`/`504` from a
/// route that waits for its job (OpenAI's image generation): the job failed upstream, or
/// is still running, which the job's own record tells.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _span: &Span) {
    match class {
        ServerErrorsFailureClass::StatusCode(
            status @ (StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT),
        ) => {
            tracing::debug!(?latency, %status, "answered");
        }
        class => tracing::error!(classification = %class, ?latency, "response failed"),
    }
}

/// Path parameters; one that cannot be read (bad percent-encoding, not UTF-8) is a SPEC
/// `400`, not axum's plain-text rejection.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|e| {
                ApiError::invalid(
                    ErrorCode::InvalidPath,
                    format!("the request path could not be read: {}", e.body_text()),
                )
            })
    }
}

/// A request body's bytes; an unreadable or oversized body is a SPEC error (`413` or
/// `400`), never axum's plain-text rejection.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let raw = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    ErrorCode::BodyTooLarge,
                    "the request body is too large",
                )
            } else {
                ApiError::invalid(
                    ErrorCode::UnreadableBody,
                    format!("could not read the request body: {rejection}"),
                )
            }
        })?;
        Ok(RawBody(raw))
    }
}

/// A JSON request body, kept with its raw bytes (idempotency hashes the bytes).
pub struct JsonBody {
    pub value: Value,
    pub raw: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(raw) = RawBody::from_request(req, state).await?;
        let value = serde_json::from_slice(&raw).map_err(|e| {
            ApiError::invalid(
                ErrorCode::InvalidJson,
                format!("the request body is not valid JSON: {e}"),
            )
        })?;
        // Here, so that no handler can forget it: a NUL would pass every check and then
        // fail each write of the row that holds it, on Postgres.
        if let Some(bad) = fields::find_unstorable(&value) {
            return Err(bad.into());
        }
        Ok(JsonBody { value, raw })
    }
}

/// Query-string pairs in order; a malformed query string, or one holding a NUL (`%00`)
/// in a name or value, is a 400.
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name` as a non-negative integer written in plain digits (no sign, no spaces), or
    /// `None` when absent; anything else is a 400 naming it with `what` as the message.
    pub fn digits<T: std::str::FromStr>(&self, name: &str, what: &str) -> ApiResult<Option<T>> {
        match self.get(name) {
            None => Ok(None),
            Some(text) => fields::parse_digits(text)
                .map(Some)
                .ok_or_else(|| ApiError::invalid(ErrorCode::InvalidField, what).with_param(name)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::invalid(
                    ErrorCode::InvalidQuery,
                    format!("could not read the query string: {e}"),
                )
            })?;
        for (name, value) in &pairs {
            if name.contains('\0') {
                return Err(ApiError::invalid(
                    ErrorCode::InvalidCharacter,
                    "a query parameter name contains a NUL character (U+0000), which is not allowed",
                ));
            }
            if value.contains('\0') {
                return Err(fields::nul_in(name).into());
            }
        }
        Ok(Params(pairs))
    }
}

/// A path segment (`/v1/jobs/{id}`) holding a NUL (`%00`) is a 400 naming the segment, as
/// a JSON field or query value would be, whatever the route does with it.
async fn refuse_unstorable_path(req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    // A segment that is not UTF-8 is left to the route's own extractor to refuse.
    if let Ok(params) = RawPathParams::from_request_parts(&mut parts, &()).await
        && let Some((name, _)) = params.iter().find(|(_, value)| value.contains('\0'))
    {
        return ApiError::from(fields::nul_in(name)).into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}
