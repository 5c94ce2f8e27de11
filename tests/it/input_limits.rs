//! What a client may send: unknown parameters are refused by name at every level, `input`
//! and `metadata` have limits, text the database cannot store (NUL) is refused wherever it
//! comes (JSON, query, path), integers are plain digits, and list pages stay bounded in
//! memory however large the rows.

use mediagate_engine::db::events;
use mediagate_engine::db::jobs::{self, NewJob};
use mediagate_engine::ids::{IdKind, new_id, now_ms};
use mediagate_engine::jobs::job::{JobKind, JobStatus};
use mediagate_engine::jobs::routing::RouteEntry;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, answer, status_of};
use crate::{on_both_backends, on_embedded};

on_embedded!(
    unknown_parameters_are_refused_by_name_at_every_level,
    integers_are_plain_digits,
);
on_both_backends!(
    input_and_metadata_have_limits,
    nul_is_refused_in_every_place_a_client_can_put_it,
    list_pages_stay_bounded_over_huge_rows,
    event_batches_stay_bounded_over_huge_rows,
);

/// Asserts a 400 in the SPEC shape and returns its `error`.
async fn bad_request(res: reqwest::Response) -> Value {
    let status = res.status();
    assert!(res.headers().contains_key("x-request-id"), "{status}");
    let body: Value = res.json().await.expect("error bodies are JSON");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let e = body["error"].clone();
    assert!(e["type"].is_string() && e["message"].is_string(), "{body}");
    e
}

async fn post_json(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.post(path).json(body).send().await.expect("request")
}

fn job(extra: Value) -> Value {
    let mut body = json!({"model": "local/image", "input": {"prompt": "x", "size": "64x64"}});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn unknown_parameters_are_refused_by_name_at_every_level(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.webhook_allow_cidrs = "127.0.0.0/8".into();
    })
    .await;
    let hook = "http://127.0.0.1:9/hook";
    let cases = [
        (job(json!({"webhok": {"url": hook}})), "webhok"),
        (job(json!({"simulate": {"fail": "permanent"}})), "simulate"),
        (
            job(json!({"webhook": {"url": hook, "secret": "whsec_mine"}})),
            "webhook.secret",
        ),
        (
            job(json!({"provider": {"order": ["local"], "sort": "price"}})),
            "provider.sort",
        ),
        (
            job(json!({"input": {"prompt": "x", "negative_prompt": "blur"}})),
            "input.negative_prompt",
        ),
        // A name other models take, but not this one.
        (
            job(json!({"input": {"prompt": "x", "duration": 4}})),
            "input.duration",
        ),
        (
            job(json!({"input": {"prompt": "x", "simulate": {"latency": 10}}})),
            "input.simulate.latency",
        ),
        // With fallbacks a field must suit every model listed: any may serve the job.
        (
            json!({"models": ["local/image", "black-forest-labs/flux-2-pro"],
                   "input": {"prompt": "x", "simulate": {"latency_ms": 1}}}),
            "input.simulate",
        ),
    ];
    for (body, param) in cases {
        let e = bad_request(post_json(&app, "/v1/jobs", &body).await).await;
        assert_eq!(
            (e["code"].as_str(), e["param"].as_str()),
            (Some("parameter_unknown"), Some(param)),
            "{body}: {e}"
        );
    }
    let e = bad_request(
        post_json(
            &app,
            "/v1/webhook-endpoints",
            &json!({"url": hook, "secret": "whsec_mine"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (e["code"].as_str(), e["param"].as_str()),
        (Some("parameter_unknown"), Some("secret")),
        "{e}"
    );
    // A misspelt provider name would have been ignored silently.
    let e = bad_request(
        post_json(
            &app,
            "/v1/jobs",
            &job(json!({"provider": {"ignore": ["replciate"]}})),
        )
        .await,
    )
    .await;
    assert_eq!(e["param"], "provider.ignore[0]", "{e}");
    // Nothing was written.
    assert_eq!(app.get_json("/v1/jobs").await["data"], json!([]));
    assert_eq!(
        app.get_json("/v1/webhook-endpoints").await["data"],
        json!([])
    );
    // The catalog says which names each model takes.
    let models = app.get_json("/v1/models").await;
    let image = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "local/image")
        .expect("local/image listed")
        .clone();
    let parameters = image["accepts"]["parameters"].as_array().unwrap();
    assert!(parameters.contains(&json!("simulate")), "{image}");
    assert!(!parameters.contains(&json!("duration")), "{image}");
    // The same fields, spelt right, are taken.
    app.submit(job(
        json!({"webhook": {"url": hook, "events": ["job.completed"]},
                          "provider": {"order": ["local"], "allow_fallbacks": false}}),
    ))
    .await;
}

async fn input_and_metadata_have_limits(backend: Backend) {
    let app = TestApp::start(backend).await;
    let many: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (json!({"metadata": many}), "metadata"),
        (json!({"metadata": {"k".repeat(41): "v"}}), "metadata"),
        (
            json!({"metadata": {"note": "x".repeat(501)}}),
            "metadata.note",
        ),
        (json!({"metadata": {"count": 3}}), "metadata.count"),
        (
            json!({"metadata": {"nested": {"a": "b"}}}),
            "metadata.nested",
        ),
    ];
    for (extra, param) in cases {
        let e = bad_request(post_json(&app, "/v1/jobs", &job(extra.clone())).await).await;
        assert_eq!(e["param"], param, "{extra}: {e}");
    }
    // At the limits exactly: taken (characters, not bytes).
    let full: serde_json::Map<String, Value> = (0..50)
        .map(|i| (format!("{i:0>40}"), json!("é".repeat(500))))
        .collect();
    let created = app.submit(job(json!({"metadata": full}))).await;
    assert_eq!(created["metadata"].as_object().unwrap().len(), 50);

    // Every field of the input is bounded, and so is the whole.
    let long_url = format!("https://example.com/{}", "a".repeat(4096));
    let e = bad_request(
        post_json(
            &app,
            "/v1/jobs",
            &json!({"model": "black-forest-labs/flux-2-pro",
                    "input": {"prompt": "x", "image": long_url}}),
        )
        .await,
    )
    .await;
    assert_eq!(e["param"], "input.image", "{e}");
    let url = format!("https://example.com/{}", "a".repeat(4000));
    let e = bad_request(
        post_json(
            &app,
            "/v1/jobs",
            &json!({"model": "black-forest-labs/flux-2-pro",
                    "input": {"prompt": "🦊".repeat(10_000),
                              "reference_images": vec![url; 8]}}),
        )
        .await,
    )
    .await;
    assert_eq!(e["param"], "input", "{e}");
    assert_eq!(
        app.get_json("/v1/jobs").await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn nul_is_refused_in_every_place_a_client_can_put_it(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.webhook_allow_cidrs = "127.0.0.0/8".into();
    })
    .await;
    let nul = "a\u{0}b";
    let bodies = [
        (
            "/v1/jobs",
            job(json!({"webhook": {"url": format!("http://127.0.0.1:9/{nul}")}})),
            Some("webhook.url"),
        ),
        (
            "/v1/jobs",
            job(json!({"input": {"prompt": nul}})),
            Some("input.prompt"),
        ),
        (
            "/v1/jobs",
            job(json!({"metadata": {"order": nul}})),
            Some("metadata.order"),
        ),
        (
            "/v1/jobs",
            job(json!({"metadata": {nul: "v"}})),
            Some("metadata"),
        ),
        ("/v1/jobs", json!({nul: 1}), None),
        (
            "/v1/jobs",
            json!({"model": nul, "input": {"prompt": "x"}}),
            Some("model"),
        ),
        (
            "/v1/webhook-endpoints",
            json!({"url": format!("http://127.0.0.1:9/{nul}")}),
            Some("url"),
        ),
        (
            "/v1/webhook-endpoints",
            json!({"url": "http://127.0.0.1:9/hook", "description": nul}),
            Some("description"),
        ),
    ];
    for (path, body, param) in bodies {
        let e = bad_request(post_json(&app, path, &body).await).await;
        assert_eq!(
            (e["code"].as_str(), e["param"].as_str()),
            (Some("invalid_character"), param),
            "{path} {body}: {e}"
        );
    }
    let created = app.submit(job(json!({}))).await;
    let id = created["id"].as_str().unwrap();
    let gets = [
        ("/v1/jobs?model=%00".to_owned(), Some("model")),
        ("/v1/jobs?status=%00".to_owned(), Some("status")),
        ("/v1/jobs?after=job_%00".to_owned(), Some("after")),
        ("/v1/jobs?limit=1&x%00=1".to_owned(), None),
        (format!("/v1/jobs/{id}/content?index=%00"), Some("index")),
        ("/v1/jobs/%00".to_owned(), Some("id")),
        ("/v1/jobs/job_%00/events".to_owned(), Some("id")),
        ("/v1/jobs/job_%00/deliveries".to_owned(), Some("id")),
        ("/v1/webhook-endpoints/%00".to_owned(), Some("id")),
        ("/v1/files/%00".to_owned(), Some("token")),
    ];
    for (path, param) in gets {
        let e = bad_request(app.get(&path).send().await.unwrap()).await;
        assert_eq!(
            (e["code"].as_str(), e["param"].as_str()),
            (Some("invalid_character"), param),
            "{path}: {e}"
        );
    }
    for path in [
        "/v1/jobs/%00/cancel",
        "/v1/deliveries/%00/redeliver",
        "/v1/webhook-endpoints/%00/enable",
    ] {
        let e = bad_request(app.post(path).send().await.unwrap()).await;
        assert_eq!(e["param"], "id", "{path}: {e}");
    }
    let e = bad_request(
        app.client
            .delete(format!("{}/v1/webhook-endpoints/%00", app.url))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e["param"], "id", "{e}");
    // Nothing but the one good job was written, and it still completes.
    let list = app.get_json("/v1/jobs").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    let done = app
        .wait_terminal(id, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "completed", "{done}");
}

async fn integers_are_plain_digits(backend: Backend) {
    let app = TestApp::start(backend).await;
    for size in ["+64x+64", "+64x64", "64x+64", " 64x64", "-64x64"] {
        let e = bad_request(
            post_json(
                &app,
                "/v1/jobs",
                &json!({"model": "local/image", "input": {"prompt": "x", "size": size}}),
            )
            .await,
        )
        .await;
        assert_eq!(e["param"], "input.size", "{size}: {e}");
    }
    for limit in ["+5", "%2B5", "5%20", "-1", ""] {
        let e = bad_request(
            app.get(&format!("/v1/jobs?limit={limit}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(e["param"], "limit", "{limit}: {e}");
    }
    let created = app.submit(job(json!({}))).await;
    let id = created["id"].as_str().unwrap();
    app.wait_terminal(id, std::time::Duration::from_secs(30))
        .await;
    let e = bad_request(
        app.get(&format!("/v1/jobs/{id}/content?index=%2B0"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e["param"], "index", "{e}");
    assert_eq!(
        status_of(app.get(&format!("/v1/jobs/{id}/content?index=0"))).await,
        StatusCode::OK
    );
}

/// Rows as large as a body could once make them (from before `input` had limits), written
/// straight through the store: a page holds as many as fit its byte budget, says
/// `has_more`, and the cursor walks through all of them once.
async fn list_pages_stay_bounded_over_huge_rows(backend: Backend) {
    let app = TestApp::start(backend).await;
    let account = app.account_id().await;
    const ROWS: usize = 12;
    let mut ids = Vec::new();
    for i in 0..ROWS {
        ids.push(insert_huge_job(&app, &account, i).await);
    }
    ids.reverse(); // newest first, as lists are
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            None => "/v1/jobs?limit=100".to_owned(),
            Some(a) => format!("/v1/jobs?limit=100&after={a}"),
        };
        let res = app.get(&path).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let bytes = res.bytes().await.unwrap();
        // The page's budget is 4 MiB of stored text, plus at most one row past it.
        assert!(
            bytes.len() < 6 << 20,
            "a page of {} bytes for {ROWS} rows of 1 MB",
            bytes.len()
        );
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        let data = page["data"].as_array().unwrap();
        assert!(!data.is_empty(), "a page always makes progress");
        seen.extend(data.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        pages += 1;
        if page["has_more"] == false {
            break;
        }
        after = Some(page["last_id"].as_str().unwrap().to_owned());
        assert!(pages <= ROWS, "the cursor must move on");
    }
    assert_eq!(seen, ids, "every row once, newest first");
    assert!(pages >= 3, "{ROWS} rows of 1 MB took {pages} page(s)");
}

/// A job of about 1 MB (input and metadata past today's limits, as rows from before them
/// may be), written straight through the store and ended at once so no worker touches it.
async fn insert_huge_job(app: &TestApp, account: &str, i: usize) -> String {
    let now = now_ms();
    let new = NewJob {
        id: new_id(IdKind::Job),
        account_id: account.to_owned(),
        kind: JobKind::Image,
        model: "local/image".to_owned(),
        provider: "local".to_owned(),
        input: json!({"prompt": "p", "junk": format!("{i}{}", "j".repeat(1 << 20))}),
        metadata: json!({"junk": "m".repeat(64 * 1024)}),
        webhook: None,
        route: vec![RouteEntry {
            model: "local/image".to_owned(),
            provider: "local".to_owned(),
            upstream_model: "image".to_owned(),
        }],
        created_at: now,
        deadline_at: now + 600_000,
    };
    let mut conn = app.engine().db.pool().acquire().await.unwrap();
    jobs::insert(&mut *conn, &new).await.unwrap();
    jobs::end(&mut *conn, &new.id, JobStatus::Cancelled, None, now)
        .await
        .unwrap();
    new.id
}

/// Every event holds a copy of its job: a stream over a huge job reads its events in
/// batches bounded in bytes, and still sends every one, in order, ending with the last.
async fn event_batches_stay_bounded_over_huge_rows(backend: Backend) {
    let app = TestApp::start(backend).await;
    let account = app.account_id().await;
    let id = insert_huge_job(&app, &account, 0).await;
    let data = app.job(&id).await;
    const EVENTS: usize = 12;
    let mut conn = app.engine().db.pool().acquire().await.unwrap();
    for i in 0..EVENTS {
        let kind = if i + 1 == EVENTS {
            "job.cancelled"
        } else {
            "job.progress"
        };
        events::insert(&mut *conn, &id, &account, kind, now_ms(), &data)
            .await
            .unwrap();
    }
    drop(conn);
    let store = &app.engine().db;
    let first = store.events_after(&id, 0, 100).await.unwrap();
    assert!(
        !first.is_empty() && first.len() < EVENTS,
        "one batch read {} events of 1 MB",
        first.len()
    );
    let mut seqs: Vec<i64> = first.iter().map(|e| e.seq).collect();
    loop {
        let next = store
            .events_after(&id, *seqs.last().unwrap(), 100)
            .await
            .unwrap();
        if next.is_empty() {
            break;
        }
        seqs.extend(next.iter().map(|e| e.seq));
    }
    assert_eq!(seqs.len(), EVENTS);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The stream sends them all and ends after the terminal one.
    let text = answer(app.get(&format!("/v1/jobs/{id}/events")))
        .await
        .text(200);
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("event: ")
                .or_else(|| l.strip_prefix("event:"))
        })
        .collect();
    assert_eq!(kinds.len(), EVENTS, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"job.cancelled"));
}
