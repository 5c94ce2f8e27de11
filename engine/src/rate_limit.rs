//! Per-key request rate limits (`requests_per_minute`): one check-and-count per request,
//! shared by every API process of a deployment through Redis, or kept in process on the
//! embedded backend.
//!
//! The limit is GCRA (the generic cell rate algorithm, as in `governor` and redis-cell)
//! over [`PERIOD`]: a key limited to N may make N requests at once, and after that one
//! every 60/N seconds; a request is let through when the key's *theoretical arrival time*
//! (TAT) plus one interval stays within the period from now. Chosen over the
//! alternatives because it keeps one integer per key (a sliding log keeps N timestamps),
//! has no window edge at which 2N requests pass within a few seconds (fixed windows do),
//! and is exact (a weighted two-window count is an estimate), so "N requests" means N.
//!
//! In production the whole step — read the TAT, decide, store the new TAT with a TTL — is
//! one Lua script run by Redis ([`GCRA_SCRIPT`]), so concurrent requests in different
//! processes cannot both take the last slot, and Redis' own clock is the one clock. Its
//! keys live in the queue's namespace (`{prefix}:ratelimit:{key id}`).
//!
//! When Redis does not answer within [`REDIS_TIMEOUT`], the request is counted in
//! process instead, and Redis is left alone for [`REDIS_BACKOFF`] before it is asked
//! again: during an outage a limit holds per API process rather than across them, every
//! answer still carries its headers, and a dead Redis costs no request its answer (nor
//! more than one timeout per backoff of added latency).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mediagate_workers::{Connection, Queue};
use redis::aio::ConnectionManager;

/// The window of `requests_per_minute`.
pub const PERIOD: Duration = Duration::from_secs(60);

/// Longest the check waits for Redis before it counts in process.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// How long Redis is not asked after it failed to answer.
pub const REDIS_BACKOFF: Duration = Duration::from_secs(1);

/// Keys the in-process counter holds at most. Past it, keys whose allowance is whole
/// again (their TAT passed, so forgetting them changes nothing) are dropped; if every key
/// is still counting, the counter starts afresh (bounded memory beats exactness there).
const LOCAL_MAX_KEYS: usize = 100_000;

/// One GCRA step, atomically. KEYS[1]: the key's TAT (Unix µs). ARGV[1]: the limit (≥ 1),
/// ARGV[2]: the period in µs. Returns `{allowed (0|1), remaining, TAT after this request
/// (Unix µs), µs until a request would be let through (0 when allowed)}`. A refused
/// request changes nothing. The same arithmetic as [`gcra`], which the embedded backend
/// runs and whose unit tests pin the edges.
pub const GCRA_SCRIPT: &str = r#"
-- Redis < 5 must be told to replicate a script that reads TIME as its writes.
if redis.replicate_commands then redis.replicate_commands() end
local limit = tonumber(ARGV[1])
local interval = math.floor(tonumber(ARGV[2]) / limit)
if interval < 1 then interval = 1 end
local burst = interval * limit
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
if next_tat - now > burst then
  return {0, 0, tat, next_tat - burst - now}
end
-- %d: Lua's default number format would round a Unix µs time to 14 digits.
redis.call('SET', KEYS[1], string.format('%d', next_tat),
  'PX', math.max(1, math.ceil((next_tat - now) / 1000)))
return {1, math.floor((burst - (next_tat - now)) / interval), next_tat, 0}
"#;

/// What one request's check decided, and what its answer's headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The key's requests per minute.
    pub limit: u64,
    /// Requests the key may still make at once after this one.
    pub remaining: u64,
    /// Unix µs at which the key's whole allowance is back (its TAT).
    pub reset_at_us: i64,
    /// Refused: how long until a request would be let through.
    pub retry_after: Duration,
}

impl Decision {
    /// `X-RateLimit-Reset`: the Unix second by which the whole allowance is back.
    pub fn reset_at_secs(&self) -> i64 {
        (self.reset_at_us + 999_999).div_euclid(1_000_000)
    }

    /// `Retry-After`: whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_micros().div_ceil(1_000_000).max(1) as u64
    }
}

/// One GCRA step over `period_us` for a key limited to `limit` (≥ 1) requests whose TAT
/// is `tat` (`None`: unknown or expired), at `now` (Unix µs). Returns the decision and,
/// when the request is let through, the TAT to store.
pub fn gcra(tat: Option<i64>, now: i64, limit: u64, period_us: i64) -> (Decision, Option<i64>) {
    let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
    // A limit above one per µs cannot be told apart from one per µs.
    let interval = (period_us / limit_i).max(1);
    let burst = interval.saturating_mul(limit_i);
    let tat = tat.unwrap_or(now).max(now);
    let next_tat = tat.saturating_add(interval);
    if next_tat - now > burst {
        let decision = Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_at_us: tat,
            retry_after: Duration::from_micros((next_tat - burst - now) as u64),
        };
        return (decision, None);
    }
    let decision = Decision {
        allowed: true,
        limit,
        remaining: ((burst - (next_tat - now)) / interval) as u64,
        reset_at_us: next_tat,
        retry_after: Duration::ZERO,
    };
    (decision, Some(next_tat))
}

/// The limiter every API process of an engine checks requests against.
pub struct RateLimiter {
    /// Production: the shared count.
    redis: Option<Shared>,
    /// The embedded backend's count, and production's while Redis does not answer.
    local: Local,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = if self.redis.is_some() {
            "redis"
        } else {
            "in process"
        };
        f.debug_struct("RateLimiter")
            .field("backend", &backend)
            .finish()
    }
}

impl RateLimiter {
    /// Counts in Redis when the queue is on Redis (under its namespace), else in process.
    pub fn new(queue: &Queue) -> Self {
        let redis = match queue.connection() {
            Connection::Redis(conn) => Some(Shared {
                conn: conn.clone(),
                prefix: format!("{}:ratelimit:", queue.prefix()),
                script: redis::Script::new(GCRA_SCRIPT),
                skip_until_ms: AtomicI64::new(0),
                degraded: AtomicBool::new(false),
            }),
            Connection::Embedded(_) => None,
        };
        Self {
            redis,
            local: Local::default(),
        }
    }

    /// Counts one request of key `key_id`, limited to `limit` requests per minute, and says
    /// whether it may go on. A limit below 1 refuses every request (and counts nothing).
    pub async fn check(&self, key_id: &str, limit: i64) -> Decision {
        let now = now_us();
        let period_us = PERIOD.as_micros() as i64;
        let Ok(limit) = u64::try_from(limit) else {
            return blocked(now, period_us);
        };
        if limit == 0 {
            return blocked(now, period_us);
        }
        if let Some(shared) = &self.redis
            && let Some(decision) = shared.check(key_id, limit, period_us).await
        {
            return decision;
        }
        self.local.check(key_id, limit, now, period_us)
    }
}

/// The answer for a key whose limit lets nothing through.
fn blocked(now: i64, period_us: i64) -> Decision {
    Decision {
        allowed: false,
        limit: 0,
        remaining: 0,
        reset_at_us: now + period_us,
        retry_after: PERIOD,
    }
}

/// The count in Redis.
struct Shared {
    conn: ConnectionManager,
    /// `{queue prefix}:ratelimit:`.
    prefix: String,
    script: redis::Script,
    /// Unix ms before which Redis is not asked (it failed to answer just now).
    skip_until_ms: AtomicI64,
    /// Whether the last attempt failed, so that recovery is logged once.
    degraded: AtomicBool,
}

impl Shared {
    /// The decision, or `None` when Redis did not answer (the caller counts in process).
    async fn check(&self, key_id: &str, limit: u64, period_us: i64) -> Option<Decision> {
        let now_ms = crate::ids::now_ms();
        if now_ms < self.skip_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let mut conn = self.conn.clone();
        let mut call = self.script.prepare_invoke();
        call.key(format!("{}{key_id}", self.prefix))
            .arg(limit)
            .arg(period_us);
        let answer = tokio::time::timeout(
            REDIS_TIMEOUT,
            call.invoke_async::<(i64, u64, i64, u64)>(&mut conn),
        )
        .await;
        let failure = match answer {
            Ok(Ok((allowed, remaining, reset_at_us, retry_us))) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limits are counted in Redis again");
                }
                return Some(Decision {
                    allowed: allowed == 1,
                    limit,
                    remaining,
                    reset_at_us,
                    retry_after: Duration::from_micros(retry_us),
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {REDIS_TIMEOUT:?}"),
        };
        // One warning per backoff at most: every request in it skips Redis.
        self.skip_until_ms
            .store(now_ms + REDIS_BACKOFF.as_millis() as i64, Ordering::Relaxed);
        self.degraded.store(true, Ordering::Relaxed);
        tracing::warn!(
            error = %failure,
            "rate limits: Redis did not answer; counting in this process (limits hold per \
             process until it does)"
        );
        None
    }
}

/// The count in process: each key's TAT.
#[derive(Default)]
struct Local {
    tats: Mutex<HashMap<String, i64>>,
}

impl Local {
    fn check(&self, key_id: &str, limit: u64, now: i64, period_us: i64) -> Decision {
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        let (decision, next_tat) = gcra(tats.get(key_id).copied(), now, limit, period_us);
        if let Some(next_tat) = next_tat {
            if tats.len() >= LOCAL_MAX_KEYS && !tats.contains_key(key_id) {
                tats.retain(|_, tat| *tat > now);
                if tats.len() >= LOCAL_MAX_KEYS {
                    tats.clear();
                }
            }
            tats.insert(key_id.to_owned(), next_tat);
        }
        decision
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000;
    const T0: i64 = 1_700_000_000_000_000;

    /// Runs `n` requests at `now` against `tat`, returning how many passed and the TAT.
    fn burst(mut tat: Option<i64>, now: i64, limit: u64, n: usize) -> (usize, Option<i64>) {
        let mut passed = 0;
        for _ in 0..n {
            let (d, next) = gcra(tat, now, limit, MINUTE);
            if d.allowed {
                passed += 1;
                tat = next;
            } else {
                assert_eq!(next, None, "a refused request stores nothing");
            }
        }
        (passed, tat)
    }

    #[test]
    fn exactly_the_limit_passes_at_once() {
        // 7 does not divide a minute in µs evenly; 1 and 60 do.
        for limit in [1u64, 3, 7, 60, 600, 100_000] {
            let (passed, _) = burst(None, T0, limit, limit as usize + 5);
            assert_eq!(passed, limit as usize, "limit {limit}");
        }
    }

    #[test]
    fn remaining_counts_down_to_zero() {
        let mut tat = None;
        let remaining: Vec<u64> = (0..4)
            .map(|_| {
                let (d, next) = gcra(tat, T0, 3, MINUTE);
                tat = next.or(tat);
                d.remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0, 0]);
    }

    #[test]
    fn one_slot_frees_every_interval() {
        let (_, tat) = burst(None, T0, 4, 4);
        let (refused, _) = gcra(tat, T0, 4, MINUTE);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(15));
        assert_eq!(refused.retry_after_secs(), 15);
        // The whole allowance is back a minute after the burst.
        assert_eq!(refused.reset_at_us, T0 + MINUTE);
        // Just before the interval: still refused; at it: one request, not two.
        let (early, _) = gcra(tat, T0 + 15_000_000 - 1, 4, MINUTE);
        assert!(!early.allowed);
        assert_eq!(early.retry_after_secs(), 1, "rounded up, at least 1");
        let (passed, _) = burst(tat, T0 + 15_000_000, 4, 3);
        assert_eq!(passed, 1);
        // After the period, the whole allowance.
        let (passed, _) = burst(tat, T0 + MINUTE, 4, 6);
        assert_eq!(passed, 4);
    }

    #[test]
    fn reset_is_rounded_up_to_a_second() {
        let (d, _) = gcra(None, T0 + 1, 2, MINUTE);
        assert_eq!(d.reset_at_us, T0 + 1 + MINUTE / 2);
        assert_eq!(d.reset_at_secs(), (T0 + MINUTE / 2) / 1_000_000 + 1);
    }

    #[test]
    fn the_local_counter_stays_bounded() {
        let local = Local::default();
        for i in 0..LOCAL_MAX_KEYS + 10 {
            local.check(&format!("key_{i}"), 5, T0, MINUTE);
        }
        assert!(local.tats.lock().unwrap().len() <= LOCAL_MAX_KEYS);
        // Keys whose allowance is back are dropped first, so live counts survive.
        let local = Local::default();
        local.check("busy", 1, T0 + MINUTE, MINUTE);
        for i in 0..LOCAL_MAX_KEYS - 1 {
            local.check(&format!("old_{i}"), 60, T0, MINUTE);
        }
        // The old keys' TATs (T0 + 1 s) have passed by now.
        local.check("new", 60, T0 + 2_000_000, MINUTE);
        assert_eq!(local.tats.lock().unwrap().len(), 2);
        let d = local.check("busy", 1, T0 + MINUTE + 1, MINUTE);
        assert!(!d.allowed, "the busy key's count was kept");
    }
}
