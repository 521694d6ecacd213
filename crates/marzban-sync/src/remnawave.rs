//! Remnawave 2.x (2.8.1) behind the [`Panel`] boundary. Wire facts:
//! shared/reference/panels-remnawave-pasarguard.md §1 (and §3 for what differs from Marzban).
//!
//! - Every call carries `Authorization: Bearer <REMNAWAVE_TOKEN>` (a dashboard API token; it
//!   is scoped and expires: a 401 or 403 is reported as "renew REMNAWAVE_TOKEN").
//! - Over plain `http://` (the panel inside Docker) every call also carries
//!   `X-Forwarded-For: 127.0.0.1` and `X-Forwarded-Proto: https`: without them the panel drops
//!   the connection with no answer.
//! - A user gets the internal squads of `REMNAWAVE_SQUADS` (no squad = no node); `expireAt` is
//!   ISO-8601 and always a real date; updates are `PATCH /api/users` by uuid (keys and
//!   subscription link kept); an update's `expireAt` must be in the future, so a user without
//!   paid time is disabled with an expiry a minute ahead (within
//!   [`crate::panel::PAST_EXPIRY_SLACK_SECS`]).
//! - Answers are wrapped in `{"response": …}`; a duplicate username is 400 `A019`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{Method, RequestBuilder, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::http;
use crate::panel::{
    Desired, MarzbanUsername, ModifyStatus, ModifyUser, Panel, PanelError, PanelKind, PanelUser,
    UserStatus, wire_data_limit,
};

/// How to reach and use the panel. `Debug` masks the token and a password in the URL.
#[derive(Clone)]
pub struct RemnawaveSettings {
    /// `PANEL_URL`, e.g. `https://panel.example.com` or `http://remnawave:3000`; the API is
    /// under `/api`.
    pub base_url: String,
    /// `REMNAWAVE_TOKEN`: an API token made in the dashboard (scopes `*` or `users:*` plus
    /// `internal-squads:read` for the readiness check).
    pub token: SecretString,
    /// `REMNAWAVE_SQUADS`: the internal squads (UUIDs) every user we create gets.
    pub squads: Vec<Uuid>,
    /// `PANEL_TIMEOUT_SECS`.
    pub timeout: Duration,
}

impl std::fmt::Debug for RemnawaveSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemnawaveSettings")
            .field("base_url", &messaging::redact::redact_url(&self.base_url))
            .field("token", &self.token)
            .field("squads", &self.squads)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RemnawaveSettings {
    pub fn new(base_url: impl Into<String>, token: SecretString, squads: Vec<Uuid>) -> Self {
        Self {
            base_url: base_url.into(),
            token,
            squads,
            timeout: Duration::from_secs(10),
        }
    }

    /// Refuses settings the panel would misread, naming the setting.
    pub fn validate(&self) -> Result<(), PanelError> {
        http::check_url(&self.base_url, "PANEL_URL")?;
        if self.token.expose_secret().trim().is_empty() {
            return Err(PanelError::InvalidInput(
                "REMNAWAVE_TOKEN is empty".to_owned(),
            ));
        }
        if self.squads.is_empty() {
            return Err(PanelError::InvalidInput(
                "REMNAWAVE_SQUADS needs at least one internal squad UUID (a user without a squad reaches no node)".to_owned(),
            ));
        }
        Ok(())
    }

    /// Whether calls go over plain HTTP and so need the forwarded-headers pair.
    fn plain_http(&self) -> bool {
        self.base_url.starts_with("http://")
    }

    fn api_url(&self, path: &str) -> String {
        format!("{}/api{path}", self.base_url.trim_end_matches('/'))
    }
}

/// The Remnawave user API client. Cheap to clone.
#[derive(Clone)]
pub struct RemnawaveClient {
    http: reqwest::Client,
    settings: std::sync::Arc<RemnawaveSettings>,
}

impl std::fmt::Debug for RemnawaveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemnawaveClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// `{"response": …}`.
#[derive(Debug, Deserialize)]
struct Wrapped<T> {
    response: T,
}

/// The fields of `ExtendedUsersSchema` we act on; others are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemnawaveUser {
    pub uuid: Uuid,
    pub username: String,
    pub status: String,
    #[serde(default)]
    pub traffic_limit_bytes: Option<i64>,
    pub expire_at: String,
    #[serde(default)]
    pub vless_uuid: Option<String>,
    #[serde(default)]
    pub subscription_url: String,
    #[serde(default)]
    pub active_internal_squads: Vec<SquadRef>,
    #[serde(default)]
    pub user_traffic: Option<UserTraffic>,
    /// Before 2.x's `userTraffic`.
    #[serde(default)]
    pub used_traffic_bytes: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SquadRef {
    pub uuid: Uuid,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserTraffic {
    #[serde(default)]
    pub used_traffic_bytes: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Squads {
    internal_squads: Vec<SquadRef>,
}

impl RemnawaveUser {
    fn panel_user(&self) -> Result<PanelUser, PanelError> {
        let expire = DateTime::parse_from_rfc3339(&self.expire_at)
            .map_err(|e| PanelError::Decode(format!("expireAt {:?}: {e}", self.expire_at)))?
            .timestamp();
        Ok(PanelUser {
            username: self.username.clone(),
            status: match self.status.as_str() {
                "ACTIVE" => UserStatus::Active,
                "DISABLED" => UserStatus::Disabled,
                "LIMITED" => UserStatus::Limited,
                "EXPIRED" => UserStatus::Expired,
                _ => UserStatus::Unknown,
            },
            expire: Some(expire),
            data_limit: self.traffic_limit_bytes.filter(|b| *b > 0),
            used_traffic: self
                .user_traffic
                .as_ref()
                .map(|t| t.used_traffic_bytes)
                .or(self.used_traffic_bytes)
                .unwrap_or(0),
            subscription_url: self.subscription_url.clone(),
            key: self.vless_uuid.clone(),
        })
    }
}

fn iso(unix: i64) -> Result<String, PanelError> {
    DateTime::from_timestamp(unix, 0)
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true))
        .ok_or_else(|| PanelError::InvalidInput(format!("expiry {unix} is out of range")))
}

/// Remnawave's error answers as typed errors: the token (401/403) named for renewal, `A019`
/// as a conflict, validation issues by field, `A018` (a squad that does not exist) pointing
/// at `REMNAWAVE_SQUADS`.
async fn check(response: Response) -> Result<Response, PanelError> {
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok(response);
    }
    let (text, body) = http::error_body(response).await;
    let field = |name: &str| {
        body.as_ref()
            .and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let code = field("errorCode");
    let message = field("message").unwrap_or_else(|| http::excerpt(&text));
    let detail = match &code {
        Some(code) => format!("{message} ({code})"),
        None => message.clone(),
    };
    if code.as_deref() == Some("A018") {
        return Err(PanelError::Unavailable {
            status: Some(status),
            reason: format!(
                "HTTP {status}: {detail}; check that every squad in REMNAWAVE_SQUADS exists on the panel"
            ),
        });
    }
    if let Some(error) = http::unavailable(status, &detail) {
        return Err(error);
    }
    Err(match (status, code.as_deref()) {
        (401, _) => PanelError::Unauthorized {
            detail: format!(
                "REMNAWAVE_TOKEN was refused (401 {message}): the API token has expired or is not one of this panel's; create a new API token in the Remnawave dashboard and set REMNAWAVE_TOKEN"
            ),
        },
        (403, _) => PanelError::Unauthorized {
            detail: format!(
                "REMNAWAVE_TOKEN is not allowed here (403 {message}): the token was deleted, lacks the scope (users:* and internal-squads:read, or *), or is an admin login token; create an API token in the Remnawave dashboard and set REMNAWAVE_TOKEN"
            ),
        },
        (400, Some("A019" | "A020")) => PanelError::Conflict { detail },
        (404, _) => PanelError::NotFound { detail },
        (400, None) if body.as_ref().and_then(|b| b.get("errors")).is_some() => {
            PanelError::Validation {
                fields: validation_fields(body.as_ref()),
            }
        }
        (code, _) => PanelError::Rejected {
            status: code,
            detail,
        },
    })
}

/// zod issues (`{"errors": [{"path": [...], "message"}]}`) as field → message.
fn validation_fields(body: Option<&Value>) -> std::collections::BTreeMap<String, String> {
    let mut fields = std::collections::BTreeMap::new();
    for issue in body
        .and_then(|b| b.get("errors"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let field = issue
            .get("path")
            .and_then(Value::as_array)
            .map(|path| {
                path.iter()
                    .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "body".to_owned());
        let message = issue
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("invalid")
            .to_owned();
        fields
            .entry(field)
            .and_modify(|m: &mut String| {
                m.push_str("; ");
                m.push_str(&message);
            })
            .or_insert(message);
    }
    fields
}

impl RemnawaveClient {
    /// Validates the settings and builds the HTTP client; does not contact the panel.
    pub fn new(settings: RemnawaveSettings) -> Result<Self, PanelError> {
        settings.validate()?;
        Ok(Self {
            http: http::client(settings.timeout)?,
            settings: std::sync::Arc::new(settings),
        })
    }

    pub fn settings(&self) -> &RemnawaveSettings {
        &self.settings
    }

    /// One authenticated call (with the forwarded pair over plain HTTP), timed and counted;
    /// the `response` of a 2xx answer.
    async fn call<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<T, PanelError> {
        http::timed(operation, async {
            let mut request = self
                .http
                .request(method, self.settings.api_url(path))
                .bearer_auth(self.settings.token.expose_secret());
            if self.settings.plain_http() {
                request = request
                    .header("X-Forwarded-For", "127.0.0.1")
                    .header("X-Forwarded-Proto", "https");
            }
            let response = body(request).send().await.map_err(http::unreachable)?;
            let wrapped: Wrapped<T> = http::decode(check(response).await?).await?;
            Ok(wrapped.response)
        })
        .await
    }

    /// `GET /api/users/by-username/{username}` (exact, case-sensitive); `None` on 404.
    pub async fn user(
        &self,
        username: &MarzbanUsername,
    ) -> Result<Option<RemnawaveUser>, PanelError> {
        let path = format!("/users/by-username/{username}");
        match self.call("get_user", Method::GET, &path, |r| r).await {
            Ok(user) => Ok(Some(user)),
            Err(PanelError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The user's uuid, which updates and actions need; [`PanelError::NotFound`] if missing.
    async fn existing(&self, username: &MarzbanUsername) -> Result<RemnawaveUser, PanelError> {
        self.user(username)
            .await?
            .ok_or_else(|| PanelError::NotFound {
                detail: format!("user {username} is not on the panel"),
            })
    }

    /// `PATCH /api/users` with `body` (which names the user).
    async fn patch(&self, body: Value) -> Result<RemnawaveUser, PanelError> {
        self.call("modify_user", Method::PATCH, "/users", |r| r.json(&body))
            .await
    }
}

#[async_trait]
impl Panel for RemnawaveClient {
    fn kind(&self) -> PanelKind {
        PanelKind::Remnawave
    }

    /// `GET /api/internal-squads`: the token works and has the scope, and every squad of
    /// `REMNAWAVE_SQUADS` exists; then `GET /api/users?size=1` (the users scope).
    async fn check(&self) -> Result<(), PanelError> {
        let squads: Squads = self
            .call("squads", Method::GET, "/internal-squads", |r| r)
            .await?;
        let missing: Vec<String> = self
            .settings
            .squads
            .iter()
            .filter(|wanted| !squads.internal_squads.iter().any(|s| s.uuid == **wanted))
            .map(Uuid::to_string)
            .collect();
        if !missing.is_empty() {
            return Err(PanelError::InvalidInput(format!(
                "REMNAWAVE_SQUADS names internal squads the panel does not have: {}",
                missing.join(", ")
            )));
        }
        let _: Value = self
            .call("admin", Method::GET, "/users", |r| {
                r.query(&[("start", "0"), ("size", "1")])
            })
            .await?;
        Ok(())
    }

    async fn get_user(&self, username: &MarzbanUsername) -> Result<Option<PanelUser>, PanelError> {
        self.user(username)
            .await?
            .map(|u| u.panel_user())
            .transpose()
    }

    /// `POST /api/users` → 201: the ledger's expiry, the tariff's limit, the configured
    /// squads; 400 `A019` (the name is taken) is [`PanelError::Conflict`].
    async fn create_user(&self, desired: &Desired, note: &str) -> Result<PanelUser, PanelError> {
        let body = json!({
            "username": desired.username.as_str(),
            "expireAt": iso(desired.expire)?,
            "trafficLimitBytes": wire_data_limit(desired.data_limit)?,
            "trafficLimitStrategy": "NO_RESET",
            "status": "ACTIVE",
            "activeInternalSquads": self.settings.squads,
            "description": note,
        });
        let user: RemnawaveUser = self
            .call("create_user", Method::POST, "/users", |r| r.json(&body))
            .await?;
        user.panel_user()
    }

    /// `PATCH /api/users` by uuid with `expireAt`, `trafficLimitBytes` and the status: the
    /// keys and the subscription link stay. The panel refuses a past `expireAt` on update, so
    /// a user without paid time is sent `DISABLED` and an expiry a minute ahead.
    async fn modify_user(
        &self,
        username: &MarzbanUsername,
        change: &ModifyUser,
    ) -> Result<PanelUser, PanelError> {
        let user = self.existing(username).await?;
        let now = Utc::now().timestamp();
        let (expire, status) = if change.expire <= now + 30 {
            (now + 60, Some(ModifyStatus::Disabled))
        } else {
            (change.expire, change.status)
        };
        let mut body = json!({
            "uuid": user.uuid,
            "expireAt": iso(expire)?,
            "trafficLimitBytes": wire_data_limit(change.data_limit)?,
        });
        if let Some(status) = status {
            body["status"] = json!(match status {
                ModifyStatus::Active => "ACTIVE",
                ModifyStatus::Disabled => "DISABLED",
            });
        }
        let updated = self.patch(body).await?;
        if user.status == "LIMITED" && status == Some(ModifyStatus::Active) {
            // `ACTIVE` alone lasts until the panel counts the traffic again: reset it, so a
            // limited user that paid stays active (the caller's reset is then a no-op).
            return self.reset_usage(username).await;
        }
        updated.panel_user()
    }

    /// `POST /api/users/{uuid}/actions/reset-traffic`.
    async fn reset_usage(&self, username: &MarzbanUsername) -> Result<PanelUser, PanelError> {
        let user = self.existing(username).await?;
        let path = format!("/users/{}/actions/reset-traffic", user.uuid);
        let user: RemnawaveUser = self.call("reset_user", Method::POST, &path, |r| r).await?;
        user.panel_user()
    }

    /// The squads of `REMNAWAVE_SQUADS` the user lacks are added by a `PATCH` that carries
    /// the squads it has too (the set is replaced); keys are untouched by any update.
    async fn add_missing_access(&self, username: &MarzbanUsername) -> Result<(), PanelError> {
        let user = self.existing(username).await?;
        let has: Vec<Uuid> = user.active_internal_squads.iter().map(|s| s.uuid).collect();
        let missing: Vec<Uuid> = self
            .settings
            .squads
            .iter()
            .filter(|s| !has.contains(s))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        tracing::info!(%username, ?missing, kept = ?has, "adopted user lacks squads; adding them, keeping its keys");
        let squads: Vec<Uuid> = has.into_iter().chain(missing).collect();
        self.patch(json!({"uuid": user.uuid, "activeInternalSquads": squads}))
            .await?;
        Ok(())
    }

    /// `DELETE /api/users/{uuid}`.
    async fn delete_user(&self, username: &MarzbanUsername) -> Result<(), PanelError> {
        let user = self.existing(username).await?;
        let path = format!("/users/{}", user.uuid);
        let _: Value = self
            .call("delete_user", Method::DELETE, &path, |r| r)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_what_is_wrong() {
        let squad = Uuid::new_v4();
        let ok = RemnawaveSettings::new(
            "http://remnawave:3000",
            SecretString::from("t"),
            vec![squad],
        );
        assert!(ok.validate().is_ok());
        let no_squads = RemnawaveSettings::new("https://p", SecretString::from("t"), vec![]);
        assert!(
            no_squads
                .validate()
                .unwrap_err()
                .to_string()
                .contains("REMNAWAVE_SQUADS")
        );
        let no_token = RemnawaveSettings::new("https://p", SecretString::from(" "), vec![squad]);
        assert!(
            no_token
                .validate()
                .unwrap_err()
                .to_string()
                .contains("REMNAWAVE_TOKEN")
        );
        let printed = format!(
            "{:?}",
            RemnawaveSettings::new("https://p", SecretString::from("token-secret"), vec![squad])
        );
        assert!(!printed.contains("token-secret"), "{printed}");
    }

    #[test]
    fn users_are_read_with_fields_we_do_not_know() {
        let user: RemnawaveUser = serde_json::from_value(json!({
            "uuid": "9f1c4b0e-8a77-4d0e-9a53-0a4c3f1b2c3d", "id": 42, "username": "tg_1",
            "status": "LIMITED", "trafficLimitBytes": 0, "expireAt": "2026-12-31T23:59:59.000Z",
            "vlessUuid": "35e4e39c-7d5c-4f4b-8b71-558e4f37ff53",
            "subscriptionUrl": "https://sub.example.com/abc", "someFutureField": {"x": 1},
            "activeInternalSquads": [{"uuid": "a3a1b6c2-4f5e-4d7a-9b8c-0d1e2f3a4b5c", "name": "D"}],
            "userTraffic": {"usedTrafficBytes": 7, "onlineAt": null}
        }))
        .unwrap();
        let user = user.panel_user().unwrap();
        assert_eq!(user.status, UserStatus::Limited);
        assert_eq!(user.data_limit, None);
        assert_eq!(user.used_traffic, 7);
        assert_eq!(user.expire, Some(1_798_761_599));
    }

    #[test]
    fn zod_issues_become_fields() {
        let body = json!({"statusCode": 400, "message": "Validation failed", "errors": [
            {"code": "custom", "message": "Expiration date must be in the future", "path": ["expireAt"]},
            {"code": "invalid_type", "message": "Required", "path": ["username"]}
        ]});
        let fields = validation_fields(Some(&body));
        assert_eq!(fields["expireAt"], "Expiration date must be in the future");
        assert_eq!(fields["username"], "Required");
    }
}
