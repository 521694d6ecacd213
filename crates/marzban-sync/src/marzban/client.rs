//! HTTP client of the Marzban admin API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use domain::ids::MarzbanUsername;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::http;
use crate::panel::PanelError;

use super::types::{
    CreateUser, CreateUserBody, Inbounds, ModifyUser, ModifyUserBody, Proxies, SetProxiesBody,
    UserList, UserResponse,
};

/// How to reach and use the panel. `Debug` masks a password written into `MARZBAN_URL`
/// (`https://user:pass@panel…`); the admin password itself is a secret.
#[derive(Clone)]
pub struct MarzbanSettings {
    /// Panel URL, e.g. `https://panel.example.com` (`MARZBAN_URL`); the API is under `/api`.
    pub base_url: String,
    /// Admin login (`MARZBAN_USERNAME`).
    pub username: String,
    /// Admin password (`MARZBAN_PASSWORD`).
    pub password: SecretString,
    /// Whole-request timeout, login included; a timeout is reported as [`MarzbanError::Unavailable`].
    pub timeout: Duration,
    /// `proxies` of every create (`MARZBAN_PROXIES`); at least one protocol.
    pub proxies: Proxies,
    /// `inbounds` of every create (`MARZBAN_INBOUNDS`); always sent, because a create without
    /// it gives the user no inbound at all (§4b).
    pub inbounds: Inbounds,
}

impl std::fmt::Debug for MarzbanSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarzbanSettings")
            .field("base_url", &messaging::redact::redact_url(&self.base_url))
            .field("username", &self.username)
            .field("password", &self.password)
            .field("timeout", &self.timeout)
            .field("proxies", &self.proxies)
            .field("inbounds", &self.inbounds)
            .finish()
    }
}

impl MarzbanSettings {
    /// Settings with a 10 s timeout, `{"vless": {}}` proxies and every VLESS inbound.
    pub fn new(
        base_url: impl Into<String>,
        username: impl Into<String>,
        password: SecretString,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            username: username.into(),
            password,
            timeout: Duration::from_secs(10),
            proxies: BTreeMap::from([("vless".to_owned(), Value::Object(Default::default()))]),
            inbounds: BTreeMap::from([("vless".to_owned(), Vec::new())]),
        }
    }

    /// Refuses settings Marzban would reject or misread, naming the setting.
    pub fn validate(&self) -> Result<(), MarzbanError> {
        let invalid = |what: &str| Err(MarzbanError::InvalidInput(what.to_owned()));
        http::check_url(&self.base_url, "PANEL_URL (or MARZBAN_URL)")?;
        if self.username.is_empty() {
            return invalid("MARZBAN_USERNAME is empty");
        }
        if self.timeout.is_zero() {
            return invalid("the Marzban timeout must be positive");
        }
        if self.proxies.is_empty() {
            return invalid("MARZBAN_PROXIES needs at least one protocol");
        }
        const PROTOCOLS: [&str; 4] = ["vmess", "vless", "trojan", "shadowsocks"];
        for (protocol, settings) in &self.proxies {
            if !PROTOCOLS.contains(&protocol.as_str()) {
                return invalid(&format!("MARZBAN_PROXIES: unknown protocol {protocol:?}"));
            }
            if !settings.is_object() {
                return invalid(&format!(
                    "MARZBAN_PROXIES: {protocol} settings must be an object"
                ));
            }
        }
        // Marzban silently drops inbounds of protocols not in `proxies`: that is a typo here.
        if let Some(protocol) = self
            .inbounds
            .keys()
            .find(|p| !self.proxies.contains_key(*p))
        {
            return invalid(&format!(
                "MARZBAN_INBOUNDS names {protocol:?}, which is not in MARZBAN_PROXIES"
            ));
        }
        Ok(())
    }

    fn api_url(&self, path: &str) -> String {
        format!("{}/api{path}", self.base_url.trim_end_matches('/'))
    }
}

/// What went wrong talking to Marzban (the panel-neutral [`PanelError`]).
pub type MarzbanError = PanelError;

/// The Marzban admin API: form login, a cached bearer token renewed once on 401, typed errors.
/// Cheap to clone; clones share the token.
#[derive(Clone)]
pub struct MarzbanClient {
    http: reqwest::Client,
    settings: Arc<MarzbanSettings>,
    login: http::AdminLogin,
}

impl std::fmt::Debug for MarzbanClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarzbanClient")
            .field("base_url", &self.settings.base_url)
            .finish_non_exhaustive()
    }
}

impl MarzbanClient {
    /// Validates the settings and builds the HTTP client; does not contact the panel.
    pub fn new(settings: MarzbanSettings) -> Result<Self, MarzbanError> {
        settings.validate()?;
        let http = http::client(settings.timeout)?;
        let login = http::AdminLogin::new(
            &settings.api_url(""),
            &settings.username,
            settings.password.clone(),
        );
        Ok(Self {
            http,
            settings: Arc::new(settings),
            login,
        })
    }

    pub fn settings(&self) -> &MarzbanSettings {
        &self.settings
    }

    /// Logs in now and caches the token (a start-up check of the credentials).
    pub async fn login(&self) -> Result<(), MarzbanError> {
        self.login.login(&self.http).await?;
        Ok(())
    }

    /// `GET /api/user/{username}`; `None` when the panel has no such user.
    pub async fn get_user(
        &self,
        username: &MarzbanUsername,
    ) -> Result<Option<UserResponse>, MarzbanError> {
        let path = format!("/user/{username}");
        match self.call("get_user", Method::GET, &path, |r| r).await {
            Ok(response) => http::decode(response).await.map(Some),
            Err(MarzbanError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /api/admin`: the panel answers and accepts our credentials (a readiness check;
    /// logs in first when no token is cached, and again once if the token is refused).
    pub async fn check_credentials(&self) -> Result<(), MarzbanError> {
        self.call("admin", Method::GET, "/admin", |r| r).await?;
        Ok(())
    }

    /// `GET /api/users?search=…`: the users whose name or note contains `text` as SQL `ILIKE`
    /// sees it — in any letter case, with `_` matching any one character.
    pub async fn search_users(&self, text: &str) -> Result<Vec<UserResponse>, MarzbanError> {
        let response = self
            .call("search_users", Method::GET, "/users", |r| {
                r.query(&[("search", text)])
            })
            .await?;
        Ok(http::decode::<UserList>(response).await?.users)
    }

    /// The panel user `username` names in any letter case: [`MarzbanClient::search_users`],
    /// then an exact case-insensitive match. Marzban 0.8.4 on SQLite compares names
    /// case-sensitively (`GET /api/user/tg_1` misses an existing `TG_1`, and a create of
    /// `tg_1` makes a second user), so this is how an existing user is found before creating
    /// one. When the panel has several spellings, the exact one wins, else the first listed.
    pub async fn find_user(
        &self,
        username: &MarzbanUsername,
    ) -> Result<Option<UserResponse>, MarzbanError> {
        let name = username.as_str();
        let mut matches: Vec<UserResponse> = self
            .search_users(name)
            .await?
            .into_iter()
            .filter(|u| u.username.eq_ignore_ascii_case(name))
            .collect();
        let exact = matches.iter().position(|u| u.username == name);
        Ok(match exact {
            Some(index) => Some(matches.swap_remove(index)),
            None => matches.into_iter().next(),
        })
    }

    /// `PUT /api/user/{username}` with `proxies` (and `inbounds` for added protocols that
    /// must not get every inbound). Marzban keeps the ids and passwords it is given, generates
    /// them for a protocol sent without, and **deletes every protocol not in `proxies`**: pass
    /// all the user's proxies as the panel returned them, plus the new ones.
    pub async fn set_proxies(
        &self,
        username: &MarzbanUsername,
        proxies: &Proxies,
        inbounds: &Inbounds,
    ) -> Result<UserResponse, MarzbanError> {
        if proxies.is_empty() {
            return Err(MarzbanError::InvalidInput(
                "a user needs at least one protocol".to_owned(),
            ));
        }
        let body = SetProxiesBody {
            proxies,
            inbounds: (!inbounds.is_empty()).then_some(inbounds),
        };
        let path = format!("/user/{username}");
        let response = self
            .call("set_proxies", Method::PUT, &path, |r| r.json(&body))
            .await?;
        http::decode(response).await
    }

    /// `POST /api/user` with the configured `proxies` and `inbounds`. An existing user is
    /// [`MarzbanError::Conflict`]: the caller adopts it with [`MarzbanClient::modify_user`].
    pub async fn create_user(&self, user: &CreateUser) -> Result<UserResponse, MarzbanError> {
        check_expire(user.expire)?;
        let body = CreateUserBody {
            username: user.username.as_str(),
            proxies: &self.settings.proxies,
            inbounds: &self.settings.inbounds,
            expire: user.expire,
            data_limit: data_limit(user.data_limit)?,
            data_limit_reset_strategy: "no_reset",
            status: "active",
            note: user.note.as_deref(),
        };
        let response = self
            .call("create_user", Method::POST, "/user", |r| r.json(&body))
            .await?;
        http::decode(response).await
    }

    /// `PUT /api/user/{username}` with only `expire`, `data_limit` and the optional `status`:
    /// the user's key and inbounds stay as they are.
    pub async fn modify_user(
        &self,
        username: &MarzbanUsername,
        change: &ModifyUser,
    ) -> Result<UserResponse, MarzbanError> {
        check_expire(change.expire)?;
        let body = ModifyUserBody {
            expire: change.expire,
            data_limit: data_limit(change.data_limit)?,
            status: change.status,
        };
        let path = format!("/user/{username}");
        let response = self
            .call("modify_user", Method::PUT, &path, |r| r.json(&body))
            .await?;
        http::decode(response).await
    }

    /// `POST /api/user/{username}/reset`: used traffic back to 0, a `limited` user active again.
    pub async fn reset_user(
        &self,
        username: &MarzbanUsername,
    ) -> Result<UserResponse, MarzbanError> {
        let path = format!("/user/{username}/reset");
        let response = self.call("reset_user", Method::POST, &path, |r| r).await?;
        http::decode(response).await
    }

    /// `DELETE /api/user/{username}`; a missing user is [`MarzbanError::NotFound`].
    pub async fn delete_user(&self, username: &MarzbanUsername) -> Result<(), MarzbanError> {
        let path = format!("/user/{username}");
        self.call("delete_user", Method::DELETE, &path, |r| r)
            .await?;
        Ok(())
    }

    /// The user's subscription URL, absolute.
    pub fn subscription_url(&self, user: &UserResponse) -> String {
        super::absolute_subscription_url(&self.settings.base_url, &user.subscription_url)
    }

    /// [`MarzbanClient::call_once`], timed and counted by `operation`.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, MarzbanError> {
        http::timed(operation, self.call_once(method, path, body)).await
    }

    /// Sends an authenticated request; on 401 logs in again once and resends once.
    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, MarzbanError> {
        let url = self.settings.api_url(path);
        let token = self.login.token(&self.http).await?;
        let response = self.send(&method, &url, &token, &body).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return http::check_fastapi(response).await;
        }
        tracing::info!(%method, path, "Marzban token refused; logging in again");
        let token = self.login.renew(&self.http, token.generation).await?;
        let response = self.send(&method, &url, &token, &body).await?;
        http::check_fastapi(response).await
    }

    async fn send(
        &self,
        method: &Method,
        url: &str,
        token: &http::Token,
        body: &impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, MarzbanError> {
        let request = self
            .http
            .request(method.clone(), url)
            .bearer_auth(token.value.expose_secret());
        body(request).send().await.map_err(http::unreachable)
    }
}

fn check_expire(expire: i64) -> Result<(), MarzbanError> {
    if expire > 0 {
        Ok(())
    } else {
        // 0 would mean "never expires" to Marzban.
        Err(MarzbanError::InvalidInput(format!(
            "expire must be a positive Unix time, got {expire}"
        )))
    }
}

fn data_limit(limit: Option<i64>) -> Result<i64, MarzbanError> {
    match limit {
        None => Ok(0),
        Some(bytes) if bytes > 0 => Ok(bytes),
        Some(bytes) => Err(MarzbanError::InvalidInput(format!(
            "data_limit must be positive (None = unlimited), got {bytes}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_the_passwords() {
        let settings = MarzbanSettings::new(
            "https://ops:url-secret@panel.example.com",
            "admin",
            SecretString::from("admin-secret"),
        );
        let printed = format!("{settings:?}");
        assert!(printed.contains("panel.example.com"), "{printed}");
        assert!(!printed.contains("url-secret"), "{printed}");
        assert!(!printed.contains("admin-secret"), "{printed}");
    }

    #[test]
    fn settings_refuse_inbounds_without_proxies_and_empty_proxies() {
        let mut settings =
            MarzbanSettings::new("http://127.0.0.1:1", "admin", SecretString::from("x"));
        assert!(settings.validate().is_ok());
        settings.inbounds.insert("vmess".into(), vec![]);
        assert!(settings.validate().is_err());
        settings.inbounds.clear();
        settings.proxies.clear();
        assert!(settings.validate().is_err());
        let bad_url = MarzbanSettings::new("panel.example.com", "admin", SecretString::from("x"));
        assert!(bad_url.validate().is_err());
    }

    #[test]
    fn unlimited_data_is_sent_as_zero_and_expire_must_be_positive() {
        assert_eq!(data_limit(None).ok(), Some(0));
        assert_eq!(data_limit(Some(5)).ok(), Some(5));
        assert!(data_limit(Some(0)).is_err());
        assert!(check_expire(0).is_err());
        assert!(check_expire(1_767_225_600).is_ok());
    }
}
