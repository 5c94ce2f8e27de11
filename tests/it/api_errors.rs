//! Bad input gets a clear 4xx in the SPEC error shape with a request id, and writes nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, answer, status_of};
use crate::{on_both_backends, on_embedded};

on_embedded!(
    bad_requests_get_clear_errors_and_write_nothing,
    at_capacity_new_requests_get_503_at_once,
);
on_both_backends!(keys_are_required_and_checked);

/// Asserts the SPEC error shape and returns (status, body).
async fn error_of(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    assert!(
        res.headers().contains_key("x-request-id"),
        "{status} has no x-request-id"
    );
    let body: Value = res.json().await.expect("error bodies are JSON");
    let e = &body["error"];
    assert!(
        e["type"].is_string() && e["code"].is_string() && e["message"].is_string(),
        "{body}"
    );
    assert!(e.as_object().unwrap().contains_key("param"), "{body}");
    (status, body)
}

async fn bad_requests_get_clear_errors_and_write_nothing(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.max_body_bytes = 64 * 1024).await;
    let cases: Vec<(&str, String, StatusCode, Option<&str>)> = vec![
        ("malformed JSON", "{\"model\": ".to_owned(), StatusCode::BAD_REQUEST, None),
        ("not an object", "[1,2]".to_owned(), StatusCode::BAD_REQUEST, None),
        ("missing prompt", json!({"model": "local/video", "input": {}}).to_string(), StatusCode::BAD_REQUEST, Some("input.prompt")),
        ("missing input", json!({"model": "local/video"}).to_string(), StatusCode::BAD_REQUEST, Some("input.prompt")),
        ("missing model", json!({"input": {"prompt": "x"}}).to_string(), StatusCode::BAD_REQUEST, Some("model")),
        ("unknown model", json!({"model": "acme/nothing", "input": {"prompt": "x"}}).to_string(), StatusCode::BAD_REQUEST, Some("model")),
        ("prompt not a string", json!({"model": "local/video", "input": {"prompt": 5}}).to_string(), StatusCode::BAD_REQUEST, Some("input.prompt")),
        ("duration not an int", json!({"model": "local/video", "input": {"prompt": "x", "duration": "4"}}).to_string(), StatusCode::BAD_REQUEST, Some("input.duration")),
        ("unsupported resolution", json!({"model": "local/video", "input": {"prompt": "x", "resolution": "4k"}}).to_string(), StatusCode::BAD_REQUEST, Some("input.resolution")),
        ("negative seed", json!({"model": "local/image", "input": {"prompt": "x", "seed": -1}}).to_string(), StatusCode::BAD_REQUEST, Some("input.seed")),
        ("metadata not an object", json!({"model": "local/image", "input": {"prompt": "x"}, "metadata": "x"}).to_string(), StatusCode::BAD_REQUEST, Some("metadata")),
        ("webhook not http", json!({"model": "local/image", "input": {"prompt": "x"}, "webhook": {"url": "file:///etc/passwd"}}).to_string(), StatusCode::BAD_REQUEST, Some("webhook.url")),
        ("webhook to cloud metadata", json!({"model": "local/image", "input": {"prompt": "x"}, "webhook": {"url": "http://169.254.169.254/latest/meta-data"}}).to_string(), StatusCode::BAD_REQUEST, Some("webhook.url")),
        ("webhook to loopback", json!({"model": "local/image", "input": {"prompt": "x"}, "webhook": {"url": "http://[::ffff:127.0.0.1]:8080/hook"}}).to_string(), StatusCode::BAD_REQUEST, Some("webhook.url")),
        ("oversized body", json!({"model": "local/image", "input": {"prompt": "x".repeat(70 * 1024)}}).to_string(), StatusCode::PAYLOAD_TOO_LARGE, None),
    ];
    for (what, body, want, param) in cases {
        let res = app
            .post("/v1/jobs")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, err) = error_of(res).await;
        assert_eq!(status, want, "{what}: {err}");
        if let Some(param) = param {
            assert_eq!(err["error"]["param"], param, "{what}: {err}");
        }
    }
    for bad_key in ["", &"k".repeat(256), "tab\there"] {
        let res = app
            .post("/v1/jobs")
            .header("idempotency-key", bad_key)
            .json(&json!({"model": "local/image", "input": {"prompt": "x"}}))
            .send()
            .await
            .unwrap();
        let (status, err) = error_of(res).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad_key:?}: {err}");
        assert_eq!(err["error"]["code"], "invalid_idempotency_key");
    }
    // Unknown routes, wrong methods, bad ids and bad query values are SPEC errors too.
    let (status, _) = error_of(app.get("/v1/nothing").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = error_of(
        app.client
            .delete(format!("{}/v1/jobs", app.url))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = error_of(app.get("/v1/jobs/job_nope").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, err) = error_of(app.get("/v1/jobs?limit=1000").send().await.unwrap()).await;
    assert_eq!(
        (status, err["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("limit"))
    );
    let (status, err) = error_of(app.get("/v1/jobs?status=done").send().await.unwrap()).await;
    assert_eq!(
        (status, err["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("status"))
    );

    // Nothing was written.
    let list: Value = app.get_json("/v1/jobs").await;
    assert_eq!(
        list["data"],
        json!([]),
        "rejected requests must not create jobs"
    );
}

async fn keys_are_required_and_checked(backend: Backend) {
    let app = TestApp::start(backend).await;
    let url = format!("{}/v1/jobs", app.url);
    let (status, err) = error_of(app.client.get(&url).send().await.unwrap()).await;
    assert_eq!(
        (status, err["error"]["type"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("authentication_error"))
    );
    let (status, _) = error_of(
        app.client
            .get(&url)
            .bearer_auth("mg_not_a_real_key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = error_of(
        app.client
            .get(&url)
            .header("authorization", "Basic abc")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Health probes need no key.
    assert_eq!(
        app.client
            .get(format!("{}/healthz", app.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let ready: Value = answer(app.client.get(format!("{}/readyz", app.url)))
        .await
        .expect(200);
    assert_eq!(
        ready,
        json!({"status": "ok", "database": "ok", "queue": "ok"})
    );
}

async fn at_capacity_new_requests_get_503_at_once(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.max_concurrent_requests = 1).await;
    // One slot and bursts of requests at once: some are shed, at once, in the SPEC shape.
    let mut shed = None;
    for _ in 0..20 {
        let burst = (0..64).map(|_| app.get("/v1/jobs").send());
        for res in futures::future::join_all(burst).await {
            let res = res.unwrap();
            match res.status() {
                StatusCode::OK => {}
                StatusCode::SERVICE_UNAVAILABLE => shed = Some(res),
                other => panic!("{other}: {}", res.text().await.unwrap()),
            }
        }
        if shed.is_some() {
            break;
        }
    }
    let res = shed.expect("some of 64 requests at once are shed with one slot");
    assert_eq!(res.headers()["retry-after"], "1");
    let (_, err) = error_of(res).await;
    assert_eq!(err["error"]["code"], "overloaded");
    // Probes are never shed, and once the burst is over the slot is free again.
    assert_eq!(
        status_of(app.client.get(format!("{}/healthz", app.url))).await,
        StatusCode::OK
    );
    let res = app.get("/v1/jobs").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
