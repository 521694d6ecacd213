//! A stateful, in-memory Remnawave 2.x (2.8.1) emulator
//! (shared/reference/panels-remnawave-pasarguard.md §1).
//!
//! It serves the user API the payment system uses — `POST /api/users`, `PATCH /api/users`,
//! `GET /api/users/by-username/{username}`, `GET|DELETE /api/users/{uuid}`,
//! `POST /api/users/{uuid}/actions/{enable,disable,reset-traffic,revoke}`, `GET /api/users`,
//! `POST /api/auth/login` — and `GET /api/internal-squads` (read from the backend's contract,
//! `GetInternalSquadsCommand`), with the panel's rules:
//!
//! - the proxy check: a request without a non-empty `X-Forwarded-For` **and**
//!   `X-Forwarded-Proto: https` has its connection dropped with no answer;
//! - `Authorization: Bearer` with the API token (401 when expired or unknown, 403 `Forbidden
//!   resource` when its scopes do not cover the route or it was deleted); an admin JWT from
//!   `/api/auth/login` is 403 without `X-Remnawave-Client-Type: browser`;
//! - every answer wrapped in `{"response": …}`; zod validation errors as 400
//!   `{"statusCode":400,"message":"Validation failed","errors":[…]}` (unknown fields are
//!   stripped, as zod does); domain errors as `{"timestamp","path","message","errorCode"}`:
//!   duplicate username 400 `A019` (case-sensitive names), unknown user 404 `A025` on
//!   update/delete/actions and 404 `A063` on look-ups, an unknown squad 500 `A018`;
//! - usernames 3–36 of `[A-Za-z0-9_-]`; `expireAt` required ISO-8601 with offset, no "never";
//!   an update's `expireAt` must be in the future; `status` on update only
//!   `ACTIVE`/`DISABLED`; `activeInternalSquads` replaces the set; keys and `shortUuid` kept
//!   by every update; EXPIRED + a future `expireAt` → ACTIVE; LIMITED + a higher or zero
//!   limit → ACTIVE; revoke gives new keys and a new `shortUuid`.
//!
//! Faults, outage and latency as the Marzban emulator ([`crate::panel_kit`]); control API
//! under `/sandbox/remnawave/`.

use std::collections::HashMap;
use std::net::SocketAddr;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::panel_kit::{self, Connection, PanelState};

pub use crate::panel_kit::{Fault, RequestRecord};

/// Route labels as recorded in [`RequestRecord::route`].
pub mod route {
    pub const LOGIN: &str = "POST /api/auth/login";
    pub const CREATE_USER: &str = "POST /api/users";
    pub const UPDATE_USER: &str = "PATCH /api/users";
    pub const LIST_USERS: &str = "GET /api/users";
    pub const BY_USERNAME: &str = "GET /api/users/by-username/{username}";
    pub const GET_USER: &str = "GET /api/users/{uuid}";
    pub const DELETE_USER: &str = "DELETE /api/users/{uuid}";
    pub const ENABLE: &str = "POST /api/users/{uuid}/actions/enable";
    pub const DISABLE: &str = "POST /api/users/{uuid}/actions/disable";
    pub const RESET_TRAFFIC: &str = "POST /api/users/{uuid}/actions/reset-traffic";
    pub const REVOKE: &str = "POST /api/users/{uuid}/actions/revoke";
    pub const SQUADS: &str = "GET /api/internal-squads";
}

/// The UUID of the default configuration's one internal squad.
pub const DEFAULT_SQUAD: &str = "a3a1b6c2-4f5e-4d7a-9b8c-0d1e2f3a4b5c";
/// The API token the default configuration accepts.
pub const DEFAULT_TOKEN: &str = "remnawave-sandbox-api-token";

/// An internal squad (the panel's replacement of Marzban's inbounds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Squad {
    pub uuid: Uuid,
    pub name: String,
}

/// Emulator settings; `Config::default()` suits tests.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    /// The API token (`REMNAWAVE_TOKEN`) the panel accepts.
    pub api_token: String,
    /// Its scopes: `*` (the default), `users:*`, `users:read`, `users:write`, or per endpoint
    /// (`users:create`, `users:update`, `users:by-username`, …).
    pub token_scopes: Vec<String>,
    pub admin_username: String,
    pub admin_password: String,
    /// Default: one squad, `Default-Squad` ([`DEFAULT_SQUAD`]).
    pub squads: Vec<Squad>,
    /// `SUB_PUBLIC_DOMAIN`: subscription URLs are `https://<it>/<shortUuid>`.
    pub sub_public_domain: String,
    /// `NODE_ENV=development` turns the proxy check off.
    pub development: bool,
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_token: DEFAULT_TOKEN.to_owned(),
            token_scopes: vec!["*".to_owned()],
            admin_username: "admin".to_owned(),
            admin_password: "admin-password".to_owned(),
            squads: vec![Squad {
                uuid: Uuid::parse_str(DEFAULT_SQUAD).unwrap_or_default(),
                name: "Default-Squad".to_owned(),
            }],
            sub_public_domain: "sub.example.com".to_owned(),
            development: false,
            workers: 2,
        }
    }
}

/// A user's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserStatus {
    Active,
    Disabled,
    Limited,
    Expired,
}

/// Everything the emulator stores about a user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserState {
    pub uuid: Uuid,
    pub id: i64,
    pub short_uuid: String,
    pub username: String,
    pub status: UserStatus,
    pub traffic_limit_bytes: i64,
    pub traffic_limit_strategy: String,
    pub expire_at: DateTime<Utc>,
    pub telegram_id: Option<i64>,
    pub email: Option<String>,
    pub description: Option<String>,
    pub tag: Option<String>,
    pub hwid_device_limit: Option<i64>,
    pub vless_uuid: Uuid,
    pub trojan_password: String,
    pub ss_password: String,
    pub active_internal_squads: Vec<Uuid>,
    pub external_squad_uuid: Option<Uuid>,
    pub used_traffic_bytes: i64,
    pub lifetime_used_traffic_bytes: i64,
    pub sub_revoked_at: Option<DateTime<Utc>>,
    pub last_traffic_reset_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The panel's users and tokens, behind the [`Emulator`]'s lock.
#[derive(Default)]
pub struct State {
    users: HashMap<Uuid, UserState>,
    /// The API token stopped working: expired (401) or deleted (403).
    token: TokenState,
    /// Admin JWTs issued by `/api/auth/login`.
    admin_tokens: Vec<String>,
    next_id: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum TokenState {
    #[default]
    Valid,
    Expired,
    Deleted,
}

impl State {
    fn by_username(&self, name: &str) -> Option<&UserState> {
        // Plain Postgres `@unique`: case-sensitive.
        self.users.values().find(|u| u.username == name)
    }
}

impl PanelState for State {
    const NAME: &'static str = "remnawave";
    const PROBE: &'static str = route::SQUADS;
    type Config = Config;
    type User = UserState;
    type Access = Scope;

    fn listen(config: &Config) -> (SocketAddr, usize) {
        (config.bind, config.workers)
    }

    fn routes(cfg: &mut web::ServiceConfig) {
        cfg.route("/api/auth/login", web::post().to(http::login))
            .route("/api/internal-squads", web::get().to(http::squads))
            .route("/api/internal-squads/", web::get().to(http::squads))
            .service(
                web::resource("/api/users")
                    .route(web::post().to(http::create_user))
                    .route(web::patch().to(http::update_user))
                    .route(web::get().to(http::list_users)),
            )
            .route(
                "/api/users/by-username/{username}",
                web::get().to(http::by_username),
            )
            .service(
                web::resource("/api/users/{uuid}")
                    .route(web::get().to(http::get_user))
                    .route(web::delete().to(http::delete_user)),
            )
            .route(
                "/api/users/{uuid}/actions/{action}",
                web::post().to(http::action),
            );
    }

    fn internal_error() -> HttpResponse {
        domain_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "/api",
            "Internal server error",
            "A001",
        )
    }

    fn fault_status(status: StatusCode) -> HttpResponse {
        HttpResponse::build(status).json(json!({
            "message": status.canonical_reason().unwrap_or("Error"),
            "statusCode": status.as_u16(),
        }))
    }

    /// The proxy check.
    fn admit(config: &Config, req: &HttpRequest) -> Option<HttpResponse> {
        if config.development || behind_proxy(req) {
            return None;
        }
        // ProxyCheckMiddleware: `socket.destroy()`, no HTTP answer at all.
        if let Some(connection) = req.conn_data::<Connection>() {
            connection.drop_connection();
        }
        Some(HttpResponse::BadRequest().finish())
    }

    /// 401 for a missing, unknown or expired token; 403 for a deleted one, one whose scopes do
    /// not cover the route, or an admin JWT without the browser header.
    fn auth(&self, config: &Config, req: &HttpRequest, scope: Scope) -> Option<HttpResponse> {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let unauthorized = || {
            HttpResponse::Unauthorized().json(json!({"message": "Unauthorized", "statusCode": 401}))
        };
        let forbidden = |message: &str| {
            HttpResponse::Forbidden()
                .json(json!({"message": message, "error": "Forbidden", "statusCode": 403}))
        };
        let Some(token) = token else {
            return Some(unauthorized());
        };
        if self.admin_tokens.iter().any(|t| t == token) {
            let browser = req
                .headers()
                .get("x-remnawave-client-type")
                .and_then(|v| v.to_str().ok())
                == Some("browser");
            return (!browser).then(|| {
                forbidden(
                    "For API requests you must create own API-token. Use the dashboard to create it.",
                )
            });
        }
        if token != config.api_token {
            return Some(unauthorized());
        }
        match self.token {
            TokenState::Expired => return Some(unauthorized()),
            TokenState::Deleted => return Some(forbidden("Forbidden resource")),
            TokenState::Valid => {}
        }
        let allowed = config.token_scopes.iter().any(|granted| {
            let granted = granted.as_str();
            granted == "*"
                || granted == format!("{}:*", scope.group)
                || granted == scope.endpoint
                || (scope.write && granted == format!("{}:write", scope.group))
                || (!scope.write && granted == format!("{}:read", scope.group))
        });
        (!allowed).then(|| forbidden("Forbidden resource"))
    }

    /// The scheduler: an active user past its expiry is EXPIRED, over its limit LIMITED.
    fn review(&mut self, now: DateTime<Utc>) {
        for user in self.users.values_mut() {
            if user.status != UserStatus::Active {
                continue;
            }
            if user.expire_at <= now {
                user.status = UserStatus::Expired;
            } else if user.traffic_limit_bytes > 0
                && user.used_traffic_bytes >= user.traffic_limit_bytes
            {
                user.status = UserStatus::Limited;
            }
        }
    }

    fn users(&self) -> Vec<UserState> {
        let mut users: Vec<UserState> = self.users.values().cloned().collect();
        users.sort_by_key(|u| u.id);
        users
    }

    fn user_mut(&mut self, username: &str) -> Option<&mut UserState> {
        self.users.values_mut().find(|u| u.username == username)
    }

    /// The scheduler then applies LIMITED.
    fn set_traffic(user: &mut UserState, bytes: i64) {
        user.lifetime_used_traffic_bytes += (bytes - user.used_traffic_bytes).max(0);
        user.used_traffic_bytes = bytes;
    }

    /// The API token expires: every call is 401 until [`Emulator::renew_token`].
    fn revoke_tokens(&mut self) {
        self.token = TokenState::Expired;
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
    /// The API token is deleted in the dashboard: every call is 403.
    pub fn delete_token(&self) {
        self.state().token = TokenState::Deleted;
    }

    /// The token works again (an operator renewed it).
    pub fn renew_token(&self) {
        self.state().token = TokenState::Valid;
    }

    /// The user's VLESS UUID: the customer's key.
    pub fn vless_id(&self, username: &str) -> Option<String> {
        self.user(username).map(|u| u.vless_uuid.to_string())
    }

    /// Adds a user as if the panel had it before we came (the `remnawave-migrate` tool or an
    /// admin made it): active until `expire_at`, in `squads`.
    pub fn insert_user(
        &self,
        username: &str,
        expire_at: DateTime<Utc>,
        squads: Vec<Uuid>,
    ) -> UserState {
        let mut state = self.state();
        let user = new_user(&mut state, username, expire_at, squads, Utc::now());
        state.users.insert(user.uuid, user.clone());
        user
    }
}

fn behind_proxy(req: &HttpRequest) -> bool {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    !header("x-forwarded-for").is_empty() && header("x-forwarded-proto") == "https"
}

/// What a route needs of the token's scopes: its group (`users`, `internal-squads`),
/// whether it writes, and its per-endpoint scope.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    group: &'static str,
    write: bool,
    endpoint: &'static str,
}

const fn users(write: bool, endpoint: &'static str) -> Scope {
    Scope {
        group: "users",
        write,
        endpoint,
    }
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn random_password() -> String {
    Uuid::new_v4().simple().to_string()[..24].to_owned()
}

fn short_uuid() -> String {
    Uuid::new_v4().simple().to_string()[..16].to_owned()
}

fn new_user(
    state: &mut State,
    username: &str,
    expire_at: DateTime<Utc>,
    squads: Vec<Uuid>,
    now: DateTime<Utc>,
) -> UserState {
    state.next_id += 1;
    UserState {
        uuid: Uuid::new_v4(),
        id: state.next_id,
        short_uuid: short_uuid(),
        username: username.to_owned(),
        status: UserStatus::Active,
        traffic_limit_bytes: 0,
        traffic_limit_strategy: "NO_RESET".to_owned(),
        expire_at,
        telegram_id: None,
        email: None,
        description: None,
        tag: None,
        hwid_device_limit: None,
        vless_uuid: Uuid::new_v4(),
        trojan_password: random_password(),
        ss_password: random_password(),
        active_internal_squads: squads,
        external_squad_uuid: None,
        used_traffic_bytes: 0,
        lifetime_used_traffic_bytes: 0,
        sub_revoked_at: None,
        last_traffic_reset_at: None,
        created_at: now,
        updated_at: now,
    }
}

/// `ExtendedUsersSchema`, wrapped.
fn user_json(user: &UserState, config: &Config) -> Value {
    let squads: Vec<Value> = user
        .active_internal_squads
        .iter()
        .map(|uuid| {
            let name = config
                .squads
                .iter()
                .find(|s| s.uuid == *uuid)
                .map_or("", |s| s.name.as_str());
            json!({"uuid": uuid, "name": name})
        })
        .collect();
    json!({
        "uuid": user.uuid,
        "id": user.id,
        "shortUuid": user.short_uuid,
        "username": user.username,
        "status": user.status,
        "trafficLimitBytes": user.traffic_limit_bytes,
        "trafficLimitStrategy": user.traffic_limit_strategy,
        "expireAt": iso(user.expire_at),
        "telegramId": user.telegram_id,
        "email": user.email,
        "description": user.description,
        "tag": user.tag,
        "hwidDeviceLimit": user.hwid_device_limit,
        "externalSquadUuid": user.external_squad_uuid,
        "trojanPassword": user.trojan_password,
        "vlessUuid": user.vless_uuid,
        "ssPassword": user.ss_password,
        "lastTriggeredThreshold": 0,
        "subRevokedAt": user.sub_revoked_at.map(iso),
        "lastTrafficResetAt": user.last_traffic_reset_at.map(iso),
        "createdAt": iso(user.created_at),
        "updatedAt": iso(user.updated_at),
        "subscriptionUrl": format!("https://{}/{}", config.sub_public_domain, user.short_uuid),
        "activeInternalSquads": squads,
        "userTraffic": {
            "usedTrafficBytes": user.used_traffic_bytes,
            "lifetimeUsedTrafficBytes": user.lifetime_used_traffic_bytes,
            "onlineAt": null,
            "firstConnectedAt": null,
            "lastConnectedNodeUuid": null,
        },
    })
}

fn wrapped(status: StatusCode, response: Value) -> HttpResponse {
    HttpResponse::build(status).json(json!({"response": response}))
}

/// A domain error: `{"timestamp","path","message","errorCode"}`.
fn domain_error(status: StatusCode, path: &str, message: &str, code: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "timestamp": iso(Utc::now()),
        "path": path,
        "message": message,
        "errorCode": code,
    }))
}

/// zod issues, answered as nestjs-zod does.
#[derive(Default)]
struct Issues(Vec<Value>);

impl Issues {
    fn add(&mut self, code: &str, path: &str, message: impl Into<String>) {
        self.0
            .push(json!({"code": code, "message": message.into(), "path": [path]}));
    }

    fn into_response(self) -> HttpResponse {
        HttpResponse::BadRequest().json(json!({
            "statusCode": 400,
            "message": "Validation failed",
            "errors": self.0,
        }))
    }
}

fn body_object(body: &[u8], issues: &mut Issues) -> Map<String, Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        _ => {
            issues.add("invalid_type", "", "Expected object, received other");
            Map::new()
        }
    }
}

fn valid_username(name: &str) -> bool {
    (3..=36).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An ISO-8601 date with offset, as `z.string().datetime({ offset: true })` accepts it.
fn iso_field(obj: &Map<String, Value>, field: &str, issues: &mut Issues) -> Option<DateTime<Utc>> {
    match obj.get(field) {
        None => None,
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(at) => Some(at.with_timezone(&Utc)),
            Err(_) => {
                issues.add("invalid_string", field, "Invalid datetime");
                None
            }
        },
        Some(_) => {
            issues.add("invalid_type", field, "Expected string, received other");
            None
        }
    }
}

fn int_field(obj: &Map<String, Value>, field: &str, min: i64, issues: &mut Issues) -> Option<i64> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if v >= min => Some(v),
            Some(_) => {
                issues.add(
                    "too_small",
                    field,
                    format!("Number must be greater than or equal to {min}"),
                );
                None
            }
            None => {
                issues.add("invalid_type", field, "Expected integer, received float");
                None
            }
        },
        Some(_) => {
            issues.add("invalid_type", field, "Expected number, received other");
            None
        }
    }
}

fn choice_field(
    obj: &Map<String, Value>,
    field: &str,
    allowed: &[&str],
    issues: &mut Issues,
) -> Option<String> {
    match obj.get(field) {
        None => None,
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Some(s.clone()),
        Some(_) => {
            issues.add(
                "invalid_enum_value",
                field,
                format!("Invalid enum value. Expected {}", allowed.join(" | ")),
            );
            None
        }
    }
}

fn string_field(obj: &Map<String, Value>, field: &str, issues: &mut Issues) -> Option<String> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            issues.add("invalid_type", field, "Expected string, received other");
            None
        }
    }
}

fn squads_field(obj: &Map<String, Value>, issues: &mut Issues) -> Option<Vec<Uuid>> {
    let value = obj.get("activeInternalSquads")?;
    let Some(items) = value.as_array() else {
        issues.add(
            "invalid_type",
            "activeInternalSquads",
            "Expected array, received other",
        );
        return None;
    };
    let mut squads = Vec::new();
    for item in items {
        match item.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(uuid) => squads.push(uuid),
            None => issues.add("invalid_string", "activeInternalSquads", "Invalid uuid"),
        }
    }
    Some(squads)
}

const STRATEGIES: [&str; 5] = ["NO_RESET", "DAY", "WEEK", "MONTH", "MONTH_ROLLING"];

/// The actix handlers.
mod http {
    use super::*;

    type Emu = web::Data<Emulator>;

    pub(super) async fn login(emu: Emu, req: HttpRequest, body: web::Bytes) -> HttpResponse {
        emu.serve(&req, route::LOGIN, None, None, |state, config, _| {
            let mut issues = Issues::default();
            let obj = body_object(&body, &mut issues);
            let username = string_field(&obj, "username", &mut issues);
            let password = string_field(&obj, "password", &mut issues);
            if !issues.0.is_empty() {
                return issues.into_response();
            }
            if username.as_deref() != Some(&config.admin_username)
                || password.as_deref() != Some(&config.admin_password)
            {
                return HttpResponse::Unauthorized()
                    .json(json!({"message": "Invalid credentials", "statusCode": 401}));
            }
            let token = format!("admin.{}", Uuid::new_v4().simple());
            state.admin_tokens.push(token.clone());
            wrapped(StatusCode::OK, json!({"accessToken": token}))
        })
        .await
    }

    pub(super) async fn squads(emu: Emu, req: HttpRequest) -> HttpResponse {
        let scope = Scope {
            group: "internal-squads",
            write: false,
            endpoint: "internal-squads:get-all",
        };
        emu.serve(
            &req,
            route::SQUADS,
            None,
            Some(scope),
            |state, config, _| {
                let squads: Vec<Value> = config
                    .squads
                    .iter()
                    .enumerate()
                    .map(|(position, squad)| {
                        let members = state
                            .users
                            .values()
                            .filter(|u| u.active_internal_squads.contains(&squad.uuid))
                            .count();
                        json!({
                            "uuid": squad.uuid,
                            "viewPosition": position,
                            "name": squad.name,
                            "tags": [],
                            "info": {"membersCount": members, "inboundsCount": 1},
                            "inbounds": [],
                        })
                    })
                    .collect();
                wrapped(
                    StatusCode::OK,
                    json!({"total": squads.len(), "internalSquads": squads}),
                )
            },
        )
        .await
    }

    pub(super) async fn create_user(emu: Emu, req: HttpRequest, body: web::Bytes) -> HttpResponse {
        let json = serde_json::from_slice(&body).ok();
        let scope = users(true, "users:create");
        emu.serve(&req, route::CREATE_USER, json, Some(scope), |state, config, now| {
            let mut issues = Issues::default();
            let obj = body_object(&body, &mut issues);
            let username = match obj.get("username") {
                Some(Value::String(name)) if valid_username(name) => Some(name.clone()),
                Some(Value::String(_)) => {
                    issues.add(
                        "invalid_string",
                        "username",
                        "Username can only contain letters, numbers, underscores and dashes, 3-36 characters",
                    );
                    None
                }
                None => {
                    issues.add("invalid_type", "username", "Required");
                    None
                }
                Some(_) => {
                    issues.add("invalid_type", "username", "Expected string, received other");
                    None
                }
            };
            let expire_at = iso_field(&obj, "expireAt", &mut issues);
            if !obj.contains_key("expireAt") {
                issues.add("invalid_type", "expireAt", "Required");
            }
            let limit = int_field(&obj, "trafficLimitBytes", 0, &mut issues);
            let strategy = choice_field(&obj, "trafficLimitStrategy", &STRATEGIES, &mut issues);
            let status = choice_field(
                &obj,
                "status",
                &["ACTIVE", "DISABLED", "LIMITED", "EXPIRED"],
                &mut issues,
            );
            let squads = squads_field(&obj, &mut issues);
            let description = string_field(&obj, "description", &mut issues);
            let telegram_id = int_field(&obj, "telegramId", i64::MIN, &mut issues);
            let (Some(username), Some(expire_at), true) = (username, expire_at, issues.0.is_empty())
            else {
                return issues.into_response();
            };
            if state.by_username(&username).is_some() {
                return domain_error(
                    StatusCode::BAD_REQUEST,
                    "/api/users",
                    "User username already exists",
                    "A019",
                );
            }
            let squads = squads.unwrap_or_default();
            if squads.iter().any(|s| !config.squads.iter().any(|c| c.uuid == *s)) {
                // A foreign-key failure, caught generically.
                return domain_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "/api/users",
                    "Create user error",
                    "A018",
                );
            }
            let mut user = new_user(state, &username, expire_at, squads, now);
            user.traffic_limit_bytes = limit.unwrap_or(0);
            if let Some(strategy) = strategy {
                user.traffic_limit_strategy = strategy;
            }
            user.status = match status.as_deref() {
                Some("DISABLED") => UserStatus::Disabled,
                Some("LIMITED") => UserStatus::Limited,
                Some("EXPIRED") => UserStatus::Expired,
                _ => UserStatus::Active,
            };
            user.description = description;
            user.telegram_id = telegram_id;
            let answer = user_json(&user, config);
            state.users.insert(user.uuid, user);
            wrapped(StatusCode::CREATED, answer)
        })
        .await
    }

    pub(super) async fn update_user(emu: Emu, req: HttpRequest, body: web::Bytes) -> HttpResponse {
        let json = serde_json::from_slice(&body).ok();
        let scope = users(true, "users:update");
        emu.serve(
            &req,
            route::UPDATE_USER,
            json,
            Some(scope),
            |state, config, now| {
                let mut issues = Issues::default();
                let obj = body_object(&body, &mut issues);
                let uuid = match obj.get("uuid") {
                    None => None,
                    Some(v) => match v.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                        Some(uuid) => Some(uuid),
                        None => {
                            issues.add("invalid_string", "uuid", "Invalid uuid");
                            None
                        }
                    },
                };
                let username = string_field(&obj, "username", &mut issues);
                if uuid.is_none() && username.is_none() && issues.0.is_empty() {
                    issues.add("custom", "", "Either uuid or username must be provided");
                }
                let expire_at = iso_field(&obj, "expireAt", &mut issues);
                if expire_at.is_some_and(|at| at <= now) {
                    issues.add(
                        "custom",
                        "expireAt",
                        "Expiration date must be in the future",
                    );
                }
                let limit = int_field(&obj, "trafficLimitBytes", 0, &mut issues);
                let strategy = choice_field(&obj, "trafficLimitStrategy", &STRATEGIES, &mut issues);
                let status = choice_field(&obj, "status", &["ACTIVE", "DISABLED"], &mut issues);
                let squads = squads_field(&obj, &mut issues);
                let description = string_field(&obj, "description", &mut issues);
                if !issues.0.is_empty() {
                    return issues.into_response();
                }
                // `uuid` wins over `username`.
                let target = match uuid {
                    Some(uuid) => state.users.contains_key(&uuid).then_some(uuid),
                    None => username
                        .as_deref()
                        .and_then(|name| state.by_username(name))
                        .map(|u| u.uuid),
                };
                let Some(target) = target else {
                    return domain_error(
                        StatusCode::NOT_FOUND,
                        "/api/users",
                        "User not found",
                        "A025",
                    );
                };
                if squads.as_ref().is_some_and(|s| {
                    s.iter()
                        .any(|s| !config.squads.iter().any(|c| c.uuid == *s))
                }) {
                    return domain_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "/api/users",
                        "Update user error",
                        "A018",
                    );
                }
                let Some(user) = state.users.get_mut(&target) else {
                    return domain_error(
                        StatusCode::NOT_FOUND,
                        "/api/users",
                        "User not found",
                        "A025",
                    );
                };
                if let Some(at) = expire_at {
                    user.expire_at = at;
                    if user.status == UserStatus::Expired && at > now {
                        user.status = UserStatus::Active;
                    }
                }
                if let Some(limit) = limit {
                    if user.status == UserStatus::Limited
                        && (limit == 0 || limit > user.traffic_limit_bytes)
                    {
                        user.status = UserStatus::Active;
                    }
                    user.traffic_limit_bytes = limit;
                }
                if let Some(strategy) = strategy {
                    user.traffic_limit_strategy = strategy;
                }
                match status.as_deref() {
                    Some("ACTIVE") => user.status = UserStatus::Active,
                    Some("DISABLED") => user.status = UserStatus::Disabled,
                    _ => {}
                }
                if let Some(squads) = squads {
                    user.active_internal_squads = squads;
                }
                if description.is_some() {
                    user.description = description;
                }
                user.updated_at = now;
                wrapped(StatusCode::OK, user_json(user, config))
            },
        )
        .await
    }

    pub(super) async fn list_users(emu: Emu, req: HttpRequest) -> HttpResponse {
        let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default();
        let scope = users(false, "users:get-all");
        emu.serve(
            &req,
            route::LIST_USERS,
            None,
            Some(scope),
            |state, config, _| {
                let start: usize = query.get("start").and_then(|s| s.parse().ok()).unwrap_or(0);
                let size: usize = query.get("size").and_then(|s| s.parse().ok()).unwrap_or(25);
                if !(1..=1000).contains(&size) {
                    let mut issues = Issues::default();
                    issues.add("too_big", "size", "Number must be between 1 and 1000");
                    return issues.into_response();
                }
                let mut all: Vec<&UserState> = state.users.values().collect();
                all.sort_by_key(|u| u.id);
                let page: Vec<Value> = all
                    .iter()
                    .skip(start)
                    .take(size)
                    .map(|u| user_json(u, config))
                    .collect();
                wrapped(StatusCode::OK, json!({"users": page, "total": all.len()}))
            },
        )
        .await
    }

    pub(super) async fn by_username(
        emu: Emu,
        req: HttpRequest,
        name: web::Path<String>,
    ) -> HttpResponse {
        let scope = users(false, "users:by-username");
        emu.serve(
            &req,
            route::BY_USERNAME,
            None,
            Some(scope),
            |state, config, _| match state.by_username(&name) {
                Some(user) => wrapped(StatusCode::OK, user_json(user, config)),
                None => not_found_lookup(req.path()),
            },
        )
        .await
    }

    fn not_found_lookup(path: &str) -> HttpResponse {
        domain_error(
            StatusCode::NOT_FOUND,
            path,
            "User with specified params not found",
            "A063",
        )
    }

    fn not_found_action(path: &str) -> HttpResponse {
        domain_error(StatusCode::NOT_FOUND, path, "User not found", "A025")
    }

    /// A `{uuid}` path parameter: a non-UUID is a 400 validation error.
    // A handler's early answer, built once per request: its size does not matter.
    #[allow(clippy::result_large_err)]
    fn uuid_param(raw: &str) -> Result<Uuid, HttpResponse> {
        Uuid::parse_str(raw).map_err(|_| {
            let mut issues = Issues::default();
            issues.add("invalid_string", "uuid", "Invalid uuid");
            issues.into_response()
        })
    }

    pub(super) async fn get_user(
        emu: Emu,
        req: HttpRequest,
        raw: web::Path<String>,
    ) -> HttpResponse {
        let scope = users(false, "users:by-uuid");
        emu.serve(
            &req,
            route::GET_USER,
            None,
            Some(scope),
            |state, config, _| {
                let uuid = match uuid_param(&raw) {
                    Ok(uuid) => uuid,
                    Err(response) => return response,
                };
                match state.users.get(&uuid) {
                    Some(user) => wrapped(StatusCode::OK, user_json(user, config)),
                    None => not_found_lookup(req.path()),
                }
            },
        )
        .await
    }

    pub(super) async fn delete_user(
        emu: Emu,
        req: HttpRequest,
        raw: web::Path<String>,
    ) -> HttpResponse {
        let scope = users(true, "users:delete");
        emu.serve(
            &req,
            route::DELETE_USER,
            None,
            Some(scope),
            |state, _, _| {
                let uuid = match uuid_param(&raw) {
                    Ok(uuid) => uuid,
                    Err(response) => return response,
                };
                match state.users.remove(&uuid) {
                    Some(_) => wrapped(StatusCode::OK, json!({"isDeleted": true})),
                    None => not_found_action(req.path()),
                }
            },
        )
        .await
    }

    pub(super) async fn action(
        emu: Emu,
        req: HttpRequest,
        path: web::Path<(String, String)>,
        body: web::Bytes,
    ) -> HttpResponse {
        let (raw, action) = path.into_inner();
        let (route, endpoint) = match action.as_str() {
            "enable" => (route::ENABLE, "users:enable"),
            "disable" => (route::DISABLE, "users:disable"),
            "reset-traffic" => (route::RESET_TRAFFIC, "users:reset-traffic"),
            "revoke" => (route::REVOKE, "users:revoke-subscription"),
            _ => {
                return HttpResponse::NotFound()
                    .json(json!({"message": format!("Cannot POST {}", req.path()), "error": "Not Found", "statusCode": 404}));
            }
        };
        let json = serde_json::from_slice(&body).ok();
        emu.serve(
            &req,
            route,
            json,
            Some(users(true, endpoint)),
            |state, config, now| {
                let uuid = match uuid_param(&raw) {
                    Ok(uuid) => uuid,
                    Err(response) => return response,
                };
                let Some(user) = state.users.get_mut(&uuid) else {
                    return not_found_action(req.path());
                };
                match action.as_str() {
                    "enable" if user.status != UserStatus::Disabled => {
                        return domain_error(
                            StatusCode::BAD_REQUEST,
                            req.path(),
                            "User already enabled",
                            "A030",
                        );
                    }
                    "enable" => user.status = UserStatus::Active,
                    "disable" if user.status == UserStatus::Disabled => {
                        return domain_error(
                            StatusCode::BAD_REQUEST,
                            req.path(),
                            "User already disabled",
                            "A029",
                        );
                    }
                    "disable" => user.status = UserStatus::Disabled,
                    "reset-traffic" => {
                        user.used_traffic_bytes = 0;
                        user.last_traffic_reset_at = Some(now);
                        if user.status == UserStatus::Limited {
                            user.status = UserStatus::Active;
                        }
                    }
                    _ => {
                        let only_passwords = serde_json::from_slice::<Value>(&body)
                            .ok()
                            .and_then(|b| b.get("revokeOnlyPasswords").and_then(Value::as_bool))
                            .unwrap_or(false);
                        user.vless_uuid = Uuid::new_v4();
                        user.trojan_password = random_password();
                        user.ss_password = random_password();
                        if !only_passwords {
                            user.short_uuid = short_uuid();
                        }
                        user.sub_revoked_at = Some(now);
                    }
                }
                user.updated_at = now;
                wrapped(StatusCode::OK, user_json(user, config))
            },
        )
        .await
    }
}
