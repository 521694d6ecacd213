//! The operations surface every service exposes: `/health/live`, `/health/ready` and
//! `/metrics` (Prometheus text format).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Shutdown;

type CheckFn = dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the ops server re-runs the readiness checks; `/health/ready` answers from the
/// latest round, so a flood of probes costs no database or broker round trips.
pub const READY_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Gauge per readiness check (`check` = `database`, `broker`, and the outside services a
/// service depends on: `marzban`, `telegram`): 1 up, 0 down.
pub const METRIC_CHECK_UP: &str = "service_readiness_check_up";

/// How often a readiness check that calls an outside service ([`Readiness::with_every`]) runs
/// at most; the rounds in between reuse its last outcome.
pub const OUTSIDE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What `/health/ready` asks before answering 200: each named check must pass.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Arc<CheckFn>)>,
    /// Rounds of checks run so far, shared by every clone.
    rounds: Arc<AtomicU64>,
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

    /// [`Readiness::with`] for a check that calls an outside service (the panel, Telegram): it
    /// runs at most once per `every`, and the rounds in between answer its last outcome. A run
    /// that does not finish in time counts as down until the next one.
    pub fn with_every<F>(self, name: &'static str, every: Duration, check: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        type Last = Option<(Instant, Result<(), String>)>;
        let last: Arc<tokio::sync::Mutex<Last>> = Arc::default();
        let check = Arc::new(check);
        self.with(name, move || {
            let (last, check) = (last.clone(), check.clone());
            Box::pin(async move {
                let mut last = last.lock().await;
                if let Some((at, outcome)) = last.as_ref()
                    && at.elapsed() < every
                {
                    return outcome.clone();
                }
                // Stands if this run is cut off by the round's timeout.
                *last = Some((Instant::now(), Err("no answer".to_owned())));
                let outcome = check().await;
                if let Some((_, stored)) = last.as_mut() {
                    *stored = outcome.clone();
                }
                outcome
            })
        })
    }

    /// The database answers a ping.
    pub fn with_database(self, conn: DatabaseConnection) -> Self {
        self.with("database", move || {
            let conn = conn.clone();
            Box::pin(async move { conn.ping().await.map_err(|e| e.to_string()) })
        })
    }

    /// Runs every check now, all at once, each bounded by a few seconds: per check, `Ok` or
    /// the driver's error text (for the log only — it never goes out over HTTP).
    pub async fn probe(&self) -> Vec<(&'static str, Result<(), String>)> {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        futures::future::join_all(self.checks.iter().map(|(name, check)| async move {
            // A server that does not answer must not hang the probe.
            let outcome = tokio::time::timeout(CHECK_TIMEOUT, check())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())));
            (*name, outcome)
        }))
        .await
    }

    /// Runs every check now; `(all passed, {check: "ok" | "down"})` — names and states only.
    pub async fn report(&self) -> (bool, serde_json::Value) {
        summarize(&self.probe().await)
    }

    /// How many rounds of checks have run ([`Readiness::probe`]): with the cache of
    /// [`Readiness::spawn_cached`], about one per [`READY_CHECK_INTERVAL`] however often
    /// `/health/ready` is asked.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Runs the checks in the background — now, then `interval` after each round ends (so at
    /// most one round is ever in flight) — until `shutdown`; the returned cache holds the
    /// latest result. A check that changes state is logged with its error text.
    pub fn spawn_cached(self, interval: Duration, shutdown: Shutdown) -> CachedReadiness {
        // The recorder first, or the first round's gauges would go nowhere.
        metrics_handle();
        let (latest, receiver) = watch::channel(None);
        tokio::spawn(async move {
            let checking = async {
                let mut up: HashMap<&'static str, bool> = HashMap::new();
                loop {
                    let results = self.probe().await;
                    for (name, outcome) in &results {
                        let now = outcome.is_ok();
                        metrics::gauge!(METRIC_CHECK_UP, "check" => *name).set(if now {
                            1.0
                        } else {
                            0.0
                        });
                        let before = up.insert(name, now);
                        match outcome {
                            Err(error) if before != Some(false) => {
                                tracing::warn!(check = *name, %error, "readiness check fails")
                            }
                            Ok(()) if before == Some(false) => {
                                tracing::info!(check = *name, "readiness check passes again")
                            }
                            _ => {}
                        }
                    }
                    let (ok, checks) = summarize(&results);
                    let snapshot = Snapshot {
                        at: Instant::now(),
                        ok,
                        checks,
                    };
                    if latest.send(Some(Arc::new(snapshot))).is_err() {
                        return; // nobody reads the cache any more
                    }
                    tokio::time::sleep(interval).await;
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = checking => {}
            }
        });
        CachedReadiness {
            latest: receiver,
            stale_after: interval * 5 + CHECK_TIMEOUT,
        }
    }
}

/// `(all passed, {check: "ok" | "down"})`: what a probe may show, without error text.
fn summarize(results: &[(&'static str, Result<(), String>)]) -> (bool, serde_json::Value) {
    let checks: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(name, outcome)| {
            let state = if outcome.is_ok() { "ok" } else { "down" };
            ((*name).to_owned(), serde_json::Value::from(state))
        })
        .collect();
    let ok = results.iter().all(|(_, outcome)| outcome.is_ok());
    (ok, serde_json::Value::Object(checks))
}

/// One round's result.
struct Snapshot {
    at: Instant,
    ok: bool,
    checks: serde_json::Value,
}

/// The latest result of the background readiness checks ([`Readiness::spawn_cached`]).
#[derive(Clone)]
pub struct CachedReadiness {
    latest: watch::Receiver<Option<Arc<Snapshot>>>,
    /// A result older than this means the checks stalled: not ready.
    stale_after: Duration,
}

impl CachedReadiness {
    /// `(ready, body)` of `/health/ready`: `{"status": "ok" | "unavailable" | "starting" |
    /// "stale", "checks": {check: "ok" | "down"}}`.
    pub fn answer(&self) -> (bool, serde_json::Value) {
        let latest = self.latest.borrow().clone();
        let Some(snapshot) = latest else {
            return (
                false,
                serde_json::json!({"status": "starting", "checks": {}}),
            );
        };
        let (ok, status) = if snapshot.at.elapsed() > self.stale_after {
            (false, "stale")
        } else if snapshot.ok {
            (true, "ok")
        } else {
            (false, "unavailable")
        };
        (
            ok,
            serde_json::json!({"status": status, "checks": snapshot.checks}),
        )
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

/// Adds the three operations routes to an actix app (only ever the ops server's: they are
/// never on a public port).
pub fn configure(readiness: CachedReadiness) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
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

async fn ready(readiness: web::Data<CachedReadiness>) -> HttpResponse {
    let (ok, body) = readiness.answer();
    let mut response = if ok {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(body)
}

async fn render_metrics(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

/// A running service: the address of the HTTP server it answers on, if any, and the task that
/// ends when it has stopped.
pub struct RunningServer {
    /// The bound address (for a service: its ops address; `None` when the process serves ops
    /// elsewhere, as the standalone binary does).
    pub addr: Option<SocketAddr>,
    pub task: JoinHandle<std::io::Result<()>>,
}

/// Binds `bind` (port 0 picks a free port) and serves the app built by `factory` until
/// `shutdown` is cancelled; then stops gracefully, finishing requests in flight. Returns the
/// bound address with the server.
pub fn serve<F, I>(
    bind: &str,
    workers: usize,
    shutdown: Shutdown,
    factory: F,
) -> std::io::Result<(SocketAddr, RunningServer)>
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
    Ok((
        addr,
        RunningServer {
            addr: Some(addr),
            task,
        },
    ))
}

/// Serves only the operations routes on `bind` (the ops address: never the public port),
/// with readiness answered from checks run every [`READY_CHECK_INTERVAL`].
pub fn serve_ops(
    bind: &str,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<RunningServer> {
    let cached = readiness.spawn_cached(READY_CHECK_INTERVAL, shutdown.clone());
    let (addr, server) = serve(bind, 1, shutdown, move || {
        App::new().configure(configure(cached.clone()))
    })?;
    tracing::info!(%addr, "ops server (/health/live, /health/ready, /metrics) listening");
    Ok(server)
}

/// [`serve_ops`] when the service has an ops address of its own (`Some`); `None` when the
/// process serves ops once for several services (the standalone binary).
pub fn serve_ops_on(
    bind: Option<&str>,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<Option<RunningServer>> {
    bind.map(|bind| serve_ops(bind, readiness, shutdown))
        .transpose()
}

/// The address and task of a service whose work runs in `work` beside an optional ops
/// server: the task ends when both have ended (without an ops server, `work` alone) and
/// fails if either failed.
pub fn beside_ops<F>(ops: Option<RunningServer>, work: F) -> RunningServer
where
    F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let addr = ops.as_ref().and_then(|ops| ops.addr);
    let task = tokio::spawn(async move {
        let served = match ops {
            Some(ops) => ops
                .task
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r),
            None => Ok(()),
        };
        let worked = work.await;
        served.and(worked)
    });
    RunningServer { addr, task }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::testing::http_get;

    /// A check that counts its runs and fails with `error` while one is set.
    fn counted(
        runs: Arc<AtomicU64>,
        error: Arc<Mutex<Option<String>>>,
    ) -> impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static {
        move || {
            runs.fetch_add(1, Ordering::Relaxed);
            let outcome = error.lock().unwrap().clone();
            Box::pin(async move { outcome.map_or(Ok(()), Err) })
        }
    }

    async fn ready_until(addr: &str, status: u16) -> String {
        for _ in 0..100 {
            if let Ok((got, body)) = http_get(addr, "/health/ready").await
                && got == status
            {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("/health/ready never answered {status}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readiness_is_answered_from_the_latest_round_without_error_text() {
        let runs = Arc::new(AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let readiness = Readiness::new()
            .with("database", counted(runs.clone(), error.clone()))
            .with("broker", || Box::pin(async { Ok(()) }));
        let shutdown = Shutdown::new();
        let cached = readiness
            .clone()
            .spawn_cached(Duration::from_millis(100), shutdown.clone());
        let (addr, server) = serve("127.0.0.1:0", 1, shutdown.clone(), move || {
            App::new().configure(configure(cached.clone()))
        })
        .unwrap();
        let addr = addr.to_string();

        let body = ready_until(&addr, 200).await;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"status": "ok", "checks": {"database": "ok", "broker": "ok"}})
        );

        // A driver's error, with the kind of detail a stranger must not see.
        let secret = "password authentication failed for user \"acp\" at 10.1.2.3:5432";
        *error.lock().unwrap() = Some(secret.to_owned());
        let body = ready_until(&addr, 503).await;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"status": "unavailable", "checks": {"database": "down", "broker": "ok"}})
        );
        assert!(
            !body.contains("password") && !body.contains("10.1.2.3"),
            "{body}"
        );
        let (_, direct) = readiness.report().await;
        assert!(!direct.to_string().contains("password"), "{direct}");

        *error.lock().unwrap() = None;
        ready_until(&addr, 200).await;

        // The checks run on the timer, not per request: 300 probes, a handful of rounds.
        let before = runs.load(Ordering::Relaxed);
        let started = Instant::now();
        for _ in 0..300 {
            let (status, _) = http_get(&addr, "/health/ready").await.unwrap();
            assert_eq!(status, 200);
        }
        let rounds = runs.load(Ordering::Relaxed) - before;
        let allowed = (started.elapsed().as_millis() / 100) as u64 + 2;
        assert!(rounds <= allowed, "{rounds} rounds, allowed {allowed}");

        shutdown.cancel();
        server.task.await.unwrap().unwrap();
        // The timer stops with the server.
        let after = runs.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(runs.load(Ordering::Relaxed), after);
    }

    #[tokio::test]
    async fn a_round_in_flight_is_the_only_one() {
        let in_flight = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let (now, top) = (in_flight.clone(), most.clone());
        let readiness = Readiness::new().with("slow", move || {
            let (now, top) = (now.clone(), top.clone());
            Box::pin(async move {
                let current = now.fetch_add(1, Ordering::SeqCst) + 1;
                top.fetch_max(current, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        });
        let shutdown = Shutdown::new();
        let cached = readiness
            .clone()
            .spawn_cached(Duration::from_millis(10), shutdown.clone());
        assert_eq!(cached.answer().1["status"], "starting");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(cached.answer().0);
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert!(readiness.rounds() <= 5, "{}", readiness.rounds());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_outside_check_runs_at_most_once_per_interval() {
        let runs = Arc::new(AtomicU64::new(0));
        let error = Arc::new(Mutex::new(Some("refused".to_owned())));
        let readiness = Readiness::new().with_every(
            "panel",
            Duration::from_millis(300),
            counted(runs.clone(), error.clone()),
        );
        for _ in 0..5 {
            assert!(!readiness.report().await.0);
        }
        assert_eq!(
            runs.load(Ordering::Relaxed),
            1,
            "the cached outcome answered"
        );
        *error.lock().unwrap() = None;
        assert!(!readiness.report().await.0, "still the cached outcome");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(readiness.report().await.0);
        assert_eq!(runs.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_stalled_checker_is_not_ready() {
        let (latest, receiver) = watch::channel(Some(Arc::new(Snapshot {
            at: Instant::now(),
            ok: true,
            checks: serde_json::json!({"database": "ok"}),
        })));
        let cached = CachedReadiness {
            latest: receiver,
            stale_after: Duration::from_millis(50),
        };
        assert!(cached.answer().0);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let (ok, body) = cached.answer();
        assert!(!ok);
        assert_eq!(body["status"], "stale");
        drop(latest);
    }
}
