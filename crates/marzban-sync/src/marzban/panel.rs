//! Marzban behind the [`Panel`] boundary.

use async_trait::async_trait;

use super::{Inbounds, MarzbanClient, UserResponse};
use crate::panel::{Desired, MarzbanUsername, ModifyUser, Panel, PanelError, PanelKind, PanelUser};

impl MarzbanClient {
    /// The panel-neutral view of a Marzban user (the subscription URL made absolute).
    pub fn panel_user(&self, user: &UserResponse) -> PanelUser {
        PanelUser {
            username: user.username.clone(),
            status: user.status,
            expire: user.expire,
            data_limit: user.data_limit,
            used_traffic: user.used_traffic,
            subscription_url: self.subscription_url(user),
            key: user.vless_id().map(str::to_owned),
        }
    }
}

#[async_trait]
impl Panel for MarzbanClient {
    fn kind(&self) -> PanelKind {
        PanelKind::Marzban
    }

    /// `GET /api/admin` with our credentials.
    async fn check(&self) -> Result<(), PanelError> {
        self.check_credentials().await
    }

    async fn get_user(&self, username: &MarzbanUsername) -> Result<Option<PanelUser>, PanelError> {
        Ok(MarzbanClient::get_user(self, username)
            .await?
            .map(|u| self.panel_user(&u)))
    }

    /// Any letter case ([`MarzbanClient::find_user`]).
    async fn find_user(&self, username: &MarzbanUsername) -> Result<Option<PanelUser>, PanelError> {
        Ok(MarzbanClient::find_user(self, username)
            .await?
            .map(|u| self.panel_user(&u)))
    }

    async fn create_user(&self, desired: &Desired, note: &str) -> Result<PanelUser, PanelError> {
        let user = super::CreateUser {
            username: desired.username.clone(),
            expire: desired.expire,
            data_limit: desired.data_limit,
            note: Some(note.to_owned()),
        };
        let created = MarzbanClient::create_user(self, &user).await?;
        Ok(self.panel_user(&created))
    }

    async fn modify_user(
        &self,
        username: &MarzbanUsername,
        change: &ModifyUser,
    ) -> Result<PanelUser, PanelError> {
        let user = MarzbanClient::modify_user(self, username, change).await?;
        Ok(self.panel_user(&user))
    }

    async fn reset_usage(&self, username: &MarzbanUsername) -> Result<PanelUser, PanelError> {
        let user = self.reset_user(username).await?;
        Ok(self.panel_user(&user))
    }

    /// The protocols of `MARZBAN_PROXIES` the user lacks are added by one `PUT` that carries
    /// every proxy it has, *with its id*, plus the missing ones (with the inbounds
    /// `MARZBAN_INBOUNDS` names for them, else every inbound): Marzban keeps the ids it is
    /// given, so the keys the customer already uses survive and only the new protocols get
    /// new ones.
    async fn add_missing_access(&self, username: &MarzbanUsername) -> Result<(), PanelError> {
        let Some(found) = MarzbanClient::get_user(self, username).await? else {
            return Err(PanelError::NotFound {
                detail: format!("user {username} is not on the panel"),
            });
        };
        let settings = self.settings();
        let missing: Vec<&String> = settings
            .proxies
            .keys()
            .filter(|protocol| !found.proxies.contains_key(*protocol))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut proxies = found.proxies.clone();
        let mut inbounds = Inbounds::new();
        for protocol in &missing {
            proxies.insert((*protocol).clone(), settings.proxies[*protocol].clone());
            if let Some(tags) = settings.inbounds.get(*protocol).filter(|t| !t.is_empty()) {
                inbounds.insert((*protocol).clone(), tags.clone());
            }
        }
        tracing::info!(%username, ?missing, kept = ?found.proxies.keys().collect::<Vec<_>>(), "adopted user lacks protocols; adding them, keeping its keys");
        self.set_proxies(username, &proxies, &inbounds).await?;
        Ok(())
    }

    async fn delete_user(&self, username: &MarzbanUsername) -> Result<(), PanelError> {
        MarzbanClient::delete_user(self, username).await
    }
}
