//! Our signed events, checked by the libraries customers use: the reference Standard
//! Webhooks library and the official OpenAI SDK (`client.webhooks.unwrap()`), including
//! the two signatures sent while a rotated-out secret still signs.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use mediagate_engine::ids::now_ms;
use mediagate_engine::webhooks::{self, signature};
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::{Backend, TestApp};

on_both_backends!(reference_libraries_accept_our_signed_events);

/// Runs `verify_webhook.py`; returns what the libraries parsed, or their complaint.
/// What the reference libraries said when they refused a delivery (their stderr).
#[derive(Debug)]
pub struct Refused(#[allow(dead_code)] pub String);

pub fn verify_in_python(secret: &str, headers: &Value, body: &str) -> Result<Value, Refused> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/verify_webhook.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is installed");
    let input = json!({"headers": headers, "body": body}).to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the Python libraries are missing (scripts/test installs them: pip install standardwebhooks openai): {stderr}"
    );
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(Refused(stderr.into_owned()))
    }
}

async fn reference_libraries_accept_our_signed_events(backend: Backend) {
    let app = TestApp::start(backend).await;
    let job = app
        .submit(json!({"model": "local/image", "input": {"prompt": "signed", "size": "64x64"}}))
        .await;
    let id = job["id"].as_str().unwrap();
    app.wait_terminal(id, Duration::from_secs(60)).await;
    let events = app.engine().db.events_after(id, 0, 10).await.unwrap();
    let completed = events.iter().find(|e| e.kind == "job.completed").unwrap();
    let body = completed.to_public().to_string();
    let secret: Value = app.get_json("/v1/webhook-secret").await;
    let old = secret["secret"].as_str().unwrap().to_owned();

    let sign = |secrets: &[signature::Secret]| {
        let refs: Vec<&signature::Secret> = secrets.iter().collect();
        let ts = now_ms() / 1000;
        json!({
            "webhook-id": completed.id,
            "webhook-timestamp": ts.to_string(),
            "webhook-signature": signature::signature_header(&refs, &completed.id, ts, body.as_bytes()),
        })
    };
    let account = app.account_id().await;
    let headers = sign(
        &webhooks::signing_secrets(app.engine(), &account)
            .await
            .unwrap(),
    );
    let parsed =
        verify_in_python(&old, &headers, &body).expect("both libraries accept the delivery");
    assert_eq!(parsed["standardwebhooks"]["type"], "job.completed");
    assert_eq!(parsed["standardwebhooks"]["id"], completed.id.as_str());
    assert_eq!(parsed["openai"]["type"], "job.completed");
    assert_eq!(parsed["openai"]["object"], "event");

    // A tampered body is refused.
    let tampered = body.replace("job.completed", "job.failed");
    assert!(verify_in_python(&old, &headers, &tampered).is_err());

    // After a rotation both secrets sign; a receiver still holding the old one accepts.
    let rotated = app.post_expect("/v1/webhook-secret/rotate", 200).await;
    let new = rotated["secret"].as_str().unwrap().to_owned();
    let headers = sign(
        &webhooks::signing_secrets(app.engine(), &account)
            .await
            .unwrap(),
    );
    for secret in [&old, &new] {
        verify_in_python(secret, &headers, &body).expect("either secret verifies during rotation");
    }
}
