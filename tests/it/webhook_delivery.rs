//! Webhook delivery end to end, on both backends: signed deliveries to a real receiver,
//! retries on the (shortened) schedule, Retry-After, redirects, hanging receivers, the
//! SSRF guard at delivery time, account endpoints with their own secret and filter, the
//! delivery log and redelivery (and tasks queued by an earlier version).

use std::time::Duration;

use mediagate::config::Config;
use mediagate_engine::ids::now_ms;
use mediagate_engine::tasks::Deliver;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::receiver::{Receiver, Reply};
use crate::support::{Backend, TestApp, status_of};
use crate::webhook_signing::verify_in_python;

on_both_backends!(
    job_webhook_gets_signed_events_and_the_log_shows_them,
    failing_receiver_gets_retries_until_it_recovers,
    retry_after_is_honoured,
    redirects_are_failures_and_never_followed,
    hanging_receiver_times_out_and_is_retried,
    blocked_addresses_fail_at_submission_or_attempt,
    endpoints_get_matching_events_with_their_own_secret,
    gone_and_long_failing_endpoints_are_disabled,
    redelivery_sends_the_same_event_again,
    progress_events_are_opt_in_and_throttled,
    a_slow_receiver_does_not_hold_up_the_others,
    a_receiver_that_is_down_gets_the_event_once_it_is_back,
);

/// Loopback receivers are reachable, and the schedule is short.
async fn start(backend: Backend, schedule: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let schedule = crate::support::schedule(schedule);
    TestApp::start_with(backend, move |c| {
        c.webhook_allow_cidrs = "127.0.0.0/8".to_owned();
        c.webhooks.schedule = schedule;
        tweak(c);
    })
    .await
}

fn image_job(hook: Value) -> Value {
    json!({"model": "local/image", "input": {"prompt": "hook", "size": "64x64"}, "webhook": hook})
}

async fn deliveries(app: &TestApp, job_id: &str) -> Vec<Value> {
    let list = app.get_json(&format!("/v1/jobs/{job_id}/deliveries")).await;
    list["data"].as_array().expect("a list").clone()
}

/// Polls the delivery log until `done` holds for it.
async fn wait_log(app: &TestApp, job_id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = std::time::Instant::now();
    loop {
        let list = deliveries(app, job_id).await;
        if done(&list) {
            return list;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "delivery log never got there: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_settled(list: &[Value]) -> bool {
    !list.is_empty() && list.iter().all(|d| d["status"] != "pending")
}

async fn job_webhook_gets_signed_events_and_the_log_shows_them(backend: Backend) {
    let app = start(backend, "0", |_| {}).await;
    let rx = Receiver::start(|_, _| Reply::ok()).await;
    let job = app
        .submit(image_job(
            json!({"url": rx.url("/hook"), "events": ["job.started", "job.completed"]}),
        ))
        .await;
    let id = job["id"].as_str().unwrap();
    let hits = rx.wait_hits(2, Duration::from_secs(30)).await;
    let secret = app.get_json("/v1/webhook-secret").await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut types: Vec<String> = Vec::new();
    for hit in &hits {
        assert_eq!(hit.path, "/hook");
        assert_eq!(hit.header("content-type"), "application/json");
        assert!(hit.verifies_with(&secret), "signature: {hit:?}");
        let body = hit.json();
        assert_eq!(body["object"], "event");
        assert_eq!(body["id"], hit.header("webhook-id"));
        assert_eq!(body["data"]["id"], id);
        types.push(body["type"].as_str().unwrap().to_owned());
    }
    types.sort();
    assert_eq!(types, ["job.completed", "job.started"]);
    // What the receiver got, exactly as sent, passes the reference libraries.
    let completed = hits
        .iter()
        .find(|h| h.json()["type"] == "job.completed")
        .unwrap();
    let headers = json!({
        "webhook-id": completed.header("webhook-id"),
        "webhook-timestamp": completed.header("webhook-timestamp"),
        "webhook-signature": completed.header("webhook-signature"),
    });
    let parsed = verify_in_python(&secret, &headers, &completed.body).expect("verifies");
    assert_eq!(parsed["openai"]["type"], "job.completed");

    let log = wait_log(&app, id, all_settled).await;
    assert_eq!(log.len(), 2, "{log:#?}");
    for d in &log {
        assert_eq!(d["status"], "delivered", "{d}");
        assert_eq!(d["endpoint_id"], Value::Null);
        assert_eq!(d["url"], rx.url("/hook"));
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0]["status_code"], 200);
        assert_eq!(attempts[0]["response_body"], "thanks");
        assert!(attempts[0]["duration_ms"].as_i64().unwrap() >= 0);
    }
    // Nothing else arrives: the job's webhook asked for two event types.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.hits().len(), 2);
}

async fn failing_receiver_gets_retries_until_it_recovers(backend: Backend) {
    // Attempts 1.1 s apart, so each carries a different timestamp (whole seconds).
    let app = start(backend, "0,1100ms,1100ms,1100ms", |_| {}).await;
    let big = "x".repeat(10_000);
    let rx = Receiver::start(move |n, _| {
        if n < 2 {
            Reply::status(500).body(big.clone())
        } else {
            Reply::status(204)
        }
    })
    .await;
    let job = app.submit(image_job(json!({"url": rx.url("/h")}))).await;
    let id = job["id"].as_str().unwrap();
    let hits = rx.wait_hits(3, Duration::from_secs(30)).await;
    let ids: Vec<&str> = hits.iter().map(|h| h.header("webhook-id")).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "same webhook-id: {ids:?}");
    let stamps: Vec<&str> = hits.iter().map(|h| h.header("webhook-timestamp")).collect();
    assert!(
        stamps[0] != stamps[1] && stamps[1] != stamps[2],
        "fresh timestamps: {stamps:?}"
    );
    assert_ne!(
        hits[0].header("webhook-signature"),
        hits[1].header("webhook-signature")
    );
    let gap = hits[1].at - hits[0].at;
    assert!(gap >= Duration::from_millis(900), "retried after {gap:?}");

    let log = wait_log(&app, id, all_settled).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], "delivered");
    let attempts = log[0]["attempts"].as_array().unwrap();
    let codes: Vec<i64> = attempts
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 204]);
    assert_eq!(attempts[0]["error"], "HTTP 500 Internal Server Error");
    // Only the first 4 KB of an answer is kept.
    assert_eq!(attempts[0]["response_body"].as_str().unwrap().len(), 4096);
    assert_eq!(log[0]["attempt_count"], 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.hits().len(), 3, "no attempt after success");
}

async fn retry_after_is_honoured(backend: Backend) {
    // The schedule would wait a minute; the receiver asks for one second.
    let app = start(backend, "0,60s", |_| {}).await;
    let rx = Receiver::start(|n, _| {
        if n == 0 {
            Reply::status(429).header("retry-after", "1")
        } else {
            Reply::ok()
        }
    })
    .await;
    let job = app.submit(image_job(json!({"url": rx.url("/h")}))).await;
    let hits = rx.wait_hits(2, Duration::from_secs(30)).await;
    let gap = hits[1].at - hits[0].at;
    assert!(
        gap >= Duration::from_millis(900) && gap < Duration::from_secs(30),
        "second attempt after {gap:?}"
    );
    let log = wait_log(&app, job["id"].as_str().unwrap(), all_settled).await;
    assert_eq!(log[0]["status"], "delivered");
    assert_eq!(log[0]["attempts"][0]["status_code"], 429);
}

async fn redirects_are_failures_and_never_followed(backend: Backend) {
    let app = start(backend, "0", |_| {}).await;
    let rx = Receiver::start(|_, hit| {
        if hit.path == "/moved" {
            Reply::status(302).header("location", "/elsewhere")
        } else {
            Reply::ok()
        }
    })
    .await;
    let job = app
        .submit(image_job(json!({"url": rx.url("/moved")})))
        .await;
    let log = wait_log(&app, job["id"].as_str().unwrap(), all_settled).await;
    assert_eq!(
        log[0]["status"], "failed",
        "a single-attempt schedule ran out"
    );
    let attempt = &log[0]["attempts"][0];
    assert_eq!(attempt["status_code"], 302);
    assert!(
        attempt["error"].as_str().unwrap().contains("not followed"),
        "{attempt}"
    );
    let paths: Vec<String> = rx.hits().iter().map(|h| h.path.clone()).collect();
    assert_eq!(paths, ["/moved"], "the redirect must not be followed");
}

async fn hanging_receiver_times_out_and_is_retried(backend: Backend) {
    let app = start(backend, "0,100ms", |c| {
        c.webhooks.timeout = Duration::from_millis(500)
    })
    .await;
    let rx = Receiver::start(|n, _| {
        if n == 0 {
            Reply::ok().after(Duration::from_secs(10))
        } else {
            Reply::ok()
        }
    })
    .await;
    let job = app.submit(image_job(json!({"url": rx.url("/slow")}))).await;
    let log = wait_log(&app, job["id"].as_str().unwrap(), all_settled).await;
    assert_eq!(log[0]["status"], "delivered");
    let first = &log[0]["attempts"][0];
    assert_eq!(first["status_code"], Value::Null);
    assert!(
        first["error"].as_str().unwrap().contains("timed out"),
        "{first}"
    );
    let took = first["duration_ms"].as_i64().unwrap();
    assert!((400..5000).contains(&took), "timed out after {took} ms");
    assert_eq!(log[0]["attempts"][1]["status_code"], 200);
}

async fn blocked_addresses_fail_at_submission_or_attempt(backend: Backend) {
    // No allow list: loopback and every private range are off limits.
    let app = TestApp::start_with(backend, |c| {
        c.webhooks.schedule = crate::support::schedule("0")
    })
    .await;
    for url in [
        "http://127.0.0.1/h",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/h",
        "http://[::ffff:127.0.0.1]/h",
        "http://0.0.0.0/h",
        "http://100.64.0.1/h",
        "http://[fd00::1]/h",
        "http://user:pw@example.com/h",
        "ftp://example.com/h",
    ] {
        let body = app
            .post_job(&image_job(json!({"url": url})))
            .await
            .bad_request();
        assert_eq!(body["error"]["param"], "webhook.url", "{url}: {body}");
    }
    // `localhost` is loopback by definition: refused at submission too, naming the
    // setting that would allow it. (Names are judged again at every attempt:
    // webhook_limits.rs shows a refused destination failing at once.)
    let rx = Receiver::start(|_, _| Reply::ok()).await;
    let port = rx.base.rsplit(':').next().unwrap().to_owned();
    let body = app
        .post_job(&image_job(
            json!({"url": format!("http://localhost:{port}/h")}),
        ))
        .await
        .bad_request();
    assert_eq!(body["error"]["param"], "webhook.url", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("MEDIAGATE_WEBHOOK_ALLOW_CIDRS"),
        "{message}"
    );
    assert!(rx.hits().is_empty());
}

async fn endpoints_get_matching_events_with_their_own_secret(backend: Backend) {
    let app = start(backend, "0", |_| {}).await;
    let rx = Receiver::start(|_, _| Reply::ok()).await;
    let res = app
        .post("/v1/webhook-endpoints")
        .json(&json!({"url": rx.url("/ep"), "events": ["job.completed"], "description": "orders"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let endpoint: Value = res.json().await.unwrap();
    let ep_id = endpoint["id"].as_str().unwrap().to_owned();
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(endpoint["status"], "enabled");
    // The secret is shown once.
    let fetched = app
        .get_json(&format!("/v1/webhook-endpoints/{ep_id}"))
        .await;
    assert_eq!(fetched["url"], rx.url("/ep"));
    assert!(fetched.get("secret").is_none(), "{fetched}");
    let listed = app.get_json("/v1/webhook-endpoints").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    // A job without its own webhook: the endpoint gets job.completed only.
    let job = app
        .submit(json!({"model": "local/image", "input": {"prompt": "ep", "size": "64x64"}}))
        .await;
    let id = job["id"].as_str().unwrap();
    let hits = rx.wait_hits(1, Duration::from_secs(30)).await;
    assert_eq!(hits[0].json()["type"], "job.completed");
    assert!(hits[0].verifies_with(&secret));
    let default = app.get_json("/v1/webhook-secret").await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !hits[0].verifies_with(&default),
        "endpoints sign with their own secret"
    );
    let log = wait_log(&app, id, all_settled).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["endpoint_id"], ep_id.as_str());

    // Bad input is a 400 on the field; another account sees nothing.
    let res = app
        .post("/v1/webhook-endpoints")
        .json(&json!({"url": rx.url("/ep"), "events": ["job.nope"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["param"], "events");
    for path in [
        format!("/v1/webhook-endpoints/{ep_id}"),
        format!("/v1/jobs/{id}/deliveries"),
    ] {
        let status = app.status_for_stranger(Method::GET, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    // Deleted: later jobs are not delivered there.
    let req = app
        .client
        .delete(format!("{}/v1/webhook-endpoints/{ep_id}", app.url))
        .bearer_auth(&app.key);
    assert_eq!(status_of(req).await, StatusCode::OK);
    let job = app
        .submit(json!({"model": "local/image", "input": {"prompt": "ep2", "size": "64x64"}}))
        .await;
    app.wait_terminal(job["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert!(
        deliveries(&app, job["id"].as_str().unwrap())
            .await
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.hits().len(), 1);
}

async fn create_endpoint(app: &TestApp, url: &str) -> String {
    let res = app
        .post("/v1/webhook-endpoints")
        .json(&json!({"url": url}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn gone_and_long_failing_endpoints_are_disabled(backend: Backend) {
    let app = start(backend, "0,1500ms,1500ms", |c| {
        c.webhooks.disable_after = Duration::from_secs(1);
    })
    .await;
    let gone = Receiver::start(|_, _| Reply::status(410)).await;
    let broken = Receiver::start(|_, _| Reply::status(500)).await;
    let gone_id = create_endpoint(&app, &gone.url("/g")).await;
    let broken_id = create_endpoint(&app, &broken.url("/b")).await;
    let job = app
        .submit(json!({"model": "local/image", "input": {"prompt": "dis", "size": "64x64"}}))
        .await;
    let id = job["id"].as_str().unwrap();
    let log = wait_log(&app, id, |l| l.len() == 2 && all_settled(l)).await;
    let by_endpoint = |ep: &str| log.iter().find(|d| d["endpoint_id"] == ep).unwrap().clone();
    // 410: disabled at once, no retry.
    let g = by_endpoint(&gone_id);
    assert_eq!(g["status"], "failed");
    assert_eq!(g["attempts"].as_array().unwrap().len(), 1);
    let ep = app
        .get_json(&format!("/v1/webhook-endpoints/{gone_id}"))
        .await;
    assert_eq!(ep["status"], "disabled", "{ep}");
    assert!(ep["disabled_reason"].as_str().unwrap().contains("410"));
    // Failing for longer than disable_after (1 s here): disabled at the next failure.
    let b = by_endpoint(&broken_id);
    assert_eq!(b["status"], "failed");
    assert_eq!(b["attempts"].as_array().unwrap().len(), 2, "{b}");
    let ep = app
        .get_json(&format!("/v1/webhook-endpoints/{broken_id}"))
        .await;
    assert_eq!(ep["status"], "disabled", "{ep}");
    assert_eq!(gone.hits().len(), 1);
    assert_eq!(broken.hits().len(), 2);

    // Disabled endpoints get nothing more, and redelivery to them is refused.
    assert_eq!(
        status_of(app.post(&format!(
            "/v1/deliveries/{}/redeliver",
            g["id"].as_str().unwrap()
        )))
        .await,
        StatusCode::CONFLICT
    );
    let job = app
        .submit(json!({"model": "local/image", "input": {"prompt": "dis2", "size": "64x64"}}))
        .await;
    app.wait_terminal(job["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert!(
        deliveries(&app, job["id"].as_str().unwrap())
            .await
            .is_empty()
    );

    // Enabled again, it receives the next event.
    let ep = app
        .post_expect(&format!("/v1/webhook-endpoints/{broken_id}/enable"), 200)
        .await;
    assert_eq!(ep["status"], "enabled");
    let job = app
        .submit(json!({"model": "local/image", "input": {"prompt": "dis3", "size": "64x64"}}))
        .await;
    broken.wait_hits(3, Duration::from_secs(30)).await;
    let _ = job;
}

async fn redelivery_sends_the_same_event_again(backend: Backend) {
    let app = start(backend, "0", |_| {}).await;
    let rx = Receiver::start(|_, _| Reply::ok()).await;
    let job = app.submit(image_job(json!({"url": rx.url("/r")}))).await;
    let id = job["id"].as_str().unwrap();
    let log = wait_log(&app, id, all_settled).await;
    let delivery_id = log[0]["id"].as_str().unwrap();
    assert_eq!(
        status_of(app.post(&format!("/v1/deliveries/{delivery_id}/redeliver"))).await,
        StatusCode::ACCEPTED
    );
    let hits = rx.wait_hits(2, Duration::from_secs(30)).await;
    assert_eq!(hits[0].header("webhook-id"), hits[1].header("webhook-id"));
    assert_eq!(hits[0].body, hits[1].body, "the same event");
    let log = wait_log(&app, id, |l| {
        l[0]["attempts"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    assert_eq!(log[0]["status"], "delivered", "{log:#?}");
    // A task queued by an earlier version carries no account or destination: the
    // attempt reads them from the row. Stale ones (an older sequence) do nothing.
    let pool = app.engine().db.pool();
    let account = app.account_id().await;
    let armed =
        mediagate_engine::db::webhook_deliveries::rearm(pool, &account, delivery_id, now_ms())
            .await
            .unwrap()
            .expect("armed");
    for seq in [armed.seq - 1, armed.seq] {
        let task = Deliver {
            delivery_id: delivery_id.to_owned(),
            seq,
            bulk: true,
            place: None,
        };
        app.engine()
            .queue
            .push(&task, Duration::ZERO)
            .await
            .unwrap();
    }
    rx.wait_hits(3, Duration::from_secs(30)).await;
    let log = wait_log(&app, id, |l| {
        l[0]["attempts"].as_array().is_some_and(|a| a.len() == 3) && l[0]["status"] == "delivered"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rx.hits().len(),
        3,
        "the stale task made no attempt: {log:#?}"
    );
    // Unknown ids and other accounts' deliveries are 404.
    assert_eq!(
        status_of(app.post("/v1/deliveries/dlv_0000/redeliver")).await,
        StatusCode::NOT_FOUND
    );
    let path = format!("/v1/deliveries/{delivery_id}/redeliver");
    let status = app.status_for_stranger(Method::POST, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn progress_events_are_opt_in_and_throttled(backend: Backend) {
    let app = start(backend, "0", |_| {}).await;
    let rx = Receiver::start(|_, _| Reply::ok()).await;
    let video = |hook: Value| {
        json!({"model": "local/video", "input": {"prompt": "p", "duration": 1, "resolution": "360p",
            "simulate": {"latency_ms": 2500, "progress_steps": 2}}, "webhook": hook})
    };
    let quiet = app.submit(video(json!({"url": rx.url("/quiet")}))).await;
    let chatty = app
        .submit(video(
            json!({"url": rx.url("/chatty"), "events": ["job.progress", "job.completed"]}),
        ))
        .await;
    for job in [&quiet, &chatty] {
        app.wait_terminal(job["id"].as_str().unwrap(), Duration::from_secs(60))
            .await;
    }
    let hits = rx
        .wait_for(Duration::from_secs(30), |h| {
            h.iter()
                .filter(|h| h.json()["type"] == "job.completed")
                .count()
                == 2
        })
        .await;
    let types = |path: &str| -> Vec<String> {
        hits.iter()
            .filter(|h| h.path == path)
            .map(|h| h.json()["type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(types("/quiet"), ["job.completed"]);
    let chatty_types = types("/chatty");
    assert!(
        chatty_types.contains(&"job.progress".to_owned()),
        "{chatty_types:?}"
    );

    // The throttle itself: at most one announced progress change per second per job.
    let store = &app.engine().db;
    let job = app
        .submit(json!({"model": "local/video", "input": {"prompt": "t", "duration": 1, "resolution": "360p",
            "simulate": {"latency_ms": 30000, "progress_steps": 0}}}))
        .await;
    let id = job["id"].as_str().unwrap();
    let start = std::time::Instant::now();
    while app.job(id).await["status"] != "in_progress" {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = now_ms() + 10_000;
    let mut announced = Vec::new();
    for (progress, at) in [
        (10, t),
        (20, t + 500),
        (30, t + 999),
        (40, t + 1000),
        (50, t + 1500),
    ] {
        let mut tx = store.begin().await.unwrap();
        let (_, announce) =
            mediagate_engine::db::jobs::set_progress(&mut *tx, id, progress, at, 1000)
                .await
                .unwrap()
                .expect("in progress");
        tx.commit().await.unwrap();
        announced.push(announce);
    }
    assert_eq!(announced, [true, false, false, true, false]);
    assert_eq!(
        app.job(id).await["progress"],
        50,
        "progress itself is never throttled"
    );
    // Its render takes 30 s: the throttle is all this job is for.
    app.leaves_unfinished(id);
}

async fn a_slow_receiver_does_not_hold_up_the_others(backend: Backend) {
    // Four attempt slots per process, at most two of them for any one URL.
    let app = start(backend, "0", |c| {
        c.webhooks.concurrency = 4;
        c.webhooks.per_url_concurrency = 2;
    })
    .await;
    let slow = Receiver::start(|_, _| Reply::ok().after(Duration::from_secs(10))).await;
    let fast = Receiver::start(|_, _| Reply::ok()).await;
    create_endpoint(&app, &slow.url("/slow")).await;
    create_endpoint(&app, &fast.url("/fast")).await;
    let started = std::time::Instant::now();
    for i in 0..6 {
        app.submit(json!({"model": "local/image", "input": {"prompt": format!("iso {i}"), "size": "64x64"}}))
            .await;
    }
    // Were the slow receiver allowed all four slots, the fast one would wait ten seconds.
    fast.wait_hits(6, Duration::from_secs(30)).await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(8),
        "fast receiver served only after {waited:?}"
    );
    assert!(
        slow.hits().len() <= 2,
        "at most two attempts at once to the slow URL"
    );
}

async fn a_receiver_that_is_down_gets_the_event_once_it_is_back(backend: Backend) {
    // Attempts for about half a minute, so a slow machine cannot run out of them before
    // the receiver is back.
    let app = start(backend, "0,1s,2s,3s,3s,3s,3s,3s,3s,3s,3s", |_| {}).await;
    // Nothing listens on the port yet: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let job = app
        .submit(image_job(
            json!({"url": format!("http://127.0.0.1:{port}/back")}),
        ))
        .await;
    let id = job["id"].as_str().unwrap();
    let log = wait_log(&app, id, |l| {
        l.first()
            .is_some_and(|d| d["attempts"].as_array().is_some_and(|a| !a.is_empty()))
    })
    .await;
    let first = &log[0]["attempts"][0];
    assert_eq!(first["status_code"], Value::Null);
    assert!(!first["error"].as_str().unwrap().is_empty(), "{first}");
    assert_eq!(log[0]["status"], "pending", "{log:#?}");
    assert!(log[0]["next_attempt_at"].is_string());

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let rx = Receiver::serve(listener, |_, _| Reply::ok());
    let hits = rx.wait_hits(1, Duration::from_secs(30)).await;
    assert_eq!(hits[0].json()["data"]["id"], id);
    let log = wait_log(&app, id, all_settled).await;
    assert_eq!(log[0]["status"], "delivered");
}
