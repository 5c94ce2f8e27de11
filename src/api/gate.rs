//! What every request passes before a handler runs, in an order that lets no client hold
//! a request slot (our own capacity) with its upload:
//!
//! 1. its head is checked for size (`414`, `431` in the SPEC shape);
//! 2. its credentials — the key in `Authorization`, or a callback's provider and token in
//!    the path — are checked from the head alone, so a request that may not be here is
//!    answered (and its connection closed) without a byte of its body read;
//!    a keyed request is then counted against its key's `requests_per_minute`, and one
//!    past it is answered `429` as early, so a refused request costs no body read, no
//!    slot and no database work. Every answer to a key with a limit carries its
//!    `X-RateLimit-*` headers, whatever answered it (the gate, a handler, an error);
//! 3. its body is read, bounded in size and in time (`413`, `408`), holding no slot;
//! 4. only then does it take one of `max_concurrent_requests` slots (or get `503`), which
//!    it holds while the handler works out the answer.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::Authed;
use super::error::ApiError;
use super::{AppState, Path};
use mediagate_engine::ErrorCode;
use mediagate_engine::fields;
use mediagate_engine::rate_limit::Decision;

/// Longest request target (path and query) answered with a SPEC `414`.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest header block (names, values and separators) answered with a SPEC `431`.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most header lines answered with a SPEC `431`.
pub const MAX_HEADERS: usize = 100;

/// The request slots: past `max_concurrent_requests` requests in the handlers, new ones
/// get `503` with `Retry-After` at once instead of queueing without bound, so under
/// overload memory and the latency of accepted requests stay flat.
pub struct Slots {
    semaphore: Arc<Semaphore>,
    shed: AtomicU64,
    last_report: Mutex<Option<Instant>>,
}

/// Shedding is the limit doing its job, not a fault: it is counted and reported as one
/// warning at most this often, never one log line per request.
const SHED_REPORT_EVERY: Duration = Duration::from_secs(1);

impl Slots {
    pub fn new(capacity: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(capacity)),
            shed: AtomicU64::new(0),
            last_report: Mutex::new(None),
        }
    }

    /// A slot, or the `503` to answer with.
    pub fn take(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return Ok(permit);
        }
        self.count_shed();
        Err(ApiError::overloaded())
    }

    fn count_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        // Whoever holds the lock reports; the others only count.
        let Ok(mut last) = self.last_report.try_lock() else {
            return;
        };
        if last.is_none_or(|at| at.elapsed() >= SHED_REPORT_EVERY) {
            *last = Some(Instant::now());
            let shed = self.shed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                shed,
                "at capacity (max_concurrent_requests): requests answered 503"
            );
        }
    }
}

/// Step 1, for every request: heads over our limits get a SPEC error. (Heads past hyper's
/// buffer never get here: hyper answers those with a bare `431`.)
pub async fn check_head(req: Request, next: Next) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return closing(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "invalid_request_error",
            ErrorCode::UriTooLong,
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        ));
    }
    let headers = req.headers();
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > MAX_HEADERS || size > MAX_HEADER_BYTES {
        return closing(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            ErrorCode::HeadersTooLarge,
            format!("the request headers exceed {MAX_HEADERS} fields or {MAX_HEADER_BYTES} bytes"),
        ));
    }
    next.run(req).await
}

/// Routes that need an API key: the key is checked before the body is read.
pub async fn keyed(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config.max_body_bytes;
    keyed_within(&state, req, limit, next).await
}

/// Keyed routes that take uploads (`POST /v1/videos` with an `input_reference` file): as
/// [`keyed`], with `[compat] max_upload_bytes` as the body limit.
pub async fn keyed_upload(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config.compat.max_upload_bytes;
    keyed_within(&state, req, limit, next).await
}

async fn keyed_within(state: &AppState, req: Request, limit: usize, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let caller = match Authed::from_request_parts(&mut parts, state).await {
        Ok(Authed(caller)) => caller,
        Err(e) => return refuse(e, body),
    };
    // Keys without a limit cost no count (no Redis round trip) and get no headers.
    let rate = match caller.requests_per_minute {
        Some(rpm) => Some(state.engine.rate_limiter.check(&caller.key_id, rpm).await),
        None => None,
    };
    let mut res = match rate {
        Some(decision) if !decision.allowed => {
            let e = ApiError::rate_limited(decision.limit, decision.retry_after_secs());
            let mut res = if has_body(&parts.headers) {
                refuse(e, body)
            } else {
                // Nothing to leave unread: the connection can stay open.
                e.into_response()
            };
            res.headers_mut()
                .insert(header::RETRY_AFTER, decision.retry_after_secs().into());
            res
        }
        _ => {
            parts.extensions.insert(caller);
            admit(state, Request::from_parts(parts, body), limit, next).await
        }
    };
    if let Some(decision) = rate {
        rate_limit_headers(&decision, res.headers_mut());
    }
    res
}

/// `X-RateLimit-Limit` (requests per minute), `-Remaining` (requests the key may still
/// make at once) and `-Reset` (the Unix second by which its whole allowance is back).
fn rate_limit_headers(decision: &Decision, headers: &mut HeaderMap) {
    headers.insert("x-ratelimit-limit", decision.limit.into());
    headers.insert("x-ratelimit-remaining", decision.remaining.into());
    headers.insert("x-ratelimit-reset", decision.reset_at_secs().into());
}

/// Whether the request says a body follows (a length above zero, or chunks).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || (headers.contains_key(header::CONTENT_LENGTH) && declared_length(headers) != Some(0))
}

/// Routes open to anyone (signed file links): nothing to check before the body.
pub async fn open(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config.max_body_bytes;
    admit(&state, req, limit, next).await
}

/// Upstream callbacks: the provider and the token in the path are checked before the body
/// is read, and the body is capped at what an upstream sends ([`callback_max_body`]).
pub async fn callback(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let (provider, token) =
        match Path::<(String, String)>::from_request_parts(&mut parts, &state).await {
            Ok(Path(pair)) => pair,
            Err(e) => return closing(e),
        };
    let engine = &state.engine;
    if engine.providers.get(&provider).is_none()
        || engine.callback_signer.verify(&provider, &token).is_none()
    {
        return refuse(ApiError::not_found("callback"), body);
    }
    let limit = callback_max_body(state.config.max_body_bytes);
    admit(&state, Request::from_parts(parts, body), limit, next).await
}

/// The largest callback body: an upstream's callback may echo the job's input (Replicate
/// sends the whole prediction: input, output URLs, logs), so the largest request a client
/// may send us, plus a mebibyte for the rest.
pub fn callback_max_body(max_body_bytes: usize) -> usize {
    max_body_bytes.saturating_add(1 << 20)
}

/// Steps 3 and 4: read the body within `limit` bytes and the body timeout, then take a
/// slot for the handler's work.
pub(super) async fn admit(state: &AppState, req: Request, limit: usize, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if declared_length(&parts.headers).is_some_and(|n| n > limit as u64) {
        return refuse(too_large(), body);
    }
    let timeout = Duration::from_secs(state.config.http.body_timeout_secs);
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let bytes: Bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return closing(too_large());
        }
        Ok(Err(e)) => {
            return closing(ApiError::invalid(
                ErrorCode::UnreadableBody,
                format!("could not read the request body: {e}"),
            ));
        }
        Err(_) => {
            return closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                ErrorCode::BodyTimeout,
                format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs()
                ),
            ));
        }
    };
    let _slot = match state.slots.take() {
        Ok(slot) => slot,
        Err(shed) => return shed.into_response(),
    };
    // Streams (SSE, downloads) hold the slot only until their headers are sent.
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(fields::parse_digits)
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        ErrorCode::BodyTooLarge,
        "the request body is too large",
    )
}

/// How long a refused request's body is still taken in (and dropped) after the answer.
const LINGER: Duration = Duration::from_secs(1);

/// An answer given before the body was read. The connection is closed after it, so the
/// rest of the body is never waited for; for [`LINGER`] what arrives is read and dropped,
/// since closing a socket with unread data sends a reset, and a client that sent its body
/// in one go could lose the answer to it.
pub(super) fn refuse(e: ApiError, body: Body) -> Response {
    tokio::spawn(async move {
        let mut body = body;
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
    closing(e)
}

/// An answer after which the connection is closed.
fn closing(e: ApiError) -> Response {
    let mut res = e.into_response();
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}
