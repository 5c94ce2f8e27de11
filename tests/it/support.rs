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
    if backend == Backend::Production {
        c.redis_url = Some(redis_url());
    }
    c
}

pub struct TestApp {
    pub url: String,
    pub key: String,
    pub client: reqwest::Client,
    pub running: Option<Running>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn start(backend: Backend) -> TestApp {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts `serve` with the test config, adjusted by `tweak`.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
        mediagate::telemetry::init(
            &std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            "pretty",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(backend, dir.path());
        if backend == Backend::Production {
            config.database_url = Some(fresh_schema().await);
            config.storage_url = Some(format!("s3://{}", fresh_bucket().await));
            config.storage_options = s3_settings().into_iter().collect();
        }
        tweak(&mut config);
        let running = app::start(config, Roles::SERVE)
            .await
            .expect("mediagate starts");
        let url = format!("http://{}", running.addr.expect("api role has an address"));
        let key = new_key(&running, "acct_test").await;
        TestApp {
            url,
            key,
            client: reqwest::Client::new(),
            running: Some(running),
            _dir: dir,
        }
    }

    pub fn engine(&self) -> &mediagate_engine::Engine {
        &self.running.as_ref().expect("running").engine
    }

    /// The account behind this app's key.
    pub async fn account_id(&self) -> String {
        self.engine()
            .db
            .caller_by_key_hash(&mediagate::api::auth::hash_key(&self.key))
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

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
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
        let res = self
            .post("/v1/jobs")
            .json(&body)
            .send()
            .await
            .expect("submit");
        let status = res.status();
        let json: Value = res.json().await.expect("json");
        assert_eq!(status, StatusCode::ACCEPTED, "{json}");
        json
    }

    pub async fn job(&self, id: &str) -> Value {
        let res = self
            .get(&format!("/v1/jobs/{id}"))
            .send()
            .await
            .expect("get job");
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.expect("json")
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

/// Runs an async test body once per backend, as `name::embedded` and `name::production`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                super::$name($crate::support::Backend::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn production() {
                super::$name($crate::support::Backend::Production).await
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
