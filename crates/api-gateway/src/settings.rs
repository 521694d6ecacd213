//! The gateway's settings, read from the same flat environment as every service (DESIGN §8).
//!
//! The provider settings (`YOOKASSA_*`, `YOOKASSA_ALLOWED_IPS`, `TRUSTED_PROXIES`) are read by
//! `payment-core`'s own loader over the same variables, so one environment drives both.

use std::path::PathBuf;

use domain::env::{EnvVar, Vars, invalid};
use domain::trial::TrialPolicy;
use payment_core::{IpAllowList, PaymentSettings};
use ratelimit::{Rate, Setting};
use secrecy::SecretString;
use serde::Deserialize;

use crate::checkout::CheckoutPolicy;

/// Default `GATEWAY_BIND`: the public port (webhooks and the API only).
pub const DEFAULT_BIND: &str = "0.0.0.0:8080";
/// Default `GATEWAY_OPS_BIND`: `/health/live`, `/health/ready` and `/metrics`.
pub const DEFAULT_OPS_BIND: &str = "0.0.0.0:9080";
/// Default `GATEWAY_MAX_BODY_BYTES`: 64 KiB, on webhooks and the API alike.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default `CRYPTO_WEBHOOK_TOLERANCE_SECS`: how far a signed timestamp may be from our clock.
pub const DEFAULT_SIGNATURE_TOLERANCE_SECS: u64 = 300;
/// Default `GATEWAY_WEBHOOK_LIMIT`: webhook requests that fail the source or signature check,
/// per client address.
pub const DEFAULT_WEBHOOK_LIMIT: Rate = Rate::per_second(5, 20);
/// Default `GATEWAY_API_LIMIT`: requests without a valid bearer token (the API, unknown
/// routes), per client address.
pub const DEFAULT_API_LIMIT: Rate = Rate::per_second(10, 20);
/// Default `GATEWAY_API_TOKEN_LIMIT`: requests with a valid service or admin token, per client
/// address — the bot's checkouts for all its users come from one address.
pub const DEFAULT_API_TOKEN_LIMIT: Rate = Rate::per_second(200, 400);
/// Default `GATEWAY_LIMIT_KEYS`: client addresses each limit keeps a budget for.
pub const DEFAULT_LIMIT_KEYS: usize = 50_000;

/// The gateway's own variables ([`env_vars`] adds the common and the provider ones).
pub const VARS: &[EnvVar] = &[
    EnvVar::default("GATEWAY_BIND", DEFAULT_BIND),
    EnvVar::default("GATEWAY_OPS_BIND", DEFAULT_OPS_BIND),
    EnvVar::default("GATEWAY_WORKERS", "0"),
    EnvVar::default("GATEWAY_MAX_BODY_BYTES", "65536"),
    EnvVar::optional("API_SERVICE_TOKEN"),
    EnvVar::optional("API_ADMIN_TOKEN"),
    EnvVar::optional("CRYPTO_WEBHOOK_SECRET"),
    EnvVar::default("CRYPTO_WEBHOOK_TOLERANCE_SECS", "300"),
    EnvVar::optional("TRUSTED_PROXIES"),
    EnvVar::optional("TARIFFS_FILE"),
    EnvVar::default("GATEWAY_WEBHOOK_LIMIT", "5/s,burst=20"),
    EnvVar::default("GATEWAY_API_LIMIT", "10/s,burst=20"),
    EnvVar::default("GATEWAY_API_TOKEN_LIMIT", "200/s,burst=400"),
    EnvVar::default("GATEWAY_LIMIT_KEYS", "50000"),
    EnvVar::default("CHECKOUT_REUSE_MINUTES", "30"),
    EnvVar::default("CHECKOUT_MAX_OPEN_PAYMENTS", "5"),
];

/// Every variable the `api-gateway` binary reads.
pub fn env_vars() -> Vec<EnvVar> {
    domain::env::join(&[
        service_kit::settings::COMMON_VARS,
        payment_core::settings::VARS,
        VARS,
        domain::trial::VARS,
    ])
}

/// The gateway's own settings. Deserialised from the whole environment (see
/// [`service_kit::settings::Source::load`]); every field names its variable.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "Vars")]
pub struct GatewaySettings {
    /// `GATEWAY_BIND` (default `0.0.0.0:8080`; port 0 picks a free port): the public port,
    /// webhooks and the API only.
    pub gateway_bind: String,
    /// `GATEWAY_OPS_BIND` (default `0.0.0.0:9080`): health and metrics, never to be published.
    /// `None` when the process serves ops once for all its services (the standalone binary).
    pub ops_bind: Option<String>,
    /// `GATEWAY_WORKERS`: actix worker threads; 0 (default) = one per core.
    pub gateway_workers: usize,
    /// `GATEWAY_MAX_BODY_BYTES` (default 65536): larger bodies are refused with 413.
    pub max_body_bytes: usize,
    /// `API_SERVICE_TOKEN`: bearer token of the bot for `/api/payments`; unset = that API
    /// answers 503.
    pub api_service_token: Option<SecretString>,
    /// `API_ADMIN_TOKEN`: bearer token for refunds; unset = refunds answer 503.
    pub api_admin_token: Option<SecretString>,
    /// `CRYPTO_WEBHOOK_SECRET`: HMAC key of `/webhook/payment/crypto`; unset = that route is 404.
    pub crypto_webhook_secret: Option<SecretString>,
    /// `CRYPTO_WEBHOOK_TOLERANCE_SECS` (default 300).
    pub crypto_webhook_tolerance_secs: u64,
    /// `TRUSTED_PROXIES`: our own proxies, whose `X-Forwarded-For` is believed (also read by
    /// the YooKassa provider for its allow-list check).
    pub trusted_proxies: IpAllowList,
    /// `TARIFFS_FILE`: the tariffs upserted at start-up; unset = the built-in default, which
    /// is `config/tariffs.toml` of the repository.
    pub tariffs_file: Option<PathBuf>,
    /// `GATEWAY_WEBHOOK_LIMIT` (default `5/s,burst=20`; `off`): unverified webhook requests
    /// per client address — only requests that fail the source or signature check count.
    pub webhook_limit: Option<Rate>,
    /// `GATEWAY_API_LIMIT` (default `10/s,burst=20`; `off`): requests without a valid token per
    /// client address.
    pub api_limit: Option<Rate>,
    /// `GATEWAY_API_TOKEN_LIMIT` (default `200/s,burst=400`; `off`): requests with a valid
    /// token per client address.
    pub api_token_limit: Option<Rate>,
    /// `GATEWAY_LIMIT_KEYS` (default 50000): the most client addresses each limit tracks;
    /// further addresses share one overflow budget.
    pub limit_keys: usize,
    /// Provider settings (`YOOKASSA_SHOP_ID`, `YOOKASSA_SECRET_KEY`, `YOOKASSA_API_URL`,
    /// `YOOKASSA_ALLOWED_IPS`, …); a provider is enabled by the presence of its settings.
    pub payments: PaymentSettings,
    /// `CHECKOUT_REUSE_MINUTES` (default 30) and `CHECKOUT_MAX_OPEN_PAYMENTS` (default 5): see
    /// [`crate::checkout`].
    pub checkout: CheckoutPolicy,
    /// `TRIAL_DAYS` (default 0 = off) and `TRIAL_DATA_LIMIT_GB` (default 0 = unlimited): the
    /// free trial of `POST /api/trials` ([`crate::trials`]).
    pub trial: TrialPolicy,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            gateway_bind: DEFAULT_BIND.to_owned(),
            ops_bind: Some(DEFAULT_OPS_BIND.to_owned()),
            gateway_workers: 0,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            api_service_token: None,
            api_admin_token: None,
            crypto_webhook_secret: None,
            crypto_webhook_tolerance_secs: DEFAULT_SIGNATURE_TOLERANCE_SECS,
            trusted_proxies: IpAllowList::default(),
            tariffs_file: None,
            webhook_limit: Some(DEFAULT_WEBHOOK_LIMIT),
            api_limit: Some(DEFAULT_API_LIMIT),
            api_token_limit: Some(DEFAULT_API_TOKEN_LIMIT),
            limit_keys: DEFAULT_LIMIT_KEYS,
            payments: PaymentSettings::default(),
            checkout: CheckoutPolicy::default(),
            trial: TrialPolicy::default(),
        }
    }
}

impl TryFrom<Vars> for GatewaySettings {
    type Error = String;

    fn try_from(raw: Vars) -> Result<Self, Self::Error> {
        let defaults = GatewaySettings::default();
        let payments = PaymentSettings::from_vars(&raw)
            .map_err(|e| format!("payment provider settings: {e}"))?;
        let max_body_bytes = raw
            .parse::<usize>("GATEWAY_MAX_BODY_BYTES")?
            .unwrap_or(defaults.max_body_bytes);
        if max_body_bytes == 0 {
            return Err(invalid("GATEWAY_MAX_BODY_BYTES", "must be positive"));
        }
        let gateway_bind = raw
            .get("GATEWAY_BIND")
            .map_or(defaults.gateway_bind, str::to_owned);
        let ops_bind = raw.get("GATEWAY_OPS_BIND").unwrap_or(DEFAULT_OPS_BIND);
        // Health and metrics must not share the public port (port 0 picks two free ports).
        if ops_bind == gateway_bind && !ops_bind.ends_with(":0") {
            return Err(invalid(
                "GATEWAY_OPS_BIND",
                "must differ from GATEWAY_BIND (health and metrics stay off the public port)",
            ));
        }
        let limit = |name: &'static str, default: Rate| -> Result<Option<Rate>, String> {
            Ok(raw.parse::<Setting>(name)?.map_or(Some(default), |s| s.0))
        };
        let limit_keys = raw
            .parse::<usize>("GATEWAY_LIMIT_KEYS")?
            .unwrap_or(DEFAULT_LIMIT_KEYS);
        if limit_keys == 0 {
            return Err(invalid("GATEWAY_LIMIT_KEYS", "must be positive"));
        }
        // Equal tokens would give the bot's token the admin's refunds.
        raw.distinct("API_SERVICE_TOKEN", "API_ADMIN_TOKEN")?;
        let crypto_webhook_secret = raw.strong_secret("CRYPTO_WEBHOOK_SECRET")?;
        let crypto_webhook_tolerance_secs = raw
            .parse("CRYPTO_WEBHOOK_TOLERANCE_SECS")?
            .unwrap_or(defaults.crypto_webhook_tolerance_secs);
        let mut payments = payments;
        // The crypto provider verifies its own notices, with the gateway's secret.
        if let Some(secret) = &crypto_webhook_secret {
            payments.crypto = payments.crypto.map(|crypto| {
                crypto.with_notice_key(payment_core::providers::crypto::NoticeKey {
                    secret: secret.clone(),
                    tolerance: std::time::Duration::from_secs(crypto_webhook_tolerance_secs),
                })
            });
        }
        Ok(Self {
            gateway_bind,
            ops_bind: Some(ops_bind.to_owned()),
            gateway_workers: raw.parse("GATEWAY_WORKERS")?.unwrap_or(0),
            max_body_bytes,
            api_service_token: raw.strong_secret("API_SERVICE_TOKEN")?,
            api_admin_token: raw.strong_secret("API_ADMIN_TOKEN")?,
            crypto_webhook_secret,
            crypto_webhook_tolerance_secs,
            trusted_proxies: raw.parse("TRUSTED_PROXIES")?.unwrap_or_default(),
            tariffs_file: raw.get("TARIFFS_FILE").map(PathBuf::from),
            webhook_limit: limit("GATEWAY_WEBHOOK_LIMIT", DEFAULT_WEBHOOK_LIMIT)?,
            api_limit: limit("GATEWAY_API_LIMIT", DEFAULT_API_LIMIT)?,
            api_token_limit: limit("GATEWAY_API_TOKEN_LIMIT", DEFAULT_API_TOKEN_LIMIT)?,
            limit_keys,
            payments,
            checkout: checkout_policy(&raw)?,
            trial: TrialPolicy::from_vars(&raw)?,
        })
    }
}

/// `CHECKOUT_REUSE_MINUTES` and `CHECKOUT_MAX_OPEN_PAYMENTS`, both at least 1.
fn checkout_policy(raw: &Vars) -> Result<CheckoutPolicy, String> {
    let defaults = CheckoutPolicy::default();
    let minutes = raw
        .parse::<u64>("CHECKOUT_REUSE_MINUTES")?
        .unwrap_or(defaults.reuse_window.as_secs() / 60);
    if minutes == 0 {
        return Err(invalid(
            "CHECKOUT_REUSE_MINUTES",
            "must be at least 1 (a second press must find the first checkout)",
        ));
    }
    let max_open = raw.parse_or("CHECKOUT_MAX_OPEN_PAYMENTS", defaults.max_open)?;
    if max_open == 0 {
        return Err(invalid("CHECKOUT_MAX_OPEN_PAYMENTS", "must be at least 1"));
    }
    Ok(CheckoutPolicy {
        reuse_window: std::time::Duration::from_secs(minutes.saturating_mul(60)),
        max_open,
    })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;
    use service_kit::settings::Source;

    use super::*;

    #[test]
    fn defaults() {
        let s: GatewaySettings = Source::map([]).load().unwrap();
        assert_eq!(s.gateway_bind, DEFAULT_BIND);
        assert_eq!(s.ops_bind.as_deref(), Some(DEFAULT_OPS_BIND));
        assert_eq!(s.max_body_bytes, 65536);
        assert!(s.api_service_token.is_none());
        assert!(s.payments.yookassa.is_none());
        assert_eq!(s.crypto_webhook_tolerance_secs, 300);
        assert_eq!(s.webhook_limit, Some(DEFAULT_WEBHOOK_LIMIT));
        assert_eq!(s.api_limit, Some(DEFAULT_API_LIMIT));
        assert_eq!(s.api_token_limit, Some(DEFAULT_API_TOKEN_LIMIT));
        assert_eq!(s.limit_keys, DEFAULT_LIMIT_KEYS);
    }

    #[test]
    fn limits_are_read_and_can_be_turned_off() {
        let s: GatewaySettings = Source::map([
            ("GATEWAY_WEBHOOK_LIMIT", "2/s,burst=4"),
            ("GATEWAY_API_LIMIT", "off"),
            ("GATEWAY_API_TOKEN_LIMIT", "600/min"),
            ("GATEWAY_LIMIT_KEYS", "10"),
        ])
        .load()
        .unwrap();
        assert_eq!(s.webhook_limit, Some(Rate::per_second(2, 4)));
        assert_eq!(s.api_limit, None);
        assert_eq!(s.api_token_limit, Some(Rate::per_minute(600, 600)));
        assert_eq!(s.limit_keys, 10);
        let err = Source::map([("GATEWAY_API_LIMIT", "fast")])
            .load::<GatewaySettings>()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("setting GATEWAY_API_LIMIT is invalid"),
            "{err}"
        );
    }

    #[test]
    fn reads_every_variable_and_hides_secrets() {
        let s: GatewaySettings = Source::map([
            ("GATEWAY_BIND", "127.0.0.1:0"),
            ("GATEWAY_OPS_BIND", "127.0.0.1:9999"),
            ("GATEWAY_WORKERS", "3"),
            ("GATEWAY_MAX_BODY_BYTES", "1024"),
            ("API_SERVICE_TOKEN", "svc-secret-0123456789abcdef012345"),
            ("API_ADMIN_TOKEN", "adm-secret-0123456789abcdef012345"),
            ("CRYPTO_WEBHOOK_SECRET", "hmac-secret-0123456789abcdef01234"),
            ("CRYPTO_WEBHOOK_TOLERANCE_SECS", "60"),
            ("TRUSTED_PROXIES", "10.0.0.0/8"),
            ("TARIFFS_FILE", "/etc/acp/tariffs.toml"),
            ("YOOKASSA_SHOP_ID", "100500"),
            ("YOOKASSA_SECRET_KEY", "yk-secret"),
            ("YOOKASSA_ALLOWED_IPS", "127.0.0.1"),
        ])
        .load()
        .unwrap();
        assert_eq!(s.gateway_workers, 3);
        assert_eq!(s.ops_bind.as_deref(), Some("127.0.0.1:9999"));
        assert_eq!(s.max_body_bytes, 1024);
        assert_eq!(
            s.api_service_token.as_ref().unwrap().expose_secret(),
            "svc-secret-0123456789abcdef012345"
        );
        assert_eq!(s.crypto_webhook_tolerance_secs, 60);
        assert!(s.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        let yk = s.payments.yookassa.as_ref().unwrap();
        assert!(yk.allowed_ips.contains("127.0.0.1".parse().unwrap()));
        assert!(yk.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        let debug = format!("{s:?}");
        for secret in ["svc-secret", "adm-secret", "hmac-secret", "yk-secret"] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
    }

    #[test]
    fn short_or_equal_tokens_are_refused() {
        let long = "t".repeat(32);
        for name in [
            "API_SERVICE_TOKEN",
            "API_ADMIN_TOKEN",
            "CRYPTO_WEBHOOK_SECRET",
        ] {
            let err = Source::map([(name, "only-31-characters-long-0123456")])
                .load::<GatewaySettings>()
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("setting {name} is invalid: must be at least 32")),
                "{err}"
            );
            assert!(
                Source::map([(name, long.as_str())])
                    .load::<GatewaySettings>()
                    .is_ok()
            );
        }
        let err = Source::map([
            ("API_SERVICE_TOKEN", long.as_str()),
            ("API_ADMIN_TOKEN", long.as_str()),
        ])
        .load::<GatewaySettings>()
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("setting API_ADMIN_TOKEN is invalid: must differ from API_SERVICE_TOKEN"),
            "{err}"
        );
    }

    #[test]
    fn the_ops_address_is_not_the_public_one() {
        let err = Source::map([
            ("GATEWAY_BIND", "0.0.0.0:8080"),
            ("GATEWAY_OPS_BIND", "0.0.0.0:8080"),
        ])
        .load::<GatewaySettings>()
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("setting GATEWAY_OPS_BIND is invalid: must differ from GATEWAY_BIND"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Source::map([("TRUSTED_PROXIES", "not-an-ip")])
            .load::<GatewaySettings>()
            .unwrap_err();
        assert!(err.to_string().contains("TRUSTED_PROXIES"), "{err}");
        let err = Source::map([("YOOKASSA_SHOP_ID", "1")])
            .load::<GatewaySettings>()
            .unwrap_err();
        assert!(err.to_string().contains("YOOKASSA_SECRET_KEY"), "{err}");
    }
}
