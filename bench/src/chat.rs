//! Chat completions: what a gateway adds to a request. `chat-upstream` serves the tests'
//! fake OpenAI chat API (answers at once, or streams one word per `--token-interval-ms`;
//! `--reply-bytes` makes every answer that large); `hop` is a bare TCP relay, the floor
//! under any gateway's added latency on this machine (one more loopback hop); `chat`
//! fires an open-loop load of `POST …/chat/completions` at any base URL — the fake
//! itself, mediagate in front of it, or another gateway in front of it — and reports the
//! latency from each request's due time to its whole answer (unstreamed) or to its first
//! content chunk and to its end (streamed). The difference between a gateway's numbers and
//! the fake's own, measured in the same run, is what the gateway adds. `chat-pair` measures
//! that difference at concurrency 1 without the run-to-run drift of this VM: it sends one
//! request straight to the upstream and one through the gateway, back to back, pair after
//! pair, and reports both and their difference per pair.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use mediagate_fakes::{self as fakes, Behaviour};
use serde_json::json;
use tokio::sync::Mutex;

use crate::{histogram, report};

/// Serves the fake OpenAI chat API until killed; writes `export` lines pointing mediagate
/// at it to `ready_file`. With `reply_bytes`, every answer is that much text, in words
/// of about 100 bytes (a streamed answer is one chunk a word).
pub async fn upstream(
    ready_file: &std::path::Path,
    token_interval_ms: u64,
    reply_bytes: usize,
) -> anyhow::Result<()> {
    let chat_reply = (reply_bytes > 0).then(|| {
        let word = "x".repeat(99);
        vec![word; reply_bytes.div_ceil(100)].join(" ")
    });
    let fake = fakes::openai::start(Behaviour {
        chat_token_interval: Duration::from_millis(token_interval_ms),
        chat_reply,
        ..Behaviour::default()
    })
    .await;
    let env = format!(
        "export MEDIAGATE_PROVIDERS__OPENAI__BASE_URL={base}\nexport CHAT_UPSTREAM={base}/v1\n",
        base = fake.base
    );
    let tmp = ready_file.with_extension("tmp");
    std::fs::write(&tmp, env)?;
    std::fs::rename(&tmp, ready_file)?;
    // The fake keeps every request it saw; a long run must not grow without bound.
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        fake.state.requests.lock().unwrap().clear();
    }
}

/// Relays every connection to `listen` on to `to`, byte for byte, until killed.
pub async fn hop(listen: &str, to: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (mut client, _) = listener.accept().await?;
        let to = to.to_owned();
        tokio::spawn(async move {
            let Ok(mut upstream) = tokio::net::TcpStream::connect(&to).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

/// One load run.
#[derive(Debug, clap::Args)]
pub struct Load {
    /// Up to, not including, `/chat/completions`.
    #[arg(long)]
    pub base: String,
    #[arg(long, default_value = "")]
    pub key: String,
    #[arg(long, default_value = "openai/gpt-4o-mini")]
    pub model: String,
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long)]
    pub stream: bool,
    /// Names the run in the report.
    #[arg(long, default_value = "chat")]
    pub label: String,
}

pub async fn load(run: Load) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(60))
        .build()?;
    let body = json!({
        "model": run.model,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "stream": run.stream,
        "max_tokens": 64,
    });
    let endpoint = format!("{}/chat/completions", run.base);
    let total = run.rate * run.seconds;
    let interval = Duration::from_secs_f64(1.0 / run.rate as f64);
    let whole = Arc::new(Mutex::new(histogram()));
    let first = Arc::new(Mutex::new(histogram()));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let req = client.post(&endpoint).bearer_auth(&run.key).json(&body);
        let (whole, first, failed) = (whole.clone(), first.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            match one(req, due).await {
                Ok((to_first, to_end)) => {
                    record(&whole, to_end).await;
                    if let Some(t) = to_first {
                        record(&first, t).await;
                    }
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("{e:#}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let took = start.elapsed();
    println!(
        "{}: offered {}/s for {}s ({}), {} failed, done in {:.2}s",
        run.label,
        run.rate,
        run.seconds,
        if run.stream { "streamed" } else { "unstreamed" },
        failed.load(Ordering::Relaxed),
        took.as_secs_f64()
    );
    if run.stream {
        report(&format!("{} first token", run.label), &*first.lock().await);
    }
    report(&format!("{} whole answer", run.label), &*whole.lock().await);
    Ok(())
}

/// One request at a time, in pairs: one to `base_a` (the upstream itself) and one to
/// `base_b` (a gateway in front of it), back to back, the pair's order alternating so
/// neither always goes first onto a warm path.
#[derive(Debug, clap::Args)]
pub struct Pair {
    /// The upstream itself, up to `/chat/completions`.
    #[arg(long)]
    pub base_a: String,
    #[arg(long, default_value = "")]
    pub key_a: String,
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model_a: String,
    /// The gateway in front of it.
    #[arg(long)]
    pub base_b: String,
    #[arg(long, default_value = "")]
    pub key_b: String,
    #[arg(long, default_value = "openai/gpt-4o-mini")]
    pub model_b: String,
    #[arg(long, default_value_t = 2000)]
    pub pairs: u64,
    /// Pause between pairs, so each pair meets an idle machine as a lone request does.
    #[arg(long, default_value_t = 10)]
    pub gap_ms: u64,
    #[arg(long)]
    pub stream: bool,
    #[arg(long, default_value = "pair")]
    pub label: String,
}

pub async fn pair(run: Pair) -> anyhow::Result<()> {
    anyhow::ensure!(run.pairs > 0, "--pairs must be at least 1");
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let request = |base: &str, key: &str, model: &str| {
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
            "stream": run.stream,
            "max_tokens": 64,
        });
        client
            .post(format!("{base}/chat/completions"))
            .bearer_auth(key)
            .json(&body)
    };
    let timed = |base: &str, key: &str, model: &str| {
        let req = request(base, key, model);
        async move {
            let sent = Instant::now();
            let (to_first, to_end) = one(req, sent).await?;
            anyhow::Ok(if run.stream {
                to_first.unwrap_or(to_end)
            } else {
                to_end
            })
        }
    };
    // Warm both connections (and the gateway's own to the upstream) before measuring.
    for _ in 0..50 {
        timed(&run.base_a, &run.key_a, &run.model_a).await?;
        timed(&run.base_b, &run.key_b, &run.model_b).await?;
    }
    let (mut a, mut b) = (histogram(), histogram());
    // Differences in µs; they can be negative, so not in a histogram.
    let mut added: Vec<i64> = Vec::with_capacity(run.pairs as usize);
    for i in 0..run.pairs {
        let (ta, tb) = if i % 2 == 0 {
            let ta = timed(&run.base_a, &run.key_a, &run.model_a).await?;
            (ta, timed(&run.base_b, &run.key_b, &run.model_b).await?)
        } else {
            let tb = timed(&run.base_b, &run.key_b, &run.model_b).await?;
            (timed(&run.base_a, &run.key_a, &run.model_a).await?, tb)
        };
        let (ua, ub) = (ta.as_micros() as i64, tb.as_micros() as i64);
        a.record(ua.max(1) as u64).ok();
        b.record(ub.max(1) as u64).ok();
        added.push(ub - ua);
        tokio::time::sleep(Duration::from_millis(run.gap_ms)).await;
    }
    let what = if run.stream {
        "first token"
    } else {
        "whole answer"
    };
    println!(
        "{}: {} pairs, one request at a time ({what})",
        run.label, run.pairs
    );
    report(&format!("{} upstream alone", run.label), &a);
    report(&format!("{} through the gateway", run.label), &b);
    added.sort_unstable();
    let us = |q: f64| added[((added.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "{} added per pair (gateway minus upstream): p50={:.3}ms p90={:.3}ms p99={:.3}ms; \
         p50 of each: {:+.3}ms, p99 of each: {:+.3}ms",
        run.label,
        us(0.5),
        us(0.9),
        us(0.99),
        (b.value_at_quantile(0.5) as f64 - a.value_at_quantile(0.5) as f64) / 1000.0,
        (b.value_at_quantile(0.99) as f64 - a.value_at_quantile(0.99) as f64) / 1000.0,
    );
    Ok(())
}

async fn record(h: &Mutex<Histogram<u64>>, d: Duration) {
    h.lock().await.record(d.as_micros().max(1) as u64).ok();
}

/// Sends one request and reads its answer: (to the first content chunk, to the end).
async fn one(
    req: reqwest::RequestBuilder,
    due: Instant,
) -> anyhow::Result<(Option<Duration>, Duration)> {
    let res = req.send().await.context("request")?;
    let status = res.status();
    if !status.is_success() {
        let text = res.text().await.unwrap_or_default();
        anyhow::bail!("unexpected {status}: {text}");
    }
    let mut to_first = None;
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("answer body")?;
        if to_first.is_none() && chunk.windows(10).any(|w| w == b"\"content\":") {
            to_first = Some(due.elapsed());
        }
    }
    Ok((to_first, due.elapsed()))
}
