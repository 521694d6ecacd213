//! A stateful, in-memory Marzban v0.8.4 emulator (shared/reference/external-apis.md §4, §4b).
//!
//! It serves the admin API the payment system uses — `POST /api/admin/token` (form only),
//! `GET /api/admin`, `POST /api/user`, `GET|PUT|DELETE /api/user/{username}`,
//! `POST /api/user/{username}/reset`, `POST /api/user/{username}/revoke_sub`, `GET /api/users` —
//! and the subscription endpoints `GET /sub/{token}/` and `GET /sub/{token}/info`, with the
//! panel's quirks: 200 on create, 409 on duplicates, case-sensitive names (SQLite) or
//! case-insensitive ones (MySQL, [`Usernames`]), `search` as SQL `ILIKE '%…%'`, 422 as
//! `{"detail": {"field": "message"}}`, no inbounds when a create omits `inbounds`, a `PUT` with
//! `proxies` keeping the ids it is given and generating them for protocols sent without one
//! (so `{"vless": {}}` is a new VLESS UUID) and deleting the protocols it does not name, and the
//! status rules of `PUT`/reset.
//!
//! Tests script faults ([`Fault`], [`Emulator::set_down`], [`Handle::disconnect`]), slow the
//! panel down ([`Emulator::set_latency`]), revoke tokens, count requests per route ([`route`]) and read the stored users, through
//! [`Emulator`]'s methods or the control API under `/sandbox/marzban/`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let marzban = sandbox::marzban::spawn(sandbox::marzban::Config::default()).await?;
//! let url = &marzban.base_url; // http://127.0.0.1:<port>, the value for MARZBAN_URL
//! # let _ = url; Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::server::{Restartable, serve};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Route labels as recorded in [`RequestRecord::route`].
pub mod route {
    pub const TOKEN: &str = "POST /api/admin/token";
    pub const ADMIN: &str = "GET /api/admin";
    pub const CREATE_USER: &str = "POST /api/user";
    pub const GET_USER: &str = "GET /api/user/{username}";
    pub const MODIFY_USER: &str = "PUT /api/user/{username}";
    pub const DELETE_USER: &str = "DELETE /api/user/{username}";
    pub const RESET_USER: &str = "POST /api/user/{username}/reset";
    pub const REVOKE_SUB: &str = "POST /api/user/{username}/revoke_sub";
    pub const LIST_USERS: &str = "GET /api/users";
    pub const SUBSCRIPTION: &str = "GET /sub/{token}/";
    pub const SUBSCRIPTION_INFO: &str = "GET /sub/{token}/info";
}

const PROTOCOLS: [&str; 4] = ["vmess", "vless", "trojan", "shadowsocks"];

/// One inbound of the emulated Xray config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub tag: String,
    /// `vless`, `vmess`, `trojan` or `shadowsocks`.
    pub protocol: String,
}

impl Inbound {
    pub fn new(tag: impl Into<String>, protocol: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            protocol: protocol.into(),
        }
    }
}

/// How the panel's database compares usernames. Marzban 0.8.4's model says `NOCASE`, but
/// what a running panel does depends on its database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Usernames {
    /// SQLite, as observed (§4b): `ix_users_username` is case-sensitive, so `tg_1` and `TG_1`
    /// are two users, `GET /api/user/tg_1` is 404 while only `TG_1` exists, and creating
    /// `tg_1` then makes a second user.
    #[default]
    CaseSensitive,
    /// MySQL/MariaDB with a case-insensitive collation: every look-up by name finds `TG_1`
    /// for `tg_1` (answering with the stored spelling), and creating `tg_1` answers 409.
    CaseInsensitive,
}

/// Emulator settings; `Config::default()` suits tests.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free one.
    pub bind: SocketAddr,
    pub admin_username: String,
    pub admin_password: String,
    /// Default: `VLESS TCP REALITY` and `VLESS GRPC REALITY` (vless), `VMess TCP` (vmess); no
    /// trojan or shadowsocks inbound, so those protocols are "disabled on your server".
    pub inbounds: Vec<Inbound>,
    /// Marzban's `XRAY_SUBSCRIPTION_URL_PREFIX`: `None` = relative `/sub/<token>` URLs.
    pub subscription_url_prefix: Option<String>,
    /// Lifetime of admin tokens (Marzban: 24 h).
    pub token_ttl: Duration,
    /// Host written into the `links`.
    pub link_host: String,
    pub workers: usize,
    /// Case-sensitive (SQLite, the default) or case-insensitive (MySQL) usernames.
    pub usernames: Usernames,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_username: "admin".to_owned(),
            admin_password: "admin-password".to_owned(),
            inbounds: vec![
                Inbound::new("VLESS TCP REALITY", "vless"),
                Inbound::new("VLESS GRPC REALITY", "vless"),
                Inbound::new("VMess TCP", "vmess"),
            ],
            subscription_url_prefix: None,
            token_ttl: Duration::from_secs(24 * 3600),
            link_host: "vpn.example.com".to_owned(),
            workers: 2,
            usernames: Usernames::default(),
        }
    }
}

/// A scripted fault for the next `/api` request(s), consumed in order, one per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer 500 `Internal Server Error` without doing anything.
    InternalError,
    /// Do the work, then answer 500: the caller cannot know that it succeeded.
    InternalErrorAfterProcessing,
    /// Answer this status with `{"detail": "<reason>"}` without doing anything (503, 403, …).
    Status { status: u16 },
    /// Wait `delay_ms`, then answer 504 without doing anything: a caller with a shorter
    /// timeout sees a hang, and nothing happened. (actix does not cancel a handler when its
    /// caller hangs up, so "handle after the delay" would act on an abandoned request.)
    Hang { delay_ms: u64 },
    /// Do the work, then wait `delay_ms` before answering.
    SlowAnswer { delay_ms: u64 },
    /// Wait `delay_ms`, then do the work and answer: a request that arrives before a later
    /// one but takes effect after it (answers out of order). The work is done even if the
    /// caller has given up by then, as a slow panel would.
    SlowWork { delay_ms: u64 },
}

impl Fault {
    pub fn hang(delay: Duration) -> Self {
        Self::Hang {
            delay_ms: millis(delay),
        }
    }

    pub fn slow_answer(delay: Duration) -> Self {
        Self::SlowAnswer {
            delay_ms: millis(delay),
        }
    }

    pub fn slow_work(delay: Duration) -> Self {
        Self::SlowWork {
            delay_ms: millis(delay),
        }
    }
}

fn millis(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

/// One request as the emulator saw it (control API requests are not recorded).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    pub method: String,
    /// One of the [`route`] labels.
    pub route: String,
    pub path: String,
    /// `None` until the answer is ready.
    pub status: Option<u16>,
    pub fault: Option<Fault>,
    /// The JSON body, when there was one (never the login form).
    pub body: Option<Value>,
}

/// A panel user's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
    Limited,
    Expired,
    OnHold,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Limited => "limited",
            Self::Expired => "expired",
            Self::OnHold => "on_hold",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "disabled" => Self::Disabled,
            "limited" => Self::Limited,
            "expired" => Self::Expired,
            "on_hold" => Self::OnHold,
            _ => return None,
        })
    }
}

/// Settings of one protocol (`id`, `flow`, `password`, `method`).
pub type ProxySettings = Map<String, Value>;

/// Everything the emulator stores about a user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserState {
    pub username: String,
    pub status: UserStatus,
    /// Unix seconds; `None` = never.
    pub expire: Option<i64>,
    /// Bytes; `None` = unlimited.
    pub data_limit: Option<i64>,
    pub data_limit_reset_strategy: String,
    pub used_traffic: i64,
    pub lifetime_used_traffic: i64,
    pub created_at: NaiveDateTime,
    pub proxies: BTreeMap<String, ProxySettings>,
    /// Selected inbound tags per protocol; a protocol without an entry has none (what a
    /// create without `inbounds` leaves behind).
    pub inbounds: BTreeMap<String, Vec<String>>,
    pub note: Option<String>,
    pub on_hold_expire_duration: Option<i64>,
    pub on_hold_timeout: Option<String>,
    pub auto_delete_in_days: Option<i64>,
    pub next_plan: Option<Value>,
    pub sub_updated_at: Option<NaiveDateTime>,
    pub sub_last_user_agent: Option<String>,
    /// Subscription tokens issued before this are refused (`revoke_sub`).
    pub sub_revoked_at: NaiveDateTime,
    /// Creation order, for listings.
    #[serde(skip)]
    seq: u64,
}

impl UserState {
    /// `revoke_sub`: new proxy ids and passwords, and every subscription token issued so far
    /// refused.
    pub fn revoke_sub(&mut self, now: DateTime<Utc>) {
        for settings in self.proxies.values_mut() {
            if settings.contains_key("id") {
                settings.insert("id".into(), Value::String(Uuid::new_v4().to_string()));
            }
            if settings.contains_key("password") {
                settings.insert("password".into(), Value::String(api::random_password()));
            }
        }
        self.sub_revoked_at = now.naive_utc();
    }

    /// The VLESS UUID: the customer's key.
    pub fn vless_id(&self) -> Option<&str> {
        self.proxies.get("vless")?.get("id")?.as_str()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("user {0} not found")]
    NotFound(String),
}

#[derive(Default)]
struct State {
    users: HashMap<String, UserState>,
    /// Issued admin tokens and when they expire.
    tokens: HashMap<String, Instant>,
    /// Scripted faults, each for any route (`None`) or one [`route`].
    faults: VecDeque<(Option<String>, Fault)>,
    down: bool,
    /// Added before every `/api` request is handled ([`Emulator::set_latency`]).
    latency: Duration,
    requests: Vec<RequestRecord>,
    seq: u64,
}

impl State {
    /// Marzban's review job, which flips overdue users within seconds; here it runs before
    /// every request, so the answer that set a past `expire` still says `active`.
    fn review(&mut self, now: i64) {
        for user in self.users.values_mut() {
            if user.status != UserStatus::Active {
                continue;
            }
            if user.expire.is_some_and(|expire| expire <= now) {
                user.status = UserStatus::Expired;
            } else if user
                .data_limit
                .is_some_and(|limit| user.used_traffic >= limit)
            {
                user.status = UserStatus::Limited;
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The stored spelling of the user `name` names: the exact name, or with
    /// [`Usernames::CaseInsensitive`] any spelling of it (the oldest such user).
    fn resolve(&self, name: &str, usernames: Usernames) -> Option<String> {
        if self.users.contains_key(name) {
            return Some(name.to_owned());
        }
        match usernames {
            Usernames::CaseSensitive => None,
            Usernames::CaseInsensitive => self
                .users
                .values()
                .filter(|u| u.username.eq_ignore_ascii_case(name))
                .min_by_key(|u| u.seq)
                .map(|u| u.username.clone()),
        }
    }

    /// [`State::resolve`], or `name` itself when no user has it (the look-up then answers 404).
    fn stored(&self, name: &str, config: &Config) -> String {
        self.resolve(name, config.usernames)
            .unwrap_or_else(|| name.to_owned())
    }
}

struct Shared {
    config: Config,
    state: Mutex<State>,
}

/// The emulator's state and control API; cheap to clone. [`Emulator::configure`] mounts it on
/// any actix `App` (the sandbox binary); [`spawn`] runs it on its own port (tests).
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler cannot leave the maps half-written in a way that matters to an
    // emulator, so keep serving.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Emulator {
    pub fn new(config: Config) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Registers the panel routes and the control API (`/sandbox/marzban/…`).
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(self.clone()))
            .route("/api/admin/token", web::post().to(http::token))
            .route("/api/admin", web::get().to(http::admin))
            .route("/api/user", web::post().to(http::create_user))
            .service(
                web::resource("/api/user/{username}")
                    .route(web::get().to(http::get_user))
                    .route(web::put().to(http::modify_user))
                    .route(web::delete().to(http::delete_user)),
            )
            .route(
                "/api/user/{username}/reset",
                web::post().to(http::reset_user),
            )
            .route(
                "/api/user/{username}/revoke_sub",
                web::post().to(http::revoke_sub),
            )
            .route("/api/users", web::get().to(http::list_users))
            .route("/sub/{token}/info", web::get().to(http::subscription_info))
            .route("/sub/{token}/", web::get().to(http::subscription))
            .route("/sub/{token}", web::get().to(http::subscription))
            .service(web::scope("/sandbox/marzban").configure(control::routes));
    }

    /// The next `times` `/api` requests meet `fault` — except `GET /api/admin`, which services
    /// call as a readiness probe at times of their own; fault it with
    /// [`Emulator::push_fault_on`].
    pub fn push_fault(&self, fault: Fault, times: usize) {
        self.state()
            .faults
            .extend(std::iter::repeat_n((None, fault), times));
    }

    /// The next `times` requests to `route` (one of [`route`]) meet `fault`; other routes
    /// pass by. Queued with the [`Emulator::push_fault`] ones: a request meets the first
    /// queued fault that applies to it.
    pub fn push_fault_on(&self, route: &str, fault: Fault, times: usize) {
        self.state()
            .faults
            .extend(std::iter::repeat_n((Some(route.to_owned()), fault), times));
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// While down, every panel request is answered `502 Bad Gateway`, as by a proxy in
    /// front of a stopped panel; nothing is handled. See also [`Handle::disconnect`].
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Every `/api` request (login included) waits `latency` after it arrives — it is
    /// recorded at once — before it is handled and answered, as a slow or overloaded panel
    /// does; on top of any scripted [`Fault`]. `Duration::ZERO` (the default) turns it off.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// Every admin token stops working (as after a panel restart with a fresh DB or a new
    /// secret), so the next call gets `401 Could not validate credentials`.
    pub fn revoke_tokens(&self) {
        self.state().tokens.clear();
    }

    /// Every recorded request, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().requests.clone()
    }

    /// How many requests hit `route` (one of [`route`]), whatever the answer.
    pub fn count(&self, route: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.route == route)
            .count()
    }

    /// The recorded requests of one route.
    pub fn requests_to(&self, route: &str) -> Vec<RequestRecord> {
        self.state()
            .requests
            .iter()
            .filter(|r| r.route == route)
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// A user's full stored state (names compared as [`Config::usernames`] says).
    pub fn user(&self, username: &str) -> Option<UserState> {
        let state = self.state();
        let name = state.stored(username, self.config());
        state.users.get(&name).cloned()
    }

    /// Adds a user as if the panel had it before we came (an admin or another bot made it),
    /// under exactly this spelling and with these proxies (ids kept), every inbound of each
    /// protocol, active until `expire`. Replaces a user of exactly this name.
    pub fn insert_user(
        &self,
        username: &str,
        proxies: BTreeMap<String, ProxySettings>,
        expire: Option<i64>,
    ) {
        let config = self.config().clone();
        let mut state = self.state();
        let seq = state.next_seq();
        let created_at = Utc::now().naive_utc();
        let inbounds = proxies
            .keys()
            .map(|protocol| (protocol.clone(), api::all_tags(&config, protocol)))
            .collect();
        state.users.insert(
            username.to_owned(),
            UserState {
                username: username.to_owned(),
                status: UserStatus::Active,
                expire,
                data_limit: None,
                data_limit_reset_strategy: "no_reset".to_owned(),
                used_traffic: 0,
                lifetime_used_traffic: 0,
                created_at,
                proxies,
                inbounds,
                note: None,
                on_hold_expire_duration: None,
                on_hold_timeout: None,
                auto_delete_in_days: None,
                next_plan: None,
                sub_updated_at: None,
                sub_last_user_agent: None,
                sub_revoked_at: created_at,
                seq,
            },
        );
    }

    /// Every user, in creation order.
    pub fn users(&self) -> Vec<UserState> {
        let mut users: Vec<UserState> = self.state().users.values().cloned().collect();
        users.sort_by_key(|u| u.seq);
        users
    }

    pub fn vless_id(&self, username: &str) -> Option<String> {
        self.user(username)?.vless_id().map(str::to_owned)
    }

    /// Sets a user's traffic as if Xray had reported it; the review then applies `limited`.
    pub fn set_used_traffic(&self, username: &str, bytes: i64) -> Result<(), ControlError> {
        let mut state = self.state();
        let name = state.stored(username, self.config());
        let user = state
            .users
            .get_mut(&name)
            .ok_or_else(|| ControlError::NotFound(username.to_owned()))?;
        user.lifetime_used_traffic += (bytes - user.used_traffic).max(0);
        user.used_traffic = bytes;
        state.review(Utc::now().timestamp());
        Ok(())
    }

    /// Forces a status, e.g. `limited` or `disabled`, as the panel or an admin would.
    pub fn set_status(&self, username: &str, status: UserStatus) -> Result<(), ControlError> {
        let mut state = self.state();
        let name = state.stored(username, self.config());
        let user = state
            .users
            .get_mut(&name)
            .ok_or_else(|| ControlError::NotFound(username.to_owned()))?;
        user.status = status;
        Ok(())
    }

    /// Edits a stored user by hand, as an admin in the dashboard would (drift tests).
    pub fn edit_user<F: FnOnce(&mut UserState)>(
        &self,
        username: &str,
        edit: F,
    ) -> Result<(), ControlError> {
        let mut state = self.state();
        let name = state.stored(username, self.config());
        let user = state
            .users
            .get_mut(&name)
            .ok_or_else(|| ControlError::NotFound(username.to_owned()))?;
        edit(user);
        Ok(())
    }

    /// Forgets users, tokens, faults and recorded requests.
    pub fn reset(&self) {
        *self.state() = State::default();
    }

    /// Records the request, applies the scripted fault (or the outage) and runs `handle` on
    /// the state after the review.
    async fn serve<F>(
        &self,
        req: &HttpRequest,
        route: &'static str,
        body: Option<Value>,
        handle: F,
    ) -> HttpResponse
    where
        F: FnOnce(&mut State, &Config, DateTime<Utc>) -> HttpResponse,
    {
        let api = route.contains("/api/");
        let (index, fault, down, latency) = {
            let mut state = self.state();
            let down = state.down;
            let latency = if api { state.latency } else { Duration::ZERO };
            let fault = if api && !down {
                let applies = |target: &Option<String>| match target {
                    Some(target) => target == route,
                    None => route != route::ADMIN,
                };
                state
                    .faults
                    .iter()
                    .position(|(target, _)| applies(target))
                    .and_then(|index| state.faults.remove(index))
                    .map(|(_, fault)| fault)
            } else {
                None
            };
            state.requests.push(RequestRecord {
                method: req.method().to_string(),
                route: route.to_owned(),
                path: req.path().to_owned(),
                status: None,
                fault: fault.clone(),
                body,
            });
            (state.requests.len() - 1, fault, down, latency)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let response = if down {
            HttpResponse::BadGateway()
                .content_type("text/html")
                .body("<html><body><h1>502 Bad Gateway</h1></body></html>")
        } else {
            let run = |handle: F| {
                let now = Utc::now();
                let mut state = self.state();
                state.review(now.timestamp());
                handle(&mut state, &self.shared.config, now)
            };
            match fault {
                None => run(handle),
                Some(Fault::InternalError) => internal_error(),
                Some(Fault::Status { status }) => {
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                    detail(status, status.canonical_reason().unwrap_or("Error"))
                }
                Some(Fault::InternalErrorAfterProcessing) => {
                    run(handle);
                    internal_error()
                }
                Some(Fault::Hang { delay_ms }) => {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    detail(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout")
                }
                Some(Fault::SlowAnswer { delay_ms }) => {
                    let response = run(handle);
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    response
                }
                Some(Fault::SlowWork { delay_ms }) => {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    run(handle)
                }
            }
        };
        if let Some(record) = self.state().requests.get_mut(index) {
            record.status = Some(response.status().as_u16());
        }
        response
    }
}

/// A running emulator. Dropping it stops the server. Derefs to [`Emulator`] for the control
/// API.
pub struct Handle {
    /// `http://127.0.0.1:<port>`: the panel URL (`MARZBAN_URL`).
    pub base_url: String,
    pub addr: SocketAddr,
    emulator: Emulator,
    server: Restartable,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Deref for Handle {
    type Target = Emulator;
    fn deref(&self) -> &Emulator {
        &self.emulator
    }
}

/// Starts the emulator on the current tokio runtime and returns once it is listening.
pub async fn spawn(config: Config) -> std::io::Result<Handle> {
    let bind = config.bind;
    let emulator = Emulator::new(config);
    let app_emulator = emulator.clone();
    let server = Restartable::spawn(bind, move |listen| {
        let app_emulator = app_emulator.clone();
        serve(
            "marzban",
            listen,
            app_emulator.config().workers,
            move |cfg| app_emulator.configure(cfg),
        )
    })?;
    let addr = server.addr;
    tracing::info!(%addr, "marzban emulator listening");
    Ok(Handle {
        base_url: format!("http://{addr}"),
        addr,
        emulator,
        server,
    })
}

impl Handle {
    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// Stops listening and closes the open connections, so requests fail with no answer, as
    /// with a stopped panel; the state is kept. [`Handle::reconnect`] listens again on the
    /// same port.
    pub async fn disconnect(&self) {
        self.server.disconnect().await;
    }

    /// Listens again on the same address after [`Handle::disconnect`].
    pub async fn reconnect(&self) -> std::io::Result<()> {
        self.server.reconnect()
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(self) {
        self.disconnect().await;
    }
}

/// The actix handlers: each records the request, then runs its `api` function.
mod http {
    use super::*;

    type Emu = web::Data<Emulator>;

    pub(super) async fn token(emu: Emu, req: HttpRequest, body: web::Bytes) -> HttpResponse {
        // The form carries the password: not recorded.
        emu.serve(&req, route::TOKEN, None, |state, config, now| {
            api::token(state, config, &req, &body, now)
        })
        .await
    }

    pub(super) async fn admin(emu: Emu, req: HttpRequest) -> HttpResponse {
        emu.serve(
            &req,
            route::ADMIN,
            None,
            |state, config, _| match api::refuse(state, &req) {
                None => HttpResponse::Ok().json(api::admin_json(config)),
                Some(response) => response,
            },
        )
        .await
    }

    pub(super) async fn create_user(emu: Emu, req: HttpRequest, body: web::Bytes) -> HttpResponse {
        let json = serde_json::from_slice(&body).ok();
        emu.serve(&req, route::CREATE_USER, json, |state, config, now| {
            api::create_user(state, config, &req, &body, now)
        })
        .await
    }

    pub(super) async fn get_user(
        emu: Emu,
        req: HttpRequest,
        name: web::Path<String>,
    ) -> HttpResponse {
        emu.serve(&req, route::GET_USER, None, |state, config, now| {
            api::get_user(state, config, &req, &name, now)
        })
        .await
    }

    pub(super) async fn modify_user(
        emu: Emu,
        req: HttpRequest,
        name: web::Path<String>,
        body: web::Bytes,
    ) -> HttpResponse {
        let json = serde_json::from_slice(&body).ok();
        emu.serve(&req, route::MODIFY_USER, json, |state, config, now| {
            api::modify_user(state, config, &req, &name, &body, now)
        })
        .await
    }

    pub(super) async fn delete_user(
        emu: Emu,
        req: HttpRequest,
        name: web::Path<String>,
    ) -> HttpResponse {
        emu.serve(&req, route::DELETE_USER, None, |state, config, _| {
            api::delete_user(state, config, &req, &name)
        })
        .await
    }

    pub(super) async fn reset_user(
        emu: Emu,
        req: HttpRequest,
        name: web::Path<String>,
    ) -> HttpResponse {
        emu.serve(&req, route::RESET_USER, None, |state, config, now| {
            api::reset_user(state, config, &req, &name, now)
        })
        .await
    }

    pub(super) async fn revoke_sub(
        emu: Emu,
        req: HttpRequest,
        name: web::Path<String>,
    ) -> HttpResponse {
        emu.serve(&req, route::REVOKE_SUB, None, |state, config, now| {
            api::revoke_sub(state, config, &req, &name, now)
        })
        .await
    }

    pub(super) async fn list_users(emu: Emu, req: HttpRequest) -> HttpResponse {
        emu.serve(&req, route::LIST_USERS, None, |state, config, now| {
            api::list_users(state, config, &req, now)
        })
        .await
    }

    pub(super) async fn subscription(
        emu: Emu,
        req: HttpRequest,
        token: web::Path<String>,
    ) -> HttpResponse {
        emu.serve(&req, route::SUBSCRIPTION, None, |state, config, now| {
            api::subscription(state, config, &req, &token, now)
        })
        .await
    }

    pub(super) async fn subscription_info(
        emu: Emu,
        req: HttpRequest,
        token: web::Path<String>,
    ) -> HttpResponse {
        emu.serve(
            &req,
            route::SUBSCRIPTION_INFO,
            None,
            |state, config, now| api::subscription_info(state, config, &token, now),
        )
        .await
    }
}

/// The panel's behaviour, on the locked state.
mod api {
    use super::*;

    const STRATEGIES: [&str; 5] = ["no_reset", "day", "week", "month", "year"];
    const SS_METHODS: [&str; 3] = ["aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305"];
    const VLESS_FLOWS: [&str; 2] = ["", "xtls-rprx-vision"];

    type Inbounds = BTreeMap<String, Vec<String>>;

    // ---- auth -------------------------------------------------------------------------------

    pub(super) fn token(
        state: &mut State,
        config: &Config,
        req: &HttpRequest,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> HttpResponse {
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        // OAuth2PasswordRequestForm reads form fields only: a JSON body leaves them missing.
        // (FastAPI also takes multipart forms; nobody sends those to this endpoint.)
        let form = if is_form {
            crate::form::parse(&String::from_utf8_lossy(body))
        } else {
            Vec::new()
        };
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mut errors = Errors::default();
        let username = field("username");
        let password = field("password");
        if username.is_none() {
            errors.add("username", "Field required");
        }
        if password.is_none() {
            errors.add("password", "Field required");
        }
        if field("grant_type").is_some_and(|g| g != "password") {
            errors.add("grant_type", "String should match pattern '^password$'");
        }
        if !errors.is_empty() {
            return errors.into_response();
        }
        if username != Some(config.admin_username.as_str())
            || password != Some(config.admin_password.as_str())
        {
            return unauthorized("Incorrect username or password");
        }
        let iat = now.timestamp();
        let ttl = i64::try_from(config.token_ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = json!({"sub": config.admin_username, "access": "sudo", "iat": iat, "exp": iat.saturating_add(ttl)});
        // Shaped like Marzban's HS256 JWT; validity is whether we issued it and still honour it.
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(Uuid::new_v4().as_bytes()),
        );
        state
            .tokens
            .insert(token.clone(), Instant::now() + config.token_ttl);
        HttpResponse::Ok().json(json!({"access_token": token, "token_type": "bearer"}))
    }

    /// The 401 for a request without a valid bearer token.
    pub(super) fn refuse(state: &State, req: &HttpRequest) -> Option<HttpResponse> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let Some(token) = token else {
            return Some(unauthorized("Not authenticated"));
        };
        match state.tokens.get(token) {
            Some(expires) if *expires > Instant::now() => None,
            _ => Some(unauthorized("Could not validate credentials")),
        }
    }

    fn unauthorized(message: &str) -> HttpResponse {
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({"detail": message}))
    }

    pub(super) fn admin_json(config: &Config) -> Value {
        json!({
            "username": config.admin_username,
            "is_sudo": true,
            "telegram_id": null,
            "discord_webhook": null,
            "users_usage": null,
        })
    }

    // ---- users ------------------------------------------------------------------------------

    pub(super) fn create_user(
        state: &mut State,
        config: &Config,
        req: &HttpRequest,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> HttpResponse {
        if let Some(response) = refuse(state, req) {
            return response;
        }
        let obj = match parse_object(body) {
            Ok(obj) => obj,
            Err(errors) => return errors.into_response(),
        };
        let mut errors = Errors::default();
        let proxies = obj.get("proxies").map(|v| match v {
            Value::Null => {
                errors.add("proxies", "Input should be a valid dictionary");
                None
            }
            v => check_proxies(v, &mut errors),
        });
        if let Some(Some(proxies)) = &proxies
            && proxies.is_empty()
        {
            errors.add("proxies", "Value error, Each user needs at least one proxy");
        }
        let expire = opt_int(&obj, "expire", &mut errors).filter(|e| *e != 0);
        let data_limit = data_limit(&obj, &mut errors).filter(|d| *d != 0);
        let strategy = opt_choice(&obj, "data_limit_reset_strategy", &STRATEGIES, &mut errors);
        // Only validated when sent: without `inbounds` the user ends up with none (§4b).
        let inbounds = match obj.get("inbounds") {
            None => Inbounds::new(),
            // Without valid proxies pydantic's validator sees none, and keeps no protocol.
            Some(value) => create_inbounds(
                value,
                proxies.as_ref().and_then(Option::as_ref),
                config,
                &mut errors,
            ),
        };
        let note = note(&obj, &mut errors);
        let on_hold_expire_duration =
            opt_int(&obj, "on_hold_expire_duration", &mut errors).filter(|d| *d != 0);
        let on_hold_timeout = opt_str(&obj, "on_hold_timeout", &mut errors);
        let auto_delete_in_days = opt_int(&obj, "auto_delete_in_days", &mut errors);
        let next_plan = next_plan(&obj, &mut errors);
        let username = match obj.get("username") {
            None => {
                errors.add("username", "Field required");
                None
            }
            Some(Value::String(name)) if valid_username(name) => Some(name.clone()),
            Some(Value::String(_)) => {
                errors.add(
                    "username",
                    "Value error, Username only can be 3 to 32 characters and contain a-z, 0-9, and underscores in between.",
                );
                None
            }
            Some(_) => {
                errors.add("username", "Input should be a valid string");
                None
            }
        };
        let status =
            match opt_choice(&obj, "status", &["active", "on_hold"], &mut errors).as_deref() {
                Some("on_hold") => {
                    on_hold_rules(on_hold_expire_duration, expire, &mut errors);
                    UserStatus::OnHold
                }
                _ => UserStatus::Active,
            };
        let (Some(username), true) = (username, errors.is_empty()) else {
            return errors.into_response();
        };
        let proxies = proxies.flatten();
        if let Some(response) = proxies.as_ref().and_then(|p| disabled_protocol(p, config)) {
            return response;
        }
        if state.resolve(&username, config.usernames).is_some() {
            return detail(StatusCode::CONFLICT, "User already exists");
        }
        let Some(proxies) = proxies else {
            // The real panel answers 500 here *and* stores a row without proxies, whose GET then
            // answers 500 until it is deleted (§4b). We answer the 500 but store nothing: a
            // client that never omits `proxies` cannot tell the difference.
            return internal_error();
        };
        let seq = state.next_seq();
        let created_at = now.naive_utc();
        let user = UserState {
            username: username.clone(),
            status,
            expire,
            data_limit,
            data_limit_reset_strategy: strategy.unwrap_or_else(|| "no_reset".to_owned()),
            used_traffic: 0,
            lifetime_used_traffic: 0,
            created_at,
            proxies,
            inbounds,
            note,
            on_hold_expire_duration,
            on_hold_timeout,
            auto_delete_in_days,
            next_plan,
            sub_updated_at: None,
            sub_last_user_agent: None,
            sub_revoked_at: created_at,
            seq,
        };
        state.users.insert(username.clone(), user);
        user_response(state, config, &username, now)
    }

    pub(super) fn get_user(
        state: &mut State,
        config: &Config,
        req: &HttpRequest,
        name: &str,
        now: DateTime<Utc>,
    ) -> HttpResponse {
        if let Some(response) = refuse(state, req) {
            return response;
        }
        let name = state.stored(name, config);
        user_response(state, config, &name, now)
    }

    pub(super) fn modify_user(
        state: &mut State,
        config: &Config,
        req: &HttpRequest,
        name: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> HttpResponse {
        if let Some(response) = refuse(state, req) {
            return response;
        }
        let name = &state.stored(name, config);
        if !state.users.contains_key(name) {
            return user_not_found();
        }
        let obj = match parse_object(body) {
            Ok(obj) => obj,
            Err(errors) => return errors.into_response(),
        };
        let mut errors = Errors::default();
        let proxies = match obj.get("proxies") {
            None | Some(Value::Null) => None,
            Some(value) => check_proxies(value, &mut errors),
        };
        let expire = opt_int(&obj, "expire", &mut errors);
        let data_limit = data_limit(&obj, &mut errors);
        let strategy = opt_choice(&obj, "data_limit_reset_strategy", &STRATEGIES, &mut errors);
        let inbounds = match obj.get("inbounds") {
            None | Some(Value::Null) => None,
            Some(value) => inbound_map(value, &mut errors).inspect(|given| {
                for tag in given.values().flatten() {
                    if !config.inbounds.iter().any(|i| &i.tag == tag) {
                        errors.add(
                            "inbounds",
                            format!("Value error, Inbound {tag} doesn't exist"),
                        );
                    }
                }
            }),
        };
        let note = note(&obj, &mut errors);
        let on_hold_expire_duration = opt_int(&obj, "on_hold_expire_duration", &mut errors);
        let on_hold_timeout = opt_str(&obj, "on_hold_timeout", &mut errors);
        let auto_delete_in_days = opt_int(&obj, "auto_delete_in_days", &mut errors);
        let next_plan = next_plan(&obj, &mut errors);
        let status = opt_choice(
            &obj,
            "status",
            &["active", "disabled", "on_hold"],
            &mut errors,
        )
        .and_then(|s| UserStatus::parse(&s));
        if status == Some(UserStatus::OnHold) {
            on_hold_rules(
                on_hold_expire_duration.filter(|d| *d != 0),
                expire.filter(|e| *e != 0),
                &mut errors,
            );
        }
        if !errors.is_empty() {
            return errors.into_response();
        }
        if let Some(response) = proxies.as_ref().and_then(|p| disabled_protocol(p, config)) {
            return response;
        }
        let Some(user) = state.users.get_mut(name) else {
            return user_not_found();
        };
        // An empty `proxies` changes nothing. Otherwise the sent protocols get the sent
        // settings — a fresh UUID unless `id` is among them, which is why a client must never
        // send `proxies` to extend a user — and the other protocols are deleted.
        if let Some(proxies) = proxies.filter(|p| !p.is_empty()) {
            user.inbounds
                .retain(|protocol, _| proxies.contains_key(protocol));
            for protocol in proxies.keys() {
                if !user.proxies.contains_key(protocol) {
                    user.inbounds
                        .insert(protocol.clone(), all_tags(config, protocol));
                }
            }
            user.proxies = proxies;
        }
        for (protocol, tags) in inbounds.unwrap_or_default() {
            if user.proxies.contains_key(&protocol) {
                user.inbounds.insert(protocol, tags);
            }
        }
        // The order and conditions follow Marzban's crud.update_user: an explicit status first,
        // then `data_limit` (revives `limited`), then `expire` (revives only active/expired).
        if let Some(status) = status {
            user.status = status;
        }
        if let Some(limit) = data_limit {
            user.data_limit = (limit != 0).then_some(limit);
            if !matches!(user.status, UserStatus::Expired | UserStatus::Disabled) {
                if user.data_limit.is_none_or(|l| user.used_traffic < l) {
                    if user.status != UserStatus::OnHold {
                        user.status = UserStatus::Active;
                    }
                } else {
                    user.status = UserStatus::Limited;
                }
            }
        }
        if let Some(expire) = expire {
            user.expire = (expire != 0).then_some(expire);
            if matches!(user.status, UserStatus::Active | UserStatus::Expired) {
                user.status = if user.expire.is_none_or(|e| e > now.timestamp()) {
                    UserStatus::Active
                } else {
                    UserStatus::Expired
                };
            }
        }
        if let Some(strategy) = strategy {
            user.data_limit_reset_strategy = strategy;
        }
        if note.is_some() {
            user.note = note;
        }
        if let Some(duration) = on_hold_expire_duration {
            user.on_hold_expire_duration = (duration != 0).then_some(duration);
        }
        if on_hold_timeout.is_some() {
            user.on_hold_timeout = on_hold_timeout;
        }
        if auto_delete_in_days.is_some() {
            user.auto_delete_in_days = auto_delete_in_days;
        }
        // Marzban deletes the next plan when a modify omits it (§4b).
        user.next_plan = next_plan;
        user_response(state, config, name, now)
    }

    pub(super) fn delete_user(
        state: &mut State,
        config: &Config,
        req: &HttpRequest,
        name: &str,
    ) -> HttpResponse {
        if let Some(response) = refuse(state, req) {
            return response;
        }
        let name = state.stored(name, config);
        match state.users.remove(&name) {
            Some(_) => detail(StatusCode::OK, "User successfully deleted"),
            None => user_not_found(),
        }
    }

    pub(super) fn reset_user(
        state: &mut State,
        config: &Config,
        req: &HttpRequest,
        name: &str,
        now: DateTime<Utc>,
    ) -> HttpResponse {
        if let Some(response) = refuse(state, req) {
            return response;
        }
        let name = &state.stored(name, config);
        let Some(user) = state.users.get_mut(name) else {
            return user_not_found();
        };
        user.used_traffic = 0;
        // Marzban means "unless expired or disabled" but its check only excludes `expired`,
        // so a disabled user comes back too (§4).
        if user.status != UserStatus::Expired {
            user.status = UserStatus::Active;
        }
        user.next_plan = None;
        user_response(state, config, name, now)
    }

    pub(super) fn revoke_sub(
        state: &mut State,
        config: &Config,
        req: &HttpRequest,
        name: &str,
        now: DateTime<Utc>,
    ) -> HttpResponse {
        if let Some(response) = refuse(state, req) {
            return response;
        }
        let name = &state.stored(name, config);
        let Some(user) = state.users.get_mut(name) else {
            return user_not_found();
        };
        user.revoke_sub(now);
        user_response(state, config, name, now)
    }

    pub(super) fn list_users(
        state: &mut State,
        config: &Config,
        req: &HttpRequest,
        now: DateTime<Utc>,
    ) -> HttpResponse {
        if let Some(response) = refuse(state, req) {
            return response;
        }
        let query = crate::form::parse(req.query_string());
        let mut errors = Errors::default();
        let mut number = |name: &str| {
            let value = query.iter().rev().find(|(k, _)| k == name)?;
            match value.1.parse::<usize>() {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.add(
                        name,
                        "Input should be a valid integer, unable to parse string as an integer",
                    );
                    None
                }
            }
        };
        let offset = number("offset").unwrap_or(0);
        let limit = number("limit");
        let params = |name: &str| -> Vec<&str> {
            query
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let usernames = params("username");
        // SQLAlchemy's `ilike(f"%{search}%")`: `_` and `%` in the search are wildcards.
        let search = params("search").last().map(|s| format!("%{s}%"));
        let status = match params("status").last() {
            None => None,
            Some(s) => match UserStatus::parse(s) {
                Some(status) => Some(status),
                None => {
                    errors.add(
                        "status",
                        choices_message(&["active", "disabled", "limited", "expired", "on_hold"]),
                    );
                    None
                }
            },
        };
        if !errors.is_empty() {
            return errors.into_response();
        }
        let mut sort = Vec::new();
        for option in params("sort").iter().flat_map(|s| s.split(',')) {
            let (key, descending) = match option.strip_prefix('-') {
                Some(key) => (key, true),
                None => (option, false),
            };
            if ![
                "username",
                "used_traffic",
                "data_limit",
                "expire",
                "created_at",
            ]
            .contains(&key)
            {
                return detail(
                    StatusCode::BAD_REQUEST,
                    &format!("\"{option}\" is not a valid sort option"),
                );
            }
            sort.push((key, descending));
        }
        let mut users: Vec<&UserState> = state
            .users
            .values()
            .filter(|u| {
                usernames.is_empty()
                    || usernames.iter().any(|name| match config.usernames {
                        Usernames::CaseSensitive => u.username == *name,
                        Usernames::CaseInsensitive => u.username.eq_ignore_ascii_case(name),
                    })
            })
            .filter(|u| {
                search.as_ref().is_none_or(|s| {
                    ilike(&u.username, s) || u.note.as_ref().is_some_and(|n| ilike(n, s))
                })
            })
            .filter(|u| status.is_none_or(|s| u.status == s))
            .collect();
        users.sort_by(|a, b| {
            sort.iter()
                .map(|(key, descending)| {
                    let order = match *key {
                        "username" => a.username.cmp(&b.username),
                        "used_traffic" => a.used_traffic.cmp(&b.used_traffic),
                        "data_limit" => a.data_limit.cmp(&b.data_limit),
                        "expire" => a.expire.cmp(&b.expire),
                        _ => a.created_at.cmp(&b.created_at),
                    };
                    if *descending { order.reverse() } else { order }
                })
                .find(|o| o.is_ne())
                .unwrap_or_else(|| a.seq.cmp(&b.seq))
        });
        let total = users.len();
        let names: Vec<String> = users
            .into_iter()
            .skip(offset)
            .take(limit.unwrap_or(usize::MAX))
            .map(|u| u.username.clone())
            .collect();
        let rendered: Vec<Value> = names
            .iter()
            .filter_map(|name| render(state, config, name, now))
            .collect();
        HttpResponse::Ok().json(json!({"users": rendered, "total": total}))
    }

    // ---- subscription -----------------------------------------------------------------------

    pub(super) fn subscription(
        state: &mut State,
        config: &Config,
        req: &HttpRequest,
        token: &str,
        now: DateTime<Utc>,
    ) -> HttpResponse {
        let Some(user) = subscription_user(state, token) else {
            return detail(StatusCode::NOT_FOUND, "Not Found");
        };
        user.sub_updated_at = Some(now.naive_utc());
        user.sub_last_user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let userinfo = format!(
            "upload=0; download={}; total={}; expire={}",
            user.used_traffic,
            user.data_limit.unwrap_or(0),
            user.expire.unwrap_or(0)
        );
        let body = STANDARD.encode(links(user, config).join("\n"));
        HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .insert_header(("subscription-userinfo", userinfo))
            .insert_header(("profile-update-interval", "12"))
            .insert_header((
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", user.username),
            ))
            .body(body)
    }

    pub(super) fn subscription_info(
        state: &mut State,
        config: &Config,
        token: &str,
        now: DateTime<Utc>,
    ) -> HttpResponse {
        let Some(name) = subscription_user(state, token).map(|u| u.username.clone()) else {
            return detail(StatusCode::NOT_FOUND, "Not Found");
        };
        user_response(state, config, &name, now)
    }

    /// The user a subscription token names, unless the token predates a `revoke_sub`.
    fn subscription_user<'a>(state: &'a mut State, token: &str) -> Option<&'a mut UserState> {
        let decoded = URL_SAFE_NO_PAD.decode(token).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let mut parts = decoded.split(',');
        let (name, issued) = (parts.next()?, parts.next()?.parse::<i64>().ok()?);
        let user = state.users.get_mut(name)?;
        (issued >= user.sub_revoked_at.and_utc().timestamp_micros()).then_some(user)
    }

    /// Marzban's token embeds the username and the issue time (and a signature), so it
    /// differs between responses while old ones stay valid; the sequence number makes it
    /// differ here even within one microsecond.
    fn subscription_token(username: &str, at: DateTime<Utc>, seq: u64) -> String {
        URL_SAFE_NO_PAD.encode(format!("{username},{},{seq}", at.timestamp_micros()))
    }

    // ---- rendering --------------------------------------------------------------------------

    fn user_response(
        state: &mut State,
        config: &Config,
        name: &str,
        now: DateTime<Utc>,
    ) -> HttpResponse {
        match render(state, config, name, now) {
            Some(body) => HttpResponse::Ok().json(body),
            None => user_not_found(),
        }
    }

    /// `UserResponse` (§4), with a fresh subscription URL.
    fn render(state: &mut State, config: &Config, name: &str, now: DateTime<Utc>) -> Option<Value> {
        let seq = state.next_seq();
        let user = state.users.get(name)?;
        let path = format!("/sub/{}", subscription_token(name, now, seq));
        let subscription_url = match &config.subscription_url_prefix {
            Some(prefix) => format!("{}{path}", prefix.trim_end_matches('/')),
            None => path,
        };
        let mut inbounds = Map::new();
        let mut excluded = Map::new();
        for protocol in user.proxies.keys() {
            let selected = user.inbounds.get(protocol).cloned().unwrap_or_default();
            let others: Vec<String> = all_tags(config, protocol)
                .into_iter()
                .filter(|tag| !selected.contains(tag))
                .collect();
            inbounds.insert(protocol.clone(), json!(selected));
            excluded.insert(protocol.clone(), json!(others));
        }
        Some(json!({
            "username": user.username,
            "status": user.status.as_str(),
            "used_traffic": user.used_traffic,
            "lifetime_used_traffic": user.lifetime_used_traffic,
            "created_at": naive(user.created_at),
            "expire": user.expire,
            "data_limit": user.data_limit,
            "data_limit_reset_strategy": user.data_limit_reset_strategy,
            "proxies": user.proxies,
            "inbounds": inbounds,
            "excluded_inbounds": excluded,
            "note": user.note,
            "sub_updated_at": user.sub_updated_at.map(naive),
            "sub_last_user_agent": user.sub_last_user_agent,
            "online_at": null,
            "on_hold_expire_duration": user.on_hold_expire_duration,
            "on_hold_timeout": user.on_hold_timeout,
            "auto_delete_in_days": user.auto_delete_in_days,
            "next_plan": user.next_plan,
            "links": links(user, config),
            "subscription_url": subscription_url,
            "admin": admin_json(config),
        }))
    }

    fn naive(at: NaiveDateTime) -> String {
        at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
    }

    /// One share link per selected inbound (a user without inbounds has none).
    fn links(user: &UserState, config: &Config) -> Vec<String> {
        let host = &config.link_host;
        let mut links = Vec::new();
        for (protocol, settings) in &user.proxies {
            let setting = |key: &str| settings.get(key).and_then(Value::as_str).unwrap_or("");
            for tag in user.inbounds.get(protocol).into_iter().flatten() {
                let remark = percent_encode(&format!("{tag} ({})", user.username));
                links.push(match protocol.as_str() {
                    "vless" => format!(
                        "vless://{}@{host}:443?security=reality&type=tcp&flow={}#{remark}",
                        setting("id"),
                        setting("flow")
                    ),
                    "vmess" => {
                        let config = json!({"v": "2", "ps": remark, "add": host, "port": "443",
                            "id": setting("id"), "aid": "0", "net": "tcp", "type": "none", "tls": "none"});
                        format!("vmess://{}", STANDARD.encode(config.to_string()))
                    }
                    "trojan" => format!(
                        "trojan://{}@{host}:443?security=tls&type=tcp#{remark}",
                        setting("password")
                    ),
                    _ => format!(
                        "ss://{}@{host}:443#{remark}",
                        STANDARD.encode(format!("{}:{}", setting("method"), setting("password")))
                    ),
                });
            }
        }
        links
    }

    fn percent_encode(s: &str) -> String {
        let mut out = String::new();
        for byte in s.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                out.push(char::from(byte));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }

    // ---- validation -------------------------------------------------------------------------

    /// Marzban's 422 body: `{"detail": {"<field>": "<message>"}}`, keyed by the last element
    /// of pydantic's `loc` (so a later error on the same field replaces an earlier one).
    #[derive(Default)]
    struct Errors(Map<String, Value>);

    impl Errors {
        fn add(&mut self, field: &str, message: impl Into<String>) {
            self.0
                .insert(field.to_owned(), Value::String(message.into()));
        }

        fn is_empty(&self) -> bool {
            self.0.is_empty()
        }

        fn into_response(self) -> HttpResponse {
            HttpResponse::UnprocessableEntity().json(json!({"detail": self.0}))
        }
    }

    fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Errors> {
        let mut errors = Errors::default();
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(obj)) => return Ok(obj),
            Ok(_) => errors.add(
                "body",
                "Input should be a valid dictionary or object to extract fields from",
            ),
            Err(_) if body.iter().all(u8::is_ascii_whitespace) => {
                errors.add("body", "Field required")
            }
            Err(_) => errors.add("body", "JSON decode error"),
        }
        Err(errors)
    }

    /// Pydantic's lax `int`: integers, integral floats and numeric strings pass.
    fn lax_int(value: &Value) -> Result<i64, &'static str> {
        const INVALID: &str = "Input should be a valid integer";
        match value {
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Ok(i),
                (None, Some(f)) if f.fract() != 0.0 => {
                    Err("Input should be a valid integer, got a number with a fractional part")
                }
                // Integral and within i64 (the bound is exactly representable as f64).
                (None, Some(f)) if f.abs() < 9_223_372_036_854_775_807.0 => Ok(f as i64),
                _ => Err(INVALID),
            },
            Value::String(s) => s.trim().parse::<i64>().map_err(
                |_| "Input should be a valid integer, unable to parse string as an integer",
            ),
            Value::Bool(b) => Ok(i64::from(*b)),
            _ => Err(INVALID),
        }
    }

    /// An optional integer field: absent or null → `None`.
    fn opt_int(obj: &Map<String, Value>, field: &str, errors: &mut Errors) -> Option<i64> {
        match obj.get(field) {
            None | Some(Value::Null) => None,
            Some(value) => lax_int(value).map_err(|m| errors.add(field, m)).ok(),
        }
    }

    /// `data_limit`: like `expire`, but never a string and never negative.
    fn data_limit(obj: &Map<String, Value>, errors: &mut Errors) -> Option<i64> {
        match obj.get("data_limit") {
            None | Some(Value::Null) => None,
            Some(Value::String(_)) => {
                errors.add(
                    "data_limit",
                    "Value error, data_limit must be an integer or a float, not a string",
                );
                None
            }
            Some(value) => match lax_int(value) {
                Ok(limit) if limit < 0 => {
                    errors.add("data_limit", "Input should be greater than or equal to 0");
                    None
                }
                Ok(limit) => Some(limit),
                Err(message) => {
                    errors.add("data_limit", message);
                    None
                }
            },
        }
    }

    fn opt_str(obj: &Map<String, Value>, field: &str, errors: &mut Errors) -> Option<String> {
        match obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.add(field, "Input should be a valid string");
                None
            }
        }
    }

    fn opt_choice(
        obj: &Map<String, Value>,
        field: &str,
        choices: &[&str],
        errors: &mut Errors,
    ) -> Option<String> {
        let value = opt_str(obj, field, errors)?;
        if choices.contains(&value.as_str()) {
            Some(value)
        } else {
            errors.add(field, choices_message(choices));
            None
        }
    }

    /// Pydantic's enum message: `Input should be 'a', 'b' or 'c'`.
    fn choices_message(choices: &[&str]) -> String {
        let quoted: Vec<String> = choices.iter().map(|c| format!("'{c}'")).collect();
        match quoted.split_last() {
            Some((last, rest)) if !rest.is_empty() => {
                format!("Input should be {} or {last}", rest.join(", "))
            }
            _ => format!("Input should be {}", quoted.join("")),
        }
    }

    fn note(obj: &Map<String, Value>, errors: &mut Errors) -> Option<String> {
        let note = opt_str(obj, "note", errors)?;
        if note.chars().count() > 500 {
            errors.add(
                "note",
                "Value error, User's note can be a maximum of 500 character",
            );
            return None;
        }
        Some(note)
    }

    fn next_plan(obj: &Map<String, Value>, errors: &mut Errors) -> Option<Value> {
        match obj.get("next_plan") {
            None | Some(Value::Null) => None,
            Some(Value::Object(plan)) => Some(json!({
                "data_limit": plan.get("data_limit").cloned().unwrap_or(Value::Null),
                "expire": plan.get("expire").cloned().unwrap_or(Value::Null),
                "add_remaining_traffic": plan.get("add_remaining_traffic").cloned().unwrap_or(json!(false)),
                "fire_on_either": plan.get("fire_on_either").cloned().unwrap_or(json!(true)),
            })),
            Some(_) => {
                errors.add(
                    "next_plan",
                    "Input should be a valid dictionary or instance of NextPlanModel",
                );
                None
            }
        }
    }

    fn on_hold_rules(duration: Option<i64>, expire: Option<i64>, errors: &mut Errors) {
        if duration.is_none() {
            errors.add(
                "status",
                "Value error, User cannot be on hold without a valid on_hold_expire_duration.",
            );
        } else if expire.is_some() {
            errors.add(
                "status",
                "Value error, User cannot be on hold with specified expire.",
            );
        }
    }

    /// Marzban's `^(?=\w{3,32}\b)[a-zA-Z0-9-_@.]+(?:_[a-zA-Z0-9-_@.]+)*$`: a leading run of 3
    /// to 32 word characters, then only `[a-zA-Z0-9-_@.]`. Case is kept: `abc` and `ABC` are
    /// two users.
    pub(super) fn valid_username(name: &str) -> bool {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let lead = name.chars().take_while(|c| word(*c)).count();
        (3..=32).contains(&lead)
            && name
                .chars()
                .all(|c| word(c) || matches!(c, '-' | '@' | '.'))
    }

    /// `proxies` with each protocol's settings filled in as Marzban does (new UUID unless
    /// `id` is given, default flow, generated passwords).
    fn check_proxies(
        value: &Value,
        errors: &mut Errors,
    ) -> Option<BTreeMap<String, ProxySettings>> {
        let Value::Object(given) = value else {
            errors.add("proxies", "Input should be a valid dictionary");
            return None;
        };
        let mut proxies = BTreeMap::new();
        for (protocol, settings) in given {
            if !PROTOCOLS.contains(&protocol.as_str()) {
                errors.add("proxies", choices_message(&PROTOCOLS));
                continue;
            }
            if let Some(settings) = proxy_settings(protocol, settings, errors) {
                proxies.insert(protocol.clone(), settings);
            }
        }
        Some(proxies)
    }

    fn proxy_settings(protocol: &str, given: &Value, errors: &mut Errors) -> Option<ProxySettings> {
        let empty = Map::new();
        let given = match given {
            Value::Null => &empty,
            Value::Object(map) => map,
            _ => {
                errors.add(protocol, "Input should be a valid dictionary");
                return None;
            }
        };
        let mut settings = Map::new();
        let choice = |key: &str, choices: &[&str], default: &str, errors: &mut Errors| match given
            .get(key)
        {
            None | Some(Value::Null) => Some(default.to_owned()),
            Some(Value::String(v)) if choices.contains(&v.as_str()) => Some(v.clone()),
            Some(_) => {
                errors.add(key, choices_message(choices));
                None
            }
        };
        match protocol {
            "vless" | "vmess" => {
                let id = match given.get("id") {
                    None | Some(Value::Null) => Uuid::new_v4(),
                    Some(Value::String(id)) => match Uuid::parse_str(id) {
                        Ok(id) => id,
                        Err(_) => {
                            errors.add("id", "Input should be a valid UUID, invalid character");
                            return None;
                        }
                    },
                    Some(_) => {
                        errors.add("id", "UUID input should be a string, bytes or UUID object");
                        return None;
                    }
                };
                settings.insert("id".into(), Value::String(id.to_string()));
                if protocol == "vless" {
                    settings.insert(
                        "flow".into(),
                        Value::String(choice("flow", &VLESS_FLOWS, "", errors)?),
                    );
                }
            }
            "trojan" => {
                settings.insert("password".into(), Value::String(password(given)));
                settings.insert(
                    "flow".into(),
                    Value::String(choice("flow", &VLESS_FLOWS, "", errors)?),
                );
            }
            _ => {
                settings.insert("password".into(), Value::String(password(given)));
                let method = choice("method", &SS_METHODS, "chacha20-ietf-poly1305", errors)?;
                settings.insert("method".into(), Value::String(method));
            }
        }
        Some(settings)
    }

    fn password(given: &Map<String, Value>) -> String {
        match given.get("password").and_then(Value::as_str) {
            Some(password) => password.to_owned(),
            None => random_password(),
        }
    }

    pub(super) fn random_password() -> String {
        Uuid::new_v4().simple().to_string()[..22].to_owned()
    }

    /// `{protocol: [tag, …]}` as sent.
    fn inbound_map(value: &Value, errors: &mut Errors) -> Option<Inbounds> {
        let Value::Object(given) = value else {
            errors.add("inbounds", "Input should be a valid dictionary");
            return None;
        };
        let mut inbounds = Inbounds::new();
        for (protocol, tags) in given {
            if !PROTOCOLS.contains(&protocol.as_str()) {
                errors.add("inbounds", choices_message(&PROTOCOLS));
                continue;
            }
            let Some(tags) = tags.as_array() else {
                errors.add(protocol, "Input should be a valid list");
                continue;
            };
            let mut list = Vec::new();
            for tag in tags {
                match tag.as_str() {
                    Some(tag) => list.push(tag.to_owned()),
                    None => errors.add(protocol, "Input should be a valid string"),
                }
            }
            inbounds.insert(protocol.clone(), list);
        }
        Some(inbounds)
    }

    /// A create's inbounds: protocols without proxies are dropped; an empty or missing list
    /// means every inbound of the protocol; unknown tags are refused.
    fn create_inbounds(
        value: &Value,
        proxies: Option<&BTreeMap<String, ProxySettings>>,
        config: &Config,
        errors: &mut Errors,
    ) -> Inbounds {
        let Some(given) = inbound_map(value, errors) else {
            return Inbounds::new();
        };
        let mut inbounds = Inbounds::new();
        for protocol in proxies.into_iter().flat_map(|p| p.keys()) {
            let tags = match given.get(protocol).filter(|tags| !tags.is_empty()) {
                Some(tags) => {
                    for tag in tags {
                        if !config.inbounds.iter().any(|i| &i.tag == tag) {
                            errors.add(
                                "inbounds",
                                format!("Value error, Inbound {tag} doesn't exist"),
                            );
                        }
                    }
                    tags.clone()
                }
                None => all_tags(config, protocol),
            };
            inbounds.insert(protocol.clone(), tags);
        }
        inbounds
    }

    pub(super) fn all_tags(config: &Config, protocol: &str) -> Vec<String> {
        config
            .inbounds
            .iter()
            .filter(|i| i.protocol == protocol)
            .map(|i| i.tag.clone())
            .collect()
    }

    /// 400 for a protocol the server has no inbound of.
    fn disabled_protocol(
        proxies: &BTreeMap<String, ProxySettings>,
        config: &Config,
    ) -> Option<HttpResponse> {
        let protocol = proxies
            .keys()
            .find(|p| !config.inbounds.iter().any(|i| &i.protocol == *p))?;
        Some(detail(
            StatusCode::BAD_REQUEST,
            &format!("Protocol {protocol} is disabled on your server"),
        ))
    }

    fn user_not_found() -> HttpResponse {
        detail(StatusCode::NOT_FOUND, "User not found")
    }
}

/// SQL `ILIKE`: `%` matches any run of characters, `_` any one; case-insensitive.
fn ilike(text: &str, pattern: &str) -> bool {
    let text: Vec<char> = text.to_lowercase().chars().collect();
    let pattern: Vec<char> = pattern.to_lowercase().chars().collect();
    // matches[j]: the text read so far matches pattern[..j].
    let mut matches = vec![false; pattern.len() + 1];
    matches[0] = true;
    for j in 1..=pattern.len() {
        matches[j] = matches[j - 1] && pattern[j - 1] == '%';
    }
    for c in text {
        let mut next = vec![false; pattern.len() + 1];
        for j in 1..=pattern.len() {
            next[j] = match pattern[j - 1] {
                '%' => next[j - 1] || matches[j],
                '_' => matches[j - 1],
                p => matches[j - 1] && p == c,
            };
        }
        matches = next;
    }
    matches[pattern.len()]
}

fn detail(status: StatusCode, text: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"detail": text}))
}

fn internal_error() -> HttpResponse {
    HttpResponse::InternalServerError()
        .content_type("text/plain; charset=utf-8")
        .body("Internal Server Error")
}

/// The control API under `/sandbox/marzban/` (for demos and out-of-process tests; in-process
/// tests call [`Emulator`]'s methods).
mod control {
    use super::*;

    pub(super) fn routes(cfg: &mut web::ServiceConfig) {
        cfg.route("/faults", web::post().to(push_fault))
            .route("/faults", web::delete().to(clear_faults))
            .route("/down", web::put().to(set_down))
            .route("/latency", web::put().to(set_latency))
            .route("/revoke-tokens", web::post().to(revoke_tokens))
            .route("/requests", web::get().to(requests))
            .route("/users", web::get().to(users))
            .route("/users/{username}", web::get().to(user))
            .route("/users/{username}/traffic", web::put().to(set_traffic))
            .route("/users/{username}/status", web::put().to(set_status))
            .route("/reset", web::post().to(reset));
    }

    type Emu = web::Data<Emulator>;

    #[derive(Deserialize)]
    struct FaultRequest {
        fault: Fault,
        #[serde(default = "one")]
        times: usize,
        /// Only requests to this route (one of [`route`]) meet it.
        #[serde(default)]
        route: Option<String>,
    }

    fn one() -> usize {
        1
    }

    async fn push_fault(emu: Emu, body: web::Json<FaultRequest>) -> HttpResponse {
        let FaultRequest {
            fault,
            times,
            route,
        } = body.into_inner();
        match route {
            Some(route) => emu.push_fault_on(&route, fault, times),
            None => emu.push_fault(fault, times),
        }
        HttpResponse::NoContent().finish()
    }

    async fn clear_faults(emu: Emu) -> HttpResponse {
        emu.clear_faults();
        HttpResponse::NoContent().finish()
    }

    #[derive(Deserialize)]
    struct Down {
        down: bool,
    }

    async fn set_down(emu: Emu, body: web::Json<Down>) -> HttpResponse {
        emu.set_down(body.down);
        HttpResponse::NoContent().finish()
    }

    #[derive(Deserialize)]
    struct Latency {
        latency_ms: u64,
    }

    async fn set_latency(emu: Emu, body: web::Json<Latency>) -> HttpResponse {
        emu.set_latency(Duration::from_millis(body.latency_ms));
        HttpResponse::NoContent().finish()
    }

    async fn revoke_tokens(emu: Emu) -> HttpResponse {
        emu.revoke_tokens();
        HttpResponse::NoContent().finish()
    }

    async fn requests(emu: Emu) -> HttpResponse {
        HttpResponse::Ok().json(emu.requests())
    }

    async fn users(emu: Emu) -> HttpResponse {
        HttpResponse::Ok().json(emu.users())
    }

    async fn user(emu: Emu, name: web::Path<String>) -> HttpResponse {
        match emu.user(&name) {
            Some(user) => HttpResponse::Ok().json(user),
            None => detail(StatusCode::NOT_FOUND, "User not found"),
        }
    }

    #[derive(Deserialize)]
    struct Traffic {
        used_traffic: i64,
    }

    async fn set_traffic(
        emu: Emu,
        name: web::Path<String>,
        body: web::Json<Traffic>,
    ) -> HttpResponse {
        control_result(emu.set_used_traffic(&name, body.used_traffic))
    }

    #[derive(Deserialize)]
    struct Status {
        status: UserStatus,
    }

    async fn set_status(
        emu: Emu,
        name: web::Path<String>,
        body: web::Json<Status>,
    ) -> HttpResponse {
        control_result(emu.set_status(&name, body.status))
    }

    async fn reset(emu: Emu) -> HttpResponse {
        emu.reset();
        HttpResponse::NoContent().finish()
    }

    fn control_result(result: Result<(), ControlError>) -> HttpResponse {
        match result {
            Ok(()) => HttpResponse::NoContent().finish(),
            Err(error) => detail(StatusCode::NOT_FOUND, &error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::api::valid_username;
    use super::ilike;

    #[test]
    fn search_is_sql_ilike() {
        assert!(ilike("TG_900004", "%tg_900004%"));
        assert!(ilike("tgx900004", "%tg_900004%"), "_ is any one character");
        assert!(ilike("old tg_1 user", "%TG_1%"));
        assert!(!ilike("tg_90000", "%tg_900004%"));
        assert!(ilike("anything", "%%"));
        assert!(!ilike("", "%_%"));
    }

    #[test]
    fn usernames_follow_marzbans_regex() {
        for ok in [
            "abc",
            "tg_123",
            "ABC",
            "user.name",
            "abc@x",
            "a_b-c",
            &"a".repeat(32),
        ] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in [
            "ab",
            "",
            "-abc",
            ".abc",
            "ab-cd",
            "abc def",
            "abc!",
            &"a".repeat(33),
            "абв",
        ] {
            assert!(!valid_username(bad), "{bad}");
        }
    }
}
