//! `bot` settings, read from the environment and validated at start-up; every error names
//! the variable to fix.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use domain::env::{EnvVar, Vars, invalid};
use ratelimit::{Rate, Setting};
use secrecy::SecretString;
use serde::Deserialize;

use crate::webhook::WebhookSettings;

/// Default of `BOT_OPS_BIND`.
pub const DEFAULT_OPS_BIND: &str = "0.0.0.0:9083";
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";
pub const DEFAULT_GATEWAY_URL: &str = "http://127.0.0.1:8080";
/// Long-poll wait per `getUpdates`; well under the HTTP client's own timeout.
pub const DEFAULT_POLL_TIMEOUT_SECS: u32 = 25;
pub const DEFAULT_GATEWAY_TIMEOUT_MS: u64 = 15_000;
pub const DEFAULT_WEBHOOK_BIND: &str = "0.0.0.0:8088";
/// Default `BOT_USER_LIMIT`: commands and button presses per Telegram user.
pub const DEFAULT_USER_LIMIT: Rate = Rate::per_minute(60, 30);
/// Default `BOT_CHECKOUT_LIMIT`: presses of a Pay button (each makes or shows a payment) per
/// Telegram user.
pub const DEFAULT_CHECKOUT_LIMIT: Rate = Rate::per_minute(10, 10);
/// Default `BOT_LIMIT_USERS`: users each limit keeps a budget for.
pub const DEFAULT_LIMIT_USERS: usize = 100_000;

/// The bot's own variables ([`env_vars`] adds the common ones). `TELEGRAM_BOT_TOKEN` and
/// `API_SERVICE_TOKEN` are optional here because the standalone binary runs without a bot; the
/// separate binary requires them ([`env_vars`]).
pub const VARS: &[EnvVar] = &[
    EnvVar::default("BOT_OPS_BIND", DEFAULT_OPS_BIND),
    EnvVar::optional("BOT_BIND"),
    EnvVar::optional("TELEGRAM_BOT_TOKEN"),
    EnvVar::default("TELEGRAM_API_URL", DEFAULT_API_URL),
    EnvVar::optional("TELEGRAM_PAYMENT_PROVIDER_TOKEN"),
    EnvVar::optional("ADMIN_TELEGRAM_IDS"),
    EnvVar::default("GATEWAY_URL", DEFAULT_GATEWAY_URL),
    EnvVar::optional("API_SERVICE_TOKEN"),
    EnvVar::optional("API_ADMIN_TOKEN"),
    EnvVar::default("TELEGRAM_POLL_TIMEOUT_SECS", "25"),
    EnvVar::default("GATEWAY_TIMEOUT_MS", "15000"),
    EnvVar::optional("TELEGRAM_WEBHOOK_URL"),
    EnvVar::optional("TELEGRAM_WEBHOOK_SECRET"),
    EnvVar::default("TELEGRAM_WEBHOOK_BIND", DEFAULT_WEBHOOK_BIND),
    EnvVar::default("BOT_USER_LIMIT", "60/min,burst=30"),
    EnvVar::default("BOT_CHECKOUT_LIMIT", "10/min,burst=10"),
    EnvVar::default("BOT_LIMIT_USERS", "100000"),
    EnvVar::default("REMINDER_OFFSETS", "-3d,-1d,0,+3d"),
    EnvVar::default("REMINDER_SCAN_SECS", "60"),
    EnvVar::default("REFERRAL_BONUS_DAYS", "7"),
];

/// Every variable the `bot` binary reads; it refuses to start without its token and the
/// gateway's service token.
pub fn env_vars() -> Vec<EnvVar> {
    domain::env::join(&[
        service_kit::settings::COMMON_VARS,
        VARS,
        domain::trial::VARS,
        &[
            EnvVar::required("TELEGRAM_BOT_TOKEN"),
            EnvVar::required("API_SERVICE_TOKEN"),
        ],
    ])
}

/// This service's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "Vars")]
pub struct ServiceSettings {
    /// `BOT_OPS_BIND` (older name `BOT_BIND`; default `0.0.0.0:9083`): health and metrics.
    /// `None` when the process serves ops once for all its services (the standalone binary).
    pub ops_bind: Option<String>,
    /// Everything the bot needs to talk to Telegram and the gateway; `None` when
    /// `TELEGRAM_BOT_TOKEN` is unset. The separate binary refuses to start then
    /// ([`crate::Settings::load`]); the single-process mode runs without a bot.
    pub telegram: Option<BotSettings>,
}

/// The bot proper.
#[derive(Debug, Clone)]
pub struct BotSettings {
    /// `TELEGRAM_BOT_TOKEN`.
    pub token: SecretString,
    /// `TELEGRAM_API_URL` (default `https://api.telegram.org`), without `/bot<token>`.
    pub api_url: String,
    /// `TELEGRAM_PAYMENT_PROVIDER_TOKEN`: fiat invoices through a BotFather payment provider.
    pub provider_token: Option<SecretString>,
    /// `ADMIN_TELEGRAM_IDS`: comma-separated Telegram user ids allowed to use admin commands.
    pub admin_ids: BTreeSet<i64>,
    /// `GATEWAY_URL` (default `http://127.0.0.1:8080`).
    pub gateway_url: String,
    /// `API_SERVICE_TOKEN`: the bot's bearer token for `POST /api/payments`.
    pub service_token: SecretString,
    /// `API_ADMIN_TOKEN`: for refunds; without it `/refund` answers that refunds are off.
    pub admin_token: Option<SecretString>,
    /// `TELEGRAM_POLL_TIMEOUT_SECS` (default 25).
    pub poll_timeout_secs: u32,
    /// `GATEWAY_TIMEOUT_MS` (default 15000).
    pub gateway_timeout: Duration,
    /// Webhook mode when `TELEGRAM_WEBHOOK_URL` is set; long polling otherwise.
    pub webhook: Option<WebhookSettings>,
    /// `BOT_USER_LIMIT` (default `60/min,burst=30`; `off`), `BOT_CHECKOUT_LIMIT` (default
    /// `10/min,burst=10`; `off`) and `BOT_LIMIT_USERS` (default 100000): see [`crate::limits`].
    pub limits: crate::limits::LimitSettings,
    /// `REMINDER_OFFSETS` (default `-3d,-1d,0,+3d`; `off`): when expiry reminders are sent,
    /// relative to the expiry ([`crate::reminders`]).
    pub reminder_offsets: crate::reminders::Offsets,
    /// `REMINDER_SCAN_SECS` (default 60): how often reminders are scheduled and dispatched.
    pub reminder_every: Duration,
    /// `TRIAL_DAYS` (default 0 = off) and `TRIAL_DATA_LIMIT_GB`: whether the main menu offers
    /// the free trial, and of how many days (the gateway grants it).
    pub trial: domain::trial::TrialPolicy,
    /// `REFERRAL_BONUS_DAYS` (default 7; 0 = off): the days a referrer is promised for a
    /// friend's first payment, recorded with each referral ([`domain::referral`]).
    pub referrals: domain::referral::ReferralPolicy,
}

impl ServiceSettings {
    /// Settings from `vars` (upper- or lower-case names), as [`Deserialize`] does.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, String> {
        vars.iter().collect::<Vars>().try_into()
    }
}

fn url(vars: &Vars, name: &'static str, default: &str) -> Result<String, String> {
    Ok(vars.url(name)?.unwrap_or(default).to_owned())
}

fn bot(vars: &Vars) -> Result<Option<BotSettings>, String> {
    let Some(token) = vars.get("TELEGRAM_BOT_TOKEN") else {
        return Ok(None);
    };
    let admin_ids = vars
        .get("ADMIN_TELEGRAM_IDS")
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| invalid("ADMIN_TELEGRAM_IDS", format!("{s:?} is not a user id")))
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    let service_token = vars.require("API_SERVICE_TOKEN", "TELEGRAM_BOT_TOKEN")?;
    let poll_timeout_secs =
        vars.parse_or("TELEGRAM_POLL_TIMEOUT_SECS", DEFAULT_POLL_TIMEOUT_SECS)?;
    if poll_timeout_secs > 50 {
        return Err(invalid("TELEGRAM_POLL_TIMEOUT_SECS", "at most 50"));
    }
    let gateway_ms = vars.parse_or("GATEWAY_TIMEOUT_MS", DEFAULT_GATEWAY_TIMEOUT_MS)?;
    let reminder_every = vars.parse_or("REMINDER_SCAN_SECS", 60u64)?;
    if reminder_every == 0 {
        return Err(invalid("REMINDER_SCAN_SECS", "must be positive"));
    }
    if gateway_ms == 0 {
        return Err(invalid("GATEWAY_TIMEOUT_MS", "must be positive"));
    }
    Ok(Some(BotSettings {
        token: SecretString::from(token.to_owned()),
        api_url: url(vars, "TELEGRAM_API_URL", DEFAULT_API_URL)?,
        provider_token: vars.secret("TELEGRAM_PAYMENT_PROVIDER_TOKEN"),
        admin_ids,
        gateway_url: url(vars, "GATEWAY_URL", DEFAULT_GATEWAY_URL)?,
        service_token: SecretString::from(service_token.to_owned()),
        admin_token: vars.secret("API_ADMIN_TOKEN"),
        poll_timeout_secs,
        gateway_timeout: Duration::from_millis(gateway_ms),
        webhook: webhook(vars)?,
        limits: limits(vars)?,
        reminder_offsets: vars
            .get("REMINDER_OFFSETS")
            .map(str::parse)
            .transpose()
            .map_err(|e| invalid("REMINDER_OFFSETS", e))?
            .unwrap_or_default(),
        reminder_every: Duration::from_secs(reminder_every),
        trial: domain::trial::TrialPolicy::from_vars(vars)?,
        referrals: domain::referral::ReferralPolicy::from_vars(vars)?,
    }))
}

fn limits(vars: &Vars) -> Result<crate::limits::LimitSettings, String> {
    let limit = |name: &'static str, default: Rate| -> Result<Option<Rate>, String> {
        Ok(vars.parse::<Setting>(name)?.map_or(Some(default), |s| s.0))
    };
    let users = vars.parse_or("BOT_LIMIT_USERS", DEFAULT_LIMIT_USERS)?;
    if users == 0 {
        return Err(invalid("BOT_LIMIT_USERS", "must be positive"));
    }
    Ok(crate::limits::LimitSettings {
        user: limit("BOT_USER_LIMIT", DEFAULT_USER_LIMIT)?,
        checkout: limit("BOT_CHECKOUT_LIMIT", DEFAULT_CHECKOUT_LIMIT)?,
        users,
    })
}

fn webhook(vars: &Vars) -> Result<Option<WebhookSettings>, String> {
    if vars.get("TELEGRAM_WEBHOOK_URL").is_none() {
        return Ok(None);
    }
    let url = url(vars, "TELEGRAM_WEBHOOK_URL", "")?;
    let secret = vars.require("TELEGRAM_WEBHOOK_SECRET", "TELEGRAM_WEBHOOK_URL")?;
    if secret.len() > 256
        || !secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(
            "TELEGRAM_WEBHOOK_SECRET",
            "use 1 to 256 characters of A-Z a-z 0-9 _ -",
        ));
    }
    Ok(Some(WebhookSettings {
        url,
        secret: SecretString::from(secret.to_owned()),
        bind: vars
            .get("TELEGRAM_WEBHOOK_BIND")
            .unwrap_or(DEFAULT_WEBHOOK_BIND)
            .to_owned(),
    }))
}

impl TryFrom<Vars> for ServiceSettings {
    type Error = String;

    fn try_from(raw: Vars) -> Result<Self, String> {
        Ok(Self {
            ops_bind: Some(
                raw.first_of(&["BOT_OPS_BIND", "BOT_BIND"])
                    .unwrap_or(DEFAULT_OPS_BIND)
                    .to_owned(),
            ),
            telegram: bot(&raw)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<ServiceSettings, String> {
        ServiceSettings::from_vars(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn the_ops_address_and_its_older_name() {
        let old = load(&[("BOT_BIND", "127.0.0.1:8083")]).unwrap();
        assert_eq!(old.ops_bind.as_deref(), Some("127.0.0.1:8083"));
        let both = load(&[
            ("BOT_BIND", "127.0.0.1:8083"),
            ("BOT_OPS_BIND", "127.0.0.1:9093"),
        ])
        .unwrap();
        assert_eq!(both.ops_bind.as_deref(), Some("127.0.0.1:9093"));
    }

    #[test]
    fn without_a_token_there_is_no_bot() {
        let s = load(&[]).expect("ok");
        assert_eq!(s.ops_bind.as_deref(), Some(DEFAULT_OPS_BIND));
        assert!(s.telegram.is_none());
    }

    #[test]
    fn every_variable() {
        let s = load(&[
            ("TELEGRAM_BOT_TOKEN", "1:abc"),
            ("TELEGRAM_API_URL", "http://127.0.0.1:9/"),
            ("ADMIN_TELEGRAM_IDS", "42, 43"),
            ("API_SERVICE_TOKEN", "svc"),
            ("API_ADMIN_TOKEN", "adm"),
            ("GATEWAY_URL", "http://gw:8080"),
            ("TELEGRAM_POLL_TIMEOUT_SECS", "1"),
        ])
        .expect("ok")
        .telegram
        .expect("bot");
        assert_eq!(s.api_url, "http://127.0.0.1:9");
        assert_eq!(s.admin_ids, BTreeSet::from([42, 43]));
        assert_eq!(s.gateway_url, "http://gw:8080");
        assert_eq!(s.poll_timeout_secs, 1);
        assert!(s.admin_token.is_some() && s.provider_token.is_none());
        assert!(s.webhook.is_none(), "long polling by default");
        assert!(
            !format!("{s:?}").contains("1:abc"),
            "the token is not printed"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let err = load(&[("TELEGRAM_BOT_TOKEN", "1:abc")]).unwrap_err();
        assert!(err.contains("API_SERVICE_TOKEN"), "{err}");
        let err = load(&[
            ("TELEGRAM_BOT_TOKEN", "1:abc"),
            ("API_SERVICE_TOKEN", "s"),
            ("ADMIN_TELEGRAM_IDS", "alice"),
        ])
        .unwrap_err();
        assert!(err.contains("ADMIN_TELEGRAM_IDS"), "{err}");
        let err = load(&[
            ("TELEGRAM_BOT_TOKEN", "1:abc"),
            ("API_SERVICE_TOKEN", "s"),
            (
                "TELEGRAM_WEBHOOK_URL",
                "https://bot.example.com/telegram/webhook",
            ),
        ])
        .unwrap_err();
        assert!(err.contains("TELEGRAM_WEBHOOK_SECRET"), "{err}");
    }
}
