//! Process-wide limits on the calls we make to outside services.

use std::sync::OnceLock;
use std::time::Instant;

use governor::DefaultDirectRateLimiter;

use crate::{METRIC_WAIT, Rate, count};

/// One process-wide budget for calls to one outside service. The first use (or
/// [`Outbound::configure`], called at start-up from the settings) fixes the rate for the
/// life of the process.
pub struct Outbound {
    name: &'static str,
    default: Option<Rate>,
    limiter: OnceLock<Option<(Rate, DefaultDirectRateLimiter)>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("name", &self.name)
            .field("rate", &self.rate())
            .finish()
    }
}

/// Telegram Bot API calls that send something (messages, photos, invoices) and the worker's
/// Telegram look-ups: Telegram allows a bot about 30 messages a second overall.
pub static TELEGRAM: Outbound = Outbound::new("telegram_api", Some(Rate::per_second(30, 30)));
/// Every YooKassa API call of the process.
pub static YOOKASSA: Outbound = Outbound::new("yookassa_api", Some(Rate::per_second(50, 50)));
/// Every TronGrid API call of the process (TronGrid allows about 15 a second with a key).
pub static TRONGRID: Outbound = Outbound::new("trongrid_api", Some(Rate::per_second(10, 10)));

impl Outbound {
    pub const fn new(name: &'static str, default: Option<Rate>) -> Self {
        Self {
            name,
            default,
            limiter: OnceLock::new(),
        }
    }

    /// Sets the rate (`None`: unlimited) unless the process already fixed one; `false` then.
    pub fn configure(&self, rate: Option<Rate>) -> bool {
        let mut fresh = false;
        self.limiter.get_or_init(|| {
            fresh = true;
            Self::build(rate)
        });
        if !fresh && self.rate() != rate {
            tracing::debug!(
                limiter = self.name,
                current = ?self.rate(),
                asked = ?rate,
                "outside-call limit already fixed for this process"
            );
        }
        fresh
    }

    fn build(rate: Option<Rate>) -> Option<(Rate, DefaultDirectRateLimiter)> {
        rate.map(|rate| (rate, governor::RateLimiter::direct(rate.quota())))
    }

    fn limiter(&self) -> Option<&(Rate, DefaultDirectRateLimiter)> {
        self.limiter
            .get_or_init(|| Self::build(self.default))
            .as_ref()
    }

    pub fn rate(&self) -> Option<Rate> {
        self.limiter().map(|(rate, _)| *rate)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Waits until the next call fits the budget (at once when it does).
    pub async fn wait(&self) {
        let Some((_, limiter)) = self.limiter() else {
            return;
        };
        if limiter.check().is_ok() {
            count(self.name, "allowed");
            return;
        }
        let started = Instant::now();
        limiter.until_ready().await;
        let waited = started.elapsed();
        count(self.name, "waited");
        metrics::histogram!(METRIC_WAIT, "limiter" => self.name).record(waited.as_secs_f64());
        if waited.as_secs() >= 5 {
            tracing::warn!(
                limiter = self.name,
                waited_ms = waited.as_millis() as u64,
                "an outside call waited long for its rate-limit slot"
            );
        }
    }
}

/// The outside-call limits of a process, as its settings give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundLimits {
    pub telegram: Option<Rate>,
    pub yookassa: Option<Rate>,
    pub trongrid: Option<Rate>,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        Self {
            telegram: TELEGRAM.default,
            yookassa: YOOKASSA.default,
            trongrid: TRONGRID.default,
        }
    }
}

impl OutboundLimits {
    /// Fixes the process-wide limits (the first call in a process wins).
    pub fn apply(&self) {
        for (limit, rate) in [
            (&TELEGRAM, self.telegram),
            (&YOOKASSA, self.yookassa),
            (&TRONGRID, self.trongrid),
        ] {
            if limit.configure(rate) {
                tracing::info!(limiter = limit.name, rate = ?rate.map(|r| r.to_string()), "outside-call limit");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn calls_over_the_budget_wait_for_their_slot() {
        static LIMIT: Outbound = Outbound::new("test_api", Some(Rate::per_second(20, 2)));
        let started = Instant::now();
        for _ in 0..6 {
            LIMIT.wait().await;
        }
        // Two at once, then one every 50 ms.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        assert!(!LIMIT.configure(None), "fixed by the first use");
        assert_eq!(LIMIT.rate(), Some(Rate::per_second(20, 2)));
    }

    #[tokio::test]
    async fn off_never_waits() {
        static LIMIT: Outbound = Outbound::new("test_off", Some(Rate::per_second(1, 1)));
        assert!(LIMIT.configure(None));
        let started = Instant::now();
        for _ in 0..1000 {
            LIMIT.wait().await;
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
