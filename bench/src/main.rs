//! Load generator and measurements behind `bench/run` and docs/PERFORMANCE.md.
//!
//! Load is open-loop: requests go out on a fixed schedule whatever the server does, and
//! each latency is measured from the moment the request was *due*, so a stalled server
//! cannot hide its stall (no coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::sync::Mutex;

mod chat;
mod providers;
mod slow;
mod webhooks;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST /v1/jobs at a fixed rate; report accepted/s and latency percentiles.
    Submit {
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        /// Requests per second.
        #[arg(long, default_value_t = 3000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The job body (JSON).
        #[arg(
            long,
            default_value = r#"{"model":"local/video","input":{"prompt":"bench","duration":1,"resolution":"360p","simulate":{"latency_ms":600000,"progress_steps":1}}}"#
        )]
        body: String,
    },
    /// Queue pickup (job created → first upstream call) from the job rows.
    Pickup {
        #[arg(long)]
        database_url: String,
        /// Only jobs created in the last N seconds.
        #[arg(long, default_value_t = 600)]
        since_secs: i64,
    },
    /// Resident memory of a process, in MB.
    Rss {
        #[arg(long)]
        pid: u32,
    },
    /// Stores a completed job with one output of `mb` megabytes of noise; prints its id.
    Fixture {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        storage_url: String,
        #[arg(long)]
        key: String,
        #[arg(long, default_value_t = 100)]
        mb: usize,
    },
    /// Downloads a URL, reporting bytes, time and this process's own peak memory.
    Download {
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
    },
    /// Creates account webhook endpoints for `job.completed` at `{receiver}/e/{i}` (and
    /// `{receiver}{slow_path}`); prints `path<TAB>secret` lines for `receiver --secrets`.
    Endpoints {
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        /// Base URL of the receiver, e.g. http://127.0.0.1:18190
        #[arg(long)]
        receiver: String,
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Also create an endpoint at this path (the receiver's slow one).
        #[arg(long)]
        slow_path: Option<String>,
    },
    /// Creates account webhook endpoints for `job.completed` at
    /// `http://127.0.0.1:{port}/dead?i={i}` over `--ports` ports from `--base-port`.
    DeadEndpoints {
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        #[arg(long, default_value_t = 18200)]
        base_port: u16,
        #[arg(long, default_value_t = 10)]
        ports: u16,
        #[arg(long, default_value_t = 300)]
        count: usize,
    },
    /// Receivers that never answer, on `--ports` ports from `--base-port`, until SIGTERM.
    Hang {
        #[arg(long, default_value_t = 18200)]
        base_port: u16,
        #[arg(long, default_value_t = 10)]
        ports: u16,
    },
    /// A webhook receiver: answers 200, records arrivals, verifies signatures; prints
    /// arrival rates and writes its log on SIGINT/SIGTERM.
    Receiver {
        #[arg(long, default_value = "127.0.0.1:18190")]
        bind: String,
        /// `path<TAB>secret` lines, as `endpoints` prints them.
        #[arg(long)]
        secrets: Option<std::path::PathBuf>,
        /// Requests to this path are answered after `--slow-ms`.
        #[arg(long)]
        slow_path: Option<String>,
        #[arg(long, default_value_t = 5000)]
        slow_ms: u64,
        /// Where to write `at_us<TAB>path<TAB>job_id` per request.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Webhook deliveries after a run: counts, delivered/s, lag from job completion.
    Deliveries {
        #[arg(long)]
        database_url: String,
        /// The receiver's log, for the lag until arrival at the receiver.
        #[arg(long)]
        arrivals: Option<std::path::PathBuf>,
        /// Deliveries to URLs ending in this path are reported apart.
        #[arg(long)]
        slow_path: Option<String>,
    },
    /// Job submissions at a fixed rate while `uploads` connections trickle request bodies
    /// a byte a second; reports the submissions' latency and how many were shed.
    Trickle {
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 300)]
        uploads: usize,
        #[arg(
            long,
            default_value = r#"{"model":"local/image","input":{"prompt":"bench","size":"64x64"}}"#
        )]
        body: String,
    },
    /// Serves the fake OpenAI chat API until killed; writes where it listens to
    /// `--ready-file` (as `export` lines).
    ChatUpstream {
        #[arg(long)]
        ready_file: std::path::PathBuf,
        /// Pause between two words of a streamed answer.
        #[arg(long, default_value_t = 0)]
        token_interval_ms: u64,
        /// Answer every request with this many bytes of text (0: the fake's short reply).
        #[arg(long, default_value_t = 0)]
        reply_bytes: usize,
    },
    /// Open-loop chat completions against `--base` (up to `/chat/completions`).
    Chat(chat::Load),
    /// Chat at concurrency 1, upstream and gateway in alternating pairs: what the gateway adds.
    ChatPair(chat::Pair),
    /// A bare TCP relay from `--listen` to `--to`: what one more loopback hop costs on
    /// this machine, with no HTTP work at all (the floor under any gateway's added latency).
    Hop {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        to: String,
    },
    /// Upstream providers against the tests' fakes, served from this process: webhook lag
    /// with callbacks or polling, or the fallback after a 5xx. Writes where the fakes
    /// listen to `--ready-file` (as `export` lines for mediagate), then waits for the API.
    Providers {
        #[arg(long, value_enum)]
        mode: providers::Mode,
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        /// Jobs per second.
        #[arg(long, default_value_t = 50)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// A job finishes upstream this long after the fake accepted it.
        #[arg(long, default_value_t = 2000)]
        finish_after_ms: u64,
        /// Size of each job's result file.
        #[arg(long, default_value_t = 1 << 20)]
        media_bytes: usize,
        #[arg(long, default_value = "127.0.0.1:18190")]
        receiver_bind: String,
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        ready_file: std::path::PathBuf,
        /// Longest wait for webhooks after the last submission, in seconds.
        #[arg(long, default_value_t = 60)]
        drain_secs: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Submit {
            url,
            key,
            rate,
            seconds,
            body,
        } => submit(&url, &key, rate, seconds, &body).await,
        Command::Pickup {
            database_url,
            since_secs,
        } => pickup(&database_url, since_secs).await,
        Command::Rss { pid } => {
            println!("{:.1}", rss_mb(pid)?);
            Ok(())
        }
        Command::Download { url, key } => download(&url, &key).await,
        Command::Fixture {
            database_url,
            storage_url,
            key,
            mb,
        } => fixture(&database_url, &storage_url, &key, mb).await,
        Command::Endpoints {
            url,
            key,
            receiver,
            count,
            slow_path,
        } => webhooks::create_endpoints(&url, &key, &receiver, count, slow_path.as_deref()).await,
        Command::DeadEndpoints {
            url,
            key,
            base_port,
            ports,
            count,
        } => webhooks::create_dead_endpoints(&url, &key, base_port, ports, count).await,
        Command::Hang { base_port, ports } => webhooks::hang(base_port, ports).await,
        Command::Receiver {
            bind,
            secrets,
            slow_path,
            slow_ms,
            out,
        } => {
            let slow = Duration::from_millis(slow_ms);
            webhooks::receive(&bind, secrets.as_deref(), slow_path, slow, out.as_deref()).await
        }
        Command::Deliveries {
            database_url,
            arrivals,
            slow_path,
        } => webhooks::analyse(&database_url, arrivals, slow_path.as_deref()).await,
        Command::Trickle {
            url,
            key,
            rate,
            seconds,
            uploads,
            body,
        } => {
            slow::run(slow::Run {
                url,
                key,
                rate,
                seconds,
                uploads,
                body,
            })
            .await
        }
        Command::ChatUpstream {
            ready_file,
            token_interval_ms,
            reply_bytes,
        } => chat::upstream(&ready_file, token_interval_ms, reply_bytes).await,
        Command::Chat(run) => chat::load(run).await,
        Command::ChatPair(run) => chat::pair(run).await,
        Command::Hop { listen, to } => chat::hop(&listen, &to).await,
        Command::Providers {
            mode,
            url,
            key,
            rate,
            seconds,
            finish_after_ms,
            media_bytes,
            receiver_bind,
            database_url,
            ready_file,
            drain_secs,
        } => {
            providers::run(providers::Run {
                mode,
                url,
                key,
                rate,
                seconds,
                finish_after: Duration::from_millis(finish_after_ms),
                media_bytes,
                receiver_bind,
                database_url,
                ready_file,
                drain: Duration::from_secs(drain_secs),
            })
            .await
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn report(name: &str, h: &Histogram<u64>) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name}: n={} p50={:.2}ms p90={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
        h.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
}

async fn submit(url: &str, key: &str, rate: u64, seconds: u64, body: &str) -> anyhow::Result<()> {
    let body: Value = serde_json::from_str(body).context("--body is not JSON")?;
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(30))
        .build()?;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let latencies = Arc::new(Mutex::new(histogram()));
    // Each second's slowest answer, by due time: a stall shows as one bad second (and
    // when in the run it came), where the histogram alone cannot tell a stall from a
    // slow server.
    let slowest = Arc::new(std::sync::Mutex::new(vec![0u64; seconds as usize]));
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let endpoint = format!("{url}/v1/jobs");
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (client, endpoint, key, body) = (
            client.clone(),
            endpoint.clone(),
            key.to_owned(),
            body.clone(),
        );
        let (latencies, accepted, failed) = (latencies.clone(), accepted.clone(), failed.clone());
        let (slowest, second) = (slowest.clone(), (i / rate) as usize);
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(&endpoint)
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await;
            let took = due.elapsed();
            match res {
                Ok(r) if r.status().as_u16() == 202 => {
                    let _ = r.bytes().await;
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let micros = took.as_micros().max(1) as u64;
                    latencies.lock().await.record(micros).ok();
                    let mut slowest = slowest.lock().expect("not poisoned");
                    slowest[second] = slowest[second].max(micros);
                }
                Ok(r) => {
                    if failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
                        eprintln!(
                            "unexpected {}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                    }
                }
                Err(e) => {
                    if failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
                        eprintln!("request error: {e}");
                    }
                }
            }
        }));
    }
    let sent_in = start.elapsed();
    for t in tasks {
        t.await?;
    }
    let all_in = start.elapsed();
    let ok = accepted.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "submit: offered {rate}/s for {seconds}s; sent in {:.2}s; accepted {ok} ({:.0}/s over {:.2}s), failed {}",
        sent_in.as_secs_f64(),
        ok as f64 / all_in.as_secs_f64(),
        all_in.as_secs_f64(),
        failed.load(std::sync::atomic::Ordering::Relaxed)
    );
    report("submit latency (from due time)", &*latencies.lock().await);
    let slowest = slowest.lock().expect("not poisoned");
    let line: Vec<String> = slowest
        .iter()
        .map(|us| format!("{:.0}", *us as f64 / 1000.0))
        .collect();
    println!("slowest answer in each second, ms: {}", line.join(" "));
    Ok(())
}

async fn pickup(database_url: &str, since_secs: i64) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(database_url).await?;
    let since = mediagate_engine::ids::now_ms() - since_secs * 1000;
    let rows = sqlx::query("SELECT started_at - created_at AS wait FROM jobs WHERE created_at >= $1 AND started_at IS NOT NULL")
        .bind(since)
        .fetch_all(&pool)
        .await?;
    if rows.is_empty() {
        bail!("no started jobs in the window");
    }
    let mut h = histogram();
    for r in rows {
        let wait: i64 = r.try_get("wait")?;
        // Rows keep milliseconds; record the upper edge of the millisecond in µs.
        h.record(((wait.max(0) as u64) + 1) * 1000 - 1)?;
    }
    report("pickup (created → first upstream call, ms resolution)", &h);
    Ok(())
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

async fn download(url: &str, key: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let res = client.get(url).bearer_auth(key).send().await?;
    if !res.status().is_success() {
        bail!("download answered {}", res.status());
    }
    let mut stream = res.bytes_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        total += chunk?.len() as u64;
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "download: {:.1} MB in {took:.2}s ({:.0} MB/s)",
        total as f64 / 1e6,
        total as f64 / 1e6 / took
    );
    Ok(())
}

async fn fixture(
    database_url: &str,
    storage_url: &str,
    key: &str,
    mb: usize,
) -> anyhow::Result<()> {
    use mediagate_engine::db::jobs::{self, NewJob};
    use mediagate_engine::ids::{IdKind, new_id, now_ms};
    let store =
        mediagate_engine::db::Db::connect(database_url, mediagate_engine::db::PoolSize::few(2))
            .await?;
    let storage =
        mediagate_engine::media::storage::Storage::open(storage_url, &Default::default())?;
    let key_hash = hex::encode(Sha256::digest(key.as_bytes()));
    let caller = mediagate_engine::db::keys::caller_by_hash(store.pool(), &key_hash)
        .await?
        .context("unknown key")?;
    // Incompressible bytes, so nothing along the way can shrink them.
    let mut bytes = vec![0u8; mb * 1024 * 1024];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let now = now_ms();
    let new = NewJob {
        id: new_id(IdKind::Job),
        account_id: caller.account_id,
        kind: mediagate_engine::jobs::job::JobKind::Video,
        model: "local/video".to_owned(),
        provider: "local".to_owned(),
        input: json!({"prompt": "fixture"}),
        metadata: json!({}),
        webhook: None,
        route: Vec::new(),
        created_at: now,
        deadline_at: now + 3_600_000,
    };
    let stored = storage
        .put(&new.id, 0, "video/mp4", "mp4", bytes.into())
        .await?;
    let mut tx = store.begin().await?;
    jobs::insert(&mut *tx, &new).await?;
    jobs::claim_queued(&mut *tx, &new.id, now, now).await?;
    jobs::complete(&mut *tx, &new.id, &[stored], "0.0000", now)
        .await?
        .context("complete fixture")?;
    tx.commit().await?;
    println!("{}", new.id);
    Ok(())
}
