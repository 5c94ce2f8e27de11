//! Engine errors: infrastructure faults (database, queue, storage) that abort a task or
//! request. Expected outcomes (bad input, upstream refusals) are values, not errors.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("queue: {0}")]
    Queue(#[from] mediagate_workers::QueueError),
    #[error("storage: {0}")]
    Storage(#[from] crate::media::storage::StorageError),
    #[error("{0}")]
    Internal(String),
}
