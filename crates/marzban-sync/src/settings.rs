//! `marzban-sync` settings, read from the environment and validated at start-up; every error
//! names the variable to fix.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use domain::env::EnvVar;
use messaging::RetryPolicy;
use secrecy::SecretString;
use serde::Deserialize;
use service_kit::settings::{Vars, invalid};

use crate::marzban::{Inbounds, MarzbanError, MarzbanSettings, Proxies};

/// Default of `MARZBAN_SYNC_OPS_BIND`.
pub const DEFAULT_OPS_BIND: &str = "0.0.0.0:9082";
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_DRIFT_CHECK_SECS: u64 = 3600;
/// Deliveries handled at once. Each holds a database connection (and its subscription's row
/// lock) while it waits for the panel, so keep it well under the pool size.
pub const DEFAULT_PREFETCH: u16 = 4;

/// The service's own variables ([`env_vars`] adds the common ones). `MARZBAN_URL` is
/// optional here because the standalone binary runs without a panel; the separate binary
/// requires it ([`env_vars`]).
pub const VARS: &[EnvVar] = &[
    EnvVar::default("MARZBAN_SYNC_OPS_BIND", DEFAULT_OPS_BIND),
    EnvVar::optional("MARZBAN_SYNC_BIND"),
    EnvVar::optional("MARZBAN_URL"),
    EnvVar::optional("MARZBAN_USERNAME"),
    EnvVar::optional("MARZBAN_PASSWORD"),
    EnvVar::default("MARZBAN_TIMEOUT_SECS", "10"),
    EnvVar::default("MARZBAN_PROXIES", r#"{"vless":{}}"#),
    EnvVar::optional("MARZBAN_INBOUNDS"),
    EnvVar::default("MARZBAN_DRIFT_CHECK_SECS", "3600"),
    EnvVar::default(
        "MARZBAN_SYNC_RETRY_DELAYS_MS",
        "1000,5000,30000,120000,600000",
    ),
    EnvVar::default("MARZBAN_SYNC_PREFETCH", "4"),
    EnvVar::default("MARZBAN_ADOPT_REMAINING", "true"),
];

/// Every variable the `marzban-sync` binary reads; it refuses to start without the panel.
pub fn env_vars() -> Vec<EnvVar> {
    domain::env::join(&[
        service_kit::settings::COMMON_VARS,
        VARS,
        &[
            EnvVar::required("MARZBAN_URL"),
            EnvVar::required("MARZBAN_USERNAME"),
            EnvVar::required("MARZBAN_PASSWORD"),
        ],
    ])
}

/// This service's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "Vars")]
pub struct ServiceSettings {
    /// `MARZBAN_SYNC_OPS_BIND` (older name `MARZBAN_SYNC_BIND`; default `0.0.0.0:9082`):
    /// health and metrics. `None` when the process serves ops once for all its services (the
    /// standalone binary).
    pub ops_bind: Option<String>,
    /// The panel: `MARZBAN_URL`, `MARZBAN_USERNAME`, `MARZBAN_PASSWORD`, `MARZBAN_PROXIES`,
    /// `MARZBAN_INBOUNDS`, `MARZBAN_TIMEOUT_SECS`. `None` when `MARZBAN_URL` is unset: the
    /// separate binary refuses to start then ([`crate::Settings::load`]); the single-process
    /// mode runs without provisioning and leaves the payment events in the outbox.
    pub marzban: Option<MarzbanSettings>,
    /// `MARZBAN_DRIFT_CHECK_SECS` (default 3600; 0 = no periodic drift check).
    pub drift_check_interval: Option<Duration>,
    /// `MARZBAN_SYNC_RETRY_DELAYS_MS`: comma-separated delays between attempts of a failed
    /// message before it is parked (default `1000,5000,30000,120000,600000`).
    pub retry: RetryPolicy,
    /// `MARZBAN_SYNC_PREFETCH` (default 4): deliveries handled at once.
    pub prefetch: u16,
    /// `MARZBAN_ADOPT_REMAINING` (default on): an existing panel user we adopt keeps the time
    /// it had left, as an opening balance in the ledger.
    pub adopt_remaining: bool,
}

impl ServiceSettings {
    /// Settings from `vars` (upper- or lower-case names), as [`Deserialize`] does.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, String> {
        vars.iter().collect::<Vars>().try_into()
    }
}

fn marzban(vars: &Vars) -> Result<Option<MarzbanSettings>, String> {
    let Some(url) = vars.get("MARZBAN_URL") else {
        return Ok(None);
    };
    let password = SecretString::from(vars.require("MARZBAN_PASSWORD", "MARZBAN_URL")?.to_owned());
    let mut settings = MarzbanSettings::new(
        url,
        vars.require("MARZBAN_USERNAME", "MARZBAN_URL")?,
        password,
    );
    let timeout = vars.parse_or("MARZBAN_TIMEOUT_SECS", DEFAULT_TIMEOUT_SECS)?;
    if timeout == 0 {
        return Err(invalid("MARZBAN_TIMEOUT_SECS", "must be positive"));
    }
    settings.timeout = Duration::from_secs(timeout);
    if let Some(proxies) = vars.json::<Proxies>("MARZBAN_PROXIES")? {
        settings.proxies = proxies;
    }
    settings.inbounds = match vars.json::<Inbounds>("MARZBAN_INBOUNDS")? {
        Some(inbounds) => inbounds,
        // Every inbound of every configured protocol.
        None => settings
            .proxies
            .keys()
            .map(|protocol| (protocol.clone(), Vec::new()))
            .collect::<BTreeMap<_, _>>(),
    };
    // The client's own check phrases its messages with the variable names.
    settings.validate().map_err(|e| match e {
        MarzbanError::InvalidInput(message) => format!("invalid setting: {message}"),
        other => format!("invalid Marzban settings: {other}"),
    })?;
    Ok(Some(settings))
}

impl TryFrom<Vars> for ServiceSettings {
    type Error = String;

    fn try_from(raw: Vars) -> Result<Self, Self::Error> {
        let drift_secs = raw.parse_or("MARZBAN_DRIFT_CHECK_SECS", DEFAULT_DRIFT_CHECK_SECS)?;
        let retry = raw
            .parse::<RetryPolicy>("MARZBAN_SYNC_RETRY_DELAYS_MS")?
            .unwrap_or_default();
        let prefetch = raw.parse_or("MARZBAN_SYNC_PREFETCH", DEFAULT_PREFETCH)?;
        if prefetch == 0 {
            return Err(invalid("MARZBAN_SYNC_PREFETCH", "must be positive"));
        }
        let adopt_remaining = match raw.get("MARZBAN_ADOPT_REMAINING") {
            None => true,
            Some(value) => service_kit::settings::parse_bool(value)
                .ok_or_else(|| invalid("MARZBAN_ADOPT_REMAINING", "must be true or false"))?,
        };
        Ok(Self {
            ops_bind: Some(
                raw.first_of(&["MARZBAN_SYNC_OPS_BIND", "MARZBAN_SYNC_BIND"])
                    .unwrap_or(DEFAULT_OPS_BIND)
                    .to_owned(),
            ),
            marzban: marzban(&raw)?,
            drift_check_interval: (drift_secs > 0).then(|| Duration::from_secs(drift_secs)),
            retry,
            prefetch,
            adopt_remaining,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn load(pairs: &[(&str, &str)]) -> Result<ServiceSettings, String> {
        ServiceSettings::from_vars(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    const PANEL: [(&str, &str); 3] = [
        ("MARZBAN_URL", "https://panel.example.com"),
        ("MARZBAN_USERNAME", "admin"),
        ("MARZBAN_PASSWORD", "pw"),
    ];

    #[test]
    fn the_ops_address_and_its_older_name() {
        let old = load(&[("MARZBAN_SYNC_BIND", "127.0.0.1:8082")]).unwrap();
        assert_eq!(old.ops_bind.as_deref(), Some("127.0.0.1:8082"));
        let both = load(&[
            ("MARZBAN_SYNC_BIND", "127.0.0.1:8082"),
            ("MARZBAN_SYNC_OPS_BIND", "127.0.0.1:9092"),
        ])
        .unwrap();
        assert_eq!(both.ops_bind.as_deref(), Some("127.0.0.1:9092"));
    }

    #[test]
    fn defaults() {
        let s = load(&[]).unwrap();
        assert_eq!(s.ops_bind.as_deref(), Some(DEFAULT_OPS_BIND));
        assert!(s.marzban.is_none());
        assert_eq!(s.drift_check_interval, Some(Duration::from_secs(3600)));
        assert_eq!(s.retry, RetryPolicy::default());
        assert_eq!(s.prefetch, DEFAULT_PREFETCH);
        assert!(s.adopt_remaining);
        assert!(
            !load(&[("MARZBAN_ADOPT_REMAINING", "false")])
                .unwrap()
                .adopt_remaining
        );
        let error = load(&[("MARZBAN_ADOPT_REMAINING", "sometimes")]).unwrap_err();
        assert!(error.contains("MARZBAN_ADOPT_REMAINING"), "{error}");

        let s = load(&PANEL).unwrap();
        let m = s.marzban.unwrap();
        assert_eq!(m.base_url, "https://panel.example.com");
        assert_eq!(m.password.expose_secret(), "pw");
        assert_eq!(m.timeout, Duration::from_secs(10));
        assert_eq!(m.proxies.keys().collect::<Vec<_>>(), ["vless"]);
        assert_eq!(m.inbounds, BTreeMap::from([("vless".to_owned(), vec![])]));
    }

    #[test]
    fn panel_settings_are_parsed() {
        let mut pairs = PANEL.to_vec();
        pairs.extend([
            (
                "MARZBAN_PROXIES",
                r#"{"vless":{"flow":"xtls-rprx-vision"},"vmess":{}}"#,
            ),
            ("MARZBAN_INBOUNDS", r#"{"vless":["VLESS TCP REALITY"]}"#),
            ("MARZBAN_TIMEOUT_SECS", "3"),
            ("MARZBAN_DRIFT_CHECK_SECS", "0"),
            ("MARZBAN_SYNC_RETRY_DELAYS_MS", "100, 200"),
        ]);
        let s = load(&pairs).unwrap();
        let m = s.marzban.unwrap();
        assert_eq!(m.proxies.len(), 2);
        assert_eq!(m.inbounds["vless"], ["VLESS TCP REALITY"]);
        assert_eq!(m.timeout, Duration::from_secs(3));
        assert_eq!(s.drift_check_interval, None);
        assert_eq!(s.retry, RetryPolicy::from_millis([100, 200]));
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: [(&[(&str, &str)], &str); 7] = [
            (&[("MARZBAN_URL", "https://p")], "MARZBAN_PASSWORD"),
            (
                &[("MARZBAN_URL", "https://p"), ("MARZBAN_PASSWORD", "x")],
                "MARZBAN_USERNAME",
            ),
            (
                &[
                    ("MARZBAN_URL", "panel"),
                    ("MARZBAN_USERNAME", "a"),
                    ("MARZBAN_PASSWORD", "x"),
                ],
                "MARZBAN_URL",
            ),
            (
                &[PANEL[0], PANEL[1], PANEL[2], ("MARZBAN_PROXIES", "{vless")],
                "MARZBAN_PROXIES",
            ),
            (
                &[
                    PANEL[0],
                    PANEL[1],
                    PANEL[2],
                    ("MARZBAN_INBOUNDS", r#"{"trojan":[]}"#),
                ],
                "MARZBAN_INBOUNDS",
            ),
            (
                &[("MARZBAN_DRIFT_CHECK_SECS", "hourly")],
                "MARZBAN_DRIFT_CHECK_SECS",
            ),
            (
                &[("MARZBAN_SYNC_RETRY_DELAYS_MS", "1s")],
                "MARZBAN_SYNC_RETRY_DELAYS_MS",
            ),
        ];
        for (pairs, variable) in cases {
            let error = load(pairs).unwrap_err();
            assert!(error.contains(variable), "{variable}: {error}");
        }
        let error =
            load(&[PANEL[0], PANEL[1], PANEL[2], ("MARZBAN_TIMEOUT_SECS", "0")]).unwrap_err();
        assert!(error.contains("MARZBAN_TIMEOUT_SECS"), "{error}");
    }
}
