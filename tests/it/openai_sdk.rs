//! The official OpenAI Python SDK, unchanged, against a running mediagate and the local
//! provider: `openai_sdk.py` calls models, images, videos and checks the exceptions.

use crate::on_both_backends;
use crate::support::{self, Backend, TestApp};

on_both_backends!(the_openai_sdk_runs_unchanged);

async fn the_openai_sdk_runs_unchanged(backend: Backend) {
    // Polls come back quickly; the SDK sleeps for what the header says.
    let app = TestApp::start_with(backend, |c| c.compat.video_poll_after_ms = 100).await;
    let out = support::run_openai_sdk_script(&app, "openai_sdk.py").await;
    assert_eq!(out.trim(), "ok");
}
