//! The worker lifecycle: retries, refusals, deadlines, lost and duplicate tasks.

use std::time::Duration;

use mediagate_engine::db::jobs::{self, NewJob};
use mediagate_engine::ids::{IdKind, new_id, now_ms};
use mediagate_engine::jobs::job::JobKind;
use mediagate_engine::jobs::lifecycle::advance;
use mediagate_engine::jobs::routing::RouteEntry;
use mediagate_engine::tasks::Advance;
use mediagate_workers::Connection;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::{Backend, TestApp};

const WAIT: Duration = Duration::from_secs(60);

on_both_backends!(
    transient_failures_are_retried_until_success,
    permanent_refusal_fails_with_the_upstream_code,
    retries_run_out,
    past_its_deadline_a_job_expires,
    a_job_whose_task_was_lost_is_picked_up_by_the_reaper,
    duplicate_and_stale_tasks_change_nothing,
    finished_tasks_are_cleared_from_the_queue,
    a_stored_input_that_does_not_read_fails_the_job,
);

async fn transient_failures_are_retried_until_success(backend: Backend) {
    let app = TestApp::start(backend).await;
    let job = app
        .submit(
            json!({"model": "local/image", "input": {"prompt": "flaky", "size": "64x64",
            "simulate": {"fail": "transient", "fail_times": 2}}}),
        )
        .await;
    let job = app.wait_terminal(job["id"].as_str().unwrap(), WAIT).await;
    assert_eq!(job["status"], "completed", "{job}");
}

async fn permanent_refusal_fails_with_the_upstream_code(backend: Backend) {
    let app = TestApp::start(backend).await;
    let job = app
        .submit(json!({"model": "local/video", "input": {"prompt": "no", "simulate": {"fail": "permanent"}}}))
        .await;
    let job = app.wait_terminal(job["id"].as_str().unwrap(), WAIT).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "upstream_rejected");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("permanent")
    );
    assert_eq!(job["outputs"], json!([]));
}

async fn retries_run_out(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.jobs.max_retries = 2).await;
    let job = app
        .submit(json!({"model": "local/image", "input": {"prompt": "flaky", "simulate": {"fail": "transient", "fail_times": 10}}}))
        .await;
    let job = app.wait_terminal(job["id"].as_str().unwrap(), WAIT).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "upstream_error");
}

async fn past_its_deadline_a_job_expires(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.jobs.deadline = Duration::from_secs(1)).await;
    let job = app
        .submit(json!({"model": "local/video", "input": {"prompt": "slow", "simulate": {"latency_ms": 600_000, "progress_steps": 1}}}))
        .await;
    let id = job["id"].as_str().unwrap();
    let job = app.wait_terminal(id, WAIT).await;
    assert_eq!(job["status"], "expired", "{job}");
    assert_eq!(job["error"]["code"], "deadline_exceeded");
    assert!(job["expires_at"].is_null());
    let events = app.engine().db.events_after(id, 0, 100).await.unwrap();
    assert_eq!(events.last().unwrap().kind, "job.expired");
}

/// Inserts a job row without pushing its task, as a crash between the two would leave it.
async fn insert_without_task(app: &TestApp, input: Value) -> String {
    let account = app.account_id().await;
    let now = now_ms();
    let new = NewJob {
        id: new_id(IdKind::Job),
        account_id: account,
        kind: JobKind::Image,
        model: "local/image".to_owned(),
        provider: "local".to_owned(),
        input,
        metadata: json!({}),
        webhook: None,
        route: vec![RouteEntry {
            model: "local/image".to_owned(),
            provider: "local".to_owned(),
            upstream_model: "image".to_owned(),
        }],
        created_at: now,
        deadline_at: now + 600_000,
    };
    let mut tx = app.engine().db.begin().await.unwrap();
    jobs::insert(&mut *tx, &new).await.unwrap();
    tx.commit().await.unwrap();
    new.id
}

async fn a_job_whose_task_was_lost_is_picked_up_by_the_reaper(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.jobs.reaper_grace = Duration::from_millis(500)
    })
    .await;
    let id = insert_without_task(&app, json!({"prompt": "orphan", "size": "64x64"})).await;
    let job = app.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "completed", "{job}");
}

async fn duplicate_and_stale_tasks_change_nothing(backend: Backend) {
    // A long grace keeps the reaper out of this: only the tasks below touch the job.
    let app = TestApp::start_with(backend, |c| {
        c.jobs.reaper_grace = Duration::from_millis(600_000)
    })
    .await;
    let id = insert_without_task(&app, json!({"prompt": "twice", "size": "64x64"})).await;
    let engine = app.engine();

    advance(engine, &Advance::new(&id, 7)).await.unwrap();
    assert_eq!(
        app.job(&id).await["status"],
        "queued",
        "a stale task must not act"
    );

    let task = Advance::new(&id, 0);
    let runs = futures::future::join_all((0..4).map(|_| advance(engine, &task))).await;
    for r in runs {
        r.unwrap();
    }
    let job = app.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["outputs"].as_array().unwrap().len(), 1);
    let events = engine.db.events_after(&id, 0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["job.started", "job.completed"],
        "one claim, one result"
    );

    // A late task after completion does nothing either.
    advance(engine, &Advance::new(&id, job_seq(&app, &id).await))
        .await
        .unwrap();
    assert_eq!(engine.db.events_after(&id, 0, 100).await.unwrap().len(), 2);
}

/// A row whose input no longer reads as a job input (written by hand, or by an older
/// version) fails with `internal_error` instead of reaching a provider, and still shows
/// its input as stored.
async fn a_stored_input_that_does_not_read_fails_the_job(backend: Backend) {
    let app = TestApp::start(backend).await;
    let input = json!({"prompt": "p", "size": "huge"});
    let id = insert_without_task(&app, input.clone()).await;
    advance(app.engine(), &Advance::new(&id, 0)).await.unwrap();
    let job = app.job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "internal_error");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stored input cannot be read"),
        "{job}"
    );
    assert_eq!(job["input"], input);
}

async fn job_seq(app: &TestApp, id: &str) -> i64 {
    mediagate_engine::db::jobs::find(app.engine().db.pool(), id)
        .await
        .unwrap()
        .unwrap()
        .check_seq
}

/// ffprobe must see one H.264 stream of about `seconds`, and ffmpeg must decode it cleanly.
pub fn assert_playable_h264(bytes: &[u8], seconds: f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.mp4");
    std::fs::write(&path, bytes).unwrap();
    let probe = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,codec_type,width,height",
            "-show_entries",
            "format=duration",
            "-of",
            "json",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe is installed (scripts/test installs ffmpeg)");
    assert!(
        probe.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let info: Value = serde_json::from_slice(&probe.stdout).unwrap();
    let video = info["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == "video")
        .expect("a video stream");
    assert_eq!(video["codec_name"], "h264", "{info}");
    let duration: f64 = info["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (duration - seconds).abs() < 0.2,
        "duration {duration}, wanted {seconds}"
    );
    let decode = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decode.status.success() && decode.stderr.is_empty(),
        "ffmpeg decode: {}",
        String::from_utf8_lossy(&decode.stderr)
    );
}

/// Finished tasks do not pile up in the queue backend: after a vacuum, the tasks of
/// completed jobs (and their deliveries) are gone from Redis or the SQLite queue.
async fn finished_tasks_are_cleared_from_the_queue(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let job = app
            .submit(json!({"model": "local/image", "input": {"prompt": format!("v{i}"), "size": "64x64"}}))
            .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        app.wait_terminal(id, WAIT).await;
    }
    let queue = &app.engine().queue;
    let leftovers = || async {
        match queue.connection() {
            Connection::Embedded(pool) => {
                let row: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM Jobs")
                    .fetch_one(pool)
                    .await
                    .unwrap();
                row.0 as usize
            }
            Connection::Redis(conn) => {
                let mut conn = conn.clone();
                let pattern = format!("{}*", queue.prefix());
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(pattern)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                // Per-task metadata keys; the queue's fixed keys are a handful.
                keys.iter().filter(|k| k.contains(":meta:")).count()
            }
        }
    };
    // Acknowledgements may lag the job's completion by a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = leftovers().await;
    assert!(
        before >= ids.len(),
        "finished tasks are kept until a vacuum: {before}"
    );
    let removed = queue.vacuum().await.unwrap();
    assert!(removed >= ids.len(), "removed {removed}");
    assert_eq!(leftovers().await, 0);
}
