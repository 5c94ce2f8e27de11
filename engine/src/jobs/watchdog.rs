//! Bounds a job step by its signs of life rather than its length. Work that is known to
//! be progressing (a render in the local provider's pool) calls [`alive`] now and then;
//! a step is cut off once it has gone `limit` without one, however long it runs in all.
//! Each sign of life also lets the step renew its lease on the job, so the reaper leaves
//! a long but healthy step alone.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::ids::now_ms;

tokio::task_local! {
    static LAST_SIGN: Arc<AtomicI64>;
}

/// Says that the step this runs in is still working. Outside a watched step it does
/// nothing.
pub fn alive() {
    let _ = LAST_SIGN.try_with(|last| last.store(now_ms(), Ordering::Relaxed));
}

/// How often [`alive_while`] gives a sign of life.
const SIGN_EVERY: Duration = Duration::from_millis(500);

/// Awaits `work`, which is known to be progressing (or waiting its turn for the CPU),
/// giving a sign of life every half second meanwhile.
pub async fn alive_while<F: Future>(work: F) -> F::Output {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(SIGN_EVERY) => alive(),
        }
    }
}

/// Runs `work` until it ends, or until it has gone `limit` without a sign of life (then
/// `None`). While it shows signs of life, `renew` is called about every third of `limit`.
pub async fn watched<F, R, RF>(limit: Duration, mut renew: R, work: F) -> Option<F::Output>
where
    F: Future,
    R: FnMut() -> RF,
    RF: Future<Output = ()>,
{
    let last = Arc::new(AtomicI64::new(now_ms()));
    let work = LAST_SIGN.scope(last.clone(), work);
    tokio::pin!(work);
    let limit_ms = limit.as_millis() as i64;
    let renew_every = (limit / 3).max(Duration::from_millis(10));
    let mut renewed_for = last.load(Ordering::Relaxed);
    loop {
        let silent_until = last.load(Ordering::Relaxed) + limit_ms;
        let wait = Duration::from_millis((silent_until - now_ms()).max(0) as u64);
        tokio::select! {
            out = &mut work => return Some(out),
            _ = tokio::time::sleep(wait.min(renew_every)) => {}
        }
        let seen = last.load(Ordering::Relaxed);
        if seen + limit_ms <= now_ms() {
            return None;
        }
        if seen > renewed_for {
            renewed_for = seen;
            renew().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn silent_work_is_cut_off_and_lively_work_runs_on() {
        let limit = Duration::from_millis(100);
        let silent = watched(limit, || async {}, tokio::time::sleep(limit * 5)).await;
        assert!(silent.is_none());

        let renewals = std::sync::atomic::AtomicUsize::new(0);
        let lively = watched(
            limit,
            || {
                renewals.fetch_add(1, Ordering::Relaxed);
                async {}
            },
            async {
                for _ in 0..10 {
                    tokio::time::sleep(limit / 4).await;
                    alive();
                }
                7
            },
        )
        .await;
        assert_eq!(lively, Some(7), "250 ms of work with a sign every 25 ms");
        assert!(renewals.load(Ordering::Relaxed) >= 2);
    }
}
