//! Slow and hostile clients, spoken to over raw TCP: uploads trickled a byte at a time,
//! heads that never finish, idle connections, callbacks with forged tokens, heads too
//! large. None of them may take the request slots other clients need, and each is cut
//! off after its timeout.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

use crate::on_embedded;
use crate::support::{Backend, TestApp};

on_embedded!(
    trickled_uploads_hold_no_request_slot_and_are_cut_off,
    slow_and_idle_heads_are_cut_off,
    unauthenticated_uploads_are_answered_before_their_body,
    forged_callbacks_are_refused_before_their_body,
    connections_past_the_limit_wait_for_a_free_one,
    oversized_heads_and_unreadable_paths_get_spec_errors,
    a_client_that_stops_reading_is_dropped,
);

/// Longest any step here may take before the test fails: far past every timeout set.
const PATIENCE: Duration = Duration::from_secs(20);

fn addr(app: &TestApp) -> String {
    app.url.trim_start_matches("http://").to_owned()
}

/// A response read off a raw connection.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The SPEC error shape with an `x-request-id`; returns the error's code.
    fn spec_error(&self) -> String {
        assert!(
            self.header("x-request-id").is_some(),
            "{} has no x-request-id",
            self.status
        );
        let body: Value = serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "{}: not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        });
        let e = &body["error"];
        assert!(
            e["type"].is_string() && e["message"].is_string() && e.get("param").is_some(),
            "{body}"
        );
        e["code"].as_str().expect("a code").to_owned()
    }
}

/// Reads one response (head, then a `Content-Length` body); `None` if the server closed
/// the connection first.
async fn read_response(r: &mut OwnedReadHalf) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Whether the server closes the connection (EOF or reset) within `PATIENCE`, reading and
/// dropping whatever else it sends.
async fn closed(r: &mut OwnedReadHalf) -> bool {
    tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn connect(app: &TestApp) -> (OwnedReadHalf, OwnedWriteHalf) {
    TcpStream::connect(addr(app)).await.unwrap().into_split()
}

/// Sends `head` and then one byte every 200 ms, for as long as the server reads.
fn trickle(mut w: OwnedWriteHalf, head: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        if w.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if w.write_all(b" ").await.is_err() {
                return;
            }
        }
    })
}

fn post_head(path: &str, key: Option<&str>, length: usize) -> String {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: mediagate\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n{{"
    )
}

/// Twenty clients uploading a job a byte at a time, with only two request slots: every
/// other request is still served (an upload holds no slot), and each upload is answered
/// `408` and its connection closed once the body timeout passes.
async fn trickled_uploads_hold_no_request_slot_and_are_cut_off(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.max_concurrent_requests = 2;
        c.http.body_timeout_secs = 3;
        c.auth_cache_ms = 60_000;
    })
    .await;
    // The key lookup is our work and takes a slot: twenty at once would be shed. Once the
    // key is cached, the uploads need none until their bodies are in.
    assert_eq!(app.get("/v1/jobs").send().await.unwrap().status(), 200);
    let mut slow = Vec::new();
    for _ in 0..20 {
        let (r, w) = connect(&app).await;
        let writer = trickle(w, post_head("/v1/jobs", Some(&app.key), 100_000));
        slow.push((r, writer));
    }
    // Let the server read every head and start on the bodies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        let res = app.get("/v1/jobs").send().await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "a request while uploads trickle in: {}",
            res.text().await.unwrap()
        );
    }
    for (mut r, writer) in slow {
        let res = tokio::time::timeout(PATIENCE, read_response(&mut r))
            .await
            .expect("the slow upload is answered once its time is up")
            .expect("an answer before the connection closes");
        assert_eq!(res.status, 408);
        assert_eq!(res.spec_error(), "body_timeout");
        assert!(
            closed(&mut r).await,
            "the slow upload's connection is closed"
        );
        writer.abort();
    }
}

/// A head sent a byte at a time, and a connection that sends nothing, are closed once the
/// header timeout passes; requests on other connections are served meanwhile.
async fn slow_and_idle_heads_are_cut_off(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.max_concurrent_requests = 1;
        c.http.header_timeout_secs = 1;
    })
    .await;
    let (mut slow_r, w) = connect(&app).await;
    let writer = trickle(w, "GET /v1/jobs HTTP/1.1\r\nX-Slow: ".to_owned());
    let (mut idle_r, _idle_w) = connect(&app).await;
    let res = app.get("/v1/jobs").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(closed(&mut slow_r).await, "a trickled head is cut off");
    assert!(closed(&mut idle_r).await, "an idle connection is cut off");
    writer.abort();
    // A keep-alive connection left idle after a request is closed the same way.
    let (mut r, mut w) = connect(&app).await;
    w.write_all(
        format!(
            "GET /v1/jobs HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {}\r\n\r\n",
            app.key
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let res = read_response(&mut r).await.expect("an answer");
    assert_eq!(res.status, 200);
    assert!(
        closed(&mut r).await,
        "an idle keep-alive connection is cut off"
    );
}

/// Without a (valid) key, an upload is answered `401` from its head alone, and its
/// connection closed, while the client is still sending: no slot, no body read.
async fn unauthenticated_uploads_are_answered_before_their_body(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.max_concurrent_requests = 1).await;
    for key in [None, Some("mg_not_a_real_key")] {
        let (mut r, w) = connect(&app).await;
        let writer = trickle(w, post_head("/v1/jobs", key, 1_000_000));
        let res = tokio::time::timeout(PATIENCE, read_response(&mut r))
            .await
            .expect("answered while the body is still coming")
            .expect("an answer");
        assert_eq!(res.status, 401, "{key:?}");
        assert_eq!(res.spec_error(), "invalid_api_key");
        assert!(closed(&mut r).await, "{key:?}: the connection is closed");
        writer.abort();
    }
    let res = app.get("/v1/jobs").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// A callback whose provider or token was not made here is refused from its path alone,
/// before any of its body is read; one declaring a body past the callback cap likewise.
async fn forged_callbacks_are_refused_before_their_body(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.max_concurrent_requests = 1).await;
    let token = app
        .engine()
        .callback_signer
        .token("replicate", "job_0190a3b2c4d5e6f708192a3b4c5d6e7f");
    for path in [
        "/v1/callbacks/replicate/job_0190a3b2c4d5e6f708192a3b4c5d6e7f.AAAA".to_owned(),
        format!("/v1/callbacks/nobody/{token}"),
        // The token is right, but replicate is not configured here.
        format!("/v1/callbacks/replicate/{token}"),
    ] {
        let (mut r, w) = connect(&app).await;
        let writer = trickle(w, post_head(&path, None, 10_000_000));
        let res = tokio::time::timeout(PATIENCE, read_response(&mut r))
            .await
            .expect("answered while the body is still coming")
            .expect("an answer");
        assert_eq!(res.status, 404, "{path}");
        assert_eq!(res.spec_error(), "not_found");
        assert!(closed(&mut r).await, "{path}: the connection is closed");
        writer.abort();
    }
}

/// Past `http.max_connections`, a new connection waits (in the listen backlog) until an
/// open one closes, and is then served.
async fn connections_past_the_limit_wait_for_a_free_one(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.http.max_connections = 3;
        c.http.header_timeout_secs = 60;
    })
    .await;
    // The test's own client may hold a pooled connection: use fresh ones only.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let health = format!("{}/healthz", app.url);
    assert_eq!(client.get(&health).send().await.unwrap().status(), 200);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.get(&health).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a fourth connection is served while three are open"
    );
    held.pop();
    let status = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("served once a connection closed")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

/// A client that sends requests and never reads the answers (pipelined, so the answers
/// pile up until the socket's buffers are full and the server's write waits) is dropped
/// after `http.write_timeout_secs`, and its connection's place goes to the next client.
async fn a_client_that_stops_reading_is_dropped(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.http.max_connections = 1;
        c.http.write_timeout_secs = 1;
        c.http.header_timeout_secs = 60;
    })
    .await;
    let (reader, mut writer) = TcpStream::connect(addr(&app)).await.unwrap().into_split();
    let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n".repeat(1000);
    // Sends until the server stops reading (its write waits) or drops the connection.
    let flood = tokio::spawn(async move { while writer.write_all(&request).await.is_ok() {} });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let status = tokio::time::timeout(PATIENCE, client.get(format!("{}/healthz", app.url)).send())
        .await
        .expect("the next client is served once the one that does not read is dropped")
        .unwrap()
        .status();
    assert_eq!(status, 200);
    flood.abort();
    drop(reader);
}

/// Request targets and header blocks past our limits, and paths that do not decode, are
/// answered in the SPEC shape with a request id.
async fn oversized_heads_and_unreadable_paths_get_spec_errors(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ask = |head: String| {
        let app_addr = addr(&app);
        async move {
            let (mut r, mut w) = TcpStream::connect(app_addr).await.unwrap().into_split();
            w.write_all(head.as_bytes()).await.unwrap();
            tokio::time::timeout(PATIENCE, read_response(&mut r))
                .await
                .expect("an answer in time")
                .expect("an answer")
        }
    };
    let key = format!("Authorization: Bearer {}\r\n", app.key);

    let long_uri = format!("/v1/jobs?after={}", "a".repeat(9000));
    let res = ask(format!("GET {long_uri} HTTP/1.1\r\nHost: m\r\n{key}\r\n")).await;
    assert_eq!(
        (res.status, res.spec_error().as_str()),
        (414, "uri_too_long")
    );

    let big_header = format!("X-Big: {}\r\n", "b".repeat(40 * 1024));
    let res = ask(format!(
        "GET /v1/jobs HTTP/1.1\r\nHost: m\r\n{key}{big_header}\r\n"
    ))
    .await;
    assert_eq!(
        (res.status, res.spec_error().as_str()),
        (431, "headers_too_large")
    );

    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let res = ask(format!(
        "GET /v1/jobs HTTP/1.1\r\nHost: m\r\n{key}{many}\r\n"
    ))
    .await;
    assert_eq!(
        (res.status, res.spec_error().as_str()),
        (431, "headers_too_large")
    );

    // Past hyper's own buffer the answer is hyper's bare 431; the connection still ends.
    let huge = format!("X-Huge: {}\r\n", "h".repeat(80 * 1024));
    let res = ask(format!("GET /v1/jobs HTTP/1.1\r\nHost: m\r\n{huge}\r\n")).await;
    assert_eq!(res.status, 431);

    for path in ["/v1/jobs/%FF", "/v1/jobs/%C3%28/events", "/v1/files/%80"] {
        let res = app
            .client
            .get(format!("{}{path}", app.url))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap();
        let status = res.status();
        assert!(res.headers().contains_key("x-request-id"), "{path}");
        let body: Value = res.json().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_path", "{path}: {body}");
    }
}
