//! Per-key `requests_per_minute`: exactly N requests of a burst pass and the rest get
//! `429 rate_limited` with `Retry-After`; every answer to a limited key (its successes,
//! its errors, its refusals, on native, chat and compatible routes) carries the
//! `X-RateLimit-*` headers, counting down; other keys keep their own count or none; a
//! refused request writes nothing; the count is shared by the API processes of a
//! deployment (through Redis) and survives Redis going away (counted per process).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use mediagate::api::auth::hash_key;
use mediagate::app::Roles;
use mediagate_engine::db::keys;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::redis_restart::{PrivateRedis, free_port};
use crate::support::{Backend, TestApp, answer, fresh_schema, new_key};
use crate::{on_both_backends, on_production};

on_both_backends!(
    a_burst_gets_exactly_the_limit,
    headers_count_down_on_every_route_and_answer,
    keys_keep_their_own_counts,
    a_slot_frees_after_its_interval,
);

on_production!(
    api_processes_share_one_count,
    the_script_counts_exactly_under_the_namespace,
    without_redis_each_process_counts_on_its_own,
);

/// The id of `key` on `app`.
async fn key_id(app: &TestApp, key: &str) -> String {
    keys::caller_by_hash(app.engine().db.pool(), &hash_key(key))
        .await
        .expect("key lookup")
        .expect("the key exists")
        .key_id
}

/// Limits `key` on `app` to `rpm` requests per minute (`None`: no limit).
async fn limit(app: &TestApp, key: &str, rpm: Option<i64>) {
    let id = key_id(app, key).await;
    let changed = keys::set_requests_per_minute(app.engine().db.pool(), &id, rpm)
        .await
        .expect("set the limit");
    assert!(changed, "the key {id} exists");
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A header as an integer (the test fails when it is missing or not one).
fn int(headers: &HeaderMap, name: &str) -> i64 {
    let value = headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"));
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name}: {value:?} is not an integer"))
}

/// The rate-limit headers of an answer: (limit, remaining, reset).
fn rate_headers(headers: &HeaderMap) -> (i64, i64, i64) {
    let reset = int(headers, "x-ratelimit-reset");
    let now = now_secs();
    assert!(
        reset >= now && reset <= now + 61,
        "X-RateLimit-Reset {reset} is not within the minute after {now}"
    );
    (
        int(headers, "x-ratelimit-limit"),
        int(headers, "x-ratelimit-remaining"),
        reset,
    )
}

fn assert_no_rate_headers(headers: &HeaderMap) {
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(headers.get(name).is_none(), "{name} on an unlimited key");
    }
}

/// A `429` in the SPEC shape with its `Retry-After` (returned) and headers (remaining 0).
async fn assert_refused(res: reqwest::Response, rpm: i64) -> i64 {
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = res.headers().clone();
    let retry = int(&headers, "retry-after");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(rate_headers(&headers).0, rpm);
    assert_eq!(rate_headers(&headers).1, 0);
    let body: Value = res.json().await.expect("a JSON body");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per minute")
    );
    assert!(body["error"]["param"].is_null());
    retry
}

/// `n` concurrent `GET path` with `key` against `base`.
async fn burst(
    app: &TestApp,
    base: &str,
    key: &str,
    path: &str,
    n: usize,
) -> Vec<reqwest::Response> {
    let sends = (0..n).map(|_| {
        app.client
            .get(format!("{base}{path}"))
            .bearer_auth(key)
            .send()
    });
    join_all(sends)
        .await
        .into_iter()
        .map(|r| r.expect("request"))
        .collect()
}

async fn a_burst_gets_exactly_the_limit(backend: Backend) {
    let app = TestApp::start(backend).await;
    limit(&app, &app.key, Some(4)).await;
    let answers = burst(&app, &app.url, &app.key, "/v1/jobs", 12).await;
    let mut remaining = Vec::new();
    let mut refused = 0;
    for res in answers {
        if res.status() == StatusCode::OK {
            let (limit, left, _) = rate_headers(res.headers());
            assert_eq!(limit, 4);
            remaining.push(left);
        } else {
            assert_refused(res, 4).await;
            refused += 1;
        }
    }
    remaining.sort();
    assert_eq!(
        remaining,
        [0, 1, 2, 3],
        "exactly 4 of 12 pass, each counted"
    );
    assert_eq!(refused, 8);

    // A refused request writes nothing: no job, however valid its body.
    let res = app
        .post("/v1/jobs")
        .header("idempotency-key", "rl-1")
        .json(&json!({"model": "local/image", "input": {"prompt": "a fox"}}))
        .send()
        .await
        .expect("request");
    assert_refused(res, 4).await;
    let pool = app.engine().db.pool();
    let (jobs,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs")
        .fetch_one(pool)
        .await
        .unwrap();
    let (claims,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM idempotency_keys")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!((jobs, claims), (0, 0), "a refused request left rows behind");
    app.finish().await;
}

async fn headers_count_down_on_every_route_and_answer(backend: Backend) {
    let app = TestApp::start(backend).await;
    limit(&app, &app.key, Some(6)).await;
    // One count across native, chat and compatible routes, and across successes and
    // errors from the handlers (404, 400): each answer says what is left.
    let requests = [
        (app.get("/v1/models"), 200),
        (
            app.get("/v1/jobs/job_0000000000000000000000000000dead"),
            404,
        ),
        (
            app.post("/v1/chat/completions").json(
                &json!({"model": "local/chat", "messages": [{"role": "user", "content": "hi"}]}),
            ),
            200,
        ),
        (app.post("/v1/chat/completions").body("{not json"), 400),
        (app.get("/api/v1/models"), 200),
        (app.get("/v1/videos"), 200),
    ];
    let mut reset = 0;
    for (n, (req, status)) in requests.into_iter().enumerate() {
        let res = req.send().await.expect("request");
        assert_eq!(res.status().as_u16(), status, "request {n}");
        let (limit, left, at) = rate_headers(res.headers());
        assert_eq!((limit, left), (6, 5 - n as i64), "request {n}");
        // Each request pushes the moment the whole allowance is back further out.
        assert!(at >= reset, "reset went back: {at} < {reset}");
        reset = at;
    }
    // Used up: native, chat and OpenRouter routes all refuse, with the headers. The
    // OpenRouter route answers in its own error shape.
    assert_refused(app.get("/v1/jobs").send().await.unwrap(), 6).await;
    let chat = app
        .post("/v1/chat/completions")
        .json(&json!({"model": "local/chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_refused(chat, 6).await;
    let openrouter = app.get("/api/v1/models").send().await.unwrap();
    assert_eq!(openrouter.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(int(openrouter.headers(), "retry-after") >= 1);
    assert_eq!(rate_headers(openrouter.headers()).1, 0);
    let body: Value = openrouter.json().await.unwrap();
    assert_eq!(body["error"]["code"], 429, "{body}");
    assert_eq!(body["error"]["metadata"]["code"], "rate_limited", "{body}");
    // A bad key is not a limited caller: 401, no rate headers.
    let res = app
        .client
        .get(format!("{}/v1/jobs", app.url))
        .bearer_auth("mg_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_no_rate_headers(res.headers());
    app.finish().await;
}

async fn keys_keep_their_own_counts(backend: Backend) {
    // No key cache, so limit changes reach the API at once.
    let app = TestApp::start_with(backend, |c| c.auth_cache_ms = 0).await;
    let running = app.running.as_ref().unwrap();
    let account = app.account_id().await;
    let sibling = new_key(running, &account).await;
    let unlimited = new_key(running, &account).await;
    limit(&app, &app.key, Some(2)).await;
    limit(&app, &sibling, Some(3)).await;
    for _ in 0..2 {
        assert_eq!(app.get("/v1/jobs").send().await.unwrap().status(), 200);
    }
    assert_refused(app.get("/v1/jobs").send().await.unwrap(), 2).await;
    // The same account's other keys: their own count, or none at all.
    let res = burst(&app, &app.url, &sibling, "/v1/jobs", 1)
        .await
        .remove(0);
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(rate_headers(res.headers()).1, 2);
    for res in burst(&app, &app.url, &unlimited, "/v1/jobs", 10).await {
        assert_eq!(res.status(), StatusCode::OK);
        assert_no_rate_headers(res.headers());
    }
    // Lifting the limit lifts the refusals and the headers.
    limit(&app, &app.key, None).await;
    let res = app.get("/v1/jobs").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_no_rate_headers(res.headers());
    app.finish().await;
}

async fn a_slot_frees_after_its_interval(backend: Backend) {
    // 60 a minute: after a burst, one request a second.
    let app = TestApp::start(backend).await;
    limit(&app, &app.key, Some(60)).await;
    let mut retry = None;
    for _ in 0..5 {
        for res in burst(&app, &app.url, &app.key, "/v1/models", 40).await {
            if res.status() == StatusCode::TOO_MANY_REQUESTS {
                retry = Some(assert_refused(res, 60).await);
            }
        }
        if retry.is_some() {
            break;
        }
    }
    let retry = retry.expect("a burst past 60 was refused");
    assert_eq!(retry, 1, "one slot a second");
    tokio::time::sleep(Duration::from_secs(retry as u64)).await;
    let res = app.get("/v1/models").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the slot freed");
    app.finish().await;
}

async fn api_processes_share_one_count() {
    // Two API processes of one deployment: one database, one queue namespace in Redis.
    let database = fresh_schema().await;
    let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    let shared = |c: &mut mediagate::config::Config| {
        c.database_url = Some(database.clone());
        c.queue.prefix = prefix.clone();
    };
    let first = TestApp::builder(Backend::Production)
        .config(shared)
        .start()
        .await;
    let second = TestApp::builder(Backend::Production)
        .config(shared)
        .roles(Roles::API)
        .start()
        .await;
    limit(&first, &first.key, Some(5)).await;
    let (a, b) = futures::join!(
        burst(&first, &first.url, &first.key, "/v1/jobs", 8),
        burst(&first, &second.url, &first.key, "/v1/jobs", 8),
    );
    let passed = a
        .iter()
        .chain(&b)
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(passed, 5, "5 across both processes, not 5 each");
    for res in a.into_iter().chain(b) {
        if res.status() != StatusCode::OK {
            assert_refused(res, 5).await;
        }
    }
    second.finish().await;
    first.finish().await;
}

async fn the_script_counts_exactly_under_the_namespace() {
    let app = TestApp::start(Backend::Production).await;
    let limiter = &app.engine().rate_limiter;
    let decisions = join_all((0..10).map(|_| limiter.check("key_script", 7))).await;
    let mut remaining: Vec<u64> = decisions
        .iter()
        .filter(|d| d.allowed)
        .map(|d| d.remaining)
        .collect();
    remaining.sort();
    assert_eq!(remaining, [0, 1, 2, 3, 4, 5, 6]);
    for refused in decisions.iter().filter(|d| !d.allowed) {
        // 7 a minute: the next slot within 60/7 s.
        assert!(refused.retry_after <= Duration::from_micros(60_000_000 / 7));
        assert!(refused.retry_after > Duration::from_secs(8));
    }
    // The count lives in the deployment's namespace, and goes when the minute does.
    let mediagate_workers::Connection::Redis(conn) = app.engine().queue.connection() else {
        panic!("production runs on Redis");
    };
    let key = format!("{}:ratelimit:key_script", app.engine().queue.prefix());
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "PTTL {key} = {ttl}");
    // A limit of 0 refuses everything and counts nothing.
    let blocked = limiter.check("key_blocked", 0).await;
    assert!(!blocked.allowed);
    assert_eq!(blocked.retry_after_secs(), 60);
    app.finish().await;
}

async fn without_redis_each_process_counts_on_its_own() {
    let mut redis = PrivateRedis::start(free_port());
    let port = redis.port;
    let app = TestApp::start_with(Backend::Production, |c| {
        c.redis_url = Some(format!("redis://127.0.0.1:{port}"));
        c.queue.redis_response_timeout_ms = 1000;
    })
    .await;
    limit(&app, &app.key, Some(3)).await;
    let res = app.get("/v1/models").send().await.unwrap();
    assert_eq!(rate_headers(res.headers()).1, 2, "counted in Redis");
    redis.kill();
    // Redis is gone: no request fails for it, and the limit still holds, in process.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let res = answer(app.get("/v1/models")).await;
        statuses.push(res.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let res = app.get("/v1/models").send().await.unwrap();
    assert_refused(res, 3).await;
    // The end-of-test check reads the queue, so Redis comes back first.
    let _restarted = PrivateRedis::start(port);
    app.finish().await;
}
