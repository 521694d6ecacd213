//! What the ledger asks of the panel, in terms of [`MarzbanClient`] calls. Every call sends
//! absolute values (`expire`, `data_limit`, `status`), so repeating one is harmless.

use chrono::{DateTime, Utc};

use crate::marzban::{
    CreateUser, Inbounds, MarzbanClient, MarzbanError, MarzbanUsername, ModifyStatus, ModifyUser,
    UserResponse, UserStatus,
};

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
            // A tariff with 0 bytes means unlimited, as Marzban reads it.
            data_limit: data_limit.filter(|bytes| *bytes > 0),
        }
    }

    /// Whether the customer has paid time left at `now`.
    pub fn is_paid_at(&self, now: DateTime<Utc>) -> bool {
        self.expire > now.timestamp()
    }
}

/// Creates or updates the panel user so that it is active until `desired.expire`.
///
/// `known_on_panel` says whether we have pushed this user before: if not, a create is tried
/// first and an existing user (409) is adopted; if so, the user is modified and re-created
/// only when it has disappeared (404). A modify sends only `expire`, `data_limit` and
/// `status: active` — never `proxies`, which would give the customer a new key. A `limited`
/// user stays limited after that (its traffic is still over the limit), so it is reset too.
pub async fn activate(
    client: &MarzbanClient,
    desired: &Desired,
    known_on_panel: bool,
    note: &str,
) -> Result<UserResponse, MarzbanError> {
    if !known_on_panel {
        match create(client, desired, note).await {
            Ok(user) => return Ok(user),
            Err(MarzbanError::Conflict { .. }) => {
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
    let user = match client.modify_user(&desired.username, &change).await {
        Ok(user) => user,
        Err(MarzbanError::NotFound { .. }) => {
            tracing::warn!(username = %desired.username, "user missing on the panel; creating it again");
            create(client, desired, note).await?
        }
        Err(error) => return Err(error),
    };
    if user.status == UserStatus::Limited {
        tracing::info!(username = %desired.username, used_traffic = user.used_traffic, "limited user paid; resetting its traffic");
        return client.reset_user(&desired.username).await;
    }
    Ok(user)
}

/// Sets the panel user to the ledger after days were taken back: a new `expire`, and
/// `disabled` when no paid time is left. `None` when the user is not on the panel (nothing to
/// take away).
pub async fn shorten(
    client: &MarzbanClient,
    desired: &Desired,
    now: DateTime<Utc>,
) -> Result<Option<UserResponse>, MarzbanError> {
    let change = ModifyUser {
        expire: desired.expire,
        data_limit: desired.data_limit,
        status: (!desired.is_paid_at(now)).then_some(ModifyStatus::Disabled),
    };
    match client.modify_user(&desired.username, &change).await {
        Ok(user) => Ok(Some(user)),
        Err(MarzbanError::NotFound { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Brings a panel user we did not create (found by [`MarzbanClient::find_user`]; `desired`
/// carries its spelling) to `desired`. First the protocols of `MARZBAN_PROXIES` it lacks are
/// added: the `PUT` carries every proxy it has, with its id, plus the missing ones, so the keys
/// the customer already uses survive and only the new protocols get new ones (with the
/// inbounds `MARZBAN_INBOUNDS` names for them, else every inbound). Then as [`activate`] for a
/// known user. A retry looks the user up again and adds only what is still missing.
pub async fn adopt(
    client: &MarzbanClient,
    desired: &Desired,
    found: &UserResponse,
    note: &str,
) -> Result<UserResponse, MarzbanError> {
    let settings = client.settings();
    let missing: Vec<&String> = settings
        .proxies
        .keys()
        .filter(|protocol| !found.proxies.contains_key(*protocol))
        .collect();
    if !missing.is_empty() {
        let mut proxies = found.proxies.clone();
        let mut inbounds = Inbounds::new();
        for protocol in &missing {
            proxies.insert((*protocol).clone(), settings.proxies[*protocol].clone());
            if let Some(tags) = settings.inbounds.get(*protocol).filter(|t| !t.is_empty()) {
                inbounds.insert((*protocol).clone(), tags.clone());
            }
        }
        tracing::info!(username = %desired.username, ?missing, kept = ?found.proxies.keys().collect::<Vec<_>>(), "adopted user lacks protocols; adding them, keeping its keys");
        client
            .set_proxies(&desired.username, &proxies, &inbounds)
            .await?;
    }
    activate(client, desired, true, note).await
}

/// `POST /api/user` of `desired` with the configured proxies and inbounds; an existing user
/// is [`MarzbanError::Conflict`].
pub async fn create(
    client: &MarzbanClient,
    desired: &Desired,
    note: &str,
) -> Result<UserResponse, MarzbanError> {
    let user = CreateUser {
        username: desired.username.clone(),
        expire: desired.expire,
        data_limit: desired.data_limit,
        note: Some(note.to_owned()),
    };
    client.create_user(&user).await
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
/// natural expiry (`expired`) are the panel's business, not drift.
pub fn plan_repair(desired: &Desired, panel: Option<&UserResponse>, now: DateTime<Utc>) -> Repair {
    let paid = desired.is_paid_at(now);
    let Some(panel) = panel else {
        return if paid { Repair::Create } else { Repair::None };
    };
    let mut differences = Vec::new();
    if panel.expire != Some(desired.expire) {
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

/// Marzban's spelling of a status (stored in `subscriptions.status`).
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

    fn panel(expire: Option<i64>, data_limit: Option<i64>, status: UserStatus) -> UserResponse {
        serde_json::from_value(serde_json::json!({
            "username": "tg_1",
            "status": status,
            "expire": expire,
            "data_limit": data_limit,
        }))
        .unwrap()
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
}
