//! How often and how late a failed message is tried again before it is parked.

use std::time::Duration;

/// Delays between attempts: after the `n`-th failed attempt the message waits `delays[n-1]`
/// and is delivered again; once every delay is used up the next failure parks it. So a
/// message is tried at most `delays.len() + 1` times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    delays: Vec<Duration>,
}

impl RetryPolicy {
    /// A policy with the given delays, shortest first by convention (not required). Delays are
    /// kept to whole milliseconds, the unit RabbitMQ's `x-message-ttl` takes.
    pub fn new(delays: impl IntoIterator<Item = Duration>) -> Self {
        Self {
            delays: delays
                .into_iter()
                .map(|d| Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX)))
                .collect(),
        }
    }

    /// Delays given in milliseconds (handy for settings and tests).
    pub fn from_millis(delays: impl IntoIterator<Item = u64>) -> Self {
        Self::new(delays.into_iter().map(Duration::from_millis))
    }

    /// Park at the first failure.
    pub fn no_retries() -> Self {
        Self { delays: Vec::new() }
    }

    /// The configured delays.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// Total number of attempts before parking.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len())
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1)
    }

    /// The delay before the next attempt after `failed_attempts` failures, or `None` when the
    /// message is to be parked.
    pub fn delay_after(&self, failed_attempts: u32) -> Option<Duration> {
        let index = usize::try_from(failed_attempts.checked_sub(1)?).ok()?;
        self.delays.get(index).copied()
    }
}

impl Default for RetryPolicy {
    /// 1 s, 5 s, 30 s, 2 min, 10 min: rides out a restart of a dependency, then parks after
    /// about a quarter of an hour.
    fn default() -> Self {
        Self::from_millis([1_000, 5_000, 30_000, 120_000, 600_000])
    }
}

impl std::str::FromStr for RetryPolicy {
    type Err = std::num::ParseIntError;

    /// Comma-separated delays in milliseconds, as the `*_RETRY_DELAYS_MS` settings write
    /// them (`1000, 5000, 30000`).
    fn from_str(list: &str) -> Result<Self, Self::Err> {
        list.split(',')
            .map(|ms| ms.trim().parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .map(Self::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comma_separated_milliseconds() {
        assert_eq!(
            "100, 200,400".parse::<RetryPolicy>(),
            Ok(RetryPolicy::from_millis([100, 200, 400]))
        );
        assert!("1s".parse::<RetryPolicy>().is_err());
        assert!("100,,200".parse::<RetryPolicy>().is_err());
    }

    #[test]
    fn delays_are_used_in_order_then_park() {
        let p = RetryPolicy::from_millis([10, 20]);
        assert_eq!(p.max_attempts(), 3);
        assert_eq!(p.delay_after(0), None);
        assert_eq!(p.delay_after(1), Some(Duration::from_millis(10)));
        assert_eq!(p.delay_after(2), Some(Duration::from_millis(20)));
        assert_eq!(p.delay_after(3), None);
        assert_eq!(RetryPolicy::no_retries().delay_after(1), None);
        assert_eq!(RetryPolicy::no_retries().max_attempts(), 1);
    }
}
