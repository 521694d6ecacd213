//! Keyed limits with a bounded key table.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, RateLimiter, StateStore};

use crate::{METRIC_KEYS, METRIC_OVERFLOW, Rate, count};

/// How often a keyed limiter drops the keys whose budget is full again (done by whichever
/// check comes first after the interval: no background task).
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What a limit says about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the budget; the next event fits after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed)
    }

    /// Whole seconds to tell a client (`Retry-After`, "try again in N s"): rounded up, at
    /// least 1.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Decision::Allowed => 0,
            Decision::Limited { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                secs.max(1)
            }
        }
    }
}

/// The key table: at most `max_keys` entries; a new key that finds it full shares the
/// overflow state (one budget for all of them). governor's own `HashMapStateStore` grows
/// without a bound between sweeps; this one cannot.
struct BoundedStore<K> {
    name: &'static str,
    max_keys: usize,
    map: Mutex<HashMap<K, InMemoryState>>,
    overflow: InMemoryState,
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if map.len() < self.max_keys {
            return map
                .entry(key.clone())
                .or_default()
                .measure_and_replace(&NotKeyed::NonKey, f);
        }
        drop(map);
        metrics::counter!(METRIC_OVERFLOW, "limiter" => self.name).increment(1);
        self.overflow.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// The theoretical arrival time a state holds (0 for a fresh one), read without changing it.
fn tat(state: &InMemoryState) -> u64 {
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .map_or_else(|tat| tat.map_or(0, Nanos::as_u64), |()| 0)
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, state| tat(state) > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Limiter<K> = RateLimiter<K, BoundedStore<K>, DefaultClock>;

struct Inner<K: Hash + Eq + Clone> {
    limiter: Limiter<K>,
    /// Keys over their budget, until when: lets a caller refuse a key before doing the work
    /// that decides whether the event counts (see [`Keyed::penalized`]). Bounded like the
    /// key table; expired entries go at each sweep.
    penalties: Mutex<HashMap<K, <DefaultClock as Clock>::Instant>>,
    max_keys: usize,
    /// Nanoseconds (of the limiter's clock, since `origin`) of the last sweep.
    last_sweep: AtomicU64,
    origin: <DefaultClock as Clock>::Instant,
}

/// One budget per key, at most `max_keys` keys (see the crate docs). `None` rate: off, every
/// check allowed and nothing stored.
pub struct Keyed<K: Hash + Eq + Clone> {
    name: &'static str,
    rate: Option<Rate>,
    inner: Option<Inner<K>>,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for Keyed<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyed")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    /// `name` labels the metrics (one of ours, never input); `max_keys` ≥ 1 bounds the table.
    pub fn new(name: &'static str, rate: Option<Rate>, max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let inner = rate.map(|rate| {
            let clock = DefaultClock::default();
            let origin = clock.now();
            let store = BoundedStore {
                name,
                max_keys,
                map: Mutex::new(HashMap::new()),
                overflow: InMemoryState::default(),
            };
            Inner {
                limiter: RateLimiter::new(rate.quota(), store, clock),
                penalties: Mutex::new(HashMap::new()),
                max_keys,
                last_sweep: AtomicU64::new(0),
                origin,
            }
        });
        Self { name, rate, inner }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// Counts one event of `key` against its budget.
    pub fn check(&self, key: &K) -> Decision {
        let Some(inner) = &self.inner else {
            return Decision::Allowed;
        };
        self.maybe_sweep(inner);
        let decision = match inner.limiter.check_key(key) {
            Ok(()) => Decision::Allowed,
            Err(not_until) => Decision::Limited {
                retry_after: not_until.wait_time_from(inner.limiter.clock().now()),
            },
        };
        count(
            self.name,
            if decision.is_allowed() {
                "allowed"
            } else {
                "limited"
            },
        );
        decision
    }

    /// [`Keyed::check`] for an event that counts only once it has happened (a request that
    /// failed verification): when it is over the budget, `key` is remembered as penalized
    /// until its budget has room again, so [`Keyed::penalized`] can refuse its next events
    /// before any work is spent on them.
    pub fn check_failure(&self, key: &K) -> Decision {
        let decision = self.check(key);
        if let (Decision::Limited { retry_after }, Some(inner)) = (decision, &self.inner) {
            let until = inner.limiter.clock().now() + Nanos::from(retry_after);
            let mut penalties = inner
                .penalties
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A full table only loses the shortcut: the next failure is limited anyway.
            if penalties.len() < inner.max_keys || penalties.contains_key(key) {
                penalties.insert(key.clone(), until);
            }
        }
        decision
    }

    /// `Limited` while `key` is penalized (see [`Keyed::check_failure`]); counts the refusal.
    /// Costs one lookup, spends nothing of the budget.
    pub fn penalized(&self, key: &K) -> Decision {
        let Some(inner) = &self.inner else {
            return Decision::Allowed;
        };
        let now = inner.limiter.clock().now();
        let mut penalties = inner
            .penalties
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match penalties.get(key) {
            Some(until) if *until > now => {
                let retry_after = Duration::from(until.duration_since(now));
                drop(penalties);
                count(self.name, "limited");
                Decision::Limited { retry_after }
            }
            Some(_) => {
                penalties.remove(key);
                Decision::Allowed
            }
            None => Decision::Allowed,
        }
    }

    /// Keys held (budget table, not counting penalties).
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |inner| inner.limiter.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every key whose budget is full again (indistinguishable from a new key) and every
    /// expired penalty; records the table size.
    pub fn sweep(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        inner.limiter.retain_recent();
        inner.limiter.shrink_to_fit();
        let now = inner.limiter.clock().now();
        let mut penalties = inner
            .penalties
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        penalties.retain(|_, until| *until > now);
        penalties.shrink_to_fit();
        drop(penalties);
        metrics::gauge!(METRIC_KEYS, "limiter" => self.name).set(inner.limiter.len() as f64);
    }

    fn maybe_sweep(&self, inner: &Inner<K>) {
        let now = u64::from(inner.limiter.clock().now().duration_since(inner.origin));
        let last = inner.last_sweep.load(Ordering::Relaxed);
        let due = last + SWEEP_EVERY.as_nanos() as u64;
        if now >= due
            && inner
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits() {
        let limit = Keyed::new("test", Some(Rate::per_second(10, 3)), 100);
        for _ in 0..3 {
            assert_eq!(limit.check(&1), Decision::Allowed);
        }
        let Decision::Limited { retry_after } = limit.check(&1) else {
            panic!("the fourth is over the burst")
        };
        assert!(retry_after <= Duration::from_millis(100), "{retry_after:?}");
        assert_eq!(limit.check(&1).retry_after_secs(), 1);
        assert_eq!(
            limit.check(&2),
            Decision::Allowed,
            "another key, its own budget"
        );
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(limit.check(&1), Decision::Allowed, "refilled");
    }

    #[test]
    fn off_allows_everything_and_stores_nothing() {
        let limit = Keyed::new("test", None, 1);
        for key in 0..1000 {
            assert!(limit.check(&key).is_allowed());
            assert!(limit.check_failure(&key).is_allowed());
        }
        assert!(limit.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_new_keys_share_the_overflow() {
        let limit = Keyed::new("test", Some(Rate::per_minute(1, 2)), 100);
        for key in 0..100_000u32 {
            limit.check(&key);
        }
        assert_eq!(limit.len(), 100, "never more than max_keys");
        // The overflow budget (2) went to the first keys past the table; now it is spent.
        assert!(!limit.check(&1_000_000).is_allowed());
        // Keys in the table keep their own budgets.
        assert!(limit.check(&5).is_allowed());
    }

    #[test]
    fn a_sweep_drops_keys_whose_budget_is_full_again() {
        let limit = Keyed::new("test", Some(Rate::per_second(100, 1)), 1000);
        for key in 0..500u32 {
            limit.check(&key);
        }
        assert_eq!(limit.len(), 500);
        std::thread::sleep(Duration::from_millis(30));
        limit.sweep();
        assert_eq!(limit.len(), 0);
    }

    #[test]
    fn failures_over_the_budget_penalize_the_key_until_it_has_room() {
        let limit = Keyed::new("test", Some(Rate::per_second(20, 2)), 10);
        assert!(limit.penalized(&"a").is_allowed());
        assert!(limit.check_failure(&"a").is_allowed());
        assert!(limit.check_failure(&"a").is_allowed());
        assert!(limit.penalized(&"a").is_allowed(), "within the budget");
        assert!(!limit.check_failure(&"a").is_allowed());
        assert!(!limit.penalized(&"a").is_allowed(), "over it");
        assert!(limit.penalized(&"b").is_allowed(), "others are not");
        std::thread::sleep(Duration::from_millis(60));
        assert!(limit.penalized(&"a").is_allowed(), "room again");
    }
}
