//! What the PasarGuard and Remnawave emulators share: one [`Emulator`] over each panel's own
//! [`PanelState`] (settings, users, routes, auth), the scripted faults, the outage and the
//! latency of the Marzban emulator ([`Gate`], with [`crate::marzban::Fault`]), the recorded
//! requests, the generic control API under `/sandbox/<panel>/` and a running server that can
//! be disconnected and reconnected on the same port ([`Handle`]). Connections carry a copy of
//! their socket ([`Connection`]), so a handler can drop one with no answer, as Remnawave's
//! proxy check does.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use crate::marzban::{Fault, RequestRecord};
pub use crate::server::Connection;
use crate::server::{Restartable, serve};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler cannot leave the queue half-written in a way that matters.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct GateState {
    /// Scripted faults, each for any route (`None`) or one route.
    faults: VecDeque<(Option<String>, Fault)>,
    down: bool,
    latency: Duration,
    requests: Vec<RequestRecord>,
}

/// Faults, outage, latency and the request log of one emulated panel.
#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
}

/// How a panel answers the faults that are answers: a 500 without doing anything, and a
/// bare status.
pub struct FaultAnswers {
    pub internal_error: fn() -> HttpResponse,
    pub status: fn(StatusCode) -> HttpResponse,
}

impl Gate {
    /// The next `times` panel requests meet `fault` — except `probe`, the route services call
    /// as a readiness check at times of their own; fault it with [`Gate::push_fault_on`].
    pub fn push_fault(&self, fault: Fault, times: usize) {
        lock(&self.state)
            .faults
            .extend(std::iter::repeat_n((None, fault), times));
    }

    /// The next `times` requests to `route` meet `fault`; other routes pass by.
    pub fn push_fault_on(&self, route: &str, fault: Fault, times: usize) {
        lock(&self.state)
            .faults
            .extend(std::iter::repeat_n((Some(route.to_owned()), fault), times));
    }

    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// While down, every panel request is answered `502 Bad Gateway` with an HTML page, as by
    /// a reverse proxy in front of a stopped panel.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// Every panel request waits `latency` before it is handled.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).latency = latency;
    }

    /// Every recorded request, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.state).requests.clone()
    }

    /// How many requests hit `route`, whatever the answer.
    pub fn count(&self, route: &str) -> usize {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.route == route)
            .count()
    }

    /// The recorded requests of one route.
    pub fn requests_to(&self, route: &str) -> Vec<RequestRecord> {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.route == route)
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.state).requests.clear();
    }

    /// Forgets faults, outage, latency and requests.
    pub fn reset(&self) {
        *lock(&self.state) = GateState::default();
    }

    /// Records the request, applies the outage or the next scripted fault that applies, and
    /// runs `handle` (the panel's work and answer) when the fault lets it.
    pub async fn serve(
        &self,
        req: &HttpRequest,
        route: &'static str,
        probe: &str,
        body: Option<Value>,
        answers: &FaultAnswers,
        handle: impl FnOnce() -> HttpResponse,
    ) -> HttpResponse {
        let (index, fault, down, latency) = {
            let mut state = lock(&self.state);
            let down = state.down;
            let fault = if down {
                None
            } else {
                let applies = |target: &Option<String>| match target {
                    Some(target) => target == route,
                    None => route != probe,
                };
                state
                    .faults
                    .iter()
                    .position(|(target, _)| applies(target))
                    .and_then(|index| state.faults.remove(index))
                    .map(|(_, fault)| fault)
            };
            state.requests.push(RequestRecord {
                method: req.method().to_string(),
                route: route.to_owned(),
                path: req.path().to_owned(),
                status: None,
                fault: fault.clone(),
                body,
            });
            (state.requests.len() - 1, fault, down, state.latency)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let response = if down {
            HttpResponse::BadGateway()
                .content_type("text/html")
                .body("<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>")
        } else {
            match fault {
                None => handle(),
                Some(Fault::InternalError) => (answers.internal_error)(),
                Some(Fault::Status { status }) => (answers.status)(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                ),
                Some(Fault::InternalErrorAfterProcessing) => {
                    let _ = handle();
                    (answers.internal_error)()
                }
                Some(Fault::Hang { delay_ms }) => {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    (answers.status)(StatusCode::GATEWAY_TIMEOUT)
                }
                Some(Fault::SlowAnswer { delay_ms }) => {
                    let response = handle();
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    response
                }
                Some(Fault::SlowWork { delay_ms }) => {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    handle()
                }
            }
        };
        if let Some(record) = lock(&self.state).requests.get_mut(index) {
            record.status = Some(response.status().as_u16());
        }
        response
    }
}

/// One emulated panel's own part — its settings, stored state, routes and access rules — that
/// the generic [`Emulator`] wraps with the [`Gate`], the control API and the server.
pub trait PanelState: Default + Send + 'static {
    /// For logs and the control API's scope (`/sandbox/<NAME>/`): `remnawave`, `pasarguard`.
    const NAME: &'static str;
    /// The route services call as a readiness check at times of their own, which
    /// [`Gate::push_fault`] leaves alone.
    const PROBE: &'static str;
    /// The emulator's settings.
    type Config: Send + Sync + 'static;
    /// Everything the emulator stores about a user.
    type User: Clone + Serialize;
    /// What a route needs of the caller's credentials.
    type Access;

    /// The address to listen at (port 0: a free one) and the number of workers.
    fn listen(config: &Self::Config) -> (SocketAddr, usize);
    /// Registers the panel routes; their handlers take `web::Data<Emulator<Self>>`.
    fn routes(cfg: &mut web::ServiceConfig);
    /// The answer to [`Fault::InternalError`]: a 500 without doing anything.
    fn internal_error() -> HttpResponse;
    /// The answer to a bare-status fault.
    fn fault_status(status: StatusCode) -> HttpResponse;
    /// What the panel does to a request before anything else (not recorded): `Some` is its
    /// answer. None by default.
    fn admit(_config: &Self::Config, _req: &HttpRequest) -> Option<HttpResponse> {
        None
    }
    /// `Some` refusal when the request's credentials do not grant `access`.
    fn auth(
        &self,
        config: &Self::Config,
        req: &HttpRequest,
        access: Self::Access,
    ) -> Option<HttpResponse>;
    /// The panel's scheduler: statuses that time or traffic changed, as of `now`.
    fn review(&mut self, now: DateTime<Utc>);
    /// Every stored user, in creation order.
    fn users(&self) -> Vec<Self::User>;
    /// The user `username` names, by exact name.
    fn user_mut(&mut self, username: &str) -> Option<&mut Self::User>;
    /// Sets a user's traffic as Xray would report it (the lifetime total grows by the rise).
    fn set_traffic(user: &mut Self::User, bytes: i64);
    /// Every token stops working.
    fn revoke_tokens(&mut self);
}

struct Shared<S: PanelState> {
    config: S::Config,
    state: Mutex<S>,
    gate: Gate,
}

/// An emulated panel's state and control API; cheap to clone.
pub struct Emulator<S: PanelState> {
    shared: Arc<Shared<S>>,
}

impl<S: PanelState> Clone for Emulator<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: PanelState> std::fmt::Debug for Emulator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").finish_non_exhaustive()
    }
}

/// Starts the emulator of `S` on the current tokio runtime, at the configured address.
pub async fn spawn<S: PanelState>(config: S::Config) -> std::io::Result<Handle<S>> {
    let (bind, _) = S::listen(&config);
    Handle::spawn(Emulator::new(config), bind)
}

impl<S: PanelState> Emulator<S> {
    pub fn new(config: S::Config) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(S::default()),
                gate: Gate::default(),
            }),
        }
    }

    pub fn config(&self) -> &S::Config {
        &self.shared.config
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, S> {
        lock(&self.shared.state)
    }

    /// The faults, outage, latency and request log ([`Gate::push_fault`], [`Gate::set_down`],
    /// [`Gate::count`], …).
    pub fn gate(&self) -> &Gate {
        &self.shared.gate
    }

    /// Registers the panel routes and the control API (`/sandbox/<panel>/…`).
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(self.clone()))
            .configure(S::routes)
            .service(web::scope(&format!("/sandbox/{}", S::NAME)).configure(control_routes::<S>));
    }

    /// Every token stops working ([`PanelState::revoke_tokens`]).
    pub fn revoke_tokens(&self) {
        self.state().revoke_tokens();
    }

    /// A user's stored state, by exact name.
    pub fn user(&self, username: &str) -> Option<S::User> {
        self.state().user_mut(username).map(|user| user.clone())
    }

    /// Every user, in creation order.
    pub fn users(&self) -> Vec<S::User> {
        self.state().users()
    }

    /// Sets a user's traffic as Xray would report it; the review then applies the limit.
    pub fn set_used_traffic(&self, username: &str, bytes: i64) -> bool {
        let mut state = self.state();
        let Some(user) = state.user_mut(username) else {
            return false;
        };
        S::set_traffic(user, bytes);
        state.review(Utc::now());
        true
    }

    /// Edits a stored user by hand, as an admin in the dashboard would.
    pub fn edit_user(&self, username: &str, edit: impl FnOnce(&mut S::User)) -> bool {
        self.state().user_mut(username).map(edit).is_some()
    }

    /// A panel request: [`PanelState::admit`], then the [`Gate`], then — when the fault lets
    /// it — the auth check for `access` and `handle` on the reviewed state.
    pub(crate) async fn serve(
        &self,
        req: &HttpRequest,
        route: &'static str,
        body: Option<Value>,
        access: Option<S::Access>,
        handle: impl FnOnce(&mut S, &S::Config, DateTime<Utc>) -> HttpResponse,
    ) -> HttpResponse {
        let config = self.config();
        if let Some(answer) = S::admit(config, req) {
            return answer;
        }
        let answers = FaultAnswers {
            internal_error: S::internal_error,
            status: S::fault_status,
        };
        self.gate()
            .serve(req, route, S::PROBE, body, &answers, || {
                let now = Utc::now();
                let mut state = self.state();
                if let Some(access) = access
                    && let Some(refused) = state.auth(config, req, access)
                {
                    return refused;
                }
                state.review(now);
                handle(&mut state, config, now)
            })
            .await
    }
}

/// A running emulated panel. Dropping it stops the server. Derefs to the [`Emulator`] for its
/// control methods.
pub struct Handle<S: PanelState> {
    /// `http://127.0.0.1:<port>`: the panel URL (`PANEL_URL`).
    pub base_url: String,
    pub addr: SocketAddr,
    panel: Emulator<S>,
    server: Restartable,
}

impl<S: PanelState> std::fmt::Debug for Handle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("panel", &S::NAME)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl<S: PanelState> Deref for Handle<S> {
    type Target = Emulator<S>;
    fn deref(&self) -> &Emulator<S> {
        &self.panel
    }
}

impl<S: PanelState> Handle<S> {
    /// Starts `panel` on the current tokio runtime at `bind` (port 0: a free one).
    pub fn spawn(panel: Emulator<S>, bind: SocketAddr) -> std::io::Result<Self> {
        let app_panel = panel.clone();
        let workers = S::listen(panel.config()).1;
        let server = Restartable::spawn(bind, move |listen| {
            let app_panel = app_panel.clone();
            serve(S::NAME, listen, workers, move |cfg| {
                app_panel.configure(cfg)
            })
        })?;
        let addr = server.addr;
        tracing::info!(%addr, "{} emulator listening", S::NAME);
        Ok(Self {
            base_url: format!("http://{addr}"),
            addr,
            panel,
            server,
        })
    }

    pub fn panel(&self) -> &Emulator<S> {
        &self.panel
    }

    /// Stops listening and closes the open connections (requests fail with no answer),
    /// keeping the state.
    pub async fn disconnect(&self) {
        self.server.disconnect().await;
    }

    /// Listens again on the same address after [`Handle::disconnect`].
    pub async fn reconnect(&self) -> std::io::Result<()> {
        self.server.reconnect()
    }

    pub async fn stop(self) {
        self.disconnect().await;
    }
}

#[derive(Deserialize)]
struct FaultRequest {
    fault: Fault,
    #[serde(default = "one")]
    times: usize,
    #[serde(default)]
    route: Option<String>,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
struct Down {
    down: bool,
}

#[derive(Deserialize)]
struct Latency {
    latency_ms: u64,
}

#[derive(Deserialize)]
struct Traffic {
    used_traffic: i64,
}

/// The control API (mounted under `/sandbox/<panel>/`): `POST|DELETE /faults`, `PUT /down`,
/// `PUT /latency`, `POST /revoke-tokens`, `GET /requests`, `GET /users`,
/// `GET /users/{username}`, `PUT /users/{username}/traffic`, `POST /reset` — the same as the
/// Marzban emulator's.
fn control_routes<S: PanelState>(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/faults",
        web::post().to(
            |c: web::Data<Emulator<S>>, body: web::Json<FaultRequest>| async move {
                let FaultRequest {
                    fault,
                    times,
                    route,
                } = body.into_inner();
                match route {
                    Some(route) => c.gate().push_fault_on(&route, fault, times),
                    None => c.gate().push_fault(fault, times),
                }
                HttpResponse::NoContent().finish()
            },
        ),
    )
    .route(
        "/faults",
        web::delete().to(|c: web::Data<Emulator<S>>| async move {
            c.gate().clear_faults();
            HttpResponse::NoContent().finish()
        }),
    )
    .route(
        "/down",
        web::put().to(|c: web::Data<Emulator<S>>, body: web::Json<Down>| async move {
            c.gate().set_down(body.down);
            HttpResponse::NoContent().finish()
        }),
    )
    .route(
        "/latency",
        web::put().to(|c: web::Data<Emulator<S>>, body: web::Json<Latency>| async move {
            c.gate().set_latency(Duration::from_millis(body.latency_ms));
            HttpResponse::NoContent().finish()
        }),
    )
    .route(
        "/revoke-tokens",
        web::post().to(|c: web::Data<Emulator<S>>| async move {
            c.revoke_tokens();
            HttpResponse::NoContent().finish()
        }),
    )
    .route(
        "/requests",
        web::get()
            .to(|c: web::Data<Emulator<S>>| async move { HttpResponse::Ok().json(c.gate().requests()) }),
    )
    .route(
        "/users",
        web::get().to(|c: web::Data<Emulator<S>>| async move { HttpResponse::Ok().json(c.users()) }),
    )
    .route(
        "/users/{username}",
        web::get().to(|c: web::Data<Emulator<S>>, name: web::Path<String>| async move {
            match c.user(&name) {
                Some(user) => HttpResponse::Ok().json(user),
                None => HttpResponse::NotFound().json(serde_json::json!({"error": "no such user"})),
            }
        }),
    )
    .route(
        "/users/{username}/traffic",
        web::put().to(
            |c: web::Data<Emulator<S>>, name: web::Path<String>, body: web::Json<Traffic>| async move {
                if c.set_used_traffic(&name, body.used_traffic) {
                    HttpResponse::NoContent().finish()
                } else {
                    HttpResponse::NotFound().json(serde_json::json!({"error": "no such user"}))
                }
            },
        ),
    )
    .route(
        "/reset",
        web::post().to(|c: web::Data<Emulator<S>>| async move {
            c.gate().reset();
            *c.state() = S::default();
            HttpResponse::NoContent().finish()
        }),
    );
}
