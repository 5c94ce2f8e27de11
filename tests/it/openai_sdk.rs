//! The official OpenAI Python SDK, unchanged, against a running mediagate and the local
//! provider: `openai_sdk.py` calls models, images, videos and checks the exceptions.

use std::process::Command;

use crate::on_both_backends;
use crate::support::{Backend, TestApp};

on_both_backends!(the_openai_sdk_runs_unchanged);

async fn the_openai_sdk_runs_unchanged(backend: Backend) {
    // Polls come back quickly; the SDK sleeps for what the header says.
    let app = TestApp::start_with(backend, |c| c.compat.video_poll_after_ms = 100).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/openai_sdk.py");
    let (url, key) = (format!("{}/v1", app.url), app.key.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(url)
            .arg(key)
            .output()
            .expect("python3 is installed")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the openai package is missing (scripts/test installs it: pip install openai): {stderr}"
    );
    assert!(
        out.status.success(),
        "the SDK script failed: {stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}
