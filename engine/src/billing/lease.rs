//! Leases of money, so that a request's hold costs no shared row lock: a chat request's
//! no database round trip at all, a job's no lock another submission waits on.
//!
//! A process holds a *lease* per key and kind — one reservation row, made by the same
//! guarded [`hold`](super::hold) as any request's, for several requests' ceilings at once
//! — and takes each request's ceiling from it in memory. The lease's money is held in the
//! database the whole time, so no cap or balance can be passed however many processes
//! lease at once: the database still counts every micro-dollar a process may spend.
//!
//! - Chat: the usage writer charges each request's cost against the lease in its batch
//!   transaction.
//! - Jobs: a job's own hold row is written in its transaction, naming the lease and
//!   taking nothing from the counters; it ends with its job (in any process, minutes
//!   later), giving its share back out of the lease ([`give_back_for`]).
//!
//! A lease stops taking requests after `chat_lease_secs` / `job_lease_secs` (or at a
//! day's end); once the last request this process took from it is written, [`close`]
//! gives back what no job of it still holds, and the last of its jobs to end ends it. The
//! lease row expires like a chat hold, so a dead process's lease comes back through the
//! reaper, by the same [`close`].
//!
//! A lease asks for at most `*_lease_requests` ceilings and never more than a quarter of
//! what the account or key has left, so one process cannot sit on money another needs.
//! A lease that got the most and has a quarter left asks for the next one off the request
//! path, so requests seldom wait for the database; near a limit nothing is asked ahead.
//! Near a limit a chat lease shrinks to a single request; a job is then held by itself in
//! its job's transaction, exact to the last job.
//!
//! A lease holds money only. A key's jobs in flight (`max_concurrent_jobs`) are counted
//! on the key's row, one slot taken in each job's transaction: a slot must come back the
//! moment its job ends, in whichever process, and a count split across processes'
//! leases would refuse jobs while another process sits on free slots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::AnyConnection;

use super::money::with_markup;
use super::{
    HoldKind, HoldRequest, Refusal, Release, alerts, apply, headroom, held, held_mask, hold,
    periods, unhold,
};
use crate::SharedEngine;
use crate::db::money::{self as rows, LedgerEntry, Reservation};
use crate::ids::{IdKind, new_id, now_ms};

/// The fewest jobs' ceilings worth a lease; with less room, jobs are held one by one.
const MIN_JOB_LEASE: i64 = 4;

/// This process's leases, by key and kind.
#[derive(Debug, Default)]
pub struct Leases {
    slots: Mutex<HashMap<(String, HoldKind), Arc<Slot>>>,
    /// Leases that take no more requests and have none left to write: the writer
    /// releases what they still hold.
    done: Arc<Mutex<Vec<Arc<Lease>>>>,
    /// The process is stopping: its leases are closed, and a refill still under way
    /// closes what it got instead of keeping it.
    stopping: AtomicBool,
}

/// One key's leases of a kind, and the gate that lets one request (or refill) at a time
/// ask for a new one (the others wait and take from it).
#[derive(Debug, Default)]
struct Slot {
    gate: tokio::sync::Mutex<()>,
    leases: Mutex<SlotLeases>,
    /// A refill is under way (see [`refill`]).
    refilling: AtomicBool,
}

#[derive(Debug, Default)]
struct SlotLeases {
    /// Requests take from this one while it covers them.
    current: Option<Arc<Lease>>,
    /// Asked for ahead, while `current` ran low: takes over when `current` cannot cover.
    next: Option<Arc<Lease>>,
    /// Jobs: until then (Unix ms) each job is held by itself — the key limits its jobs in
    /// flight, or too little is left for a lease.
    alone_until: i64,
}

/// Money held for a key's chat requests or jobs in this process.
pub struct Lease {
    /// The reservation's id (`lease_…`).
    pub id: String,
    /// What it held when made.
    size: i64,
    /// It was as large as a lease may be: the account is far from any limit, so asking
    /// for the next one ahead strands nothing another request needs.
    full_size: bool,
    account_id: String,
    key_id: String,
    markup_bp: i64,
    /// The counters the lease took from, which its jobs' holds give back to.
    held_mask: i64,
    /// The key's `max_concurrent_jobs` when the lease was made (jobs only): each job
    /// then also takes one of the key's slots in its own transaction.
    job_slots: Option<i64>,
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

/// One request's share of a lease: its ceiling — until [`Taken::settle`] says what a chat
/// cost, or for a job, as its own hold row ([`hold_job`]). Dropping it (after a chat's
/// charge or a job's row is written, or when the request never got that far) tells the
/// lease this process is done with the request.
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

    /// Whether it is worth asking for the next lease ahead: a full-size lease with less
    /// than a quarter of it left.
    fn running_low(&self) -> bool {
        self.full_size && lock(&self.state).remaining < self.size / 4
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

    /// The request was refused before anything of it was written: its share goes back
    /// to the lease for the next one.
    pub fn unused(mut self) {
        self.settle(0);
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
    /// Takes the money for one chat request (`req`: kind `Chat`, its ceiling at list
    /// price) from the key's lease, asking the database for a new lease when there is
    /// none that covers it. `None` with billing off.
    pub async fn take(
        &self,
        engine: &SharedEngine,
        req: &HoldRequest<'_>,
    ) -> Result<Result<Option<Taken>, Refusal>, sqlx::Error> {
        if !engine.config.billing.enabled {
            return Ok(Ok(None));
        }
        match self.take_or_lease(engine, req).await? {
            Answer::Got(taken) => Ok(Ok(Some(taken))),
            Answer::Refused(refusal) => Ok(Err(refusal)),
            // Never: a chat lease shrinks to one request instead. Were it reached, refusing
            // is the answer that cannot overspend.
            Answer::HoldAlone => Ok(Err(Refusal::NoPayer)),
        }
    }

    /// Takes the money for one job (`req`: kind `Job`) from the key's job lease, asking
    /// the database for a new lease when there is none that covers it. `None`: hold the
    /// job by itself in its own transaction ([`super::reserve`], which also answers a
    /// refusal) — billing is off, the key limits its jobs in flight, or too little is left
    /// for a lease.
    pub async fn take_for_job(
        &self,
        engine: &SharedEngine,
        req: &HoldRequest<'_>,
    ) -> Result<Option<Taken>, sqlx::Error> {
        let config = &engine.config.billing;
        if !config.enabled || config.job_lease_requests <= 1 {
            return Ok(None);
        }
        Ok(match self.take_or_lease(engine, req).await? {
            Answer::Got(taken) => Some(taken),
            Answer::Refused(_) | Answer::HoldAlone => None,
        })
    }

    async fn take_or_lease(
        &self,
        engine: &SharedEngine,
        req: &HoldRequest<'_>,
    ) -> Result<Answer<Taken>, sqlx::Error> {
        let slot = lock(&self.slots)
            .entry((req.key_id.to_owned(), req.kind))
            .or_default()
            .clone();
        if let Some(taken) = slot.take(req.list_micros, req.now) {
            if taken.lease.running_low() {
                refill(engine, &slot, req);
            }
            return Ok(Answer::Got(taken));
        }
        if slot.alone_at(req.now) {
            return Ok(Answer::HoldAlone);
        }
        let _gate = slot.gate.lock().await;
        let req = HoldRequest {
            now: now_ms(),
            ..*req
        };
        if let Some(taken) = slot.take(req.list_micros, req.now) {
            return Ok(Answer::Got(taken));
        }
        if slot.alone_at(req.now) {
            return Ok(Answer::HoldAlone);
        }
        Ok(match self.acquire(engine, &req).await? {
            Answer::Got(lease) => {
                let taken = lease.take(req.list_micros, req.now);
                slot.install(lease, &req);
                // A lease is made for at least this request, in its time and periods.
                taken.map_or(Answer::Refused(Refusal::NoPayer), Answer::Got)
            }
            Answer::HoldAlone => {
                lock(&slot.leases).alone_until = req.now + lease_secs(engine, req.kind);
                Answer::HoldAlone
            }
            Answer::Refused(refusal) => Answer::Refused(refusal),
        })
    }

    /// Holds a new lease for `req`'s key, sized as the module says, nothing taken from it
    /// yet. When a chat lease of the wished-for size is refused, asks once more for just
    /// the request's own ceiling: the answer to that is the request's answer. A job that
    /// cannot have a lease is to be held by itself.
    async fn acquire(
        &self,
        engine: &crate::Engine,
        req: &HoldRequest<'_>,
    ) -> Result<Answer<Arc<Lease>>, sqlx::Error> {
        let config = &engine.config.billing;
        let id = new_id(IdKind::Lease);
        let usable_until = req.now + lease_secs(engine, req.kind);
        let expires_at = usable_until + config.chat_hold.as_millis() as i64;
        let req = HoldRequest {
            id: &id,
            expires_at: Some(expires_at),
            ..*req
        };
        let most = i64::from(match req.kind {
            HoldKind::Chat => config.chat_lease_requests,
            HoldKind::Job => config.job_lease_requests,
        })
        .max(1);
        let mut only_need = false;
        loop {
            let mut tx = engine.db.begin().await?;
            let Some(payer) = rows::payer(&mut *tx, req.account_id, req.key_id).await? else {
                return Ok(Answer::Refused(Refusal::NoPayer));
            };
            // A lease holds money only; a job's slot is its own (see `hold_job`).
            let mask = held_mask(&payer, &req) & !held::JOB_SLOT;
            let job_slots = payer
                .max_concurrent_jobs
                .filter(|_| req.kind == HoldKind::Job);
            let (markup_bp, _) = config.tier_for(payer.rolling_30d_micros);
            let need = with_markup(req.list_micros.max(0), markup_bp);
            // Whole ceilings, so that where every request asks the same, no lease is
            // left with a piece too small for one.
            let mut ceilings = most;
            if only_need {
                ceilings = 1;
            } else if need > 0
                && let Some(room) = headroom(&mut tx, &payer, &req).await?
            {
                ceilings = ceilings.min(room / 4 / need).max(1);
            }
            if req.kind == HoldKind::Job && ceilings < MIN_JOB_LEASE {
                return Ok(Answer::HoldAlone);
            }
            let size = need.saturating_mul(ceilings);
            match hold(&mut tx, &payer, &req, mask, size, markup_bp).await? {
                Ok(_) => {
                    tx.commit().await?;
                    return Ok(Answer::Got(Arc::new(Lease {
                        id: id.clone(),
                        size,
                        full_size: ceilings == most,
                        account_id: req.account_id.to_owned(),
                        key_id: req.key_id.to_owned(),
                        markup_bp,
                        held_mask: mask,
                        job_slots,
                        day_starts_at: periods::day_start(req.now),
                        month_starts_at: periods::month_start(req.now),
                        usable_until,
                        guarded: mask != 0,
                        state: Mutex::new(State {
                            remaining: size,
                            open: 0,
                            retired: false,
                            queued: false,
                        }),
                        done: self.done.clone(),
                    })));
                }
                // The transaction wrote part of the hold: it is dropped, rolled back.
                Err(_) if req.kind == HoldKind::Job => return Ok(Answer::HoldAlone),
                Err(_) if size > need => only_need = true,
                Err(refusal) => return Ok(Answer::Refused(refusal)),
            }
        }
    }

    /// Retires leases past their time (all of them, when the process stops) and hands
    /// back those with nothing left to write, for [`close`]. Forgets the slots of keys
    /// left with no lease, so a process that served many keys does not keep one per key.
    pub fn finished(&self, now: i64, all: bool) -> Vec<Arc<Lease>> {
        if all {
            self.stopping.store(true, Ordering::Release);
        }
        let mut slots = lock(&self.slots);
        slots.retain(|_, slot| {
            let mut guard = lock(&slot.leases);
            let leases = &mut *guard;
            for place in [&mut leases.current, &mut leases.next] {
                let past = place
                    .as_ref()
                    .is_some_and(|lease| all || !lease.in_time(now));
                if past && let Some(lease) = place.take() {
                    lease.retire();
                }
            }
            // Slots are handed out under this lock, so with no other holder now none can
            // get this one while it is dropped; a request or refill that holds it keeps it.
            let idle = leases.current.is_none() && leases.next.is_none();
            !(idle && leases.alone_until <= now && Arc::strong_count(slot) == 1)
        });
        drop(slots);
        std::mem::take(&mut *lock(&self.done))
    }
}

/// Asks for `slot`'s next lease ahead, off the request's path, so that requests do not
/// wait on the gate when the current one runs out: once at a time, and only while the
/// current lease is full-size (far from any limit).
fn refill(engine: &SharedEngine, slot: &Arc<Slot>, req: &HoldRequest<'_>) {
    if lock(&slot.leases).next.is_some() || slot.refilling.swap(true, Ordering::AcqRel) {
        return;
    }
    let (engine, slot) = (engine.clone(), slot.clone());
    let (account_id, key_id, model) = (
        req.account_id.to_owned(),
        req.key_id.to_owned(),
        req.model.to_owned(),
    );
    let (kind, list_micros) = (req.kind, req.list_micros);
    tokio::spawn(async move {
        let gate = slot.gate.lock().await;
        let wanted = {
            let leases = lock(&slot.leases);
            leases.next.is_none() && leases.current.as_ref().is_some_and(|l| l.running_low())
        };
        if wanted && !engine.leases.stopping.load(Ordering::Acquire) {
            let req = HoldRequest {
                id: "",
                account_id: &account_id,
                key_id: &key_id,
                kind,
                model: &model,
                list_micros,
                expires_at: None,
                now: now_ms(),
            };
            match engine.leases.acquire(&engine, &req).await {
                Ok(Answer::Got(lease)) if engine.leases.stopping.load(Ordering::Acquire) => {
                    if let Err(e) = close(&engine.db, &lease.id, Release::Released).await {
                        tracing::warn!(lease = %lease.id, error = %e, "releasing a lease failed; the reaper will when it expires");
                    }
                }
                Ok(Answer::Got(lease)) => slot.install(lease, &req),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "asking for the next lease of money failed; the next request will");
                }
            }
        }
        drop(gate);
        slot.refilling.store(false, Ordering::Release);
    });
}

impl Slot {
    /// Takes from the current lease, or from the next one, which then becomes current.
    fn take(&self, list_micros: i64, now: i64) -> Option<Taken> {
        let mut leases = lock(&self.leases);
        if let Some(taken) = leases
            .current
            .as_ref()
            .and_then(|l| l.take(list_micros, now))
        {
            return Some(taken);
        }
        let taken = leases.next.as_ref()?.take(list_micros, now)?;
        let next = leases.next.take();
        let old = std::mem::replace(&mut leases.current, next);
        if let Some(old) = old {
            old.retire();
        }
        Some(taken)
    }

    fn alone_at(&self, now: i64) -> bool {
        lock(&self.leases).alone_until > now
    }

    /// Puts a new lease in place: next, if the current one still covers requests (a
    /// refill), else current, retiring what it replaces.
    fn install(&self, lease: Arc<Lease>, req: &HoldRequest<'_>) {
        let mut leases = lock(&self.leases);
        let current_covers = leases.current.as_ref().is_some_and(|l| {
            l.in_time(req.now)
                && lock(&l.state).remaining >= with_markup(req.list_micros.max(0), l.markup_bp)
        });
        let old = if current_covers {
            leases.next.replace(lease)
        } else {
            leases.current.replace(lease)
        };
        if let Some(old) = old {
            old.retire();
        }
    }
}

/// What [`Leases`] answers a request: what it got (a new lease, or the request's share
/// of one), a refusal, or (a job) that it is to be held by itself.
#[derive(Debug)]
enum Answer<T> {
    Got(T),
    Refused(Refusal),
    HoldAlone,
}

fn lease_secs(engine: &crate::Engine, kind: HoldKind) -> i64 {
    let config = &engine.config.billing;
    match kind {
        HoldKind::Chat => config.chat_lease.as_millis() as i64,
        HoldKind::Job => config.job_lease.as_millis() as i64,
    }
}

/// Holds a job's share of a lease, in the job's transaction: a hold row naming the
/// lease, with the lease's markup, counters and spending windows, that takes no money
/// from the counters (the lease did). It moves no money, so it writes no ledger entry:
/// the lease's `reservation` did, and the job's `settlement` or `release` (under its own
/// id) will. A key that limits its jobs in flight gives the job one of its slots here,
/// last (it locks the key's row until the commit), or refuses it.
pub async fn hold_job(
    conn: &mut AnyConnection,
    taken: &Taken,
    job_id: &str,
    model: &str,
    now: i64,
) -> Result<Result<(), Refusal>, sqlx::Error> {
    let lease = &taken.lease;
    let slot = if lease.job_slots.is_some() {
        held::JOB_SLOT
    } else {
        0
    };
    let hold = Reservation {
        id: job_id.to_owned(),
        account_id: lease.account_id.clone(),
        key_id: lease.key_id.clone(),
        kind: HoldKind::Job.as_str().to_owned(),
        model: model.to_owned(),
        amount_micros: taken.amount_micros,
        markup_bp: lease.markup_bp,
        day_starts_at: lease.day_starts_at,
        month_starts_at: lease.month_starts_at,
        state: "held".to_owned(),
        settled_micros: None,
        created_at: now,
        expires_at: None,
        ended_at: None,
        held_mask: lease.held_mask | slot,
        lease_id: Some(lease.id.clone()),
    };
    rows::insert_reservation(&mut *conn, &hold).await?;
    if let Some(limit) = lease.job_slots
        && !rows::take_job_slot(&mut *conn, &lease.key_id).await?
    {
        return Ok(Err(Refusal::TooManyJobs { limit }));
    }
    Ok(Ok(()))
}

/// What the lease `lease_id` gives back to the counters for one of its jobs' holds of
/// `amount` as the job ends: that much, taken off what the lease holds. The lease may
/// hold less — a job whose transaction committed after the lease was closed, or after
/// the reaper let go of it — and then gives what it has. The last job of a closed lease
/// to end ends it.
pub(super) async fn give_back_for(
    conn: &mut AnyConnection,
    lease_id: &str,
    amount: i64,
    now: i64,
) -> Result<i64, sqlx::Error> {
    let mut want = amount;
    while want > 0 {
        if let Some(lease) = rows::draw_from_lease(&mut *conn, lease_id, want, 0).await? {
            if lease.expires_at.is_none() && lease.amount_micros == 0 {
                let settled = lease.settled_micros;
                rows::end_reservation(&mut *conn, lease_id, "held", "released", settled, now)
                    .await?;
            }
            return Ok(want);
        }
        match rows::find_reservation(&mut *conn, lease_id).await? {
            Some(lease) if lease.state == "held" && lease.amount_micros < want => {
                want = lease.amount_micros;
            }
            _ => return Ok(0),
        }
    }
    Ok(0)
}

/// Closes a lease that takes no more requests: gives back to the counters what it holds
/// beyond its jobs' holds (all of it for a chat lease), and ends it — released, or
/// `Expired` when the reaper lets go of a dead process's lease, so a late chat charge
/// still finds it — unless its jobs still hold money; then it no longer expires and the
/// last of them ends it. False if it was not held (closed already).
pub async fn close(db: &crate::db::Db, lease_id: &str, how: Release) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    // Locked first: a job of it that ends meanwhile waits, so the sum below is exact.
    let Some(lease) = rows::stop_lease(&mut *tx, lease_id).await? else {
        return Ok(false);
    };
    let jobs_hold = rows::held_by_lease_jobs(&mut *tx, lease_id).await?;
    let give = (lease.amount_micros - jobs_hold).max(0);
    if jobs_hold == 0 {
        let settled = lease.settled_micros;
        rows::end_reservation(&mut *tx, lease_id, "held", how.state(), settled, now).await?;
    } else if give > 0 {
        rows::draw_from_lease(&mut *tx, lease_id, give, 0).await?;
    }
    unhold(&mut tx, &lease, how, give, now).await?;
    tx.commit().await?;
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(usable_until: i64, done: &Arc<Mutex<Vec<Arc<Lease>>>>) -> Arc<Lease> {
        Arc::new(Lease {
            id: new_id(IdKind::Lease),
            size: 100,
            full_size: true,
            account_id: "acct".into(),
            key_id: "key".into(),
            markup_bp: 0,
            held_mask: held::BALANCE,
            job_slots: None,
            day_starts_at: periods::day_start(0),
            month_starts_at: periods::month_start(0),
            usable_until,
            guarded: true,
            state: Mutex::new(State {
                remaining: 100,
                open: 0,
                retired: false,
                queued: false,
            }),
            done: done.clone(),
        })
    }

    fn slot_with(leases: &Leases, key: &str, current: Option<Arc<Lease>>) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        lock(&slot.leases).current = current;
        lock(&leases.slots).insert((key.to_owned(), HoldKind::Job), slot.clone());
        slot
    }

    #[test]
    fn a_spent_slot_takes_from_the_next_lease_and_retires_the_first() {
        let leases = Leases::default();
        let first = lease(1_000, &leases.done);
        let slot = slot_with(&leases, "k", Some(first.clone()));
        let taken = slot.take(100, 10).expect("the first covers it");
        assert!(first.running_low());
        assert!(slot.take(1, 10).is_none(), "the first is spent");
        lock(&slot.leases).next = Some(lease(1_000, &leases.done));
        let from_next = slot.take(60, 10).expect("the next covers it");
        assert!(!Arc::ptr_eq(&from_next.lease, &first));
        assert!(lock(&slot.leases).next.is_none(), "the next became current");
        // Retired, the first is closed only once its last request is done.
        assert!(leases.finished(10, false).is_empty());
        drop(taken);
        let done = leases.finished(10, false);
        assert_eq!(done.len(), 1);
        assert!(Arc::ptr_eq(&done[0], &first));
    }

    #[test]
    fn slots_left_with_no_lease_are_forgotten() {
        let leases = Leases::default();
        slot_with(&leases, "idle", None);
        slot_with(&leases, "leased", Some(lease(1_000, &leases.done)));
        let held = slot_with(&leases, "in use", None);
        slot_with(&leases, "past", Some(lease(5, &leases.done)));
        let done = leases.finished(10, false);
        assert_eq!(done.len(), 1, "the lease past its time, with nothing open");
        let mut kept: Vec<String> = lock(&leases.slots).keys().map(|(k, _)| k.clone()).collect();
        kept.sort();
        assert_eq!(kept, ["in use", "leased"]);
        drop(held);
        leases.finished(2_000, false);
        assert!(lock(&leases.slots).is_empty());
    }
}
