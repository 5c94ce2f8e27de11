//! `POST /v1/chat/completions` (OpenAI's path) and `POST /api/v1/chat/completions`
//! (OpenRouter's): the chat relay behind the usual Bearer key.
//!
//! An unstreamed request answers with the upstream's `chat.completion`, rewritten
//! (`engine::chat::relay`). A streamed one (`stream: true`) is SSE: its `200` waits for
//! the first chunk, a failure or the first keep-alive, whichever comes first, so an error
//! before then keeps its HTTP status (and the SDK raises the matching exception); every
//! event after that is passed on the moment the relay yields it, and an error is one
//! `data: {"error": …}` event, after which the stream ends.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use mediagate_engine::chat::relay::{self, Event};
use mediagate_engine::chat::{ChatError, ChatRequest};

use super::auth::Authed;
use super::error::ApiError;
use super::{AppState, RawBody};

pub async fn completions(
    State(state): State<AppState>,
    Authed(caller): Authed,
    RawBody(body): RawBody,
) -> Response {
    let engine = &state.engine;
    let providers = &engine.chat.providers;
    let mut request = match ChatRequest::parse(&body, &|n| providers.is_name(n), providers.names())
    {
        Ok(request) => request,
        Err(e) => return refused(&e.into()),
    };
    let route = match relay::plan(engine, &request) {
        Ok(route) => route,
        Err(e) => return refused(&e),
    };
    let admitted = match relay::hold(engine, &caller, &mut request, &route).await {
        Ok(Ok(admitted)) => admitted,
        Ok(Err(refusal)) => return ApiError::from(refusal).into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    if !request.stream {
        return match relay::complete(engine.clone(), &caller, request, route, admitted).await {
            Ok(answer) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                answer,
            )
                .into_response(),
            Err(e) => refused(&e),
        };
    }
    let mut events = Box::pin(relay::stream(
        engine.clone(),
        &caller,
        request,
        route,
        admitted,
    ));
    let first = match events.next().await {
        Some(Event::Failed(e)) => return refused(&e),
        Some(first) => first,
        None => return ApiError::internal().into_response(),
    };
    let frames = futures::stream::once(async move { first })
        .chain(events)
        .map(|event| Ok::<Bytes, Infallible>(frame(event)));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // nginx would otherwise buffer the stream.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

/// One event's bytes on the wire.
fn frame(event: Event) -> Bytes {
    match event {
        Event::KeepAlive => Bytes::from_static(relay::KEEP_ALIVE),
        Event::Data(bytes) => bytes,
        Event::Failed(e) => {
            let mut out = b"data: ".to_vec();
            serde_json::to_writer(&mut out, &api_error(&e).body()).expect("JSON values serialize");
            out.extend_from_slice(b"\n\n");
            out.into()
        }
    }
}

fn api_error(e: &ChatError) -> ApiError {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let error = ApiError::new(status, e.kind(), e.code, e.message.clone());
    match &e.param {
        Some(param) => error.with_param(param.clone()),
        None => error,
    }
}

/// The answer to a request that failed before its stream began, with `Retry-After`
/// where the error gives one (rate limits, every provider skipped).
fn refused(e: &ChatError) -> Response {
    let mut res = api_error(e).into_response();
    if let Some(after) = e.retry_after {
        let secs = after.as_secs_f64().ceil().max(1.0) as u64;
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}
