//! Money alerts, as webhook events of the account: `account.balance_low` when a charge
//! takes a prepaid account's available money (balance − held) below its threshold, and
//! `key.spend_cap_reached` when a key's request is first refused by one of its caps in a
//! day or month. Each is sent once — the balance alert again only after a top-up lifts
//! the money back over the threshold, the cap alert once per period — to the account's
//! endpoints that subscribed to it, through the same signed, retried pipeline as job
//! events.

use serde_json::{Value, json};
use sqlx::AnyConnection;

use super::money::format_usd;
use super::{LimitHit, Refusal, Scope};
use crate::Engine;
use crate::db::accounts::AccountMode;
use crate::db::events;
use crate::db::money::{self as rows, BalanceRow, WindowKey};
use crate::ids::now_ms;
use crate::tasks::Deliver;
use crate::webhooks::delivery;

/// An alert to write: its event type, the account it is for, its subject (the account
/// or the key), and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub kind: &'static str,
    pub account_id: String,
    pub subject_id: String,
    pub data: Value,
}

/// The balance alert, if this change took the account below its threshold for the first
/// time since it was last above it.
pub(super) async fn balance_low(
    conn: &mut AnyConnection,
    account_id: &str,
    after: &BalanceRow,
) -> Result<Option<Alert>, sqlx::Error> {
    let Some(threshold) = after.low_balance_micros else {
        return Ok(None);
    };
    let available = after.balance_micros - after.reserved_micros;
    if after.mode != AccountMode::Prepaid
        || available >= threshold
        || after.low_balance_alerted != 0
    {
        return Ok(None);
    }
    if !rows::set_low_balance_alerted(&mut *conn, account_id, true).await? {
        return Ok(None);
    }
    Ok(Some(Alert {
        kind: "account.balance_low",
        account_id: account_id.to_owned(),
        subject_id: account_id.to_owned(),
        data: json!({
            "object": "account",
            "id": account_id,
            "balance_usd": format_usd(after.balance_micros),
            "reserved_usd": format_usd(after.reserved_micros),
            "available_usd": format_usd(available),
            "threshold_usd": format_usd(threshold),
        }),
    }))
}

/// After a refused request: the key's cap alert, if a cap of the key refused it. Best
/// effort (a failure is logged): the refusal stands either way.
pub async fn after_refusal(engine: &Engine, account_id: &str, key_id: &str, refusal: &Refusal) {
    let Refusal::Limit(hit) = refusal else {
        return;
    };
    let fast_lane_max = engine.config.delivery.fast_lane_max_fan_out;
    match cap_reached(&engine.db, fast_lane_max, account_id, key_id, hit).await {
        Ok(outbox) => delivery::dispatch(engine, outbox).await,
        Err(e) => tracing::warn!(key_id, error = %e, "spend cap alert not written"),
    }
}

/// The cap alert for a key's refused request, if none was sent for that cap's period
/// yet; writes it in its own transaction (the refused request's was rolled back).
async fn cap_reached(
    db: &crate::db::Db,
    fast_lane_max_fan_out: usize,
    account_id: &str,
    key_id: &str,
    hit: &LimitHit,
) -> Result<Vec<Deliver>, sqlx::Error> {
    let (Scope::Key, Some(period)) = (hit.scope, hit.period) else {
        return Ok(Vec::new());
    };
    let now = now_ms();
    let window = WindowKey {
        scope: "key",
        owner_id: key_id,
        period: period.as_str(),
        starts_at: period.start(now),
    };
    let mut tx = db.begin().await?;
    // The window's row may not exist yet (a request bigger than the cap on its own).
    rows::add_spent(&mut *tx, window, 0).await?;
    if !rows::mark_window_alerted(&mut *tx, window, now).await? {
        return Ok(Vec::new());
    }
    let alert = Alert {
        kind: "key.spend_cap_reached",
        account_id: account_id.to_owned(),
        subject_id: key_id.to_owned(),
        data: json!({
            "object": "key",
            "id": key_id,
            "account": account_id,
            "period": period,
            "limit_usd": format_usd(hit.limit_micros),
            "used_usd": format_usd(hit.used_micros),
            "resets_at": hit.resets_at,
        }),
    };
    let outbox = write(&mut tx, &alert, fast_lane_max_fan_out).await?;
    tx.commit().await?;
    Ok(outbox)
}

/// Writes an alert's event and its deliveries in the caller's transaction; returns the
/// deliveries to dispatch once it commits.
pub async fn write(
    conn: &mut AnyConnection,
    alert: &Alert,
    fast_lane_max_fan_out: usize,
) -> Result<Vec<Deliver>, sqlx::Error> {
    let event = events::insert(
        &mut *conn,
        &alert.subject_id,
        &alert.account_id,
        alert.kind,
        now_ms(),
        &alert.data,
    )
    .await?;
    delivery::fan_out_account(conn, &alert.account_id, &event, fast_lane_max_fan_out).await
}
