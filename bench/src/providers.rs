//! Upstream provider measurements: notification lag with upstream callbacks and with
//! polling alone, and the overhead of falling back to the next provider after a 5xx.
//!
//! The fake upstreams (the tests' own, from tests/fakes), the webhook receiver and the
//! load generator run in this one process, so every instant compared here comes from the
//! same monotonic clock: when the fake accepted a job (it finishes `finish_after` later),
//! when it saw each poll, submission and media download, and when the job's webhook
//! reached the receiver. No wall clocks and no millisecond columns are involved.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sqlx::Row;

use crate::{histogram, report};
use mediagate_fakes::{self as fakes, Behaviour, Fake, Recorded};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Replicate calls mediagate back when a job finishes (safety-net polls far apart).
    Callback,
    /// No callbacks: mediagate finds out at its next poll.
    Poll,
    /// Replicate answers 503 to every submission; fal takes the job.
    Fallback,
}

/// What one run is asked to do.
pub struct Run {
    pub mode: Mode,
    /// mediagate's API, e.g. http://127.0.0.1:18180
    pub url: String,
    pub key: String,
    pub rate: u64,
    pub seconds: u64,
    pub finish_after: Duration,
    pub media_bytes: usize,
    pub receiver_bind: String,
    pub database_url: String,
    /// Where to write `export NAME=value` lines pointing mediagate at the fakes.
    pub ready_file: std::path::PathBuf,
    /// Longest wait for the last webhooks after the last submission.
    pub drain: Duration,
}

/// The first arrival of each job's webhook at the receiver.
#[derive(Default)]
struct Arrivals {
    /// Job id → (when, event type).
    first: HashMap<String, (Instant, String)>,
    /// Arrivals after the first for the same job (a redelivery, or a second event).
    repeated: u64,
}

type Shared = Arc<Mutex<Arrivals>>;

pub async fn run(run: Run) -> anyhow::Result<()> {
    // The fakes check the key mediagate sends against this variable; mediagate reads the
    // same one (through `api_key_env`), so both sides must have it.
    std::env::var(fakes::KEY_VAR)
        .with_context(|| format!("{} must be set (bench/run sets it)", fakes::KEY_VAR))?;
    let arrivals = Shared::default();
    receiver(&run.receiver_bind, arrivals.clone()).await?;

    // The fakes pick their own ports (tests/fakes binds 127.0.0.1:0), so mediagate is
    // started after this file says where they are.
    let served = Behaviour {
        finish_after: Some(run.finish_after),
        media_bytes: Some(run.media_bytes),
        ..Behaviour::default()
    };
    let (first, second) = match run.mode {
        Mode::Callback | Mode::Poll => (fakes::replicate::start(served).await, None),
        Mode::Fallback => {
            // More scripted failures than submissions: every job meets a 503 first.
            let failing = Behaviour {
                fail_submits: vec![503; (run.rate * run.seconds) as usize * 4 + 1000],
                ..Behaviour::default()
            };
            (
                fakes::replicate::start(failing).await,
                Some(fakes::fal::start(served).await),
            )
        }
    };
    let mut env = format!(
        "export MEDIAGATE_PROVIDERS__REPLICATE__BASE_URL={}\n",
        first.base
    );
    if let Some(fal) = &second {
        env.push_str(&format!(
            "export MEDIAGATE_PROVIDERS__FAL__BASE_URL={}\n",
            fal.base
        ));
    }
    write_atomically(&run.ready_file, &env)?;
    wait_ready(&run.url).await?;

    let jobs = submit(&run).await?;
    let accepted = jobs.len();
    let deadline = Instant::now() + run.drain;
    loop {
        let waiting = {
            let arrived = arrivals.lock().expect("arrivals lock");
            jobs.keys()
                .filter(|id| !arrived.first.contains_key(*id))
                .count()
        };
        if waiting == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrivals = std::mem::take(&mut *arrivals.lock().expect("arrivals lock"));
    let mut by_type: HashMap<&str, usize> = HashMap::new();
    for id in jobs.keys() {
        let kind = arrivals
            .first
            .get(id)
            .map_or("none yet", |(_, t)| t.as_str());
        *by_type.entry(kind).or_default() += 1;
    }
    let mut by_type: Vec<String> = by_type.iter().map(|(t, n)| format!("{n} {t}")).collect();
    by_type.sort();
    println!(
        "webhooks for the {accepted} accepted jobs: {} ({} repeated arrivals)",
        by_type.join(", "),
        arrivals.repeated
    );

    match run.mode {
        Mode::Callback | Mode::Poll => {
            lag(&run, &first, &jobs, &arrivals).await?;
            let callbacks = first.state.callbacks();
            if !callbacks.is_empty() {
                let answered = callbacks.iter().filter(|c| c.status / 100 == 2).count();
                println!(
                    "upstream callbacks sent {}, answered 2xx {answered}",
                    callbacks.len()
                );
            }
        }
        Mode::Fallback => {
            let fal = second.as_ref().expect("fallback starts two fakes");
            fallback(&first, fal, &jobs)?;
        }
    }
    Ok(())
}

/// Serves the job webhooks on `bind`: records the first arrival per job (the clock is read
/// before the body is parsed) and answers 200.
async fn receiver(bind: &str, arrivals: Shared) -> anyhow::Result<()> {
    let app = axum::Router::new().fallback(hit).with_state(arrivals);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

async fn hit(State(arrivals): State<Shared>, method: Method, body: Bytes) -> StatusCode {
    let at = Instant::now();
    if method != Method::POST {
        return StatusCode::OK;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let (Some(id), Some(kind)) = (body["data"]["id"].as_str(), body["type"].as_str()) else {
        return StatusCode::OK;
    };
    let mut arrivals = arrivals.lock().expect("arrivals lock");
    if arrivals.first.contains_key(id) {
        arrivals.repeated += 1;
    } else {
        arrivals.first.insert(id.to_owned(), (at, kind.to_owned()));
    }
    StatusCode::OK
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        let ready = client.get(format!("{url}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} did not become ready in 60 s")
}

/// Submits `rate` jobs a second for `seconds`, open-loop, each with its own prompt and a
/// webhook to the receiver; returns job id → prompt for the accepted ones.
async fn submit(run: &Run) -> anyhow::Result<HashMap<String, String>> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let order = match run.mode {
        Mode::Callback | Mode::Poll => json!(["replicate"]),
        Mode::Fallback => json!(["replicate", "fal"]),
    };
    let hook = format!("http://{}/job", run.receiver_bind);
    let endpoint = format!("{}/v1/jobs", run.url);
    // Prompts are unique across runs too, so no fake or cache can match an older job.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let total = run.rate * run.seconds;
    let interval = Duration::from_secs_f64(1.0 / run.rate as f64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until((start + interval.mul_f64(i as f64)).into()).await;
        let prompt = format!("providers bench {nonce} job {i}");
        let body = json!({
            "model": "google/veo-3.1",
            "input": {"prompt": prompt, "duration": 4, "resolution": "720p", "aspect_ratio": "16:9"},
            "webhook": {"url": hook},
            "provider": {"order": order},
        });
        let request = client.post(&endpoint).bearer_auth(&run.key).json(&body);
        tasks.push(tokio::spawn(async move {
            let res = request.send().await.map_err(|e| e.to_string())?;
            let status = res.status();
            let answer: Value = res.json().await.unwrap_or_default();
            match answer["id"].as_str() {
                Some(id) if status.as_u16() == 202 => Ok((id.to_owned(), prompt)),
                _ => Err(format!("{status}: {answer}")),
            }
        }));
    }
    let mut jobs = HashMap::with_capacity(total as usize);
    let mut failed = 0;
    for task in tasks {
        match task.await? {
            Ok((id, prompt)) => {
                jobs.insert(id, prompt);
            }
            Err(e) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("submission failed: {e}");
                }
            }
        }
    }
    println!(
        "submitted {total} jobs at {}/s over {:.1}s: {} accepted, {failed} refused",
        run.rate,
        start.elapsed().as_secs_f64(),
        jobs.len()
    );
    Ok(jobs)
}

/// Lag can exceed the request histograms' minute when the pipeline falls behind.
fn lag_histogram() -> Histogram<u64> {
    let mut h = histogram();
    h.auto(true);
    h
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// Upstream finished → webhook at the receiver, per job, and where the time went: until
/// the first poll that could see the job finished (a callback's wake-up, or the poll
/// schedule), from there to the media download starting, and from that to the webhook
/// (copying the media, completing the job, delivering the webhook).
async fn lag(
    run: &Run,
    fake: &Fake,
    jobs: &HashMap<String, String>,
    arrivals: &Arrivals,
) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&run.database_url).await?;
    // Our job id ↔ Replicate's prediction id.
    let upstream: HashMap<String, String> = sqlx::query(
        "SELECT job_id, upstream_id FROM job_attempts \
         WHERE provider = 'replicate' AND upstream_id IS NOT NULL",
    )
    .fetch_all(&pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("job_id")?, r.try_get("upstream_id")?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let accepted_at = fake.state.accepted_at.lock().expect("fake lock").clone();
    // Each prediction's polls and media downloads, in the order they arrived.
    let mut polls: HashMap<&str, Vec<Instant>> = HashMap::new();
    let mut downloads: HashMap<&str, Instant> = HashMap::new();
    let requests = fake.state.requests();
    for r in requests.iter().filter(|r| r.method == "GET") {
        if let Some(id) = r.path.strip_prefix("/v1/predictions/") {
            polls.entry(id).or_default().push(r.at);
        } else if let Some(file) = r.path.strip_prefix("/delivery/") {
            let id = file.split('.').next().unwrap_or(file);
            downloads.entry(id).or_insert(r.at);
        }
    }

    let (mut total, mut wake, mut to_fetch, mut copy_and_deliver) = (
        lag_histogram(),
        lag_histogram(),
        lag_histogram(),
        lag_histogram(),
    );
    let mut unmatched = 0;
    let mut worst = Vec::new();
    for (job_id, prompt) in jobs {
        let Some((arrived, kind)) = arrivals.first.get(job_id) else {
            continue;
        };
        let Some(finished) = upstream.get(job_id).and_then(|u| {
            accepted_at
                .get(u)
                .map(|at| (u.as_str(), *at + run.finish_after))
        }) else {
            unmatched += 1;
            continue;
        };
        let (upstream_id, finished) = finished;
        if kind != "job.completed" {
            continue;
        }
        let took = micros(arrived.saturating_duration_since(finished));
        total.record(took)?;
        worst.push((took, prompt.as_str()));
        let seen = polls
            .get(upstream_id)
            .and_then(|p| p.iter().find(|at| **at >= finished));
        let fetched = downloads.get(upstream_id);
        if let (Some(seen), Some(fetched)) = (seen, fetched) {
            wake.record(micros(seen.saturating_duration_since(finished)))?;
            to_fetch.record(micros(fetched.saturating_duration_since(*seen)))?;
            copy_and_deliver.record(micros(arrived.saturating_duration_since(*fetched)))?;
        }
    }
    // How far apart one job's polls came, against the configured interval: the queue
    // schedules checks in whole seconds, which stretches short intervals.
    let mut spacing = lag_histogram();
    for at in polls.values() {
        for pair in at.windows(2) {
            spacing.record(micros(pair[1].saturating_duration_since(pair[0])))?;
        }
    }
    if unmatched > 0 {
        println!("{unmatched} webhooks about jobs with no Replicate prediction on record");
    }
    if total.is_empty() {
        bail!("no completed job to measure");
    }
    let mb = run.media_bytes as f64 / 1_048_576.0;
    let how = match run.mode {
        Mode::Callback => "callbacks",
        _ => "polling only",
    };
    report(
        &format!("lag, {how}: upstream finished → job webhook at the receiver ({mb:.1} MB media)"),
        &total,
    );
    print_slowest(worst);
    if !wake.is_empty() {
        let first = match run.mode {
            Mode::Callback => "the poll the callback triggers",
            _ => "the first poll after it",
        };
        report(&format!("  of it, finished → {first}"), &wake);
        report("  of it, that poll → media download starts", &to_fetch);
        report(
            "  of it, download starts → webhook at the receiver (copy, complete, deliver)",
            &copy_and_deliver,
        );
    }
    if !spacing.is_empty() {
        report("time between two polls of the same job", &spacing);
    }
    Ok(())
}

/// The prompt a fake's submission carried (Replicate nests it in `input`, fal does not).
fn prompt(r: &Recorded) -> Option<String> {
    let body: Value = serde_json::from_str(&r.body).ok()?;
    body["input"]["prompt"]
        .as_str()
        .or(body["prompt"].as_str())
        .map(str::to_owned)
}

/// The first submission of each prompt to a fake.
fn first_submits(fake: &Fake) -> HashMap<String, Instant> {
    let mut first = HashMap::new();
    for r in fake.state.requests().iter().filter(|r| r.method == "POST") {
        if let Some(p) = prompt(r) {
            first.entry(p).or_insert(r.at);
        }
    }
    first
}

/// Replicate's 503 (its submission arriving there) → fal receiving the same job.
fn fallback(failing: &Fake, taking: &Fake, jobs: &HashMap<String, String>) -> anyhow::Result<()> {
    let failed = first_submits(failing);
    let took = first_submits(taking);
    let mut h = lag_histogram();
    let (mut skipped, mut not_moved) = (0, 0);
    let mut worst = Vec::new();
    for prompt in jobs.values() {
        match (failed.get(prompt), took.get(prompt)) {
            (Some(failed), Some(took)) => {
                let overhead = micros(took.saturating_duration_since(*failed));
                h.record(overhead)?;
                worst.push((overhead, prompt.as_str()));
            }
            // The breaker skipped Replicate without calling it.
            (None, Some(_)) => skipped += 1,
            _ => not_moved += 1,
        }
    }
    println!(
        "replicate submissions {}, fal submissions {}; jobs that skipped replicate {skipped}, never reached fal {not_moved}",
        failing
            .state
            .submits
            .load(std::sync::atomic::Ordering::Relaxed),
        took.len()
    );
    if h.is_empty() {
        println!("fallback: no job went from replicate to fal");
    } else {
        report(
            "fallback: replicate's submission arrives (answered 503) → fal receives the job",
            &h,
        );
        print_slowest(worst);
    }
    Ok(())
}

/// The slowest few jobs by their place in the submission order, which tells a warm-up
/// outlier (the first jobs: new connections, first statements) from a steady-state tail.
fn print_slowest(mut samples: Vec<(u64, &str)>) {
    samples.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
    let slowest: Vec<String> = samples
        .iter()
        .take(5)
        .map(|(us, prompt)| {
            let n = prompt.rsplit(' ').next().unwrap_or("?");
            format!("#{n} {:.1}ms", *us as f64 / 1000.0)
        })
        .collect();
    println!(
        "  slowest (job # in submission order): {}",
        slowest.join(", ")
    );
}
