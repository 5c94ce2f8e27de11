//! What follows an attempt: delivered, failed, or the next step of the retry schedule
//! (with jitter, or when the receiver's `Retry-After` says, within bounds); and the push
//! of that next attempt.

use std::time::Duration;

use super::DeliveryConfig;
use super::attempt::Response;
use crate::Engine;
use crate::db::webhook_deliveries::{AfterAttempt, Delivery};
use crate::ids::now_ms;
use crate::tasks::{self, Deliver};

/// 2xx delivers; 410 and a destination the guard refuses end the delivery; anything else
/// tries again at the schedule's next entry (or when a 429/503 says, within bounds)
/// until the schedule runs out.
pub(super) fn after_attempt(
    cfg: &DeliveryConfig,
    schedule_index: i64,
    response: &Response,
    now: i64,
) -> AfterAttempt {
    if response.blocked {
        return AfterAttempt::Failed;
    }
    match response.status {
        Some(200..=299) => return AfterAttempt::Delivered,
        Some(410) => return AfterAttempt::Failed,
        _ => {}
    }
    let schedule_index = schedule_index + 1;
    let Some(&planned) = cfg.schedule.get(schedule_index as usize) else {
        return AfterAttempt::Failed;
    };
    let delay = match response.retry_after {
        Some(asked) => asked.clamp(Duration::from_secs(1), cfg.retry_after_max),
        None => jitter(planned),
    };
    AfterAttempt::Retry {
        at: now + delay.as_millis() as i64,
        schedule_index,
    }
}

/// Spreads retries over ±10 % of their planned delay, so that deliveries failing together
/// (a receiver's outage) do not all come back at the same instant.
pub(super) fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.9..=1.1))
}

/// `Retry-After` as seconds or an HTTP date.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Pushes the delivery's next attempt, due at Unix ms `at`, best effort
/// ([`tasks::hand_off`]): the row says when it is due.
pub(super) async fn push_attempt(engine: &Engine, delivery: &Delivery, at: i64) {
    // A retry: not to be in the way of first attempts to receivers that answer.
    let bulk = true;
    let task = Deliver::new(
        delivery.id.clone(),
        delivery.seq,
        &delivery.account_id,
        &delivery.url,
        bulk,
    );
    push_at(engine, &task, at).await;
}

/// Pushes `task` to run at Unix ms `at` (at once if that has passed), best effort
/// ([`tasks::hand_off`]): the delivery's row says when it is due.
pub(super) async fn push_at(engine: &Engine, task: &Deliver, at: i64) {
    let delay = Duration::from_millis((at - now_ms()).max(0) as u64);
    tasks::hand_off(engine, task, delay).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, retry_after: Option<u64>) -> Response {
        Response {
            status: Some(status),
            retry_after: retry_after.map(Duration::from_secs),
            ..Response::default()
        }
    }

    #[test]
    fn success_delivers_and_gone_ends() {
        let cfg = DeliveryConfig::default();
        assert_eq!(
            after_attempt(&cfg, 0, &answered(204, None), 0),
            AfterAttempt::Delivered
        );
        assert_eq!(
            after_attempt(&cfg, 0, &answered(410, None), 0),
            AfterAttempt::Failed
        );
    }

    #[test]
    fn failures_follow_the_schedule_with_jitter_until_it_runs_out() {
        let cfg = DeliveryConfig::default();
        let now = 1_000_000;
        for step in 0..cfg.schedule.len() as i64 - 1 {
            let planned = cfg.schedule[step as usize + 1].as_millis() as i64;
            match after_attempt(&cfg, step, &answered(500, None), now) {
                AfterAttempt::Retry {
                    at,
                    schedule_index: next,
                } => {
                    assert_eq!(next, step + 1);
                    let delay = at - now;
                    assert!(
                        delay >= planned * 9 / 10 && delay <= planned * 11 / 10,
                        "step {step}: {delay} ms vs {planned} ms planned"
                    );
                }
                other => panic!("step {step}: {other:?}"),
            }
        }
        let last = cfg.schedule.len() as i64 - 1;
        assert_eq!(
            after_attempt(&cfg, last, &answered(500, None), now),
            AfterAttempt::Failed
        );
        // A transport failure (no status) and a redirect count as failures too.
        assert!(matches!(
            after_attempt(&cfg, 0, &Response::failed("refused".into()), now),
            AfterAttempt::Retry {
                schedule_index: 1,
                ..
            }
        ));
        assert!(matches!(
            after_attempt(&cfg, 0, &answered(302, None), now),
            AfterAttempt::Retry {
                schedule_index: 1,
                ..
            }
        ));
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let cfg = DeliveryConfig::default();
        let at = |r| match after_attempt(&cfg, 0, &r, 0) {
            AfterAttempt::Retry { at, .. } => at,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(answered(429, Some(42))), 42_000);
        assert_eq!(at(answered(503, Some(0))), 1_000);
        assert_eq!(at(answered(429, Some(86_400 * 7))), 3_600_000);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(120);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
