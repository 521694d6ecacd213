//! A stateful, in-memory PasarGuard v5 (5.2.1) emulator
//! (shared/reference/panels-remnawave-pasarguard.md §2).
//!
//! It serves the admin API the payment system uses — `POST /api/admin/token` (form only),
//! `POST /api/user` (201), `GET|PUT|DELETE /api/user/by-id/{id}` (204 on delete),
//! `PUT /api/user/by-id/{id}/disabled`, `POST /api/user/by-id/{id}/reset`,
//! `POST /api/user/by-id/{id}/revoke_sub`, the deprecated `GET /api/user/{username}` and
//! `GET /api/user/by-username/{username}`, `GET /api/users` and `GET /api/group/{id}` — with
//! the panel's rules:
//!
//! - auth by admin token (`Authorization: Bearer`) or API key (`X-Api-Key: pg_key_…` or
//!   `Authorization: ApiKey pg_key_…`, scheme in any case; `Bearer pg_key_…` is refused);
//!   401 `{"detail": "Could not validate credentials"}` with `WWW-Authenticate: Bearer`;
//!   403 when the key lacks the route's permission (`users.create`, `users.read`, …);
//! - FastAPI errors `{"detail": "…"}`, validation 422 `{"detail": {"<field>": "Value error,
//!   …"}}`; duplicate username 409 (case-sensitive names), unknown user 404;
//! - usernames 3–128 of `[a-zA-Z0-9-_@.]`, no two special characters in a row; `expire` an
//!   ISO datetime (naive = UTC) or Unix seconds in, ISO out, `0`/`null` = never;
//!   `group_ids` replace Marzban's proxies (omitted: no groups; `[]`/`null` → 422; unknown →
//!   404 "Group not found"); `proxy_settings` omitted on modify = keys kept;
//!   **omitting `next_plan` on modify deletes it**; `status` on modify only
//!   `active`/`disabled`/`on_hold`; a future `expire` revives an active or expired user;
//!   `subscription_url` regenerated on every answer, `""` in lists unless `load_sub=true`.
//!
//! Faults, outage and latency as the Marzban emulator ([`crate::panel_kit`]); control API
//! under `/sandbox/pasarguard/`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::panel_kit::{self, PanelState};

pub use crate::panel_kit::{Fault, RequestRecord};

/// Route labels as recorded in [`RequestRecord::route`].
pub mod route {
    pub const TOKEN: &str = "POST /api/admin/token";
    pub const GROUP: &str = "GET /api/group/{id}";
    pub const CREATE_USER: &str = "POST /api/user";
    pub const GET_USER: &str = "GET /api/user/by-id/{id}";
    pub const MODIFY_USER: &str = "PUT /api/user/by-id/{id}";
    pub const DELETE_USER: &str = "DELETE /api/user/by-id/{id}";
    pub const DISABLED: &str = "PUT /api/user/by-id/{id}/disabled";
    pub const RESET_USER: &str = "POST /api/user/by-id/{id}/reset";
    pub const REVOKE_SUB: &str = "POST /api/user/by-id/{id}/revoke_sub";
    pub const BY_USERNAME: &str = "GET /api/user/by-username/{username}";
    pub const LIST_USERS: &str = "GET /api/users";
}

/// The API key the default configuration accepts.
pub const DEFAULT_API_KEY: &str = "pg_key_5f0c8a52-8d7e-4c1b-9a3e-2b6d4f8e1c07";

/// Every user permission an API key can have.
pub const PERMISSIONS: [&str; 6] = [
    "users.create",
    "users.read",
    "users.update",
    "users.delete",
    "users.reset_usage",
    "users.revoke_sub",
];

/// A group (the panel's replacement of Marzban's inbounds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub id: i64,
    pub name: String,
    pub inbound_tags: Vec<String>,
}

/// Emulator settings; `Config::default()` suits tests.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub admin_username: String,
    pub admin_password: String,
    /// The API key (`PASARGUARD_API_KEY`) and its permissions (default: all of
    /// [`PERMISSIONS`]).
    pub api_key: String,
    pub api_key_permissions: Vec<String>,
    /// Default: group 1 `default`.
    pub groups: Vec<Group>,
    /// `url_prefix` of subscription links; empty = relative `/sub/<token>`.
    pub subscription_url_prefix: String,
    /// How `expire` ends in answers (`Z` by default; whether the panel writes `Z` or `+00:00`
    /// is unverified, so clients read both).
    pub utc_suffix: &'static str,
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_username: "admin".to_owned(),
            admin_password: "admin-password".to_owned(),
            api_key: DEFAULT_API_KEY.to_owned(),
            api_key_permissions: PERMISSIONS.iter().map(|p| (*p).to_owned()).collect(),
            groups: vec![Group {
                id: 1,
                name: "default".to_owned(),
                inbound_tags: vec!["VLESS TCP REALITY".to_owned()],
            }],
            subscription_url_prefix: "https://sub.example.com".to_owned(),
            utc_suffix: "Z",
            workers: 2,
        }
    }
}

/// A user's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
    Limited,
    Expired,
    OnHold,
}

/// Everything the emulator stores about a user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserState {
    pub id: i64,
    pub username: String,
    pub status: UserStatus,
    /// `None` = never.
    pub expire: Option<DateTime<Utc>>,
    /// Bytes; `None` = unlimited.
    pub data_limit: Option<i64>,
    pub data_limit_reset_strategy: String,
    pub used_traffic: i64,
    pub lifetime_used_traffic: i64,
    pub group_ids: Vec<i64>,
    pub proxy_settings: Value,
    pub note: Option<String>,
    pub next_plan: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub edit_at: Option<DateTime<Utc>>,
    pub sub_revoked_at: Option<DateTime<Utc>>,
}

impl UserState {
    /// The VLESS id: the customer's key.
    pub fn vless_id(&self) -> Option<&str> {
        self.proxy_settings.get("vless")?.get("id")?.as_str()
    }
}

/// The panel's users and tokens, behind the [`Emulator`]'s lock.
#[derive(Default)]
pub struct State {
    users: BTreeMap<i64, UserState>,
    tokens: Vec<String>,
    key_revoked: bool,
    next_id: i64,
}

impl State {
    /// Binary collation: exact, case-sensitive.
    fn by_username(&self, name: &str) -> Option<i64> {
        self.users
            .values()
            .find(|u| u.username == name)
            .map(|u| u.id)
    }
}

impl PanelState for State {
    const NAME: &'static str = "pasarguard";
    const PROBE: &'static str = route::GROUP;
    type Config = Config;
    type User = UserState;
    /// The API key's permission the route needs.
    type Access = &'static str;

    fn listen(config: &Config) -> (SocketAddr, usize) {
        (config.bind, config.workers)
    }

    fn routes(cfg: &mut web::ServiceConfig) {
        cfg.route("/api/admin/token", web::post().to(http::token))
            .route("/api/group/{id}", web::get().to(http::group))
            .route("/api/user", web::post().to(http::create_user))
            .service(
                web::resource("/api/user/by-id/{id}")
                    .route(web::get().to(http::get_user))
                    .route(web::put().to(http::modify_user))
                    .route(web::delete().to(http::delete_user)),
            )
            .route(
                "/api/user/by-id/{id}/disabled",
                web::put().to(http::set_disabled),
            )
            .route(
                "/api/user/by-id/{id}/reset",
                web::post().to(http::reset_user),
            )
            .route(
                "/api/user/by-id/{id}/revoke_sub",
                web::post().to(http::revoke_sub),
            )
            .route(
                "/api/user/by-username/{username}",
                web::get().to(http::by_username),
            )
            .route("/api/user/{username}", web::get().to(http::by_username))
            .route("/api/users", web::get().to(http::list_users));
    }

    fn internal_error() -> HttpResponse {
        HttpResponse::InternalServerError()
            .content_type("text/plain; charset=utf-8")
            .body("Internal Server Error")
    }

    fn fault_status(status: StatusCode) -> HttpResponse {
        detail(status, status.canonical_reason().unwrap_or("Error"))
    }

    /// An admin token (sudo: every permission) or the API key with `permission`.
    fn auth(&self, config: &Config, req: &HttpRequest, permission: &str) -> Option<HttpResponse> {
        let header_value = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let (scheme, credential) = match (header_value("x-api-key"), header_value("authorization"))
        {
            (Some(key), _) => ("apikey".to_owned(), key.to_owned()),
            (None, Some(value)) => {
                let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
                (scheme.to_ascii_lowercase(), credential.trim().to_owned())
            }
            (None, None) => return Some(unauthorized("Not authenticated")),
        };
        match scheme.as_str() {
            "bearer" if self.tokens.contains(&credential) => None,
            "apikey" if credential == config.api_key && !self.key_revoked => {
                let allowed = config.api_key_permissions.iter().any(|p| p == permission);
                (!allowed).then(|| detail(StatusCode::FORBIDDEN, "You're not allowed"))
            }
            _ => Some(unauthorized("Could not validate credentials")),
        }
    }

    fn review(&mut self, now: DateTime<Utc>) {
        for user in self.users.values_mut() {
            if user.status != UserStatus::Active {
                continue;
            }
            if user.expire.is_some_and(|e| e <= now) {
                user.status = UserStatus::Expired;
            } else if user.data_limit.is_some_and(|l| user.used_traffic >= l) {
                user.status = UserStatus::Limited;
            }
        }
    }

    fn users(&self) -> Vec<UserState> {
        self.users.values().cloned().collect()
    }

    fn user_mut(&mut self, username: &str) -> Option<&mut UserState> {
        let id = self.by_username(username)?;
        self.users.get_mut(&id)
    }

    /// The review then applies `limited`.
    fn set_traffic(user: &mut UserState, bytes: i64) {
        user.lifetime_used_traffic += (bytes - user.used_traffic).max(0);
        user.used_traffic = bytes;
    }

    /// Admin tokens stop working and the API key is revoked: every call is 401.
    fn revoke_tokens(&mut self) {
        self.tokens.clear();
        self.key_revoked = true;
    }
}

/// The emulator's state and control API; cheap to clone.
pub type Emulator = panel_kit::Emulator<State>;

/// A running emulator.
pub type Handle = panel_kit::Handle<State>;

/// Starts the emulator on the current tokio runtime.
pub async fn spawn(config: Config) -> std::io::Result<Handle> {
    panel_kit::spawn(config).await
}

impl Emulator {
    pub fn vless_id(&self, username: &str) -> Option<String> {
        self.user(username)?.vless_id().map(str::to_owned)
    }

    /// Adds a user as if the panel had it before we came (Marzban's database upgraded in
    /// place, or an admin): active until `expire`, in `group_ids`.
    pub fn insert_user(
        &self,
        username: &str,
        expire: Option<DateTime<Utc>>,
        group_ids: Vec<i64>,
    ) -> UserState {
        let mut state = self.state();
        state.next_id += 1;
        let user = UserState {
            id: state.next_id,
            username: username.to_owned(),
            status: UserStatus::Active,
            expire,
            data_limit: None,
            data_limit_reset_strategy: "no_reset".to_owned(),
            used_traffic: 0,
            lifetime_used_traffic: 0,
            group_ids,
            proxy_settings: proxy_settings(None),
            note: None,
            next_plan: None,
            created_at: Utc::now(),
            edit_at: None,
            sub_revoked_at: None,
        };
        state.users.insert(user.id, user.clone());
        user
    }
}

fn detail(status: StatusCode, text: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"detail": text}))
}

fn unauthorized(text: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
        .json(json!({"detail": text}))
}

/// FastAPI/pydantic errors, keyed by the last `loc` element, answered 422.
#[derive(Default)]
struct Errors(Map<String, Value>);

impl Errors {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_owned())
            .or_insert_with(|| Value::String(message.into()));
    }

    fn into_response(self) -> HttpResponse {
        HttpResponse::UnprocessableEntity().json(json!({"detail": self.0}))
    }
}

fn valid_username(name: &str) -> bool {
    let special = |c: char| matches!(c, '-' | '_' | '@' | '.');
    (3..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || special(c))
        && !name
            .chars()
            .zip(name.chars().skip(1))
            .any(|(a, b)| special(a) && special(b))
}

/// `expire`: an ISO datetime (naive = UTC) or Unix seconds; `0`/`null` = never (`Ok(None)`).
fn expire_field(value: &Value) -> Result<Option<DateTime<Utc>>, &'static str> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Ok(None),
            Some(secs) => DateTime::from_timestamp(secs, 0)
                .map(Some)
                .ok_or("Input should be a valid datetime"),
            None => Err("Input should be a valid datetime"),
        },
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .or_else(|_| {
                NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").map(|n| n.and_utc())
            })
            .map(Some)
            .map_err(|_| "Input should be a valid datetime"),
        _ => Err("Input should be a valid datetime"),
    }
}

fn iso(at: DateTime<Utc>, suffix: &str) -> String {
    let text = at.to_rfc3339_opts(SecondsFormat::Secs, true);
    match text.strip_suffix('Z') {
        Some(base) => format!("{base}{suffix}"),
        None => text,
    }
}

fn proxy_settings(given: Option<&Value>) -> Value {
    let part = |name: &str| given.and_then(|g| g.get(name)).cloned();
    let mut settings = json!({
        "vmess": {"id": Uuid::new_v4()},
        "vless": {"id": Uuid::new_v4(), "flow": ""},
        "trojan": {"password": Uuid::new_v4().simple().to_string()},
        "shadowsocks": {"password": Uuid::new_v4().simple().to_string(), "method": "chacha20-ietf-poly1305"},
        "wireguard": {"private_key": null, "public_key": null, "peer_ips": []},
        "hysteria": {"auth": Uuid::new_v4().simple().to_string()},
    });
    for name in [
        "vmess",
        "vless",
        "trojan",
        "shadowsocks",
        "wireguard",
        "hysteria",
    ] {
        if let Some(Value::Object(given)) = part(name)
            && let Some(Value::Object(generated)) = settings.get_mut(name)
        {
            for (k, v) in given {
                generated.insert(k, v);
            }
        }
    }
    settings
}

/// `UserResponse`; the subscription URL regenerated (or `""` in lists without `load_sub`).
fn user_json(user: &UserState, config: &Config, now: DateTime<Utc>, with_sub: bool) -> Value {
    let subscription_url = if with_sub {
        let payload = URL_SAFE_NO_PAD.encode(format!("v3,{},{}", user.id, now.timestamp_micros()));
        let mac = &Uuid::new_v4().simple().to_string()[..16];
        format!("{}/sub/{payload}.{mac}", config.subscription_url_prefix)
    } else {
        String::new()
    };
    json!({
        "id": user.id,
        "username": user.username,
        "status": user.status,
        "used_traffic": user.used_traffic,
        "lifetime_used_traffic": user.lifetime_used_traffic,
        "created_at": iso(user.created_at, config.utc_suffix),
        "edit_at": user.edit_at.map(|e| iso(e, config.utc_suffix)),
        "online_at": null,
        "subscription_url": subscription_url,
        "admin": {"id": 1, "username": config.admin_username},
        "proxy_settings": user.proxy_settings,
        "expire": user.expire.map(|e| iso(e, config.utc_suffix)),
        "data_limit": user.data_limit,
        "data_limit_reset_strategy": user.data_limit_reset_strategy,
        "note": user.note,
        "on_hold_expire_duration": null,
        "on_hold_timeout": null,
        "group_ids": user.group_ids,
        "auto_delete_in_days": null,
        "hwid_limit": null,
        "next_plan": user.next_plan,
    })
}

fn user_not_found() -> HttpResponse {
    detail(StatusCode::NOT_FOUND, "User not found")
}

fn body_object(body: &[u8], errors: &mut Errors) -> Map<String, Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        _ => {
            errors.add("body", "Input should be a valid dictionary");
            Map::new()
        }
    }
}

/// `group_ids` when sent: a non-empty list of known groups. `Err` is the 404.
// A handler's early answer, built once per request: its size does not matter.
#[allow(clippy::result_large_err)]
fn groups_field(
    obj: &Map<String, Value>,
    config: &Config,
    errors: &mut Errors,
) -> Result<Option<Vec<i64>>, HttpResponse> {
    let Some(value) = obj.get("group_ids") else {
        return Ok(None);
    };
    let ids: Option<Vec<i64>> = value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_i64).collect());
    match ids {
        Some(ids) if !ids.is_empty() && Some(ids.len()) == value.as_array().map(Vec::len) => {
            if ids
                .iter()
                .any(|id| !config.groups.iter().any(|g| g.id == *id))
            {
                return Err(detail(StatusCode::NOT_FOUND, "Group not found"));
            }
            Ok(Some(ids))
        }
        _ => {
            errors.add(
                "group_ids",
                "Value error, you must select at least one group",
            );
            Ok(None)
        }
    }
}

fn data_limit_field(obj: &Map<String, Value>, errors: &mut Errors) -> Option<Option<i64>> {
    match obj.get("data_limit")? {
        Value::Null => Some(None),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(None),
            Some(b) if b > 0 => Some(Some(b)),
            _ => {
                errors.add("data_limit", "Input should be greater than or equal to 0");
                None
            }
        },
        _ => {
            errors.add("data_limit", "Input should be a valid integer");
            None
        }
    }
}

const STRATEGIES: [&str; 5] = ["no_reset", "day", "week", "month", "year"];

fn choice(
    obj: &Map<String, Value>,
    field: &str,
    allowed: &[&str],
    errors: &mut Errors,
) -> Option<String> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Some(s.clone()),
        Some(_) => {
            errors.add(field, format!("Input should be {}", allowed.join(", ")));
            None
        }
    }
}

mod http {
    use super::*;

    type Emu = web::Data<Emulator>;

    pub(super) async fn token(emu: Emu, req: HttpRequest, body: web::Bytes) -> HttpResponse {
        emu.serve(&req, route::TOKEN, None, None, |state, config, _| {
            let is_form = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            let form = if is_form {
                crate::form::parse(&String::from_utf8_lossy(&body))
            } else {
                Vec::new()
            };
            let field = |name: &str| {
                form.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            let mut errors = Errors::default();
            for name in ["username", "password"] {
                if field(name).is_none() {
                    errors.add(name, "Field required");
                }
            }
            if !errors.0.is_empty() {
                return errors.into_response();
            }
            if field("username") != Some(&config.admin_username)
                || field("password") != Some(&config.admin_password)
            {
                return unauthorized("Incorrect username or password");
            }
            let token = format!("eyJ.{}", Uuid::new_v4().simple());
            state.tokens.push(token.clone());
            HttpResponse::Ok().json(json!({"access_token": token, "token_type": "bearer"}))
        })
        .await
    }

    pub(super) async fn group(emu: Emu, req: HttpRequest, id: web::Path<String>) -> HttpResponse {
        emu.serve(
            &req,
            route::GROUP,
            None,
            Some("users.read"),
            |state, config, _| {
                let Ok(id) = id.parse::<i64>() else {
                    let mut errors = Errors::default();
                    errors.add("group_id", "Input should be a valid integer");
                    return errors.into_response();
                };
                match config.groups.iter().find(|g| g.id == id) {
                    Some(group) => {
                        let total = state
                            .users
                            .values()
                            .filter(|u| u.group_ids.contains(&id))
                            .count();
                        HttpResponse::Ok().json(json!({
                            "id": group.id, "name": group.name, "inbound_tags": group.inbound_tags,
                            "is_disabled": false, "total_users": total,
                        }))
                    }
                    None => detail(StatusCode::NOT_FOUND, "Group not found"),
                }
            },
        )
        .await
    }

    pub(super) async fn create_user(emu: Emu, req: HttpRequest, body: web::Bytes) -> HttpResponse {
        let json = serde_json::from_slice(&body).ok();
        emu.serve(&req, route::CREATE_USER, json, Some("users.create"), |state, config, now| {
            let mut errors = Errors::default();
            let obj = body_object(&body, &mut errors);
            let username = match obj.get("username") {
                Some(Value::String(name)) if valid_username(name) => Some(name.clone()),
                Some(Value::String(_)) => {
                    errors.add("username", "Value error, Username only can be 3 to 128 characters and contain a-z, 0-9, and underscores in between.");
                    None
                }
                Some(_) => {
                    errors.add("username", "Input should be a valid string");
                    None
                }
                None => {
                    errors.add("username", "Field required");
                    None
                }
            };
            let expire = match obj.get("expire").map(expire_field) {
                None => None,
                Some(Ok(expire)) => expire,
                Some(Err(message)) => {
                    errors.add("expire", message);
                    None
                }
            };
            let data_limit = data_limit_field(&obj, &mut errors).flatten();
            let strategy = choice(&obj, "data_limit_reset_strategy", &STRATEGIES, &mut errors);
            let status = choice(&obj, "status", &["active", "on_hold"], &mut errors);
            if status.as_deref() == Some("on_hold") {
                errors.add("status", "Value error, on_hold needs on_hold_expire_duration and no expire");
            }
            let groups = match groups_field(&obj, config, &mut errors) {
                Ok(groups) => groups,
                Err(response) => return response,
            };
            let note = match obj.get("note") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.chars().count() <= 500 => Some(s.clone()),
                Some(_) => {
                    errors.add("note", "String should have at most 500 characters");
                    None
                }
            };
            let (Some(username), true) = (username, errors.0.is_empty()) else {
                return errors.into_response();
            };
            if state.by_username(&username).is_some() {
                return detail(StatusCode::CONFLICT, "User already exists");
            }
            state.next_id += 1;
            let user = UserState {
                id: state.next_id,
                username,
                status: UserStatus::Active,
                expire,
                data_limit,
                data_limit_reset_strategy: strategy.unwrap_or_else(|| "no_reset".to_owned()),
                used_traffic: 0,
                lifetime_used_traffic: 0,
                group_ids: groups.unwrap_or_default(),
                proxy_settings: proxy_settings(obj.get("proxy_settings")),
                note,
                next_plan: obj.get("next_plan").filter(|p| !p.is_null()).cloned(),
                created_at: now,
                edit_at: None,
                sub_revoked_at: None,
            };
            let answer = user_json(&user, config, now, true);
            state.users.insert(user.id, user);
            HttpResponse::Created().json(answer)
        })
        .await
    }

    // A handler's early answer, built once per request: its size does not matter.
    #[allow(clippy::result_large_err)]
    fn id_param(raw: &str) -> Result<i64, HttpResponse> {
        raw.parse().map_err(|_| {
            let mut errors = Errors::default();
            errors.add(
                "user_id",
                "Input should be a valid integer, unable to parse string as an integer",
            );
            errors.into_response()
        })
    }

    pub(super) async fn get_user(
        emu: Emu,
        req: HttpRequest,
        raw: web::Path<String>,
    ) -> HttpResponse {
        emu.serve(
            &req,
            route::GET_USER,
            None,
            Some("users.read"),
            |state, config, now| {
                let id = match id_param(&raw) {
                    Ok(id) => id,
                    Err(response) => return response,
                };
                match state.users.get(&id) {
                    Some(user) => HttpResponse::Ok().json(user_json(user, config, now, true)),
                    None => user_not_found(),
                }
            },
        )
        .await
    }

    /// The deprecated username routes (removal in v6): still served, exact match.
    pub(super) async fn by_username(
        emu: Emu,
        req: HttpRequest,
        name: web::Path<String>,
    ) -> HttpResponse {
        emu.serve(
            &req,
            route::BY_USERNAME,
            None,
            Some("users.read"),
            |state, config, now| match state.by_username(&name).and_then(|id| state.users.get(&id))
            {
                Some(user) => HttpResponse::Ok().json(user_json(user, config, now, true)),
                None => user_not_found(),
            },
        )
        .await
    }

    pub(super) async fn modify_user(
        emu: Emu,
        req: HttpRequest,
        raw: web::Path<String>,
        body: web::Bytes,
    ) -> HttpResponse {
        let json = serde_json::from_slice(&body).ok();
        emu.serve(
            &req,
            route::MODIFY_USER,
            json,
            Some("users.update"),
            |state, config, now| {
                let id = match id_param(&raw) {
                    Ok(id) => id,
                    Err(response) => return response,
                };
                if !state.users.contains_key(&id) {
                    return user_not_found();
                }
                let mut errors = Errors::default();
                let obj = body_object(&body, &mut errors);
                let expire = match obj.get("expire").map(expire_field) {
                    None => None,
                    Some(Ok(expire)) => Some(expire),
                    Some(Err(message)) => {
                        errors.add("expire", message);
                        None
                    }
                };
                let data_limit = data_limit_field(&obj, &mut errors);
                let strategy = choice(&obj, "data_limit_reset_strategy", &STRATEGIES, &mut errors);
                let status = choice(
                    &obj,
                    "status",
                    &["active", "disabled", "on_hold"],
                    &mut errors,
                );
                let groups = match obj.get("group_ids") {
                    None | Some(Value::Null) => None,
                    Some(_) => match groups_field(&obj, config, &mut errors) {
                        Ok(groups) => groups,
                        Err(response) => return response,
                    },
                };
                if !errors.0.is_empty() {
                    return errors.into_response();
                }
                let Some(user) = state.users.get_mut(&id) else {
                    return user_not_found();
                };
                // The crud's order: status, then the data limit, then the expiry.
                match status.as_deref() {
                    Some("active") => user.status = UserStatus::Active,
                    Some("disabled") => user.status = UserStatus::Disabled,
                    Some("on_hold") => user.status = UserStatus::OnHold,
                    _ => {}
                }
                if let Some(limit) = data_limit {
                    user.data_limit = limit;
                    if matches!(user.status, UserStatus::Active | UserStatus::Limited) {
                        user.status = if limit.is_some_and(|l| user.used_traffic >= l) {
                            UserStatus::Limited
                        } else {
                            UserStatus::Active
                        };
                    }
                }
                if let Some(expire) = expire {
                    user.expire = expire;
                    if matches!(user.status, UserStatus::Active | UserStatus::Expired) {
                        user.status = if expire.is_none_or(|e| e > now) {
                            UserStatus::Active
                        } else {
                            UserStatus::Expired
                        };
                    }
                }
                if let Some(strategy) = strategy {
                    user.data_limit_reset_strategy = strategy;
                }
                if let Some(groups) = groups {
                    user.group_ids = groups;
                }
                if let Some(given) = obj.get("proxy_settings").filter(|p| !p.is_null()) {
                    user.proxy_settings = proxy_settings(Some(given));
                }
                if let Some(note) = obj.get("note").and_then(Value::as_str) {
                    user.note = Some(note.to_owned());
                }
                // ⚠ the panel's own rule: a modify without `next_plan` deletes it.
                user.next_plan = obj.get("next_plan").filter(|p| !p.is_null()).cloned();
                user.edit_at = Some(now);
                HttpResponse::Ok().json(user_json(user, config, now, true))
            },
        )
        .await
    }

    pub(super) async fn delete_user(
        emu: Emu,
        req: HttpRequest,
        raw: web::Path<String>,
    ) -> HttpResponse {
        emu.serve(
            &req,
            route::DELETE_USER,
            None,
            Some("users.delete"),
            |state, _, _| {
                let id = match id_param(&raw) {
                    Ok(id) => id,
                    Err(response) => return response,
                };
                match state.users.remove(&id) {
                    Some(_) => HttpResponse::NoContent().finish(),
                    None => user_not_found(),
                }
            },
        )
        .await
    }

    pub(super) async fn set_disabled(
        emu: Emu,
        req: HttpRequest,
        raw: web::Path<String>,
        body: web::Bytes,
    ) -> HttpResponse {
        let json = serde_json::from_slice(&body).ok();
        emu.serve(
            &req,
            route::DISABLED,
            json,
            Some("users.update"),
            |state, config, now| {
                let id = match id_param(&raw) {
                    Ok(id) => id,
                    Err(response) => return response,
                };
                let disabled = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|b| b.get("disabled").and_then(Value::as_bool));
                let Some(disabled) = disabled else {
                    let mut errors = Errors::default();
                    errors.add("disabled", "Field required");
                    return errors.into_response();
                };
                let Some(user) = state.users.get_mut(&id) else {
                    return user_not_found();
                };
                user.status = if disabled {
                    UserStatus::Disabled
                } else if user.expire.is_some_and(|e| e <= now) {
                    UserStatus::Expired
                } else if user.data_limit.is_some_and(|l| user.used_traffic >= l) {
                    UserStatus::Limited
                } else {
                    UserStatus::Active
                };
                HttpResponse::Ok().json(user_json(user, config, now, true))
            },
        )
        .await
    }

    pub(super) async fn reset_user(
        emu: Emu,
        req: HttpRequest,
        raw: web::Path<String>,
    ) -> HttpResponse {
        emu.serve(
            &req,
            route::RESET_USER,
            None,
            Some("users.reset_usage"),
            |state, config, now| {
                let id = match id_param(&raw) {
                    Ok(id) => id,
                    Err(response) => return response,
                };
                let Some(user) = state.users.get_mut(&id) else {
                    return user_not_found();
                };
                user.used_traffic = 0;
                if user.status == UserStatus::Limited {
                    user.status = UserStatus::Active;
                }
                HttpResponse::Ok().json(user_json(user, config, now, true))
            },
        )
        .await
    }

    pub(super) async fn revoke_sub(
        emu: Emu,
        req: HttpRequest,
        raw: web::Path<String>,
    ) -> HttpResponse {
        emu.serve(
            &req,
            route::REVOKE_SUB,
            None,
            Some("users.revoke_sub"),
            |state, config, now| {
                let id = match id_param(&raw) {
                    Ok(id) => id,
                    Err(response) => return response,
                };
                let Some(user) = state.users.get_mut(&id) else {
                    return user_not_found();
                };
                // Every credential regenerated; the ss method and WireGuard IPs kept.
                let method = user.proxy_settings["shadowsocks"]["method"].clone();
                let peer_ips = user.proxy_settings["wireguard"]["peer_ips"].clone();
                user.proxy_settings = proxy_settings(Some(&json!({
                    "shadowsocks": {"method": method},
                    "wireguard": {"peer_ips": peer_ips},
                })));
                user.sub_revoked_at = Some(now);
                HttpResponse::Ok().json(user_json(user, config, now, true))
            },
        )
        .await
    }

    pub(super) async fn list_users(emu: Emu, req: HttpRequest) -> HttpResponse {
        let pairs: Vec<(String, String)> =
            web::Query::<Vec<(String, String)>>::from_query(req.query_string())
                .map(|q| q.into_inner())
                .unwrap_or_default();
        emu.serve(
            &req,
            route::LIST_USERS,
            None,
            Some("users.read"),
            |state, config, now| {
                let get = |name: &str| {
                    pairs
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                };
                let names: Vec<&str> = pairs
                    .iter()
                    .filter(|(k, _)| k == "username")
                    .map(|(_, v)| v.as_str())
                    .collect();
                let search = get("search").map(str::to_lowercase);
                let with_sub = get("load_sub") == Some("true");
                let offset: usize = get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
                let limit: Option<usize> = get("limit").and_then(|v| v.parse().ok());
                let matching: Vec<&UserState> = state
                    .users
                    .values()
                    .filter(|u| names.is_empty() || names.contains(&u.username.as_str()))
                    .filter(|u| {
                        search.as_ref().is_none_or(|s| {
                            u.username.to_lowercase().contains(s)
                                || u.note
                                    .as_ref()
                                    .is_some_and(|n| n.to_lowercase().contains(s))
                        })
                    })
                    .collect();
                let page: Vec<Value> = matching
                    .iter()
                    .skip(offset)
                    .take(limit.unwrap_or(usize::MAX))
                    .map(|u| user_json(u, config, now, with_sub))
                    .collect();
                HttpResponse::Ok().json(json!({"users": page, "total": matching.len()}))
            },
        )
        .await
    }
}
