//! The admin API (`/v1/admin/*`): accounts, their credits, keys and usage, for the
//! operator, behind `Authorization: Bearer $MEDIAGATE_ADMIN_TOKEN`. Without a token
//! configured the routes are not there at all (every path answers `404`), so a deployment
//! that never set one has no admin surface to probe.
//!
//! Each operation is a function over the database that the CLI (`mediagate accounts …`,
//! `credits add`, `usage`) calls too; the handlers only read the request and shape the
//! answer.

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use mediagate_engine::billing::BillingConfig;
use mediagate_engine::db::Db;
use mediagate_engine::db::accounts::{self, Credit, Credited, NewAccount};
use mediagate_engine::db::keys::{self, NewKey};
use mediagate_engine::ids::{IdKind, looks_like, now_ms};
use mediagate_engine::jobs::intake::IdempotencyKey;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth::{bearer_token, generate_key, hash_key};
use super::error::{ApiError, ApiResult};
use super::money::{self, valid_account_id};
use super::{AppState, JsonBody, Params, Path, gate};

/// The admin routes, when an admin token is configured.
pub fn router(state: &AppState) -> Option<Router<AppState>> {
    state.config.admin_token()?;
    Some(
        Router::new()
            .route("/v1/admin/accounts", post(create_account))
            .route(
                "/v1/admin/accounts/{id}",
                get(get_account).patch(update_account),
            )
            .route("/v1/admin/accounts/{id}/credits", post(add_credits))
            .route("/v1/admin/keys", post(create_key).get(list_keys))
            .route("/v1/admin/keys/{id}", patch(update_key).delete(revoke_key))
            .route("/v1/admin/usage", get(usage))
            .route_layer(middleware::from_fn_with_state(state.clone(), admin_gate)),
    )
}

/// The admin token is checked from the head, before the body is read, as keys are.
async fn admin_gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let allowed = match (presented, state.config.admin_token()) {
        (Some(token), Some(expected)) => same_secret(token, expected),
        _ => false,
    };
    if !allowed {
        let e = ApiError::unauthorized(
            "the admin API takes Authorization: Bearer <MEDIAGATE_ADMIN_TOKEN>; API keys \
             (mg_…) do not open it",
        );
        return gate::refuse(e, body);
    }
    let limit = state.config.max_body_bytes;
    gate::admit(&state, Request::from_parts(parts, body), limit, next).await
}

/// Compares digests in constant time, so neither the token's bytes nor its length can be
/// found by timing the answers.
fn same_secret(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    bool::from(a.ct_eq(&b))
}

/// Makes an account from the API's body; the account object.
pub async fn create_account_op(db: &Db, billing: &BillingConfig, body: &Value) -> ApiResult<Value> {
    let req = money::account_request(body)?;
    let now = now_ms();
    let new = NewAccount {
        id: &req.id,
        name: &req.name,
        mode: req.mode,
        daily_limit_micros: req.daily_limit_micros,
        monthly_limit_micros: req.monthly_limit_micros,
        low_balance_micros: req.low_balance_micros,
        created_at: now,
    };
    if !accounts::create(db.pool(), &new).await? {
        return Err(money::account_exists(&req.id));
    }
    show_account_op(db, billing, &req.id).await
}

/// The account object; `404` for an account that is not there (or an id none can have).
pub async fn show_account_op(db: &Db, billing: &BillingConfig, id: &str) -> ApiResult<Value> {
    let account = find_account(db, id).await?;
    money::account_json(db, billing, &account, now_ms()).await
}

async fn find_account(db: &Db, id: &str) -> ApiResult<accounts::Account> {
    if !valid_account_id(id) {
        return Err(money::no_account(None));
    }
    accounts::find(db.pool(), id)
        .await?
        .ok_or_else(|| money::no_account(None))
}

/// Credits an account (`actor`: `admin` or `cli`); the account object, and whether this
/// was a replay of an earlier request with the same idempotency key.
pub async fn credit_op(
    db: &Db,
    billing: &BillingConfig,
    id: &str,
    body: &Value,
    actor: &str,
    idempotency: Option<(&str, &str)>,
) -> ApiResult<(Value, bool)> {
    let (amount, note) = money::credit_request(body)?;
    if !valid_account_id(id) {
        return Err(money::no_account(None));
    }
    let now = now_ms();
    let credit = Credit {
        account_id: id,
        amount_micros: amount,
        actor,
        note: note.as_deref(),
        idempotency,
        now,
    };
    let (account, replayed) = match db.credit(&credit).await? {
        Credited::Done(a) => (a, false),
        Credited::Replayed(a) => (a, true),
        Credited::KeyReused => return Err(ApiError::idempotency_key_reused()),
        Credited::NoAccount => return Err(money::no_account(None)),
        Credited::Refused(a) => return Err(money::credit_refused(amount, &a)),
    };
    Ok((
        money::account_json(db, billing, &account, now).await?,
        replayed,
    ))
}

/// The usage report across accounts (`account` narrows it to one).
pub async fn usage_op(db: &Db, params: &Params) -> ApiResult<Value> {
    let query = money::usage_query(params, true, now_ms())?;
    let account = account_param(db, params).await?.unwrap_or_default();
    money::usage_json(db, &account, &query).await
}

/// The `account` a list is narrowed to, if any; `404` naming it if there is none such.
async fn account_param(db: &Db, params: &Params) -> ApiResult<Option<String>> {
    match params.get("account").filter(|a| !a.is_empty()) {
        Some(a) if valid_account_id(a) && accounts::find(db.pool(), a).await?.is_some() => {
            Ok(Some(a.to_owned()))
        }
        Some(_) => Err(money::no_account(Some("account"))),
        None => Ok(None),
    }
}

async fn create_account(State(state): State<AppState>, body: JsonBody) -> ApiResult<Response> {
    let account = create_account_op(&state.engine.db, billing(&state), &body.value).await?;
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

fn billing(state: &AppState) -> &BillingConfig {
    &state.engine.config.billing
}

async fn get_account(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        show_account_op(&state.engine.db, billing(&state), &id).await?,
    ))
}

async fn update_account(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let changes = money::account_changes(&body.value)?;
    let db = &state.engine.db;
    if !valid_account_id(&id) {
        return Err(money::no_account(None));
    }
    let account = accounts::update(db.pool(), &id, &changes)
        .await?
        .ok_or_else(|| money::no_account(None))?;
    Ok(Json(
        money::account_json(db, billing(&state), &account, now_ms()).await?,
    ))
}

/// `POST /v1/admin/accounts/{id}/credits`: `Idempotency-Key` as on `POST /v1/jobs` (the
/// same key and body answer again without a second credit, with `Idempotent-Replayed:
/// true`; another body is `422`).
async fn add_credits(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult<Response> {
    // The same key and body hash as a job's (`IdempotencyKey`).
    let key = super::jobs::idempotency_key(&headers)?.map(|k| IdempotencyKey::new(&k, &body.raw));
    let idempotency = key
        .as_ref()
        .map(|k| (k.key.as_str(), k.request_hash.as_str()));
    let (account, replayed) = credit_op(
        &state.engine.db,
        billing(&state),
        &id,
        &body.value,
        "admin",
        idempotency,
    )
    .await?;
    let mut res = Json(account).into_response();
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(res)
}

/// `POST /v1/admin/keys`: a key for an existing account (`404` naming `account`
/// otherwise), shown once.
async fn create_key(State(state): State<AppState>, body: JsonBody) -> ApiResult<Response> {
    let req = money::key_request(&body.value)?;
    let secret = generate_key();
    let hash = hash_key(&secret);
    let new = NewKey {
        account_id: &req.account,
        name: &req.name,
        key_hash: &hash,
        key_prefix: &secret[..10],
        limits: req.limits,
    };
    let pool = state.engine.db.pool();
    let id = keys::insert(pool, &new)
        .await?
        .ok_or_else(|| money::no_account(Some("account")))?;
    let key = keys::find(pool, &id)
        .await?
        .ok_or_else(ApiError::internal)?;
    let mut shown = money::key_json(&key);
    shown["key"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(shown)).into_response())
}

/// `GET /v1/admin/keys?account=`: every key (of one account), revoked ones too.
async fn list_keys(State(state): State<AppState>, params: Params) -> ApiResult<Json<Value>> {
    let db = &state.engine.db;
    let list = match account_param(db, &params).await? {
        Some(account) => keys::for_account(db.pool(), &account).await?,
        None => keys::list(db.pool()).await?,
    };
    let data: Vec<Value> = list.iter().map(money::key_json).collect();
    Ok(Json(serde_json::json!({"object": "list", "data": data})))
}

async fn update_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let changes = money::key_changes(&body.value)?;
    if !looks_like(IdKind::Key, &id) {
        return Err(ApiError::not_found("key"));
    }
    let key = keys::update(state.engine.db.pool(), &id, &changes)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    Ok(Json(money::key_json(&key)))
}

/// `DELETE /v1/admin/keys/{id}`: revokes the key (it stays listed, with `revoked_at`);
/// revoking a revoked key answers the same.
async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !looks_like(IdKind::Key, &id) {
        return Err(ApiError::not_found("key"));
    }
    let pool = state.engine.db.pool();
    keys::revoke(pool, &id).await?;
    let key = keys::find(pool, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    Ok(Json(money::key_json(&key)))
}

async fn usage(State(state): State<AppState>, params: Params) -> ApiResult<Json<Value>> {
    Ok(Json(usage_op(&state.engine.db, &params).await?))
}
