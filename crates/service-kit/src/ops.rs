//! The operations surface every service exposes: `/health/live`, `/health/ready` and
//! `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use actix_web::{App, HttpResponse, HttpServer, web};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sea_orm::DatabaseConnection;
use tokio::task::JoinHandle;

use crate::Shutdown;

type CheckFn = dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What `/health/ready` asks before answering 200: each named check must pass.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Arc<CheckFn>)>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with<F>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.checks.push((name, Arc::new(check)));
        self
    }

    /// The database answers a ping.
    pub fn with_database(self, conn: DatabaseConnection) -> Self {
        self.with("database", move || {
            let conn = conn.clone();
            Box::pin(async move { conn.ping().await.map_err(|e| e.to_string()) })
        })
    }

    /// Runs every check; `(all passed, per-check report)`.
    pub async fn report(&self) -> (bool, serde_json::Value) {
        let mut ok = true;
        let mut report = serde_json::Map::new();
        for (name, check) in &self.checks {
            // A server that does not answer must not hang the probe: a check gets a few seconds.
            let outcome = tokio::time::timeout(CHECK_TIMEOUT, check())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())));
            let value = match outcome {
                Ok(()) => serde_json::Value::from("ok"),
                Err(error) => {
                    ok = false;
                    serde_json::Value::from(error)
                }
            };
            report.insert((*name).to_owned(), value);
        }
        (ok, serde_json::Value::Object(report))
    }
}

/// Histogram buckets of every metric named `*_seconds`: 0.5 ms (a webhook's acknowledgement
/// is a few milliseconds) to 1 min.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Histogram buckets of every metric named `*_ms` (payment processing time): 100 ms to 1 h.
pub const MS_BUCKETS: &[f64] = &[
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    900_000.0,
    3_600_000.0,
];

/// The exporter with explicit histogram buckets (without them it renders summaries, which
/// cannot be aggregated across replicas).
fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_ms".into()), MS_BUCKETS))
        // Only an empty bucket list is refused; these are constants.
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// The process-wide Prometheus recorder, installed on first use (several services may share
/// a process in the single-process mode and in tests).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is already global; then ours just stays local.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Adds the three operations routes to an actix app.
pub fn configure(readiness: Readiness) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(readiness))
            .app_data(web::Data::new(metrics_handle()))
            .route("/health/live", web::get().to(live))
            .route("/health/ready", web::get().to(ready))
            .route("/metrics", web::get().to(render_metrics));
    }
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn ready(readiness: web::Data<Readiness>) -> HttpResponse {
    let (ok, checks) = readiness.report().await;
    let body =
        serde_json::json!({"status": if ok { "ok" } else { "unavailable" }, "checks": checks});
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn render_metrics(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

/// A running HTTP server: its bound address and the task that ends when it has stopped.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub task: JoinHandle<std::io::Result<()>>,
}

/// Binds `bind` (port 0 picks a free port) and serves the app built by `factory` until
/// `shutdown` is cancelled; then stops gracefully, finishing requests in flight.
pub fn serve<F, I>(
    bind: &str,
    workers: usize,
    shutdown: Shutdown,
    factory: F,
) -> std::io::Result<RunningServer>
where
    F: Fn() -> App<I> + Send + Clone + 'static,
    I: actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse<actix_web::body::BoxBody>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
{
    let listener = std::net::TcpListener::bind(bind)?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(factory)
        .workers(workers.max(1))
        .disable_signals()
        .shutdown_timeout(10)
        .listen(listener)?
        .run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.stop(true).await;
    });
    let task = tokio::spawn(server);
    Ok(RunningServer { addr, task })
}

/// Serves only the operations routes (services whose real work is not HTTP).
pub fn serve_ops(
    bind: &str,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<RunningServer> {
    serve(bind, 1, shutdown, move || {
        App::new().configure(configure(readiness.clone()))
    })
}
