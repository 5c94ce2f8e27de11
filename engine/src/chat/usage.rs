//! Chat usage, recorded off the request path: each request hands its record to a bounded
//! channel (no await, no database), and one writer task per API process stores what has
//! gathered in one transaction every `usage_flush_ms`. A full channel drops records (and
//! says how many in a warning) rather than slowing requests down; a stopping process
//! writes what is queued before it exits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::SharedEngine;
use crate::db::chat_usage::ChatUsage;

/// Where requests leave their usage records.
#[derive(Debug)]
pub struct UsageSink {
    tx: mpsc::Sender<ChatUsage>,
    /// Taken by the writer when it starts (one per process).
    rx: Mutex<Option<mpsc::Receiver<ChatUsage>>>,
    dropped: AtomicU64,
}

impl UsageSink {
    pub fn new(capacity: usize) -> UsageSink {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        UsageSink {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues one request's record; never waits.
    pub fn record(&self, usage: ChatUsage) {
        if self.tx.try_send(usage).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "chat usage records dropped: the writer is behind (chat.usage_queue)"
                );
            }
        }
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<ChatUsage>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
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
        match engine.db.insert_chat_usage(batch).await {
            Ok(()) => return,
            Err(e) if attempt < 2 => {
                tracing::warn!(error = %e, rows = batch.len(), "writing chat usage failed; trying again");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, rows = batch.len(), "chat usage lost: the database refused it");
            }
        }
    }
}
