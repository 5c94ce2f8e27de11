//! The writes of parked deliveries, batched: a delivery claimed to wait in memory for a
//! slot, or put off in SQL because too many wait already. An account whose receivers
//! hang parks a whole fan-out at once; written one commit each, that burst held up every
//! other account's claims behind it. Here each kind of write is one statement for
//! whatever has queued up while the previous one ran (as a database groups commits), so
//! a lone write goes out at once and a burst of hundreds costs a few statements.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::gates::WAITING_HOLD;
use crate::EngineError;
use crate::db::Db;
use crate::db::webhook_deliveries::{self as deliveries, Delivery, ROWS_PER_UPDATE};
use crate::ids::now_ms;

/// What a batched write answers its caller: a database error reaches every write of the
/// statement that failed, as text (the error itself has one owner).
type Reply<T> = oneshot::Sender<Result<T, String>>;

struct ClaimToWait {
    id: String,
    seq: i64,
    reply: Reply<Option<Delivery>>,
}

struct PutOff {
    id: String,
    seq: i64,
    at: i64,
    reply: Reply<bool>,
}

/// The process's two writers of parked deliveries. Each runs until the engine, which
/// holds the only senders, is dropped.
#[derive(Debug)]
pub struct Parking {
    claims: mpsc::UnboundedSender<ClaimToWait>,
    put_offs: mpsc::UnboundedSender<PutOff>,
    /// Statements written so far, both kinds together.
    statements: Arc<AtomicU64>,
}

impl Parking {
    /// Starts the writers on the current runtime.
    pub fn start(db: &Db) -> Self {
        let (claims, claim_rx) = mpsc::unbounded_channel();
        let (put_offs, put_off_rx) = mpsc::unbounded_channel();
        let statements = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_claims(db.clone(), claim_rx, statements.clone()));
        tokio::spawn(write_put_offs(db.clone(), put_off_rx, statements.clone()));
        Self {
            claims,
            put_offs,
            statements,
        }
    }

    /// How many statements the writers have run: far fewer than the writes asked for
    /// when they come in bursts.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Claims the delivery at `seq` for a wait in memory, held [`WAITING_HOLD`] against
    /// the sweeper: `None` if it moved on (a stale or duplicate task).
    pub async fn claim_to_wait(&self, id: &str, seq: i64) -> Result<Option<Delivery>, EngineError> {
        let (reply, answer) = oneshot::channel();
        let request = ClaimToWait {
            id: id.to_owned(),
            seq,
            reply,
        };
        self.claims.send(request).map_err(|_| stopped())?;
        answered(answer).await
    }

    /// Puts the unclaimed delivery at `seq` off until Unix ms `at`: false if it moved
    /// on, or an attempt holds it.
    pub async fn put_off(&self, id: &str, seq: i64, at: i64) -> Result<bool, EngineError> {
        let (reply, answer) = oneshot::channel();
        let request = PutOff {
            id: id.to_owned(),
            seq,
            at,
            reply,
        };
        self.put_offs.send(request).map_err(|_| stopped())?;
        answered(answer).await
    }
}

fn stopped() -> EngineError {
    EngineError::Internal("the parked deliveries' writer has stopped".into())
}

async fn answered<T>(answer: oneshot::Receiver<Result<T, String>>) -> Result<T, EngineError> {
    answer
        .await
        .map_err(|_| stopped())?
        .map_err(|e| EngineError::Internal(format!("database: {e}")))
}

async fn write_claims(
    db: Db,
    mut requests: mpsc::UnboundedReceiver<ClaimToWait>,
    statements: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(ROWS_PER_UPDATE);
    while requests.recv_many(&mut batch, ROWS_PER_UPDATE).await > 0 {
        let pairs: Vec<(&str, i64)> = batch.iter().map(|r| (r.id.as_str(), r.seq)).collect();
        let until = now_ms() + WAITING_HOLD.as_millis() as i64;
        let claimed = deliveries::claim_all(db.pool(), &pairs, until).await;
        statements.fetch_add(1, Ordering::Relaxed);
        let mut claimed: Result<HashMap<String, Delivery>, String> = claimed
            .map(|rows| rows.into_iter().map(|d| (d.id.clone(), d)).collect())
            .map_err(|e| e.to_string());
        for request in batch.drain(..) {
            // A second task for the same delivery in one batch finds it taken, as it
            // would one statement later.
            let answer = match &mut claimed {
                Ok(rows) => Ok(rows.remove(&request.id)),
                Err(e) => Err(e.clone()),
            };
            let _ = request.reply.send(answer);
        }
    }
}

async fn write_put_offs(
    db: Db,
    mut requests: mpsc::UnboundedReceiver<PutOff>,
    statements: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(ROWS_PER_UPDATE);
    while requests.recv_many(&mut batch, ROWS_PER_UPDATE).await > 0 {
        let rows: Vec<(&str, i64, i64)> =
            batch.iter().map(|r| (r.id.as_str(), r.seq, r.at)).collect();
        let done = deliveries::defer_all(db.pool(), &rows, now_ms()).await;
        statements.fetch_add(1, Ordering::Relaxed);
        let mut done: Result<Vec<String>, String> = done.map_err(|e| e.to_string());
        for request in batch.drain(..) {
            let answer = match &mut done {
                Ok(ids) => Ok(match ids.iter().position(|id| *id == request.id) {
                    Some(at) => {
                        ids.swap_remove(at);
                        true
                    }
                    None => false,
                }),
                Err(e) => Err(e.clone()),
            };
            let _ = request.reply.send(answer);
        }
    }
}
