//! `Idempotency-Key`: same key and body → same job; other body → 422; in flight → 409.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::{Backend, TestApp};
use mediagate_engine::db::idempotency::{Claim, KeyPolicy};
use mediagate_engine::ids::now_ms;

on_both_backends!(same_key_same_body_is_one_job, key_in_flight_is_a_conflict);

async fn same_key_same_body_is_one_job(backend: Backend) {
    let app = TestApp::start(backend).await;
    let body = json!({"model": "local/image", "input": {"prompt": "once", "size": "64x64"}});
    let send = |key: &'static str, body: Value| {
        let req = app
            .post("/v1/jobs")
            .header("idempotency-key", key)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let first = send("order-17", body.clone()).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();

    // Concurrent and later retries with the same body all get the same job.
    let retries = futures::future::join_all((0..8).map(|_| send("order-17", body.clone()))).await;
    for res in retries {
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        assert_eq!(res.headers()["idempotent-replayed"], "true");
        let again: Value = res.json().await.unwrap();
        assert_eq!(again["id"], first["id"]);
    }
    let other = send(
        "order-17",
        json!({"model": "local/image", "input": {"prompt": "twice"}}),
    )
    .await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = other.json().await.unwrap();
    assert_eq!(err["error"]["code"], "idempotency_key_reused");

    // Another key is another job; so is no key.
    let fresh: Value = send("order-18", body.clone()).await.json().await.unwrap();
    assert_ne!(fresh["id"], first["id"]);
    let list: Value = app.get_json("/v1/jobs").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
}

async fn key_in_flight_is_a_conflict(backend: Backend) {
    let app = TestApp::start(backend).await;
    let store = &app.engine().db;
    // A claim that has not been bound to a job yet is a request still being handled.
    let policy = KeyPolicy {
        lock_ms: 60_000,
        ttl_ms: 86_400_000,
    };
    let account = app.account_id().await;
    let body = json!({"model": "local/image", "input": {"prompt": "slow"}});
    let raw = serde_json::to_vec(&body).unwrap();
    let key = mediagate_engine::jobs::intake::IdempotencyKey::new("busy-key", &raw);
    let claim = store
        .claim_idempotency_key(&account, "busy-key", &key.request_hash, now_ms(), &policy)
        .await
        .unwrap();
    assert_eq!(claim, Claim::New);
    let res = app
        .post("/v1/jobs")
        .header("idempotency-key", "busy-key")
        .header("content-type", "application/json")
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "idempotency_key_in_use");
    // Once the claim lapses (its request died), the key is taken over.
    let later = now_ms() + 61_000;
    let claim = store
        .claim_idempotency_key(&account, "busy-key", &key.request_hash, later, &policy)
        .await
        .unwrap();
    assert_eq!(claim, Claim::New);
}
