//! The reaper: finds pending jobs whose scheduled check is long overdue (the task was lost
//! between the SQL write and the push, or with a dead worker that the queue could not
//! recover) or whose deadline passed, and hands them a fresh task; and does the same for
//! webhook deliveries whose attempt is overdue; and lets go of money held by requests
//! that never ended, and keeps accounts' volume tiers current (`billing::expire_holds`, `billing::recompute_tiers`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::billing;
use crate::db::jobs;
use crate::ids::now_ms;
use crate::tasks::Advance;
use crate::webhooks::delivery;
use crate::{Engine, EngineError};

/// One sweep; returns how many jobs got a new task.
pub async fn reap_once(engine: &Engine) -> Result<usize, EngineError> {
    let now = now_ms();
    let grace = engine.config.jobs.reaper_grace.as_millis() as i64;
    let overdue = crate::db::jobs::overdue_checks(engine.db.pool(), now, grace, 500).await?;
    let mut handed_out = 0;
    for (job_id, seq) in overdue {
        let mut conn = engine.db.pool().acquire().await?;
        // Bumping the sequence retires any stray task still out there for this job.
        if !jobs::schedule_check(&mut *conn, &job_id, seq, now).await? {
            continue;
        }
        drop(conn);
        engine
            .queue
            .push(&Advance::new(job_id, seq + 1), Duration::ZERO)
            .await?;
        handed_out += 1;
    }
    if handed_out > 0 {
        tracing::info!(count = handed_out, "reaper handed out overdue jobs");
    }
    Ok(handed_out)
}

/// How often finished tasks are cleared out of the queue backend.
const VACUUM_EVERY: Duration = Duration::from_secs(300);

/// Sweeps every `reaper_interval` until `shutdown`.
pub async fn run(engine: &Engine, shutdown: CancellationToken) {
    let mut last_vacuum = std::time::Instant::now();
    // None: recompute at the first sweep (accounts due since the last process ran).
    let mut last_tiers: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(engine.config.jobs.reaper_interval) => {}
        }
        if let Err(e) = engine.queue.claim_namespace(&engine.deployment_id).await {
            tracing::error!(error = %e, "queue namespace check failed");
        }
        if let Err(e) = reap_once(engine).await {
            tracing::warn!(error = %e, "reaper sweep failed");
        }
        if let Err(e) = delivery::sweep_once(engine).await {
            tracing::warn!(error = %e, "delivery sweep failed");
        }
        if let Err(e) = billing::expire_holds(&engine.db).await {
            tracing::warn!(error = %e, "expiring holds failed");
        }
        if last_tiers.is_none_or(|t| t.elapsed() >= engine.config.billing.tier_interval / 4) {
            last_tiers = Some(std::time::Instant::now());
            if let Err(e) = billing::recompute_tiers(&engine.db, &engine.config.billing).await {
                tracing::warn!(error = %e, "recomputing volume tiers failed");
            }
        }
        if last_vacuum.elapsed() >= VACUUM_EVERY {
            last_vacuum = std::time::Instant::now();
            match engine.queue.vacuum().await {
                Ok(removed) => tracing::debug!(removed, "finished tasks removed from the queue"),
                Err(e) => tracing::warn!(error = %e, "queue vacuum failed"),
            }
        }
    }
}
