//! The worker's settings: its ops address, the consumer's retry policy, the reconciliation
//! schedule and the payment providers it asks.
//!
//! [`ServiceSettings`] deserialises from the whole flat environment (every variable, through
//! the reader `domain::env::Vars`) rather than from named fields, because the provider
//! settings are read by `payment_core::PaymentSettings::from_vars` from the same variables.
//! So `source.load::<ServiceSettings>()` (what the standalone binary does) and
//! [`ServiceSettings::load`] give the same result. Every error names its variable.

use std::time::Duration;

use domain::env::{EnvVar, Vars};
use messaging::RetryPolicy;
use payment_core::PaymentSettings;
use serde::Deserialize;
use service_kit::SettingsError;
use service_kit::settings::Source;

/// Default of `WORKER_OPS_BIND`.
pub const DEFAULT_OPS_BIND: &str = "0.0.0.0:9081";

/// The worker's own variables ([`env_vars`] adds the common and the provider ones).
pub const VARS: &[EnvVar] = &[
    EnvVar::default("WORKER_OPS_BIND", DEFAULT_OPS_BIND),
    EnvVar::optional("WORKER_BIND"),
    EnvVar::default("WORKER_PREFETCH", "8"),
    EnvVar::default("WORKER_RETRY_DELAYS_MS", "1000,5000,30000,120000,600000"),
    EnvVar::default("RECONCILE_ENABLED", "true"),
    EnvVar::default("RECONCILE_POLL_MS", "10000"),
    EnvVar::default("RECONCILE_BATCH_SIZE", "50"),
    EnvVar::default("RECONCILE_FIRST_CHECK_SECS", "60"),
    EnvVar::default("RECONCILE_FAST_INTERVAL_SECS", "300"),
    EnvVar::default("RECONCILE_FAST_PHASE_SECS", "3600"),
    EnvVar::default("RECONCILE_SLOW_INTERVAL_SECS", "3600"),
    EnvVar::default("RECONCILE_GRACE_SECS", "3600"),
    EnvVar::default("RECONCILE_DEFAULT_WINDOW_SECS", "86400"),
    EnvVar::default("RECONCILE_LEASE_SECS", "300"),
    EnvVar::default("AUTOPAY_LEAD_HOURS", "24"),
    EnvVar::default("AUTOPAY_POLL_SECS", "60"),
];

/// Every variable the `payment-worker` binary reads.
pub fn env_vars() -> Vec<EnvVar> {
    domain::env::join(&[
        service_kit::settings::COMMON_VARS,
        payment_core::settings::VARS,
        VARS,
    ])
}

/// This service's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "Vars")]
pub struct ServiceSettings {
    /// `WORKER_OPS_BIND` (older name `WORKER_BIND`; default `0.0.0.0:9081`): health and
    /// metrics. `None` when the process serves ops once for all its services (the standalone
    /// binary).
    pub ops_bind: Option<String>,
    /// How notifications are consumed.
    pub consumer: ConsumerSettings,
    /// When pending payments are re-checked.
    pub reconcile: ReconcileSettings,
    /// When subscriptions with a saved method are renewed automatically.
    pub autopay: crate::autopay::AutopaySettings,
    /// The providers the worker asks (`YOOKASSA_*`, …); a provider is on when its settings are.
    pub payments: PaymentSettings,
}

/// How the notification consumer runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// `WORKER_PREFETCH` (default 8): notifications in flight per worker instance. Each holds a
    /// database connection while the provider is asked, so keep it below the pool size.
    pub prefetch: u16,
    /// `WORKER_RETRY_DELAYS_MS` (default `1000,5000,30000,120000,600000`): the delays between
    /// attempts of a failed notification (e.g. the provider answered 500); after the last one
    /// the message is parked.
    pub retry_delays: Vec<Duration>,
}

impl ConsumerSettings {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(self.retry_delays.iter().copied())
    }
}

/// The reconciliation schedule. A pending payment is first checked `first_check` after its
/// creation, then every `fast_interval` while it is younger than `fast_phase`, then every
/// `slow_interval`, until the provider's expiry plus `grace` (or, without an expiry,
/// `default_window` after creation plus `grace`). After that it stays pending and is no longer
/// polled: it is never expired without the provider saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// `RECONCILE_ENABLED` (default `true`).
    pub enabled: bool,
    /// `RECONCILE_POLL_MS` (default 10000): how often due payments are looked for.
    pub poll_interval: Duration,
    /// `RECONCILE_BATCH_SIZE` (default 50): payments claimed per poll.
    pub batch_size: u64,
    /// `RECONCILE_FIRST_CHECK_SECS` (default 60).
    pub first_check: Duration,
    /// `RECONCILE_FAST_INTERVAL_SECS` (default 300).
    pub fast_interval: Duration,
    /// `RECONCILE_FAST_PHASE_SECS` (default 3600): payment age up to which `fast_interval`
    /// applies.
    pub fast_phase: Duration,
    /// `RECONCILE_SLOW_INTERVAL_SECS` (default 3600).
    pub slow_interval: Duration,
    /// `RECONCILE_GRACE_SECS` (default 3600): checks continue this long past the expiry.
    pub grace: Duration,
    /// `RECONCILE_DEFAULT_WINDOW_SECS` (default 86400): the expiry assumed for a payment the
    /// provider gave none (YooKassa gives none for `pending`; it cancels unpaid ones itself).
    pub default_window: Duration,
    /// `RECONCILE_LEASE_SECS` (default 300): a claimed payment is not claimed again for this
    /// long, so an instance that dies mid-check hands it back after the lease.
    pub lease: Duration,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval: Duration::from_secs(10),
            batch_size: 50,
            first_check: Duration::from_secs(60),
            fast_interval: Duration::from_secs(300),
            fast_phase: Duration::from_secs(3600),
            slow_interval: Duration::from_secs(3600),
            grace: Duration::from_secs(3600),
            default_window: Duration::from_secs(86_400),
            lease: Duration::from_secs(300),
        }
    }
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            prefetch: DEFAULT_PREFETCH,
            retry_delays: DEFAULT_RETRY_DELAYS_MS
                .iter()
                .copied()
                .map(Duration::from_millis)
                .collect(),
        }
    }
}

const DEFAULT_PREFETCH: u16 = 8;
const DEFAULT_RETRY_DELAYS_MS: &[u64] = &[1_000, 5_000, 30_000, 120_000, 600_000];

impl ServiceSettings {
    /// Reads and validates the worker's settings from `source`.
    pub fn load(source: &Source) -> Result<Self, SettingsError> {
        source.load()
    }
}

impl TryFrom<Vars> for ServiceSettings {
    type Error = SettingsError;

    fn try_from(vars: Vars) -> Result<Self, Self::Error> {
        let consumer = ConsumerSettings {
            prefetch: vars.parse_or("WORKER_PREFETCH", DEFAULT_PREFETCH)?,
            retry_delays: millis_list(&vars, "WORKER_RETRY_DELAYS_MS", DEFAULT_RETRY_DELAYS_MS)?,
        };
        if consumer.prefetch == 0 {
            return Err(SettingsError::invalid(
                "WORKER_PREFETCH",
                "must be at least 1",
            ));
        }
        let secs = |name, default: Duration| -> Result<Duration, SettingsError> {
            Ok(vars.parse(name)?.map_or(default, Duration::from_secs))
        };
        let millis = |name, default: Duration| -> Result<Duration, SettingsError> {
            Ok(vars.parse(name)?.map_or(default, Duration::from_millis))
        };
        let d = ReconcileSettings::default();
        let reconcile = ReconcileSettings {
            enabled: vars.flag("RECONCILE_ENABLED")?.unwrap_or(d.enabled),
            poll_interval: millis("RECONCILE_POLL_MS", d.poll_interval)?,
            batch_size: vars.parse_or("RECONCILE_BATCH_SIZE", d.batch_size)?,
            first_check: secs("RECONCILE_FIRST_CHECK_SECS", d.first_check)?,
            fast_interval: secs("RECONCILE_FAST_INTERVAL_SECS", d.fast_interval)?,
            fast_phase: secs("RECONCILE_FAST_PHASE_SECS", d.fast_phase)?,
            slow_interval: secs("RECONCILE_SLOW_INTERVAL_SECS", d.slow_interval)?,
            grace: secs("RECONCILE_GRACE_SECS", d.grace)?,
            default_window: secs("RECONCILE_DEFAULT_WINDOW_SECS", d.default_window)?,
            lease: secs("RECONCILE_LEASE_SECS", d.lease)?,
        };
        for (name, value) in [
            ("RECONCILE_POLL_MS", reconcile.poll_interval),
            ("RECONCILE_FAST_INTERVAL_SECS", reconcile.fast_interval),
            ("RECONCILE_SLOW_INTERVAL_SECS", reconcile.slow_interval),
            ("RECONCILE_LEASE_SECS", reconcile.lease),
        ] {
            if value.is_zero() {
                return Err(SettingsError::invalid(name, "must be greater than 0"));
            }
        }
        if reconcile.batch_size == 0 {
            return Err(SettingsError::invalid(
                "RECONCILE_BATCH_SIZE",
                "must be at least 1",
            ));
        }
        let a = crate::autopay::AutopaySettings::default();
        let autopay = crate::autopay::AutopaySettings {
            lead: vars
                .parse::<u64>("AUTOPAY_LEAD_HOURS")?
                .map_or(a.lead, |h| Duration::from_secs(h * 3600)),
            poll_interval: secs("AUTOPAY_POLL_SECS", a.poll_interval)?,
            batch_size: a.batch_size,
        };
        if autopay.poll_interval.is_zero() {
            return Err(SettingsError::invalid(
                "AUTOPAY_POLL_SECS",
                "must be greater than 0",
            ));
        }
        let payments = PaymentSettings::from_vars(&vars).map_err(|e| match e {
            payment_core::SettingsError::Missing(name) => SettingsError::Missing {
                name: name.to_owned(),
            },
            payment_core::SettingsError::Invalid { var, reason } => {
                SettingsError::invalid(var, reason)
            }
            other @ payment_core::SettingsError::DuplicateProvider(_) => {
                SettingsError::invalid("payment providers", other.to_string())
            }
        })?;
        Ok(Self {
            ops_bind: Some(
                vars.first_of(&["WORKER_OPS_BIND", "WORKER_BIND"])
                    .unwrap_or(DEFAULT_OPS_BIND)
                    .to_owned(),
            ),
            consumer,
            reconcile,
            autopay,
            payments,
        })
    }
}

/// Milliseconds separated by commas or spaces, or `default` when unset.
fn millis_list(
    vars: &Vars,
    name: &'static str,
    default: &[u64],
) -> Result<Vec<Duration>, SettingsError> {
    let Some(raw) = vars.get(name) else {
        return Ok(default.iter().copied().map(Duration::from_millis).collect());
    };
    raw.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| SettingsError::invalid(name, format!("{part:?}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = ServiceSettings::load(&Source::map([])).unwrap();
        assert_eq!(s.ops_bind.as_deref(), Some(DEFAULT_OPS_BIND));
        assert_eq!(s.consumer, ConsumerSettings::default());
        assert_eq!(s.consumer.retry_policy().max_attempts(), 6);
        assert_eq!(s.reconcile, ReconcileSettings::default());
        assert_eq!(s.reconcile.first_check, Duration::from_secs(60));
        assert!(s.payments.yookassa.is_none());
    }

    #[test]
    fn the_older_worker_bind_names_the_ops_address_too() {
        let old = ServiceSettings::load(&Source::map([("WORKER_BIND", "127.0.0.1:8081")])).unwrap();
        assert_eq!(old.ops_bind.as_deref(), Some("127.0.0.1:8081"));
        let both = ServiceSettings::load(&Source::map([
            ("WORKER_BIND", "127.0.0.1:8081"),
            ("WORKER_OPS_BIND", "127.0.0.1:9091"),
        ]))
        .unwrap();
        assert_eq!(both.ops_bind.as_deref(), Some("127.0.0.1:9091"));
    }

    #[test]
    fn every_variable() {
        let s = ServiceSettings::load(&Source::map([
            ("WORKER_OPS_BIND", "127.0.0.1:0"),
            ("WORKER_PREFETCH", "4"),
            ("WORKER_RETRY_DELAYS_MS", "100, 200 300"),
            ("RECONCILE_ENABLED", "off"),
            ("RECONCILE_POLL_MS", "250"),
            ("RECONCILE_BATCH_SIZE", "7"),
            ("RECONCILE_FIRST_CHECK_SECS", "1"),
            ("RECONCILE_FAST_INTERVAL_SECS", "2"),
            ("RECONCILE_FAST_PHASE_SECS", "3"),
            ("RECONCILE_SLOW_INTERVAL_SECS", "4"),
            ("RECONCILE_GRACE_SECS", "5"),
            ("RECONCILE_DEFAULT_WINDOW_SECS", "6"),
            ("RECONCILE_LEASE_SECS", "8"),
            ("YOOKASSA_SHOP_ID", "100500"),
            ("YOOKASSA_SECRET_KEY", "secret"),
            ("YOOKASSA_API_URL", "http://127.0.0.1:1/v3"),
        ]))
        .unwrap();
        assert_eq!(s.ops_bind.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(s.consumer.prefetch, 4);
        assert_eq!(
            s.consumer.retry_delays,
            [100, 200, 300].map(Duration::from_millis)
        );
        let r = &s.reconcile;
        assert!(!r.enabled);
        assert_eq!(r.poll_interval, Duration::from_millis(250));
        assert_eq!(r.batch_size, 7);
        assert_eq!(
            [
                r.first_check,
                r.fast_interval,
                r.fast_phase,
                r.slow_interval,
                r.grace,
                r.default_window,
                r.lease
            ],
            [1, 2, 3, 4, 5, 6, 8].map(Duration::from_secs)
        );
        let yk = s.payments.yookassa.as_ref().unwrap();
        assert_eq!(yk.api_url, "http://127.0.0.1:1/v3");
        assert!(!format!("{s:?}").contains("\"secret\""), "secret printed");
    }

    #[test]
    fn errors_name_the_variable() {
        for (name, value) in [
            ("WORKER_PREFETCH", "0"),
            ("WORKER_PREFETCH", "many"),
            ("WORKER_RETRY_DELAYS_MS", "1,x"),
            ("RECONCILE_ENABLED", "maybe"),
            ("RECONCILE_POLL_MS", "0"),
            ("RECONCILE_BATCH_SIZE", "-1"),
            ("RECONCILE_FIRST_CHECK_SECS", "1.5"),
            ("RECONCILE_LEASE_SECS", "0"),
            ("YOOKASSA_SHOP_ID", "100500"),
        ] {
            let err = ServiceSettings::load(&Source::map([(name, value)])).unwrap_err();
            let expected = if name == "YOOKASSA_SHOP_ID" {
                "YOOKASSA_SECRET_KEY"
            } else {
                name
            };
            assert!(err.to_string().contains(expected), "{name}={value}: {err}");
        }
    }
}
