//! What the PasarGuard and Remnawave emulators share: the scripted faults, the outage and the
//! latency of the Marzban emulator ([`Gate`], with [`crate::marzban::Fault`]), the recorded
//! requests, the generic control API under `/sandbox/<panel>/` and a running server that can
//! be disconnected and reconnected on the same port ([`Handle`]). Connections carry a copy of
//! their socket ([`Connection`]), so a handler can drop one with no answer, as Remnawave's
//! proxy check does.

use std::any::Any;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_web::dev::{Extensions, ServerHandle};
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde::Deserialize;
use serde_json::Value;
use tokio::task::JoinHandle;

pub use crate::marzban::{Fault, RequestRecord};

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

/// A copy of a connection's socket, kept in the connection's data
/// (`HttpRequest::conn_data`), so a handler can drop the connection without answering.
pub struct Connection(std::net::TcpStream);

impl Connection {
    /// Closes the connection both ways: the client reads end-of-stream and no HTTP answer.
    pub fn drop_connection(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

fn on_connect(connection: &dyn Any, data: &mut Extensions) {
    use std::os::fd::AsFd;
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>()
        && let Ok(fd) = stream.as_fd().try_clone_to_owned()
    {
        data.insert(Connection(std::net::TcpStream::from(fd)));
    }
}

/// An emulated panel that a [`Handle`] can serve.
pub trait Panel: Clone + Send + Sync + 'static {
    /// For logs: `remnawave`, `pasarguard`.
    const NAME: &'static str;
    fn workers(&self) -> usize;
    /// Registers the panel routes and the control API.
    fn configure(&self, cfg: &mut web::ServiceConfig);
}

enum Listen {
    Socket(std::net::TcpListener),
    Addr(SocketAddr),
}

struct Running {
    handle: ServerHandle,
    task: JoinHandle<()>,
}

fn start<P: Panel>(panel: &P, listen: Listen) -> std::io::Result<Running> {
    let app_panel = panel.clone();
    let server = HttpServer::new(move || {
        let panel = app_panel.clone();
        App::new().configure(move |cfg| panel.configure(cfg))
    })
    .on_connect(on_connect)
    .workers(panel.workers().max(1))
    .disable_signals()
    .shutdown_timeout(1);
    let server = match listen {
        Listen::Socket(listener) => server.listen(listener)?,
        Listen::Addr(addr) => server.bind(addr)?,
    }
    .run();
    let handle = server.handle();
    let task = tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, emulator = P::NAME, "emulator server stopped");
        }
    });
    Ok(Running { handle, task })
}

/// A running emulated panel. Dropping it stops the server. Derefs to the panel for its
/// control methods.
pub struct Handle<P: Panel> {
    /// `http://127.0.0.1:<port>`: the panel URL (`PANEL_URL`).
    pub base_url: String,
    pub addr: SocketAddr,
    panel: P,
    server: Mutex<Option<Running>>,
    /// While disconnected: the address bound but not listening (connections refused, and no
    /// other test's listener takes the port).
    reserved: Mutex<Option<tokio::net::TcpSocket>>,
}

impl<P: Panel> std::fmt::Debug for Handle<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("panel", &P::NAME)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl<P: Panel> Deref for Handle<P> {
    type Target = P;
    fn deref(&self) -> &P {
        &self.panel
    }
}

impl<P: Panel> Handle<P> {
    /// Starts `panel` on the current tokio runtime at `bind` (port 0: a free one).
    pub fn spawn(panel: P, bind: SocketAddr) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let running = start(&panel, Listen::Socket(listener))?;
        tracing::info!(%addr, "{} emulator listening", P::NAME);
        Ok(Self {
            base_url: format!("http://{addr}"),
            addr,
            panel,
            server: Mutex::new(Some(running)),
            reserved: Mutex::new(None),
        })
    }

    pub fn panel(&self) -> &P {
        &self.panel
    }

    /// Stops listening (connections refused), keeping the state.
    pub async fn disconnect(&self) {
        let running = lock(&self.server).take();
        if let Some(running) = running {
            running.handle.stop(false).await;
            let _ = running.task.await;
            *lock(&self.reserved) = reserve(self.addr).ok();
        }
    }

    /// Listens again on the same address after [`Handle::disconnect`].
    pub async fn reconnect(&self) -> std::io::Result<()> {
        let mut server = lock(&self.server);
        if server.is_none() {
            drop(lock(&self.reserved).take());
            *server = Some(start(&self.panel, Listen::Addr(self.addr))?);
        }
        Ok(())
    }

    pub async fn stop(self) {
        self.disconnect().await;
    }
}

impl<P: Panel> Drop for Handle<P> {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.server).take() {
            drop(running.handle.stop(false));
            running.task.abort();
        }
    }
}

fn reserve(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// What the generic control API needs of a panel emulator.
pub trait Controlled: Clone + Send + Sync + 'static {
    fn gate(&self) -> &Gate;
    /// Every stored user as JSON, in creation order.
    fn users_json(&self) -> Value;
    /// One stored user as JSON.
    fn user_json(&self, username: &str) -> Option<Value>;
    /// Every token stops working (expired, deleted).
    fn revoke_tokens(&self);
    /// Forgets users and tokens (the gate is reset by the caller).
    fn reset_state(&self);
    /// Traffic as Xray would report it.
    fn set_used_traffic(&self, username: &str, bytes: i64) -> bool;
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
pub fn control_routes<C: Controlled>(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/faults",
        web::post().to(
            |c: web::Data<C>, body: web::Json<FaultRequest>| async move {
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
        web::delete().to(|c: web::Data<C>| async move {
            c.gate().clear_faults();
            HttpResponse::NoContent().finish()
        }),
    )
    .route(
        "/down",
        web::put().to(|c: web::Data<C>, body: web::Json<Down>| async move {
            c.gate().set_down(body.down);
            HttpResponse::NoContent().finish()
        }),
    )
    .route(
        "/latency",
        web::put().to(|c: web::Data<C>, body: web::Json<Latency>| async move {
            c.gate().set_latency(Duration::from_millis(body.latency_ms));
            HttpResponse::NoContent().finish()
        }),
    )
    .route(
        "/revoke-tokens",
        web::post().to(|c: web::Data<C>| async move {
            c.revoke_tokens();
            HttpResponse::NoContent().finish()
        }),
    )
    .route(
        "/requests",
        web::get()
            .to(|c: web::Data<C>| async move { HttpResponse::Ok().json(c.gate().requests()) }),
    )
    .route(
        "/users",
        web::get().to(|c: web::Data<C>| async move { HttpResponse::Ok().json(c.users_json()) }),
    )
    .route(
        "/users/{username}",
        web::get().to(|c: web::Data<C>, name: web::Path<String>| async move {
            match c.user_json(&name) {
                Some(user) => HttpResponse::Ok().json(user),
                None => HttpResponse::NotFound().json(serde_json::json!({"error": "no such user"})),
            }
        }),
    )
    .route(
        "/users/{username}/traffic",
        web::put().to(
            |c: web::Data<C>, name: web::Path<String>, body: web::Json<Traffic>| async move {
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
        web::post().to(|c: web::Data<C>| async move {
            c.gate().reset();
            c.reset_state();
            HttpResponse::NoContent().finish()
        }),
    );
}
