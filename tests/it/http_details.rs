//! Details of the HTTP surface that clients and caches rely on: the Bearer scheme in any
//! case, weak `If-None-Match`, numbers that are digits only, event streams resumed by
//! event id (and ended when nothing is left to send), and shedding that is not logged
//! as a server error.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::on_embedded;
use crate::support::{Backend, Proc, TestApp, process_env, status_of};

on_embedded!(
    the_bearer_scheme_is_case_insensitive,
    weak_etags_match_and_numbers_are_digits_only,
    event_streams_resume_by_event_id_and_end_past_the_terminal_event,
    shed_requests_are_not_logged_as_errors,
);

const PATIENCE: Duration = Duration::from_secs(30);

async fn the_bearer_scheme_is_case_insensitive(backend: Backend) {
    let app = TestApp::start(backend).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let res = app
            .client
            .get(format!("{}/v1/jobs", app.url))
            .header(header::AUTHORIZATION, format!("{scheme} {}", app.key))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{scheme}");
    }
    for bad in [format!("Bearer{}", app.key), format!("Basic {}", app.key)] {
        let res = app
            .client
            .get(format!("{}/v1/jobs", app.url))
            .header(header::AUTHORIZATION, bad.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
}

/// A completed one-image job, and its id.
async fn finished_image(app: &TestApp) -> (String, Value) {
    let job = app
        .submit(json!({"model": "local/image", "input": {"prompt": "a kite", "size": "64x64"}}))
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let job = app.wait_terminal(&id, PATIENCE).await;
    assert_eq!(job["status"], "completed", "{job}");
    (id, job)
}

async fn weak_etags_match_and_numbers_are_digits_only(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (id, job) = finished_image(&app).await;
    let content = format!("/v1/jobs/{id}/content");
    let etag = format!("\"{}\"", job["outputs"][0]["sha256"].as_str().unwrap());

    // A cache that holds a weak tag for the same version gets 304.
    let res = app
        .get(&content)
        .header(header::IF_NONE_MATCH, format!("W/{etag}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(res.headers()[header::ETAG], etag.as_str());

    // A range with signed numbers is malformed: ignored, the whole file is sent.
    assert_eq!(
        status_of(app.get(&content).header(header::RANGE, "bytes=+1-+2")).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(app.get(&content).header(header::RANGE, "bytes=1-2")).await,
        StatusCode::PARTIAL_CONTENT
    );

    // Query numbers too: `+0` and `+5` are not numbers here.
    for (path, param) in [
        (format!("{content}?index=+0"), "index"),
        ("/v1/jobs?limit=+5".to_owned(), "limit"),
    ] {
        let res = app.get(&path).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["param"], param, "{path}: {body}");
    }
}

/// The events of a finished job's stream: (SSE id, event type, public event id).
async fn stream(app: &TestApp, id: &str, last: Option<&str>) -> Vec<(String, String, String)> {
    let mut req = app.get(&format!("/v1/jobs/{id}/events"));
    if let Some(last) = last {
        req = req.header("last-event-id", last);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = tokio::time::timeout(PATIENCE, res.text())
        .await
        .unwrap_or_else(|_| panic!("the stream resumed after {last:?} never ends"))
        .unwrap();
    let mut out = Vec::new();
    let (mut sse_id, mut kind) = (String::new(), String::new());
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            sse_id = v.to_owned();
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(v).unwrap();
            out.push((
                sse_id.clone(),
                kind.clone(),
                data["id"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

async fn event_streams_resume_by_event_id_and_end_past_the_terminal_event(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (id, _) = finished_image(&app).await;
    let all = stream(&app, &id, None).await;
    assert!(all.len() >= 2, "{all:?}");
    assert_eq!(all.last().unwrap().1, "job.completed", "{all:?}");
    // The SSE id is the event's own id, so whichever a client kept, it can resume from.
    for (sse_id, _, event_id) in &all {
        assert_eq!(sse_id, event_id);
        assert!(sse_id.starts_with("evt_"), "{sse_id}");
    }
    let rest = stream(&app, &id, Some(&all[0].0)).await;
    assert_eq!(rest, all[1..].to_vec());

    // At or past the terminal event, nothing is left: the stream ends at once, empty.
    let terminal = all.last().unwrap().0.clone();
    assert_eq!(stream(&app, &id, Some(&terminal)).await, vec![]);
    assert_eq!(stream(&app, &id, Some("999999999999")).await, vec![]);

    // Another job's event id is no position in this stream: it is replayed whole.
    let (other, _) = finished_image(&app).await;
    let others = stream(&app, &other, None).await;
    assert_eq!(stream(&app, &id, Some(&others[0].0)).await, all);
}

/// A `mediagate serve` process with one request slot, sent bursts until some requests
/// are shed: its log has a warning about shedding and no error.
async fn shed_requests_are_not_logged_as_errors(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = [
        ("MEDIAGATE_LOG", "info"),
        ("MEDIAGATE_LOG_FORMAT", "json"),
        ("MEDIAGATE_BIND", "127.0.0.1:0"),
        ("MEDIAGATE_MAX_CONCURRENT_REQUESTS", "1"),
        ("MEDIAGATE_SHUTDOWN_DRAIN_SECS", "5"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(process_env(backend, dir.path()).await);
    let command = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mediagate"));
        cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    };
    let out = command(&["keys", "create", "--name", "t"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let mut child = Proc(command(&["serve"]).stderr(Stdio::piped()).spawn().unwrap());
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn({
        let lines = lines.clone();
        move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let addr: String = addr.chars().take_while(|c| *c != '"').collect();
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        }
    });
    let addr = rx.recv_timeout(PATIENCE).expect("serve prints its address");
    let client = reqwest::Client::new();
    let mut shed = 0;
    for _ in 0..20 {
        let burst = (0..64).map(|_| {
            client
                .get(format!("http://{addr}/v1/jobs"))
                .bearer_auth(&key)
                .send()
        });
        for res in futures::future::join_all(burst).await {
            let status = res.unwrap().status();
            assert!(status == 200 || status == 503, "{status}");
            shed += usize::from(status == 503);
        }
        if shed > 0 {
            break;
        }
    }
    assert!(
        shed > 0,
        "some of 64 requests at once are shed with one slot"
    );
    let stopped = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(child.0.wait().unwrap().success());
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains("\"ERROR\"")).collect();
    assert!(errors.is_empty(), "shedding logged errors: {errors:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"WARN\"") && l.contains("at capacity")),
        "shedding is reported as a warning: {lines:#?}"
    );
}
