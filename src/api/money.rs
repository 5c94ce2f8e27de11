//! Accounts, keys and usage as mediagate shows them, and the reading of what an operator
//! sends to change them. The admin API, `GET /v1/key` and the CLI all go through here, so
//! they take the same input by the same rules and answer in the same shapes.
//!
//! Amounts are decimal strings of dollars both ways (`"12.340000"` out, `"25"`, `"25.5"`
//! in): a JSON number is refused, since a float cannot hold every cent.

use chrono::{Datelike, TimeZone, Utc};
use mediagate_engine::ErrorCode;
use mediagate_engine::billing::money::{AmountError, format_usd, parse_usd};
use mediagate_engine::billing::{BillingConfig, Period, Scope};
use mediagate_engine::db::Db;
use mediagate_engine::db::accounts::{Account, AccountChanges, AccountMode, Change};
use mediagate_engine::db::keys::{KeyChanges, KeyInfo, KeyLimits};
use mediagate_engine::db::money::{self as rows, UsageGroup, WindowKey};
use mediagate_engine::fields;
use serde_json::{Map, Value, json};

use super::Params;
use super::error::{ApiError, ApiResult};

/// Longest account id; ids are `[A-Za-z0-9._-]`, so they fit paths and logs unescaped.
pub const MAX_ACCOUNT_ID_CHARS: usize = 64;
/// Longest account or key name.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest note on a credit.
pub const MAX_NOTE_CHARS: usize = 500;
/// Largest `requests_per_minute` and `max_concurrent_jobs` a key may be given.
pub const MAX_RATE: i64 = 1_000_000;
/// Latest time `from` and `to` may name: the end of year 9999.
const MAX_TIME_SECS: i64 = 253_402_300_799;
/// The usage report's default span, back from `to`.
const DEFAULT_USAGE_SPAN_MS: i64 = 30 * 86_400_000;

/// Whether `id` may name an account: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_account_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ACCOUNT_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `obj[name]`, an account id (required).
fn account_id(obj: &Map<String, Value>, name: &str) -> ApiResult<String> {
    match obj.get(name) {
        Some(Value::String(id)) if valid_account_id(id) => Ok(id.clone()),
        Some(_) => Err(ApiError::invalid_field(
            name,
            format!(
                "{name} must be an account id: 1 to {MAX_ACCOUNT_ID_CHARS} characters of \
                 A-Z, a-z, 0-9, '.', '_' and '-'"
            ),
        )),
        None => Err(ApiError::invalid_field(
            name,
            format!("{name} is required: the account's id, such as \"acme\""),
        )),
    }
}

/// The request body as an object whose every field is one of `known`.
fn object<'a>(body: &'a Value, known: &[&str]) -> ApiResult<&'a Map<String, Value>> {
    let obj = body.as_object().ok_or_else(|| {
        ApiError::invalid(
            ErrorCode::InvalidField,
            "the request body must be a JSON object",
        )
    })?;
    fields::refuse_unknown(obj, known, "")?;
    Ok(obj)
}

/// `obj[name]` (named `param` in errors) as an amount: absent → `None`, `null` →
/// `Some(None)` (where `nullable`), a decimal string → its micros.
fn amount(
    obj: &Map<String, Value>,
    name: &str,
    param: &str,
    signed: bool,
    nullable: bool,
) -> ApiResult<Change<i64>> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::Null) if nullable => Ok(Some(None)),
        Some(Value::String(text)) => parse_usd(text, signed).map(|m| Some(Some(m))).map_err(|e| {
            let why = match e {
                AmountError::NotDecimal => {
                    format!("{param} must be a decimal string of US dollars, such as \"25.00\"")
                }
                other => format!("{param} {other}"),
            };
            ApiError::invalid_field(param, why)
        }),
        Some(Value::Number(_)) => Err(ApiError::invalid_field(
            param,
            format!(
                "{param} must be sent as a decimal string of US dollars, such as \"25.00\", \
                 not a JSON number (a number cannot hold every cent exactly)"
            ),
        )),
        Some(_) => Err(ApiError::invalid_field(
            param,
            format!(
                "{param} must be a decimal string of US dollars, such as \"25.00\"{}",
                if nullable { ", or null" } else { "" }
            ),
        )),
    }
}

/// `obj[name]` as a whole number from 0 (which refuses every request, or every job) to
/// [`MAX_RATE`], or `null` to clear.
fn rate(obj: &Map<String, Value>, name: &str, param: &str) -> ApiResult<Change<i64>> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => match v.as_i64() {
            Some(n) if (0..=MAX_RATE).contains(&n) => Ok(Some(Some(n))),
            _ => Err(ApiError::invalid_field(
                param,
                format!("{param} must be a whole number from 0 to {MAX_RATE}, or null"),
            )),
        },
    }
}

/// `obj[name]` as text of 1 to `max` characters (not all blank).
fn text(
    obj: &Map<String, Value>,
    name: &str,
    max: usize,
    nullable: bool,
) -> ApiResult<Change<String>> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::Null) if nullable => Ok(Some(None)),
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= max => {
            Ok(Some(Some(s.clone())))
        }
        Some(_) => Err(ApiError::invalid_field(
            name,
            format!("{name} must be a string of 1 to {max} characters"),
        )),
    }
}

/// A change that may not clear: `null` is refused like any other bad value.
fn required<T>(change: Change<T>, name: &str) -> ApiResult<Option<T>> {
    match change {
        None => Ok(None),
        Some(Some(v)) => Ok(Some(v)),
        Some(None) => Err(ApiError::invalid_field(
            name,
            format!("{name} cannot be null"),
        )),
    }
}

fn mode(obj: &Map<String, Value>) -> ApiResult<Option<AccountMode>> {
    match obj.get("mode") {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(AccountMode::parse)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid_field("mode", "mode must be \"prepaid\" or \"unlimited\"")
            }),
    }
}

/// An account's caps: `limits: {daily_usd, monthly_usd}`.
fn account_limits(obj: &Map<String, Value>) -> ApiResult<(Change<i64>, Change<i64>)> {
    match obj.get("limits") {
        None => Ok((None, None)),
        Some(Value::Object(limits)) => {
            fields::refuse_unknown(limits, &["daily_usd", "monthly_usd"], "limits")?;
            Ok((
                amount(limits, "daily_usd", "limits.daily_usd", false, true)?,
                amount(limits, "monthly_usd", "limits.monthly_usd", false, true)?,
            ))
        }
        Some(_) => Err(ApiError::invalid_field(
            "limits",
            "limits must be an object: {\"daily_usd\": \"50\", \"monthly_usd\": \"500\"}",
        )),
    }
}

/// What `POST /v1/admin/accounts` (and `accounts create`) asks for.
#[derive(Debug, Clone)]
pub struct AccountRequest {
    pub id: String,
    pub name: String,
    pub mode: AccountMode,
    pub daily_limit_micros: Option<i64>,
    pub monthly_limit_micros: Option<i64>,
    pub low_balance_micros: Option<i64>,
}

const ACCOUNT_FIELDS: &[&str] = &["id", "name", "mode", "limits", "low_balance_usd"];

/// Reads a new account: `id` is required; `name` defaults to the id, `mode` to
/// `prepaid`.
pub fn account_request(body: &Value) -> ApiResult<AccountRequest> {
    let obj = object(body, ACCOUNT_FIELDS)?;
    let id = account_id(obj, "id")?;
    let name = required(text(obj, "name", MAX_NAME_CHARS, false)?, "name")?;
    let (daily, monthly) = account_limits(obj)?;
    let low = amount(obj, "low_balance_usd", "low_balance_usd", false, true)?;
    Ok(AccountRequest {
        name: name.unwrap_or_else(|| id.clone()),
        id,
        mode: mode(obj)?.unwrap_or(AccountMode::Prepaid),
        daily_limit_micros: daily.flatten(),
        monthly_limit_micros: monthly.flatten(),
        low_balance_micros: low.flatten(),
    })
}

/// Reads a `PATCH` of an account: any of `name`, `mode`, `limits`, `low_balance_usd`; a
/// `null` limit or threshold clears it.
pub fn account_changes(body: &Value) -> ApiResult<AccountChanges> {
    let obj = object(body, &ACCOUNT_FIELDS[1..])?;
    let (daily, monthly) = account_limits(obj)?;
    Ok(AccountChanges {
        name: required(text(obj, "name", MAX_NAME_CHARS, false)?, "name")?,
        mode: mode(obj)?,
        daily_limit_micros: daily,
        monthly_limit_micros: monthly,
        low_balance_micros: amount(obj, "low_balance_usd", "low_balance_usd", false, true)?,
    })
}

/// Reads a credit: `amount_usd` (negative corrects; never zero) and an optional `note`.
pub fn credit_request(body: &Value) -> ApiResult<(i64, Option<String>)> {
    let obj = object(body, &["amount_usd", "note"])?;
    let amount = match amount(obj, "amount_usd", "amount_usd", true, false)? {
        Some(Some(0)) => {
            return Err(ApiError::invalid_field(
                "amount_usd",
                "amount_usd must not be zero",
            ));
        }
        Some(Some(m)) => m,
        _ => {
            return Err(ApiError::invalid_field(
                "amount_usd",
                "amount_usd is required: a decimal string of US dollars, such as \"25.00\" \
                 (negative to correct)",
            ));
        }
    };
    let note = text(obj, "note", MAX_NOTE_CHARS, true)?.flatten();
    Ok((amount, note))
}

const KEY_LIMIT_FIELDS: &[&str] = &[
    "daily_usd",
    "monthly_usd",
    "requests_per_minute",
    "max_concurrent_jobs",
];

/// A key's `limits` object, each field absent (unchanged), `null` (cleared) or a value.
fn key_limits(obj: &Map<String, Value>) -> ApiResult<[Change<i64>; 4]> {
    match obj.get("limits") {
        None => Ok([None; 4]),
        Some(Value::Object(limits)) => {
            fields::refuse_unknown(limits, KEY_LIMIT_FIELDS, "limits")?;
            Ok([
                amount(limits, "daily_usd", "limits.daily_usd", false, true)?,
                amount(limits, "monthly_usd", "limits.monthly_usd", false, true)?,
                rate(limits, "requests_per_minute", "limits.requests_per_minute")?,
                rate(limits, "max_concurrent_jobs", "limits.max_concurrent_jobs")?,
            ])
        }
        Some(_) => Err(ApiError::invalid_field(
            "limits",
            format!(
                "limits must be an object of {}",
                KEY_LIMIT_FIELDS.join(", ")
            ),
        )),
    }
}

/// What `POST /v1/admin/keys` (and `keys create`) asks for.
#[derive(Debug, Clone)]
pub struct KeyRequest {
    pub account: String,
    pub name: String,
    pub limits: KeyLimits,
}

/// Reads a new key: `account` and `name` are required, `limits` optional.
pub fn key_request(body: &Value) -> ApiResult<KeyRequest> {
    let obj = object(body, &["account", "name", "limits"])?;
    let account = account_id(obj, "account")?;
    let name = required(text(obj, "name", MAX_NAME_CHARS, false)?, "name")?.ok_or_else(|| {
        ApiError::invalid_field(
            "name",
            "name is required: what the key is for, such as \"ci\"",
        )
    })?;
    let [daily, monthly, rpm, jobs] = key_limits(obj)?;
    Ok(KeyRequest {
        account,
        name,
        limits: KeyLimits {
            daily_limit_micros: daily.flatten(),
            monthly_limit_micros: monthly.flatten(),
            requests_per_minute: rpm.flatten(),
            max_concurrent_jobs: jobs.flatten(),
        },
    })
}

/// Reads a `PATCH` of a key: `name` and any of its `limits` (`null` clears one).
pub fn key_changes(body: &Value) -> ApiResult<KeyChanges> {
    let obj = object(body, &["name", "limits"])?;
    let [daily, monthly, rpm, jobs] = key_limits(obj)?;
    Ok(KeyChanges {
        name: required(text(obj, "name", MAX_NAME_CHARS, false)?, "name")?,
        daily_limit_micros: daily,
        monthly_limit_micros: monthly,
        requests_per_minute: rpm,
        max_concurrent_jobs: jobs,
    })
}

fn usd(micros: Option<i64>) -> Value {
    micros.map_or(Value::Null, |m| Value::String(format_usd(m)))
}

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// Spent and held money of an account or key in the current UTC day and month.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spend {
    pub day: (i64, i64),
    pub month: (i64, i64),
}

impl Spend {
    pub async fn read(db: &Db, scope: Scope, owner: &str, now: i64) -> ApiResult<Spend> {
        let mut spend = Spend::default();
        for (period, slot) in [
            (Period::Day, &mut spend.day),
            (Period::Month, &mut spend.month),
        ] {
            let key = WindowKey {
                scope: scope.as_str(),
                owner_id: owner,
                period: period.as_str(),
                starts_at: period.start(now),
            };
            if let Some(w) = rows::window(db.pool(), key).await? {
                *slot = (w.spent_micros, w.reserved_micros);
            }
        }
        Ok(spend)
    }

    /// `{today_usd, month_usd}`: money spent (settled), without what is held.
    pub fn usage_json(&self) -> Value {
        json!({
            "today_usd": format_usd(self.day.0),
            "month_usd": format_usd(self.month.0),
        })
    }

    /// What the day's and the month's caps leave for new requests (held money counts).
    fn headroom(&self, daily: Option<i64>, monthly: Option<i64>) -> [Option<i64>; 2] {
        [
            daily.map(|cap| cap - self.day.0 - self.day.1),
            monthly.map(|cap| cap - self.month.0 - self.month.1),
        ]
    }
}

/// The account's volume tier: `{markup_percent, rolling_30d_usd, next_tier_at_usd,
/// recomputed_at}`.
pub fn tier_json(billing: &BillingConfig, a: &Account) -> Value {
    let (markup_bp, next) = billing.tier_for(a.rolling_30d_micros);
    json!({
        "markup_percent": markup_bp / 100,
        "rolling_30d_usd": format_usd(a.rolling_30d_micros),
        "next_tier_at_usd": usd(next),
        "recomputed_at": a.tier_recomputed_at.map(secs),
    })
}

fn account_limits_json(a: &Account) -> Value {
    json!({
        "daily_usd": usd(a.daily_limit_micros),
        "monthly_usd": usd(a.monthly_limit_micros),
    })
}

/// The account object of the admin API and `accounts show`.
pub async fn account_json(
    db: &Db,
    billing: &BillingConfig,
    a: &Account,
    now: i64,
) -> ApiResult<Value> {
    let spend = Spend::read(db, Scope::Account, &a.id, now).await?;
    Ok(json!({
        "id": a.id,
        "object": "account",
        "name": a.name,
        "mode": a.mode.as_str(),
        "balance_usd": format_usd(a.balance_micros),
        "reserved_usd": format_usd(a.reserved_micros),
        "limits": account_limits_json(a),
        "low_balance_usd": usd(a.low_balance_micros),
        "usage": spend.usage_json(),
        "tier": tier_json(billing, a),
        "created_at": secs(a.created_at),
    }))
}

pub fn key_limits_json(l: &KeyLimits) -> Value {
    json!({
        "daily_usd": usd(l.daily_limit_micros),
        "monthly_usd": usd(l.monthly_limit_micros),
        "requests_per_minute": l.requests_per_minute,
        "max_concurrent_jobs": l.max_concurrent_jobs,
    })
}

/// The key object of the admin API (never the secret, which only creation shows).
pub fn key_json(k: &KeyInfo) -> Value {
    json!({
        "id": k.id,
        "object": "key",
        "name": k.name,
        "account": k.account_id,
        "limits": key_limits_json(&k.limits),
        "prefix": k.prefix,
        "created_at": secs(k.created_at),
        "revoked_at": k.revoked_at.map(secs),
    })
}

/// `GET /v1/key`'s `data`: the key, its spending, what is left, its account and tier.
pub async fn caller_key_json(
    db: &Db,
    billing: &BillingConfig,
    key: &KeyInfo,
    account: &Account,
    now: i64,
) -> ApiResult<Value> {
    let key_spend = Spend::read(db, Scope::Key, &key.id, now).await?;
    let account_spend = Spend::read(db, Scope::Account, &account.id, now).await?;
    let l = &key.limits;
    let mut left: Vec<i64> = Vec::new();
    left.extend(
        key_spend
            .headroom(l.daily_limit_micros, l.monthly_limit_micros)
            .into_iter()
            .flatten(),
    );
    left.extend(
        account_spend
            .headroom(account.daily_limit_micros, account.monthly_limit_micros)
            .into_iter()
            .flatten(),
    );
    if account.mode == AccountMode::Prepaid {
        left.push(account.available_micros());
    }
    let remaining = left.into_iter().min().map(|m| m.max(0));
    Ok(json!({
        "id": key.id,
        "name": key.name,
        "limits": key_limits_json(l),
        "usage": key_spend.usage_json(),
        "remaining": usd(remaining),
        "account": {
            "id": account.id,
            "mode": account.mode.as_str(),
            "balance_usd": format_usd(account.balance_micros),
            "reserved_usd": format_usd(account.reserved_micros),
            "limits": account_limits_json(account),
            "usage": account_spend.usage_json(),
        },
        "tier": tier_json(billing, account),
        "rate_limit": {
            "requests_per_minute": l.requests_per_minute,
            "max_concurrent_jobs": l.max_concurrent_jobs,
            "jobs_in_flight": key.jobs_in_flight,
        },
    }))
}

/// Dollars as a JSON number, for OpenRouter's shapes alone: display only, never summed.
fn dollars(micros: i64) -> Value {
    json!(micros as f64 / 1_000_000.0)
}

/// `GET /api/v1/key`'s `data`, in OpenRouter's shape. `limit` is the key's own cap that
/// leaves the least (its day's or its month's, with `limit_reset` saying which); usage
/// is what the key's settled requests cost, all time and this UTC day, week (from
/// Monday) and month.
pub async fn openrouter_key_json(db: &Db, key: &KeyInfo, now: i64) -> ApiResult<Value> {
    let spend = Spend::read(db, Scope::Key, &key.id, now).await?;
    let l = &key.limits;
    let [day_left, month_left] = spend.headroom(l.daily_limit_micros, l.monthly_limit_micros);
    let binding = [
        (l.daily_limit_micros, day_left, "daily"),
        (l.monthly_limit_micros, month_left, "monthly"),
    ]
    .into_iter()
    .filter_map(|(cap, left, reset)| Some((cap?, left?, reset)))
    .min_by_key(|(_, left, _)| *left);
    let spent = |from: i64| key_spent(db, &key.account_id, &key.id, from, now);
    let today = Period::Day.start(now);
    let (all, daily, weekly, monthly) = (
        spent(0).await?,
        spent(today).await?,
        spent(week_start(now)).await?,
        spent(Period::Month.start(now)).await?,
    );
    Ok(json!({
        "label": key.name,
        "limit": binding.map(|(cap, _, _)| dollars(cap)),
        "limit_reset": binding.map(|(_, _, reset)| reset),
        "limit_remaining": binding.map(|(_, left, _)| dollars(left.max(0))),
        "include_byok_in_limit": false,
        "usage": dollars(all),
        "usage_daily": dollars(daily),
        "usage_weekly": dollars(weekly),
        "usage_monthly": dollars(monthly),
        "byok_usage": 0,
        "byok_usage_daily": 0,
        "byok_usage_weekly": 0,
        "byok_usage_monthly": 0,
        "is_free_tier": false,
        "is_management_key": false,
        "is_provisioning_key": false,
        "expires_at": null,
        "rate_limit": {
            "requests": l.requests_per_minute.unwrap_or(-1),
            "interval": "1m",
            "note": "This field is deprecated and safe to ignore.",
        },
    }))
}

/// What the key's settlements from `from` (Unix ms) on add up to.
async fn key_spent(db: &Db, account: &str, key_id: &str, from: i64, now: i64) -> ApiResult<i64> {
    let rows = rows::usage(db.pool(), account, UsageGroup::Key, from, now + 1).await?;
    Ok(rows
        .iter()
        .find(|r| r.group_key == key_id)
        .map_or(0, |r| r.cost_micros))
}

/// The Monday 00:00 UTC that starts the week of `ms`.
fn week_start(ms: i64) -> i64 {
    let day = Period::Day.start(ms);
    let weekday = Utc
        .timestamp_millis_opt(day)
        .single()
        .map_or(0, |t| i64::from(t.weekday().num_days_from_monday()));
    day - weekday * 86_400_000
}

/// A usage report's question: grouped how, over [from, to) in Unix ms.
#[derive(Debug, Clone, Copy)]
pub struct UsageQuery {
    pub group: UsageGroup,
    pub from: i64,
    pub to: i64,
}

/// Reads `group_by` (`model` by default; `account` only where `across_accounts`),
/// `from` and `to` (Unix seconds; by default the 30 days up to now).
pub fn usage_query(params: &Params, across_accounts: bool, now: i64) -> ApiResult<UsageQuery> {
    let groups: &[&str] = if across_accounts {
        &["model", "key", "day", "account"]
    } else {
        &["model", "key", "day"]
    };
    let group = match params.get("group_by").unwrap_or("model") {
        "model" => UsageGroup::Model,
        "key" => UsageGroup::Key,
        "day" => UsageGroup::Day,
        "account" if across_accounts => UsageGroup::Account,
        _ => {
            return Err(ApiError::invalid_field(
                "group_by",
                format!("group_by must be one of {}", groups.join(", ")),
            ));
        }
    };
    let time = |name: &str| -> ApiResult<Option<i64>> {
        let what = format!("{name} must be a time in Unix seconds, up to {MAX_TIME_SECS}");
        match params.digits::<i64>(name, &what)? {
            Some(s) if s > MAX_TIME_SECS => Err(ApiError::invalid_field(name, what)),
            other => Ok(other.map(|s| s * 1000)),
        }
    };
    let to = time("to")?.unwrap_or(now + 1);
    let from = time("from")?.unwrap_or((to - DEFAULT_USAGE_SPAN_MS).max(0));
    if from >= to {
        return Err(ApiError::invalid_field("from", "from must be before to"));
    }
    Ok(UsageQuery { group, from, to })
}

/// The usage report of `account` (empty: every account): `{"object": "list", data:
/// [{group, requests, units, cost_usd}]}`, days named `YYYY-MM-DD`.
pub async fn usage_json(db: &Db, account: &str, q: &UsageQuery) -> ApiResult<Value> {
    let rows = rows::usage(db.pool(), account, q.group, q.from, q.to).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            let group = match q.group {
                UsageGroup::Day => day_label(&r.group_key),
                _ => r.group_key.clone(),
            };
            json!({
                "group": group,
                "requests": r.requests,
                "units": r.units,
                "cost_usd": format_usd(r.cost_micros),
            })
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "from": secs(q.from),
        "to": secs(q.to),
    }))
}

/// A day's start in Unix ms (as the ledger groups it) as `YYYY-MM-DD`.
fn day_label(ms: &str) -> String {
    ms.parse::<i64>()
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .map_or_else(|| ms.to_owned(), |t| t.format("%Y-%m-%d").to_string())
}

/// `404` for an account that is not there.
pub fn no_account(param: Option<&str>) -> ApiError {
    let err = ApiError::not_found("account");
    match param {
        Some(p) => err.with_param(p),
        None => err,
    }
}

/// `409` for an account id taken already.
pub fn account_exists(id: &str) -> ApiError {
    ApiError::conflict(
        ErrorCode::AccountExists,
        format!("an account with id {id:?} exists already"),
    )
    .with_param("id")
}

/// `400` for a credit the account cannot take: a correction of more than it has free, or
/// a top-up past the largest balance kept.
pub fn credit_refused(amount: i64, a: &Account) -> ApiError {
    if amount > 0 {
        return ApiError::invalid_field(
            "amount_usd",
            format!(
                "this top-up would take the balance past {} dollars, the most an account holds",
                format_usd(mediagate_engine::billing::money::MAX_MICROS)
            ),
        );
    }
    ApiError::invalid_field(
        "amount_usd",
        format!(
            "this correction of {} would take the account below zero: its balance is {} with {} held for requests in flight",
            format_usd(amount),
            format_usd(a.balance_micros),
            format_usd(a.reserved_micros)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_plain() {
        for ok in ["acme", "acct_test", "a.b-c_d", "A1", &"x".repeat(64)] {
            assert!(valid_account_id(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", "a\0", &"x".repeat(65), "..%2f"] {
            assert!(!valid_account_id(bad), "{bad}");
        }
    }

    #[test]
    fn amounts_are_strings_never_numbers() {
        let body = json!({"amount_usd": 25});
        let err = credit_request(&body).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("amount_usd"));
        assert!(err.message.contains("decimal string"), "{}", err.message);
        assert_eq!(
            credit_request(&json!({"amount_usd": "-2.5"})).unwrap(),
            (-2_500_000, None)
        );
        for bad in ["0", "0.0000001", "1e3", "", "2000000000"] {
            assert!(
                credit_request(&json!({"amount_usd": bad})).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn limits_clear_with_null_and_refuse_strangers() {
        // Zero is a limit too: it refuses every request (or job) of the key.
        let zero = key_changes(&json!({"limits": {"max_concurrent_jobs": 0}})).unwrap();
        assert_eq!(zero.max_concurrent_jobs, Some(Some(0)));
        let changes =
            key_changes(&json!({"limits": {"daily_usd": null, "requests_per_minute": 60}}))
                .unwrap();
        assert_eq!(changes.daily_limit_micros, Some(None));
        assert_eq!(changes.monthly_limit_micros, None);
        assert_eq!(changes.requests_per_minute, Some(Some(60)));
        let err = key_changes(&json!({"limits": {"rpm": 5}})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("limits.rpm"));
        for bad in [json!(-1), json!(1.5), json!("60"), json!(MAX_RATE + 1)] {
            let body = json!({"limits": {"max_concurrent_jobs": bad}});
            assert!(key_changes(&body).is_err(), "{body}");
        }
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-12-03 is a Thursday; its week began on Monday 2026-11-30.
        let thursday_noon = 1_796_256_000_000 + 12 * 3_600_000;
        assert_eq!(
            day_label(&week_start(thursday_noon).to_string()),
            "2026-11-30"
        );
        assert_eq!(day_label("1796083200000"), "2026-12-01");
    }
}
