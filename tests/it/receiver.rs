//! A webhook receiver for tests: a real HTTP server on 127.0.0.1 that records every
//! request and answers each according to a plan (status, headers, delay).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use mediagate_engine::webhooks::signature::{self, Secret};
use serde_json::Value;
use tokio::sync::Notify;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Instant,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Hit {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("webhook bodies are JSON")
    }

    /// Checks the Standard Webhooks signature with `secret` (`whsec_…`).
    pub fn verifies_with(&self, secret: &str) -> bool {
        let secret = Secret::parse(secret).expect("a whsec_ secret");
        signature::verify(
            &secret,
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
            self.body.as_bytes(),
            mediagate_engine::ids::now_ms() / 1000,
            300,
        )
        .is_ok()
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: String::new(),
        }
    }

    pub fn ok() -> Reply {
        Reply::status(200).body("thanks")
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = body.into();
        self
    }
}

type Plan = Box<dyn Fn(usize, &Hit) -> Reply + Send + Sync>;

struct Shared {
    hits: Mutex<Vec<Hit>>,
    plan: Plan,
    arrived: Notify,
}

pub struct Receiver {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    /// Starts a receiver; `plan(n, hit)` answers the n-th request (from 0).
    pub async fn start(plan: impl Fn(usize, &Hit) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, plan)
    }

    /// Serves on a listener the caller bound.
    pub fn serve(
        listener: tokio::net::TcpListener,
        plan: impl Fn(usize, &Hit) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            hits: Mutex::new(Vec::new()),
            plan: Box::new(plan),
            arrived: Notify::new(),
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            base,
            shared,
            server,
        }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (fails the test after `limit`).
    pub async fn wait_hits(&self, n: usize, limit: Duration) -> Vec<Hit> {
        self.wait_for(limit, |hits| hits.len() >= n).await
    }

    /// Waits until `done(hits)` holds (fails the test after `limit`).
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.shared.arrived.notified();
            let hits = self.hits();
            if done(&hits) {
                return hits;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let hits = self.hits();
                assert!(
                    done(&hits),
                    "receiver condition not met after {limit:?}; got {} requests: {:?}",
                    hits.len(),
                    hits.iter().map(|h| &h.body).collect::<Vec<_>>()
                );
                return hits;
            }
        }
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hit = Hit {
        at: Instant::now(),
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let n = {
        let mut hits = shared.hits.lock().unwrap();
        hits.push(hit.clone());
        hits.len() - 1
    };
    shared.arrived.notify_waiters();
    let reply = (shared.plan)(n, &hit);
    tokio::time::sleep(reply.delay).await;
    let mut res = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (name, value) in reply.headers {
        res.headers_mut().insert(name, value.parse().unwrap());
    }
    res
}
