//! Marzban v0.8.4 wire types (reference: shared/reference/external-apis.md §4, §4b).
//!
//! Our requests are narrow on purpose: a create always carries `proxies` and `inbounds`, a modify
//! carries only `expire`, `data_limit` and optionally `status` — never `proxies`, which would
//! give the customer a new key.

use std::collections::BTreeMap;

use domain::ids::MarzbanUsername;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `proxies` of a create: protocol (`vless`, `vmess`, `trojan`, `shadowsocks`) → its settings,
/// e.g. `{"vless": {"flow": "xtls-rprx-vision"}}`. Marzban fills in ids and passwords.
pub type Proxies = BTreeMap<String, Value>;

/// `inbounds` of a create: protocol → inbound tags; an empty list means every inbound of that
/// protocol.
pub type Inbounds = BTreeMap<String, Vec<String>>;

/// A panel user to create. `proxies` and `inbounds` come from the client's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateUser {
    pub username: MarzbanUsername,
    /// Absolute expiry, Unix seconds (UTC); must be positive (Marzban reads 0 as "never").
    pub expire: i64,
    /// Traffic limit in bytes; `None` = unlimited (sent as 0).
    pub data_limit: Option<i64>,
    pub note: Option<String>,
}

pub use crate::panel::{ModifyStatus, ModifyUser, UserStatus};

/// `UserResponse` of create/GET/PUT/reset. Fields we do not act on are kept loosely typed so
/// that a panel upgrade cannot make the whole answer undecodable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserResponse {
    pub username: String,
    pub status: UserStatus,
    /// Absolute expiry, Unix seconds; `None` = never.
    #[serde(default)]
    pub expire: Option<i64>,
    /// Bytes; `None` = unlimited.
    #[serde(default)]
    pub data_limit: Option<i64>,
    #[serde(default)]
    pub data_limit_reset_strategy: Option<String>,
    #[serde(default)]
    pub used_traffic: i64,
    #[serde(default)]
    pub lifetime_used_traffic: i64,
    /// Naive UTC ISO datetime, as Marzban sends it.
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub proxies: BTreeMap<String, Value>,
    #[serde(default)]
    pub inbounds: Inbounds,
    #[serde(default)]
    pub excluded_inbounds: Inbounds,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub links: Vec<String>,
    /// Relative (`/sub/<token>`) unless the panel sets a prefix; see
    /// [`super::absolute_subscription_url`].
    #[serde(default)]
    pub subscription_url: String,
    #[serde(default)]
    pub sub_updated_at: Option<String>,
    #[serde(default)]
    pub online_at: Option<String>,
    #[serde(default)]
    pub on_hold_expire_duration: Option<i64>,
    #[serde(default)]
    pub next_plan: Option<Value>,
}

impl UserResponse {
    /// The VLESS UUID, which is the customer's key: it must survive every extension.
    pub fn vless_id(&self) -> Option<&str> {
        self.proxies.get("vless")?.get("id")?.as_str()
    }
}

/// Body of `POST /api/user`.
#[derive(Debug, Serialize)]
pub(crate) struct CreateUserBody<'a> {
    pub username: &'a str,
    pub proxies: &'a Proxies,
    pub inbounds: &'a Inbounds,
    pub expire: i64,
    pub data_limit: i64,
    pub data_limit_reset_strategy: &'static str,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'a str>,
}

/// Body of `PUT /api/user/{username}`: deliberately without `proxies` or `inbounds`.
#[derive(Debug, Serialize)]
pub(crate) struct ModifyUserBody {
    pub expire: i64,
    pub data_limit: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ModifyStatus>,
}

/// Body of a `PUT /api/user/{username}` that changes the protocols: every protocol the user
/// is to keep, with its settings (ids included, so its keys survive), and the inbounds of
/// added protocols that must not get every inbound.
#[derive(Debug, Serialize)]
pub(crate) struct SetProxiesBody<'a> {
    pub proxies: &'a Proxies,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbounds: Option<&'a Inbounds>,
}

/// `GET /api/users` (only the users; `total` is not needed).
#[derive(Debug, Deserialize)]
pub(crate) struct UserList {
    pub users: Vec<UserResponse>,
}
