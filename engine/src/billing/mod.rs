//! Money: what a request costs, holding that money against the balance and every cap
//! before anything is sent upstream, and settling or releasing the hold when the request
//! ends — each exactly once, in the same transaction as the change that ends it.
//!
//! - `money`: micros and their decimal strings.
//! - here: the `[billing]` settings (volume tiers), UTC spending periods, and the three
//!   moves on a hold: [`reserve`], [`settle`], [`release`].
//!
//! A hold is checked by guarded updates on the locked rows (`balance − reserved ≥
//! amount`, `spent + reserved + amount ≤ cap`), so racing requests across any number of
//! processes can never hold more than there is: the database is the one counter. Locks
//! are always taken in one order — account, its day and month, the key's day and month,
//! the key — so two requests never wait on each other in a circle. Every move writes a
//! ledger entry whose deltas sum to the account's balance and held money.

pub mod alerts;
pub mod lease;
pub mod money;

use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use crate::db::accounts::AccountMode;
use crate::db::money::{self as rows, LedgerEntry, PayerRow, Reservation, WindowKey};
use crate::ids::{IdKind, new_id};
use money::with_markup;

/// `[billing]`: the volume tiers and how chat requests are held.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    /// Off: requests are neither held nor charged (see config.default.toml).
    pub enabled: bool,
    /// Markup on list prices by an account's spend over the last 30 days; the first tier
    /// starts at zero, each next one higher.
    pub tiers: Vec<Tier>,
    /// How often every account's 30-day spend (and so its tier) is recomputed.
    #[serde(rename = "tier_interval_secs", with = "crate::config::secs")]
    pub tier_interval: Duration,
    /// How long a chat request's hold lives; one whose process died is released after it.
    #[serde(rename = "chat_hold_secs", with = "crate::config::secs")]
    pub chat_hold: Duration,
    /// Answer tokens a chat hold covers when the request sets no `max_tokens`.
    pub chat_default_max_tokens: u64,
    /// How long a process takes a key's chat requests from one lease of money before it
    /// asks the database for a new one (see `lease`).
    #[serde(rename = "chat_lease_secs", with = "crate::config::secs")]
    pub chat_lease: Duration,
    /// How many chat requests' ceilings one lease holds at most (never more than a
    /// quarter of what the account or key has left).
    pub chat_lease_requests: u32,
    /// How long a process draws a key's jobs' holds from one lease of money (see
    /// `lease`).
    #[serde(rename = "job_lease_secs", with = "crate::config::secs")]
    pub job_lease: Duration,
    /// How many jobs' ceilings one lease holds at most (never more than a quarter of what
    /// the account or key has left; where that is under four, each job is held by itself).
    pub job_lease_requests: u32,
}

impl Default for BillingConfig {
    fn default() -> Self {
        crate::config::default_section("billing")
    }
}

/// One volume tier: from this 30-day spend on, this markup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub from_usd: String,
    pub markup_percent: u32,
}

/// A `[billing] tiers` list that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("[billing] tiers: {0}")]
pub struct BadTiers(String);

impl BillingConfig {
    /// Checks the tiers: amounts that read, starting at zero, rising.
    pub fn check(&self) -> Result<(), BadTiers> {
        let mut last = None;
        for t in &self.tiers {
            let from = money::parse_usd(&t.from_usd, false)
                .map_err(|e| BadTiers(format!("from_usd {:?} {e}", t.from_usd)))?;
            match last {
                None if from != 0 => {
                    return Err(BadTiers("the first tier must start at \"0\"".into()));
                }
                Some(prev) if from <= prev => {
                    return Err(BadTiers("tiers must be listed by rising from_usd".into()));
                }
                _ => {}
            }
            if t.markup_percent > 1000 {
                return Err(BadTiers(format!(
                    "markup_percent {} is over 1000",
                    t.markup_percent
                )));
            }
            last = Some(from);
        }
        if last.is_none() {
            return Err(BadTiers("at least one tier is needed".into()));
        }
        Ok(())
    }

    /// The tier of an account that spent `rolling_30d` micros: its markup in basis
    /// points, and the spend at which the next tier begins.
    pub fn tier_for(&self, rolling_30d: i64) -> (i64, Option<i64>) {
        let mut markup = 0;
        let mut next = None;
        for t in &self.tiers {
            let from = money::parse_usd(&t.from_usd, false).unwrap_or(0);
            if rolling_30d >= from {
                markup = i64::from(t.markup_percent) * 100;
            } else {
                next = Some(from);
                break;
            }
        }
        (markup, next)
    }
}

/// UTC days and months in Unix milliseconds.
pub mod periods {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    pub fn day_start(ms: i64) -> i64 {
        ms.div_euclid(DAY_MS) * DAY_MS
    }

    pub fn day_end(start: i64) -> i64 {
        start + DAY_MS
    }

    pub fn month_start(ms: i64) -> i64 {
        let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
        Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
            .single()
            .map_or(0, |m| m.timestamp_millis())
    }

    pub fn month_end(start: i64) -> i64 {
        let t = Utc.timestamp_millis_opt(start).single().unwrap_or_default();
        let (y, m) = if t.month() == 12 {
            (t.year() + 1, 1)
        } else {
            (t.year(), t.month() + 1)
        };
        Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
            .single()
            .map_or(i64::MAX, |m| m.timestamp_millis())
    }
}

/// Who a limit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Account,
    Key,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::Key => "key",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    pub fn start(self, now: i64) -> i64 {
        match self {
            Period::Day => periods::day_start(now),
            Period::Month => periods::month_start(now),
        }
    }

    pub fn end(self, start: i64) -> i64 {
        match self {
            Period::Day => periods::day_end(start),
            Period::Month => periods::month_end(start),
        }
    }
}

/// The shared counters a hold may take from, as bits of `reservations.held_mask`. A hold
/// takes only from those that guard something — the balance of a prepaid account, a
/// window with a cap, the jobs in flight of a key with a limit — since each is a row every
/// request of the account (or key) must lock in turn: an unlimited account without caps
/// holds without locking any row another request needs.
pub mod held {
    pub const BALANCE: i64 = 1;
    /// The windows, in lock order: account day, account month, key day, key month.
    pub const WINDOWS: [i64; 4] = [2, 4, 8, 16];
    pub const JOB_SLOT: i64 = 32;
}

/// What a request's money is asked of.
#[derive(Debug, Clone, Copy)]
pub struct HoldRequest<'a> {
    /// The job's id, or the chat completion's.
    pub id: &'a str,
    pub account_id: &'a str,
    pub key_id: &'a str,
    /// `job` (which also counts against the key's jobs in flight) or `chat`.
    pub kind: HoldKind,
    pub model: &'a str,
    /// The most the request can cost at list price; the markup is added here.
    pub list_micros: i64,
    /// When the reaper may release the hold (chat: its process may die mid-stream).
    pub expires_at: Option<i64>,
    pub now: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldKind {
    Job,
    Chat,
}

impl HoldKind {
    fn as_str(self) -> &'static str {
        match self {
            HoldKind::Job => "job",
            HoldKind::Chat => "chat",
        }
    }
}

/// Money held for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub amount_micros: i64,
    pub markup_bp: i64,
}

/// Why a request may not go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A balance or cap would be crossed (`402`).
    Limit(LimitHit),
    /// The key has as many jobs in flight as it may (`429`).
    TooManyJobs { limit: i64 },
    /// The key or its account is gone (revoked meanwhile).
    NoPayer,
}

/// The limit a request would cross, as the `402` body tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitHit {
    /// `None`: the balance (code `insufficient_credits`); else a cap
    /// (`spend_cap_reached`).
    pub period: Option<Period>,
    pub scope: Scope,
    pub limit_micros: i64,
    pub used_micros: i64,
    pub requested_micros: i64,
    /// Unix seconds when the cap's period ends.
    pub resets_at: Option<i64>,
}

/// Holds a request's money against the balance and every cap, and (for a job) a slot of
/// the key's jobs in flight (with billing off: nothing, and nothing is refused). On
/// `Ok(Err(_))` the transaction has partly written and must be dropped (rolled back),
/// never committed.
pub async fn reserve(
    conn: &mut AnyConnection,
    config: &BillingConfig,
    req: &HoldRequest<'_>,
) -> Result<Result<Held, Refusal>, sqlx::Error> {
    if !config.enabled {
        // Nothing held, so nothing to settle: the request's end finds no hold.
        return Ok(Ok(Held {
            amount_micros: 0,
            markup_bp: 0,
        }));
    }
    let Some(payer) = rows::payer(&mut *conn, req.account_id, req.key_id).await? else {
        return Ok(Err(Refusal::NoPayer));
    };
    let (markup_bp, _) = config.tier_for(payer.rolling_30d_micros);
    let amount = with_markup(req.list_micros.max(0), markup_bp);
    hold(conn, &payer, req, held_mask(&payer, req), amount, markup_bp).await
}

/// The four spend windows a request of this key falls in, in lock order (account day,
/// account month, key day, key month), each with its cap if it has one.
fn windows<'a>(
    payer: &PayerRow,
    req: &HoldRequest<'a>,
) -> [(Scope, Period, Option<i64>, WindowKey<'a>); 4] {
    caps(payer).map(|(scope, period, cap)| {
        let owner = match scope {
            Scope::Account => req.account_id,
            Scope::Key => req.key_id,
        };
        let key = WindowKey {
            scope: scope.as_str(),
            owner_id: owner,
            period: period.as_str(),
            starts_at: period.start(req.now),
        };
        (scope, period, cap, key)
    })
}

/// The payer's caps, in the windows' lock order (see [`held::WINDOWS`]).
fn caps(payer: &PayerRow) -> [(Scope, Period, Option<i64>); 4] {
    [
        (Scope::Account, Period::Day, payer.account_daily_micros),
        (Scope::Account, Period::Month, payer.account_monthly_micros),
        (Scope::Key, Period::Day, payer.key_daily_micros),
        (Scope::Key, Period::Month, payer.key_monthly_micros),
    ]
}

/// The counters a hold of this request takes from (see [`held`]).
fn held_mask(payer: &PayerRow, req: &HoldRequest<'_>) -> i64 {
    let mut mask = 0;
    if payer.mode == AccountMode::Prepaid {
        mask |= held::BALANCE;
    }
    for (bit, (_, _, cap)) in held::WINDOWS.iter().zip(caps(payer)) {
        if cap.is_some() {
            mask |= bit;
        }
    }
    if req.kind == HoldKind::Job && payer.max_concurrent_jobs.is_some() {
        mask |= held::JOB_SLOT;
    }
    mask
}

/// What the request could still hold before a guarded counter refuses it: the least of
/// a prepaid balance's money not held and each capped window's room; `None` when nothing
/// guards it (an unlimited account without caps). Read without locks, so only a guide
/// for how much to ask for; the guarded updates of [`hold`] decide.
pub(crate) async fn headroom(
    conn: &mut AnyConnection,
    payer: &PayerRow,
    req: &HoldRequest<'_>,
) -> Result<Option<i64>, sqlx::Error> {
    let mut room =
        (payer.mode == AccountMode::Prepaid).then(|| payer.balance_micros - payer.reserved_micros);
    for (_, _, cap, key) in windows(payer, req) {
        let Some(cap) = cap else { continue };
        let used = rows::window(&mut *conn, key)
            .await?
            .map_or(0, |w| w.spent_micros + w.reserved_micros);
        room = Some(room.map_or(cap - used, |r| r.min(cap - used)));
    }
    Ok(room.map(|r| r.max(0)))
}

/// Holds `amount` (markup included) for the request against the counters of `mask`
/// (see [`held_mask`]), in the one lock order; see [`reserve`].
pub(crate) async fn hold(
    conn: &mut AnyConnection,
    payer: &PayerRow,
    req: &HoldRequest<'_>,
    mask: i64,
    amount: i64,
    markup_bp: i64,
) -> Result<Result<Held, Refusal>, sqlx::Error> {
    let windows = windows(payer, req);
    // The new rows first: nobody else waits on them. Then the guarded updates of the
    // rows every request of the account shares, in the one lock order.
    let hold = Reservation {
        id: req.id.to_owned(),
        account_id: req.account_id.to_owned(),
        key_id: req.key_id.to_owned(),
        kind: req.kind.as_str().to_owned(),
        model: req.model.to_owned(),
        amount_micros: amount,
        markup_bp,
        day_starts_at: windows[0].3.starts_at,
        month_starts_at: windows[1].3.starts_at,
        state: "held".to_owned(),
        settled_micros: None,
        created_at: req.now,
        expires_at: req.expires_at,
        ended_at: None,
        held_mask: mask,
        lease_id: None,
    };
    rows::insert_reservation(&mut *conn, &hold).await?;
    let entry = LedgerEntry {
        id: new_id(IdKind::Ledger),
        account_id: req.account_id,
        key_id: Some(req.key_id),
        kind: "reservation",
        reserved_delta: if mask & held::BALANCE != 0 { amount } else { 0 },
        reservation_id: Some(req.id),
        model: Some(req.model),
        actor: "system",
        created_at: req.now,
        ..LedgerEntry::default()
    };
    rows::insert_ledger(&mut *conn, &entry).await?;
    if mask & held::BALANCE != 0 && !rows::hold_balance(&mut *conn, req.account_id, amount).await? {
        return Ok(Err(Refusal::Limit(LimitHit {
            period: None,
            scope: Scope::Account,
            limit_micros: payer.balance_micros,
            used_micros: payer.reserved_micros,
            requested_micros: amount,
            resets_at: None,
        })));
    }
    for (scope, period, cap, key) in windows {
        let Some(cap) = cap else { continue };
        if amount > cap || !rows::hold_window(&mut *conn, key, amount, cap).await? {
            let used = rows::window(&mut *conn, key)
                .await?
                .map_or(0, |w| w.spent_micros + w.reserved_micros);
            return Ok(Err(Refusal::Limit(LimitHit {
                period: Some(period),
                scope,
                limit_micros: cap,
                used_micros: used,
                requested_micros: amount,
                resets_at: Some(period.end(key.starts_at) / 1000),
            })));
        }
    }
    if mask & held::JOB_SLOT != 0 && !rows::take_job_slot(&mut *conn, req.key_id).await? {
        return Ok(Err(Refusal::TooManyJobs {
            limit: payer.max_concurrent_jobs.unwrap_or(0),
        }));
    }
    Ok(Ok(Held {
        amount_micros: amount,
        markup_bp,
    }))
}

/// What a settlement charged, and the alert it raised, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub charged_micros: i64,
    /// The charge took a prepaid account's available money below its threshold (for
    /// [`alerts::write`]).
    pub alert: Option<alerts::Alert>,
}

/// What [`settle`] will charge for `list_micros` under hold `id` (its markup), without
/// locking anything; a request with no hold (from before money was kept, or with billing
/// off) is shown at list price.
pub async fn charge_for(
    conn: &mut AnyConnection,
    id: &str,
    list_micros: i64,
) -> Result<i64, sqlx::Error> {
    Ok(match rows::find_reservation(&mut *conn, id).await? {
        Some(hold) => with_markup(list_micros.max(0), hold.markup_bp),
        None => list_micros,
    })
}

/// Charges the actual price of a request that ended well — `list_micros` at the hold's
/// markup — and frees the rest of its hold. A hold the reaper already let go of (its
/// process was presumed dead) is still charged, late. `None` if there is no hold to
/// settle: no such request, or settled or released already (a duplicate task, a
/// redelivery), so nothing is ever charged twice.
pub async fn settle(
    conn: &mut AnyConnection,
    id: &str,
    list_micros: i64,
    units: i64,
    now: i64,
) -> Result<Option<Settled>, sqlx::Error> {
    let Some(found) = rows::find_reservation(&mut *conn, id).await? else {
        return Ok(None);
    };
    let charged = with_markup(list_micros.max(0), found.markup_bp);
    let from = match found.state.as_str() {
        "held" | "expired" => found.state.as_str(),
        _ => return Ok(None),
    };
    let Some(hold) =
        rows::end_reservation(&mut *conn, id, from, "settled", Some(charged), now).await?
    else {
        return Ok(None);
    };
    // Money still held only if the reaper has not let go of it already.
    let was_held = from == "held";
    let given_back = if was_held {
        give_back(conn, &hold, now).await?
    } else {
        0
    };
    let after = apply(conn, &hold, given_back, -charged, was_held).await?;
    let unheld = balance_held(&hold, given_back);
    let alert = match after {
        Some(after) => alerts::balance_low(conn, &hold.account_id, &after).await?,
        None => None,
    };
    let entry = LedgerEntry {
        id: new_id(IdKind::Ledger),
        account_id: &hold.account_id,
        key_id: Some(&hold.key_id),
        kind: "settlement",
        balance_delta: -charged,
        reserved_delta: -unheld,
        reservation_id: Some(id),
        model: Some(&hold.model),
        units: Some(units),
        actor: "system",
        created_at: now,
        ..LedgerEntry::default()
    };
    rows::insert_ledger(&mut *conn, &entry).await?;
    Ok(Some(Settled {
        charged_micros: charged,
        alert,
    }))
}

/// How a hold ends without a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The request failed, was cancelled or expired: it costs nothing.
    Released,
    /// The hold outlived its time (its process is presumed dead); a late settlement may
    /// still charge it.
    Expired,
}

impl Release {
    /// The hold's state after.
    fn state(self) -> &'static str {
        match self {
            Release::Released => "released",
            Release::Expired => "expired",
        }
    }

    /// The kind of its ledger entry.
    fn entry_kind(self) -> &'static str {
        match self {
            Release::Released => "release",
            Release::Expired => "expiry",
        }
    }
}

/// Frees a hold without charging; false if it was not held (ended already).
pub async fn release(
    conn: &mut AnyConnection,
    id: &str,
    how: Release,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let Some(hold) = rows::end_reservation(&mut *conn, id, "held", how.state(), None, now).await?
    else {
        return Ok(false);
    };
    let given_back = give_back(conn, &hold, now).await?;
    unhold(conn, &hold, how, given_back, now).await?;
    Ok(true)
}

/// Gives `given_back` of what `hold` holds back to the counters it took from (and its
/// job slot), uncharged, with the ledger entry that says so.
async fn unhold(
    conn: &mut AnyConnection,
    hold: &Reservation,
    how: Release,
    given_back: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    apply(conn, hold, given_back, 0, true).await?;
    let entry = LedgerEntry {
        id: new_id(IdKind::Ledger),
        account_id: &hold.account_id,
        key_id: Some(&hold.key_id),
        kind: how.entry_kind(),
        reserved_delta: -balance_held(hold, given_back),
        reservation_id: Some(&hold.id),
        model: Some(&hold.model),
        actor: "system",
        created_at: now,
        ..LedgerEntry::default()
    };
    rows::insert_ledger(&mut *conn, &entry).await
}

/// What ending `hold` gives back to the counters it took from: all it holds, or, for a
/// job drawn from a lease, its share out of the lease.
async fn give_back(
    conn: &mut AnyConnection,
    hold: &Reservation,
    now: i64,
) -> Result<i64, sqlx::Error> {
    match &hold.lease_id {
        None => Ok(hold.amount_micros),
        Some(lease_id) => lease::give_back_for(conn, lease_id, hold.amount_micros, now).await,
    }
}

/// Lets go of holds whose time ran out (leases of a process presumed dead; a late chat
/// charge still finds them, and their jobs' holds still end with their jobs); the reaper
/// calls it every sweep.
pub async fn expire_holds(db: &crate::db::Db) -> Result<usize, sqlx::Error> {
    let now = crate::ids::now_ms();
    let expired = rows::expired_holds(db.pool(), now, 500).await?;
    let mut released = 0;
    for id in &expired {
        if lease::close(db, id, Release::Expired).await? {
            released += 1;
        }
    }
    if released > 0 {
        tracing::warn!(
            count = released,
            "holds of requests that never ended were released"
        );
    }
    Ok(released)
}

/// Recomputes the 30-day spend, and so the tier, of accounts last recomputed
/// `tier_interval` ago; the reaper calls it four times a `tier_interval`, so no account
/// waits much past its due time.
pub async fn recompute_tiers(
    db: &crate::db::Db,
    config: &BillingConfig,
) -> Result<(), sqlx::Error> {
    const THIRTY_DAYS_MS: i64 = 30 * 86_400_000;
    let now = crate::ids::now_ms();
    let interval = config.tier_interval.as_millis() as i64;
    rows::recompute_rolling_spend(db.pool(), now - THIRTY_DAYS_MS, now, now - interval).await?;
    Ok(())
}

/// What of `given_back` returns to its account's balance (nothing for an unlimited
/// account's hold).
fn balance_held(hold: &Reservation, given_back: i64) -> i64 {
    if hold.held_mask & held::BALANCE != 0 {
        given_back
    } else {
        0
    }
}

/// Applies a charge or a hold's end to the counters the hold took from, in the lock
/// order of [`reserve`]: `balance_delta` (minus what was charged) to the account and as
/// spending to every window, capped or not (usage counts them all); `given_back` of what
/// the hold still held returned to each counter it held from; and, if `free_slot`, the
/// key's job slot. Returns the account's money after, when the account changed.
async fn apply(
    conn: &mut AnyConnection,
    hold: &Reservation,
    given_back: i64,
    balance_delta: i64,
    free_slot: bool,
) -> Result<Option<rows::BalanceRow>, sqlx::Error> {
    let returned = |bit: i64| {
        if hold.held_mask & bit != 0 {
            -given_back
        } else {
            0
        }
    };
    let reserved_delta = returned(held::BALANCE);
    let after = if balance_delta != 0 || reserved_delta != 0 {
        rows::adjust_account(&mut *conn, &hold.account_id, balance_delta, reserved_delta).await?
    } else {
        None
    };
    let windows = [
        (
            "account",
            hold.account_id.as_str(),
            "day",
            hold.day_starts_at,
        ),
        (
            "account",
            hold.account_id.as_str(),
            "month",
            hold.month_starts_at,
        ),
        ("key", hold.key_id.as_str(), "day", hold.day_starts_at),
        ("key", hold.key_id.as_str(), "month", hold.month_starts_at),
    ];
    for (bit, (scope, owner_id, period, starts_at)) in held::WINDOWS.into_iter().zip(windows) {
        let key = WindowKey {
            scope,
            owner_id,
            period,
            starts_at,
        };
        let reserved = returned(bit);
        if reserved != 0 {
            rows::adjust_window(&mut *conn, key, -balance_delta, reserved).await?;
        } else if balance_delta != 0 {
            rows::add_spent(&mut *conn, key, -balance_delta).await?;
        }
    }
    if free_slot && hold.held_mask & held::JOB_SLOT != 0 {
        rows::free_job_slot(&mut *conn, &hold.key_id).await?;
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_tiers_are_the_documented_ones() {
        let config = BillingConfig::default();
        config.check().unwrap();
        let usd = |d: i64| d * money::MICROS_PER_USD;
        assert_eq!(config.tier_for(0), (4000, Some(usd(50))));
        assert_eq!(config.tier_for(usd(50) - 1), (4000, Some(usd(50))));
        assert_eq!(config.tier_for(usd(50)), (3000, Some(usd(200))));
        assert_eq!(config.tier_for(usd(200)), (2200, Some(usd(1000))));
        assert_eq!(config.tier_for(usd(1000)), (1500, Some(usd(5000))));
        assert_eq!(config.tier_for(usd(5000)), (1000, None));
        assert_eq!(config.tier_for(usd(1_000_000)), (1000, None));
    }

    #[test]
    fn bad_tiers_are_refused() {
        let tiers = |list: &[(&str, u32)]| BillingConfig {
            tiers: list
                .iter()
                .map(|(f, m)| Tier {
                    from_usd: (*f).to_owned(),
                    markup_percent: *m,
                })
                .collect(),
            ..BillingConfig::default()
        };
        assert!(tiers(&[("0", 10), ("5", 5)]).check().is_ok());
        for bad in [
            tiers(&[]),
            tiers(&[("1", 10)]),
            tiers(&[("0", 10), ("0", 5)]),
            tiers(&[("0", 10), ("x", 5)]),
            tiers(&[("0", 5000)]),
        ] {
            assert!(bad.check().is_err(), "{:?}", bad.tiers);
        }
    }

    #[test]
    fn periods_are_utc_days_and_calendar_months() {
        // 2026-12-01T15:30:00Z
        let t = 1_796_139_000_000;
        assert_eq!(periods::day_start(t), 1_796_083_200_000);
        assert_eq!(periods::day_end(periods::day_start(t)), 1_796_169_600_000);
        assert_eq!(periods::month_start(t), 1_796_083_200_000);
        // January 2027 starts 31 days later.
        assert_eq!(
            periods::month_end(periods::month_start(t)),
            1_798_761_600_000
        );
        // February 2028 (a leap year) has 29 days.
        let feb = 1_833_321_600_000; // 2028-02-05
        let start = periods::month_start(feb);
        assert_eq!(periods::month_end(start) - start, 29 * 86_400_000);
    }
}
