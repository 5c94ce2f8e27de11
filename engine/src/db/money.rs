//! Money rows: the spend windows of accounts and keys, the holds on money of requests in
//! flight (`reservations`), and the append-only ledger. Each statement here runs inside
//! the transaction of the request or state change it belongs to; `billing` says in which
//! order and why.

use sqlx::{Any, Executor};

use crate::db::accounts::AccountMode;

/// What a hold needs to know about the paying key and its account, read in one query.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PayerRow {
    #[sqlx(try_from = "String")]
    pub mode: AccountMode,
    pub balance_micros: i64,
    pub reserved_micros: i64,
    pub rolling_30d_micros: i64,
    pub account_daily_micros: Option<i64>,
    pub account_monthly_micros: Option<i64>,
    pub key_daily_micros: Option<i64>,
    pub key_monthly_micros: Option<i64>,
    pub max_concurrent_jobs: Option<i64>,
    pub jobs_in_flight: i64,
}

pub async fn payer<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    key_id: &str,
) -> Result<Option<PayerRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.mode, a.balance_micros, a.reserved_micros, a.rolling_30d_micros, \
         a.daily_limit_micros AS account_daily_micros, \
         a.monthly_limit_micros AS account_monthly_micros, \
         k.daily_limit_micros AS key_daily_micros, k.monthly_limit_micros AS key_monthly_micros, \
         k.max_concurrent_jobs, k.jobs_in_flight \
         FROM api_keys k JOIN accounts a ON a.id = k.account_id \
         WHERE k.id = $1 AND k.account_id = $2",
    )
    .bind(key_id)
    .bind(account_id)
    .fetch_optional(db)
    .await
}

/// Holds `amount` of the account's money: always for an unlimited account, for a
/// prepaid one only while balance − reserved covers it. The guard is re-checked on the
/// locked row, so racing holds can never take more than the balance.
pub async fn hold_balance<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    amount: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE accounts SET reserved_micros = reserved_micros + $2 \
         WHERE id = $1 AND (mode = 'unlimited' OR balance_micros - reserved_micros >= $2)",
    )
    .bind(account_id)
    .bind(amount)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One UTC day or month of an account's or a key's spending.
#[derive(Debug, Clone, Copy)]
pub struct WindowKey<'a> {
    /// `account` or `key`.
    pub scope: &'a str,
    pub owner_id: &'a str,
    /// `day` or `month`.
    pub period: &'a str,
    pub starts_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WindowRow {
    pub spent_micros: i64,
    pub reserved_micros: i64,
    pub alerted_at: Option<i64>,
}

/// Holds `amount` in a window while spent + reserved + amount stays within `cap`. The
/// window's row is made on its first hold; the caller has checked that `amount` alone
/// fits the cap, which is all a new row needs.
pub async fn hold_window<'e>(
    db: impl Executor<'e, Database = Any>,
    w: WindowKey<'_>,
    amount: i64,
    cap: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO spend_windows (scope, owner_id, period, starts_at, spent_micros, reserved_micros) \
         VALUES ($1, $2, $3, $4, 0, $5) \
         ON CONFLICT (scope, owner_id, period, starts_at) DO UPDATE \
         SET reserved_micros = spend_windows.reserved_micros + excluded.reserved_micros \
         WHERE spend_windows.spent_micros + spend_windows.reserved_micros \
               + excluded.reserved_micros <= $6",
    )
    .bind(w.scope)
    .bind(w.owner_id)
    .bind(w.period)
    .bind(w.starts_at)
    .bind(amount)
    .bind(cap)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn window<'e>(
    db: impl Executor<'e, Database = Any>,
    w: WindowKey<'_>,
) -> Result<Option<WindowRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT spent_micros, reserved_micros, alerted_at FROM spend_windows \
         WHERE scope = $1 AND owner_id = $2 AND period = $3 AND starts_at = $4",
    )
    .bind(w.scope)
    .bind(w.owner_id)
    .bind(w.period)
    .bind(w.starts_at)
    .fetch_optional(db)
    .await
}

/// Moves money within a window: a settlement turns held money into spent.
pub async fn adjust_window<'e>(
    db: impl Executor<'e, Database = Any>,
    w: WindowKey<'_>,
    spent_delta: i64,
    reserved_delta: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE spend_windows SET spent_micros = spent_micros + $5, \
         reserved_micros = reserved_micros + $6 \
         WHERE scope = $1 AND owner_id = $2 AND period = $3 AND starts_at = $4",
    )
    .bind(w.scope)
    .bind(w.owner_id)
    .bind(w.period)
    .bind(w.starts_at)
    .bind(spent_delta)
    .bind(reserved_delta)
    .execute(db)
    .await?;
    Ok(())
}

/// Adds spending to a window that held nothing for it (it had no cap), making its row
/// if need be: usage is kept for every window, capped or not.
pub async fn add_spent<'e>(
    db: impl Executor<'e, Database = Any>,
    w: WindowKey<'_>,
    spent: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO spend_windows (scope, owner_id, period, starts_at, spent_micros, reserved_micros) \
         VALUES ($1, $2, $3, $4, $5, 0) \
         ON CONFLICT (scope, owner_id, period, starts_at) DO UPDATE \
         SET spent_micros = spend_windows.spent_micros + excluded.spent_micros",
    )
    .bind(w.scope)
    .bind(w.owner_id)
    .bind(w.period)
    .bind(w.starts_at)
    .bind(spent)
    .execute(db)
    .await?;
    Ok(())
}

/// Marks a window's cap alert sent; false if it had been already.
pub async fn mark_window_alerted<'e>(
    db: impl Executor<'e, Database = Any>,
    w: WindowKey<'_>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE spend_windows SET alerted_at = $5 \
         WHERE scope = $1 AND owner_id = $2 AND period = $3 AND starts_at = $4 \
         AND alerted_at IS NULL",
    )
    .bind(w.scope)
    .bind(w.owner_id)
    .bind(w.period)
    .bind(w.starts_at)
    .bind(now)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Counts one more job of the key in flight, unless that would pass its limit.
pub async fn take_job_slot<'e>(
    db: impl Executor<'e, Database = Any>,
    key_id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE api_keys SET jobs_in_flight = jobs_in_flight + 1 \
         WHERE id = $1 AND (max_concurrent_jobs IS NULL OR jobs_in_flight < max_concurrent_jobs)",
    )
    .bind(key_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn free_job_slot<'e>(
    db: impl Executor<'e, Database = Any>,
    key_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_keys SET jobs_in_flight = jobs_in_flight - 1 WHERE id = $1 AND jobs_in_flight > 0")
        .bind(key_id)
        .execute(db)
        .await?;
    Ok(())
}

/// An account's money after a change, with what its low-balance alert needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BalanceRow {
    #[sqlx(try_from = "String")]
    pub mode: AccountMode,
    pub balance_micros: i64,
    pub reserved_micros: i64,
    pub low_balance_micros: Option<i64>,
    pub low_balance_alerted: i64,
}

/// Changes an account's balance and held money by the given amounts.
pub async fn adjust_account<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    balance_delta: i64,
    reserved_delta: i64,
) -> Result<Option<BalanceRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE accounts SET balance_micros = balance_micros + $2, \
         reserved_micros = reserved_micros + $3 WHERE id = $1 \
         RETURNING mode, balance_micros, reserved_micros, low_balance_micros, low_balance_alerted",
    )
    .bind(account_id)
    .bind(balance_delta)
    .bind(reserved_delta)
    .fetch_optional(db)
    .await
}

/// Sets whether the account's low-balance alert has been sent; true if that changed it.
pub async fn set_low_balance_alerted<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    alerted: bool,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE accounts SET low_balance_alerted = $2 WHERE id = $1 AND low_balance_alerted <> $2",
    )
    .bind(account_id)
    .bind(i64::from(alerted))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A hold as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reservation {
    pub id: String,
    pub account_id: String,
    pub key_id: String,
    pub kind: String,
    pub model: String,
    pub amount_micros: i64,
    pub markup_bp: i64,
    pub day_starts_at: i64,
    pub month_starts_at: i64,
    pub state: String,
    pub settled_micros: Option<i64>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// The counters it took from (see the migration; `billing::held`).
    pub held_mask: i64,
    /// The lease a job's hold was drawn from: the lease, not this hold, took the money
    /// from the counters (see `billing::lease`).
    pub lease_id: Option<String>,
}

macro_rules! reservation_columns {
    () => {
        "id, account_id, key_id, kind, model, amount_micros, markup_bp, day_starts_at, \
         month_starts_at, state, settled_micros, created_at, expires_at, ended_at, held_mask, \
         lease_id"
    };
}

pub async fn insert_reservation<'e>(
    db: impl Executor<'e, Database = Any>,
    r: &Reservation,
) -> Result<(), sqlx::Error> {
    sqlx::query(concat!(
        "INSERT INTO reservations (",
        reservation_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
    ))
    .bind(&r.id)
    .bind(&r.account_id)
    .bind(&r.key_id)
    .bind(&r.kind)
    .bind(&r.model)
    .bind(r.amount_micros)
    .bind(r.markup_bp)
    .bind(r.day_starts_at)
    .bind(r.month_starts_at)
    .bind(&r.state)
    .bind(r.settled_micros)
    .bind(r.created_at)
    .bind(r.expires_at)
    .bind(r.ended_at)
    .bind(r.held_mask)
    .bind(&r.lease_id)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn find_reservation<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Reservation>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        reservation_columns!(),
        " FROM reservations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Moves a hold from `from` (`held`, or for a late settlement `expired`) to `to`, once:
/// the guard makes a second settlement of the same hold a no-op. Returns the hold as it
/// is now (ended).
pub async fn end_reservation<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    from: &str,
    to: &str,
    settled_micros: Option<i64>,
    now: i64,
) -> Result<Option<Reservation>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE reservations SET state = $3, settled_micros = $4, ended_at = $5 \
         WHERE id = $1 AND state = $2 RETURNING ",
        reservation_columns!()
    ))
    .bind(id)
    .bind(from)
    .bind(to)
    .bind(settled_micros)
    .bind(now)
    .fetch_optional(db)
    .await
}

/// Turns `given_back` of a held lease's money into the request's charge of `charged`
/// (which may be more, when an answer ran past what was held for it): the lease holds
/// that much less and has settled that much more. `None` if the lease is no longer held
/// (the reaper let go of it), or holds less than `given_back`.
pub async fn draw_from_lease<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    given_back: i64,
    charged: i64,
) -> Result<Option<Reservation>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE reservations SET amount_micros = amount_micros - $2, \
         settled_micros = COALESCE(settled_micros, 0) + $3 \
         WHERE id = $1 AND state = 'held' AND amount_micros >= $2 RETURNING ",
        reservation_columns!()
    ))
    .bind(id)
    .bind(given_back)
    .bind(charged)
    .fetch_optional(db)
    .await
}

/// Marks a held lease as taking no more jobs (it no longer expires: what its jobs hold
/// comes back as they end), locking its row so that no job of it ends meanwhile.
pub async fn stop_lease<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Reservation>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE reservations SET expires_at = NULL WHERE id = $1 AND state = 'held' RETURNING ",
        reservation_columns!()
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// What the jobs drawn from a lease still hold.
pub async fn held_by_lease_jobs<'e>(
    db: impl Executor<'e, Database = Any>,
    lease_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) FROM reservations \
         WHERE lease_id = $1 AND state = 'held'",
    )
    .bind(lease_id)
    .fetch_one(db)
    .await
}

/// Holds whose time ran out (a chat request whose process died), oldest first.
pub async fn expired_holds<'e>(
    db: impl Executor<'e, Database = Any>,
    now: i64,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM reservations WHERE state = 'held' AND expires_at < $1 \
         ORDER BY expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// One change to an account's money.
#[derive(Debug, Clone, Default)]
pub struct LedgerEntry<'a> {
    pub id: String,
    pub account_id: &'a str,
    pub key_id: Option<&'a str>,
    /// `topup`, `correction`, `reservation`, `settlement`, `release` or `expiry`.
    pub kind: &'a str,
    pub balance_delta: i64,
    pub reserved_delta: i64,
    pub reservation_id: Option<&'a str>,
    pub model: Option<&'a str>,
    pub units: Option<i64>,
    /// Who made the change: `admin`, `cli` or `system`.
    pub actor: &'a str,
    pub note: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: Option<&'a str>,
    pub created_at: i64,
}

pub async fn insert_ledger<'e>(
    db: impl Executor<'e, Database = Any>,
    e: &LedgerEntry<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger (id, account_id, key_id, kind, balance_delta_micros, \
         reserved_delta_micros, reservation_id, model, units, actor, note, idempotency_key, \
         request_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&e.id)
    .bind(e.account_id)
    .bind(e.key_id)
    .bind(e.kind)
    .bind(e.balance_delta)
    .bind(e.reserved_delta)
    .bind(e.reservation_id)
    .bind(e.model)
    .bind(e.units)
    .bind(e.actor)
    .bind(e.note)
    .bind(e.idempotency_key)
    .bind(e.request_hash)
    .bind(e.created_at)
    .execute(db)
    .await?;
    Ok(())
}

/// The request hash a top-up's idempotency key was first used with.
pub async fn ledger_hash_for_key<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    idempotency_key: &str,
) -> Result<Option<Option<String>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT request_hash FROM ledger WHERE account_id = $1 AND idempotency_key = $2",
    )
    .bind(account_id)
    .bind(idempotency_key)
    .fetch_optional(db)
    .await
}

/// What the ledger says an account's balance and held money are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct LedgerSums {
    pub balance_micros: i64,
    pub reserved_micros: i64,
}

pub async fn ledger_sums<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
) -> Result<LedgerSums, sqlx::Error> {
    sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(balance_delta_micros), 0) AS BIGINT) AS balance_micros, \
         CAST(COALESCE(SUM(reserved_delta_micros), 0) AS BIGINT) AS reserved_micros \
         FROM ledger WHERE account_id = $1",
    )
    .bind(account_id)
    .fetch_one(db)
    .await
}

/// Recomputes the spend since `since` (from their settlements) of every account last
/// recomputed before `due_before`, or never.
pub async fn recompute_rolling_spend<'e>(
    db: impl Executor<'e, Database = Any>,
    since: i64,
    now: i64,
    due_before: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE accounts SET rolling_30d_micros = COALESCE((SELECT -SUM(l.balance_delta_micros) \
         FROM ledger l WHERE l.account_id = accounts.id AND l.kind = 'settlement' \
         AND l.created_at >= $1), 0), tier_recomputed_at = $2 \
         WHERE tier_recomputed_at IS NULL OR tier_recomputed_at < $3",
    )
    .bind(since)
    .bind(now)
    .bind(due_before)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// One line of a usage report: a group (a model, a key, or a day as `YYYY-MM-DD`'s Unix
/// ms start) and what its settlements add up to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsageRow {
    pub group_key: String,
    pub requests: i64,
    pub units: i64,
    pub cost_micros: i64,
}

macro_rules! usage_sums {
    () => {
        "COUNT(*) AS requests, CAST(COALESCE(SUM(units), 0) AS BIGINT) AS units, \
         CAST(COALESCE(-SUM(balance_delta_micros), 0) AS BIGINT) AS cost_micros \
         FROM ledger WHERE kind = 'settlement' AND created_at >= $2 AND created_at < $3 \
         AND ($1 = '' OR account_id = $1) "
    };
}

/// Settlements of `account_id` (empty: every account) in [from, to), grouped.
pub async fn usage<'e>(
    db: impl Executor<'e, Database = Any>,
    account_id: &str,
    group_by: UsageGroup,
    from: i64,
    to: i64,
) -> Result<Vec<UsageRow>, sqlx::Error> {
    let query = match group_by {
        UsageGroup::Model => sqlx::query_as(concat!(
            "SELECT COALESCE(model, '') AS group_key, ",
            usage_sums!(),
            "GROUP BY model ORDER BY group_key"
        )),
        UsageGroup::Key => sqlx::query_as(concat!(
            "SELECT COALESCE(key_id, '') AS group_key, ",
            usage_sums!(),
            "GROUP BY key_id ORDER BY group_key"
        )),
        UsageGroup::Account => sqlx::query_as(concat!(
            "SELECT account_id AS group_key, ",
            usage_sums!(),
            "GROUP BY account_id ORDER BY group_key"
        )),
        UsageGroup::Day => sqlx::query_as(concat!(
            "SELECT CAST((created_at / 86400000) * 86400000 AS TEXT) AS group_key, ",
            usage_sums!(),
            "GROUP BY (created_at / 86400000) ORDER BY MIN(created_at)"
        )),
    };
    query
        .bind(account_id)
        .bind(from)
        .bind(to)
        .fetch_all(db)
        .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Model,
    Key,
    Account,
    Day,
}
