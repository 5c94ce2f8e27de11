//! Money: holds at intake against the balance and every cap, exact under a burst of
//! concurrent requests; settlement on completion, release on failure and cancellation;
//! chat held by its ceiling and settled by its tokens; expired holds released by the
//! reaper; and the ledger reconciling with the balance to the micro-dollar after all of it.

use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::{Backend, TestApp, answer};
use mediagate_engine::billing::{self, HoldKind, HoldRequest, money::MICROS_PER_USD};
use mediagate_engine::db::money::{self as rows, LedgerEntry};
use mediagate_engine::ids::{IdKind, new_id, now_ms};

on_both_backends!(
    a_balance_covers_exactly_the_jobs_it_can_pay_for,
    caps_of_a_key_and_an_account_hold_under_a_burst,
    failed_and_cancelled_jobs_cost_nothing,
    a_key_runs_at_most_its_jobs_in_flight,
    chat_is_held_by_its_ceiling_and_charged_by_its_tokens,
    chat_requests_share_a_lease,
    jobs_of_a_key_share_a_lease,
    a_lease_running_low_has_the_next_one_ready,
    a_key_that_limits_its_jobs_takes_their_money_from_a_lease,
    a_chat_without_max_tokens_is_limited_to_its_hold,
    expired_holds_are_released_and_late_answers_still_charged,
    money_alerts_reach_the_endpoints_that_asked_once,
    a_chat_client_that_leaves_pays_for_what_it_was_sent,
    a_mixed_run_reconciles_to_the_micro,
);

crate::on_embedded!(the_openai_sdk_gets_a_402_it_does_not_retry);

crate::on_embedded!(with_billing_off_nothing_is_held_or_refused);

/// The local models with prices: an image a dollar, a million chat tokens a dollar
/// each way (a request's hold is then easy to reckon).
pub(crate) const PRICED_CATALOG: &str = r#"
[[models]]
id = "local/image"
name = "Local test image (PNG)"
modality = "image"
sizes = true
seed = true
max_outputs = 10
simulate = true
price = { unit = "image", usd = "1" }
providers = [{ provider = "local", model = "image" }]

[[models]]
id = "local/chat"
name = "Local chat (built in)"
modality = "text"
context_length = 32768
simulate = true
price = { unit = "million_tokens", usd = "1", output_usd = "1" }
providers = [{ provider = "local", model = "chat" }]
"#;

/// One dollar at the first tier's markup (40 %).
const ONE_IMAGE: i64 = 1_400_000;

async fn priced_app(backend: Backend) -> (TestApp, tempfile::TempDir) {
    priced_app_with(backend, |_| {}).await
}

/// [`priced_app`] with more settings. Leases finish within a second unless `tweak`
/// says otherwise, so the tests see their money come back.
async fn priced_app_with(
    backend: Backend,
    tweak: impl FnOnce(&mut mediagate::config::Config),
) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, PRICED_CATALOG).unwrap();
    let app = TestApp::start_with(backend, move |c| {
        c.catalog = Some(path);
        c.billing.chat_lease = Duration::from_secs(1);
        c.billing.job_lease = Duration::from_secs(1);
        tweak(c);
    })
    .await;
    (app, dir)
}

fn image_job() -> Value {
    json!({"model": "local/image", "input": {"prompt": "a fox", "size": "64x64"}})
}

/// Makes the app's account prepaid with `micros` of credit, through the ledger.
async fn fund(app: &TestApp, micros: i64) -> String {
    let account = app.account_id().await;
    let mut tx = app.engine().db.begin().await.unwrap();
    sqlx::query("UPDATE accounts SET mode = 'prepaid' WHERE id = $1")
        .bind(&account)
        .execute(&mut *tx)
        .await
        .unwrap();
    rows::adjust_account(&mut *tx, &account, micros, 0)
        .await
        .unwrap();
    let entry = LedgerEntry {
        id: new_id(IdKind::Ledger),
        account_id: &account,
        kind: "topup",
        balance_delta: micros,
        actor: "admin",
        created_at: now_ms(),
        ..LedgerEntry::default()
    };
    rows::insert_ledger(&mut *tx, &entry).await.unwrap();
    tx.commit().await.unwrap();
    account
}

#[derive(Debug, PartialEq, Eq)]
struct Money {
    balance: i64,
    reserved: i64,
}

async fn money(app: &TestApp, account: &str) -> Money {
    let (balance, reserved): (i64, i64) =
        sqlx::query_as("SELECT balance_micros, reserved_micros FROM accounts WHERE id = $1")
            .bind(account)
            .fetch_one(app.engine().db.pool())
            .await
            .unwrap();
    Money { balance, reserved }
}

/// The account's balance and held money are what its ledger adds up to; returns them.
/// One statement reads both, so a settlement committing meanwhile cannot split them.
async fn reconciled(app: &TestApp, account: &str) -> Money {
    let (balance, reserved, ledger_balance, ledger_reserved): (i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT a.balance_micros, a.reserved_micros, \
             CAST(COALESCE((SELECT SUM(balance_delta_micros) FROM ledger l WHERE l.account_id = a.id), 0) AS BIGINT), \
             CAST(COALESCE((SELECT SUM(reserved_delta_micros) FROM ledger l WHERE l.account_id = a.id), 0) AS BIGINT) \
             FROM accounts a WHERE a.id = $1",
        )
        .bind(account)
        .fetch_one(app.engine().db.pool())
        .await
        .unwrap();
    let now = Money { balance, reserved };
    assert_eq!(
        (ledger_balance, ledger_reserved),
        (now.balance, now.reserved),
        "the ledger and the account disagree"
    );
    now
}

/// Fires `n` job submissions at once; the statuses, in any order.
async fn burst(app: &TestApp, key: &str, n: usize) -> Vec<(StatusCode, Value)> {
    let requests = (0..n).map(|_| async {
        let res = app
            .client
            .post(format!("{}/v1/jobs", app.url))
            .bearer_auth(key)
            .json(&image_job())
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json::<Value>().await.unwrap())
    });
    join_all(requests).await
}

/// Sends `req`: its status, headers and JSON body.
async fn send(req: reqwest::RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let res = req.send().await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    (status, headers, res.json().await.unwrap())
}

async fn wait_all_terminal(app: &TestApp, answers: &[(StatusCode, Value)]) {
    for (status, body) in answers {
        if *status == StatusCode::ACCEPTED {
            let id = body["id"].as_str().unwrap();
            app.wait_terminal(id, Duration::from_secs(60)).await;
        }
    }
}

fn count(answers: &[(StatusCode, Value)], status: u16) -> usize {
    answers.iter().filter(|(s, _)| s.as_u16() == status).count()
}

async fn a_balance_covers_exactly_the_jobs_it_can_pay_for(backend: Backend) {
    let (app, _dir) = priced_app(backend).await;
    let account = fund(&app, 10 * ONE_IMAGE).await;
    let answers = burst(&app, &app.key, 200).await;
    assert_eq!(count(&answers, 202), 10, "exactly ten jobs fit the balance");
    assert_eq!(count(&answers, 402), 190);
    let refused = answers.iter().find(|(s, _)| s.as_u16() == 402).unwrap();
    let error = &refused.1["error"];
    assert_eq!(error["type"], "billing_error");
    assert_eq!(error["code"], "insufficient_credits");
    assert_eq!(error["limit"]["scope"], "account");
    assert_eq!(error["limit"]["period"], Value::Null);
    assert_eq!(error["limit"]["requested_usd"], "1.400000");
    // Nothing was queued for a refused request: only the accepted jobs exist.
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE account_id = $1")
        .bind(&account)
        .fetch_one(app.engine().db.pool())
        .await
        .unwrap();
    assert_eq!(jobs, 10);
    // While they run, the balance is all held and never below zero.
    let during = reconciled(&app, &account).await;
    assert!(during.balance >= 0 && during.reserved <= during.balance);
    wait_all_terminal(&app, &answers).await;
    let done = answers.iter().find(|(s, _)| s.as_u16() == 202).unwrap();
    let job = app.job(done.1["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["usage"]["cost_usd"], "1.4000");
    assert_eq!(
        reconciled(&app, &account).await,
        Money {
            balance: 0,
            reserved: 0
        }
    );
    // Spent to the last micro: the next one is refused too.
    assert_eq!(app.post_job(&image_job()).await.status.as_u16(), 402);
    app.finish().await;
}

async fn set_caps(app: &TestApp, table: &str, id: &str, daily: Option<i64>, monthly: Option<i64>) {
    let sql = match table {
        "accounts" => {
            "UPDATE accounts SET daily_limit_micros = $2, monthly_limit_micros = $3 WHERE id = $1"
        }
        _ => "UPDATE api_keys SET daily_limit_micros = $2, monthly_limit_micros = $3 WHERE id = $1",
    };
    sqlx::query(sql)
        .bind(id)
        .bind(daily)
        .bind(monthly)
        .execute(app.engine().db.pool())
        .await
        .unwrap();
}

async fn key_id(app: &TestApp, key: &str) -> String {
    mediagate_engine::db::keys::caller_by_hash(
        app.engine().db.pool(),
        &mediagate::api::auth::hash_key(key),
    )
    .await
    .unwrap()
    .unwrap()
    .key_id
}

async fn caps_of_a_key_and_an_account_hold_under_a_burst(backend: Backend) {
    let (app, _dir) = priced_app(backend).await;
    let account = app.account_id().await;
    // An unlimited account: no balance check, but caps apply.
    let capped_key = app.key.clone();
    set_caps(
        &app,
        "api_keys",
        &key_id(&app, &capped_key).await,
        Some(5 * ONE_IMAGE),
        None,
    )
    .await;
    let answers = burst(&app, &capped_key, 60).await;
    assert_eq!(count(&answers, 202), 5, "the key's daily cap admits five");
    let refused = answers.iter().find(|(s, _)| s.as_u16() == 402).unwrap();
    let error = &refused.1["error"];
    assert_eq!(error["code"], "spend_cap_reached");
    assert_eq!(error["limit"]["scope"], "key");
    assert_eq!(error["limit"]["period"], "day");
    assert_eq!(error["limit"]["limit_usd"], "7.000000");
    assert_eq!(error["limit"]["used_usd"], "7.000000");
    let tomorrow = (now_ms() / 86_400_000 + 1) * 86_400;
    assert_eq!(error["limit"]["resets_at"], tomorrow);
    // A second key of the account is not bound by the first key's cap, but by the
    // account's monthly cap: 8 in all, 5 spent by the first key → 3 more. (A cap counts
    // what was spent before it was set, and what is held from then on.)
    wait_all_terminal(&app, &answers).await;
    let other = crate::support::new_key(app.running.as_ref().unwrap(), &account).await;
    set_caps(&app, "accounts", &account, None, Some(8 * ONE_IMAGE)).await;
    let more = burst(&app, &other, 40).await;
    assert_eq!(
        count(&more, 202),
        3,
        "the account's monthly cap admits three more"
    );
    let refused = more.iter().find(|(s, _)| s.as_u16() == 402).unwrap();
    assert_eq!(refused.1["error"]["limit"]["scope"], "account");
    assert_eq!(refused.1["error"]["limit"]["period"], "month");
    wait_all_terminal(&app, &more).await;
    let spent = reconciled(&app, &account).await;
    assert_eq!(
        spent,
        Money {
            balance: -8 * ONE_IMAGE,
            reserved: 0
        }
    );
    app.finish().await;
}

async fn failed_and_cancelled_jobs_cost_nothing(backend: Backend) {
    let (app, _dir) = priced_app(backend).await;
    let account = fund(&app, 3 * ONE_IMAGE).await;
    let failing = json!({"model": "local/image", "input": {"prompt": "x", "size": "64x64",
        "simulate": {"fail": "permanent"}}});
    let failed = app.submit(failing).await;
    let slow = json!({"model": "local/image", "input": {"prompt": "x", "size": "64x64",
        "simulate": {"latency_ms": 30000}}});
    let cancelled = app.submit(slow).await;
    let done = app.submit(image_job()).await;
    let id = cancelled["id"].as_str().unwrap();
    app.post_expect(&format!("/v1/jobs/{id}/cancel"), 200).await;
    let failed = app
        .wait_terminal(failed["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(failed["status"], "failed");
    app.wait_terminal(done["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(
        reconciled(&app, &account).await,
        Money {
            balance: 2 * ONE_IMAGE,
            reserved: 0
        },
        "only the completed job is charged"
    );
    let kinds: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, CAST(COUNT(*) AS BIGINT) FROM ledger WHERE account_id = $1 GROUP BY kind ORDER BY kind",
    )
    .bind(&account)
    .fetch_all(app.engine().db.pool())
    .await
    .unwrap();
    let kinds: Vec<(&str, i64)> = kinds.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(
        kinds,
        [
            ("release", 2),
            ("reservation", 3),
            ("settlement", 1),
            ("topup", 1)
        ]
    );
    app.finish().await;
}

async fn a_key_runs_at_most_its_jobs_in_flight(backend: Backend) {
    let app = TestApp::start(backend).await;
    let key = key_id(&app, &app.key).await;
    sqlx::query("UPDATE api_keys SET max_concurrent_jobs = 2 WHERE id = $1")
        .bind(&key)
        .execute(app.engine().db.pool())
        .await
        .unwrap();
    let slow = json!({"model": "local/image", "input": {"prompt": "x", "size": "64x64",
        "simulate": {"latency_ms": 1500}}});
    let answers = join_all((0..6).map(|_| send(app.post("/v1/jobs").json(&slow)))).await;
    let accepted: Vec<_> = answers.iter().filter(|a| a.0 == 202).collect();
    assert_eq!(accepted.len(), 2);
    let refused = answers.iter().find(|a| a.0 == 429).unwrap();
    assert_eq!(refused.2["error"]["code"], "too_many_concurrent_jobs");
    assert_eq!(refused.1["retry-after"], "1");
    for a in &accepted {
        app.wait_terminal(a.2["id"].as_str().unwrap(), Duration::from_secs(90))
            .await;
    }
    // Their slots are free again.
    let in_flight: i64 = sqlx::query_scalar("SELECT jobs_in_flight FROM api_keys WHERE id = $1")
        .bind(&key)
        .fetch_one(app.engine().db.pool())
        .await
        .unwrap();
    assert_eq!(in_flight, 0);
    let again = app.submit(slow).await;
    // Generous: local renders of the whole suite share this machine's cores.
    app.wait_terminal(again["id"].as_str().unwrap(), Duration::from_secs(90))
        .await;
    app.finish().await;
}

async fn chat_is_held_by_its_ceiling_and_charged_by_its_tokens(backend: Backend) {
    let (app, _dir) = priced_app(backend).await;
    // Room for the hold of one short request (its prompt + 4096 answer tokens at $1 a
    // million and 40 %: under $0.006), not for one asking 100 000 answer tokens.
    let account = fund(&app, 10_000).await;
    let ask = |extra: Value| {
        let mut body = json!({"model": "local/chat",
            "messages": [{"role": "user", "content": "tell me about foxes"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let big = send(
        app.post("/v1/chat/completions")
            .json(&ask(json!({"max_tokens": 100_000}))),
    )
    .await;
    assert_eq!(big.0, 402, "{:?}", big.2);
    assert_eq!(big.2["error"]["code"], "insufficient_credits");
    assert_eq!(reconciled(&app, &account).await.reserved, 0);
    // An image's tokens are not in its link's few bytes: each counts for
    // IMAGE_PROMPT_TOKENS in the ceiling, which this balance does not cover.
    let image = json!({"model": "local/chat", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://x.test/fox.jpg"}}]}]});
    let pictured = send(app.post("/v1/chat/completions").json(&image)).await;
    assert_eq!(pictured.0, 402, "{:?}", pictured.2);
    assert_eq!(reconciled(&app, &account).await.reserved, 0);
    // Nor are a file's, by id or inline: such a part may fill the model's whole context
    // window (32 768 tokens here), which this balance does not cover either.
    for part in [
        json!({"type": "file", "file": {"file_id": "file-abc123"}}),
        json!({"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}),
        json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
    ] {
        let body = json!({"model": "local/chat", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "summarise this"}, part]}]});
        let filed = send(app.post("/v1/chat/completions").json(&body)).await;
        assert_eq!(filed.0, 402, "{:?}", filed.2);
        let requested = filed.2["error"]["limit"]["requested_usd"].as_str().unwrap();
        // (32 768 + 4 096) tokens at $1 a million, + 40 %.
        assert_eq!(requested, "0.051610", "{:?}", filed.2);
    }
    assert_eq!(reconciled(&app, &account).await.reserved, 0);
    let done = answer(app.post("/v1/chat/completions").json(&ask(json!({}))))
        .await
        .expect(200);
    let usage = &done["usage"];
    let tokens =
        usage["prompt_tokens"].as_i64().unwrap() + usage["completion_tokens"].as_i64().unwrap();
    assert!(tokens > 0);
    // Settled by the usage writer, at $1 a million tokens + 40 %, rounded up.
    let expected = (tokens * 14 + 9) / 10;
    let settled = wait_for(&app, &account, |m| m.reserved == 0).await;
    assert_eq!(settled.balance, 10_000 - expected);
    // Streamed: settled the same way.
    let res = app
        .post("/v1/chat/completions")
        .json(&ask(json!({"stream": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let after = wait_for(&app, &account, |m| {
        m.reserved == 0 && m.balance < settled.balance
    })
    .await;
    assert_eq!(settled.balance - after.balance, expected);
    app.finish().await;
}

/// Chat requests take their holds from a lease of money, not each from the database:
/// twenty requests make a few holds, not twenty; each is charged once, against its
/// lease; and once the lease finishes, nothing is held and the balance is less exactly
/// what the answers cost.
async fn chat_requests_share_a_lease(backend: Backend) {
    let (app, _dir) =
        priced_app_with(backend, |c| c.billing.chat_lease = Duration::from_secs(5)).await;
    let account = fund(&app, MICROS_PER_USD).await;
    let mut cost = 0;
    for i in 0..20 {
        let done = answer(app.post("/v1/chat/completions").json(&json!({
            "model": "local/chat", "max_tokens": 200,
            "messages": [{"role": "user", "content": format!("fox {i}")}]})))
        .await
        .expect(200);
        let tokens = done["usage"]["prompt_tokens"].as_i64().unwrap()
            + done["usage"]["completion_tokens"].as_i64().unwrap();
        cost += (tokens * 14 + 9) / 10;
    }
    let after = wait_for(&app, &account, |m| m.reserved == 0).await;
    assert_eq!(after.balance, MICROS_PER_USD - cost);
    let entries = |kind: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM ledger WHERE account_id = $1 AND kind = $2 \
             AND reservation_id LIKE 'lease_%'",
        )
        .bind(account.clone())
        .bind(kind)
        .fetch_one(app.engine().db.pool())
    };
    let leases = entries("reservation").await.unwrap();
    assert!((1..10).contains(&leases), "{leases} leases for 20 requests");
    assert_eq!(entries("settlement").await.unwrap(), 20);
    assert_eq!(entries("release").await.unwrap(), leases);
    app.finish().await;
}

/// A chat without `max_tokens` on an account whose money is guarded (prepaid) is
/// limited upstream to the answer its hold covers, so it cannot cost more than was held;
/// an unlimited account without caps has nothing to overspend, and is not limited.
/// The state and amount of the account's one lease of money, and how many there are.
async fn the_lease(app: &TestApp, account: &str) -> (String, i64, Option<i64>) {
    let leases: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT state, amount_micros, expires_at FROM reservations \
         WHERE account_id = $1 AND id LIKE 'lease_%'",
    )
    .bind(account)
    .fetch_all(app.engine().db.pool())
    .await
    .unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    leases.into_iter().next().unwrap()
}

/// With room for many, a key's jobs are held from one lease: the lease holds a quarter
/// of the balance in whole jobs, each job's own hold takes nothing more, and each job's
/// end gives its share back out of the lease. Closed while a job still runs, the lease
/// gives back the rest and keeps the job's share until that job ends it.
async fn jobs_of_a_key_share_a_lease(backend: Backend) {
    let (app, _dir) =
        priced_app_with(backend, |c| c.billing.job_lease = Duration::from_secs(3)).await;
    let account = fund(&app, 100 * MICROS_PER_USD).await;
    // A quarter of $100 is 17 whole jobs of $1.40.
    let lease = 17 * ONE_IMAGE;
    for _ in 0..3 {
        let job = app.submit(image_job()).await;
        let done = app
            .wait_terminal(job["id"].as_str().unwrap(), Duration::from_secs(30))
            .await;
        assert_eq!(done["status"], "completed");
    }
    let slow = json!({"model": "local/image", "input": {"prompt": "x", "size": "64x64",
        "simulate": {"latency_ms": 6000}}});
    let slow = app.submit(slow).await;
    assert_eq!(
        reconciled(&app, &account).await,
        Money {
            balance: 100 * MICROS_PER_USD - 3 * ONE_IMAGE,
            reserved: lease - 3 * ONE_IMAGE
        },
        "the three that ran gave their shares back; the lease holds the rest"
    );
    let (state, amount, expires) = the_lease(&app, &account).await;
    assert_eq!((state.as_str(), amount), ("held", lease - 3 * ONE_IMAGE));
    assert!(expires.is_some());
    // Past its time, the lease keeps only what the running job holds.
    wait_for(&app, &account, |m| m.reserved == ONE_IMAGE).await;
    assert_eq!(
        the_lease(&app, &account).await,
        ("held".to_owned(), ONE_IMAGE, None)
    );
    let done = app
        .wait_terminal(slow["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "completed");
    assert_eq!(
        reconciled(&app, &account).await,
        Money {
            balance: 100 * MICROS_PER_USD - 4 * ONE_IMAGE,
            reserved: 0
        }
    );
    assert_eq!(
        the_lease(&app, &account).await,
        ("released".to_owned(), 0, None)
    );
    app.finish().await;
}

/// A key with `max_concurrent_jobs` takes its jobs' money from a lease like any key, and
/// each job's slot on the key's row; a job refused for want of a slot gives its share
/// back to the lease, so refusals do not use leases up.
async fn a_key_that_limits_its_jobs_takes_their_money_from_a_lease(backend: Backend) {
    let (app, _dir) = priced_app_with(backend, |c| {
        c.billing.job_lease_requests = 8;
        c.billing.job_lease = Duration::from_secs(60);
    })
    .await;
    let account = fund(&app, 10_000 * MICROS_PER_USD).await;
    let key = key_id(&app, &app.key).await;
    let pool = app.engine().db.pool().clone();
    sqlx::query("UPDATE api_keys SET max_concurrent_jobs = 2 WHERE id = $1")
        .bind(&key)
        .execute(&pool)
        .await
        .unwrap();
    let slow = json!({"model": "local/image", "input": {"prompt": "x", "size": "64x64",
        "simulate": {"latency_ms": 3000}}});
    let mut running = Vec::new();
    for _ in 0..2 {
        running.push(
            app.submit(slow.clone()).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // More refusals than the lease has ceilings: each gives its share back.
    for _ in 0..10 {
        let (status, _, body) = send(app.post("/v1/jobs").json(&slow)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["code"], "too_many_concurrent_jobs");
    }
    let leases: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, amount_micros FROM reservations WHERE account_id = $1 AND id LIKE 'lease_%'",
    )
    .bind(&account)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].1, 8 * ONE_IMAGE);
    for id in &running {
        let (lease, mask): (Option<String>, i64) =
            sqlx::query_as("SELECT lease_id, held_mask FROM reservations WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(lease.as_deref(), Some(leases[0].0.as_str()));
        assert_ne!(mask & 32, 0, "the job holds a slot of its key");
    }
    let in_flight = || async {
        sqlx::query_scalar::<_, i64>("SELECT jobs_in_flight FROM api_keys WHERE id = $1")
            .bind(&key)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(in_flight().await, 2);
    for id in &running {
        let done = app.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "completed");
    }
    assert_eq!(in_flight().await, 0);
    // The two charged; the lease holds the rest of its eight.
    assert_eq!(
        reconciled(&app, &account).await,
        Money {
            balance: 10_000 * MICROS_PER_USD - 2 * ONE_IMAGE,
            reserved: 6 * ONE_IMAGE
        }
    );
    app.finish().await;
}

/// Far from any limit, a lease with a quarter left asks for the next one off the request
/// path; the request that finds the first one spent takes from the next, and the first,
/// its jobs done, is closed.
async fn a_lease_running_low_has_the_next_one_ready(backend: Backend) {
    let (app, _dir) = priced_app_with(backend, |c| {
        c.billing.job_lease_requests = 8;
        c.billing.job_lease = Duration::from_secs(60);
    })
    .await;
    let account = fund(&app, 10_000 * MICROS_PER_USD).await;
    let pool = app.engine().db.pool().clone();
    let leases = || async {
        sqlx::query_as::<_, (String, String, i64)>(
            "SELECT id, state, amount_micros FROM reservations \
             WHERE account_id = $1 AND id LIKE 'lease_%' ORDER BY created_at, id",
        )
        .bind(&account)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let mut jobs = Vec::new();
    for _ in 0..7 {
        let job = app.submit(image_job()).await;
        jobs.push(job["id"].as_str().unwrap().to_owned());
    }
    // Seven of eight taken: one left, under a quarter. The next lease is asked for.
    let start = std::time::Instant::now();
    while leases().await.len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "no next lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..2 {
        let job = app.submit(image_job()).await;
        jobs.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &jobs {
        let done = app.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed");
    }
    let held_from: Vec<String> = sqlx::query_scalar(
        "SELECT lease_id FROM reservations WHERE account_id = $1 AND id LIKE 'job_%' \
         ORDER BY created_at, id",
    )
    .bind(&account)
    .fetch_all(&pool)
    .await
    .unwrap();
    let all = leases().await;
    assert_eq!(all.len(), 2, "{all:?}");
    let (first, next) = (&all[0], &all[1]);
    assert!(
        held_from[..8].iter().all(|l| *l == first.0),
        "eight from the first: {held_from:?}"
    );
    assert_eq!(held_from[8], next.0, "the ninth from the next");
    // The first, spent and its jobs done, is closed by the usage writer; the next holds
    // seven ceilings.
    let start = std::time::Instant::now();
    while leases().await[0].1 != "released" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            leases().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = leases().await;
    assert_eq!((all[1].1.as_str(), all[1].2), ("held", 7 * ONE_IMAGE));
    assert_eq!(reconciled(&app, &account).await.reserved, 7 * ONE_IMAGE);
    assert_eq!(
        reconciled(&app, &account).await.balance,
        10_000 * MICROS_PER_USD - 9 * ONE_IMAGE
    );
    app.finish().await;
}

async fn a_chat_without_max_tokens_is_limited_to_its_hold(backend: Backend) {
    let (app, _dir) = priced_app_with(backend, |c| c.billing.chat_default_max_tokens = 3).await;
    let ask = || {
        app.post("/v1/chat/completions").json(&json!({"model": "local/chat",
            "messages": [{"role": "user", "content": "tell me all about the red foxes of the north"}]}))
    };
    let free = answer(ask()).await.expect(200);
    assert_eq!(free["choices"][0]["finish_reason"], "stop", "{free}");
    assert!(free["usage"]["completion_tokens"].as_i64().unwrap() > 3);
    let account = fund(&app, MICROS_PER_USD).await;
    // The unlimited account's lease lasts a second; the next one is the prepaid account's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = answer(ask()).await.expect(200);
    assert_eq!(held["choices"][0]["finish_reason"], "length", "{held}");
    assert_eq!(held["usage"]["completion_tokens"], 3, "{held}");
    wait_for(&app, &account, |m| m.reserved == 0).await;
    app.finish().await;
}

/// Polls the account's money until `ready` holds (the usage writer settles within a
/// flush interval), reconciling it with the ledger each time.
async fn wait_for(app: &TestApp, account: &str, ready: impl Fn(&Money) -> bool) -> Money {
    let start = std::time::Instant::now();
    loop {
        let m = reconciled(app, account).await;
        if ready(&m) {
            return m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "money never settled: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn expired_holds_are_released_and_late_answers_still_charged(backend: Backend) {
    let (app, _dir) = priced_app(backend).await;
    let account = fund(&app, MICROS_PER_USD).await;
    let key = key_id(&app, &app.key).await;
    let engine = app.engine();
    // A chat hold whose process died: it expired a moment ago.
    let hold = HoldRequest {
        id: "chatcmpl-orphan",
        account_id: &account,
        key_id: &key,
        kind: HoldKind::Chat,
        model: "local/chat",
        list_micros: 500_000,
        expires_at: Some(now_ms() - 1),
        now: now_ms(),
    };
    let mut tx = engine.db.begin().await.unwrap();
    let held = billing::reserve(&mut tx, &engine.config.billing, &hold)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(held.amount_micros, 700_000);
    assert_eq!(money(&app, &account).await.reserved, 700_000);
    // The reaper lets it go.
    let freed = wait_for(&app, &account, |m| m.reserved == 0).await;
    assert_eq!(freed.balance, MICROS_PER_USD);
    // The answer turns up after all: it is charged, once.
    for _ in 0..2 {
        let mut tx = engine.db.begin().await.unwrap();
        billing::settle(&mut tx, "chatcmpl-orphan", 100_000, 10, now_ms())
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(
        reconciled(&app, &account).await,
        Money {
            balance: MICROS_PER_USD - 140_000,
            reserved: 0
        }
    );
    app.finish().await;
}

/// `account.balance_low` when a charge takes the balance under its threshold, and
/// `key.spend_cap_reached` when the key's cap first refuses it, each once, signed, to
/// the endpoint that subscribed (and no job events, which it did not ask for).
async fn money_alerts_reach_the_endpoints_that_asked_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, PRICED_CATALOG).unwrap();
    let app = TestApp::start_with(backend, move |c| {
        c.catalog = Some(path);
        c.webhook_allow_cidrs = "127.0.0.0/8".to_owned();
    })
    .await;
    let rx = crate::receiver::Receiver::start(|_, _| crate::receiver::Reply::ok()).await;
    let endpoint = answer(app.post("/v1/webhook-endpoints").json(&json!({
        "url": rx.url("/money"),
        "events": ["account.balance_low", "key.spend_cap_reached"],
    })))
    .await
    .expect(201);
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    let account = fund(&app, 5 * ONE_IMAGE).await;
    sqlx::query("UPDATE accounts SET low_balance_micros = $2 WHERE id = $1")
        .bind(&account)
        .bind(3 * ONE_IMAGE + 1)
        .execute(app.engine().db.pool())
        .await
        .unwrap();
    set_caps(
        &app,
        "api_keys",
        &key_id(&app, &app.key).await,
        Some(3 * ONE_IMAGE),
        None,
    )
    .await;
    // Two jobs: the second leaves 3 images' worth, under the threshold.
    for _ in 0..2 {
        let job = app.submit(image_job()).await;
        app.wait_terminal(job["id"].as_str().unwrap(), Duration::from_secs(30))
            .await;
    }
    // The third fits the cap; the fourth and fifth are refused by it.
    let job = app.submit(image_job()).await;
    app.wait_terminal(job["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    for _ in 0..2 {
        assert_eq!(app.post_job(&image_job()).await.status.as_u16(), 402);
    }
    let hits = rx.wait_hits(2, Duration::from_secs(30)).await;
    // Nothing more comes: each alert is sent once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = if rx.hits().len() > hits.len() {
        rx.hits()
    } else {
        hits
    };
    let mut types: Vec<String> = hits
        .iter()
        .map(|h| h.json()["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(types, ["account.balance_low", "key.spend_cap_reached"]);
    for hit in &hits {
        assert!(hit.verifies_with(&secret));
        let data = &hit.json()["data"];
        match hit.json()["type"].as_str().unwrap() {
            "account.balance_low" => {
                assert_eq!(data["id"], account.as_str());
                assert_eq!(data["available_usd"], "4.200000");
                assert_eq!(data["threshold_usd"], "4.200001");
            }
            _ => {
                assert_eq!(data["period"], "day");
                assert_eq!(data["limit_usd"], "4.200000");
                assert_eq!(data["used_usd"], "4.200000");
            }
        }
    }
    app.finish().await;
}

/// `[billing] enabled = false`: an empty prepaid account still runs jobs, nothing is held
/// or written to the ledger, and a job shows its list price.
async fn with_billing_off_nothing_is_held_or_refused(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, PRICED_CATALOG).unwrap();
    let app = TestApp::start_with(backend, move |c| {
        c.catalog = Some(path);
        c.billing.enabled = false;
    })
    .await;
    let account = fund(&app, 0).await;
    let job = app.submit(image_job()).await;
    let job = app
        .wait_terminal(job["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(job["usage"]["cost_usd"], "1.0000");
    let holds: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reservations")
        .fetch_one(app.engine().db.pool())
        .await
        .unwrap();
    assert_eq!(holds, 0);
    assert_eq!(
        reconciled(&app, &account).await,
        Money {
            balance: 0,
            reserved: 0
        }
    );
    app.finish().await;
}

/// A streamed chat whose client leaves after a few words pays for those words (and the
/// prompt), not for the answer it never got; one that leaves before any word pays nothing.
async fn a_chat_client_that_leaves_pays_for_what_it_was_sent(backend: Backend) {
    use futures::StreamExt;
    let (app, _dir) = priced_app(backend).await;
    let account = fund(&app, MICROS_PER_USD).await;
    let slow = |latency_ms: u64| {
        json!({"model": "local/chat", "stream": true,
            "messages": [{"role": "user", "content": "tell me a long story about a fox"}],
            "simulate": {"latency_ms": latency_ms, "token_interval_ms": 300}})
    };
    // Leaves before the first word: the hold is released whole.
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        app.post("/v1/chat/completions").json(&slow(5_000)).send(),
    )
    .await;
    assert!(early.is_err(), "the answer cannot have begun yet");
    let untouched = wait_for(&app, &account, |m| m.reserved == 0).await;
    assert_eq!(untouched.balance, MICROS_PER_USD);
    // Reads three words, then leaves.
    let res = app
        .post("/v1/chat/completions")
        .json(&slow(0))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\"content\"").count() < 4 {
        let chunk = body.next().await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(body);
    let charged = wait_for(&app, &account, |m| {
        m.reserved == 0 && m.balance < MICROS_PER_USD
    })
    .await;
    let paid = MICROS_PER_USD - charged.balance;
    // A prompt of ~80 bytes and three words: a few dozen tokens at $1.40 a million, far
    // under the hold of 4096 answer tokens (about $0.0058).
    assert!(paid > 0 && paid < 100, "paid {paid} micros");
    let (status, tokens): (String, i64) = sqlx::query_as(
        "SELECT status, completion_tokens FROM chat_usage WHERE account_id = $1 AND completion_tokens > 0",
    )
    .bind(&account)
    .fetch_one(app.engine().db.pool())
    .await
    .unwrap();
    assert_eq!(status, "cancelled");
    assert!(tokens > 0 && tokens < 20, "{tokens} tokens");
    app.finish().await;
}

/// Runs `billing_openai_sdk.py`: the SDK, retries on, meets a 402 for chat and images,
/// raises it with the limit, and sends each request once: the key may make three
/// requests a minute, the script's two and this test's own; a single retry would have
/// used this test's up.
async fn the_openai_sdk_gets_a_402_it_does_not_retry(backend: Backend) {
    let (app, _dir) = priced_app(backend).await;
    let account = fund(&app, 10_000).await;
    let key = key_id(&app, &app.key).await;
    mediagate_engine::db::keys::set_requests_per_minute(app.engine().db.pool(), &key, Some(3))
        .await
        .unwrap();
    let out = crate::support::run_openai_sdk_script(&app, "billing_openai_sdk.py").await;
    let report: Value = serde_json::from_str(&out).expect("the script prints JSON");
    for call in ["chat", "image"] {
        let seen = &report[call];
        assert_eq!(seen["status"], 402, "{report}");
        assert_eq!(seen["class"], "APIStatusError", "{report}");
        assert_eq!(seen["body"]["code"], "insufficient_credits", "{report}");
        assert_eq!(seen["body"]["limit"]["scope"], "account", "{report}");
    }
    let res = app.get("/v1/models").send().await.unwrap();
    assert_eq!(res.status(), 200, "the SDK sent each refused request once");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(
        reconciled(&app, &account).await,
        Money {
            balance: 10_000,
            reserved: 0
        }
    );
    app.finish().await;
}

/// Everything at once — jobs that complete, fail, retry, fall back and are cancelled,
/// chats plain and streamed — and afterwards: nothing held, one settlement per job that
/// completed and per chat, none for the rest, and the ledger equal to the balance.
async fn a_mixed_run_reconciles_to_the_micro(backend: Backend) {
    let (app, _dir) = priced_app(backend).await;
    let account = fund(&app, 100 * MICROS_PER_USD).await;
    let image = |simulate: Value| {
        json!({"models": ["local/image", "local/image"],
            "input": {"prompt": "x", "size": "64x64", "simulate": simulate}})
    };
    let bodies = [
        image(json!({})),
        image(json!({"fail": "permanent"})),
        // Fails once: the second entry of the route serves it.
        image(json!({"fail": "transient", "fail_times": 1})),
        image(json!({"latency_ms": 20000})),
        image(json!({})),
    ];
    let jobs = join_all(bodies.iter().map(|b| app.submit(b.clone()))).await;
    let to_cancel = jobs[3]["id"].as_str().unwrap();
    app.post_expect(&format!("/v1/jobs/{to_cancel}/cancel"), 200)
        .await;
    let chat = |stream: bool| {
        json!({"model": "local/chat", "stream": stream,
            "messages": [{"role": "user", "content": "foxes"}]})
    };
    let app = &app;
    let chats = join_all((0..6).map(|i| async move {
        let res = app
            .post("/v1/chat/completions")
            .json(&chat(i % 2 == 0))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap()
    }))
    .await;
    assert_eq!(chats.len(), 6);
    let mut completed = 0;
    for job in &jobs {
        let done = app
            .wait_terminal(job["id"].as_str().unwrap(), Duration::from_secs(60))
            .await;
        completed += i64::from(done["status"] == "completed");
    }
    assert_eq!(completed, 3, "the plain two and the fallback");
    let settled = wait_for(app, &account, |m| m.reserved == 0).await;
    // Ledger entries of a kind, for the jobs' holds or the chats' leases.
    let count = |kind: &'static str, hold: &'static str| {
        let pool = app.engine().db.pool().clone();
        let account = account.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM ledger WHERE account_id = $1 AND kind = $2 \
                 AND reservation_id LIKE $3",
            )
            .bind(&account)
            .bind(kind)
            .bind(format!("{hold}%"))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // With room for many, the jobs were held from a lease: each has its own hold row,
    // which moved no money, and each ended once.
    let holds: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT state, lease_id FROM reservations WHERE account_id = $1 AND id LIKE 'job_%'",
    )
    .bind(&account)
    .fetch_all(app.engine().db.pool())
    .await
    .unwrap();
    assert_eq!(holds.len(), 5);
    assert!(holds.iter().all(|(_, lease)| lease.is_some()), "{holds:?}");
    assert_eq!(count("reservation", "job_").await, 0);
    assert_eq!(count("settlement", "job_").await, completed);
    assert_eq!(count("release", "job_").await, 5 - completed);
    // The jobs' lease and the six chats' (a few at most: they ran at once), each chat
    // charged once, and every lease let go of what it had left.
    let leases = count("reservation", "lease_").await;
    assert!((2..=7).contains(&leases), "{leases} leases");
    assert_eq!(count("settlement", "lease_").await, 6);
    assert_eq!(count("release", "lease_").await, leases);
    assert!(settled.balance < 100 * MICROS_PER_USD - 3 * ONE_IMAGE + 1);
}
