//! Accounts: their settings (name, mode, caps, low-balance threshold), their money, and
//! the one way money is added or taken back by hand — a credit, written to the balance
//! and the ledger in one transaction.

use sqlx::{Any, Executor};

use super::Db;
use super::money::{self as rows, LedgerEntry};
use crate::billing::money::MAX_MICROS;
use crate::ids::{IdKind, new_id};

/// How an account pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountMode {
    /// Every request must be covered by balance − reserved.
    Prepaid,
    /// No balance check; caps and usage still apply.
    Unlimited,
}

impl AccountMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountMode::Prepaid => "prepaid",
            AccountMode::Unlimited => "unlimited",
        }
    }

    pub fn parse(text: &str) -> Option<AccountMode> {
        match text {
            "prepaid" => Some(AccountMode::Prepaid),
            "unlimited" => Some(AccountMode::Unlimited),
            _ => None,
        }
    }
}

/// A stored mode that is neither `prepaid` nor `unlimited`.
#[derive(Debug, thiserror::Error)]
#[error("bad account mode in row: {0:?}")]
pub struct BadMode(String);

impl TryFrom<String> for AccountMode {
    type Error = BadMode;

    fn try_from(text: String) -> Result<Self, BadMode> {
        AccountMode::parse(&text).ok_or(BadMode(text))
    }
}

/// An account as stored. Amounts are micros; times Unix ms.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    pub id: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub mode: AccountMode,
    pub balance_micros: i64,
    pub reserved_micros: i64,
    pub daily_limit_micros: Option<i64>,
    pub monthly_limit_micros: Option<i64>,
    pub low_balance_micros: Option<i64>,
    pub low_balance_alerted: i64,
    pub rolling_30d_micros: i64,
    pub tier_recomputed_at: Option<i64>,
    pub created_at: i64,
}

impl Account {
    /// Money a new request may still hold: balance − reserved.
    pub fn available_micros(&self) -> i64 {
        self.balance_micros - self.reserved_micros
    }
}

macro_rules! account_columns {
    () => {
        "id, name, mode, balance_micros, reserved_micros, daily_limit_micros, \
         monthly_limit_micros, low_balance_micros, low_balance_alerted, rolling_30d_micros, \
         tier_recomputed_at, created_at"
    };
}

/// What an account starts with (its money starts at zero).
#[derive(Debug, Clone)]
pub struct NewAccount<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub mode: AccountMode,
    pub daily_limit_micros: Option<i64>,
    pub monthly_limit_micros: Option<i64>,
    pub low_balance_micros: Option<i64>,
    pub created_at: i64,
}

/// Makes an account; false if one with that id exists already (nothing changed).
pub async fn create<'e>(
    db: impl Executor<'e, Database = Any>,
    a: &NewAccount<'_>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO accounts (id, name, created_at, mode, daily_limit_micros, \
         monthly_limit_micros, low_balance_micros) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(a.id)
    .bind(a.name)
    .bind(a.created_at)
    .bind(a.mode.as_str())
    .bind(a.daily_limit_micros)
    .bind(a.monthly_limit_micros)
    .bind(a.low_balance_micros)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn find<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Account>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        account_columns!(),
        " FROM accounts WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// A change to a value that may be cleared: `None` leaves it, `Some(None)` clears it.
pub type Change<T> = Option<Option<T>>;

/// What a `PATCH` of an account changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AccountChanges {
    pub name: Option<String>,
    pub mode: Option<AccountMode>,
    pub daily_limit_micros: Change<i64>,
    pub monthly_limit_micros: Change<i64>,
    pub low_balance_micros: Change<i64>,
}

/// Bound for a clearable column: whether it changes (1/0) and to what. The flag is an
/// integer, not a NULL test of the value, so Postgres never has to guess a NULL's type.
pub(crate) fn change<T: Copy>(c: Change<T>) -> (i64, Option<T>) {
    match c {
        None => (0, None),
        Some(v) => (1, v),
    }
}

/// Applies `changes` in one statement (a concurrent change to other fields is kept) and
/// returns the account as it is now; `None` if there is no such account. A new
/// low-balance threshold re-arms its alert.
pub async fn update<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    changes: &AccountChanges,
) -> Result<Option<Account>, sqlx::Error> {
    let (daily_set, daily) = change(changes.daily_limit_micros);
    let (monthly_set, monthly) = change(changes.monthly_limit_micros);
    let (low_set, low) = change(changes.low_balance_micros);
    sqlx::query_as(concat!(
        "UPDATE accounts SET name = COALESCE($2, name), mode = COALESCE($3, mode), \
         daily_limit_micros = CASE WHEN $4 = 1 THEN $5 ELSE daily_limit_micros END, \
         monthly_limit_micros = CASE WHEN $6 = 1 THEN $7 ELSE monthly_limit_micros END, \
         low_balance_micros = CASE WHEN $8 = 1 THEN $9 ELSE low_balance_micros END, \
         low_balance_alerted = CASE WHEN $8 = 1 THEN 0 ELSE low_balance_alerted END \
         WHERE id = $1 RETURNING ",
        account_columns!()
    ))
    .bind(id)
    .bind(changes.name.as_deref())
    .bind(changes.mode.map(AccountMode::as_str))
    .bind(daily_set)
    .bind(daily)
    .bind(monthly_set)
    .bind(monthly)
    .bind(low_set)
    .bind(low)
    .fetch_optional(db)
    .await
}

/// Adds `delta` to the balance unless a negative one would take the available money
/// (balance − reserved) below zero, or a positive one the balance past [`MAX_MICROS`].
/// A top-up that lifts the available money to the low-balance threshold or above
/// re-arms the alert. `None`: no such account, or the change was refused.
async fn add_to_balance<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    delta: i64,
) -> Result<Option<Account>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE accounts SET balance_micros = balance_micros + $2, \
         low_balance_alerted = CASE WHEN $2 > 0 AND low_balance_micros IS NOT NULL \
             AND balance_micros + $2 - reserved_micros >= low_balance_micros \
             THEN 0 ELSE low_balance_alerted END \
         WHERE id = $1 \
         AND ($2 >= 0 OR balance_micros - reserved_micros + $2 >= 0) \
         AND ($2 <= 0 OR balance_micros + $2 <= $3) \
         RETURNING ",
        account_columns!()
    ))
    .bind(id)
    .bind(delta)
    .bind(MAX_MICROS)
    .fetch_optional(db)
    .await
}

/// Money added to (or, negative, taken back from) an account by hand.
#[derive(Debug, Clone)]
pub struct Credit<'a> {
    pub account_id: &'a str,
    /// Positive: a `topup`; negative: a `correction`.
    pub amount_micros: i64,
    /// `admin` (the admin API) or `cli`.
    pub actor: &'a str,
    pub note: Option<&'a str>,
    /// An `Idempotency-Key` and the hash of the request it came with.
    pub idempotency: Option<(&'a str, &'a str)>,
    pub now: i64,
}

/// How a credit went.
#[derive(Debug, Clone)]
pub enum Credited {
    /// Written; the account after it.
    Done(Account),
    /// The idempotency key was used before with the same request: nothing written, the
    /// account as it is now.
    Replayed(Account),
    /// The idempotency key was used before with another request: nothing written.
    KeyReused,
    NoAccount,
    /// A correction would take the available money below zero, or a top-up the balance
    /// past the largest one kept: nothing written.
    Refused(Account),
}

impl Db {
    /// Credits an account: the balance and a ledger entry (`topup` or `correction`) in
    /// one transaction, so they never disagree. An idempotency key seen before answers
    /// from the first credit without a second one; two requests racing with one key are
    /// told apart by the ledger's unique index, and the loser answers as a replay.
    pub async fn credit(&self, c: &Credit<'_>) -> Result<Credited, sqlx::Error> {
        let mut raced = false;
        loop {
            let mut tx = self.begin().await?;
            if let Some((key, hash)) = c.idempotency {
                match rows::ledger_hash_for_key(&mut *tx, c.account_id, key).await? {
                    None => {}
                    Some(Some(first)) if first == hash => {
                        return Ok(match find(&mut *tx, c.account_id).await? {
                            Some(account) => Credited::Replayed(account),
                            None => Credited::NoAccount,
                        });
                    }
                    Some(_) => return Ok(Credited::KeyReused),
                }
            }
            // The new ledger row first, the account's shared row last, as holds take them:
            // one lock order, and the account locked only for the end of the transaction.
            let entry = LedgerEntry {
                id: new_id(IdKind::Ledger),
                account_id: c.account_id,
                kind: if c.amount_micros >= 0 {
                    "topup"
                } else {
                    "correction"
                },
                balance_delta: c.amount_micros,
                actor: c.actor,
                note: c.note,
                idempotency_key: c.idempotency.map(|(key, _)| key),
                request_hash: c.idempotency.map(|(_, hash)| hash),
                created_at: c.now,
                ..LedgerEntry::default()
            };
            match rows::insert_ledger(&mut *tx, &entry).await {
                Ok(()) => {}
                // Another request with this key committed first: look again (a replay
                // or a reuse), once.
                Err(e) if !raced && is_unique_violation(&e) => {
                    drop(tx);
                    raced = true;
                    continue;
                }
                Err(e) => return Err(e),
            }
            // Refused or no account: the entry is rolled back with the transaction.
            let Some(account) = add_to_balance(&mut *tx, c.account_id, c.amount_micros).await?
            else {
                return Ok(match find(&mut *tx, c.account_id).await? {
                    Some(account) => Credited::Refused(account),
                    None => Credited::NoAccount,
                });
            };
            tx.commit().await?;
            return Ok(Credited::Done(account));
        }
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}
