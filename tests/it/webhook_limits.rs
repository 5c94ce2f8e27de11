//! Webhooks under a careless or hostile tenant, on both backends: one account's stuck
//! receivers cost another account nothing, URLs on one host share its limit, deliveries
//! that could not start before a hold lapsed are put off in SQL unclaimed, endpoints
//! are capped and paged, every attempt sent is in the log however many redeliveries are
//! asked for at once, a destination the guard refuses fails at once, and `localhost` (or a
//! name for a private address) is refused when submitted. An event for hundreds of
//! endpoints (written and pushed in batches) reaches each of them once, and a burst of
//! deliveries that cannot start yet is claimed or put off in a few statements, each
//! fenced as one at a time would be.

use std::time::{Duration, Instant};

use mediagate::config::Config;
use mediagate_engine::ids::now_ms;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::receiver::{Receiver, Reply};
use crate::support::{Backend, TestApp, new_key, status_of};

on_both_backends!(
    a_stuck_account_does_not_delay_another_accounts_webhooks,
    urls_on_one_host_share_its_limit,
    deliveries_that_cannot_start_in_time_are_put_off_unclaimed,
    endpoints_are_capped_and_paged,
    a_redelivery_storm_records_every_attempt_sent,
    a_blocked_destination_fails_at_once_with_the_reason,
    localhost_and_private_names_are_refused_at_submission,
    an_event_for_hundreds_of_endpoints_reaches_each_once,
    a_burst_of_parked_deliveries_is_written_in_a_few_statements,
);

/// Loopback receivers are reachable, and the schedule is short.
async fn start(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
    TestApp::start_with(backend, move |c| {
        c.webhook_allow_cidrs = "127.0.0.0/8".to_owned();
        c.webhooks.schedule = crate::support::schedule("0");
        tweak(c);
    })
    .await
}

fn image_job(prompt: &str) -> Value {
    json!({"model": "local/image", "input": {"prompt": prompt, "size": "64x64"}})
}

async fn create_endpoint(app: &TestApp, key: &str, url: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/webhook-endpoints", app.url))
        .bearer_auth(key)
        .json(&json!({"url": url}))
        .send()
        .await
        .unwrap()
}

async fn deliveries(app: &TestApp, job_id: &str) -> Vec<Value> {
    let list = app.get_json(&format!("/v1/jobs/{job_id}/deliveries")).await;
    list["data"].as_array().expect("a list").clone()
}

/// Polls until `done` holds, for at most `limit`.
async fn eventually<T>(limit: Duration, mut done: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = done().await {
            return v;
        }
        assert!(start.elapsed() < limit, "never got there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_stuck_account_does_not_delay_another_accounts_webhooks(backend: Backend) {
    // Eight attempt slots per process, at most four for one account, two per destination.
    // The stuck account's receivers never answer within the 30 s timeout.
    let app = start(backend, |c| {
        c.webhooks.concurrency = 8;
        c.webhooks.per_account_concurrency = 4;
        c.webhooks.per_url_concurrency = 2;
        c.webhooks.timeout = Duration::from_millis(30_000);
        c.webhooks.max_endpoints_per_account = 100;
    })
    .await;
    let mut hanging = Vec::new();
    for _ in 0..8 {
        hanging.push(Receiver::start(|_, _| Reply::ok().after(Duration::from_secs(120))).await);
    }
    // Many endpoints, on many destinations: alone they could take every slot.
    for rx in &hanging {
        for i in 0..5 {
            let res = create_endpoint(&app, &app.key, &rx.url(&format!("/stuck?i={i}"))).await;
            assert_eq!(res.status(), StatusCode::CREATED);
        }
    }
    let stuck_job = app.submit(image_job("stuck")).await;
    let stuck_id = stuck_job["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    // The stuck account holds its share: its attempts are under way and hang.
    eventually(Duration::from_secs(30), async || {
        let n: usize = hanging.iter().map(|rx| rx.hits().len()).sum();
        (n >= 4).then_some(())
    })
    .await;

    let other = new_key(app.running.as_ref().unwrap(), "acct_quiet").await;
    let fast = Receiver::start(|_, _| Reply::ok()).await;
    let req = app
        .client
        .post(format!("{}/v1/jobs", app.url))
        .bearer_auth(&other)
        .json(
            &json!({"model": "local/image", "input": {"prompt": "quiet", "size": "64x64"},
                      "webhook": {"url": fast.url("/quiet")}}),
        );
    assert_eq!(status_of(req).await, StatusCode::ACCEPTED);
    // Were the stuck account allowed every slot, this would wait for the 30 s timeout.
    fast.wait_hits(1, Duration::from_secs(60)).await;
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the other account's webhook came only after {:?}",
        started.elapsed()
    );
    // ...and it came while the stuck ones were still hanging: none has ended yet.
    let log = deliveries(&app, &stuck_id).await;
    assert_eq!(log.len(), 40);
    assert!(
        log.iter()
            .all(|d| d["attempts"].as_array().unwrap().is_empty()),
        "{log:#?}"
    );
    let hits: usize = hanging.iter().map(|rx| rx.hits().len()).sum();
    assert!(hits <= 4, "the stuck account made {hits} attempts at once");
}

async fn urls_on_one_host_share_its_limit(backend: Backend) {
    let app = start(backend, |c| {
        c.webhooks.per_url_concurrency = 2;
        c.webhooks.timeout = Duration::from_millis(30_000);
    })
    .await;
    let hanging = Receiver::start(|_, _| Reply::ok().after(Duration::from_secs(120))).await;
    let fast = Receiver::start(|_, _| Reply::ok()).await;
    for i in 0..6 {
        let url = hanging.url(&format!("/h?i={i}"));
        assert_eq!(
            create_endpoint(&app, &app.key, &url).await.status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(
        create_endpoint(&app, &app.key, &fast.url("/f"))
            .await
            .status(),
        StatusCode::CREATED
    );
    app.submit(image_job("one host")).await;
    // The account's other destination is served meanwhile.
    fast.wait_hits(1, Duration::from_secs(30)).await;
    hanging.wait_hits(2, Duration::from_secs(30)).await;
    // Give the other four every chance to start, were they counted apart.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        hanging.hits().len(),
        2,
        "six URLs on one host and port are one destination"
    );
}

/// One attempt under way per destination and per account, and a hold as long as the
/// timeout: one delivery may wait in memory behind the attempt, and the rest cannot
/// start before a hold on them would lapse. Those are put off in SQL without being
/// claimed (their one write is the new due time): no attempt, no hold, the task's
/// sequence unchanged, due again when the backlog ahead of them should be gone.
async fn deliveries_that_cannot_start_in_time_are_put_off_unclaimed(backend: Backend) {
    let timeout = Duration::from_secs(600);
    let app = start(backend, |c| {
        c.webhooks.per_url_concurrency = 1;
        c.webhooks.per_account_concurrency = 1;
        c.webhooks.timeout = timeout;
    })
    .await;
    let hanging = Receiver::start(|_, _| Reply::ok().after(Duration::from_secs(120))).await;
    for i in 0..4 {
        let url = hanging.url(&format!("/h?i={i}"));
        assert_eq!(
            create_endpoint(&app, &app.key, &url).await.status(),
            StatusCode::CREATED
        );
    }
    let job = app.submit(image_job("put off")).await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    hanging.wait_hits(1, Duration::from_secs(30)).await;
    let pool = app.engine().db.pool();
    let rows = eventually(Duration::from_secs(30), async || {
        let rows = mediagate_engine::db::webhook_deliveries::for_job(pool, &job_id)
            .await
            .unwrap();
        let settled = rows.len() == 4
            && rows
                .iter()
                .all(|(d, _)| d.seq == 1 || d.next_attempt_at > Some(now_ms() + 1000));
        settled.then_some(rows)
    })
    .await;
    let now = now_ms();
    let (held, put_off): (Vec<_>, Vec<_>) = rows.iter().partition(|(d, _)| d.seq == 1);
    assert_eq!(held.len(), 2, "one attempt and one waiting: {rows:#?}");
    assert!(held.iter().all(|(d, _)| d.claimed_until > now), "{rows:#?}");
    // Due again after the backlog ahead (one whole timeout), give or take the jitter.
    let least = now + (timeout.as_millis() as i64) * 8 / 10;
    for (d, attempts) in &put_off {
        assert_eq!(d.seq, 0, "put off without a claim: {d:#?}");
        assert_eq!(d.claimed_until, 0, "{d:#?}");
        assert!(d.next_attempt_at > Some(least), "{d:#?}");
        assert!(attempts.is_empty(), "{d:#?}");
    }
    assert_eq!(hanging.hits().len(), 1, "one attempt at a time");
}

async fn endpoints_are_capped_and_paged(backend: Backend) {
    let app = start(backend, |c| c.webhooks.max_endpoints_per_account = 5).await;
    let rx = Receiver::start(|_, _| Reply::ok()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let res = create_endpoint(&app, &app.key, &rx.url(&format!("/e{i}"))).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let res = create_endpoint(&app, &app.key, &rx.url("/e5")).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "conflict_error", "{body}");
    assert_eq!(body["error"]["code"], "endpoint_limit_reached", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains('5'));

    // Pages of two, oldest first, in the cursor style of GET /v1/jobs.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/webhook-endpoints?limit=2&after={a}"),
            None => "/v1/webhook-endpoints?limit=2".to_owned(),
        };
        let page = app.get_json(&path).await;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        assert_eq!(page["last_id"], data.last().unwrap()["id"]);
        if page["has_more"] == false {
            break;
        }
        after = page["last_id"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, ids);
    let all = app.get_json("/v1/webhook-endpoints").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 5);
    assert_eq!(all["has_more"], false);
    for bad in ["limit=0", "limit=101", "limit=x", "after=job_1"] {
        let res = app
            .get(&format!("/v1/webhook-endpoints?{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = res.json().await.unwrap();
        let param = bad.split('=').next().unwrap();
        assert_eq!(body["error"]["param"], param, "{bad}: {body}");
    }

    // A deleted endpoint frees its place; another account has places of its own.
    let res = app
        .client
        .delete(format!("{}/v1/webhook-endpoints/{}", app.url, ids[0]))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        create_endpoint(&app, &app.key, &rx.url("/again"))
            .await
            .status(),
        StatusCode::CREATED
    );
    // Creations racing each other cannot pass the cap together.
    let other = new_key(app.running.as_ref().unwrap(), "acct_racer").await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (client, url, key) = (app.client.clone(), app.url.clone(), other.clone());
            let hook = rx.url(&format!("/race{i}"));
            tokio::spawn(async move {
                client
                    .post(format!("{url}/v1/webhook-endpoints"))
                    .bearer_auth(&key)
                    .json(&json!({"url": hook}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(created, 5);
}

async fn a_redelivery_storm_records_every_attempt_sent(backend: Backend) {
    let app = start(backend, |_| {}).await;
    // Slow enough that redeliveries overlap attempts under way.
    let rx = Receiver::start(|_, _| Reply::ok().after(Duration::from_millis(300))).await;
    let mut job = image_job("storm");
    job["webhook"] = json!({"url": rx.url("/storm")});
    let job = app.submit(job).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let first = eventually(Duration::from_secs(30), async || {
        let log = deliveries(&app, &id).await;
        log.first()
            .filter(|d| d["status"] == "delivered")
            .map(|d| d["id"].as_str().unwrap().to_owned())
    })
    .await;
    // Redeliveries keep coming while earlier ones are still being sent: bursts of three,
    // 50 ms apart, for about as long as ten attempts take.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        for _ in 0..3 {
            let (client, url, key) = (app.client.clone(), app.url.clone(), app.key.clone());
            let path = format!("{url}/v1/deliveries/{first}/redeliver");
            tasks.push(tokio::spawn(async move {
                client
                    .post(path)
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::ACCEPTED);
    }
    // Quiet: nothing pending, and no request arriving for a while.
    let log = eventually(Duration::from_secs(60), async || {
        let before = rx.hits().len();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let log = deliveries(&app, &id).await;
        (rx.hits().len() == before && log[0]["status"] != "pending").then_some(log)
    })
    .await;
    let recorded = log[0]["attempts"].as_array().unwrap().len();
    assert_eq!(log[0]["attempt_count"], recorded);
    assert!(rx.hits().len() >= 2, "a redelivery was sent");
    assert_eq!(
        rx.hits().len(),
        recorded,
        "every attempt sent is in the delivery log: {log:#?}"
    );
    let numbers: Vec<i64> = log[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=recorded as i64).collect::<Vec<_>>());
}

async fn a_blocked_destination_fails_at_once_with_the_reason(backend: Backend) {
    // No allow list, and a schedule with retries to spare.
    let app = TestApp::start_with(backend, |c| {
        c.webhooks.schedule = crate::support::schedule("0,200ms,200ms,200ms");
    })
    .await;
    let rx = Receiver::start(|_, _| Reply::ok()).await;
    let port = rx.base.rsplit(':').next().unwrap().to_owned();
    // An endpoint stored before the rules refused it (written past the API's check): the
    // guard at delivery refuses it, for good.
    let engine = app.engine();
    let endpoint = mediagate_engine::db::webhook_endpoints::Endpoint {
        id: mediagate_engine::ids::new_id(mediagate_engine::ids::IdKind::Endpoint),
        account_id: app.account_id().await,
        url: format!("http://localhost:{port}/h"),
        secret: mediagate_engine::webhooks::signature::Secret::generate().to_whsec(),
        events: vec!["job.completed".to_owned()],
        description: String::new(),
        created_at: mediagate_engine::ids::now_ms(),
        failing_since: None,
        disabled_at: None,
        disabled_reason: None,
    };
    assert!(engine.db.insert_endpoint(&endpoint, 100).await.unwrap());
    let job = app.submit(image_job("blocked")).await;
    let id = job["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), async || {
        let log = deliveries(&app, &id).await;
        log.first()
            .is_some_and(|d| d["status"] != "pending")
            .then_some(())
    })
    .await;
    // Had it been retried, the three retries would come within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = deliveries(&app, &id).await;
    assert_eq!(log[0]["status"], "failed", "{log:#?}");
    let attempts = log[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "not retried: {log:#?}");
    let error = attempts[0]["error"].as_str().unwrap();
    assert!(
        error.contains("blocked") && error.contains("localhost"),
        "{error}"
    );
    assert_eq!(log[0]["last_error"], error);
    assert!(rx.hits().is_empty());
}

async fn localhost_and_private_names_are_refused_at_submission(backend: Backend) {
    // No allow list: the quickstart's receiver on this machine is refused up front.
    let app = TestApp::start(backend).await;
    let refused = |res: Value, param: &str| {
        assert_eq!(res["error"]["param"], param, "{res}");
        assert_eq!(res["error"]["type"], "invalid_request_error", "{res}");
        let message = res["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("MEDIAGATE_WEBHOOK_ALLOW_CIDRS"),
            "{message}"
        );
    };
    // Names in /etc/hosts for this machine other than localhost resolve to loopback too;
    // those are judged by what they resolve to.
    let mut urls = vec![
        "http://localhost:9000/hook".to_owned(),
        "http://LOCALHOST./h".to_owned(),
    ];
    if let Some(name) = loopback_alias().await {
        urls.push(format!("http://{name}:9000/hook"));
    }
    for url in &urls {
        let mut job = image_job("local");
        job["webhook"] = json!({"url": url});
        let res = app.post("/v1/jobs").json(&job).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{url}");
        assert!(res.headers().contains_key("x-request-id"));
        refused(res.json().await.unwrap(), "webhook.url");
        let res = create_endpoint(&app, &app.key, url).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{url}");
        refused(res.json().await.unwrap(), "url");
    }
    // Allowed by the operator, the same URL is accepted.
    let open = start(backend, |_| {}).await;
    let mut job = image_job("local");
    job["webhook"] = json!({"url": "http://localhost:9000/hook"});
    let res = open.post("/v1/jobs").json(&job).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
}

/// A name other than `localhost` that this machine resolves to loopback alone (from
/// /etc/hosts), if there is one.
async fn loopback_alias() -> Option<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").ok()?;
    for line in hosts.lines() {
        let mut fields = line.split_whitespace();
        let Some(addr) = fields.next() else { continue };
        if addr.starts_with('#') || !addr.starts_with("127.") {
            continue;
        }
        for name in fields {
            if name.contains("localhost") {
                continue;
            }
            let Ok(addrs) = tokio::net::lookup_host((name, 0)).await else {
                continue;
            };
            let addrs: Vec<_> = addrs.collect();
            if !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()) {
                return Some(name.to_owned());
            }
        }
    }
    None
}

async fn an_event_for_hundreds_of_endpoints_reaches_each_once(backend: Backend) {
    // More endpoints than one batch of the fan-out's insert holds (100), twice over.
    const ENDPOINTS: usize = 230;
    let app = start(backend, |c| {
        c.webhooks.max_endpoints_per_account = ENDPOINTS
    })
    .await;
    let rx = Receiver::start(|_, _| Reply::ok()).await;
    for i in 0..ENDPOINTS {
        let res = app
            .client
            .post(format!("{}/v1/webhook-endpoints", app.url))
            .bearer_auth(&app.key)
            .json(&json!({"url": rx.url(&format!("/e{i}")), "events": ["job.completed"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let mut job = image_job("many");
    job["webhook"] = json!({"url": rx.url("/own")});
    let job = app.submit(job).await;
    let job_id = job["id"].as_str().unwrap();
    let hits = rx.wait_hits(ENDPOINTS + 1, Duration::from_secs(60)).await;
    // Each once: no more arrive, and every path is its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = rx.hits().len().max(hits.len());
    assert_eq!(hits, ENDPOINTS + 1);
    let mut paths: Vec<String> = rx.hits().into_iter().map(|h| h.path).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), ENDPOINTS + 1);
    for hit in rx.hits() {
        assert!(hit.body.contains(job_id), "{}", hit.body);
        assert!(hit.body.contains("job.completed"), "{}", hit.body);
    }
    // The log has each delivery, to its own endpoint, delivered at its first attempt.
    let log = eventually(Duration::from_secs(10), async || {
        let log = deliveries(&app, job_id).await;
        log.iter()
            .all(|d| d["status"] == "delivered")
            .then_some(log)
    })
    .await;
    assert_eq!(log.len(), ENDPOINTS + 1);
    let mut endpoints: Vec<&str> = log
        .iter()
        .filter_map(|d| d["endpoint_id"].as_str())
        .collect();
    endpoints.sort();
    endpoints.dedup();
    assert_eq!(endpoints.len(), ENDPOINTS);
    assert!(
        log.iter()
            .all(|d| d["attempts"].as_array().unwrap().len() == 1)
    );
}

async fn a_burst_of_parked_deliveries_is_written_in_a_few_statements(backend: Backend) {
    use mediagate_engine::db::webhook_deliveries::{self as deliveries, NewDeliveries};
    let app = start(backend, |_| {}).await;
    let engine = app.engine();
    let now = now_ms();
    let ids: Vec<String> = (0..300).map(|i| format!("whd_parked_{i:03}")).collect();
    let url = "http://127.0.0.1:9/parked";
    let rows = NewDeliveries {
        account_id: "acct_parked",
        job_id: "job_parked",
        event_id: "evt_parked",
        event_type: "job.completed",
        now,
        to: ids.iter().map(|id| (id.as_str(), None, url)).collect(),
    };
    let mut conn = engine.db.pool().acquire().await.unwrap();
    deliveries::insert_all(&mut conn, &rows).await.unwrap();
    drop(conn);
    let parking = &engine.webhook_parking;
    let before = parking.statements();

    // 0–149 claimed to wait, twice each (a duplicate task); 150–199 asked at a stale seq;
    // 200–299 put off, each to its own time.
    let claims = (0..200).chain(0..150).map(|i| {
        let seq = if i < 150 { 0 } else { 7 };
        parking.claim_to_wait(&ids[i], seq)
    });
    let put_offs = (200..300).map(|i| parking.put_off(&ids[i], 0, now + 60_000 + i as i64));
    let (claimed, put) = tokio::join!(
        futures::future::join_all(claims),
        futures::future::join_all(put_offs)
    );
    let written = parking.statements() - before;
    assert!(
        written <= 12,
        "450 writes asked for at once took {written} statements"
    );

    let claimed: Vec<_> = claimed.into_iter().map(|r| r.unwrap()).collect();
    let (first, rest) = claimed.split_at(200);
    let (stale, again) = (&first[150..], rest);
    for (i, d) in first[..150].iter().zip(again).enumerate() {
        // Exactly one of the two tasks for a delivery takes it.
        let d = d.0.as_ref().or(d.1.as_ref());
        let d = d.unwrap_or_else(|| panic!("delivery {i} not claimed"));
        assert_eq!(d.seq, 1, "{d:?}");
        assert!(d.claimed_until > now + 590_000, "held for the wait: {d:?}");
    }
    let both = first[..150]
        .iter()
        .zip(again)
        .filter(|(a, b)| a.is_some() && b.is_some())
        .count();
    assert_eq!(both, 0, "a delivery claimed twice");
    assert!(stale.iter().all(Option::is_none), "a stale task claimed");
    assert!(put.iter().all(|r| *r.as_ref().unwrap()), "{put:?}");

    let pool = engine.db.pool();
    for (i, id) in ids.iter().enumerate() {
        let d = deliveries::find(pool, id).await.unwrap().unwrap();
        match i {
            0..150 => assert_eq!((d.seq, d.next_attempt_at), (1, Some(now)), "{d:?}"),
            150..200 => assert_eq!((d.seq, d.claimed_until), (0, 0), "{d:?}"),
            _ => {
                assert_eq!(d.seq, 0, "put off unclaimed: {d:?}");
                assert_eq!(d.next_attempt_at, Some(now + 60_000 + i as i64), "{d:?}");
            }
        }
    }
    // A delivery held by an attempt is not put off, nor one that moved on.
    let held = parking.put_off(&ids[0], 1, now + 1).await.unwrap();
    let moved_on = parking.put_off(&ids[200], 3, now + 1).await.unwrap();
    assert!(!held && !moved_on);
}
