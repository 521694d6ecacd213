//! Retry schedule for answers that leave the result unknown (5xx, 429, timeouts).

use std::time::Duration;

use crate::error::TransientFailure;

/// The longest pause an outside service can make us take: TronGrid's "suspended for N s", a
/// `Retry-After` from YooKassa or TronGrid. A longer ask is capped (and logged), so one answer
/// cannot stop the chain watcher or a payment call for hours.
pub const MAX_ASKED_PAUSE: Duration = Duration::from_secs(5 * 60);

/// What `service` asked us to wait, capped at [`MAX_ASKED_PAUSE`]; a longer ask is logged as a
/// warning naming the asked and the capped pause.
pub fn cap_asked_pause(service: &'static str, asked: Duration) -> Duration {
    if asked <= MAX_ASKED_PAUSE {
        return asked;
    }
    tracing::warn!(
        service,
        asked_secs = asked.as_secs(),
        capped_secs = MAX_ASKED_PAUSE.as_secs(),
        "{service} asked for a {}s pause; capped at {}s",
        asked.as_secs(),
        MAX_ASKED_PAUSE.as_secs()
    );
    MAX_ASKED_PAUSE
}

/// Bounded retries with a growing (Fibonacci) pause, as YooKassa recommends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// The first pause; later ones grow as 1, 1, 2, 3, 5, … times this.
    pub initial_backoff: Duration,
    /// No pause is longer than this.
    pub max_backoff: Duration,
    /// Per-attempt limit. YooKassa answers 500 itself after ~30 s, so the default waits longer.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            request_timeout: Duration::from_secs(35),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt number `attempt` (1-based). Rate limiting waits twice as
    /// long, or what the server asked for, within `max_backoff`.
    pub fn backoff(
        &self,
        attempt: u32,
        failure: &TransientFailure,
        retry_after: Option<Duration>,
    ) -> Duration {
        let (mut a, mut b) = (1u32, 1u32);
        for _ in 1..attempt {
            (a, b) = (b, a.saturating_add(b));
        }
        let base = self.initial_backoff.saturating_mul(a);
        let pause = match failure {
            TransientFailure::RateLimited => retry_after.unwrap_or_else(|| base.saturating_mul(2)),
            _ => base,
        };
        pause.min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_pauses_are_capped_at_five_minutes() {
        assert_eq!(
            cap_asked_pause("TronGrid", Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            cap_asked_pause("TronGrid", MAX_ASKED_PAUSE),
            MAX_ASKED_PAUSE
        );
        assert_eq!(
            cap_asked_pause("YooKassa", Duration::from_secs(301)),
            MAX_ASKED_PAUSE
        );
        assert_eq!(
            cap_asked_pause("YooKassa", Duration::from_secs(u64::MAX)),
            MAX_ASKED_PAUSE
        );
        assert_eq!(MAX_ASKED_PAUSE, Duration::from_secs(300));
    }

    #[test]
    fn grows_like_fibonacci_and_is_capped() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(450),
            ..RetryPolicy::default()
        };
        let e = TransientFailure::ServerError(500);
        let pauses: Vec<u128> = (1..=6)
            .map(|n| policy.backoff(n, &e, None).as_millis())
            .collect();
        assert_eq!(pauses, vec![100, 100, 200, 300, 450, 450]);
        let limited = policy.backoff(1, &TransientFailure::RateLimited, None);
        assert_eq!(limited, Duration::from_millis(200));
        let asked = policy.backoff(
            1,
            &TransientFailure::RateLimited,
            Some(Duration::from_secs(60)),
        );
        assert_eq!(asked, Duration::from_millis(450));
    }
}
