//! Slow clients against the API: job submissions at a fixed rate (open loop, latency from
//! the due time) while `uploads` other connections each send a request head and then one
//! byte of body a second, as a slow-upload attack does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::{histogram, report};

pub struct Run {
    pub url: String,
    pub key: String,
    pub rate: u64,
    pub seconds: u64,
    pub uploads: usize,
    pub body: String,
}

pub async fn run(run: Run) -> anyhow::Result<()> {
    let addr = run
        .url
        .strip_prefix("http://")
        .context("--url must be http://HOST:PORT")?
        .trim_end_matches('/')
        .to_owned();
    // The trickling uploads: a valid key (so the head passes every check) and a body
    // that never finishes within the run.
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{",
        run.key
    );
    let open = Arc::new(AtomicU64::new(0));
    let mut trickles = Vec::new();
    for _ in 0..run.uploads {
        let mut stream = TcpStream::connect(&addr).await?;
        stream.write_all(head.as_bytes()).await?;
        let open = open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        trickles.push(tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if stream.write_all(b" ").await.is_err() {
                            break;
                        }
                    }
                    // The server answered (a timeout) or closed the connection.
                    read = stream.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) { break },
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    // Let the server take in every head.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let body: serde_json::Value = serde_json::from_str(&run.body).context("--body is not JSON")?;
    let latencies = Arc::new(Mutex::new(histogram()));
    let (accepted, shed, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let total = run.rate * run.seconds;
    let interval = Duration::from_secs_f64(1.0 / run.rate as f64);
    let endpoint = format!("{}/v1/jobs", run.url.trim_end_matches('/'));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (client, endpoint, key, body) = (
            client.clone(),
            endpoint.clone(),
            run.key.clone(),
            body.clone(),
        );
        let (latencies, accepted, shed, other) = (
            latencies.clone(),
            accepted.clone(),
            shed.clone(),
            other.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(&endpoint)
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await;
            let status = res.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
            if let Ok(r) = res {
                let _ = r.bytes().await;
            }
            let took = due.elapsed();
            match status {
                202 => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    latencies
                        .lock()
                        .await
                        .record(took.as_micros().max(1) as u64)
                        .ok();
                }
                503 => {
                    shed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    other.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let still_open = open.load(Ordering::Relaxed);
    for t in trickles {
        t.abort();
    }
    println!(
        "slow clients: {} trickling uploads (still open at the end: {still_open}); \
         {} submissions/s for {}s: accepted {}, shed (503) {}, other {}",
        run.uploads,
        run.rate,
        run.seconds,
        accepted.load(Ordering::Relaxed),
        shed.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    report(
        &format!("submit latency with {} trickling uploads", run.uploads),
        &*latencies.lock().await,
    );
    Ok(())
}
