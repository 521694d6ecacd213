//! PasarGuard v5 (5.2.1, the Marzban fork) behind the [`Panel`] boundary. Wire facts:
//! shared/reference/panels-remnawave-pasarguard.md §2 (and §3 for what differs from Marzban).
//!
//! - Auth: the API key `PASARGUARD_API_KEY` (`pg_key_…`, sent as `X-Api-Key`), or the admin
//!   login `PASARGUARD_USERNAME`/`PASARGUARD_PASSWORD` (form login, bearer token renewed once
//!   on 401, as for Marzban).
//! - A user gets the groups of `PASARGUARD_GROUP_IDS` (they replace Marzban's inbounds); users
//!   are addressed by numeric id (`/api/user/by-id/{id}`; the username routes are
//!   deprecated), found by `GET /api/users?username=<name>` (exact, case-sensitive).
//! - `expire` is sent as ISO-8601 UTC and read back as ISO (`Z`, `+00:00` or naive UTC).
//! - Create answers 201, delete 204, a duplicate 409. A modify sends `expire`, `data_limit`,
//!   the status — never `proxy_settings` (the keys stay) — and sends the user's `next_plan`
//!   back as the panel returned it: PasarGuard deletes a next plan a modify omits, and the
//!   plan is the seller's, not ours.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, SecondsFormat};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::http;
use crate::panel::{
    Desired, MarzbanUsername, ModifyStatus, ModifyUser, Panel, PanelError, PanelKind, PanelUser,
    UserStatus, wire_data_limit,
};

/// How PasarGuard is told who we are.
#[derive(Clone)]
pub enum PasarguardAuth {
    /// `PASARGUARD_API_KEY` (`pg_key_…`), sent as `X-Api-Key`.
    ApiKey(SecretString),
    /// `PASARGUARD_USERNAME` and `PASARGUARD_PASSWORD`: the admin form login.
    Admin {
        username: String,
        password: SecretString,
    },
}

/// How to reach and use the panel. `Debug` masks the secrets and a password in the URL.
#[derive(Clone)]
pub struct PasarguardSettings {
    /// `PANEL_URL`; the API is under `/api`.
    pub base_url: String,
    pub auth: PasarguardAuth,
    /// `PASARGUARD_GROUP_IDS`: the groups every user we create gets.
    pub group_ids: Vec<i64>,
    /// `PANEL_TIMEOUT_SECS`.
    pub timeout: Duration,
}

impl std::fmt::Debug for PasarguardSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            PasarguardAuth::ApiKey(_) => "api key".to_owned(),
            PasarguardAuth::Admin { username, .. } => format!("admin {username}"),
        };
        f.debug_struct("PasarguardSettings")
            .field("base_url", &messaging::redact::redact_url(&self.base_url))
            .field("auth", &auth)
            .field("group_ids", &self.group_ids)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PasarguardSettings {
    pub fn new(base_url: impl Into<String>, auth: PasarguardAuth, group_ids: Vec<i64>) -> Self {
        Self {
            base_url: base_url.into(),
            auth,
            group_ids,
            timeout: Duration::from_secs(10),
        }
    }

    /// Refuses settings the panel would refuse or misread, naming the setting.
    pub fn validate(&self) -> Result<(), PanelError> {
        http::check_url(&self.base_url, "PANEL_URL")?;
        let invalid = |what: &str| Err(PanelError::InvalidInput(what.to_owned()));
        match &self.auth {
            PasarguardAuth::ApiKey(key) if !key.expose_secret().starts_with("pg_key_") => {
                return invalid("PASARGUARD_API_KEY must be a PasarGuard API key (pg_key_…)");
            }
            PasarguardAuth::Admin { username, .. } if username.is_empty() => {
                return invalid("PASARGUARD_USERNAME is empty");
            }
            _ => {}
        }
        if self.group_ids.is_empty() {
            return invalid(
                "PASARGUARD_GROUP_IDS needs at least one group id (a user without a group has no access)",
            );
        }
        Ok(())
    }

    fn api_url(&self, path: &str) -> String {
        format!("{}/api{path}", self.base_url.trim_end_matches('/'))
    }
}

/// The fields of `UserResponse` we act on; others are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct PasarguardUser {
    pub id: i64,
    pub username: String,
    pub status: UserStatus,
    #[serde(default)]
    pub expire: Option<String>,
    #[serde(default)]
    pub data_limit: Option<i64>,
    #[serde(default)]
    pub used_traffic: i64,
    #[serde(default)]
    pub subscription_url: String,
    #[serde(default)]
    pub proxy_settings: Value,
    #[serde(default)]
    pub group_ids: Vec<i64>,
    /// The seller's next plan: sent back on every modify, or the panel deletes it.
    #[serde(default)]
    pub next_plan: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct UserList {
    users: Vec<PasarguardUser>,
}

/// PasarGuard's datetimes: ISO with `Z` or an offset, or naive UTC.
fn parse_time(text: &str) -> Result<i64, PanelError> {
    DateTime::parse_from_rfc3339(text)
        .map(|d| d.timestamp())
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|n| n.and_utc().timestamp())
        })
        .map_err(|e| PanelError::Decode(format!("expire {text:?}: {e}")))
}

fn iso(unix: i64) -> Result<String, PanelError> {
    if unix <= 0 {
        // 0 would mean "never".
        return Err(PanelError::InvalidInput(format!(
            "expire must be a positive Unix time, got {unix}"
        )));
    }
    DateTime::from_timestamp(unix, 0)
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
        .ok_or_else(|| PanelError::InvalidInput(format!("expiry {unix} is out of range")))
}

/// The PasarGuard admin API client. Cheap to clone.
#[derive(Clone)]
pub struct PasarguardClient {
    http: reqwest::Client,
    settings: std::sync::Arc<PasarguardSettings>,
    auth: Auth,
}

#[derive(Clone)]
enum Auth {
    Key(SecretString),
    Login(http::AdminLogin),
}

impl std::fmt::Debug for PasarguardClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasarguardClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PasarguardClient {
    /// Validates the settings and builds the HTTP client; does not contact the panel.
    pub fn new(settings: PasarguardSettings) -> Result<Self, PanelError> {
        settings.validate()?;
        let auth = match &settings.auth {
            PasarguardAuth::ApiKey(key) => Auth::Key(key.clone()),
            PasarguardAuth::Admin { username, password } => Auth::Login(http::AdminLogin::new(
                &settings.api_url(""),
                username,
                password.clone(),
            )),
        };
        Ok(Self {
            http: http::client(settings.timeout)?,
            settings: std::sync::Arc::new(settings),
            auth,
        })
    }

    pub fn settings(&self) -> &PasarguardSettings {
        &self.settings
    }

    /// One authenticated call, timed and counted; with the admin login a refused token is
    /// renewed once and the call resent once.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, PanelError> {
        http::timed(operation, async {
            let url = self.settings.api_url(path);
            let request = || self.http.request(method.clone(), &url);
            let login = match &self.auth {
                Auth::Login(login) => login,
                Auth::Key(key) => {
                    let response = body(request().header("X-Api-Key", key.expose_secret()))
                        .send()
                        .await
                        .map_err(http::unreachable)?;
                    return check(response, false).await;
                }
            };
            let token = login.token(&self.http).await?;
            let send = |token: http::Token| {
                body(request().bearer_auth(token.value.expose_secret())).send()
            };
            let response = send(token.clone()).await.map_err(http::unreachable)?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return check(response, true).await;
            }
            tracing::info!(%method, path, "PasarGuard token refused; logging in again");
            let token = login.renew(&self.http, token.generation).await?;
            let response = send(token).await.map_err(http::unreachable)?;
            check(response, true).await
        })
        .await
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<T, PanelError> {
        http::decode(self.call(operation, method, path, body).await?).await
    }

    /// `GET /api/users?username=<name>&load_sub=true`: the user of exactly this name.
    pub async fn user(
        &self,
        username: &MarzbanUsername,
    ) -> Result<Option<PasarguardUser>, PanelError> {
        let list: UserList = self
            .call_json("get_user", Method::GET, "/users", |r| {
                r.query(&[("username", username.as_str()), ("load_sub", "true")])
            })
            .await?;
        Ok(list
            .users
            .into_iter()
            .find(|u| u.username == username.as_str()))
    }

    async fn existing(&self, username: &MarzbanUsername) -> Result<PasarguardUser, PanelError> {
        self.user(username)
            .await?
            .ok_or_else(|| PanelError::NotFound {
                detail: format!("user {username} is not on the panel"),
            })
    }

    /// `PUT /api/user/by-id/{id}` with `body` plus the user's `next_plan` as it was.
    async fn modify(
        &self,
        user: &PasarguardUser,
        mut body: Value,
    ) -> Result<PasarguardUser, PanelError> {
        if let Some(plan) = &user.next_plan {
            body["next_plan"] = plan.clone();
        }
        let path = format!("/user/by-id/{}", user.id);
        self.call_json("modify_user", Method::PUT, &path, |r| r.json(&body))
            .await
    }

    fn panel_user(&self, user: &PasarguardUser) -> Result<PanelUser, PanelError> {
        Ok(PanelUser {
            username: user.username.clone(),
            status: user.status,
            expire: user.expire.as_deref().map(parse_time).transpose()?,
            data_limit: user.data_limit.filter(|b| *b > 0),
            used_traffic: user.used_traffic,
            subscription_url: crate::marzban::absolute_subscription_url(
                &self.settings.base_url,
                &user.subscription_url,
            ),
            key: user
                .proxy_settings
                .get("vless")
                .and_then(|v| v.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// A user as it answered a modify, reset or create, with its subscription link (the
    /// panel regenerates it on every answer).
    fn answered(&self, user: PasarguardUser) -> Result<PanelUser, PanelError> {
        self.panel_user(&user)
    }
}

/// FastAPI errors as typed errors, with the setting to fix on 401/403.
async fn check(response: Response, admin: bool) -> Result<Response, PanelError> {
    let status = response.status().as_u16();
    match http::check_fastapi(response).await {
        Err(PanelError::Unauthorized { detail }) => Err(PanelError::Unauthorized {
            detail: if admin {
                format!("PASARGUARD_USERNAME/PASARGUARD_PASSWORD refused (401 {detail})")
            } else {
                format!(
                    "PASARGUARD_API_KEY refused (401 {detail}): the key is wrong, expired or disabled; create one at /api/api_key or in the dashboard"
                )
            },
        }),
        Err(PanelError::Rejected {
            status: 403,
            detail,
        }) => Err(PanelError::Unauthorized {
            detail: format!(
                "{} lacks a permission (403 {detail}): it needs users.create, users.read, users.update and users.reset_usage",
                if admin {
                    "PASARGUARD_USERNAME"
                } else {
                    "PASARGUARD_API_KEY"
                }
            ),
        }),
        other => other.inspect_err(|_| tracing::debug!(status, "PasarGuard refused a call")),
    }
}

#[async_trait]
impl Panel for PasarguardClient {
    fn kind(&self) -> PanelKind {
        PanelKind::Pasarguard
    }

    /// `GET /api/group/{id}` for every group of `PASARGUARD_GROUP_IDS` (credentials and the
    /// groups), then `GET /api/users?limit=1` (the users permission).
    async fn check(&self) -> Result<(), PanelError> {
        for id in &self.settings.group_ids {
            let path = format!("/group/{id}");
            match self.call("group", Method::GET, &path, |r| r).await {
                Ok(_) => {}
                Err(PanelError::NotFound { .. }) => {
                    return Err(PanelError::InvalidInput(format!(
                        "PASARGUARD_GROUP_IDS names group {id}, which the panel does not have"
                    )));
                }
                Err(error) => return Err(error),
            }
        }
        self.call("admin", Method::GET, "/users", |r| {
            r.query(&[("limit", "1")])
        })
        .await?;
        Ok(())
    }

    async fn get_user(&self, username: &MarzbanUsername) -> Result<Option<PanelUser>, PanelError> {
        self.user(username)
            .await?
            .map(|u| self.panel_user(&u))
            .transpose()
    }

    /// `POST /api/user` → 201 with the groups, ISO `expire`, no `proxy_settings` (the panel
    /// makes the keys); 409 is [`PanelError::Conflict`].
    async fn create_user(&self, desired: &Desired, note: &str) -> Result<PanelUser, PanelError> {
        let body = json!({
            "username": desired.username.as_str(),
            "expire": iso(desired.expire)?,
            "data_limit": wire_data_limit(desired.data_limit)?,
            "data_limit_reset_strategy": "no_reset",
            "status": "active",
            "group_ids": self.settings.group_ids,
            "note": note,
        });
        let user: PasarguardUser = self
            .call_json("create_user", Method::POST, "/user", |r| r.json(&body))
            .await?;
        self.answered(user)
    }

    async fn modify_user(
        &self,
        username: &MarzbanUsername,
        change: &ModifyUser,
    ) -> Result<PanelUser, PanelError> {
        let user = self.existing(username).await?;
        let mut body = json!({
            "expire": iso(change.expire)?,
            "data_limit": wire_data_limit(change.data_limit)?,
        });
        if let Some(status) = change.status {
            body["status"] = json!(match status {
                ModifyStatus::Active => "active",
                ModifyStatus::Disabled => "disabled",
            });
        }
        let user = self.modify(&user, body).await?;
        self.answered(user)
    }

    /// `POST /api/user/by-id/{id}/reset`.
    async fn reset_usage(&self, username: &MarzbanUsername) -> Result<PanelUser, PanelError> {
        let user = self.existing(username).await?;
        let path = format!("/user/by-id/{}/reset", user.id);
        let user: PasarguardUser = self
            .call_json("reset_user", Method::POST, &path, |r| r)
            .await?;
        self.answered(user)
    }

    /// The groups of `PASARGUARD_GROUP_IDS` the user lacks are added by a modify that carries
    /// the groups it has too (the set is replaced); no `proxy_settings`, so the keys stay.
    async fn add_missing_access(&self, username: &MarzbanUsername) -> Result<(), PanelError> {
        let user = self.existing(username).await?;
        let missing: Vec<i64> = self
            .settings
            .group_ids
            .iter()
            .filter(|id| !user.group_ids.contains(id))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        tracing::info!(%username, ?missing, kept = ?user.group_ids, "adopted user lacks groups; adding them, keeping its keys");
        let groups: Vec<i64> = user.group_ids.iter().copied().chain(missing).collect();
        self.modify(&user, json!({"group_ids": groups})).await?;
        Ok(())
    }

    /// `DELETE /api/user/by-id/{id}` → 204.
    async fn delete_user(&self, username: &MarzbanUsername) -> Result<(), PanelError> {
        let user = self.existing(username).await?;
        let path = format!("/user/by-id/{}", user.id);
        self.call("delete_user", Method::DELETE, &path, |r| r)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_in_every_spelling() {
        for text in [
            "2026-12-31T23:59:59Z",
            "2026-12-31T23:59:59+00:00",
            "2026-12-31T23:59:59",
            "2026-12-31T23:59:59.000000",
        ] {
            assert_eq!(parse_time(text).unwrap(), 1_798_761_599, "{text}");
        }
        assert_eq!(iso(1_798_761_599).unwrap(), "2026-12-31T23:59:59Z");
        assert!(iso(0).is_err(), "0 would be never");
    }

    #[test]
    fn settings_name_what_is_wrong() {
        let key = PasarguardAuth::ApiKey(SecretString::from("pg_key_x"));
        assert!(
            PasarguardSettings::new("https://p", key.clone(), vec![1])
                .validate()
                .is_ok()
        );
        let error = PasarguardSettings::new("https://p", key, vec![])
            .validate()
            .unwrap_err();
        assert!(
            error.to_string().contains("PASARGUARD_GROUP_IDS"),
            "{error}"
        );
        let bearer = PasarguardAuth::ApiKey(SecretString::from("eyJhbGciOi"));
        let error = PasarguardSettings::new("https://p", bearer, vec![1])
            .validate()
            .unwrap_err();
        assert!(error.to_string().contains("PASARGUARD_API_KEY"), "{error}");
        let printed = format!(
            "{:?}",
            PasarguardSettings::new(
                "https://p",
                PasarguardAuth::ApiKey(SecretString::from("pg_key_secret")),
                vec![1]
            )
        );
        assert!(!printed.contains("pg_key_secret"), "{printed}");
    }

    #[test]
    fn users_are_read_with_fields_we_do_not_know() {
        let user: PasarguardUser = serde_json::from_value(json!({
            "id": 42, "username": "tg_1", "status": "on_hold", "expire": null,
            "data_limit": 0, "used_traffic": 5, "subscription_url": "",
            "admin": {"id": 1}, "hwid_limit": null, "a_future_field": [1],
            "proxy_settings": {"vless": {"id": "35e4e39c-7d5c-4f4b-8b71-558e4f37ff53"}},
            "group_ids": [1], "next_plan": {"user_template_id": 3}
        }))
        .unwrap();
        assert_eq!(user.status, UserStatus::OnHold);
        assert_eq!(user.next_plan, Some(json!({"user_template_id": 3})));
    }
}
