//! The account's default webhook secret: stable until rotated; after a rotation both the
//! new and the old secret sign, for 24 hours.

use mediagate_workers::webhooks::{self, signature};
use reqwest::StatusCode;
use serde_json::Value;

use crate::on_both_backends;
use crate::support::{Backend, TestApp, new_key};

on_both_backends!(default_secret_is_stable_and_rotation_signs_with_both);

async fn default_secret_is_stable_and_rotation_signs_with_both(backend: Backend) {
    let app = TestApp::start(backend).await;
    let first: Value = app.get_json("/v1/webhook-secret").await;
    let first = first["secret"].as_str().unwrap().to_owned();
    assert!(first.starts_with("whsec_"), "{first}");
    let raw = signature::Secret::parse(&first).expect("a valid whsec_ secret");
    let again: Value = app.get_json("/v1/webhook-secret").await;
    assert_eq!(
        again["secret"],
        first.as_str(),
        "the secret is stable until rotated"
    );

    // Another account has its own secret.
    let other = new_key(app.running.as_ref().unwrap(), "acct_other").await;
    let theirs: Value = app
        .client
        .get(format!("{}/v1/webhook-secret", app.url))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(theirs["secret"], first.as_str());

    let res = app.post("/v1/webhook-secret/rotate").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let rotated: Value = res.json().await.unwrap();
    let second = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let expires = rotated["previous_secret_expires_at"].as_i64().unwrap();
    let now = mediagate_workers::ids::now_ms() / 1000;
    assert!(
        (expires - now - 24 * 3600).abs() < 60,
        "old secret signs for 24 h"
    );
    let shown: Value = app.get_json("/v1/webhook-secret").await;
    assert_eq!(shown["secret"], second.as_str());

    // Deliveries now carry two signatures; a receiver holding either secret accepts them.
    let secrets = webhooks::signing_secrets(app.engine(), &app.account_id().await)
        .await
        .unwrap();
    assert_eq!(secrets.len(), 2);
    let refs: Vec<&signature::Secret> = secrets.iter().collect();
    let body = br#"{"type":"job.completed"}"#;
    let header = signature::signature_header(&refs, "evt_1", now, body);
    assert_eq!(header.split(' ').count(), 2);
    let new = signature::Secret::parse(&second).unwrap();
    for secret in [&raw, &new] {
        signature::verify(secret, "evt_1", &now.to_string(), &header, body, now, 300).unwrap();
    }
}
