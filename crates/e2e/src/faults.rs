//! Fault injection against the system as separate processes: while a few hundred YooKassa
//! payments are created and paid (or left pending, or declined), services are killed with
//! SIGKILL and restarted, the broker and the database drop every connection, Marzban answers
//! 500 or is down, YooKassa answers 500/429 or too slowly, and its notifications are
//! duplicated, delayed, reordered or dropped. When the faults stop, the system must settle
//! within a bounded time to the provider's truth:
//!
//! - every payment YooKassa says is paid is `succeeded` here with exactly one ledger grant;
//! - every unpaid one is still `pending`, every declined one `failed`/`canceled`/`expired`;
//! - no payment is granted twice, each user's ledger adds up to the days they paid for, and
//!   the panel's expiry equals the ledger's;
//! - the parking queues hold only the one message the run parks on purpose;
//! - a `payment.completed` parked on purpose at marzban-sync (twice, one message id) and
//!   replayed with `acpctl parked replay` is applied exactly once.
//!
//! The shared PostgreSQL and RabbitMQ keep running for everyone else: a broker outage is the
//! services' AMQP connections cut at a [`TcpProxy`] (the broker "restarts" as they see it),
//! a database outage is `pg_terminate_backend` on every connection to the run's database.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use messaging::topology::system_consumers;
use messaging::{DeliverySource, OutgoingMessage, Publisher, QueueType, RabbitBus, RabbitConfig};
use sandbox::telegram::TestUser;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};
use service_kit::proxy::TcpProxy;

use crate::audit::create_payment;
use crate::cluster::{Cluster, ClusterConfig, PanelKind};
use crate::sandbox_client::SandboxClient;

/// What a run does.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub payments: usize,
    pub users: usize,
    /// Payments in progress at once.
    pub concurrency: usize,
    /// Payment `i` starts no earlier than `i × pace`, so the payments span the faults.
    pub pace: Duration,
    /// The pause between two faults, drawn between these bounds (milliseconds).
    pub fault_every_ms: (u64, u64),
    /// How long Marzban is down once, at the start of the run (the other faults go on).
    pub marzban_down: Duration,
    /// The bound on settling after the faults stop.
    pub settle_within: Duration,
    /// Seed of the fault schedule (`FAULTS_SEED` replays a run).
    pub seed: u64,
    /// The panel marzban-sync provisions (`PANEL` for `make faults`).
    pub panel: PanelKind,
}

impl FaultPlan {
    /// The CI version: a minute or so.
    pub fn short() -> Self {
        Self {
            payments: 30,
            users: 8,
            concurrency: 6,
            pace: Duration::from_millis(300),
            fault_every_ms: (300, 1200),
            marzban_down: Duration::from_secs(3),
            settle_within: Duration::from_secs(120),
            seed: seed(),
            panel: PanelKind::Marzban,
        }
    }

    /// A smaller short run on another panel (`make test` runs it on PasarGuard and
    /// Remnawave): the same faults, a third of the payments spread over ~8 s and faults
    /// frequent enough that the panel's 500s (the sixth fault of the schedule) come in, the
    /// panel down for 2 s.
    pub fn panel_short(panel: PanelKind) -> Self {
        Self {
            payments: 12,
            users: 4,
            concurrency: 4,
            pace: Duration::from_millis(700),
            fault_every_ms: (250, 700),
            marzban_down: Duration::from_secs(2),
            panel,
            ..Self::short()
        }
    }

    /// `make faults`: several hundred payments, Marzban down for a minute.
    pub fn full() -> Self {
        Self {
            payments: 300,
            users: 75,
            concurrency: 8,
            pace: Duration::from_millis(250),
            fault_every_ms: (1000, 3000),
            marzban_down: Duration::from_secs(60),
            settle_within: Duration::from_secs(240),
            seed: seed(),
            panel: PanelKind::Marzban,
        }
    }
}

fn seed() -> u64 {
    std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

/// xorshift64*: a reproducible schedule without a dependency.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

/// What the payer does with a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Pay,
    Leave,
    Decline,
}

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct FaultReport {
    pub seed: u64,
    pub payments: usize,
    pub paid: usize,
    pub left_pending: usize,
    pub declined: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Requests to create a payment that met a fault and were retried with the same key.
    pub create_retries: u64,
    /// Seconds from the end of the faults until everything agreed.
    pub settled_after: Option<f64>,
    /// Paid at YooKassa, but not `succeeded` with one grant here.
    pub lost: usize,
    /// Granted more than once, or `succeeded` here though not paid at YooKassa.
    pub doubled: usize,
    /// Payments whose status here disagrees with YooKassa's in another way.
    pub disagreeing: Vec<String>,
    /// Users whose ledger or panel expiry does not add up.
    pub ledger_mismatches: Vec<String>,
    /// Parked messages per consumer at the end (the run parks one at `bot` on purpose).
    pub parked: BTreeMap<String, u64>,
}

impl FaultReport {
    pub fn faults_injected(&self) -> u64 {
        self.faults.values().sum()
    }

    /// Everything the run promises.
    pub fn check(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if self.settled_after.is_none() {
            problems.push("did not settle in time".to_owned());
        }
        if self.lost > 0 {
            problems.push(format!("{} paid payments lost", self.lost));
        }
        if self.doubled > 0 {
            problems.push(format!(
                "{} payments applied twice or wrongly",
                self.doubled
            ));
        }
        if !self.disagreeing.is_empty() {
            problems.push(format!("statuses disagree: {:?}", self.disagreeing));
        }
        if !self.ledger_mismatches.is_empty() {
            problems.push(format!("ledger/panel: {:?}", self.ledger_mismatches));
        }
        let expected: BTreeMap<String, u64> = system_consumers()
            .iter()
            .map(|c| (c.name.clone(), u64::from(c.name == POISON_CONSUMER)))
            .collect();
        if self.parked != expected {
            problems.push(format!(
                "parking queues {:?}, expected {expected:?}",
                self.parked
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("seed {}: {}", self.seed, problems.join("; "))
        }
    }
}

impl std::fmt::Display for FaultReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} payments ({} paid, {} left pending, {} declined), {} faults injected {:?}, \
             {} create retries; settled {}; lost {}, doubled {}, parked {:?}",
            self.seed,
            self.payments,
            self.paid,
            self.left_pending,
            self.declined,
            self.faults_injected(),
            self.faults,
            self.create_retries,
            self.settled_after.map_or("never".to_owned(), |s| format!(
                "{s:.1} s after the faults stopped"
            )),
            self.lost,
            self.doubled,
            self.parked,
        )
    }
}

/// The consumer whose parking queue gets the message parked on purpose.
const POISON_CONSUMER: &str = messaging::topology::consumers::BOT;

/// Four minutes of retries with pauses of at most 30 s: longer than any outage of the run
/// (Marzban is down for a minute at most), so a fault parks nothing, and short enough pauses
/// that everything settles soon after the faults stop. (The services' defaults retry for
/// over twelve minutes with pauses up to ten.)
const RETRY_DELAYS_MS: &str = "1000,2000,4000,8000,15000,30000,30000,30000,30000,30000,30000,30000";

/// The run's environment on top of the cluster's defaults: fast reconciliation (the backstop
/// for lost notifications, with short leases so a killed worker's claims come back quickly)
/// and retry schedules that outlast the outages, so nothing is parked by a fault.
fn environment(amqp_url: String) -> Vec<(String, String)> {
    [
        ("AMQP_URL", amqp_url),
        ("AMQP_QUEUE_TYPE", "classic".to_owned()),
        ("RUST_LOG", "info,sqlx=warn".to_owned()),
        ("RECONCILE_POLL_MS", "500".to_owned()),
        ("RECONCILE_FIRST_CHECK_SECS", "3".to_owned()),
        ("RECONCILE_FAST_INTERVAL_SECS", "3".to_owned()),
        ("RECONCILE_LEASE_SECS", "5".to_owned()),
        ("WORKER_RETRY_DELAYS_MS", RETRY_DELAYS_MS.to_owned()),
        ("MARZBAN_SYNC_RETRY_DELAYS_MS", RETRY_DELAYS_MS.to_owned()),
        ("YOOKASSA_TIMEOUT_MS", "2000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['/', '?']).next().unwrap_or(host);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    }
}

/// Runs `plan` on a fresh cluster (two workers, two syncs) and reports; the cluster is
/// stopped at the end either way.
pub async fn run(plan: FaultPlan) -> anyhow::Result<FaultReport> {
    let broker = TcpProxy::start(host_port(&testkit::amqp_url())).await?;
    let mut cluster = Cluster::start(ClusterConfig {
        workers: 2,
        syncs: 2,
        panel: plan.panel,
        env: environment(broker.rewrite_url(&testkit::amqp_url())),
    })
    .await?;
    let result = drive(&plan, &mut cluster, &broker).await;
    // Whatever happened, nothing stays cut.
    broker.restore();
    let stopped = cluster.stop().await;
    let report = result?;
    stopped.context("the services stop cleanly after the run")?;
    Ok(report)
}

async fn drive(
    plan: &FaultPlan,
    cluster: &mut Cluster,
    broker: &TcpProxy,
) -> anyhow::Result<FaultReport> {
    let sandbox = cluster.sandbox_client();
    anyhow::ensure!(
        plan.payments <= plan.users * TARIFFS.len(),
        "{} payments need at least {} users: one payment per customer and tariff",
        plan.payments,
        plan.payments.div_ceil(TARIFFS.len())
    );
    let users: Vec<TestUser> = (0..plan.users as i64)
        .map(|i| TestUser::new(870_000 + i, &format!("Faulty {i}"), "en"))
        .collect();
    for user in &users {
        let start = sandbox.send_text(user, "/start").await?;
        sandbox
            .wait_for_message(user.id, Duration::from_secs(30), |m| m.message_id > start)
            .await?
            .context("the bot answers /start")?;
    }

    let mut report = FaultReport {
        seed: plan.seed,
        payments: plan.payments,
        ..FaultReport::default()
    };
    let mut rng = Rng(plan.seed);
    let fates: Vec<Fate> = (0..plan.payments)
        .map(|_| match rng.below(10) {
            0 => Fate::Leave,
            1 => Fate::Decline,
            _ => Fate::Pay,
        })
        .collect();
    report.paid = fates.iter().filter(|f| **f == Fate::Pay).count();
    report.left_pending = fates.iter().filter(|f| **f == Fate::Leave).count();
    report.declined = fates.iter().filter(|f| **f == Fate::Decline).count();

    let done = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    let gateway = cluster.gateway.addr.clone();
    let customers = customers(
        &sandbox,
        &gateway,
        &users,
        &fates,
        plan,
        retries.clone(),
        done.clone(),
    );
    let chaos = chaos(plan, cluster, broker, &sandbox, rng, done.clone());
    let (created, faults) = futures::join!(customers, chaos);
    report.faults = faults?;
    report.create_retries = retries.load(Ordering::SeqCst);
    let created = created?;

    // The faults stop: everything answers again, every killed process runs again.
    heal(&sandbox, broker).await;
    for proc in cluster.services_mut() {
        proc.wait_ready(Duration::from_secs(60)).await?;
    }
    let stopped = Instant::now();

    park_on_purpose(&cluster.prefix).await?;
    replay_with_acpctl(&cluster.prefix, &cluster.db.conn).await?;
    report.settled_after = settle(&cluster.db.conn, &sandbox, &created, plan.settle_within)
        .await?
        .then(|| stopped.elapsed().as_secs_f64());
    compare(&cluster.db.conn, &sandbox, &created, &mut report).await?;
    ledger_against_panel(&cluster.db.conn, &sandbox, &mut report).await?;
    report.parked = parked(&cluster.prefix).await?;
    Ok(report)
}

/// The tariffs the fault runs buy (all of `config/tariffs.toml`).
const TARIFFS: [&str; 4] = ["month_1", "month_3", "month_6", "month_12"];

/// Tries of one payment's create, 500 ms apart (see [`customers`]).
const CREATE_ATTEMPTS: u32 = 240;

/// Creates every payment through the gateway (retrying with the same key through kills and
/// provider faults, as the bot does) and pays, leaves or declines it on the checkout.
/// Returns the YooKassa ids with their fates.
async fn customers(
    sandbox: &SandboxClient,
    gateway: &str,
    users: &[TestUser],
    fates: &[Fate],
    plan: &FaultPlan,
    retries: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) -> anyhow::Result<Vec<(String, Fate)>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let results: Vec<anyhow::Result<(String, Fate)>> =
        futures::stream::iter(fates.iter().copied().enumerate())
            .map(|(i, fate)| {
                let (http, retries) = (&http, &retries);
                // Each payment its own customer and tariff: a second press of one customer
                // for one tariff gets the first, still open checkout back (issue 18), so two
                // payments of a pair would be one payment paid twice (or a left one paid).
                // A customer still buys up to four tariffs, so renewals run under the faults.
                let user = &users[i % users.len()];
                let tariff = TARIFFS[(i / users.len()) % TARIFFS.len()];
                async move {
                    tokio::time::sleep(plan.pace * i as u32).await;
                    let key = format!("faults-{}-{i}", user.id);
                    let mut attempt = 0;
                    let created = loop {
                        match create_payment(http, gateway, user.id, tariff, &key).await {
                            Ok(created) => break created,
                            // Patience for four of the gateway's 30-second idempotency leases:
                            // a key whose holder was killed answers 409 `request_in_flight`
                            // until the lease lapses, and the next holder may be killed too
                            // (one CI run saw 409s for more than 60 s).
                            Err(error) if attempt < CREATE_ATTEMPTS => {
                                attempt += 1;
                                retries.fetch_add(1, Ordering::SeqCst);
                                tracing::debug!(%error, "create payment: retrying");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                            Err(error) => return Err(error.context(format!("payment {i}"))),
                        }
                    };
                    let id = created.provider_payment_id;
                    match fate {
                        Fate::Pay => sandbox.yookassa_pay(&id).await.map(drop)?,
                        Fate::Decline => {
                            control(sandbox, &format!("/payments/{id}/decline")).await?
                        }
                        Fate::Leave => {}
                    }
                    Ok((id, fate))
                }
            })
            .buffer_unordered(plan.concurrency)
            .collect()
            .await;
    done.store(true, Ordering::SeqCst);
    results.into_iter().collect()
}

async fn control(sandbox: &SandboxClient, path: &str) -> anyhow::Result<()> {
    send(
        sandbox,
        reqwest::Method::POST,
        &format!("{}/sandbox/yookassa{path}", sandbox.urls.yookassa),
        json!({}),
    )
    .await
}

async fn send(
    sandbox: &SandboxClient,
    method: reqwest::Method,
    url: &str,
    body: Value,
) -> anyhow::Result<()> {
    let response = sandbox.http.request(method, url).json(&body).send().await?;
    if !response.status().is_success() {
        bail!("{url}: {}", response.status());
    }
    Ok(())
}

/// Injects faults one after another until the customers are done; returns the counts.
async fn chaos(
    plan: &FaultPlan,
    cluster: &mut Cluster,
    broker: &TcpProxy,
    sandbox: &SandboxClient,
    mut rng: Rng,
    done: Arc<AtomicBool>,
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut faults = BTreeMap::new();
    let yookassa = sandbox.urls.yookassa.clone();
    // Marzban down at the start, for `marzban_down`, while everything else goes on.
    send(
        sandbox,
        reqwest::Method::PUT,
        &sandbox.urls.panel_control("down"),
        json!({"down": true}),
    )
    .await?;
    *faults.entry("marzban down").or_insert(0) += 1;
    let marzban_back = tokio::spawn({
        let (sandbox, pause) = (sandbox.clone(), plan.marzban_down);
        async move {
            tokio::time::sleep(pause).await;
            send(
                &sandbox,
                reqwest::Method::PUT,
                &sandbox.urls.panel_control("down"),
                json!({"down": false}),
            )
            .await
        }
    });
    let mut injected = 0u64;
    let mut kills = 0u64;
    while !done.load(Ordering::SeqCst) {
        tokio::time::sleep(rng.millis(plan.fault_every_ms.0, plan.fault_every_ms.1)).await;
        // Every kind of fault first, with a kill of each of the six services in between, then
        // at random (kills three times as often as each other kind).
        let first_round = [0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8, 9, 10];
        let pick = first_round
            .get(injected as usize)
            .copied()
            .unwrap_or_else(|| rng.below(11));
        injected += 1;
        let kind = match pick {
            0..=2 => {
                let mut services: Vec<_> = cluster.services_mut().collect();
                // Each service once first, then at random.
                let at = if (kills as usize) < services.len() {
                    kills as usize
                } else {
                    rng.below(services.len() as u64) as usize
                };
                kills += 1;
                let proc = &mut services[at];
                proc.kill9().await?;
                tokio::time::sleep(rng.millis(0, 1500)).await;
                proc.start()?;
                "kill -9 and restart"
            }
            3 => {
                broker.cut();
                tokio::time::sleep(rng.millis(500, 4000)).await;
                broker.restore();
                "broker connections cut"
            }
            4 => {
                for _ in 0..3 {
                    drop_database_connections(&cluster.db.conn).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                "database connections killed"
            }
            5 => {
                let times = 3 + rng.below(8);
                send(
                    sandbox,
                    reqwest::Method::POST,
                    &sandbox.urls.panel_control("faults"),
                    json!({"fault": {"kind": "internal_error"}, "times": times}),
                )
                .await?;
                "marzban 500"
            }
            6 => {
                let (kind, label) = match rng.below(3) {
                    0 => (json!({"kind": "internal_error"}), "yookassa 500"),
                    1 => (json!({"kind": "too_many_requests"}), "yookassa 429"),
                    _ => (
                        json!({"kind": "slow", "delay_ms": 3000}),
                        "yookassa too slow",
                    ),
                };
                let mut body = kind;
                body["times"] = json!(2 + rng.below(6));
                send(
                    sandbox,
                    reqwest::Method::POST,
                    &format!("{yookassa}/sandbox/yookassa/faults"),
                    body,
                )
                .await?;
                label
            }
            _ => {
                let (mode, label) = match pick {
                    7 => (json!({"kind": "duplicate"}), "webhooks duplicated"),
                    8 => (
                        json!({"kind": "late", "delay_ms": 3000}),
                        "webhooks delayed",
                    ),
                    9 => (json!({"kind": "reordered"}), "webhooks reordered"),
                    _ => (json!({"kind": "dropped"}), "webhooks dropped"),
                };
                let mut body = mode;
                body["times"] = json!(2 + rng.below(6));
                send(
                    sandbox,
                    reqwest::Method::POST,
                    &format!("{yookassa}/sandbox/yookassa/notification-modes"),
                    body,
                )
                .await?;
                label
            }
        };
        tracing::info!(kind, "fault injected");
        *faults.entry(kind).or_insert(0) += 1;
    }
    marzban_back.await??;
    Ok(faults)
}

/// Every connection to the run's database is terminated, as by a PostgreSQL restart.
async fn drop_database_connections(conn: &DatabaseConnection) {
    let sql = "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
               WHERE datname = current_database() AND pid <> pg_backend_pid()";
    // Our own pool loses its other connections too; a failed call just means one was hit.
    let _ = conn
        .execute_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await;
}

/// Clears every scripted fault and restores the broker path.
async fn heal(sandbox: &SandboxClient, broker: &TcpProxy) {
    broker.restore();
    let urls = &sandbox.urls;
    for (method, url, body) in [
        (
            reqwest::Method::DELETE,
            format!("{}/sandbox/yookassa/faults", urls.yookassa),
            json!({}),
        ),
        (
            reqwest::Method::DELETE,
            urls.panel_control("faults"),
            json!({}),
        ),
        (
            reqwest::Method::PUT,
            urls.panel_control("down"),
            json!({"down": false}),
        ),
    ] {
        if let Err(error) = send(sandbox, method, &url, body).await {
            tracing::warn!(%error, "healing");
        }
    }
}

/// One undecodable message for the bot: parked at once, on purpose, so the check that the
/// parking queues hold "only what was put there" has something to find.
async fn park_on_purpose(prefix: &str) -> anyhow::Result<()> {
    let bus = bus(prefix).await?;
    bus.publish(&OutgoingMessage {
        routing_key: "subscription.revoked".into(),
        message_id: format!("poison-{}", uuid::Uuid::now_v7()),
        body: b"not an envelope".to_vec(),
    })
    .await?;
    bus.close().await;
    Ok(())
}

/// A `payment.completed` of the run, announced again under a new event id, parked twice at
/// marzban-sync on purpose (as after a panel outage longer than its retries); then the operator
/// replays it with `acpctl parked replay --all --queue marzban-sync`. Both copies keep their
/// message id, so marzban-sync applies it exactly once (one `processed_messages` row, the
/// second copy a duplicate) and the ledger checks that follow find no second grant.
async fn replay_with_acpctl(prefix: &str, db: &DatabaseConnection) -> anyhow::Result<()> {
    use lapin::options::BasicPublishOptions;
    use lapin::types::{AMQPValue, FieldTable, LongString};

    let sql = "SELECT envelope FROM outbox WHERE routing_key = 'payment.completed' LIMIT 1";
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .context("the run completed a payment")?;
    let mut envelope: Value = serde_json::from_str(&row.try_get::<String>("", "envelope")?)?;
    let id = uuid::Uuid::now_v7().to_string();
    envelope["event_id"] = json!(id);
    let bus = bus(prefix).await?;
    let consumer = messaging::topology::consumers::MARZBAN_SYNC;
    let channel = bus.channel().await?;
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    for _ in 0..2 {
        let mut headers = FieldTable::default();
        headers.insert("x-acp-routing-key".into(), text("payment.completed"));
        headers.insert("x-acp-error".into(), text("parked on purpose"));
        channel
            .basic_publish(
                "".into(),
                bus.names().parking_queue(consumer).as_str().into(),
                BasicPublishOptions::default(),
                envelope.to_string().as_bytes(),
                lapin::BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_headers(headers)
                    .with_delivery_mode(2),
            )
            .await?;
    }
    channel.close(200, "done".into()).await.ok();
    while bus.parking_count(consumer).await? < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let output = tokio::process::Command::new(crate::cluster::bin_dir().join("acpctl"))
        .args(["parked", "replay", "--all", "--queue", consumer, "--json"])
        .env("AMQP_URL", testkit::amqp_url())
        .env("AMQP_PREFIX", prefix)
        .env("AMQP_QUEUE_TYPE", "classic")
        .output()
        .await
        .context("acpctl runs (cargo build --workspace --bins)")?;
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    if !output.status.success() || answer["total"] != 2 {
        bail!(
            "acpctl parked replay: {:?} {answer} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let applied = format!(
        "SELECT COUNT(*) AS n FROM processed_messages WHERE consumer = '{consumer}' \
         AND message_id = '{id}'"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                applied.clone(),
            ))
            .await?
            .context("count")?
            .try_get("", "n")?;
        let waiting = bus.queue_count(consumer).await?.unwrap_or(0);
        if n == 1 && waiting == 0 {
            break;
        }
        if n > 1 || Instant::now() > deadline {
            bail!("the replayed message was applied {n} times ({waiting} still queued)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bus.close().await;
    Ok(())
}

async fn bus(prefix: &str) -> anyhow::Result<RabbitBus> {
    Ok(RabbitBus::connect(
        RabbitConfig::new(testkit::amqp_url(), prefix).with_queue_type(QueueType::Classic),
    )
    .await?)
}

async fn parked(prefix: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let bus = bus(prefix).await?;
    let mut parked = BTreeMap::new();
    for consumer in system_consumers() {
        let mut count = bus.parking_count(&consumer.name).await?;
        // The poison may still be on its way to parking.
        for _ in 0..50 {
            if consumer.name != POISON_CONSUMER || count > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            count = bus.parking_count(&consumer.name).await?;
        }
        parked.insert(consumer.name.clone(), count);
    }
    bus.close().await;
    Ok(parked)
}

/// Our status, YooKassa's status and the grant count of every payment of the run.
async fn states(
    conn: &DatabaseConnection,
    sandbox: &SandboxClient,
) -> anyhow::Result<(HashMap<String, (String, i64)>, HashMap<String, String>)> {
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT p.provider_payment_id AS id, p.status::text AS status,
                    (SELECT count(*) FROM subscription_grants g WHERE g.payment_id = p.id) AS grants
               FROM payments p WHERE p.provider_payment_id IS NOT NULL",
        ))
        .await?;
    let ours = rows
        .iter()
        .map(|row| {
            Ok((
                row.try_get::<String>("", "id")?,
                (
                    row.try_get::<String>("", "status")?,
                    row.try_get::<i64>("", "grants")?,
                ),
            ))
        })
        .collect::<Result<HashMap<_, _>, sea_orm::DbErr>>()?;
    let theirs = sandbox
        .yookassa_payments()
        .await?
        .into_iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap_or_default().to_owned(),
                p["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    Ok((ours, theirs))
}

/// Whether our view of one payment agrees with YooKassa's.
fn agrees(ours: Option<&(String, i64)>, theirs: Option<&String>) -> bool {
    match (ours, theirs.map(String::as_str)) {
        (Some((status, grants)), Some("succeeded")) => status == "succeeded" && *grants == 1,
        (Some((status, grants)), Some("canceled")) => {
            matches!(status.as_str(), "failed" | "canceled" | "expired") && *grants == 0
        }
        (Some((status, grants)), Some("pending")) => status == "pending" && *grants == 0,
        _ => false,
    }
}

/// Waits until every payment agrees with YooKassa and the panel with our ledger (a panel
/// call that failed under the faults is retried with growing pauses, so the panel may lag the
/// payments by some seconds); `false` when `within` passes first.
async fn settle(
    conn: &DatabaseConnection,
    sandbox: &SandboxClient,
    created: &[(String, Fate)],
    within: Duration,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((ours, theirs)) = states(conn, sandbox).await
            && created
                .iter()
                .all(|(id, _)| agrees(ours.get(id), theirs.get(id)))
            && ledger_mismatches(conn, sandbox)
                .await
                .is_ok_and(|m| m.is_empty())
        {
            // Let a late duplicate land before the final count.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn compare(
    conn: &DatabaseConnection,
    sandbox: &SandboxClient,
    created: &[(String, Fate)],
    report: &mut FaultReport,
) -> anyhow::Result<()> {
    let (ours, theirs) = states(conn, sandbox).await?;
    for (id, fate) in created {
        let mine = ours.get(id);
        let truth = theirs.get(id).map(String::as_str);
        let (status, grants) = mine.map_or(("missing", 0), |(s, g)| (s.as_str(), *g));
        if grants > 1 || (status == "succeeded" && truth != Some("succeeded")) {
            report.doubled += 1;
        } else if truth == Some("succeeded") && !(status == "succeeded" && grants == 1) {
            report.lost += 1;
        } else if !agrees(mine, theirs.get(id)) {
            report.disagreeing.push(format!(
                "{id} ({fate:?}): ours {status}/{grants}, YooKassa {truth:?}"
            ));
        }
    }
    Ok(())
}

/// Each user's ledger adds up to the days of their succeeded payments, and the panel's expiry
/// is the ledger's.
async fn ledger_against_panel(
    conn: &DatabaseConnection,
    sandbox: &SandboxClient,
    report: &mut FaultReport,
) -> anyhow::Result<()> {
    report.ledger_mismatches = ledger_mismatches(conn, sandbox).await?;
    Ok(())
}

/// Users whose ledger does not add up to their succeeded payments' days, or whose panel expiry
/// is not the ledger's.
async fn ledger_mismatches(
    conn: &DatabaseConnection,
    sandbox: &SandboxClient,
) -> anyhow::Result<Vec<String>> {
    let mut mismatches = Vec::new();
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT s.marzban_username AS username,
                    EXTRACT(EPOCH FROM s.expires_at)::float8 AS expires_at,
                    (SELECT coalesce(sum(g.days_granted), 0)::bigint FROM subscription_grants g
                      WHERE g.subscription_id = s.id) AS granted,
                    (SELECT coalesce(sum(t.duration_days), 0)::bigint FROM payments p
                       JOIN tariffs t ON t.id = p.tariff_id
                      WHERE p.user_id = s.user_id AND p.status = 'succeeded') AS paid
               FROM subscriptions s",
        ))
        .await?;
    let panel = sandbox.panel_expiries().await?;
    for row in rows {
        let username: String = row.try_get("", "username")?;
        let expires_at: f64 = row.try_get("", "expires_at")?;
        let granted: i64 = row.try_get("", "granted")?;
        let paid: i64 = row.try_get("", "paid")?;
        let on_panel = panel.get(&username).copied();
        if granted != paid || on_panel.is_none_or(|e| (e as f64 - expires_at).abs() > 1.0) {
            mismatches.push(format!(
                "{username}: granted {granted} days, paid {paid}, ledger expiry {expires_at}, panel {on_panel:?}"
            ));
        }
    }
    Ok(mismatches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(status: &str, grants: i64) -> Option<(String, i64)> {
        Some((status.to_owned(), grants))
    }

    #[test]
    fn a_payment_agrees_only_with_the_providers_truth() {
        let truth = |s: &str| Some(s.to_owned());
        assert!(agrees(
            ours("succeeded", 1).as_ref(),
            truth("succeeded").as_ref()
        ));
        assert!(!agrees(
            ours("succeeded", 2).as_ref(),
            truth("succeeded").as_ref()
        ));
        assert!(!agrees(
            ours("pending", 0).as_ref(),
            truth("succeeded").as_ref()
        ));
        assert!(agrees(
            ours("failed", 0).as_ref(),
            truth("canceled").as_ref()
        ));
        assert!(!agrees(
            ours("succeeded", 1).as_ref(),
            truth("canceled").as_ref()
        ));
        assert!(agrees(
            ours("pending", 0).as_ref(),
            truth("pending").as_ref()
        ));
        assert!(!agrees(None, truth("pending").as_ref()));
        assert!(!agrees(ours("pending", 0).as_ref(), None));
    }

    #[test]
    fn the_report_fails_on_loss_doubling_and_unexpected_parking() {
        let parked: BTreeMap<String, u64> = system_consumers()
            .iter()
            .map(|c| (c.name.clone(), u64::from(c.name == POISON_CONSUMER)))
            .collect();
        let good = FaultReport {
            settled_after: Some(1.0),
            parked: parked.clone(),
            ..FaultReport::default()
        };
        assert!(good.check().is_ok());
        for bad in [
            FaultReport {
                lost: 1,
                ..good.clone()
            },
            FaultReport {
                doubled: 1,
                ..good.clone()
            },
            FaultReport {
                settled_after: None,
                ..good.clone()
            },
            FaultReport {
                parked: parked.keys().map(|k| (k.clone(), 1)).collect(),
                ..good.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_schedule_is_reproducible_from_its_seed() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        let xs: Vec<u64> = (0..5).map(|_| a.below(100)).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.below(100)).collect();
        assert_eq!(xs, ys);
        assert!(Rng(7).millis(300, 1200) <= Duration::from_millis(1200));
    }
}
