//! Chat usage and its money, recorded off the request path: each request hands its
//! record to a bounded channel (no await, no database), and one writer task per API
//! process stores what has gathered in one transaction every `usage_flush_ms`, charging
//! each answered request's cost against its key's lease of money (`billing::lease`) in
//! the same transaction. The writer also releases what finished leases have left. A
//! record that finds the channel full is stored by a task of its own instead (slower, but
//! no charge is ever lost); a stopping process writes what is queued, and lets go of its
//! leases, before it exits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::SharedEngine;
use crate::billing;
use crate::billing::lease::Taken;
use crate::db::chat_usage::{self, ChatUsage};

/// How often the writer looks for leases that have stopped taking requests.
const LEASE_CHECK: Duration = Duration::from_secs(1);

/// How one request ended, and its share of a lease (none with billing off), settled to
/// what it cost.
#[derive(Debug)]
pub struct Record {
    pub usage: ChatUsage,
    pub money: Option<Taken>,
}

/// Where requests leave their usage records.
#[derive(Debug)]
pub struct UsageSink {
    tx: mpsc::Sender<Record>,
    /// Taken by the writer when it starts (one per process).
    rx: Mutex<Option<mpsc::Receiver<Record>>>,
    overflowed: AtomicU64,
}

impl UsageSink {
    pub fn new(capacity: usize) -> UsageSink {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        UsageSink {
            tx,
            rx: Mutex::new(Some(rx)),
            overflowed: AtomicU64::new(0),
        }
    }

    /// Queues one request's record; never waits. A full queue hands it back.
    fn queue(&self, record: Record) -> Option<Record> {
        self.tx.try_send(record).err().map(|e| {
            let overflowed = self.overflowed.fetch_add(1, Ordering::Relaxed) + 1;
            if overflowed.is_power_of_two() {
                tracing::warn!(
                    overflowed,
                    "chat usage writer behind (chat.usage_queue): records stored one by one"
                );
            }
            e.into_inner()
        })
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<Record>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Records how one request ended: queued for the writer, or, with the queue full, stored
/// by a task of its own.
pub fn record(engine: &SharedEngine, record: Record) {
    if let Some(record) = engine.chat.usage.queue(record) {
        let engine = engine.clone();
        tokio::spawn(async move { store(&engine, &[record]).await });
    }
}

/// The writer: stores queued records in batches until `stop`, then what is left.
pub async fn write(engine: SharedEngine, stop: CancellationToken) {
    let Some(mut rx) = engine.chat.usage.take_receiver() else {
        return;
    };
    let config = &engine.config.chat;
    let batch_size = config.usage_batch.max(1);
    let mut batch = Vec::with_capacity(batch_size);
    let mut lease_check = tokio::time::interval(LEASE_CHECK);
    loop {
        // Wait for a first record, then let more gather for the flush interval.
        let open = tokio::select! {
            n = rx.recv_many(&mut batch, batch_size) => n > 0,
            _ = lease_check.tick() => {
                close_leases(&engine, false).await;
                continue;
            }
            () = stop.cancelled() => false,
        };
        if open {
            tokio::select! {
                () = tokio::time::sleep(config.usage_flush) => {}
                () = stop.cancelled() => {}
            }
        }
        loop {
            while batch.len() < batch_size {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            store(&engine, &batch).await;
            let full = batch.len() == batch_size;
            // Dropping the records' shares, written now, lets their leases finish.
            batch.clear();
            if !full {
                break;
            }
        }
        let stopping = !open || stop.is_cancelled();
        close_leases(&engine, stopping).await;
        if stopping {
            return;
        }
    }
}

/// Releases what finished leases (every lease, when `all`: the process is stopping) have
/// left. A lease that cannot be released now is released by the reaper when it expires.
async fn close_leases(engine: &SharedEngine, all: bool) {
    for lease in engine.leases.finished(crate::ids::now_ms(), all) {
        if let Err(e) =
            billing::lease::close(&engine.db, &lease.id, billing::Release::Released).await
        {
            tracing::warn!(lease = %lease.id, error = %e, "releasing a chat lease failed; the reaper will when it expires");
        }
    }
}

/// Writes one batch, trying a failed write again a few times (a database blip), then
/// giving the batch up with an error in the log.
async fn store(engine: &SharedEngine, batch: &[Record]) {
    for attempt in 0..3u32 {
        match write_batch(engine, batch).await {
            Ok(()) => return,
            Err(e) if attempt < 2 => {
                tracing::warn!(error = %e, rows = batch.len(), "writing chat usage failed; trying again");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => {
                // Their leases release the money when they finish: it is not charged.
                tracing::error!(error = %e, rows = batch.len(), "chat usage lost: the database refused it");
            }
        }
    }
}

/// One transaction: the records, then each answered request's cost charged against its
/// lease (`billing::lease::charge_all`: the rows shared with requests last). Writing a
/// batch again (a retry after a failed commit) changes nothing: a record stored already
/// is not charged again.
async fn write_batch(engine: &SharedEngine, batch: &[Record]) -> Result<(), sqlx::Error> {
    let mut tx = engine.db.begin().await?;
    let now = crate::ids::now_ms();
    let mut charges = Vec::new();
    for Record { usage: r, money } in batch {
        let stored = chat_usage::insert(&mut *tx, r).await?;
        if let Some(taken) = money.as_ref().filter(|_| stored) {
            charges.push(billing::lease::Charge {
                taken,
                completion_id: &r.id,
                model: &r.model,
                units: r.prompt_tokens + r.completion_tokens,
            });
        }
    }
    let alerts = billing::lease::charge_all(&mut tx, &charges, now).await?;
    let fast_lane_max = engine.config.delivery.fast_lane_max_fan_out;
    let mut outbox = Vec::new();
    for alert in &alerts {
        outbox.extend(billing::alerts::write(&mut tx, alert, fast_lane_max).await?);
    }
    tx.commit().await?;
    crate::webhooks::delivery::dispatch(engine, outbox).await;
    Ok(())
}
