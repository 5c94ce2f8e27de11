//! Per-destination gates and the process's fair slots: how many attempts of one account
//! run at once to one destination (host and port), and how the process's attempt slots
//! are shared round-robin among accounts, so that one account's slow or dead receivers
//! hold only their own share.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::DeliveryConfig;

/// What one attempt holds while its request is under way: a slot of its destination
/// and one of the process's slots, counted against its account.
pub(super) type Held = (OwnedSemaphorePermit, Slot);

/// How long a delivery waiting for a slot is held against the sweeper. No more wait in
/// memory than can start within it (see [`Destinations::start_waiting`]).
pub(super) const WAITING_HOLD: Duration = Duration::from_secs(600);

/// The least a delivery put back for a busy destination or account waits.
const BUSY_RETRY: Duration = Duration::from_secs(5);

/// Where a URL's requests go, for the per-destination limit: host and port (the scheme's
/// default port when none is given), so that `?i=1`, `?i=2`… or other paths on one
/// server count together. A URL that does not parse is its own destination.
pub fn destination(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or_default(),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_owned(),
    }
}

/// Per process: the attempt slots, shared fairly among accounts ([`Slots`]), and per
/// account and destination, the attempts under way and who waits for one.
#[derive(Debug)]
pub struct Destinations {
    by_place: Mutex<HashMap<(String, String), Arc<Gate>>>,
    pub slots: Arc<Slots>,
}

/// One account's slots at one destination, and how many deliveries wait for them.
#[derive(Debug)]
pub struct Gate {
    pub(super) slots: Arc<Semaphore>,
    limit: usize,
    waiting: AtomicUsize,
}

/// A delivery waiting for its slots, counted against its account and destination while
/// it lives.
#[derive(Debug)]
pub struct Waiting {
    gate: Arc<Gate>,
    slots: Arc<Slots>,
    account: String,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.gate.waiting.fetch_sub(1, Ordering::SeqCst);
        self.slots.stop_waiting(&self.account);
    }
}

impl Destinations {
    pub fn new(cfg: &DeliveryConfig) -> Self {
        Self {
            by_place: Mutex::new(HashMap::new()),
            slots: Slots::new(cfg.concurrency, cfg.per_account_concurrency),
        }
    }

    /// The gate of `account` at `destination`, made with `limit` slots on first use. The
    /// limit is per account, so another account sharing a host (a hosted automation
    /// service, say) is not held up by this account's stuck URLs on it.
    pub(super) fn gate(&self, account: &str, destination: &str, limit: usize) -> Arc<Gate> {
        let mut map = self.by_place.lock().expect("not poisoned");
        if map.len() > 10_000 {
            // Forget places nobody is using, so the map does not grow with every URL seen.
            map.retain(|_, gate| Arc::strong_count(gate) > 1);
        }
        map.entry((account.to_owned(), destination.to_owned()))
            .or_insert_with(|| {
                Arc::new(Gate {
                    slots: Arc::new(Semaphore::new(limit)),
                    limit,
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// How many may wait for `slots` slots when each attempt ahead may take the whole
    /// timeout: no more than can start before the hold of the last one lapses.
    fn wait_limit(slots: usize, cfg: &DeliveryConfig) -> usize {
        let rounds = (WAITING_HOLD.as_millis() / cfg.timeout.as_millis().max(1)).max(1) as usize;
        slots.saturating_mul(rounds)
    }

    /// Counts a delivery as waiting for its account and destination, or `None` if as
    /// many wait already as could start before their holds lapse.
    pub(super) fn start_waiting(
        &self,
        account: &str,
        gate: &Arc<Gate>,
        cfg: &DeliveryConfig,
    ) -> Option<Waiting> {
        let at_gate = gate.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting {
            gate: Arc::clone(gate),
            slots: Arc::clone(&self.slots),
            account: account.to_owned(),
        };
        let in_account = self.slots.start_waiting(account);
        let share = cfg.per_account_concurrency.min(cfg.concurrency);
        if at_gate >= Self::wait_limit(gate.limit, cfg)
            || in_account >= Self::wait_limit(share, cfg)
        {
            return None; // `waiting` is dropped: both counts go back down.
        }
        Some(waiting)
    }

    /// How long the deliveries already waiting for this account and destination should
    /// take, if every attempt took the whole timeout: when one put back should return.
    pub(super) fn backlog_delay(
        &self,
        account: &str,
        gate: &Gate,
        cfg: &DeliveryConfig,
    ) -> Duration {
        let share = cfg.per_account_concurrency.min(cfg.concurrency);
        let at_gate = gate.waiting.load(Ordering::SeqCst) / gate.limit.max(1);
        let in_account = self.slots.waiting(account) / share.max(1);
        let rounds = at_gate.max(in_account) as u32;
        cfg.timeout
            .saturating_mul(rounds)
            .clamp(BUSY_RETRY, WAITING_HOLD)
    }
}

/// The process's attempt slots (`webhooks.concurrency`), shared among accounts: an
/// account runs at most `per_account` attempts at once, and when slots are short they
/// go round-robin to the accounts that wait for one, so an account with many deliveries
/// waiting gets no more turns than one with a single delivery.
#[derive(Debug)]
pub struct Slots {
    state: Mutex<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    free: usize,
    per_account: usize,
    accounts: HashMap<String, Tenant>,
    /// Accounts with a waiter and room under their cap, in the order they get a slot.
    turns: VecDeque<String>,
}

#[derive(Debug, Default)]
struct Tenant {
    running: usize,
    queue: VecDeque<oneshot::Sender<Slot>>,
    in_turns: bool,
    /// Deliveries of this account waiting in this process (for a slot or a destination).
    waiting: usize,
}

impl Tenant {
    fn idle(&self) -> bool {
        self.running == 0 && self.queue.is_empty() && self.waiting == 0 && !self.in_turns
    }
}

/// One of the process's attempt slots, held by one account; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    account: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(&self.account);
    }
}

impl Slots {
    pub fn new(total: usize, per_account: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SlotState {
                free: total,
                per_account,
                accounts: HashMap::new(),
                turns: VecDeque::new(),
            }),
        })
    }

    /// A slot for `account` now, if one is free and the account is under its cap and has
    /// no earlier delivery waiting.
    pub fn try_take(self: &Arc<Self>, account: &str) -> Option<Slot> {
        let mut st = self.state.lock().expect("not poisoned");
        let (free, cap) = (st.free, st.per_account);
        let tenant = st.accounts.entry(account.to_owned()).or_default();
        if free == 0 || tenant.running >= cap || !tenant.queue.is_empty() {
            if tenant.idle() {
                st.accounts.remove(account);
            }
            return None;
        }
        tenant.running += 1;
        st.free -= 1;
        Some(Slot {
            slots: Arc::clone(self),
            account: account.to_owned(),
        })
    }

    /// A slot for `account`, waiting for the account's turn if need be.
    pub async fn take(self: &Arc<Self>, account: &str) -> Slot {
        loop {
            let rx = {
                let mut st = self.state.lock().expect("not poisoned");
                let (free, cap) = (st.free, st.per_account);
                let tenant = st.accounts.entry(account.to_owned()).or_default();
                if free > 0 && tenant.running < cap && tenant.queue.is_empty() {
                    tenant.running += 1;
                    st.free -= 1;
                    return Slot {
                        slots: Arc::clone(self),
                        account: account.to_owned(),
                    };
                }
                let (tx, rx) = oneshot::channel();
                tenant.queue.push_back(tx);
                if tenant.running < cap && !tenant.in_turns {
                    tenant.in_turns = true;
                    st.turns.push_back(account.to_owned());
                }
                // Normally nothing to hand out here (free slots never wait beside an
                // account's turn), but a turn left behind by a waiter that went away must
                // not strand this one.
                (rx, self.grant(&mut st))
            };
            let (rx, grants) = rx;
            for (tx, slot) in grants {
                let _ = tx.send(slot);
            }
            if let Ok(slot) = rx.await {
                return slot;
            }
        }
    }

    fn release(self: &Arc<Self>, account: &str) {
        let grants = {
            let mut st = self.state.lock().expect("not poisoned");
            st.free += 1;
            let cap = st.per_account;
            let mut idle = false;
            let mut queue_turn = false;
            if let Some(tenant) = st.accounts.get_mut(account) {
                tenant.running -= 1;
                if tenant.running < cap && !tenant.queue.is_empty() && !tenant.in_turns {
                    tenant.in_turns = true;
                    queue_turn = true;
                }
                idle = tenant.idle();
            }
            if queue_turn {
                st.turns.push_back(account.to_owned());
            }
            if idle {
                st.accounts.remove(account);
            }
            self.grant(&mut st)
        };
        // Handed over outside the lock: a waiter that is gone drops its slot, which
        // releases it again.
        for (tx, slot) in grants {
            let _ = tx.send(slot);
        }
    }

    /// Free slots to waiting accounts, one per account per round.
    fn grant(self: &Arc<Self>, st: &mut SlotState) -> Vec<(oneshot::Sender<Slot>, Slot)> {
        let mut out = Vec::new();
        while st.free > 0 {
            let Some(account) = st.turns.pop_front() else {
                break;
            };
            let cap = st.per_account;
            let Some(tenant) = st.accounts.get_mut(&account) else {
                continue;
            };
            tenant.in_turns = false;
            let Some(tx) =
                std::iter::from_fn(|| tenant.queue.pop_front()).find(|tx| !tx.is_closed())
            else {
                continue;
            };
            tenant.running += 1;
            let again = tenant.running < cap && !tenant.queue.is_empty();
            if again {
                tenant.in_turns = true;
            }
            st.free -= 1;
            if again {
                st.turns.push_back(account.clone());
            }
            out.push((
                tx,
                Slot {
                    slots: Arc::clone(self),
                    account,
                },
            ));
        }
        out
    }

    /// Counts one more delivery of `account` waiting; returns how many waited before.
    fn start_waiting(&self, account: &str) -> usize {
        let mut st = self.state.lock().expect("not poisoned");
        let tenant = st.accounts.entry(account.to_owned()).or_default();
        tenant.waiting += 1;
        tenant.waiting - 1
    }

    fn stop_waiting(&self, account: &str) {
        let mut st = self.state.lock().expect("not poisoned");
        if let Some(tenant) = st.accounts.get_mut(account) {
            tenant.waiting -= 1;
            if tenant.idle() {
                st.accounts.remove(account);
            }
        }
    }

    fn waiting(&self, account: &str) -> usize {
        let st = self.state.lock().expect("not poisoned");
        st.accounts.get(account).map_or(0, |t| t.waiting)
    }

    /// Attempts `account` has under way in this process.
    pub fn running(&self, account: &str) -> usize {
        let st = self.state.lock().expect("not poisoned");
        st.accounts.get(account).map_or(0, |t| t.running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_host_and_port() {
        assert_eq!(destination("https://h.example/a?i=1"), "h.example:443");
        assert_eq!(destination("https://H.example:443/b?i=2"), "h.example:443");
        assert_eq!(destination("http://h.example/"), "h.example:80");
        assert_eq!(destination("http://h.example:8080/"), "h.example:8080");
        assert_eq!(destination("http://[::1]:9/"), "[::1]:9");
    }

    #[test]
    fn gates_cap_attempts_per_account_and_destination() {
        let d = Destinations::new(&DeliveryConfig::default());
        let a = d.gate("acct_a", "h:80", 2);
        let a1 = a.slots.clone().try_acquire_owned().unwrap();
        let _a2 = a.slots.clone().try_acquire_owned().unwrap();
        let again = d.gate("acct_a", "h:80", 2);
        assert!(
            again.slots.clone().try_acquire_owned().is_err(),
            "one gate per place"
        );
        let other = d.gate("acct_b", "h:80", 2);
        assert!(
            other.slots.clone().try_acquire_owned().is_ok(),
            "other accounts are unaffected"
        );
        drop(a1);
        assert!(a.slots.clone().try_acquire_owned().is_ok());
    }

    #[tokio::test]
    async fn slots_cap_each_account_and_go_round_robin() {
        let slots = Slots::new(3, 2);
        let a1 = slots.try_take("a").unwrap();
        let a2 = slots.try_take("a").unwrap();
        assert!(slots.try_take("a").is_none(), "a is at its cap");
        let b1 = slots.try_take("b").unwrap();
        assert!(slots.try_take("c").is_none(), "no slot left");
        // a queues many, c one: the next free slot goes to c, although a asked first.
        let mut a_waits: Vec<_> = (0..5)
            .map(|_| {
                let s = Arc::clone(&slots);
                tokio::spawn(async move { s.take("a").await })
            })
            .collect();
        tokio::task::yield_now().await;
        let s = Arc::clone(&slots);
        let c_wait = tokio::spawn(async move { s.take("c").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(b1);
        let c1 = tokio::time::timeout(Duration::from_secs(5), c_wait)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(slots.running("c"), 1);
        assert_eq!(slots.running("a"), 2);
        // a's own slots come back to a.
        drop(a1);
        let first = a_waits.remove(0);
        let _ = (a2, c1);
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if slots.running("a") == 2 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(got.is_ok());
        drop(first);
        drop(a_waits);
    }
}
