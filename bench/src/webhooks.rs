//! Webhook delivery measurements: account endpoints pointing at a local receiver, the
//! receiver itself, and throughput and notification lag read from the delivery rows.
//!
//! Lag is measured against `jobs.completed_at` (Unix ms) from the database, because the
//! `completed_at` inside the delivered job object has whole-second precision.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use hdrhistogram::Histogram;
use mediagate_engine::webhooks::signature::{self, Secret};
use serde_json::{Value, json};
use sqlx::Row;

use crate::{histogram, report};

/// Tolerance of the receiver's signature check, as the Standard Webhooks libraries use.
const SIGNATURE_TOLERANCE_SECS: i64 = 300;

/// Rates are also reported over the best window of this many seconds: long enough to be
/// "sustained", short enough that the ramp-up and the drain at the ends do not dilute it.
const RATE_WINDOW_SECS: usize = 10;

/// Creates `count` endpoints at `{receiver}/e/{i}` (and one at `{receiver}{slow_path}`),
/// each subscribed to `job.completed`; prints `path<TAB>secret` per endpoint, which is
/// what [`receive`] needs to verify signatures.
pub async fn create_endpoints(
    url: &str,
    key: &str,
    receiver: &str,
    count: usize,
    slow_path: Option<&str>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let paths = (0..count)
        .map(|i| format!("/e/{i}"))
        .chain(slow_path.map(str::to_owned));
    for path in paths {
        let res = client
            .post(format!("{url}/v1/webhook-endpoints"))
            .bearer_auth(key)
            .json(&json!({"url": format!("{receiver}{path}"), "events": ["job.completed"]}))
            .send()
            .await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or_default();
        if status.as_u16() != 201 {
            bail!("creating the endpoint for {path} answered {status}: {body}");
        }
        let secret = body["secret"].as_str().context("no secret in the answer")?;
        println!("{path}\t{secret}");
    }
    Ok(())
}

/// Creates `count` endpoints for `job.completed` at `http://127.0.0.1:{port}/dead?i={i}`,
/// spread over `ports` ports from `base_port` (so over that many destinations): the
/// tenant whose receivers never answer.
pub async fn create_dead_endpoints(
    url: &str,
    key: &str,
    base_port: u16,
    ports: u16,
    count: usize,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for i in 0..count {
        let port = base_port + (i % ports.max(1) as usize) as u16;
        let hook = format!("http://127.0.0.1:{port}/dead?i={i}");
        let res = client
            .post(format!("{url}/v1/webhook-endpoints"))
            .bearer_auth(key)
            .json(&json!({"url": hook, "events": ["job.completed"]}))
            .send()
            .await?;
        let status = res.status();
        if status.as_u16() != 201 {
            let body: Value = res.json().await.unwrap_or_default();
            bail!("creating the endpoint {hook} answered {status}: {body}");
        }
    }
    Ok(())
}

/// Listens on `ports` ports from `base_port` on 127.0.0.1 and never answers: every
/// connection is read from (so requests go out) and held until the other side gives up.
/// Runs until SIGINT or SIGTERM.
pub async fn hang(base_port: u16, ports: u16) -> anyhow::Result<()> {
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for k in 0..ports {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", base_port + k))
            .await
            .with_context(|| format!("binding 127.0.0.1:{}", base_port + k))?;
        let held = Arc::clone(&held);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let held = Arc::clone(&held);
                held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 4096];
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
    }
    stopped().await;
    println!(
        "hanging receiver: {} connections held",
        held.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}

/// One request as the receiver saw it.
struct Arrival {
    /// Unix time in µs.
    at_us: u64,
    path: String,
    msg_id: String,
    /// `data.id` of the body: the job the event is about.
    job_id: String,
}

#[derive(Default)]
struct Tally {
    arrivals: Vec<Arrival>,
    verified: u64,
    /// Signed with a secret we do not hold for that path, or not signed at all.
    bad_signature: u64,
    /// A path with no known secret (nothing to check against).
    unchecked: u64,
}

struct Receiver {
    secrets: HashMap<String, Secret>,
    slow_path: Option<String>,
    slow: Duration,
    tally: Mutex<Tally>,
}

/// Serves webhook deliveries on `bind` until SIGINT or SIGTERM: answers every POST with
/// 200 (after `slow` on `slow_path`), records when it arrived and which job it announces,
/// and verifies its signature. Then prints arrival rates and writes the arrivals to `out`
/// as `at_us<TAB>path<TAB>job_id` lines for [`analyse`]. GETs answer 200 unrecorded, as a
/// readiness probe.
pub async fn receive(
    bind: &str,
    secrets: Option<&Path>,
    slow_path: Option<String>,
    slow: Duration,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let secrets = match secrets {
        Some(file) => read_secrets(file)?,
        None => HashMap::new(),
    };
    let shared = Arc::new(Receiver {
        secrets,
        slow_path,
        slow,
        tally: Mutex::new(Tally::default()),
    });
    let app = axum::Router::new().fallback(hit).with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    // Not a graceful shutdown: it would wait for the slow path's pending answers, and the
    // deliveries still in flight at the end are not part of any measurement.
    tokio::select! {
        served = axum::serve(listener, app) => served?,
        () = stopped() => {}
    }
    let tally = std::mem::take(&mut *shared.tally.lock().expect("tally lock"));
    summarise(&tally);
    if let Some(out) = out {
        let mut text = String::with_capacity(tally.arrivals.len() * 64);
        for a in &tally.arrivals {
            text.push_str(&format!("{}\t{}\t{}\n", a.at_us, a.path, a.job_id));
        }
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn read_secrets(file: &Path) -> anyhow::Result<HashMap<String, Secret>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (path, secret) = line.split_once('\t').context("expected path<TAB>secret")?;
            let secret =
                Secret::parse(secret.trim()).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            Ok((path.to_owned(), secret))
        })
        .collect()
}

async fn hit(
    State(rx): State<Arc<Receiver>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if method != Method::POST {
        return StatusCode::OK;
    }
    // The clock is read first, before any parsing, so the arrival time is the receiver's
    // earliest sight of the request body.
    let at_us = unix_us();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let path = uri.path();
    let msg_id = header("webhook-id");
    let verdict = rx.secrets.get(path).map(|secret| {
        signature::verify(
            secret,
            msg_id,
            header("webhook-timestamp"),
            header("webhook-signature"),
            &body,
            (at_us / 1_000_000) as i64,
            SIGNATURE_TOLERANCE_SECS,
        )
        .is_ok()
    });
    let job_id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["data"]["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    {
        let mut tally = rx.tally.lock().expect("tally lock");
        match verdict {
            Some(true) => tally.verified += 1,
            Some(false) => tally.bad_signature += 1,
            None => tally.unchecked += 1,
        }
        tally.arrivals.push(Arrival {
            at_us,
            path: path.to_owned(),
            msg_id: msg_id.to_owned(),
            job_id,
        });
    }
    if rx.slow_path.as_deref() == Some(path) {
        tokio::time::sleep(rx.slow).await;
    }
    StatusCode::OK
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn summarise(tally: &Tally) {
    let arrivals = &tally.arrivals;
    let mut by_path: HashMap<&str, usize> = HashMap::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for a in arrivals {
        *by_path.entry(&a.path).or_default() += 1;
        // One event to one endpoint should arrive once; the event id is the webhook-id.
        if !seen.insert((a.msg_id.as_str(), a.path.as_str())) {
            duplicates += 1;
        }
    }
    let mut paths: Vec<_> = by_path.into_iter().collect();
    paths.sort();
    let paths: Vec<String> = paths.iter().map(|(p, n)| format!("{p} {n}")).collect();
    println!(
        "receiver: {} requests ({} repeated), signatures {} verified, {} bad, {} unchecked; by path: {}",
        arrivals.len(),
        duplicates,
        tally.verified,
        tally.bad_signature,
        tally.unchecked,
        paths.join(", ")
    );
    let times: Vec<u64> = arrivals.iter().map(|a| a.at_us / 1000).collect();
    println!("receiver arrivals/s: {}", rates(&times));
}

/// Mean rate between the first and last event, and the best `RATE_WINDOW_SECS` window;
/// `times_ms` in Unix ms, any order.
fn rates(times_ms: &[u64]) -> String {
    let (Some(&first), Some(&last)) = (times_ms.iter().min(), times_ms.iter().max()) else {
        return "none".to_owned();
    };
    let span = (last - first).max(1) as f64 / 1000.0;
    let mut per_sec = vec![0u64; ((last - first) / 1000 + 1) as usize];
    for t in times_ms {
        per_sec[((t - first) / 1000) as usize] += 1;
    }
    let window = RATE_WINDOW_SECS.min(per_sec.len());
    let best = per_sec
        .windows(window)
        .map(|w| w.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    format!(
        "{} over {span:.1} s = {:.0}/s mean; best {window} s window {:.0}/s; best second {}",
        times_ms.len(),
        times_ms.len() as f64 / span,
        best as f64 / window as f64,
        per_sec.iter().max().unwrap_or(&0)
    )
}

/// Reads the delivery rows (and, given `arrivals`, the receiver's log) after a run:
/// deliveries by status, delivered/s from `delivered_at`, and lag from `completed_at`,
/// with the endpoint at `slow_path` reported apart from the others.
pub async fn analyse(
    database_url: &str,
    arrivals: Option<PathBuf>,
    slow_path: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(database_url).await?;
    // `/slow` ends the slow endpoint's URL; `/dead` is followed by `?i=N`.
    let is_slow =
        |url: &str| slow_path.is_some_and(|p| url.ends_with(p) || url.contains(&format!("{p}?")));
    let now = mediagate_engine::ids::now_ms();

    let counts = sqlx::query(
        "SELECT status, count(*) AS n FROM webhook_deliveries GROUP BY status ORDER BY status",
    )
    .fetch_all(&pool)
    .await?;
    let counts: Vec<String> = counts
        .iter()
        .map(|r| {
            Ok(format!(
                "{} {}",
                r.try_get::<i64, _>("n")?,
                r.try_get::<String, _>("status")?
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;
    println!("deliveries: {}", counts.join(", "));
    // Each claim bumps a delivery's seq, and so does each hand-out by the sweeper; what
    // exceeds the attempts made is how often a delivery was taken up and put back without
    // an attempt (its URL was busy) or swept. Each costs database writes and a task.
    let churn = sqlx::query(
        "SELECT count(*) AS n, CAST(coalesce(sum(seq - attempts), 0) AS BIGINT) AS total, \
         coalesce(max(seq - attempts), 0) AS most FROM webhook_deliveries WHERE seq > attempts",
    )
    .fetch_one(&pool)
    .await?;
    let n: i64 = churn.try_get("n")?;
    if n > 0 {
        println!(
            "  taken up without an attempt (put back or swept): {n} deliveries, {} times in all, at most {} times one",
            churn.try_get::<i64, _>("total")?,
            churn.try_get::<i64, _>("most")?
        );
    }

    // The delivering attempt splits the lag: waiting to start (queue, claim, lookups) and
    // the HTTP exchange itself. Deliveries not made yet count at their age so far, which
    // makes the percentiles a lower bound rather than leaving the worst cases out.
    let rows = sqlx::query(
        "SELECT d.url, d.delivered_at, j.completed_at, a.started_at, a.duration_ms \
         FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id \
         LEFT JOIN webhook_attempts a ON a.delivery_id = d.id AND a.attempt = d.attempts",
    )
    .fetch_all(&pool)
    .await?;
    let (mut fast, mut slow, mut waited, mut http) = (
        lag_histogram(),
        lag_histogram(),
        lag_histogram(),
        lag_histogram(),
    );
    let mut delivered_at = Vec::with_capacity(rows.len());
    let (mut undelivered_fast, mut undelivered_slow) = (0, 0);
    // Rows keep milliseconds; record the upper edge of the millisecond in µs, as the
    // pickup measurement does.
    let upper_edge = |ms: i64| (ms.max(0) as u64 + 1) * 1000 - 1;
    for r in &rows {
        let url: String = r.try_get("url")?;
        let completed: i64 = r.try_get("completed_at")?;
        let done: Option<i64> = r.try_get("delivered_at")?;
        let lag = upper_edge(done.unwrap_or(now) - completed);
        if let Some(done) = done {
            delivered_at.push(done as u64);
        }
        if is_slow(&url) {
            slow.record(lag)?;
            undelivered_slow += i64::from(done.is_none());
            continue;
        }
        fast.record(lag)?;
        let Some(done) = done else {
            undelivered_fast += 1;
            continue;
        };
        let started: i64 = r.try_get("started_at")?;
        waited.record(upper_edge(started - completed))?;
        http.record(upper_edge(done - started))?;
    }
    if delivered_at.is_empty() {
        bail!("no delivered webhooks");
    }
    println!("delivered/s (delivered_at): {}", rates(&delivered_at));
    let others = slow_path.map(|p| format!(", endpoints other than {p}"));
    let others = others.as_deref().unwrap_or("");
    report_lag(
        &format!("lag completed_at → 2xx recorded (delivered_at){others}"),
        &fast,
        undelivered_fast,
    );
    if !waited.is_empty() {
        report(
            "  of it, completed_at → attempt started (queue, claim)",
            &waited,
        );
        report("  of it, attempt started → 2xx recorded (HTTP)", &http);
    }
    if let Some(path) = slow_path.filter(|_| !slow.is_empty()) {
        report_lag(
            &format!("lag to the slow endpoint {path}"),
            &slow,
            undelivered_slow,
        );
    }

    if let Some(file) = arrivals {
        let completed: HashMap<String, i64> =
            sqlx::query("SELECT id, completed_at FROM jobs WHERE completed_at IS NOT NULL")
                .fetch_all(&pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("id")?, r.try_get("completed_at")?)))
                .collect::<Result<_, sqlx::Error>>()?;
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let mut h = lag_histogram();
        let mut unknown = 0;
        for line in text.lines() {
            let mut fields = line.split('\t');
            let (Some(at_us), Some(path), Some(job_id)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if slow_path == Some(path) {
                continue;
            }
            let Some(&completed_ms) = completed.get(job_id) else {
                unknown += 1;
                continue;
            };
            let at_us: u64 = at_us.parse()?;
            // completed_at is truncated to its millisecond, so this overstates by < 1 ms.
            h.record(at_us.saturating_sub(completed_ms as u64 * 1000).max(1))?;
        }
        if unknown > 0 {
            println!("receiver log: {unknown} requests about jobs not completed in the database");
        }
        if !h.is_empty() {
            report(
                &format!("lag completed_at → arrival at the receiver{others} (delivered only)"),
                &h,
            );
        }
    }
    Ok(())
}

/// A backlog can hold deliveries back for longer than the request histograms' minute.
fn lag_histogram() -> Histogram<u64> {
    let mut h = histogram();
    h.auto(true);
    h
}

fn report_lag(name: &str, h: &Histogram<u64>, undelivered: i64) {
    if undelivered > 0 {
        report(
            &format!(
                "{name} [{undelivered} not delivered yet, counted at their age: a lower bound]"
            ),
            h,
        );
    } else {
        report(name, h);
    }
}
