//! The sweeper: hands out again the deliveries whose attempt is overdue and that no
//! attempt holds (their task was lost, or never pushed).

use std::time::Duration;

use crate::db::webhook_deliveries as deliveries;
use crate::ids::now_ms;
use crate::tasks::Deliver;
use crate::{Engine, EngineError};

/// One sweep for deliveries whose task was lost; returns how many got a new task.
pub async fn sweep_once(engine: &Engine) -> Result<usize, EngineError> {
    let now = now_ms();
    let grace = engine.config.jobs.reaper_grace.as_millis() as i64;
    let overdue = crate::db::webhook_deliveries::overdue(engine.db.pool(), now, grace, 500).await?;
    let mut handed_out = 0;
    for d in overdue {
        let mut conn = engine.db.pool().acquire().await?;
        if !deliveries::reissue(&mut *conn, &d.id, d.seq, now).await? {
            continue;
        }
        drop(conn);
        let bulk = true;
        let task = Deliver::new(d.id, d.seq + 1, &d.account_id, &d.url, bulk);
        engine.queue.push(&task, Duration::ZERO).await?;
        handed_out += 1;
    }
    if handed_out > 0 {
        tracing::info!(count = handed_out, "sweeper handed out overdue deliveries");
    }
    Ok(handed_out)
}
