//! Scale-out as separate processes: one `api`, several `worker`s, a worker killed with
//! SIGKILL mid-run and another stopped with SIGTERM; every job still completes once, and a
//! webhook whose worker is killed mid-delivery is still delivered.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::receiver::{Receiver, Reply};
use crate::support::{Backend, Proc, answer, process_env, status_of};
use mediagate_engine::billing::money::format_usd;

on_both_backends!(
    jobs_survive_killed_and_stopped_workers,
    webhook_survives_a_worker_killed_mid_delivery,
    sigterm_waits_for_steps_one_drain_time,
);

struct Cluster {
    env: Vec<(String, String)>,
    data_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn new(backend: Backend) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let settings = [
            ("MEDIAGATE_LOG", "info"),
            ("MEDIAGATE_LOG_FORMAT", "json"),
            ("MEDIAGATE_BIND", "127.0.0.1:0"),
            ("MEDIAGATE_QUEUE__POLL_INTERVAL_MS", "10"),
            ("MEDIAGATE_QUEUE__HEARTBEAT_INTERVAL_MS", "1000"),
            ("MEDIAGATE_QUEUE__MISSED_HEARTBEATS", "3"),
            ("MEDIAGATE_JOBS__REAPER_INTERVAL_MS", "200"),
            ("MEDIAGATE_JOBS__REAPER_GRACE_MS", "4000"),
            ("MEDIAGATE_JOBS__SUBMIT_GRACE_MS", "4000"),
            ("MEDIAGATE_JOBS__TASK_TIMEOUT_SECS", "20"),
            ("MEDIAGATE_SHUTDOWN_DRAIN_SECS", "10"),
            ("MEDIAGATE_WEBHOOK_ALLOW_CIDRS", "127.0.0.0/8"),
            ("MEDIAGATE_WEBHOOKS__TIMEOUT_MS", "3000"),
            ("MEDIAGATE_WEBHOOKS__SCHEDULE", "0,1s,1s,1s,1s"),
        ];
        let mut env: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend(process_env(backend, dir.path()).await);
        Cluster {
            env,
            data_dir: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mediagate"));
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn create_key(&self) -> String {
        let out = self
            .command(&["keys", "create", "--name", "ci", "--account", "acct_proc"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Starts `role`; for `api`, waits for its address in the log.
    fn spawn(&self, role: &str) -> (Proc, Option<String>) {
        let mut child = Proc(
            self.command(&[role])
                .stderr(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let addr: String = addr
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    let _ = tx.send(addr);
                }
                if std::env::var_os("TEST_CHILD_LOGS").is_some() {
                    eprintln!("[child] {line}");
                }
            }
        });
        let addr = (role == "api").then(|| {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("api prints its address")
        });
        (child, addr)
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

async fn jobs_survive_killed_and_stopped_workers(backend: Backend) {
    let cluster = Cluster::new(backend).await;
    let key = cluster.create_key();
    let (mut api, addr) = cluster.spawn("api");
    let base = format!("http://{}", addr.unwrap());
    let (mut doomed, _) = cluster.spawn("worker");
    let (mut stopping, _) = cluster.spawn("worker");
    let client = reqwest::Client::new();

    let mut ids = Vec::new();
    for i in 0..12 {
        let res = client
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(&key)
            .json(&json!({"model": "local/video", "input": {"prompt": format!("clip {i}"), "duration": 1,
                "resolution": "360p", "simulate": {"latency_ms": 300 + 100 * i, "progress_steps": 2}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let job: Value = res.json().await.unwrap();
        ids.push(job["id"].as_str().unwrap().to_owned());
    }

    let status_of = |id: String| {
        let req = client.get(format!("{base}/v1/jobs/{id}")).bearer_auth(&key);
        async move {
            req.send().await.unwrap().json::<Value>().await.unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    // Kill one worker as soon as work is under way, with no chance to clean up.
    let start = Instant::now();
    while status_of(ids[0].clone()).await == "queued" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no worker picked up work"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&doomed, "-KILL");
    doomed.wait().unwrap();

    // Stop the other one gracefully while jobs are still pending; it must exit cleanly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&stopping, "-TERM");
    let exit = wait_exit(&mut stopping, Duration::from_secs(30));
    assert!(
        exit.success(),
        "SIGTERM must end the worker cleanly, got {exit:?}"
    );

    // A fresh worker finishes everything that is left.
    let (mut survivor, _) = cluster.spawn("worker");
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &ids {
        loop {
            let status = status_of(id.clone()).await;
            if status == "completed" {
                break;
            }
            assert!(
                !["failed", "cancelled", "expired"].contains(&status.as_str()),
                "{id} ended {status}"
            );
            assert!(Instant::now() < deadline, "{id} still {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Exactly one result: one completed event, one output.
        let req = client
            .get(format!("{base}/v1/jobs/{id}/events"))
            .bearer_auth(&key);
        let events = answer(req).await.text(200);
        let completed = events
            .lines()
            .filter(|l| *l == "event: job.completed")
            .count();
        assert_eq!(completed, 1, "{id}: {events}");
    }

    signal(&survivor, "-TERM");
    assert!(wait_exit(&mut survivor, Duration::from_secs(30)).success());

    // `keys list` shows the key (not its secret); after `keys revoke` it no longer works.
    let list = cluster.command(&["keys", "list"]).output().unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    let line = list
        .lines()
        .find(|l| l.contains("acct_proc"))
        .expect("the key is listed");
    assert!(!line.contains(&key), "keys list must not show the secret");
    let key_id = line.split('\t').next().unwrap();
    let revoked = cluster
        .command(&["keys", "revoke", key_id])
        .output()
        .unwrap();
    assert!(revoked.status.success());
    // The API trusts a verified key for up to MEDIAGATE_AUTH_CACHE_MS (2 s by default).
    let revoked_at = Instant::now();
    loop {
        let res = client
            .get(format!("{base}/v1/jobs"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(4),
            "a revoked key still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&api, "-TERM");
    assert!(wait_exit(&mut api, Duration::from_secs(30)).success());
}

async fn webhook_survives_a_worker_killed_mid_delivery(backend: Backend) {
    let cluster = Cluster::new(backend).await;
    let key = cluster.create_key();
    let (_api, addr) = cluster.spawn("api");
    let base = format!("http://{}", addr.unwrap());
    let (mut doomed, _) = cluster.spawn("worker");
    // The first attempt is held open: its worker dies while waiting for the answer.
    let rx = Receiver::start(|n, _| {
        if n == 0 {
            Reply::ok().after(Duration::from_secs(60))
        } else {
            Reply::ok()
        }
    })
    .await;
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(&key)
        .json(
            &json!({"model": "local/image", "input": {"prompt": "k", "size": "64x64"},
            "webhook": {"url": rx.url("/hook")}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let job: Value = res.json().await.unwrap();
    let id = job["id"].as_str().unwrap();

    let first = rx.wait_hits(1, Duration::from_secs(30)).await;
    signal(&doomed, "-KILL");
    doomed.wait().unwrap();
    let (_survivor, _) = cluster.spawn("worker");

    // Once the dead worker's hold lapses, another worker makes the attempt again: the
    // same event, the same webhook-id.
    let hits = rx.wait_hits(2, Duration::from_secs(60)).await;
    assert_eq!(hits[1].header("webhook-id"), first[0].header("webhook-id"));
    assert_eq!(hits[1].json()["data"]["id"], id);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let req = client
            .get(format!("{base}/v1/jobs/{id}/deliveries"))
            .bearer_auth(&key);
        let log = answer(req).await.expect(200);
        if log["data"][0]["status"] == "delivered" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recorded as delivered: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker stopped while a step is stuck on an upstream that never answers waits for it
/// the drain time once, from the signal, then exits cleanly; the job is left for others.
async fn sigterm_waits_for_steps_one_drain_time(backend: Backend) {
    let mut cluster = Cluster::new(backend).await;
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let drain = Duration::from_secs(4);
    for (k, v) in [
        ("MEDIAGATE_SHUTDOWN_DRAIN_SECS", drain.as_secs().to_string()),
        (
            "MEDIAGATE_PROVIDERS__BFL__BASE_URL",
            format!("http://{}", hanging.local_addr().unwrap()),
        ),
        ("MEDIAGATE_PROVIDERS__BFL__TIMEOUT_MS", "15000".to_owned()),
        ("BFL_API_KEY", "bfl-test-key".to_owned()),
    ] {
        cluster.env.retain(|(name, _)| name != k);
        cluster.env.push((k.to_owned(), v));
    }
    let key = cluster.create_key();
    let (_api, addr) = cluster.spawn("api");
    let (mut worker, _) = cluster.spawn("worker");
    assert_eq!(status_of(reqwest::Client::new()
        .post(format!("http://{}/v1/jobs", addr.unwrap()))
        .bearer_auth(&key)
        .json(&json!({"model": "black-forest-labs/flux-1.1-pro", "input": {"prompt": "never"}}))).await, StatusCode::ACCEPTED);
    // The worker's submission reaches the upstream, which holds it without answering.
    let (_held, _) = tokio::time::timeout(Duration::from_secs(30), hanging.accept())
        .await
        .expect("the worker calls the upstream")
        .unwrap();
    let signalled = Instant::now();
    signal(&worker, "-TERM");
    let exit = wait_exit(&mut worker, Duration::from_secs(30));
    let took = signalled.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(took >= drain, "the stuck step was not waited for: {took:?}");
    // Once, not twice: the drain is shared by the queue's shutdown and the steps' wait
    // (plus a second for the runtime to let go of blocking threads).
    assert!(
        took < drain + Duration::from_secs(2),
        "stopping took {took:?} for a drain of {drain:?}"
    );
}

crate::on_production!(an_api_process_opens_its_database_connections_at_start);

/// A started API process already holds `database_min_connections` Postgres connections,
/// before any request: a burst right after a start then waits for none to open (each
/// costs a backend start and a TLS handshake). A minimum above the maximum is held to it.
async fn an_api_process_opens_its_database_connections_at_start() {
    use sqlx::Connection;
    for (min, max, held) in [("5", "8", 5..=8), ("20", "3", 3..=3)] {
        let mut cluster = Cluster::new(Backend::Production).await;
        // Names the process's connections, to count them.
        let name = format!("mg{}", uuid::Uuid::now_v7().simple());
        for (k, v) in cluster.env.iter_mut() {
            match k.as_str() {
                "MEDIAGATE_DATABASE_URL" => v.push_str(&format!("&application_name={name}")),
                "MEDIAGATE_DATABASE_MIN_CONNECTIONS" => *v = min.to_owned(),
                _ => {}
            }
        }
        cluster
            .env
            .push(("MEDIAGATE_DATABASE_MAX_CONNECTIONS".into(), max.into()));
        let (mut api, _) = cluster.spawn("api");
        let mut admin = sqlx::PgConnection::connect(&crate::support::postgres_url())
            .await
            .unwrap();
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(&name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        assert!(
            held.contains(&open),
            "min {min}, max {max}: {open} connections open"
        );
        let _ = api.kill();
    }
}

crate::on_embedded!(keys_create_names_its_database);

/// `keys create` says which database it wrote the key to, and warns when that database
/// is new (run from another folder than the server's, it would be).
async fn keys_create_names_its_database(backend: Backend) {
    let cluster = Cluster::new(backend).await;
    let out = cluster
        .command(&["keys", "create", "--name", "x"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    let db = cluster.data_dir.join("mediagate.db");
    assert!(said.contains(&db.display().to_string()), "{said}");
    assert!(said.contains("did not exist until now"), "{said}");
    let again = cluster
        .command(&["keys", "create", "--name", "y"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(!said.contains("did not exist"), "{said}");
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

on_both_backends!(
    a_balance_holds_across_two_api_processes,
    holds_of_a_killed_api_process_come_back,
    chat_leases_hold_across_two_api_processes,
    job_leases_hold_across_two_api_processes,
    a_killed_api_process_s_job_lease_comes_back,
);

/// `mediagate ARGS…` in the cluster's environment; fails the test unless it succeeds, and
/// returns what it printed.
fn run_cli(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.command(args).output().unwrap();
    assert!(
        out.status.success(),
        "mediagate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The account as `accounts show` prints it.
fn account(cluster: &Cluster, id: &str) -> Value {
    serde_json::from_str(&run_cli(cluster, &["accounts", "show", id])).unwrap()
}

/// A cluster whose local image costs a dollar (so $1.40 at the first tier).
/// Account `acme`, topped up with `usd` dollars through the CLI, and a key of it.
fn funded_key(cluster: &Cluster, usd: &str) -> String {
    run_cli(cluster, &["accounts", "create", "acme"]);
    run_cli(cluster, &["credits", "add", "acme", usd]);
    let key = run_cli(
        cluster,
        &["keys", "create", "--name", "ci", "--account", "acme"],
    );
    key.trim().to_owned()
}

/// A priced cluster with `extra` settings, account `acme` funded with `usd` and a key of
/// it, an API process and a worker: the key, the two processes and the API's base URL.
async fn funded_api(
    backend: Backend,
    extra: &[(&str, &str)],
    usd: &str,
) -> (Cluster, String, [Proc; 2], String) {
    let cluster = priced_cluster(backend, extra).await;
    let key = funded_key(&cluster, usd);
    let (api, addr) = cluster.spawn("api");
    let (worker, _) = cluster.spawn("worker");
    let base = format!("http://{}", addr.unwrap());
    (cluster, key, [api, worker], base)
}

async fn priced_cluster(backend: Backend, extra: &[(&str, &str)]) -> Cluster {
    let mut cluster = Cluster::new(backend).await;
    let catalog = cluster.data_dir.join("catalog.toml");
    std::fs::write(&catalog, crate::billing::PRICED_CATALOG).unwrap();
    cluster
        .env
        .push(("MEDIAGATE_CATALOG".into(), catalog.display().to_string()));
    for (k, v) in extra {
        cluster.env.push((k.to_string(), v.to_string()));
    }
    cluster
}

/// 200 submissions at once, split over two API processes, against a prepaid balance that
/// covers exactly ten jobs: ten are accepted, 190 refused with 402, and once the ten have
/// run the balance is spent to the micro-dollar, nothing is left held, and nothing went
/// below zero.
async fn a_balance_holds_across_two_api_processes(backend: Backend) {
    let (cluster, key, _procs, bases) = two_apis_and_a_worker(backend, "14").await;
    let (accepted, refused) = image_burst(&bases, &key, 200).await;
    assert_eq!(accepted.len(), 10, "exactly ten fit the balance");
    assert_eq!(refused, 190);
    for id in &accepted {
        wait_completed(&bases[0], &key, id).await;
    }
    let acme = account(&cluster, "acme");
    assert_eq!(acme["balance_usd"], "0.000000", "{acme}");
    assert_eq!(acme["reserved_usd"], "0.000000", "{acme}");
}

/// 200 chat requests at once, split over two API processes, against a balance that
/// covers exactly ten of their ceilings: the leases of money the two processes hold add
/// up to no more than the balance, so exactly ten are answered and 190 refused with 402;
/// once the leases finish nothing is held, and the balance is less exactly what the ten
/// answers cost.
async fn chat_leases_hold_across_two_api_processes(backend: Backend) {
    let cluster = priced_cluster(backend, &[("MEDIAGATE_BILLING__CHAT_LEASE_SECS", "1")]).await;
    let messages = json!([{"role": "user", "content": "foxes"}]);
    let max_tokens = 1000;
    // One request's ceiling: a token per three bytes of its messages and its max_tokens,
    // at $1 a million tokens and the first tier's 40 %, rounded up.
    let list =
        (serde_json::to_string(&messages).unwrap().len() as u64).div_ceil(3) as i64 + max_tokens;
    let ceiling = (list * 14 + 9) / 10;
    let funded = 10 * ceiling;
    let key = funded_key(&cluster, &format_usd(funded));
    let (_api1, addr1) = cluster.spawn("api");
    let (_api2, addr2) = cluster.spawn("api");
    let bases = [addr1.unwrap(), addr2.unwrap()].map(|a| format!("http://{a}"));
    let client = reqwest::Client::new();
    let requests = (0..200).map(|i| {
        // Slow answers: none ends (and gives back what it did not use) during the burst.
        let req = client
            .post(format!("{}/v1/chat/completions", bases[i % 2]))
            .bearer_auth(&key)
            .json(&json!({"model": "local/chat", "messages": messages,
                "max_tokens": max_tokens, "simulate": {"latency_ms": 3000}}));
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    });
    let answers = futures::future::join_all(requests).await;
    let answered: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(answered.len(), 10, "exactly ten fit the balance");
    assert_eq!(answers.iter().filter(|(s, _)| *s == 402).count(), 190);
    let cost: i64 = answered
        .iter()
        .map(|a| {
            let tokens = a["usage"]["prompt_tokens"].as_i64().unwrap()
                + a["usage"]["completion_tokens"].as_i64().unwrap();
            (tokens * 14 + 9) / 10
        })
        .sum();
    let start = Instant::now();
    loop {
        let acme = account(&cluster, "acme");
        if acme["reserved_usd"] == "0.000000" {
            assert_eq!(acme["balance_usd"], format_usd(funded - cost), "{acme}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the leases never finished: {acme}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An API process killed while it streams a chat answer leaves its lease of money
/// behind; the reaper (in a worker) lets go of it once it expires, and the balance is
/// whole again.
async fn holds_of_a_killed_api_process_come_back(backend: Backend) {
    let leases = [
        ("MEDIAGATE_BILLING__CHAT_HOLD_SECS", "2"),
        ("MEDIAGATE_BILLING__CHAT_LEASE_SECS", "2"),
    ];
    let (cluster, key, [mut api, _worker], base) = funded_api(backend, &leases, "1").await;
    let stream = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "local/chat", "stream": true,
            "messages": [{"role": "user", "content": "a long story"}],
            "simulate": {"latency_ms": 60000}}))
        .send();
    let pending = tokio::spawn(stream);
    let start = Instant::now();
    while account(&cluster, "acme")["reserved_usd"] == "0.000000" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the chat was never held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&api, "-KILL");
    api.wait().unwrap();
    let _ = pending.await;
    let start = Instant::now();
    loop {
        let acme = account(&cluster, "acme");
        if acme["reserved_usd"] == "0.000000" {
            assert_eq!(acme["balance_usd"], "1.000000", "{acme}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the hold never came back: {acme}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A priced cluster, account `acme` funded with `usd` and a key of it, two API processes
/// and a worker: the key, the processes and the two APIs' base URLs.
async fn two_apis_and_a_worker(
    backend: Backend,
    usd: &str,
) -> (Cluster, String, [Proc; 3], [String; 2]) {
    let cluster = priced_cluster(backend, &[]).await;
    let key = funded_key(&cluster, usd);
    let (api1, addr1) = cluster.spawn("api");
    let (api2, addr2) = cluster.spawn("api");
    let (worker, _) = cluster.spawn("worker");
    let bases = [addr1.unwrap(), addr2.unwrap()].map(|a| format!("http://{a}"));
    (cluster, key, [api1, api2, worker], bases)
}

/// `n` local image jobs submitted at once, spread over the API processes at `bases`:
/// the ids of those accepted, and how many were refused with 402. Any other answer
/// fails the test.
async fn image_burst(bases: &[String], key: &str, n: usize) -> (Vec<String>, usize) {
    let client = reqwest::Client::new();
    let requests = (0..n).map(|i| {
        let req = client
            .post(format!("{}/v1/jobs", bases[i % bases.len()]))
            .bearer_auth(key)
            .json(&json!({"model": "local/image", "input": {"prompt": format!("fox {i}"), "size": "64x64"}}));
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    });
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for (status, body) in futures::future::join_all(requests).await {
        match status {
            202 => accepted.push(body["id"].as_str().unwrap().to_owned()),
            402 => refused += 1,
            _ => panic!("{status}: {body}"),
        }
    }
    (accepted, refused)
}

/// Waits (a minute at most) until job `id` has completed, asking the API at `base`.
async fn wait_completed(base: &str, key: &str, id: &str) {
    let start = Instant::now();
    loop {
        let req = reqwest::Client::new()
            .get(format!("{base}/v1/jobs/{id}"))
            .bearer_auth(key);
        let now = answer(req).await.expect(200);
        if now["status"] == "completed" {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ledger entries of `kind` under a lease's id: how many leases were taken (`reservation`)
/// or closed (`release`, `expiry`).
async fn lease_entries(cluster: &Cluster, kind: &str) -> i64 {
    let url = cluster
        .env
        .iter()
        .find(|(k, _)| k == "MEDIAGATE_DATABASE_URL")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                cluster.data_dir.join("mediagate.db").display()
            )
        });
    let db = mediagate_engine::db::Db::connect(&url, mediagate_engine::db::PoolSize::few(1))
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM ledger WHERE kind = $1 AND reservation_id LIKE 'lease_%'",
    )
    .bind(kind)
    .fetch_one(db.pool())
    .await
    .unwrap()
}

/// 200 submissions split over two API processes against a balance of exactly 40 jobs —
/// room enough that each process draws its jobs from leases — are exactly 40 accepted:
/// no lease is left with money another process was refused. Once the jobs have run and
/// the processes stopped, the balance is spent to the micro-dollar and nothing is held.
async fn job_leases_hold_across_two_api_processes(backend: Backend) {
    let (cluster, key, [mut api1, mut api2, _worker], bases) =
        two_apis_and_a_worker(backend, "56").await;
    let (accepted, refused) = image_burst(&bases, &key, 200).await;
    assert_eq!(accepted.len(), 40, "exactly forty fit the balance");
    assert_eq!(refused, 160);
    assert!(
        lease_entries(&cluster, "reservation").await >= 2,
        "the jobs were drawn from leases"
    );
    for id in &accepted {
        wait_completed(&bases[0], &key, id).await;
    }
    // A stopping process closes its leases.
    for api in [&mut api1, &mut api2] {
        signal(api, "-TERM");
        api.wait().unwrap();
    }
    assert_eq!(
        lease_entries(&cluster, "release").await,
        lease_entries(&cluster, "reservation").await,
        "every lease was closed"
    );
    let acme = account(&cluster, "acme");
    assert_eq!(acme["balance_usd"], "0.000000", "{acme}");
    assert_eq!(acme["reserved_usd"], "0.000000", "{acme}");
}

/// An API process killed while its job lease holds money for more jobs than it took: the
/// reaper gives back what no job holds once the lease expires, the job still running keeps
/// its share, and when it completes it is charged and nothing is left held.
async fn a_killed_api_process_s_job_lease_comes_back(backend: Backend) {
    let leases = [
        ("MEDIAGATE_BILLING__CHAT_HOLD_SECS", "1"),
        ("MEDIAGATE_BILLING__JOB_LEASE_SECS", "1"),
    ];
    let (cluster, key, [mut api, _worker], base) = funded_api(backend, &leases, "100").await;
    let req = reqwest::Client::new()
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(&key)
        .json(
            &json!({"model": "local/image", "input": {"prompt": "slow fox", "size": "64x64",
            "simulate": {"latency_ms": 8000}}}),
        );
    let job = answer(req).await.expect(202);
    signal(&api, "-KILL");
    api.wait().unwrap();
    // The lease held more than the one job (a quarter of $100, in whole $1.40 jobs).
    let held = account(&cluster, "acme");
    assert_eq!(held["reserved_usd"], "23.800000", "{held}");
    let start = Instant::now();
    loop {
        let acme = account(&cluster, "acme");
        if acme["reserved_usd"] == "1.400000" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(7),
            "the lease's money was not given back while its job ran: {acme}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lease_entries(&cluster, "expiry").await, 1);
    let (_api, addr) = cluster.spawn("api");
    let base = format!("http://{}", addr.unwrap());
    wait_completed(&base, &key, job["id"].as_str().unwrap()).await;
    let acme = account(&cluster, "acme");
    assert_eq!(acme["balance_usd"], "98.600000", "{acme}");
    assert_eq!(acme["reserved_usd"], "0.000000", "{acme}");
}
