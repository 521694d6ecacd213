//! `marzban-sync` settings, read from the environment and validated at start-up; every error
//! names the variable to fix.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use domain::env::{EnvVar, Vars, invalid};
use messaging::RetryPolicy;
use secrecy::SecretString;
use serde::Deserialize;

use crate::marzban::{Inbounds, MarzbanSettings, Proxies};
use crate::panel::{PanelError, PanelKind, PanelSettings};
use crate::pasarguard::{PasarguardAuth, PasarguardSettings};
use crate::remnawave::RemnawaveSettings;

/// Default of `MARZBAN_SYNC_OPS_BIND`.
pub const DEFAULT_OPS_BIND: &str = "0.0.0.0:9082";
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_DRIFT_CHECK_SECS: u64 = 3600;
/// Deliveries handled at once, and so the most the consumer commits in one transaction. A
/// panel call holds no database connection; messages of one user take turns.
pub const DEFAULT_PREFETCH: u16 = 8;

/// The service's own variables ([`env_vars`] adds the common ones). The panel URL is
/// optional here because the standalone binary runs without a panel; the separate binary
/// refuses to start without it ([`crate::Settings::load`]).
pub const VARS: &[EnvVar] = &[
    EnvVar::default("MARZBAN_SYNC_OPS_BIND", DEFAULT_OPS_BIND),
    EnvVar::optional("MARZBAN_SYNC_BIND"),
    EnvVar::default("PANEL_KIND", "marzban"),
    EnvVar::optional("PANEL_URL"),
    EnvVar::default("PANEL_TIMEOUT_SECS", "10"),
    EnvVar::optional("MARZBAN_URL"),
    EnvVar::optional("MARZBAN_USERNAME"),
    EnvVar::optional("MARZBAN_PASSWORD"),
    EnvVar::optional("MARZBAN_TIMEOUT_SECS"),
    EnvVar::optional("PASARGUARD_API_KEY"),
    EnvVar::optional("PASARGUARD_USERNAME"),
    EnvVar::optional("PASARGUARD_PASSWORD"),
    EnvVar::optional("PASARGUARD_GROUP_IDS"),
    EnvVar::optional("REMNAWAVE_TOKEN"),
    EnvVar::optional("REMNAWAVE_SQUADS"),
    EnvVar::default("MARZBAN_PROXIES", r#"{"vless":{}}"#),
    EnvVar::optional("MARZBAN_INBOUNDS"),
    EnvVar::default("MARZBAN_DRIFT_CHECK_SECS", "3600"),
    EnvVar::default(
        "MARZBAN_SYNC_RETRY_DELAYS_MS",
        "1000,5000,30000,120000,600000",
    ),
    EnvVar::default("MARZBAN_SYNC_PREFETCH", "8"),
    EnvVar::default("MARZBAN_ADOPT_REMAINING", "true"),
];

/// Every variable the `marzban-sync` binary reads; it refuses to start without the panel
/// (`PANEL_URL`, or `MARZBAN_URL` for Marzban) and its credentials.
pub fn env_vars() -> Vec<EnvVar> {
    domain::env::join(&[service_kit::settings::COMMON_VARS, VARS])
}

/// This service's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "Vars")]
pub struct ServiceSettings {
    /// `MARZBAN_SYNC_OPS_BIND` (older name `MARZBAN_SYNC_BIND`; default `0.0.0.0:9082`):
    /// health and metrics. `None` when the process serves ops once for all its services (the
    /// standalone binary).
    pub ops_bind: Option<String>,
    /// The panel `PANEL_KIND` names (default Marzban), at `PANEL_URL` (Marzban: or
    /// `MARZBAN_URL`), with its own credentials and access settings. `None` when no panel URL
    /// is set: the separate binary refuses to start then ([`crate::Settings::load`]); the
    /// single-process mode runs without provisioning and leaves the payment events in the
    /// outbox.
    pub panel: Option<PanelSettings>,
    /// `MARZBAN_DRIFT_CHECK_SECS` (default 3600; 0 = no periodic drift check).
    pub drift_check_interval: Option<Duration>,
    /// `MARZBAN_SYNC_RETRY_DELAYS_MS`: comma-separated delays between attempts of a failed
    /// message before it is parked (default `1000,5000,30000,120000,600000`).
    pub retry: RetryPolicy,
    /// `MARZBAN_SYNC_PREFETCH` (default 8): deliveries handled at once.
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

/// `PANEL_KIND` (default `marzban`).
pub fn panel_kind(vars: &Vars) -> Result<PanelKind, String> {
    match vars.get("PANEL_KIND") {
        None => Ok(PanelKind::default()),
        Some(kind) => PanelKind::parse(kind)
            .ok_or_else(|| invalid("PANEL_KIND", "must be marzban, pasarguard or remnawave")),
    }
}

/// `PANEL_TIMEOUT_SECS` (older name `MARZBAN_TIMEOUT_SECS`; default 10), positive.
fn timeout(vars: &Vars) -> Result<Duration, String> {
    let name = if vars.get("PANEL_TIMEOUT_SECS").is_some() {
        "PANEL_TIMEOUT_SECS"
    } else {
        "MARZBAN_TIMEOUT_SECS"
    };
    let timeout = vars.parse_or(name, DEFAULT_TIMEOUT_SECS)?;
    if timeout == 0 {
        return Err(invalid(name, "must be positive"));
    }
    Ok(Duration::from_secs(timeout))
}

/// The client's own check phrases its messages with the variable names.
pub(crate) fn settings_error(error: PanelError) -> String {
    match error {
        PanelError::InvalidInput(message) => format!("invalid setting: {message}"),
        other => format!("invalid panel settings: {other}"),
    }
}

/// Each panel's own variables (besides `PANEL_URL` and `PANEL_TIMEOUT_SECS`).
const PANEL_VARS: [(PanelKind, &[&str]); 3] = [
    (
        PanelKind::Marzban,
        &["MARZBAN_URL", "MARZBAN_USERNAME", "MARZBAN_PASSWORD"],
    ),
    (
        PanelKind::Pasarguard,
        &[
            "PASARGUARD_API_KEY",
            "PASARGUARD_USERNAME",
            "PASARGUARD_PASSWORD",
            "PASARGUARD_GROUP_IDS",
        ],
    ),
    (
        PanelKind::Remnawave,
        &["REMNAWAVE_TOKEN", "REMNAWAVE_SQUADS"],
    ),
];

fn panel(vars: &Vars) -> Result<Option<PanelSettings>, String> {
    let kind = panel_kind(vars)?;
    // Another panel's settings beside PANEL_URL are most likely a PANEL_KIND left behind by a
    // migration: said once at start-up, not fatal (MARZBAN_* may stay after moving on).
    for (other, names) in PANEL_VARS.iter().filter(|(k, _)| *k != kind) {
        let set: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| vars.get(name).is_some())
            .collect();
        if !set.is_empty() && *other != PanelKind::Marzban {
            tracing::warn!(panel_kind = %kind, ?set, "settings of the {other} panel are set but PANEL_KIND is {kind}; they are not used");
        }
    }
    Ok(match kind {
        PanelKind::Marzban => marzban(vars)?.map(PanelSettings::Marzban),
        PanelKind::Pasarguard => pasarguard(vars)?.map(PanelSettings::Pasarguard),
        PanelKind::Remnawave => remnawave(vars)?.map(PanelSettings::Remnawave),
    })
}

/// `PANEL_URL`, `PASARGUARD_API_KEY` or else `PASARGUARD_USERNAME` and
/// `PASARGUARD_PASSWORD`, and `PASARGUARD_GROUP_IDS` (comma-separated group ids).
fn pasarguard(vars: &Vars) -> Result<Option<PasarguardSettings>, String> {
    let Some(url) = vars.get("PANEL_URL") else {
        return Ok(None);
    };
    let auth = match vars.get("PASARGUARD_API_KEY") {
        Some(key) => PasarguardAuth::ApiKey(SecretString::from(key.to_owned())),
        None => PasarguardAuth::Admin {
            username: vars
                .require(
                    "PASARGUARD_USERNAME",
                    "PANEL_URL without PASARGUARD_API_KEY",
                )?
                .to_owned(),
            password: SecretString::from(
                vars.require(
                    "PASARGUARD_PASSWORD",
                    "PANEL_URL without PASARGUARD_API_KEY",
                )?
                .to_owned(),
            ),
        },
    };
    let group_ids = vars
        .require("PASARGUARD_GROUP_IDS", "PANEL_URL")?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| invalid("PASARGUARD_GROUP_IDS", format!("{s:?} is not a group id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut settings = PasarguardSettings::new(url, auth, group_ids);
    settings.timeout = timeout(vars)?;
    settings.validate().map_err(settings_error)?;
    Ok(Some(settings))
}

/// `PANEL_URL`, `REMNAWAVE_TOKEN` (an API token from the dashboard) and `REMNAWAVE_SQUADS`
/// (comma-separated internal squad UUIDs), all required once `PANEL_URL` is set.
fn remnawave(vars: &Vars) -> Result<Option<RemnawaveSettings>, String> {
    let Some(url) = vars.get("PANEL_URL") else {
        return Ok(None);
    };
    let token = SecretString::from(vars.require("REMNAWAVE_TOKEN", "PANEL_URL")?.to_owned());
    let squads = vars
        .require("REMNAWAVE_SQUADS", "PANEL_URL")?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            uuid::Uuid::parse_str(s).map_err(|_| {
                invalid(
                    "REMNAWAVE_SQUADS",
                    format!("{s:?} is not an internal squad UUID"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut settings = RemnawaveSettings::new(url, token, squads);
    settings.timeout = timeout(vars)?;
    settings.validate().map_err(settings_error)?;
    Ok(Some(settings))
}

fn marzban(vars: &Vars) -> Result<Option<MarzbanSettings>, String> {
    let Some(url) = vars.first_of(&["PANEL_URL", "MARZBAN_URL"]) else {
        return Ok(None);
    };
    let password = SecretString::from(vars.require("MARZBAN_PASSWORD", "MARZBAN_URL")?.to_owned());
    let mut settings = MarzbanSettings::new(
        url,
        vars.require("MARZBAN_USERNAME", "MARZBAN_URL")?,
        password,
    );
    settings.timeout = timeout(vars)?;
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
    settings.validate().map_err(settings_error)?;
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
        let adopt_remaining = raw.flag("MARZBAN_ADOPT_REMAINING")?.unwrap_or(true);
        Ok(Self {
            ops_bind: Some(
                raw.first_of(&["MARZBAN_SYNC_OPS_BIND", "MARZBAN_SYNC_BIND"])
                    .unwrap_or(DEFAULT_OPS_BIND)
                    .to_owned(),
            ),
            panel: panel(&raw)?,
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

    fn marzban_of(panel: Option<PanelSettings>) -> MarzbanSettings {
        match panel {
            Some(PanelSettings::Marzban(m)) => m,
            other => panic!("not Marzban: {other:?}"),
        }
    }

    #[test]
    fn panel_url_and_timeout_have_panel_neutral_names() {
        let s = load(&[
            ("PANEL_URL", "https://new.example.com"),
            ("MARZBAN_URL", "https://old.example.com"),
            ("MARZBAN_USERNAME", "admin"),
            ("MARZBAN_PASSWORD", "pw"),
            ("PANEL_TIMEOUT_SECS", "4"),
            ("MARZBAN_TIMEOUT_SECS", "7"),
        ])
        .unwrap();
        let m = marzban_of(s.panel);
        assert_eq!(m.base_url, "https://new.example.com");
        assert_eq!(m.timeout, Duration::from_secs(4));
        let error = load(&[("PANEL_KIND", "marzneshin")]).unwrap_err();
        assert!(error.contains("PANEL_KIND"), "{error}");
    }

    #[test]
    fn pasarguard_settings() {
        let base = [("PANEL_KIND", "pasarguard"), ("PANEL_URL", "https://p")];
        let mut pairs = base.to_vec();
        pairs.extend([
            ("PASARGUARD_API_KEY", "pg_key_1"),
            ("PASARGUARD_GROUP_IDS", "1, 3"),
        ]);
        let Some(PanelSettings::Pasarguard(p)) = load(&pairs).unwrap().panel else {
            panic!("not PasarGuard");
        };
        assert_eq!(p.group_ids, [1, 3]);
        assert!(matches!(p.auth, PasarguardAuth::ApiKey(_)));
        let cases: [(&[(&str, &str)], &str); 3] = [
            (&[("PASARGUARD_GROUP_IDS", "1")], "PASARGUARD_USERNAME"),
            (
                &[("PASARGUARD_API_KEY", "pg_key_1")],
                "PASARGUARD_GROUP_IDS",
            ),
            (
                &[
                    ("PASARGUARD_API_KEY", "pg_key_1"),
                    ("PASARGUARD_GROUP_IDS", "default"),
                ],
                "PASARGUARD_GROUP_IDS",
            ),
        ];
        for (extra, variable) in cases {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            let error = load(&pairs).unwrap_err();
            assert!(error.contains(variable), "{variable}: {error}");
        }
    }

    #[test]
    fn remnawave_settings() {
        let squad = "a3a1b6c2-4f5e-4d7a-9b8c-0d1e2f3a4b5c";
        let s = load(&[
            ("PANEL_KIND", "remnawave"),
            ("PANEL_URL", "http://remnawave:3000"),
            ("REMNAWAVE_TOKEN", "t"),
            ("REMNAWAVE_SQUADS", squad),
        ])
        .unwrap();
        let Some(PanelSettings::Remnawave(r)) = s.panel else {
            panic!("not Remnawave");
        };
        assert_eq!(r.squads[0].to_string(), squad);
        let cases: [(&[(&str, &str)], &str); 3] = [
            (&[("REMNAWAVE_SQUADS", squad)], "REMNAWAVE_TOKEN"),
            (&[("REMNAWAVE_TOKEN", "t")], "REMNAWAVE_SQUADS"),
            (
                &[("REMNAWAVE_TOKEN", "t"), ("REMNAWAVE_SQUADS", "squad-one")],
                "REMNAWAVE_SQUADS",
            ),
        ];
        for (pairs, variable) in cases {
            let mut pairs = pairs.to_vec();
            pairs.extend([("PANEL_KIND", "remnawave"), ("PANEL_URL", "https://p")]);
            let error = load(&pairs).unwrap_err();
            assert!(error.contains(variable), "{variable}: {error}");
        }
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
        assert!(s.panel.is_none());
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
        let m = marzban_of(s.panel);
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
        let m = marzban_of(s.panel);
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
