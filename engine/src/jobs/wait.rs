//! Waiting for a job to end, for the compatible APIs that answer only with the result
//! (OpenAI's image generation): woken at once by changes made in this process, and by a
//! short poll for changes another process (a separate worker) made.

use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::jobs::job::Job;
use crate::{Engine, EngineError};

/// How often the row is read again when no change was announced here.
const POLL: Duration = Duration::from_millis(250);

impl Engine {
    /// The job once it is terminal, or its latest state after `limit`.
    pub async fn wait_until_finished(
        &self,
        job_id: &str,
        limit: Duration,
    ) -> Result<Job, EngineError> {
        // Subscribed before the first read, so a change between the two is not missed.
        let mut changes = self.subscribe_changes();
        let deadline = Instant::now() + limit;
        loop {
            let job = crate::db::jobs::find(self.db.pool(), job_id)
                .await?
                .ok_or_else(|| EngineError::Internal(format!("job {job_id} vanished")))?;
            if job.status.is_terminal() || Instant::now() >= deadline {
                return Ok(job);
            }
            let until = deadline.min(Instant::now() + POLL);
            // Any announcement for this job, or the poll interval, or the deadline.
            let _ = tokio::time::timeout_at(until, async {
                loop {
                    match changes.recv().await {
                        Ok(id) if id == job_id => return,
                        Ok(_) | Err(RecvError::Lagged(_)) => continue,
                        // No sender: only the poll is left.
                        Err(RecvError::Closed) => std::future::pending::<()>().await,
                    }
                }
            })
            .await;
        }
    }
}
