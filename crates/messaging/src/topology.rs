//! Names of everything on the broker, and what a consumer needs declared.
//!
//! With prefix `acp` and consumer `marzban-sync`:
//!
//! | name | what |
//! |---|---|
//! | `acp.events` | the durable topic exchange every event is published to |
//! | `acp.marzban-sync` | the consumer's durable quorum queue, bound with its patterns |
//! | `acp.marzban-sync.retry.5000` | a delay queue: messages wait 5000 ms, then dead-letter back to `acp.marzban-sync` |
//! | `acp.marzban-sync.parking` | messages that failed every attempt, with the error in headers |

use std::time::Duration;

use crate::retry::RetryPolicy;

/// Builds broker names under one prefix, so several deployments or tests share a broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (e.g. `acp`, or `t.relay.1a2b3c4d` in tests).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.events`: the topic exchange.
    pub fn exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// `<prefix>.<consumer>`: the consumer's work queue.
    pub fn queue(&self, consumer: &str) -> String {
        format!("{}.{consumer}", self.prefix)
    }

    /// `<prefix>.<consumer>.retry.<ms>`: the delay queue for one delay. Named by the delay so
    /// that changing the policy declares new queues instead of clashing with the arguments of
    /// existing ones.
    pub fn retry_queue(&self, consumer: &str, delay: Duration) -> String {
        format!("{}.{consumer}.retry.{}", self.prefix, delay.as_millis())
    }

    /// `<prefix>.<consumer>.parking`: where messages go after their last failed attempt.
    pub fn parking_queue(&self, consumer: &str) -> String {
        format!("{}.{consumer}.parking", self.prefix)
    }
}

/// One consumer's part of the topology: its name, the routing-key patterns it binds and its
/// retry policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Short, stable name: the queue suffix and the key in `processed_messages`.
    pub name: String,
    /// Topic patterns (`payment.completed`, `provider.notification.*`, `payment.#`).
    pub bindings: Vec<String>,
    /// Retry delays before parking.
    pub retry: RetryPolicy,
}

impl ConsumerSpec {
    /// A consumer with the default retry policy.
    pub fn new(
        name: impl Into<String>,
        bindings: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            bindings: bindings.into_iter().map(Into::into).collect(),
            retry: RetryPolicy::default(),
        }
    }

    /// Replaces the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The distinct delays, each of which has its own delay queue.
    pub fn distinct_delays(&self) -> Vec<Duration> {
        let mut delays = self.retry.delays().to_vec();
        delays.sort();
        delays.dedup();
        delays
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_scheme() {
        let n = Names::new("acp");
        assert_eq!(n.exchange(), "acp.events");
        assert_eq!(n.queue("marzban-sync"), "acp.marzban-sync");
        assert_eq!(
            n.retry_queue("marzban-sync", Duration::from_secs(5)),
            "acp.marzban-sync.retry.5000"
        );
        assert_eq!(n.parking_queue("bot"), "acp.bot.parking");
    }

    #[test]
    fn shared_delays_share_a_queue() {
        let spec =
            ConsumerSpec::new("c", ["a.b"]).with_retry(RetryPolicy::from_millis([50, 50, 10]));
        assert_eq!(
            spec.distinct_delays(),
            vec![Duration::from_millis(10), Duration::from_millis(50)]
        );
    }
}

/// Consumer names of the services (queue suffixes and `processed_messages.consumer`).
pub mod consumers {
    /// Applies provider notifications to payments.
    pub const PAYMENT_WORKER: &str = "payment-worker";
    /// Turns completed and refunded payments into panel access.
    pub const MARZBAN_SYNC: &str = "marzban-sync";
    /// Tells users about their payments and subscriptions in Telegram.
    pub const BOT: &str = "bot";
}

/// The consumers of the whole system and what they bind. Every process declares these at
/// start-up, so an event waits in its consumer's queue even while that service is not running
/// (or not deployed yet) instead of being dropped as unroutable.
pub fn system_consumers() -> Vec<ConsumerSpec> {
    vec![
        ConsumerSpec::new(consumers::PAYMENT_WORKER, ["provider.notification.*"]),
        ConsumerSpec::new(
            consumers::MARZBAN_SYNC,
            ["payment.completed", "payment.refunded", "grant.created"],
        ),
        ConsumerSpec::new(
            consumers::BOT,
            [
                "payment.completed",
                "payment.failed",
                "payment.refunded",
                "payment.underpaid",
                "subscription.activated",
                "subscription.revoked",
                "grant.activated",
                "grant.refused",
            ],
        ),
    ]
}
