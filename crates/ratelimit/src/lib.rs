//! Rate limits of the whole system (issue 18), on [`governor`]'s GCRA:
//!
//! - [`Keyed`]: one budget per key (a client address, a Telegram user) for what outsiders can
//!   send us. Its key table is bounded: at most `max_keys` keys, idle ones swept every
//!   [`SWEEP_EVERY`], and a key that finds the table full shares one overflow budget with every
//!   other such key — so no stream of new keys can grow memory.
//! - [`Outbound`]: one process-wide budget per outside service we call (Telegram, YooKassa,
//!   TronGrid). A call waits for its slot (`until_ready`) instead of failing, so our own
//!   loops — reconciliation, notifications, the chain watcher — can never exceed the service's
//!   limits.
//!
//! Every decision is counted in [`METRIC_DECISIONS`] with two labels from fixed sets: the
//! limiter's name (a `&'static str` of ours) and the outcome.

mod keyed;
mod outbound;
mod rate;

pub use keyed::{Decision, Keyed, SWEEP_EVERY};
pub use outbound::{Outbound, OutboundLimits, TELEGRAM, TRONGRID, YOOKASSA};
pub use rate::{Rate, RateError, Setting};

/// Counter: limit decisions by `limiter` and `outcome` — `allowed` or `limited` for the keyed
/// limits, `allowed` or `waited` for the outside calls.
pub const METRIC_DECISIONS: &str = "rate_limit_decisions_total";
/// Counter: requests whose key found its limiter's table full and used the shared overflow
/// budget, by `limiter`.
pub const METRIC_OVERFLOW: &str = "rate_limit_overflow_total";
/// Gauge: keys held by a keyed limiter after its last sweep, by `limiter`.
pub const METRIC_KEYS: &str = "rate_limit_keys";
/// Histogram (seconds): how long an outside call waited for its slot, by `limiter`.
pub const METRIC_WAIT: &str = "rate_limit_wait_seconds";

fn count(limiter: &'static str, outcome: &'static str) {
    metrics::counter!(METRIC_DECISIONS, "limiter" => limiter, "outcome" => outcome).increment(1);
}
