//! Settings from the environment and `.env`, validated once at start-up.
//!
//! Every service reads the same [`CommonSettings`] plus a struct of its own, each deserialised
//! from the same flat environment (`DATABASE_URL`, `GATEWAY_BIND`, …). An error names the
//! variable to fix, in the spelling the operator writes it. A service's own struct is read
//! through the one reader, `domain::env::Vars` (`#[serde(try_from = "Vars")]`); its errors
//! convert into [`SettingsError`].

use std::collections::HashMap;

use domain::env::{EnvError, EnvVar, parse_bool};
use messaging::redact::Redacted;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A setting is missing or malformed; the message names the environment variable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("setting {name} is missing")]
    Missing { name: String },
    #[error("setting {name} is invalid: {reason}")]
    Invalid { name: String, reason: String },
    #[error("cannot read settings: {0}")]
    Other(String),
}

impl SettingsError {
    pub fn invalid(name: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

impl From<EnvError> for SettingsError {
    fn from(error: EnvError) -> Self {
        match error {
            EnvError::Missing { name, .. } => Self::Missing {
                name: name.to_owned(),
            },
            EnvError::Invalid { name, reason } => Self::Invalid {
                name: name.to_owned(),
                reason,
            },
        }
    }
}

/// Where settings come from: the process environment (after loading `.env` if present), or an
/// explicit map (tests, which must not mutate the process environment).
#[derive(Debug, Clone, Default)]
pub enum Source {
    #[default]
    Environment,
    Map(HashMap<String, String>),
}

impl Source {
    pub fn map<const N: usize>(pairs: [(&str, &str); N]) -> Self {
        Self::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// Deserialises `T` from this source. Field names are the lower-case variable names.
    pub fn load<T: DeserializeOwned>(&self) -> Result<T, SettingsError> {
        self.load_with_defaults(&[])
    }

    /// Like [`Source::load`], with defaults (by variable name) for what the source lacks — e.g.
    /// the standalone binary's SQLite `DATABASE_URL`.
    pub fn load_with_defaults<T: DeserializeOwned>(
        &self,
        defaults: &[(&str, &str)],
    ) -> Result<T, SettingsError> {
        let env = config::Environment::default().try_parsing(false);
        let env = match self {
            Source::Environment => {
                // `.env` never overrides what the environment already says.
                let _ = dotenvy::dotenv();
                env
            }
            Source::Map(map) => env.source(Some(map.clone())),
        };
        let mut builder = config::Config::builder();
        for (name, value) in defaults {
            builder = builder
                .set_default(name.to_ascii_lowercase(), *value)
                .map_err(|e| SettingsError::Other(e.to_string()))?;
        }
        let config = builder
            .add_source(env)
            .build()
            .map_err(|e| SettingsError::Other(e.to_string()))?;
        config.try_deserialize::<T>().map_err(translate)
    }
}

/// Turns `config`'s messages (which use lower-case keys) into ones naming the variable.
fn translate(error: config::ConfigError) -> SettingsError {
    let text = error.to_string();
    let key = quoted_after(&text, "for key `", '`')
        .or_else(|| quoted_after(&text, "field \"", '"'))
        .or_else(|| quoted_after(&text, "field `", '`'))
        .map(|key| key.to_ascii_uppercase());
    match key {
        Some(name) if text.starts_with("missing") => SettingsError::Missing { name },
        Some(name) => SettingsError::Invalid { name, reason: text },
        None => SettingsError::Other(text),
    }
}

fn quoted_after<'a>(text: &'a str, marker: &str, close: char) -> Option<&'a str> {
    let start = text.find(marker)? + marker.len();
    let rest = &text[start..];
    rest.find(close).map(|end| &rest[..end])
}

/// Unwraps settings at start-up, or prints the error (which names the variable) and exits
/// with status 2 — a configuration mistake deserves a one-line answer, not a backtrace.
pub fn or_exit<T>(result: Result<T, SettingsError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    }
}

/// The variables of [`CommonSettings`], read by every binary. `AMQP_URL` is required by the
/// separate services (the standalone binary runs on the in-process bus).
pub const COMMON_VARS: &[EnvVar] = &[
    EnvVar::required("DATABASE_URL"),
    EnvVar::required("AMQP_URL"),
    EnvVar::default("AMQP_PREFIX", "acp"),
    EnvVar::default("AMQP_QUEUE_TYPE", "quorum"),
    EnvVar::default("RUST_LOG", "info"),
    EnvVar::default("LOG_FORMAT", "pretty"),
    EnvVar::default("LOG_DIR", "logs"),
    EnvVar::default("RUN_MIGRATIONS", "true"),
    EnvVar::default("TELEGRAM_API_LIMIT", "30/s,burst=30"),
    EnvVar::default("YOOKASSA_API_LIMIT", "50/s,burst=50"),
    EnvVar::default("TRONGRID_API_LIMIT", "10/s,burst=10"),
];

/// Output format of the log lines on stdout. Files under `LOG_DIR` are always JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// Settings every service understands (DESIGN §8). `Debug` masks the passwords in the URLs.
#[derive(Clone, Deserialize)]
pub struct CommonSettings {
    /// `postgres://…` or `sqlite://…`.
    pub database_url: String,
    /// RabbitMQ URL; not needed by the single-process mode, which uses the in-process bus.
    #[serde(default)]
    pub amqp_url: Option<String>,
    /// Prefix of every exchange and queue name, so several deployments share one broker.
    #[serde(default = "default_amqp_prefix")]
    pub amqp_prefix: String,
    /// `quorum` (default) or `classic` work and parking queues.
    #[serde(default)]
    pub amqp_queue_type: Option<String>,
    #[serde(default = "default_log_dir")]
    pub log_dir: String,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_rust_log")]
    pub rust_log: String,
    /// Apply pending migrations at start-up (on by default; turn off when a release job does it).
    #[serde(default = "default_true", deserialize_with = "de_bool")]
    pub run_migrations: bool,
    /// `TELEGRAM_API_LIMIT` (default `30/s,burst=30`; `off`): the process's Telegram Bot API
    /// calls ([`CommonSettings::outbound`]).
    #[serde(default)]
    pub telegram_api_limit: Option<String>,
    /// `YOOKASSA_API_LIMIT` (default `50/s,burst=50`; `off`): the process's YooKassa calls.
    #[serde(default)]
    pub yookassa_api_limit: Option<String>,
    /// `TRONGRID_API_LIMIT` (default `10/s,burst=10`; `off`): the process's TronGrid calls.
    #[serde(default)]
    pub trongrid_api_limit: Option<String>,
}

impl std::fmt::Debug for CommonSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommonSettings")
            .field("database_url", &Redacted(&self.database_url))
            .field("amqp_url", &self.amqp_url.as_deref().map(Redacted))
            .field("amqp_prefix", &self.amqp_prefix)
            .field("amqp_queue_type", &self.amqp_queue_type)
            .field("log_dir", &self.log_dir)
            .field("log_format", &self.log_format)
            .field("rust_log", &self.rust_log)
            .field("run_migrations", &self.run_migrations)
            // Resolved: a limit written as its default prints as the default.
            .field("outbound", &self.outbound())
            .finish()
    }
}

impl CommonSettings {
    /// The process-wide limits on calls to outside services; applied (once per process) by
    /// [`crate::runtime::run_service`] and the standalone binary.
    pub fn outbound(&self) -> ratelimit::OutboundLimits {
        self.try_outbound().unwrap_or_default()
    }

    fn try_outbound(&self) -> Result<ratelimit::OutboundLimits, SettingsError> {
        let limit = |name: &str, raw: &Option<String>, default: ratelimit::Rate| match raw
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            None => Ok(Some(default)),
            Some(raw) => raw
                .parse::<ratelimit::Setting>()
                .map(|s| s.0)
                .map_err(|e| SettingsError::invalid(name, e.to_string())),
        };
        Ok(ratelimit::OutboundLimits {
            telegram: limit(
                "TELEGRAM_API_LIMIT",
                &self.telegram_api_limit,
                DEFAULT_TELEGRAM_API_LIMIT,
            )?,
            yookassa: limit(
                "YOOKASSA_API_LIMIT",
                &self.yookassa_api_limit,
                DEFAULT_YOOKASSA_API_LIMIT,
            )?,
            trongrid: limit(
                "TRONGRID_API_LIMIT",
                &self.trongrid_api_limit,
                DEFAULT_TRONGRID_API_LIMIT,
            )?,
        })
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let url = self.database_url.as_str();
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            return Err(SettingsError::invalid(
                "DATABASE_URL",
                "expected postgres://… or sqlite://…",
            ));
        }
        if let Some(amqp) = &self.amqp_url
            && !(amqp.starts_with("amqp://") || amqp.starts_with("amqps://"))
        {
            return Err(SettingsError::invalid("AMQP_URL", "expected amqp://…"));
        }
        self.queue_type()?;
        if self.amqp_prefix.is_empty()
            || !self
                .amqp_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(SettingsError::invalid(
                "AMQP_PREFIX",
                "use letters, digits, '.', '_' or '-'",
            ));
        }
        Ok(())
    }

    /// `AMQP_QUEUE_TYPE`; when this source does not set it (e.g. a test's own map), the
    /// process environment's, else quorum.
    pub fn queue_type(&self) -> Result<messaging::QueueType, SettingsError> {
        match self.amqp_queue_type.as_deref().map(str::trim) {
            None | Some("") => Ok(messaging::QueueType::from_env()),
            Some(value) => value
                .parse()
                .map_err(|reason: String| SettingsError::invalid("AMQP_QUEUE_TYPE", reason)),
        }
    }

    /// The broker URL, required by the services that run on RabbitMQ.
    pub fn require_amqp_url(&self) -> Result<&str, SettingsError> {
        self.amqp_url
            .as_deref()
            .ok_or_else(|| SettingsError::Missing {
                name: "AMQP_URL".to_owned(),
            })
    }
}

/// Loads and validates the common settings.
pub fn load_common(source: &Source) -> Result<CommonSettings, SettingsError> {
    load_common_with_defaults(source, &[])
}

/// Loads and validates the common settings, with defaults for absent variables.
pub fn load_common_with_defaults(
    source: &Source,
    defaults: &[(&str, &str)],
) -> Result<CommonSettings, SettingsError> {
    let common: CommonSettings = source.load_with_defaults(defaults)?;
    common.validate()?;
    common.try_outbound()?;
    Ok(common)
}

/// Defaults of the outside-call limits: Telegram allows a bot about 30 messages a second.
pub const DEFAULT_TELEGRAM_API_LIMIT: ratelimit::Rate = ratelimit::Rate::per_second(30, 30);
/// YooKassa publishes no figure; a ceiling well above what one shop needs.
pub const DEFAULT_YOOKASSA_API_LIMIT: ratelimit::Rate = ratelimit::Rate::per_second(50, 50);
/// TronGrid allows about 15 requests a second with an API key.
pub const DEFAULT_TRONGRID_API_LIMIT: ratelimit::Rate = ratelimit::Rate::per_second(10, 10);

fn default_amqp_prefix() -> String {
    "acp".to_owned()
}
fn default_log_dir() -> String {
    "logs".to_owned()
}
fn default_rust_log() -> String {
    "info".to_owned()
}
fn default_true() -> bool {
    true
}

/// Parses the usual spellings of a boolean (`true/false`, `1/0`, `yes/no`, `on/off`).
pub fn de_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let raw = String::deserialize(d)?;
    parse_bool(&raw).ok_or_else(|| serde::de::Error::custom(format!("not a boolean: {raw:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_setting_is_named_in_upper_case() {
        let err = load_common(&Source::map([("AMQP_URL", "amqp://x")])).unwrap_err();
        assert_eq!(err.to_string(), "setting DATABASE_URL is missing");
    }

    #[test]
    fn defaults_apply_and_bool_parses() {
        let s = load_common(&Source::map([
            ("DATABASE_URL", "sqlite://data/x.db"),
            ("RUN_MIGRATIONS", "no"),
            ("LOG_FORMAT", "json"),
        ]))
        .unwrap();
        assert_eq!(s.amqp_prefix, "acp");
        assert!(!s.run_migrations);
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.amqp_url.is_none());
        assert!(s.require_amqp_url().is_err());
    }

    #[test]
    fn outside_call_limits() {
        let s = load_common(&Source::map([("DATABASE_URL", "sqlite://data/x.db")])).unwrap();
        let limits = s.outbound();
        assert_eq!(limits.telegram, Some(DEFAULT_TELEGRAM_API_LIMIT));
        assert_eq!(limits.yookassa, Some(DEFAULT_YOOKASSA_API_LIMIT));
        assert_eq!(limits.trongrid, Some(DEFAULT_TRONGRID_API_LIMIT));
        let s = load_common(&Source::map([
            ("DATABASE_URL", "sqlite://data/x.db"),
            ("TELEGRAM_API_LIMIT", "20/s,burst=5"),
            ("YOOKASSA_API_LIMIT", "off"),
        ]))
        .unwrap();
        let limits = s.outbound();
        assert_eq!(limits.telegram, Some(ratelimit::Rate::per_second(20, 5)));
        assert_eq!(limits.yookassa, None);
        let err = load_common(&Source::map([
            ("DATABASE_URL", "sqlite://data/x.db"),
            ("TRONGRID_API_LIMIT", "lots"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("setting TRONGRID_API_LIMIT is invalid"),
            "{err}"
        );
    }

    #[test]
    fn defaults_fill_only_what_is_absent() {
        let defaults = [("DATABASE_URL", "sqlite://data/acp.db?mode=rwc")];
        let s = load_common_with_defaults(&Source::map([]), &defaults).unwrap();
        assert_eq!(s.database_url, "sqlite://data/acp.db?mode=rwc");
        let s = load_common_with_defaults(
            &Source::map([("DATABASE_URL", "postgres://db/x")]),
            &defaults,
        )
        .unwrap();
        assert_eq!(s.database_url, "postgres://db/x");
    }

    #[test]
    fn a_source_loads_the_reader_of_every_variable() {
        let loaded: domain::env::Vars = Source::map([("A_B", "x")]).load().unwrap();
        assert_eq!(loaded.get("A_B"), Some("x"));
    }

    #[test]
    fn reader_errors_keep_the_variable_name() {
        let err = SettingsError::from(domain::env::EnvError::invalid("PORT", "too big"));
        assert_eq!(err.to_string(), "setting PORT is invalid: too big");
    }

    #[test]
    fn debug_masks_the_passwords_in_urls() {
        let s = load_common(&Source::map([
            ("DATABASE_URL", "postgres://acp:db-password-1@db:5432/acp"),
            ("AMQP_URL", "amqp://acp:amqp-password-2@rabbit:5672/%2f"),
        ]))
        .unwrap();
        let debug = format!("{s:?}");
        for secret in ["db-password-1", "amqp-password-2"] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
        assert!(debug.contains("postgres://acp:***@db:5432/acp"), "{debug}");
        assert!(debug.contains("amqp://acp:***@rabbit:5672/%2f"), "{debug}");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = load_common(&Source::map([("DATABASE_URL", "mysql://x")])).unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
        let err = load_common(&Source::map([
            ("DATABASE_URL", "sqlite::memory:"),
            ("LOG_FORMAT", "xml"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
        let err = load_common(&Source::map([
            ("DATABASE_URL", "sqlite::memory:"),
            ("AMQP_PREFIX", "a b"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("AMQP_PREFIX"), "{err}");
        let err = load_common(&Source::map([
            ("DATABASE_URL", "sqlite::memory:"),
            ("AMQP_QUEUE_TYPE", "mirrored"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("AMQP_QUEUE_TYPE"), "{err}");
    }
}
