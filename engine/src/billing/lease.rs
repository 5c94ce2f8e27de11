//! Leases of money for chat requests, so that a chat's hold costs no database round trip.
//!
//! A process holds a *lease* per key — one reservation row, made by the same guarded
//! [`hold`](super::hold) as any request's, for several requests' ceilings at once — and
//! takes each chat's ceiling from it in memory. The lease's money is held in the database
//! the whole time, so no cap or balance can be passed however many processes lease at
//! once: the database still counts every micro-dollar a process may spend. The usage
//! writer charges each request's cost against the lease in its batch transaction; a
//! lease stops taking requests after `chat_lease_secs` (or at a day's end), and once the
//! last of its requests is written the writer releases what is left. The lease row
//! expires like any chat hold, so a dead process's lease comes back through the reaper.
//!
//! A lease asks for at most `chat_lease_requests` ceilings and never more than a quarter
//! of what the account or key has left, so near a limit leases shrink to single requests
//! and one process cannot sit on money another needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::AnyConnection;

use super::money::with_markup;
use super::{
    HoldKind, HoldRequest, Refusal, alerts, apply, headroom, held, held_mask, hold, periods,
};
use crate::db::money::{self as rows, LedgerEntry};
use crate::ids::{IdKind, new_id, now_ms};

/// This process's leases, by key.
#[derive(Debug, Default)]
pub struct Leases {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Leases that take no more requests and have none left to write: the writer
    /// releases what they still hold.
    done: Arc<Mutex<Vec<Arc<Lease>>>>,
}

/// One key's current lease, and the gate that lets one request at a time ask for a new
/// one (the others wait and take from it).
#[derive(Debug, Default)]
struct Slot {
    gate: tokio::sync::Mutex<()>,
    current: Mutex<Option<Arc<Lease>>>,
}

/// Money held for a key's chat requests in this process.
pub struct Lease {
    /// The reservation's id (`lease_…`).
    pub id: String,
    account_id: String,
    key_id: String,
    markup_bp: i64,
    day_starts_at: i64,
    month_starts_at: i64,
    /// Requests are taken until then (Unix ms); the row expires a chat hold later.
    usable_until: i64,
    /// A prepaid balance or a cap is behind it: money that must not be overspent.
    guarded: bool,
    state: Mutex<State>,
    done: Arc<Mutex<Vec<Arc<Lease>>>>,
}

#[derive(Debug)]
struct State {
    /// Held and not yet promised to a request or charged.
    remaining: i64,
    /// Requests taken whose charge is not yet written.
    open: u64,
    /// Takes no more requests.
    retired: bool,
    /// Handed to the writer to be released (once).
    queued: bool,
}

/// One chat request's share of a lease: its ceiling, until [`Taken::settle`] says what
/// it costs. Dropping it (after its charge is written, or when the request never got
/// that far) tells the lease the request is over.
#[derive(Debug)]
pub struct Taken {
    lease: Arc<Lease>,
    amount_micros: i64,
    charged_micros: i64,
}

impl std::fmt::Debug for Lease {
    // Not derived: `done` may hold this very lease.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("usable_until", &self.usable_until)
            .field("state", &*lock(&self.state))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lease {
    fn retire(self: &Arc<Lease>) {
        let mut state = lock(&self.state);
        state.retired = true;
        self.queue_if_done(&mut state);
    }

    fn queue_if_done(self: &Arc<Lease>, state: &mut State) {
        if state.retired && state.open == 0 && !state.queued {
            state.queued = true;
            lock(&self.done).push(self.clone());
        }
    }

    /// Whether the lease may still take requests at `now`: within its time, and in the
    /// UTC day and month its money is counted in.
    fn in_time(&self, now: i64) -> bool {
        now < self.usable_until
            && periods::day_start(now) == self.day_starts_at
            && periods::month_start(now) == self.month_starts_at
    }

    /// Takes `list_micros` (at the lease's markup) for one request, if the lease still
    /// takes requests and holds that much.
    fn take(self: &Arc<Lease>, list_micros: i64, now: i64) -> Option<Taken> {
        if !self.in_time(now) {
            return None;
        }
        let amount = with_markup(list_micros.max(0), self.markup_bp);
        let mut state = lock(&self.state);
        if state.retired || state.remaining < amount {
            return None;
        }
        state.remaining -= amount;
        state.open += 1;
        Some(Taken {
            lease: self.clone(),
            amount_micros: amount,
            charged_micros: 0,
        })
    }
}

impl Taken {
    /// The request ended costing `list_micros` at list price: its charge (markup added)
    /// replaces its ceiling in the lease, and is what the writer will write.
    pub fn settle(&mut self, list_micros: i64) {
        let charged = with_markup(list_micros.max(0), self.lease.markup_bp);
        let mut state = lock(&self.lease.state);
        state.remaining += self.amount_micros - charged;
        self.amount_micros = charged;
        self.charged_micros = charged;
    }

    /// Whether a prepaid balance or a cap stands behind the money (an unlimited account
    /// without caps has nothing to overspend).
    pub fn guarded(&self) -> bool {
        self.lease.guarded
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        let mut state = lock(&self.lease.state);
        state.open -= 1;
        self.lease.queue_if_done(&mut state);
    }
}

impl Leases {
    /// Takes the money for one chat request of at most `list_micros` at list price from
    /// the key's lease, asking the database for a new lease when there is none that
    /// covers it. `None` with billing off.
    pub async fn take(
        &self,
        engine: &crate::Engine,
        account_id: &str,
        key_id: &str,
        model: &str,
        list_micros: i64,
    ) -> Result<Result<Option<Taken>, Refusal>, sqlx::Error> {
        if !engine.config.billing.enabled {
            return Ok(Ok(None));
        }
        let slot = lock(&self.slots)
            .entry(key_id.to_owned())
            .or_default()
            .clone();
        let now = now_ms();
        if let Some(taken) = slot.take(list_micros, now) {
            return Ok(Ok(Some(taken)));
        }
        let _gate = slot.gate.lock().await;
        let now = now_ms();
        if let Some(taken) = slot.take(list_micros, now) {
            return Ok(Ok(Some(taken)));
        }
        let req = HoldRequest {
            id: "",
            account_id,
            key_id,
            kind: HoldKind::Chat,
            model,
            list_micros,
            expires_at: None,
            now,
        };
        let taken = match self.acquire(engine, &req).await? {
            Ok(taken) => taken,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let old = lock(&slot.current).replace(taken.lease.clone());
        if let Some(old) = old {
            old.retire();
        }
        Ok(Ok(Some(taken)))
    }

    /// Holds a new lease for `req`'s key, sized as the module says, with `req` already
    /// taken from it. When the wished-for size is refused, asks once more for just the
    /// request's own ceiling: the answer to that is the request's answer.
    async fn acquire(
        &self,
        engine: &crate::Engine,
        req: &HoldRequest<'_>,
    ) -> Result<Result<Taken, Refusal>, sqlx::Error> {
        let config = &engine.config.billing;
        let id = new_id(IdKind::Lease);
        let expires_at =
            req.now + (config.chat_lease.as_millis() + config.chat_hold.as_millis()) as i64;
        let req = HoldRequest {
            id: &id,
            expires_at: Some(expires_at),
            ..*req
        };
        let mut only_need = false;
        loop {
            let mut tx = engine.db.begin().await?;
            let Some(payer) = rows::payer(&mut *tx, req.account_id, req.key_id).await? else {
                return Ok(Err(Refusal::NoPayer));
            };
            let (markup_bp, _) = config.tier_for(payer.rolling_30d_micros);
            let need = with_markup(req.list_micros.max(0), markup_bp);
            // Whole ceilings, so that where every request asks the same, no lease is
            // left with a piece too small for one.
            let mut ceilings = i64::from(config.chat_lease_requests.max(1));
            if only_need {
                ceilings = 1;
            } else if need > 0
                && let Some(room) = headroom(&mut tx, &payer, &req).await?
            {
                ceilings = ceilings.min(room / 4 / need).max(1);
            }
            let size = need.saturating_mul(ceilings);
            match hold(&mut tx, &payer, &req, size, markup_bp).await? {
                Ok(_) => {
                    tx.commit().await?;
                    let lease = Arc::new(Lease {
                        id: id.clone(),
                        account_id: req.account_id.to_owned(),
                        key_id: req.key_id.to_owned(),
                        markup_bp,
                        day_starts_at: periods::day_start(req.now),
                        month_starts_at: periods::month_start(req.now),
                        usable_until: req.now + config.chat_lease.as_millis() as i64,
                        guarded: held_mask(&payer, &req) != 0,
                        state: Mutex::new(State {
                            remaining: size - need,
                            open: 1,
                            retired: false,
                            queued: false,
                        }),
                        done: self.done.clone(),
                    });
                    return Ok(Ok(Taken {
                        lease,
                        amount_micros: need,
                        charged_micros: 0,
                    }));
                }
                // The transaction wrote part of the hold: it is dropped, rolled back.
                Err(_) if size > need => only_need = true,
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
    }

    /// Retires leases past their time (all of them, when the process stops) and hands
    /// back those with nothing left to write, for [`close`].
    pub fn finished(&self, now: i64, all: bool) -> Vec<Arc<Lease>> {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in slots {
            let mut current = lock(&slot.current);
            let past = current
                .as_ref()
                .is_some_and(|lease| all || !lease.in_time(now));
            if past && let Some(lease) = current.take() {
                lease.retire();
            }
        }
        std::mem::take(&mut *lock(&self.done))
    }
}

impl Slot {
    fn take(&self, list_micros: i64, now: i64) -> Option<Taken> {
        lock(&self.current).as_ref()?.take(list_micros, now)
    }
}

/// Releases what a finished lease still holds; its requests' charges are all written.
pub async fn close(db: &crate::db::Db, lease: &Lease) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    super::release(&mut tx, &lease.id, super::Release::Released, now_ms()).await?;
    tx.commit().await
}

/// One request's charge, for [`charge_all`].
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub taken: &'a Taken,
    pub completion_id: &'a str,
    pub model: &'a str,
    pub units: i64,
}

/// Writes requests' charges against their leases, in the usage writer's transaction,
/// with one update of each lease and of its account and windows however many requests it
/// served: each lease holds that much less (or, if the reaper let go of it, the charges
/// are taken late, as a late settlement is), the balance and every window count them,
/// and the ledger has one settlement per request under the lease's id, with the
/// completion's id as its note. The rows every request of an account shares are updated
/// last, accounts in id order, so the batch holds their locks only for its last few
/// statements and two writers never wait on each other in a circle. Returns the balance
/// alerts raised.
pub async fn charge_all(
    conn: &mut AnyConnection,
    charges: &[Charge<'_>],
    now: i64,
) -> Result<Vec<alerts::Alert>, sqlx::Error> {
    let mut by_lease: Vec<(&Lease, Vec<&Charge<'_>>)> = Vec::new();
    let mut sorted: Vec<&Charge<'_>> = charges
        .iter()
        .filter(|c| c.taken.charged_micros > 0)
        .collect();
    sorted.sort_by(|a, b| {
        let (a, b) = (&a.taken.lease, &b.taken.lease);
        (&a.account_id, &a.key_id, &a.id).cmp(&(&b.account_id, &b.key_id, &b.id))
    });
    for c in sorted {
        match by_lease.last_mut() {
            Some((lease, list)) if lease.id == c.taken.lease.id => list.push(c),
            _ => by_lease.push((&c.taken.lease, vec![c])),
        }
    }
    // The leases' own rows, and the ledger, first: nobody else waits on them.
    let mut applied = Vec::with_capacity(by_lease.len());
    for (lease, list) in &by_lease {
        let total: i64 = list.iter().map(|c| c.taken.charged_micros).sum();
        let Some(found) = rows::find_reservation(&mut *conn, &lease.id).await? else {
            continue;
        };
        let give = total.min(found.amount_micros);
        let drawn = if found.state == "held" {
            rows::draw_from_lease(&mut *conn, &lease.id, give, total).await?
        } else {
            None
        };
        let (row, given_back) = match drawn {
            Some(row) => (row, give),
            None => (found, 0),
        };
        // Each request's share of what the lease gave back, in order, for its entry.
        let mut unheld_left = if row.held_mask & held::BALANCE != 0 {
            given_back
        } else {
            0
        };
        for c in list {
            let unheld = c.taken.charged_micros.min(unheld_left);
            unheld_left -= unheld;
            let entry = LedgerEntry {
                id: new_id(IdKind::Ledger),
                account_id: &row.account_id,
                key_id: Some(&row.key_id),
                kind: "settlement",
                balance_delta: -c.taken.charged_micros,
                reserved_delta: -unheld,
                reservation_id: Some(&lease.id),
                model: Some(c.model),
                units: Some(c.units),
                actor: "system",
                note: Some(c.completion_id),
                created_at: now,
                ..LedgerEntry::default()
            };
            rows::insert_ledger(&mut *conn, &entry).await?;
        }
        applied.push((row, given_back, total));
    }
    let mut raised = Vec::new();
    for (row, given_back, total) in &applied {
        if let Some(after) = apply(conn, row, *given_back, -total, false).await?
            && let Some(alert) = alerts::balance_low(conn, &row.account_id, &after).await?
        {
            raised.push(alert);
        }
    }
    Ok(raised)
}
