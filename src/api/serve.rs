//! The connection loop: HTTP/1.1 with hyper's own builder, because `axum::serve` sets no
//! header timeout, no head-size limit and no cap on open connections — without them a
//! client that opens connections and sends nothing, or sends its head a byte at a time,
//! holds server resources for as long as it likes.
//!
//! What a connection may hold, and for how long:
//! - its request line and headers: `http.header_timeout_secs` from the moment the server
//!   waits for them (also the idle time allowed between keep-alive requests), at most
//!   [`MAX_BUF_BYTES`] of them; past either, hyper closes the connection;
//! - its body: `http.body_timeout_secs` (enforced where bodies are read, in `super::gate`);
//! - its answer: each write may wait `http.write_timeout_secs` for the client to read
//!   (`tokio-io-timeout` on the socket); past it the connection is closed, which drops
//!   the request's work (a chat's upstream call with it);
//! - a place among `http.max_connections` open connections; past that, new connections
//!   are not accepted and wait in the kernel's listen backlog until one closes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;

/// hyper's read buffer, and so the hard limit on a request head. Heads larger than the
/// SPEC-shaped limits in `super::gate` (URI 8 KiB, head 32 KiB) but within this get a
/// SPEC error; past it hyper answers a bare `431` itself.
pub const MAX_BUF_BYTES: usize = 64 * 1024;

/// Header lines hyper parses at most (bare `431` past it); `super::gate` refuses more than
/// [`super::gate::MAX_HEADERS`] with a SPEC error first.
const HYPER_MAX_HEADERS: usize = 200;

/// Serves `app` on `listener` until `stop` is cancelled, then stops accepting, lets open
/// requests finish for up to `drain`, and drops what is left (streams that never end).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpConfig,
    stop: CancellationToken,
    drain: Duration,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs))
        .max_buf_size(MAX_BUF_BYTES)
        .max_headers(HYPER_MAX_HEADERS);
    let write_timeout = Duration::from_secs(limits.write_timeout_secs);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Cancelled once the drain time is over: connections still open are dropped.
    let abandon = CancellationToken::new();
    loop {
        // A place first, then accept: at the limit, new connections wait in the backlog.
        let place = tokio::select! {
            place = open.clone().acquire_owned() => place.expect("the semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // Writes only: reads are bounded by the header and body timeouts, and a read
        // timeout would also cut a long answer (hyper does not read while it writes).
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(write_timeout));
        let service = TowerToHyperService::new(app.clone());
        let conn =
            graceful.watch(builder.serve_connection(TokioIo::new(Box::pin(stream)), service));
        let abandon = abandon.clone();
        tokio::spawn(async move {
            tokio::select! {
                // A client that hangs up or breaks the protocol is no server error.
                served = conn => if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                () = abandon.cancelled() => {}
            }
            drop(place);
        });
    }
    // Closing the listener refuses new connections at once.
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain time were closed");
    }
    abandon.cancel();
}
