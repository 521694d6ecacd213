//! The panel boundary: what the ledger, the retries, refunds, the drift check, adoption and
//! readiness ask of a VPN panel ([`Panel`]), and the steps built on it. Every call sends
//! absolute values (expiry, data limit, status), so repeating one is harmless.
//!
//! Implementations: [`crate::marzban`] (Marzban 0.8.4, the default), [`crate::pasarguard`]
//! (PasarGuard v5) and [`crate::remnawave`] (Remnawave 2.x), picked by `PANEL_KIND`
//! ([`PanelSettings`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use domain::ids::MarzbanUsername;

use crate::marzban::{MarzbanClient, MarzbanSettings};
use crate::pasarguard::{PasarguardClient, PasarguardSettings};
use crate::remnawave::{RemnawaveClient, RemnawaveSettings};

/// Which panel `PANEL_KIND` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PanelKind {
    #[default]
    Marzban,
    Pasarguard,
    Remnawave,
}

impl PanelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Marzban => "marzban",
            Self::Pasarguard => "pasarguard",
            Self::Remnawave => "remnawave",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value.trim().to_ascii_lowercase().as_str() {
            "marzban" => Self::Marzban,
            "pasarguard" => Self::Pasarguard,
            "remnawave" => Self::Remnawave,
            _ => return None,
        })
    }
}

impl std::fmt::Display for PanelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The settings of the configured panel.
#[derive(Debug, Clone)]
pub enum PanelSettings {
    Marzban(MarzbanSettings),
    Pasarguard(PasarguardSettings),
    Remnawave(RemnawaveSettings),
}

impl PanelSettings {
    pub fn kind(&self) -> PanelKind {
        match self {
            Self::Marzban(_) => PanelKind::Marzban,
            Self::Pasarguard(_) => PanelKind::Pasarguard,
            Self::Remnawave(_) => PanelKind::Remnawave,
        }
    }

    /// The panel URL, password masked (for logs).
    pub fn url(&self) -> String {
        let url = match self {
            Self::Marzban(s) => &s.base_url,
            Self::Pasarguard(s) => &s.base_url,
            Self::Remnawave(s) => &s.base_url,
        };
        messaging::redact::redact_url(url)
    }

    /// Validates the settings and builds the client; does not contact the panel.
    pub fn connect(&self) -> Result<Arc<dyn Panel>, PanelError> {
        Ok(match self {
            Self::Marzban(s) => Arc::new(MarzbanClient::new(s.clone())?),
            Self::Pasarguard(s) => Arc::new(PasarguardClient::new(s.clone())?),
            Self::Remnawave(s) => Arc::new(RemnawaveClient::new(s.clone())?),
        })
    }

    /// The Marzban settings, when the panel is Marzban.
    pub fn marzban(&self) -> Option<&MarzbanSettings> {
        match self {
            Self::Marzban(s) => Some(s),
            _ => None,
        }
    }
}

/// A panel user's status, in the panel-neutral form (Marzban's spelling on the wire of the
/// `subscriptions.status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
    /// Traffic over the limit.
    Limited,
    Expired,
    OnHold,
    /// A status a later panel added; treated as "not active" by callers.
    #[serde(other)]
    Unknown,
}

/// A panel user as the ledger sees it, whatever the panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelUser {
    /// The panel's spelling of the name.
    pub username: String,
    pub status: UserStatus,
    /// Absolute expiry, Unix seconds; `None` = never.
    pub expire: Option<i64>,
    /// Bytes; `None` = unlimited.
    pub data_limit: Option<i64>,
    pub used_traffic: i64,
    /// The customer's subscription link, absolute.
    pub subscription_url: String,
    /// The customer's VLESS key (UUID), which must survive every extension.
    pub key: Option<String>,
}

/// A change to an existing panel user: absolute values only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModifyUser {
    /// Absolute expiry, Unix seconds (UTC); must be positive.
    pub expire: i64,
    /// Traffic limit in bytes; `None` = unlimited.
    pub data_limit: Option<i64>,
    /// Sent only when set, e.g. to reactivate a `limited` or `disabled` user.
    pub status: Option<ModifyStatus>,
}

/// The statuses a modify may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModifyStatus {
    Active,
    Disabled,
}

/// What went wrong talking to the panel. Only [`PanelError::Unavailable`] and
/// [`PanelError::Decode`] are worth retrying as they are; the others need a different request
/// or an operator.
#[derive(Debug, thiserror::Error)]
pub enum PanelError {
    /// Wrong credentials, an expired or deleted token, or a token without the scope.
    #[error("the panel refused our credentials: {detail}")]
    Unauthorized { detail: String },
    /// The user (or the route) does not exist.
    #[error("panel: not found: {detail}")]
    NotFound { detail: String },
    /// The user already exists (Marzban/PasarGuard 409, Remnawave 400 `A019`).
    #[error("panel: conflict: {detail}")]
    Conflict { detail: String },
    /// The request's fields were refused, as field → message.
    #[error("the panel rejected the request fields: {fields:?}")]
    Validation { fields: BTreeMap<String, String> },
    /// Any other 4xx, e.g. Marzban's 400 "Protocol vless is disabled on your server".
    #[error("the panel rejected the request with {status}: {detail}")]
    Rejected { status: u16, detail: String },
    /// 5xx, 408, 429, connection failures (a dropped connection too) and timeouts: try
    /// again later.
    #[error("the panel is unavailable: {reason}")]
    Unavailable { status: Option<u16>, reason: String },
    /// A 2xx answer we could not read (an HTML page from a reverse proxy, a changed API):
    /// retried, since every call is absolute and repeating it is harmless.
    #[error("cannot decode the panel's answer: {0}")]
    Decode(String),
    /// Refused before sending: bad settings or arguments.
    #[error("invalid panel request: {0}")]
    InvalidInput(String),
}

impl PanelError {
    /// A short stable name of the variant, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "unauthorized",
            Self::NotFound { .. } => "not_found",
            Self::Conflict { .. } => "conflict",
            Self::Validation { .. } => "validation",
            Self::Rejected { .. } => "rejected",
            Self::Unavailable { .. } => "unavailable",
            Self::Decode(_) => "decode",
            Self::InvalidInput(_) => "invalid_input",
        }
    }

    /// Whether the same request may succeed later without any change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Decode(_))
    }

    /// Whether nothing else will get through either (the panel is down or refuses us): a
    /// drift pass stops.
    pub fn stops_everything(&self) -> bool {
        self.is_retryable() || matches!(self, Self::Unauthorized { .. })
    }
}

/// What the ledger asks of a panel. Implementations keep the customer's keys on every call
/// and send absolute values only.
#[async_trait]
pub trait Panel: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> PanelKind;

    /// The panel answers and accepts our credentials, and what the settings name exists
    /// (Remnawave's squads, PasarGuard's groups): the readiness check and start-up check. An
    /// error names the setting to fix.
    async fn check(&self) -> Result<(), PanelError>;

    /// The user `username` names, exactly; `None` when the panel has none.
    async fn get_user(&self, username: &MarzbanUsername) -> Result<Option<PanelUser>, PanelError>;

    /// The user `username` names as the panel may spell it (Marzban: any letter case; the
    /// others compare names exactly, so as [`Panel::get_user`]).
    async fn find_user(&self, username: &MarzbanUsername) -> Result<Option<PanelUser>, PanelError> {
        self.get_user(username).await
    }

    /// Creates `desired` with the configured access (inbounds, groups, squads); an existing
    /// user is [`PanelError::Conflict`].
    async fn create_user(&self, desired: &Desired, note: &str) -> Result<PanelUser, PanelError>;

    /// Sets expiry, data limit and optionally the status; keys stay. A missing user is
    /// [`PanelError::NotFound`].
    async fn modify_user(
        &self,
        username: &MarzbanUsername,
        change: &ModifyUser,
    ) -> Result<PanelUser, PanelError>;

    /// Used traffic back to 0, so a `limited` user is active again.
    async fn reset_usage(&self, username: &MarzbanUsername) -> Result<PanelUser, PanelError>;

    /// Gives a user we did not create the access the settings name that it lacks (Marzban
    /// protocols, PasarGuard groups, Remnawave squads), keeping its keys and what it has.
    async fn add_missing_access(&self, username: &MarzbanUsername) -> Result<(), PanelError>;

    /// Deletes the user (tests, operators); a missing one is [`PanelError::NotFound`].
    async fn delete_user(&self, username: &MarzbanUsername) -> Result<(), PanelError>;
}

/// The panel state the ledger wants for one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub username: MarzbanUsername,
    /// Absolute expiry, Unix seconds.
    pub expire: i64,
    /// Bytes; `None` = unlimited.
    pub data_limit: Option<i64>,
}

impl Desired {
    pub fn new(
        username: MarzbanUsername,
        expires_at: DateTime<Utc>,
        data_limit: Option<i64>,
    ) -> Self {
        Self {
            username,
            expire: expires_at.timestamp(),
            // A tariff with 0 bytes means unlimited, as the panels read it.
            data_limit: data_limit.filter(|bytes| *bytes > 0),
        }
    }

    /// Whether the customer has paid time left at `now`.
    pub fn is_paid_at(&self, now: DateTime<Utc>) -> bool {
        self.expire > now.timestamp()
    }
}

/// How far in the future a panel that refuses a past expiry (Remnawave's update) is told a
/// user without paid time expires; such a user is also disabled. The drift check accepts any
/// expiry up to this far ahead for a user without paid time.
pub const PAST_EXPIRY_SLACK_SECS: i64 = 300;

/// Creates or updates the panel user so that it is active until `desired.expire`.
///
/// `known_on_panel` says whether we have pushed this user before: if not, a create is tried
/// first and an existing user (conflict) is adopted; if so, the user is modified and
/// re-created only when it has disappeared. A modify sends only expiry, data limit and
/// `active` — never anything that would give the customer a new key. A `limited` user stays
/// limited after that (its traffic is still over the limit), so it is reset too.
pub async fn activate(
    panel: &dyn Panel,
    desired: &Desired,
    known_on_panel: bool,
    note: &str,
) -> Result<PanelUser, PanelError> {
    if !known_on_panel {
        match panel.create_user(desired, note).await {
            Ok(user) => return Ok(user),
            Err(PanelError::Conflict { .. }) => {
                tracing::info!(username = %desired.username, "user already on the panel; adopting it");
            }
            Err(error) => return Err(error),
        }
    }
    let change = ModifyUser {
        expire: desired.expire,
        data_limit: desired.data_limit,
        status: Some(ModifyStatus::Active),
    };
    let user = match panel.modify_user(&desired.username, &change).await {
        Ok(user) => user,
        Err(PanelError::NotFound { .. }) => {
            tracing::warn!(username = %desired.username, "user missing on the panel; creating it again");
            panel.create_user(desired, note).await?
        }
        Err(error) => return Err(error),
    };
    if user.status == UserStatus::Limited {
        tracing::info!(username = %desired.username, used_traffic = user.used_traffic, "limited user paid; resetting its traffic");
        return panel.reset_usage(&desired.username).await;
    }
    Ok(user)
}

/// Sets the panel user to the ledger after days were taken back: a new expiry, and
/// `disabled` when no paid time is left. `None` when the user is not on the panel (nothing to
/// take away).
pub async fn shorten(
    panel: &dyn Panel,
    desired: &Desired,
    now: DateTime<Utc>,
) -> Result<Option<PanelUser>, PanelError> {
    let change = ModifyUser {
        expire: desired.expire,
        data_limit: desired.data_limit,
        status: (!desired.is_paid_at(now)).then_some(ModifyStatus::Disabled),
    };
    match panel.modify_user(&desired.username, &change).await {
        Ok(user) => Ok(Some(user)),
        Err(PanelError::NotFound { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Brings a panel user we did not create (found by [`Panel::find_user`]; `desired` carries
/// its spelling) to `desired`: first the access the settings name that it lacks is added,
/// keeping its keys ([`Panel::add_missing_access`]), then as [`activate`] for a known user. A
/// retry adds only what is still missing.
pub async fn adopt(
    panel: &dyn Panel,
    desired: &Desired,
    note: &str,
) -> Result<PanelUser, PanelError> {
    panel.add_missing_access(&desired.username).await?;
    activate(panel, desired, true, note).await
}

/// What the drift check does about one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// The panel matches the ledger.
    None,
    /// The customer has paid time but no panel user.
    Create,
    /// The panel differs; `differences` says how, for the log.
    Modify {
        change: ModifyUser,
        differences: Vec<String>,
    },
}

/// Compares the panel user with the ledger. Traffic limits reached by use (`limited`) and
/// natural expiry (`expired`) are the panel's business, not drift. A user without paid time
/// may show an expiry up to [`PAST_EXPIRY_SLACK_SECS`] ahead (a panel that refuses a past
/// one) as long as it is not active.
pub fn plan_repair(desired: &Desired, panel: Option<&PanelUser>, now: DateTime<Utc>) -> Repair {
    let paid = desired.is_paid_at(now);
    let Some(panel) = panel else {
        return if paid { Repair::Create } else { Repair::None };
    };
    let mut differences = Vec::new();
    let lapsed_enough = !paid
        && panel
            .expire
            .is_some_and(|e| e <= now.timestamp() + PAST_EXPIRY_SLACK_SECS);
    if panel.expire != Some(desired.expire) && !lapsed_enough {
        differences.push(format!("expire {:?} -> {}", panel.expire, desired.expire));
    }
    if panel.data_limit != desired.data_limit {
        differences.push(format!(
            "data_limit {:?} -> {:?}",
            panel.data_limit, desired.data_limit
        ));
    }
    let status = match (paid, panel.status) {
        (true, UserStatus::Disabled) => Some(ModifyStatus::Active),
        (false, UserStatus::Active) => Some(ModifyStatus::Disabled),
        _ => None,
    };
    if let Some(status) = status {
        differences.push(format!("status {} -> {status:?}", status_str(panel.status)));
    }
    if differences.is_empty() {
        return Repair::None;
    }
    Repair::Modify {
        change: ModifyUser {
            expire: desired.expire,
            data_limit: desired.data_limit,
            status,
        },
        differences,
    }
}

/// The neutral spelling of a status (stored in `subscriptions.status`).
pub fn status_str(status: UserStatus) -> &'static str {
    match status {
        UserStatus::Active => "active",
        UserStatus::Disabled => "disabled",
        UserStatus::Limited => "limited",
        UserStatus::Expired => "expired",
        UserStatus::OnHold => "on_hold",
        UserStatus::Unknown => "unknown",
    }
}

/// A tariff's data limit as PasarGuard and Remnawave take it: bytes, 0 for unlimited; a
/// non-positive limit is refused rather than sent as "unlimited".
pub(crate) fn wire_data_limit(limit: Option<i64>) -> Result<i64, PanelError> {
    match limit {
        None => Ok(0),
        Some(bytes) if bytes > 0 => Ok(bytes),
        Some(bytes) => Err(PanelError::InvalidInput(format!(
            "data_limit must be positive (None = unlimited), got {bytes}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(expire: i64) -> Desired {
        Desired {
            username: MarzbanUsername::parse("tg_1").unwrap(),
            expire,
            data_limit: Some(100),
        }
    }

    fn panel(expire: Option<i64>, data_limit: Option<i64>, status: UserStatus) -> PanelUser {
        PanelUser {
            username: "tg_1".to_owned(),
            status,
            expire,
            data_limit,
            used_traffic: 0,
            subscription_url: String::new(),
            key: None,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_000_000, 0).unwrap()
    }

    #[test]
    fn matching_panel_needs_nothing_and_usage_limits_are_not_drift() {
        let d = desired(2_000_000);
        for status in [UserStatus::Active, UserStatus::Limited] {
            let p = panel(Some(2_000_000), Some(100), status);
            assert_eq!(plan_repair(&d, Some(&p), now()), Repair::None);
        }
        let lapsed = desired(900_000);
        let p = panel(Some(900_000), Some(100), UserStatus::Expired);
        assert_eq!(plan_repair(&lapsed, Some(&p), now()), Repair::None);
    }

    #[test]
    fn a_disabled_user_without_paid_time_may_show_a_near_future_expiry() {
        let lapsed = desired(900_000);
        let soon = now().timestamp() + PAST_EXPIRY_SLACK_SECS;
        let p = panel(Some(soon), Some(100), UserStatus::Disabled);
        assert_eq!(plan_repair(&lapsed, Some(&p), now()), Repair::None);
        let later = panel(Some(soon + 1), Some(100), UserStatus::Disabled);
        assert!(matches!(
            plan_repair(&lapsed, Some(&later), now()),
            Repair::Modify { change, .. } if change.expire == 900_000 && change.status.is_none()
        ));
    }

    #[test]
    fn missing_user_is_created_only_when_paid() {
        assert_eq!(
            plan_repair(&desired(2_000_000), None, now()),
            Repair::Create
        );
        assert_eq!(plan_repair(&desired(900_000), None, now()), Repair::None);
    }

    #[test]
    fn hand_edits_are_reverted() {
        let p = panel(Some(5_000_000), None, UserStatus::Disabled);
        let Repair::Modify {
            change,
            differences,
        } = plan_repair(&desired(2_000_000), Some(&p), now())
        else {
            panic!("expected a modify");
        };
        assert_eq!(
            change,
            ModifyUser {
                expire: 2_000_000,
                data_limit: Some(100),
                status: Some(ModifyStatus::Active),
            }
        );
        assert_eq!(differences.len(), 3, "{differences:?}");

        let p = panel(Some(900_000), Some(100), UserStatus::Active);
        let repair = plan_repair(&desired(900_000), Some(&p), now());
        assert!(
            matches!(&repair, Repair::Modify { change, .. } if change.status == Some(ModifyStatus::Disabled)),
            "{repair:?}"
        );
    }

    #[test]
    fn zero_byte_limit_means_unlimited() {
        let d = Desired::new(MarzbanUsername::parse("tg_1").unwrap(), now(), Some(0));
        assert_eq!(d.data_limit, None);
    }

    #[test]
    fn panel_kinds() {
        for kind in [
            PanelKind::Marzban,
            PanelKind::Pasarguard,
            PanelKind::Remnawave,
        ] {
            assert_eq!(PanelKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(PanelKind::parse(" Remnawave "), Some(PanelKind::Remnawave));
        assert_eq!(PanelKind::parse("marzneshin"), None);
    }
}
