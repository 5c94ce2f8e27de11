//! What bounds a worker: CPU-bound renders run in a pool sized to the cores and each runs
//! once however many are submitted; a disabled `local` provider is gone; a job whose
//! steps keep failing ends; a queue namespace belongs to one database; nonsense settings
//! are refused.

use std::time::Duration;

use mediagate::app::{self, Roles};
use mediagate::config::{Config, ProviderConfig};
use mediagate_engine::providers::Provider;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::{Backend, TestApp, fresh_schema, redis_url, test_config};

on_both_backends!(
    renders_beyond_the_cores_each_run_once,
    a_disabled_local_provider_is_gone,
    a_job_whose_writes_keep_failing_ends,
);

/// Renders started by the app's `local` provider.
fn renders_started(app: &TestApp) -> u64 {
    match app.engine().providers.get("local") {
        Some(Provider::Local(local)) => local.pool().renders_started(),
        _ => panic!("local provider missing"),
    }
}

fn local_pool_state(app: &TestApp) -> String {
    match app.engine().providers.get("local") {
        Some(Provider::Local(local)) => format!("{:?}", local.pool()),
        _ => "missing".to_owned(),
    }
}

/// Far more renders than cores, each of which would outlast a step's time limit if they
/// all ran at once: every job completes once, and nothing is rendered twice.
async fn renders_beyond_the_cores_each_run_once(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        // Two renders at once, a short step limit and an eager reaper: 60 renders at
        // once would each take ~30 times their own time, outlast the step limit and be
        // abandoned and run again, for ever.
        c.providers.insert(
            "local".into(),
            ProviderConfig {
                max_concurrency: Some(2),
                ..ProviderConfig::default()
            },
        );
        c.jobs.task_timeout = Duration::from_secs(5);
        c.jobs.reaper_grace = Duration::from_millis(2000);
    })
    .await;
    let jobs = 60;
    let mut ids = Vec::new();
    for i in 0..jobs {
        let job = app
            .submit(json!({"model": "local/video", "input": {
                "prompt": format!("render {i}"), "duration": 1, "resolution": "360p",
                "simulate": {"latency_ms": 0}
            }}))
            .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let start = std::time::Instant::now();
    for id in &ids {
        loop {
            let row = mediagate_engine::db::jobs::find(app.engine().db.pool(), id)
                .await
                .unwrap()
                .unwrap();
            if row.status.is_terminal() {
                assert_eq!(row.status.as_str(), "completed", "{row:?}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(400),
                "still {} after {:?} (now {}): {row:?}; local pool: {}",
                row.status.as_str(),
                start.elapsed(),
                mediagate_engine::ids::now_ms(),
                local_pool_state(&app)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // A step cut off by its watchdog while waiting on a slow database (not rendering)
    // may render again when it is retried; a loaded machine can cause a few of those.
    let renders = renders_started(&app);
    assert!(
        (jobs..=jobs + jobs / 10).contains(&renders),
        "{renders} renders for {jobs} jobs"
    );
    for id in &ids {
        let log = app
            .engine()
            .db
            .events_after(id, 0, 100)
            .await
            .expect("events");
        let completed = log.iter().filter(|e| e.kind == "job.completed").count();
        assert_eq!(completed, 1, "job {id} completed {completed} times");
    }
}

async fn a_disabled_local_provider_is_gone(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.providers.insert(
            "local".into(),
            ProviderConfig {
                enabled: false,
                ..ProviderConfig::default()
            },
        );
    })
    .await;
    let models = app.get_json("/v1/models").await;
    let local: Vec<&Value> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"].as_str().unwrap().starts_with("local/"))
        .collect();
    assert!(!local.is_empty(), "{models}");
    for m in local {
        assert_eq!(m["available"], false, "{m}");
    }
    for model in ["local/video", "local/image", "local/music"] {
        let res = app
            .post("/v1/jobs")
            .json(&json!({"model": model, "input": {"prompt": "free CPU?"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{model}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["param"], "model", "{body}");
    }
    let listed = app.get_json("/v1/jobs").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0, "{listed}");
}

/// A job whose every write of its events fails (here: the database refuses them, as
/// Postgres refuses a string it cannot store) fails after a bounded number of steps, with
/// an error an operator can read, instead of being retried for ever.
async fn a_job_whose_writes_keep_failing_ends(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.jobs.max_step_failures = 3).await;
    let job = app
        .submit(json!({"model": "local/video", "input": {
            "prompt": "poisoned", "duration": 1, "resolution": "360p",
            "simulate": {"latency_ms": 400}
        }}))
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    refuse_events_of(&app, backend, &id).await;
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "internal_error", "{done}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(message.contains("3 failed steps"), "{message}");
    // It stays failed: nothing picks it up again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.job(&id).await["status"], "failed");
}

/// Makes the database refuse every new event of `job_id`.
async fn refuse_events_of(app: &TestApp, backend: Backend, job_id: &str) {
    match backend {
        Backend::Embedded => {
            let sql = format!(
                "CREATE TRIGGER refuse_events BEFORE INSERT ON job_events \
                 WHEN NEW.job_id = '{job_id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            );
            let mut conn = app.engine().db.pool().acquire().await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        Backend::Production => {
            let mut conn = app.engine().db.pool().acquire().await.unwrap();
            for sql in [
                format!(
                    "CREATE FUNCTION refuse_events() RETURNS trigger AS $$ BEGIN \
                     IF NEW.job_id = '{job_id}' THEN RAISE EXCEPTION 'refused'; END IF; \
                     RETURN NEW; END $$ LANGUAGE plpgsql"
                ),
                "CREATE TRIGGER refuse_events BEFORE INSERT ON job_events \
                 FOR EACH ROW EXECUTE FUNCTION refuse_events()"
                    .to_owned(),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            }
        }
    }
}

crate::on_production!(a_queue_namespace_belongs_to_one_database);

/// Two deployments with their own databases cannot share a Redis queue namespace: the
/// second is refused at start, with a message saying what to change.
async fn a_queue_namespace_belongs_to_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = test_config(Backend::Production, dir.path());
        c.redis_url = Some(redis_url());
        c
    };
    let mut first = config();
    first.database_url = Some(fresh_schema().await);
    let prefix = first.queue.prefix.clone();
    let running = app::start(first, Roles::WORKER)
        .await
        .expect("first starts");

    let mut second = config();
    second.queue.prefix = prefix.clone();
    second.database_url = Some(fresh_schema().await);
    let refused = app::start(second, Roles::WORKER)
        .await
        .err()
        .expect("a second database on the same namespace is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("MEDIAGATE_QUEUE__PREFIX") && message.contains(&prefix),
        "{message}"
    );

    // apalis' server-wide list of queues holds none of ours once the reaper has swept.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let start = std::time::Instant::now();
    loop {
        let listed: Vec<String> = redis::cmd("ZRANGE")
            .arg("core:apalis:queues:list")
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !listed.iter().any(|q| q.starts_with(&format!("{prefix}:"))) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "our queues stay in apalis' global list: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;
}

crate::on_embedded!(nonsense_settings_are_refused);

/// Settings that would stop work, or end it at once, are refused at start.
async fn nonsense_settings_are_refused(backend: Backend) {
    type Tweak = fn(&mut Config);
    let cases: [(&str, Tweak); 5] = [
        ("jobs.worker_concurrency", |c| c.jobs.worker_concurrency = 0),
        ("jobs.task_timeout_secs", |c| {
            c.jobs.task_timeout = Duration::from_secs(0)
        }),
        ("jobs.deadline_secs", |c| {
            c.jobs.deadline = Duration::from_secs(0)
        }),
        ("jobs.max_step_failures", |c| c.jobs.max_step_failures = 0),
        ("providers.local", |c| {
            c.providers.insert(
                "local".into(),
                ProviderConfig {
                    max_concurrency: Some(0),
                    ..ProviderConfig::default()
                },
            );
        }),
    ];
    for (name, tweak) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(backend, dir.path());
        tweak(&mut c);
        let err = c.validate().expect_err(name).to_string();
        assert!(err.contains(name), "{name}: {err}");
    }
}
