//! The harness checks itself: work a test leaves unprocessed fails it, loudly, unless the
//! test said it meant to leave it.

use mediagate::app::Roles;
use serde_json::json;

use crate::support::{TestApp, backend};

fn image_job() -> serde_json::Value {
    json!({"model": "local/image", "input": {"prompt": "left", "size": "64x64"}})
}

// By hand rather than with `on_both_backends!`, for `should_panic`; named like the
// tests it makes, so each backend's pass runs it.
mod unprocessed_work_fails_the_test {
    use super::*;

    /// Without a worker the job stays queued and its task due in the queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[should_panic(expected = "work left unprocessed")]
    async fn per_backend() {
        let app = TestApp::builder(backend()).roles(Roles::API).start().await;
        app.submit(image_job()).await;
        app.finish().await;
    }
}

mod declared_unfinished_jobs_are_spared {
    use std::time::{Duration, Instant};

    use super::*;

    /// A job the test means to leave running does not fail it once declared.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_backend() {
        let app = TestApp::builder(backend()).start().await;
        let job = app
            .submit(json!({"model": "local/video", "input": {"prompt": "long",
                "simulate": {"latency_ms": 600_000, "progress_steps": 1}}}))
            .await;
        let id = job["id"].as_str().unwrap();
        let start = Instant::now();
        while app.job(id).await["status"] != "in_progress" {
            assert!(start.elapsed() < Duration::from_secs(30), "never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        app.leaves_unfinished(id);
        app.finish().await;
    }
}
