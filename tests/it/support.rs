//! The test harness: mediagate started in-process on port 0 against a chosen backend,
//! with a unique Postgres schema and Redis prefix per test, and an HTTP client with a key.

use std::time::Duration;

use mediagate::api::auth::{generate_key, hash_key};
use mediagate::app::{self, Roles, Running};
use mediagate::config::Config;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite + the embedded queue + media on local disk.
    Embedded,
    /// Postgres + Redis + S3-compatible storage.
    Production,
}

pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The S3-compatible endpoint of the production backend (scripts/test starts one).
pub fn s3_endpoint() -> String {
    std::env::var("TEST_S3_ENDPOINT").expect(
        "TEST_S3_ENDPOINT is not set: run scripts/test, or start an S3-compatible server \
         (moto_server -p 9000) and export TEST_S3_ENDPOINT=http://127.0.0.1:9000",
    )
}

/// A fresh bucket on the test S3 endpoint.
pub async fn fresh_bucket() -> String {
    let bucket = format!("t{}", uuid::Uuid::now_v7().simple());
    let res = reqwest::Client::new()
        .put(format!("{}/{bucket}", s3_endpoint()))
        .send()
        .await
        .expect("S3 endpoint reachable");
    assert!(res.status().is_success(), "create bucket: {}", res.status());
    bucket
}

/// `AWS_*` settings for the test S3 endpoint (object_store key names, lower case).
pub fn s3_settings() -> Vec<(String, String)> {
    [
        ("aws_endpoint", s3_endpoint()),
        ("aws_allow_http", "true".to_owned()),
        ("aws_region", "us-east-1".to_owned()),
        ("aws_access_key_id", "test".to_owned()),
        ("aws_secret_access_key", "test".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A fresh schema in the test Postgres; the URL points its search path there.
pub async fn fresh_schema() -> String {
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&postgres_url())
        .await
        .expect("Postgres reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let sep = if postgres_url().contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{sep}options=-c%20search_path%3D{schema}", postgres_url())
}

/// A webhook delivery schedule as the configuration file writes it (`"0,200ms,5s"`).
pub fn schedule(text: &str) -> Vec<Duration> {
    mediagate_engine::config::schedule::parse(text).expect("a valid schedule")
}

/// A configuration for `backend` in a fresh temporary data directory, tuned for quick tests.
pub fn test_config(backend: Backend, data_dir: &std::path::Path) -> Config {
    let mut c = Config {
        bind: "127.0.0.1:0".to_owned(),
        data_dir: data_dir.to_path_buf(),
        log: std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ..Config::default()
    };
    c.queue.prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    c.queue.poll_interval_ms = 10;
    c.queue.heartbeat_interval_ms = 1000;
    c.queue.missed_heartbeats = 2;
    c.jobs.retry_base = Duration::from_millis(20);
    c.jobs.retry_max = Duration::from_millis(200);
    c.jobs.reaper_interval = Duration::from_millis(200);
    c.jobs.reaper_grace = Duration::from_millis(3000);
    c.jobs.submit_grace = Duration::from_millis(3000);
    c.shutdown_drain_secs = 5;
    // Many apps share the one test Postgres (100 connections): each opens what it uses.
    c.database_min_connections = 1;
    if backend == Backend::Production {
        c.redis_url = Some(redis_url());
    }
    c
}

/// The backend this run of the integration binary tests: `TEST_BACKEND` (not
/// `MEDIAGATE_…`: the processes the tests start would take that for a setting)
/// (`embedded`, the default, or `production`). scripts/test runs the binary once per
/// backend; plain `cargo test` runs the embedded suite and says, once, that the
/// production one was not run.
pub fn backend() -> Backend {
    static NOTICE: std::sync::Once = std::sync::Once::new();
    match std::env::var(BACKEND_VAR).as_deref() {
        Ok("embedded") => Backend::Embedded,
        Ok("production") => Backend::Production,
        Err(std::env::VarError::NotPresent) => {
            NOTICE.call_once(|| {
                // Straight to the stream: libtest captures `eprintln!` of passing tests.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "note: embedded backend only; the production suite was not run \
                     ({BACKEND_VAR}=production, or scripts/test, runs it)"
                );
            });
            Backend::Embedded
        }
        Ok(other) => panic!("{BACKEND_VAR}={other:?}: expected `embedded` or `production`"),
        Err(e) => panic!("{BACKEND_VAR}: {e}"),
    }
}

pub const BACKEND_VAR: &str = "TEST_BACKEND";

/// How long [`TestApp::finish`] lets work that is due settle before it calls it left over.
const SETTLE: Duration = Duration::from_secs(30);

/// A change to the test config.
type Tweak<'a> = Box<dyn FnOnce(&mut Config) + 'a>;

/// Starts a [`TestApp`]: `TestApp::builder(backend).config(|c| ...).roles(...).start()`.
pub struct TestAppBuilder<'a> {
    backend: Backend,
    roles: Roles,
    tweaks: Vec<Tweak<'a>>,
}

impl<'a> TestAppBuilder<'a> {
    /// Adjusts the test config (after the backend's settings are in).
    pub fn config(mut self, tweak: impl FnOnce(&mut Config) + 'a) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// The roles the app runs (default: [`Roles::SERVE`], API and worker). Without the
    /// worker nothing runs jobs, and the end-of-test check does not wait for them.
    pub fn roles(mut self, roles: Roles) -> Self {
        self.roles = roles;
        self
    }

    pub async fn start(self) -> TestApp {
        mediagate::telemetry::init(
            &std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            "pretty",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(self.backend, dir.path());
        if self.backend == Backend::Production {
            config.database_url = Some(fresh_schema().await);
            config.storage_url = Some(format!("s3://{}", fresh_bucket().await));
            config.storage_options = s3_settings().into_iter().collect();
        }
        for tweak in self.tweaks {
            tweak(&mut config);
        }
        let running = app::start(config, self.roles)
            .await
            .expect("mediagate starts");
        let url = format!("http://{}", running.addr.expect("api role has an address"));
        let key = new_key(&running, "acct_test").await;
        TestApp {
            url,
            key,
            client: reqwest::Client::new(),
            running: Some(running),
            worker: self.roles.worker,
            left_unfinished: std::sync::Mutex::new(Vec::new()),
            finished: false,
            _dir: dir,
        }
    }
}

/// mediagate in-process for one test. When it is dropped at the end of a test that has
/// not failed otherwise, it checks that no work was left unprocessed (see
/// [`TestApp::finish`]) and fails the test if some was.
pub struct TestApp {
    pub url: String,
    pub key: String,
    pub client: reqwest::Client,
    pub running: Option<Running>,
    worker: bool,
    /// Jobs the test means to leave queued or in progress.
    left_unfinished: std::sync::Mutex<Vec<String>>,
    finished: bool,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub fn builder<'a>(backend: Backend) -> TestAppBuilder<'a> {
        TestAppBuilder {
            backend,
            roles: Roles::SERVE,
            tweaks: Vec::new(),
        }
    }

    pub async fn start(backend: Backend) -> TestApp {
        Self::builder(backend).start().await
    }

    /// Starts `serve` with the test config, adjusted by `tweak`.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
        Self::builder(backend).config(tweak).start().await
    }

    /// Says that the test means to end with job `id` still queued or in progress (a job
    /// parked on an upstream that never answers, say), so the end-of-test check spares it.
    pub fn leaves_unfinished(&self, id: &str) {
        self.left_unfinished.lock().unwrap().push(id.to_owned());
    }

    /// The end-of-test check, also run on drop: nothing this app was given is left
    /// unprocessed. The rows are the truth (tasks carry ids only, and a lost, stale or
    /// duplicate task is harmless), so "unprocessed" means, once due work has had up to
    /// `SETTLE` to run:
    /// - a job still queued or in progress that the test did not declare with
    ///   [`TestApp::leaves_unfinished`];
    /// - a webhook delivery that is due (pending, its attempt time passed) and that no
    ///   worker holds. A delivery waiting for a later retry is scheduled, not left over;
    ///   one being attempted belongs to the worker attempting it;
    /// - a task of ours in the queue backend that is due and that no worker has taken
    ///   (even a stale one: the queue must still drain).
    ///
    /// Fails the test naming what was left.
    pub async fn finish(mut self) {
        self.finished = true;
        self.check_processed().await;
    }

    async fn check_processed(&self) {
        let Some(running) = self.running.as_ref() else {
            return;
        };
        let pool = running.engine.db.pool();
        let allowed = self.left_unfinished.lock().unwrap().clone();
        let start = std::time::Instant::now();
        loop {
            let now = mediagate_engine::ids::now_ms();
            let jobs: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, status FROM jobs WHERE status IN ('queued', 'in_progress') ORDER BY id",
            )
            .fetch_all(pool)
            .await
            .expect("list unfinished jobs");
            let jobs: Vec<_> = jobs
                .into_iter()
                .filter(|(id, _)| !allowed.contains(id))
                .collect();
            let deliveries: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, job_id FROM webhook_deliveries WHERE status = 'pending' \
                 AND next_attempt_at <= $1 AND claimed_until <= $1 ORDER BY id",
            )
            .bind(now)
            .fetch_all(pool)
            .await
            .expect("list due deliveries");
            let tasks = due_tasks(&running.engine.queue).await;
            if jobs.is_empty() && deliveries.is_empty() && tasks.is_empty() {
                return;
            }
            // Without a worker nothing will change: report at once.
            if !self.worker || start.elapsed() >= SETTLE {
                panic!(
                    "work left unprocessed at the end of the test (after {:?}): \
                     unfinished jobs (id, status) {jobs:?}; due webhook deliveries \
                     (id, job) {deliveries:?}; due tasks still queued {tasks:?}. A test that means to leave a job running \
                     says so with `app.leaves_unfinished(id)`.",
                    start.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn engine(&self) -> &mediagate_engine::Engine {
        &self.running.as_ref().expect("running").engine
    }

    /// The account behind this app's key.
    pub async fn account_id(&self) -> String {
        mediagate_engine::db::keys::caller_by_hash(
            self.engine().db.pool(),
            &mediagate::api::auth::hash_key(&self.key),
        )
        .await
        .expect("key lookup")
        .expect("the test key exists")
        .account_id
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
    }

    /// GET `path` with the key and read the JSON answer, whatever its status.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("a JSON body")
    }

    /// GET `path` with the key, asserting the answer's status; returns its JSON body.
    pub async fn get_expect(&self, path: &str, status: u16) -> Value {
        answer(self.get(path)).await.expect(status)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
    }

    /// POST `path` (no body) with the key, asserting the answer's status; returns its
    /// JSON body.
    pub async fn post_expect(&self, path: &str, status: u16) -> Value {
        answer(self.post(path)).await.expect(status)
    }

    /// POSTs `body` to `/v1/jobs`; the [`Answer`] asserts the status the test expects.
    pub async fn post_job(&self, body: &Value) -> Answer {
        answer(self.post("/v1/jobs").json(body)).await
    }

    /// The status `method path` gets with another account's key (404 where ours would see
    /// something).
    pub async fn status_for_stranger(&self, method: reqwest::Method, path: &str) -> StatusCode {
        let stranger = new_key(self.running.as_ref().expect("running"), "acct_stranger").await;
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(stranger)
            .send()
            .await
            .expect("request")
            .status()
    }

    /// Submits a job and returns the 202 body.
    pub async fn submit(&self, body: Value) -> Value {
        self.post_job(&body).await.accepted()
    }

    pub async fn job(&self, id: &str) -> Value {
        self.get_expect(&format!("/v1/jobs/{id}"), 200).await
    }

    /// Polls until the job is terminal (or fails the test after `limit`).
    pub async fn wait_terminal(&self, id: &str, limit: Duration) -> Value {
        let start = std::time::Instant::now();
        loop {
            let job = self.job(id).await;
            let status = job["status"].as_str().unwrap_or_default().to_owned();
            if matches!(
                status.as_str(),
                "completed" | "failed" | "cancelled" | "expired"
            ) {
                return job;
            }
            assert!(
                start.elapsed() < limit,
                "job {id} still {status} after {limit:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Tasks of ours in the queue backend that are due and that no worker has taken:
/// `(queue, how many)`.
async fn due_tasks(queue: &mediagate_workers::Queue) -> Vec<(String, u64)> {
    let now_s = mediagate_engine::ids::now_ms() / 1000;
    let ours = format!("{}:", queue.prefix());
    match queue.connection() {
        // apalis-sqlite: a task waits as `Pending` until a worker fetches it.
        mediagate_workers::Connection::Embedded(pool) => {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT job_type, COUNT(*) FROM Jobs WHERE status = 'Pending' \
                 AND (run_at IS NULL OR run_at <= ?1) AND substr(job_type, 1, length(?2)) = ?2 \
                 GROUP BY job_type ORDER BY job_type",
            )
            .bind(now_s)
            .bind(&ours)
            .fetch_all(pool)
            .await
            .expect("count due tasks");
            rows.into_iter().map(|(q, n)| (q, n as u64)).collect()
        }
        // apalis-redis: due tasks wait in `{queue}:active`, or in `{queue}:scheduled`
        // (scored by due time, in seconds) until a worker moves them.
        mediagate_workers::Connection::Redis(conn) => {
            let mut conn = conn.clone();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{ours}*"))
                .query_async(&mut conn)
                .await
                .expect(
                    "list queue keys (a test that takes Redis away calls `app.finish()` first)",
                );
            let mut due = Vec::new();
            for key in keys {
                let n: u64 = if key.ends_with(":active") {
                    redis::cmd("LLEN").arg(&key).query_async(&mut conn).await
                } else if key.ends_with(":scheduled") {
                    redis::cmd("ZCOUNT")
                        .arg(&key)
                        .arg("-inf")
                        .arg(now_s)
                        .query_async(&mut conn)
                        .await
                } else {
                    continue;
                }
                .expect("count due tasks");
                if n > 0 {
                    due.push((key, n));
                }
            }
            due.sort();
            due
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // A test that failed already says why; a second panic would abort the run.
        if self.finished || std::thread::panicking() {
            return;
        }
        let handle = tokio::runtime::Handle::current();
        assert!(
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread,
            "a TestApp's end-of-test check needs a multi-thread runtime: \
             #[tokio::test(flavor = \"multi_thread\")], or call `app.finish().await`"
        );
        tokio::task::block_in_place(|| handle.block_on(self.check_processed()));
    }
}

/// An HTTP answer read in full, for the status checks below: each asserts the status
/// (showing the body when it differs) and returns the parsed JSON body.
pub struct Answer {
    pub status: StatusCode,
    pub body: bytes::Bytes,
}

/// Sends `req` and reads the whole answer.
pub async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let res = req.send().await.expect("request");
    Answer {
        status: res.status(),
        body: res.bytes().await.expect("a body"),
    }
}

impl Answer {
    /// Asserts `status`; returns the JSON body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("a JSON body ({e}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    /// Asserts `status`; returns the body as text.
    #[track_caller]
    pub fn text(self, status: u16) -> String {
        let text = String::from_utf8_lossy(&self.body).into_owned();
        assert_eq!(self.status.as_u16(), status, "{text}");
        text
    }

    #[track_caller]
    pub fn accepted(self) -> Value {
        self.expect(202)
    }

    #[track_caller]
    pub fn bad_request(self) -> Value {
        self.expect(400)
    }
}

/// The status `req` is answered with (the body is not read: it may be a live stream).
pub async fn status_of(req: reqwest::RequestBuilder) -> StatusCode {
    req.send().await.expect("request").status()
}

/// A new key for `account` on a running app.
pub async fn new_key(running: &Running, account: &str) -> String {
    let key = generate_key();
    running
        .engine
        .db
        .insert_key(account, "test", &hash_key(&key), &key[..10])
        .await
        .expect("insert key");
    key
}

// The backend matrix lives in scripts/test, which runs this binary once per backend
// (`TEST_BACKEND`). Which tests run in which pass is said by the macro that
// makes them, and shows in the test's name, which the script filters on:
// - `on_both_backends!`: `name::per_backend`, run in both passes. For everything the
//   backend can change: SQL, fencing, queues, sweepers, processes, limits that bite on
//   Postgres.
// - `on_embedded!`: `name::embedded`, run once, in the embedded pass. For what no backend
//   reaches: provider adapters against their fakes, input validation, HTTP details.
// - `on_production!`: `name::production`, the production pass only (ignored otherwise:
//   plain `cargo test` needs no services).

/// Tests whose outcome may depend on the backend: each becomes `name::per_backend`, run on
/// the backend of the pass ([`support::backend`](crate::support::backend)).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn per_backend() {
                super::$name($crate::support::backend()).await
            }
        }
    )*};
}

/// Tests no backend can change: each becomes `name::embedded`, run once on the embedded
/// backend (scripts/test leaves them out of the production pass).
#[macro_export]
macro_rules! on_embedded {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                super::$name($crate::support::Backend::Embedded).await
            }
        }
    )*};
}

/// Tests of the production backend alone (Redis, Postgres): each becomes
/// `name::production`, ignored unless the production pass asks for it.
#[macro_export]
macro_rules! on_production {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = "production backend: TEST_BACKEND=production, run by scripts/test"]
            async fn production() {
                super::$name().await
            }
        }
    )*};
}

/// The environment of a `mediagate` process for `backend`: its own data directory, queue
/// prefix and (production) schema, bucket and S3 settings, as an operator would set them.
pub async fn process_env(backend: Backend, data_dir: &std::path::Path) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "MEDIAGATE_DATA_DIR".to_owned(),
            data_dir.display().to_string(),
        ),
        (
            "MEDIAGATE_QUEUE__PREFIX".to_owned(),
            format!("p{}", uuid::Uuid::now_v7().simple()),
        ),
    ];
    if backend == Backend::Production {
        env.push(("MEDIAGATE_DATABASE_URL".to_owned(), fresh_schema().await));
        // As test_config: the processes share the test Postgres with every other test.
        env.push((
            "MEDIAGATE_DATABASE_MIN_CONNECTIONS".to_owned(),
            "1".to_owned(),
        ));
        env.push(("MEDIAGATE_REDIS_URL".to_owned(), redis_url()));
        // Media in S3, configured the usual way: AWS_* variables.
        env.push((
            "MEDIAGATE_STORAGE_URL".to_owned(),
            format!("s3://{}", fresh_bucket().await),
        ));
        env.extend(
            s3_settings()
                .into_iter()
                .map(|(k, v)| (k.to_uppercase(), v)),
        );
    }
    env
}

/// A child process that is killed if the test ends early (a failed assertion must not
/// leave workers running on the machine).
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Proc {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// Runs the Python script `tests/it/NAME` (which drives the official `openai` package)
/// against `app`'s `/v1` with its key, and returns what it printed. Fails the test when
/// the package is missing or the script fails, with what it said.
pub async fn run_openai_sdk_script(app: &TestApp, name: &str) -> String {
    let script = format!("{}/tests/it/{name}", env!("CARGO_MANIFEST_DIR"));
    let (url, key) = (format!("{}/v1", app.url), app.key.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
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
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{name} failed: {stderr}\n{stdout}");
    stdout
}
