//! Chat usage and its money, recorded off the request path: each request hands its
//! record to a bounded channel (no await, no database), and one writer task per API
//! process stores what has gathered in one transaction every `usage_flush_ms`, settling
//! each request's hold (or releasing it, when no answer came) in the same transaction. A
//! record that finds the channel full is stored by a task of its own instead (slower, but
//! no charge is ever lost); a stopping process writes what is queued before it exits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::SharedEngine;
use crate::billing;
use crate::db::chat_usage::{self, ChatUsage};

/// Where requests leave their usage records.
#[derive(Debug)]
pub struct UsageSink {
    tx: mpsc::Sender<ChatUsage>,
    /// Taken by the writer when it starts (one per process).
    rx: Mutex<Option<mpsc::Receiver<ChatUsage>>>,
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
    fn queue(&self, usage: ChatUsage) -> Option<ChatUsage> {
        self.tx.try_send(usage).err().map(|e| {
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

    fn take_receiver(&self) -> Option<mpsc::Receiver<ChatUsage>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Records how one request ended: queued for the writer, or, with the queue full, stored
/// by a task of its own.
pub fn record(engine: &SharedEngine, usage: ChatUsage) {
    if let Some(usage) = engine.chat.usage.queue(usage) {
        let engine = engine.clone();
        tokio::spawn(async move { store(&engine, &[usage]).await });
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
    loop {
        // Wait for a first record, then let more gather for the flush interval.
        let open = tokio::select! {
            n = rx.recv_many(&mut batch, batch_size) => n > 0,
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
            batch.clear();
            if !full {
                break;
            }
        }
        if !open || stop.is_cancelled() {
            return;
        }
    }
}

/// Writes one batch, trying a failed write again a few times (a database blip), then
/// giving the batch up with an error in the log.
async fn store(engine: &SharedEngine, batch: &[ChatUsage]) {
    for attempt in 0..3u32 {
        match write_batch(engine, batch).await {
            Ok(()) => return,
            Err(e) if attempt < 2 => {
                tracing::warn!(error = %e, rows = batch.len(), "writing chat usage failed; trying again");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => {
                // The holds stay: the reaper releases them when they expire.
                tracing::error!(error = %e, rows = batch.len(), "chat usage lost: the database refused it");
            }
        }
    }
}

/// One transaction: the records, and each request's hold settled at its list price for
/// the tokens used, or released if it ended with no answer. Writing a batch again (a
/// retry after a failed commit) changes nothing: records and settlements happen once.
async fn write_batch(engine: &SharedEngine, batch: &[ChatUsage]) -> Result<(), sqlx::Error> {
    let mut tx = engine.db.begin().await?;
    let now = crate::ids::now_ms();
    let fast_lane_max = engine.config.delivery.fast_lane_max_fan_out;
    let mut outbox = Vec::new();
    for r in batch {
        chat_usage::insert(&mut *tx, r).await?;
        if r.status == "completed" || r.completion_tokens > 0 {
            let units = r.prompt_tokens + r.completion_tokens;
            let settled = billing::settle(&mut tx, &r.id, r.cost_micros, units, now).await?;
            if let Some(alert) = settled.and_then(|s| s.alert) {
                outbox.extend(billing::alerts::write(&mut tx, &alert, fast_lane_max).await?);
            }
        } else {
            billing::release(&mut tx, &r.id, billing::Release::Released, now).await?;
        }
    }
    tx.commit().await?;
    crate::webhooks::delivery::dispatch(engine, outbox).await;
    Ok(())
}
