//! The money-facing API: the admin API (accounts, credits, keys, usage) behind
//! `MEDIAGATE_ADMIN_TOKEN`, the same through the CLI, and what a key sees of itself
//! (`GET /v1/key`, `GET /api/v1/key`, `GET /v1/usage`). After every refused request the
//! books are checked: nothing written, and the ledger still sums to the balance.

use std::process::{Command, Output};
use std::time::Duration;

use mediagate::config::Secret;
use mediagate_engine::billing::Tier;
use mediagate_engine::billing::money::parse_usd;
use mediagate_engine::db::{Db, PoolSize, accounts, money};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Answer, Backend, TestApp, answer, process_env};
use crate::{on_both_backends, on_embedded};

on_both_backends!(
    accounts_keys_and_credits_round_trip,
    bad_input_is_refused_and_writes_nothing,
    a_priced_job_shows_in_key_usage_and_tier,
    the_cli_manages_accounts_credits_keys_and_usage,
);
on_embedded!(
    without_a_token_there_is_no_admin_api,
    only_the_admin_token_opens_the_admin_api,
);

const TOKEN: &str = "test-admin-token-5f0c1d2e";

async fn admin_app(backend: Backend) -> TestApp {
    admin_app_with(backend, |_| {}).await
}

async fn admin_app_with(
    backend: Backend,
    tweak: impl FnOnce(&mut mediagate::config::Config),
) -> TestApp {
    TestApp::start_with(backend, |c| {
        c.admin_token = Some(Secret(TOKEN.to_owned()));
        // A revoked key stops working at once.
        c.auth_cache_ms = 0;
        tweak(c);
    })
    .await
}

fn admin(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.client
        .request(method, format!("{}{path}", app.url))
        .bearer_auth(TOKEN)
}

async fn admin_send(app: &TestApp, method: Method, path: &str, body: &Value) -> Answer {
    answer(admin(app, method, path).json(body)).await
}

/// The account's balance and held money, after checking that the ledger agrees.
async fn books(app: &TestApp, id: &str) -> (i64, i64) {
    let pool = app.engine().db.pool();
    let account = accounts::find(pool, id)
        .await
        .unwrap()
        .expect("the account");
    let sums = money::ledger_sums(pool, id).await.unwrap();
    assert_eq!(
        (sums.balance_micros, sums.reserved_micros),
        (account.balance_micros, account.reserved_micros),
        "the ledger of {id} sums to its balance and reserved money"
    );
    (account.balance_micros, account.reserved_micros)
}

async fn ledger_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM ledger")
        .fetch_one(app.engine().db.pool())
        .await
        .unwrap()
}

/// A tier without `recomputed_at`, which the reaper moves on its own schedule.
fn without_recompute_time(tier: &Value) -> Value {
    let mut tier = tier.clone();
    let at = tier
        .as_object_mut()
        .and_then(|t| t.remove("recomputed_at"))
        .expect("a tier with recomputed_at");
    assert!(at.is_null() || at.is_i64(), "{at}");
    tier
}

fn keys_of(obj: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = obj
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

async fn accounts_keys_and_credits_round_trip(backend: Backend) {
    let app = admin_app(backend).await;
    let created = admin_send(
        &app,
        Method::POST,
        "/v1/admin/accounts",
        &json!({"id": "acme", "name": "Acme", "limits": {"daily_usd": "50", "monthly_usd": "500"}}),
    )
    .await
    .expect(201);
    assert_eq!(created["object"], "account");
    assert_eq!(created["id"], "acme");
    assert_eq!(created["name"], "Acme");
    assert_eq!(created["mode"], "prepaid", "accounts made here are prepaid");
    assert_eq!(created["balance_usd"], "0.000000");
    assert_eq!(created["reserved_usd"], "0.000000");
    assert_eq!(
        created["limits"],
        json!({"daily_usd": "50.000000", "monthly_usd": "500.000000"})
    );
    assert_eq!(
        without_recompute_time(&created["tier"]),
        json!({"markup_percent": 40, "rolling_30d_usd": "0.000000",
               "next_tier_at_usd": "50.000000"})
    );
    let now = mediagate_engine::ids::now_ms() / 1000;
    assert!(
        (created["created_at"].as_i64().unwrap() - now).abs() < 60,
        "{created}"
    );
    for field in [
        "id",
        "object",
        "name",
        "mode",
        "balance_usd",
        "reserved_usd",
        "limits",
        "tier",
        "created_at",
    ] {
        assert!(keys_of(&created).contains(&field), "{field} in {created}");
    }
    let again = admin_send(
        &app,
        Method::POST,
        "/v1/admin/accounts",
        &json!({"id": "acme"}),
    )
    .await
    .expect(409);
    assert_eq!(again["error"]["code"], "account_exists");
    let shown = answer(admin(&app, Method::GET, "/v1/admin/accounts/acme"))
        .await
        .expect(200);
    let same = |mut v: Value| {
        v["tier"] = without_recompute_time(&v["tier"]);
        v
    };
    assert_eq!(same(shown), same(created.clone()));

    // A key with every limit; its secret is shown once.
    let key = admin_send(
        &app,
        Method::POST,
        "/v1/admin/keys",
        &json!({"account": "acme", "name": "ci", "limits": {"daily_usd": "5", "monthly_usd": "50",
                "requests_per_minute": 600, "max_concurrent_jobs": 20}}),
    )
    .await
    .expect(201);
    assert_eq!(key["object"], "key");
    assert_eq!(key["account"], "acme");
    assert_eq!(key["name"], "ci");
    assert_eq!(
        key["limits"],
        json!({"daily_usd": "5.000000", "monthly_usd": "50.000000",
               "requests_per_minute": 600, "max_concurrent_jobs": 20})
    );
    let secret = key["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("mg_"), "{key}");
    let key_id = key["id"].as_str().unwrap().to_owned();
    let me = answer(
        app.client
            .get(format!("{}/v1/key", app.url))
            .bearer_auth(&secret),
    )
    .await
    .expect(200);
    assert_eq!(me["data"]["id"], key_id.as_str());
    let listed = answer(admin(&app, Method::GET, "/v1/admin/keys?account=acme"))
        .await
        .expect(200);
    assert_eq!(listed["object"], "list");
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{listed}");
    assert_eq!(data[0]["id"], key_id.as_str());
    assert!(data[0].get("key").is_none(), "lists never show the secret");

    // Top-ups: an Idempotency-Key replays without a second credit; another body is 422.
    let credit = |key: &'static str, body: Value| {
        let req = admin(&app, Method::POST, "/v1/admin/accounts/acme/credits")
            .header("idempotency-key", key)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let first = credit("topup-1", json!({"amount_usd": "25.00", "note": "first"})).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["object"], "account");
    assert_eq!(first["balance_usd"], "25.000000");
    let replays = futures::future::join_all(
        (0..6).map(|_| credit("topup-1", json!({"amount_usd": "25.00", "note": "first"}))),
    )
    .await;
    for res in replays {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["idempotent-replayed"], "true");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["balance_usd"], "25.000000");
    }
    let reused = credit("topup-1", json!({"amount_usd": "26.00"})).await;
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let reused: Value = reused.json().await.unwrap();
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");
    // Racing first uses of one key credit once.
    let racing =
        futures::future::join_all((0..6).map(|_| credit("topup-2", json!({"amount_usd": "10"}))))
            .await;
    let replayed = racing
        .iter()
        .filter(|r| r.headers().contains_key("idempotent-replayed"))
        .count();
    assert!(racing.iter().all(|r| r.status() == StatusCode::OK));
    assert_eq!(replayed, 5, "one credit, five replays");
    assert_eq!(books(&app, "acme").await, (35_000_000, 0));

    // A correction takes money back, never below zero.
    let corrected = admin_send(
        &app,
        Method::POST,
        "/v1/admin/accounts/acme/credits",
        &json!({"amount_usd": "-5", "note": "refund reversed"}),
    )
    .await
    .expect(200);
    assert_eq!(corrected["balance_usd"], "30.000000");
    let too_much = admin_send(
        &app,
        Method::POST,
        "/v1/admin/accounts/acme/credits",
        &json!({"amount_usd": "-30.000001"}),
    )
    .await
    .expect(400);
    assert_eq!(too_much["error"]["param"], "amount_usd");
    assert_eq!(books(&app, "acme").await, (30_000_000, 0));
    let kinds: Vec<(String, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT kind, balance_delta_micros, actor, note FROM ledger WHERE account_id = 'acme' \
         ORDER BY created_at, id",
    )
    .fetch_all(app.engine().db.pool())
    .await
    .unwrap();
    assert_eq!(
        kinds,
        [
            (
                "topup".into(),
                25_000_000,
                "admin".into(),
                Some("first".into())
            ),
            ("topup".into(), 10_000_000, "admin".into(), None),
            (
                "correction".into(),
                -5_000_000,
                "admin".into(),
                Some("refund reversed".into())
            ),
        ]
    );

    // PATCH: name, mode, limits; a null clears a limit, an absent one stays.
    let patched = admin_send(
        &app,
        Method::PATCH,
        "/v1/admin/accounts/acme",
        &json!({"name": "Acme Inc", "mode": "unlimited", "limits": {"daily_usd": null},
                "low_balance_usd": "2.5"}),
    )
    .await
    .expect(200);
    assert_eq!(patched["name"], "Acme Inc");
    assert_eq!(patched["mode"], "unlimited");
    assert_eq!(
        patched["limits"],
        json!({"daily_usd": null, "monthly_usd": "500.000000"})
    );
    assert_eq!(patched["low_balance_usd"], "2.500000");
    assert_eq!(patched["balance_usd"], "30.000000");
    let back = admin_send(
        &app,
        Method::PATCH,
        "/v1/admin/accounts/acme",
        &json!({"mode": "prepaid", "limits": {"monthly_usd": "0.5"}}),
    )
    .await
    .expect(200);
    assert_eq!(
        (&back["name"], &back["mode"], &back["limits"]),
        (
            &json!("Acme Inc"),
            &json!("prepaid"),
            &json!({"daily_usd": null, "monthly_usd": "0.500000"})
        )
    );

    // Key limits round-trip the same way, and show in GET /v1/key.
    let path = format!("/v1/admin/keys/{key_id}");
    let k = admin_send(
        &app,
        Method::PATCH,
        &path,
        &json!({"limits": {"daily_usd": null, "requests_per_minute": 60}}),
    )
    .await
    .expect(200);
    assert_eq!(
        k["limits"],
        json!({"daily_usd": null, "monthly_usd": "50.000000",
               "requests_per_minute": 60, "max_concurrent_jobs": 20})
    );
    let k = admin_send(
        &app,
        Method::PATCH,
        &path,
        &json!({"name": "ci-2", "limits": {"monthly_usd": null, "max_concurrent_jobs": null, "daily_usd": "1.25"}}),
    )
    .await
    .expect(200);
    assert_eq!(k["name"], "ci-2");
    assert_eq!(
        k["limits"],
        json!({"daily_usd": "1.250000", "monthly_usd": null,
               "requests_per_minute": 60, "max_concurrent_jobs": null})
    );
    let me = answer(
        app.client
            .get(format!("{}/v1/key", app.url))
            .bearer_auth(&secret),
    )
    .await
    .expect(200);
    assert_eq!(me["data"]["limits"], k["limits"]);
    // The tightest of key daily 1.25, account monthly 0.50 and the balance 30.
    assert_eq!(me["data"]["remaining"], "0.500000");

    // DELETE revokes: the key stays listed, and stops working.
    let revoked = answer(admin(&app, Method::DELETE, &path)).await.expect(200);
    assert!(revoked["revoked_at"].is_i64(), "{revoked}");
    let again = answer(admin(&app, Method::DELETE, &path)).await.expect(200);
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);
    let status = app
        .client
        .get(format!("{}/v1/key", app.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let all = answer(admin(&app, Method::GET, "/v1/admin/keys"))
        .await
        .expect(200);
    assert!(
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == key_id.as_str() && k["revoked_at"].is_i64()),
        "{all}"
    );
    assert_eq!(
        answer(admin(&app, Method::GET, "/v1/admin/accounts/nobody"))
            .await
            .expect(404)["error"]["code"],
        "not_found"
    );
}

/// Each bad request gets its 4xx in the SPEC shape, naming the field, and writes nothing.
async fn bad_input_is_refused_and_writes_nothing(backend: Backend) {
    let app = admin_app(backend).await;
    admin_send(
        &app,
        Method::POST,
        "/v1/admin/accounts",
        &json!({"id": "acme"}),
    )
    .await
    .expect(201);
    admin_send(
        &app,
        Method::POST,
        "/v1/admin/accounts/acme/credits",
        &json!({"amount_usd": "10"}),
    )
    .await
    .expect(200);
    let key = admin_send(
        &app,
        Method::POST,
        "/v1/admin/keys",
        &json!({"account": "acme", "name": "ci", "limits": {"daily_usd": "5"}}),
    )
    .await
    .expect(201);
    let key_path = format!("/v1/admin/keys/{}", key["id"].as_str().unwrap());
    let before_rows = ledger_rows(&app).await;
    let accounts_count = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM accounts")
            .fetch_one(app.engine().db.pool())
            .await
            .unwrap()
    };
    let before_accounts = accounts_count().await;

    let long = "x".repeat(65);
    let new_accounts: &[(Value, &str, &str)] = &[
        (json!([]), "", "invalid_field"),
        (json!({}), "id", "invalid_field"),
        (json!({"id": "a b"}), "id", "invalid_field"),
        (json!({"id": "a/b"}), "id", "invalid_field"),
        (json!({"id": long}), "id", "invalid_field"),
        (json!({"id": 7}), "id", "invalid_field"),
        (json!({"id": "a\u{0}b"}), "id", "invalid_character"),
        (
            json!({"id": "ok", "name": "n\u{0}"}),
            "name",
            "invalid_character",
        ),
        (
            json!({"id": "ok", "balance_usd": "5"}),
            "balance_usd",
            "parameter_unknown",
        ),
        (json!({"id": "ok", "mode": "free"}), "mode", "invalid_field"),
        (json!({"id": "ok", "name": ""}), "name", "invalid_field"),
        (
            json!({"id": "ok", "name": "n".repeat(201)}),
            "name",
            "invalid_field",
        ),
        (
            json!({"id": "ok", "limits": {"daily_usd": 50}}),
            "limits.daily_usd",
            "invalid_field",
        ),
        (
            json!({"id": "ok", "limits": {"daily_usd": "-5"}}),
            "limits.daily_usd",
            "invalid_field",
        ),
        (
            json!({"id": "ok", "limits": {"daily_usd": "1.0000001"}}),
            "limits.daily_usd",
            "invalid_field",
        ),
        (
            json!({"id": "ok", "limits": {"daily_usd": "1e3"}}),
            "limits.daily_usd",
            "invalid_field",
        ),
        (
            json!({"id": "ok", "limits": {"monthly_usd": "99999999999"}}),
            "limits.monthly_usd",
            "invalid_field",
        ),
        (
            json!({"id": "ok", "limits": {"weekly_usd": "5"}}),
            "limits.weekly_usd",
            "parameter_unknown",
        ),
        (
            json!({"id": "ok", "limits": "5"}),
            "limits",
            "invalid_field",
        ),
        (
            json!({"id": "ok", "low_balance_usd": 1}),
            "low_balance_usd",
            "invalid_field",
        ),
    ];
    for (body, param, code) in new_accounts {
        let err = admin_send(&app, Method::POST, "/v1/admin/accounts", body)
            .await
            .expect(400);
        assert_eq!(
            (
                err["error"]["param"].as_str().unwrap_or(""),
                err["error"]["code"].as_str()
            ),
            (*param, Some(*code)),
            "{body}: {err}"
        );
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
    let number = admin_send(
        &app,
        Method::POST,
        "/v1/admin/accounts",
        &json!({"id": "ok", "limits": {"daily_usd": 50}}),
    )
    .await
    .expect(400);
    assert!(
        number["error"]["message"]
            .as_str()
            .unwrap()
            .contains("decimal string"),
        "{number}"
    );
    let malformed = answer(
        admin(&app, Method::POST, "/v1/admin/accounts")
            .header("content-type", "application/json")
            .body("{\"id\": "),
    )
    .await
    .expect(400);
    assert_eq!(malformed["error"]["code"], "invalid_json");
    assert_eq!(accounts_count().await, before_accounts);

    let credits: &[(Value, &str)] = &[
        (json!({"amount_usd": 25}), "amount_usd"),
        (json!({"amount_usd": 25.5}), "amount_usd"),
        (json!({}), "amount_usd"),
        (json!({"amount_usd": null}), "amount_usd"),
        (json!({"amount_usd": "0"}), "amount_usd"),
        (json!({"amount_usd": "abc"}), "amount_usd"),
        (json!({"amount_usd": "1.0000001"}), "amount_usd"),
        (json!({"amount_usd": "1000000001"}), "amount_usd"),
        (json!({"amount_usd": "-10.000001"}), "amount_usd"),
        (json!({"amount_usd": "5", "note": "n".repeat(501)}), "note"),
        (json!({"amount_usd": "5", "note": 5}), "note"),
        (json!({"amount_usd": "5", "actor": "me"}), "actor"),
    ];
    for (body, param) in credits {
        let err = admin_send(&app, Method::POST, "/v1/admin/accounts/acme/credits", body)
            .await
            .expect(400);
        assert_eq!(err["error"]["param"], *param, "{body}: {err}");
    }
    // Just past the most a balance holds.
    let err = admin_send(
        &app,
        Method::POST,
        "/v1/admin/accounts/acme/credits",
        &json!({"amount_usd": "999999995"}),
    )
    .await
    .expect(400);
    assert_eq!(err["error"]["param"], "amount_usd", "{err}");
    let err = answer(
        admin(&app, Method::POST, "/v1/admin/accounts/acme/credits")
            .header("idempotency-key", "k".repeat(256))
            .json(&json!({"amount_usd": "5"})),
    )
    .await
    .expect(400);
    assert_eq!(err["error"]["code"], "invalid_idempotency_key");
    for path in [
        "/v1/admin/accounts/nobody/credits",
        "/v1/admin/accounts/bad%20id/credits",
    ] {
        let err = admin_send(&app, Method::POST, path, &json!({"amount_usd": "5"}))
            .await
            .expect(404);
        assert_eq!(err["error"]["code"], "not_found");
    }
    assert_eq!(books(&app, "acme").await, (10_000_000, 0));

    let patches: &[(Value, &str)] = &[
        (json!({"id": "other"}), "id"),
        (json!({"mode": null}), "mode"),
        (json!({"name": null}), "name"),
        (json!({"limits": {"daily_usd": 1}}), "limits.daily_usd"),
        (json!({"balance_usd": "100"}), "balance_usd"),
    ];
    for (body, param) in patches {
        let err = admin_send(&app, Method::PATCH, "/v1/admin/accounts/acme", body)
            .await
            .expect(400);
        assert_eq!(err["error"]["param"], *param, "{body}: {err}");
    }
    admin_send(
        &app,
        Method::PATCH,
        "/v1/admin/accounts/nobody",
        &json!({"name": "x"}),
    )
    .await
    .expect(404);
    let acme = answer(admin(&app, Method::GET, "/v1/admin/accounts/acme"))
        .await
        .expect(200);
    assert_eq!(
        (&acme["name"], &acme["mode"], &acme["balance_usd"]),
        (&json!("acme"), &json!("prepaid"), &json!("10.000000"))
    );

    let keys_before = answer(admin(&app, Method::GET, "/v1/admin/keys"))
        .await
        .expect(200);
    let new_keys: &[(Value, u16, &str)] = &[
        (json!({"account": "nobody", "name": "ci"}), 404, "account"),
        (json!({"name": "ci"}), 400, "account"),
        (json!({"account": "acme"}), 400, "name"),
        (
            json!({"account": "acme", "name": "ci", "limits": {"requests_per_minute": -1}}),
            400,
            "limits.requests_per_minute",
        ),
        (
            json!({"account": "acme", "name": "ci", "limits": {"requests_per_minute": 1.5}}),
            400,
            "limits.requests_per_minute",
        ),
        (
            json!({"account": "acme", "name": "ci", "limits": {"requests_per_minute": "600"}}),
            400,
            "limits.requests_per_minute",
        ),
        (
            json!({"account": "acme", "name": "ci", "limits": {"max_concurrent_jobs": 10_000_000}}),
            400,
            "limits.max_concurrent_jobs",
        ),
        (
            json!({"account": "acme", "name": "ci", "limits": {"daily_usd": 5}}),
            400,
            "limits.daily_usd",
        ),
        (
            json!({"account": "acme", "name": "ci", "limits": {"rpm": 5}}),
            400,
            "limits.rpm",
        ),
        (
            json!({"account": "acme", "name": "ci", "key": "mg_mine"}),
            400,
            "key",
        ),
    ];
    for (body, status, param) in new_keys {
        let err = admin_send(&app, Method::POST, "/v1/admin/keys", body)
            .await
            .expect(*status);
        assert_eq!(err["error"]["param"], *param, "{body}: {err}");
    }
    let bad_patches = [
        json!({"limits": {"daily_usd": "-1"}}),
        json!({"limits": {"max_concurrent_jobs": -1}}),
        json!({"account": "other"}),
    ];
    for body in &bad_patches {
        admin_send(&app, Method::PATCH, &key_path, body)
            .await
            .expect(400);
    }
    for path in [
        "/v1/admin/keys/key_00000000000000000000000000000000",
        "/v1/admin/keys/not-a-key",
    ] {
        admin_send(&app, Method::PATCH, path, &json!({"name": "x"}))
            .await
            .expect(404);
        answer(admin(&app, Method::DELETE, path)).await.expect(404);
    }
    answer(admin(&app, Method::GET, "/v1/admin/keys?account=nobody"))
        .await
        .expect(404);
    let keys_after = answer(admin(&app, Method::GET, "/v1/admin/keys"))
        .await
        .expect(200);
    assert_eq!(keys_after, keys_before, "no key made or changed");

    for (query, param) in [
        ("group_by=week", "group_by"),
        ("from=abc", "from"),
        ("from=-5", "from"),
        ("to=1.5", "to"),
        ("to=99999999999999", "to"),
        ("from=200&to=100", "from"),
    ] {
        let err = answer(admin(
            &app,
            Method::GET,
            &format!("/v1/admin/usage?{query}"),
        ))
        .await
        .expect(400);
        assert_eq!(err["error"]["param"], param, "{query}: {err}");
        let err = app.get_expect(&format!("/v1/usage?{query}"), 400).await;
        assert_eq!(err["error"]["param"], param, "{query}: {err}");
    }
    // Callers see their own account only: no grouping by account.
    let err = app.get_expect("/v1/usage?group_by=account", 400).await;
    assert_eq!(err["error"]["param"], "group_by");
    answer(admin(&app, Method::GET, "/v1/admin/usage?account=nobody"))
        .await
        .expect(404);

    assert_eq!(
        ledger_rows(&app).await,
        before_rows,
        "nothing reached the ledger"
    );
    assert_eq!(books(&app, "acme").await, (10_000_000, 0));
}

async fn without_a_token_there_is_no_admin_api(backend: Backend) {
    for token in [None, Some("   ")] {
        let app =
            TestApp::start_with(backend, |c| c.admin_token = token.map(|t| Secret(t.into()))).await;
        for (method, path) in [
            (Method::POST, "/v1/admin/accounts"),
            (Method::GET, "/v1/admin/accounts/acme"),
            (
                Method::DELETE,
                "/v1/admin/keys/key_00000000000000000000000000000000",
            ),
            (Method::GET, "/v1/admin/usage"),
        ] {
            for bearer in [TOKEN, "   ", app.key.as_str()] {
                let err = answer(
                    app.client
                        .request(method.clone(), format!("{}{path}", app.url))
                        .bearer_auth(bearer)
                        .json(&json!({"id": "acme"})),
                )
                .await
                .expect(404);
                assert_eq!(err["error"]["code"], "not_found", "{method} {path}");
            }
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE id = 'acme'")
            .fetch_one(app.engine().db.pool())
            .await
            .unwrap();
        assert_eq!(count, 0);
    }
}

async fn only_the_admin_token_opens_the_admin_api(backend: Backend) {
    let app = admin_app(backend).await;
    let body = json!({"id": "acme"});
    let url = format!("{}/v1/admin/accounts", app.url);
    let near = &TOKEN[..TOKEN.len() - 1];
    let longer = format!("{TOKEN}x");
    let tries: Vec<Option<String>> = vec![
        None,
        Some(format!("Bearer {}", app.key)),
        Some(format!("Bearer {near}")),
        Some(format!("Bearer {longer}")),
        Some(format!("Basic {TOKEN}")),
        Some("Bearer".to_owned()),
    ];
    for auth in tries {
        let mut req = app.client.post(&url).json(&body);
        if let Some(auth) = &auth {
            req = req.header("authorization", auth);
        }
        let err = answer(req).await.expect(401);
        assert_eq!(err["error"]["type"], "authentication_error", "{auth:?}");
        assert_eq!(err["error"]["code"], "invalid_api_key", "{auth:?}");
    }
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE id = 'acme'")
        .fetch_one(app.engine().db.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
    // The scheme is case-insensitive, as for keys.
    answer(
        app.client
            .post(&url)
            .header("authorization", format!("bearer {TOKEN}"))
            .json(&body),
    )
    .await
    .expect(201);
    // The admin token is no API key.
    let err = answer(
        app.client
            .get(format!("{}/v1/key", app.url))
            .bearer_auth(TOKEN),
    )
    .await
    .expect(401);
    assert_eq!(err["error"]["code"], "invalid_api_key");
}

/// `local/image` at $0.04 an image, and tiers with a step at $0.05.
fn priced_catalog(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("models.toml");
    std::fs::write(
        &path,
        r#"
[[models]]
id = "local/image"
name = "Local test image (priced)"
modality = "image"
aspect_ratios = ["16:9", "9:16", "1:1", "4:3", "3:4"]
sizes = true
seed = true
max_outputs = 10
simulate = true
price = { unit = "image", usd = "0.04" }
providers = [{ provider = "local", model = "image" }]
"#,
    )
    .unwrap();
    path
}

async fn a_priced_job_shows_in_key_usage_and_tier(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = priced_catalog(dir.path());
    let app = admin_app_with(backend, move |c| {
        c.catalog = Some(catalog);
        c.billing.tier_interval = Duration::from_millis(50);
        c.billing.tiers = [("0", 40), ("0.05", 30), ("100", 20)]
            .into_iter()
            .map(|(from, markup)| Tier {
                from_usd: from.to_owned(),
                markup_percent: markup,
            })
            .collect();
    })
    .await;
    admin_send(
        &app,
        Method::POST,
        "/v1/admin/accounts",
        &json!({"id": "acme"}),
    )
    .await
    .expect(201);
    let key = admin_send(
        &app,
        Method::POST,
        "/v1/admin/keys",
        &json!({"account": "acme", "name": "ci", "limits": {"daily_usd": "5", "requests_per_minute": 600}}),
    )
    .await
    .expect(201);
    let secret = key["key"].as_str().unwrap().to_owned();
    let key_id = key["id"].as_str().unwrap().to_owned();
    let as_key = |path: &str| {
        app.client
            .get(format!("{}{path}", app.url))
            .bearer_auth(&secret)
    };
    let job = json!({"model": "local/image", "input": {"prompt": "a fox", "size": "64x64"}});
    let post_job = || {
        app.client
            .post(format!("{}/v1/jobs", app.url))
            .bearer_auth(&secret)
            .json(&job)
    };

    // Prepaid with no credit: 402 at once, nothing queued.
    let refused = answer(post_job()).await.expect(402);
    assert_eq!(
        refused["error"]["code"], "insufficient_credits",
        "{refused}"
    );
    assert_eq!(refused["error"]["limit"]["scope"], "account");
    let listed = answer(as_key("/v1/jobs")).await.expect(200);
    assert_eq!(listed["data"], json!([]));
    let me = answer(as_key("/v1/key")).await.expect(200);
    assert_eq!(me["data"]["remaining"], "0.000000", "{me}");

    admin_send(
        &app,
        Method::POST,
        "/v1/admin/accounts/acme/credits",
        &json!({"amount_usd": "10"}),
    )
    .await
    .expect(200);
    let run = |body: Value| {
        let req = app
            .client
            .post(format!("{}/v1/jobs", app.url))
            .bearer_auth(&secret)
            .json(&body);
        let as_key = &as_key;
        async move {
            let accepted = answer(req).await.accepted();
            let path = format!("/v1/jobs/{}", accepted["id"].as_str().unwrap());
            let started = std::time::Instant::now();
            loop {
                let job = answer(as_key(&path)).await.expect(200);
                if !matches!(job["status"].as_str(), Some("queued" | "in_progress")) {
                    break job;
                }
                assert!(started.elapsed() < Duration::from_secs(60), "{job}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    let done = run(job.clone()).await;
    assert_eq!(done["status"], "completed", "{done}");
    // $0.04 list + 40 % markup.
    let cost = done["usage"]["cost_usd"].as_str().unwrap();
    assert_eq!(parse_usd(cost, false), Ok(56_000), "{done}");
    assert_eq!(books(&app, "acme").await, (9_944_000, 0));

    let me = answer(as_key("/v1/key")).await.expect(200);
    let data = &me["data"];
    assert_eq!(
        keys_of(data),
        [
            "account",
            "id",
            "limits",
            "name",
            "rate_limit",
            "remaining",
            "tier",
            "usage"
        ]
    );
    assert_eq!(data["id"], key_id.as_str());
    assert_eq!(data["name"], "ci");
    assert_eq!(
        data["usage"],
        json!({"today_usd": "0.056000", "month_usd": "0.056000"})
    );
    // The key's daily cap leaves 4.944; the balance 9.944.
    assert_eq!(data["remaining"], "4.944000");
    assert_eq!(
        data["account"],
        json!({"id": "acme", "mode": "prepaid", "balance_usd": "9.944000",
               "reserved_usd": "0.000000",
               "limits": {"daily_usd": null, "monthly_usd": null},
               "usage": {"today_usd": "0.056000", "month_usd": "0.056000"}})
    );
    // The reaper recomputes tiers every 50 ms here: until it has seen the settlement the
    // tier is the first, then the second.
    let tier = without_recompute_time(&data["tier"]);
    assert!(
        tier == json!({"markup_percent": 40, "rolling_30d_usd": "0.000000", "next_tier_at_usd": "0.050000"})
            || tier
                == json!({"markup_percent": 30, "rolling_30d_usd": "0.056000", "next_tier_at_usd": "100.000000"}),
        "{tier}"
    );
    assert_eq!(
        data["rate_limit"],
        json!({"requests_per_minute": 600, "max_concurrent_jobs": null, "jobs_in_flight": 0})
    );

    let or = answer(as_key("/api/v1/key")).await.expect(200);
    let d = &or["data"];
    assert_eq!(d["label"], "ci");
    assert_eq!(d["limit"], json!(5.0));
    assert_eq!(d["limit_reset"], "daily");
    assert_eq!(d["limit_remaining"], json!(4.944));
    for field in ["usage", "usage_daily", "usage_weekly", "usage_monthly"] {
        assert_eq!(d[field], json!(0.056), "{field}: {or}");
    }
    assert_eq!(d["is_free_tier"], false);
    assert_eq!(d["rate_limit"]["requests"], 600);

    let by_model = answer(as_key("/v1/usage?group_by=model")).await.expect(200);
    assert_eq!(by_model["object"], "list");
    assert_eq!(
        by_model["data"],
        json!([{"group": "local/image", "requests": 1, "units": 1, "cost_usd": "0.056000"}])
    );
    let by_key = answer(as_key("/v1/usage?group_by=key")).await.expect(200);
    assert_eq!(by_key["data"][0]["group"], key_id.as_str());
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let by_day = answer(as_key("/v1/usage?group_by=day")).await.expect(200);
    assert_eq!(by_day["data"][0]["group"], today.as_str(), "{by_day}");
    // A window that ends before the job holds nothing.
    let old = answer(as_key("/v1/usage?from=1000&to=2000"))
        .await
        .expect(200);
    assert_eq!(old["data"], json!([]));
    // Another account's usage is not the caller's.
    let theirs = app.get_expect("/v1/usage", 200).await;
    assert_eq!(theirs["data"], json!([]));
    let across = answer(admin(&app, Method::GET, "/v1/admin/usage?group_by=account"))
        .await
        .expect(200);
    assert_eq!(
        across["data"],
        json!([{"group": "acme", "requests": 1, "units": 1, "cost_usd": "0.056000"}])
    );
    let one = answer(admin(
        &app,
        Method::GET,
        "/v1/admin/usage?account=acct_test&group_by=model",
    ))
    .await
    .expect(200);
    assert_eq!(one["data"], json!([]));

    // The tier follows the 30-day spend once the reaper has recomputed it.
    let started = std::time::Instant::now();
    let acme = loop {
        let acme = answer(admin(&app, Method::GET, "/v1/admin/accounts/acme"))
            .await
            .expect(200);
        if acme["tier"]["markup_percent"] == 30 {
            break acme;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{acme}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(acme["tier"]["rolling_30d_usd"], "0.056000");
    assert_eq!(acme["tier"]["next_tier_at_usd"], "100.000000");
    let now = mediagate_engine::ids::now_ms() / 1000;
    let at = acme["tier"]["recomputed_at"].as_i64().expect("a time");
    assert!((now - 60..=now).contains(&at), "{acme}");

    // A failed job costs nothing: its hold and its job slot are given back.
    let failed = run(json!({"model": "local/image",
        "input": {"prompt": "a fox", "size": "64x64", "simulate": {"fail": "permanent"}}}))
    .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(books(&app, "acme").await, (9_944_000, 0));
    let me = answer(as_key("/v1/key")).await.expect(200);
    assert_eq!(me["data"]["rate_limit"]["jobs_in_flight"], 0);
    assert_eq!(me["data"]["usage"]["today_usd"], "0.056000");

    // A key cap below the job's price: 402 naming the key's day.
    admin_send(
        &app,
        Method::PATCH,
        &format!("/v1/admin/keys/{key_id}"),
        &json!({"limits": {"daily_usd": "0.06"}}),
    )
    .await
    .expect(200);
    let capped = answer(post_job()).await.expect(402);
    assert_eq!(capped["error"]["code"], "spend_cap_reached", "{capped}");
    assert_eq!(capped["error"]["limit"]["scope"], "key");
    assert_eq!(capped["error"]["limit"]["period"], "day");
    assert_eq!(books(&app, "acme").await, (9_944_000, 0));
}

/// The `mediagate` binary against one database, as an operator runs it.
struct Cli {
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Cli {
    async fn new(backend: Backend) -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let mut env = process_env(backend, dir.path()).await;
        env.push(("MEDIAGATE_LOG".into(), "warn".into()));
        Cli { env, _dir: dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mediagate"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Runs a command that must fail; what it said.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    async fn db(&self) -> Db {
        let url = match self.env.iter().find(|(k, _)| k == "MEDIAGATE_DATABASE_URL") {
            Some((_, url)) => url.clone(),
            None => {
                let data = &self
                    .env
                    .iter()
                    .find(|(k, _)| k == "MEDIAGATE_DATA_DIR")
                    .unwrap()
                    .1;
                format!("sqlite://{data}/mediagate.db")
            }
        };
        Db::connect(&url, PoolSize::few(2)).await.unwrap()
    }
}

async fn the_cli_manages_accounts_credits_keys_and_usage(backend: Backend) {
    let cli = Cli::new(backend).await;
    let acme = cli.json(&[
        "accounts",
        "create",
        "acme",
        "--name",
        "Acme",
        "--daily-usd",
        "50",
    ]);
    assert_eq!(acme["object"], "account");
    assert_eq!(acme["mode"], "prepaid");
    assert_eq!(acme["name"], "Acme");
    assert_eq!(
        acme["limits"],
        json!({"daily_usd": "50.000000", "monthly_usd": null})
    );
    let said = cli.fails(&["accounts", "create", "acme"]);
    assert!(said.contains("exists already"), "{said}");
    let said = cli.fails(&["accounts", "create", "bad id"]);
    assert!(said.contains("account id"), "{said}");
    let said = cli.fails(&["accounts", "create", "x", "--daily-usd", "1e3"]);
    assert!(said.contains("decimal"), "{said}");
    let free = cli.json(&[
        "accounts",
        "create",
        "ops",
        "--unlimited",
        "--monthly-usd",
        "7.5",
    ]);
    assert_eq!(
        (&free["mode"], &free["limits"]["monthly_usd"]),
        (&json!("unlimited"), &json!("7.500000"))
    );

    let topped = cli.json(&["credits", "add", "acme", "25.00", "--note", "wire 17"]);
    assert_eq!(topped["balance_usd"], "25.000000");
    let said = cli.fails(&["credits", "add", "acme", "-30"]);
    assert!(said.contains("below zero"), "{said}");
    let corrected = cli.json(&["credits", "add", "acme", "-5"]);
    assert_eq!(corrected["balance_usd"], "20.000000");
    cli.fails(&["credits", "add", "nobody", "5"]);
    let shown = cli.json(&["accounts", "show", "acme"]);
    assert_eq!(shown["balance_usd"], "20.000000");
    assert_eq!(shown["tier"]["markup_percent"], 40);
    cli.fails(&["accounts", "show", "nobody"]);

    // `keys create` prints the key alone on its line, with its limits stored.
    let out = cli.ok(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--account",
        "acme",
        "--daily-usd",
        "5",
        "--monthly-usd",
        "50",
        "--rpm",
        "60",
        "--max-concurrent",
        "3",
    ]);
    let key = out.trim();
    assert!(
        key.starts_with("mg_") && !key.contains(char::is_whitespace),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1);
    let said = cli.fails(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--account",
        "acme",
        "--max-concurrent",
        "1000001",
    ]);
    assert!(said.contains("max_concurrent_jobs"), "{said}");
    // A missing account is made, unlimited, as before.
    cli.ok(&["keys", "create", "--name", "legacy", "--account", "newco"]);
    assert_eq!(
        cli.json(&["accounts", "show", "newco"])["mode"],
        "unlimited"
    );

    let list = cli.ok(&["keys", "list"]);
    let line = list
        .lines()
        .find(|l| l.contains("\tacme\t"))
        .unwrap_or_else(|| panic!("acme's key is listed: {list}"));
    assert!(!line.contains(key), "keys list must not show the secret");
    for shown in [
        "daily_usd=5.000000",
        "monthly_usd=50.000000",
        "rpm=60",
        "max_concurrent=3",
        "active",
    ] {
        assert!(line.contains(shown), "{shown} in {line}");
    }
    let key_id = line.split('\t').next().unwrap();
    cli.ok(&["keys", "revoke", key_id]);
    let list = cli.ok(&["keys", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(key_id) && l.contains("revoked")),
        "{list}"
    );

    let usage = cli.json(&["usage", "--group-by", "account"]);
    assert_eq!(
        (&usage["object"], &usage["data"]),
        (&json!("list"), &json!([]))
    );
    cli.json(&[
        "usage",
        "--account",
        "acme",
        "--from",
        "0",
        "--to",
        "2000000000",
    ]);
    let said = cli.fails(&["usage", "--group-by", "week"]);
    assert!(said.contains("group_by"), "{said}");

    // What the CLI wrote: by `cli`, with its note, summing to the balance.
    let db = cli.db().await;
    let rows: Vec<(String, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT kind, balance_delta_micros, actor, note FROM ledger WHERE account_id = 'acme' \
         ORDER BY created_at, id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                "topup".into(),
                25_000_000,
                "cli".into(),
                Some("wire 17".into())
            ),
            ("correction".into(), -5_000_000, "cli".into(), None),
        ]
    );
    let sums = money::ledger_sums(db.pool(), "acme").await.unwrap();
    assert_eq!(sums.balance_micros, 20_000_000);
}
