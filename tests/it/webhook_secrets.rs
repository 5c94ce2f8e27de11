//! The account's default webhook secret: stable until rotated; after a rotation both the
//! new and the old secret sign, for 24 hours.

use mediagate_engine::webhooks::{self, signature};
use serde_json::Value;

use crate::on_both_backends;
use crate::receiver::{Receiver, Reply};
use crate::support::{Backend, TestApp, answer, new_key};

on_both_backends!(
    default_secret_is_stable_and_rotation_signs_with_both,
    rotations_in_a_row_keep_every_secret_signing_for_its_24_hours,
);

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
    let req = app
        .client
        .get(format!("{}/v1/webhook-secret", app.url))
        .bearer_auth(&other);
    let theirs = answer(req).await.expect(200);
    assert_ne!(theirs["secret"], first.as_str());

    let rotated = app.post_expect("/v1/webhook-secret/rotate", 200).await;
    let second = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let expires = rotated["previous_secret_expires_at"].as_i64().unwrap();
    let now = mediagate_engine::ids::now_ms() / 1000;
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

async fn rotations_in_a_row_keep_every_secret_signing_for_its_24_hours(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.webhook_allow_cidrs = "127.0.0.0/8".to_owned();
        c.webhooks.schedule = crate::support::schedule("0");
    })
    .await;
    let mut secrets = vec![
        app.get_json("/v1/webhook-secret").await["secret"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    for _ in 0..2 {
        let rotated = app.post_expect("/v1/webhook-secret/rotate", 200).await;
        secrets.push(rotated["secret"].as_str().unwrap().to_owned());
    }
    // A real delivery after two rotations: a receiver holding any of the three accepts it.
    let rx = Receiver::start(|_, _| Reply::ok()).await;
    app.submit(serde_json::json!({"model": "local/image",
        "input": {"prompt": "rotated", "size": "64x64"}, "webhook": {"url": rx.url("/r")}}))
        .await;
    let hit = rx.wait_hits(1, std::time::Duration::from_secs(30)).await[0].clone();
    assert_eq!(
        hit.header("webhook-signature").split(' ').count(),
        3,
        "{hit:?}"
    );
    for (i, secret) in secrets.iter().enumerate() {
        assert!(hit.verifies_with(secret), "secret {i} no longer signs");
    }
}
