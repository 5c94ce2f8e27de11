//! Redis restarted mid-run, losing everything it held (no persistence): the jobs still
//! complete and their webhooks are still delivered, because Postgres holds the truth and
//! the reaper re-issues job checks and delivery attempts.
//! (Production backend only: the embedded queue has no Redis.)

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::receiver::{Receiver, Reply};
use crate::support::{Backend, TestApp};

/// A private Redis on its own port, so restarting it disturbs no other test.
pub(crate) struct PrivateRedis {
    pub(crate) port: u16,
    child: Child,
}

impl PrivateRedis {
    pub(crate) fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "private redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { port, child }
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

crate::on_production!(jobs_complete_after_redis_restarts_empty);

async fn jobs_complete_after_redis_restarts_empty() {
    let mut redis = PrivateRedis::start(free_port());
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // Every second answer fails, so retries are scheduled in Redis when it goes away.
    let rx = Receiver::start(|n, _| {
        if n % 2 == 0 {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    })
    .await;
    let app = TestApp::start_with(Backend::Production, |c| {
        c.redis_url = Some(url.clone());
        c.webhook_allow_cidrs = "127.0.0.0/8".to_owned();
        c.webhooks.schedule = crate::support::schedule("0,1s,1s,1s,1s,1s");
        c.jobs.reaper_grace = Duration::from_millis(1000);
        c.queue.redis_response_timeout_ms = 1000;
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let job = app
            .submit(
                json!({"model": "local/video", "input": {"prompt": format!("r{i}"), "duration": 1,
                "resolution": "360p", "simulate": {"latency_ms": 1500, "progress_steps": 3}},
                "webhook": {"url": rx.url("/hook"), "events": ["job.started", "job.completed"]}}),
            )
            .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    // Let work get under way, then lose Redis and everything in it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let port = redis.port;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _restarted = PrivateRedis::start(port);

    for id in &ids {
        let job = app.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "completed", "{job}");
        let events = app.engine().db.events_after(id, 0, 100).await.unwrap();
        let completed = events.iter().filter(|e| e.kind == "job.completed").count();
        assert_eq!(completed, 1, "{id}");
    }
    // Every event of every job reaches the receiver (at least once).
    let wanted: Vec<(String, &str)> = ids
        .iter()
        .flat_map(|id| [(id.clone(), "job.started"), (id.clone(), "job.completed")])
        .collect();
    rx.wait_for(Duration::from_secs(60), |hits| {
        let answered: Vec<(String, String)> = hits
            .iter()
            .enumerate()
            .filter(|(n, _)| n % 2 == 1)
            .map(|(_, h)| {
                let body = h.json();
                (
                    body["data"]["id"].as_str().unwrap().to_owned(),
                    body["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        wanted
            .iter()
            .all(|(id, kind)| answered.iter().any(|(i, k)| i == id && k == kind))
    })
    .await;
    // The end-of-test check reads the queue: while the restarted Redis is still up.
    app.finish().await;
}
