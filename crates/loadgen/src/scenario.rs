//! The scenarios. Each one starts a fresh cluster (the four services as separate processes on
//! PostgreSQL and RabbitMQ, the emulators in the `sandbox` process), drives it, follows every
//! payment to the user's activation message in the Telegram emulator, and stops it.
//!
//! The load generator plays YooKassa's notifier: it pays each payment on the emulator (which
//! then holds the state the worker re-fetches) and POSTs the `payment.succeeded` notification
//! itself, from the allow-listed address, timing the gateway's acknowledgement. The emulator's
//! own notifier is switched off for the run: it delivers one notification at a time, which
//! would cap the webhook rate at one per ack time and turn a burst into a queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::audit::{audit, create_payment};
use e2e::cluster::{Cluster, ClusterConfig, NOTIFY_FROM, PanelKind, Proc};
use e2e::customers::{Script, is_activation};
use e2e::sandbox_client::SandboxClient;
use futures::StreamExt;
use sandbox::telegram::{PayOutcome, SentMessage, TestUser};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::machine::{self, CpuSplit};
use crate::progress::Progress;
use crate::stats::{Latency, now_us};

/// The tariffs of `config/tariffs.toml`, which the steady scenarios take turns at per user.
const TARIFFS: [&str; 4] = ["month_1", "month_3", "month_6", "month_12"];

/// Settings of a run (environment variables, see the README).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Length of the steady phases.
    pub seconds: f64,
    /// Scripted Telegram users the payments are spread over (a user pays again every
    /// `users / rate` seconds, so most payments extend a subscription).
    pub users: usize,
    pub workers: usize,
    pub syncs: usize,
    /// Webhook requests in flight at most.
    pub concurrency: usize,
    /// Webhooks in the spike and the burst.
    pub spike: usize,
    /// Rate of the spike (webhooks/s).
    pub spike_rate: f64,
    /// Users paying with Stars at once in the pre-checkout flood.
    pub flood: usize,
    /// How long to wait for the last activations after the load stops.
    pub drain: Duration,
    /// `RUST_LOG` of the services (their logs go to files).
    pub log: String,
}

/// What a service process used.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceUsage {
    pub name: String,
    /// RSS once started, before any load (MiB).
    pub idle_rss_mib: f64,
    /// Peak RSS (`VmHWM`) over the scenario (MiB).
    pub peak_rss_mib: f64,
    /// User + system CPU spent during the load and the drain.
    pub cpu_seconds: f64,
}

/// The figures of one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub name: String,
    pub offered: String,
    /// Payments paid on the emulator.
    pub payments: u64,
    pub webhooks_sent: u64,
    /// Failed creations, non-200 acknowledgements, failed Stars payments.
    pub errors: u64,
    /// Gateway `POST /api/payments` (create at YooKassa + store).
    pub create_ms: Option<Latency>,
    pub ack_ms: Option<Latency>,
    /// The same webhooks in the same cluster with YooKassa answering at once (the slow-YooKassa
    /// scenario; `ack_ms` is then with YooKassa slow).
    pub ack_ms_baseline: Option<Latency>,
    /// Checkouts that waited for the slow YooKassa: finished (201) and failed.
    pub slow_checkouts: Option<(u64, u64)>,
    /// The junk of the `flood` scenario and the gateway's memory around it.
    pub flood: Option<Flood>,
    /// Webhook sent → activation message received by the Telegram emulator.
    pub e2e_ms: Option<Latency>,
    /// `pre_checkout_query` sent → answered, as the Telegram emulator timed it.
    pub pre_checkout_ms: Option<Latency>,
    /// Wall time of the sending phase.
    pub send_seconds: f64,
    /// Webhooks acknowledged per second of the sending phase.
    pub ingest_per_s: f64,
    /// Payments activated per second, first webhook → last activation.
    pub sustained_per_s: f64,
    pub activated: u64,
    /// Paid, never activated (within the drain time).
    pub lost: u64,
    /// Activation messages beyond one per payment.
    pub double: u64,
    pub ledger_grants: i64,
    pub ledger_succeeded: i64,
    pub services: Vec<ServiceUsage>,
    /// What the scenario cost PostgreSQL (the cluster's database only).
    pub postgres: PgCounters,
    /// Where the machine's CPU went from the start of the load to the last activation.
    pub cpu: CpuSplit,
    /// `/proc/loadavg` when the scenario ended (other work on the machine shows here).
    pub load_average: String,
}

/// What the `flood` scenario threw at the gateway, how it answered, and its memory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Flood {
    /// Junk requests planned per second and for how long.
    pub offered_per_s: f64,
    pub seconds: f64,
    /// Junk requests answered, and per second of the flood.
    pub sent: u64,
    pub sent_per_s: f64,
    pub forbidden_403: u64,
    pub bad_signature_401: u64,
    pub limited_429: u64,
    /// Any other answer, or no answer.
    pub other: u64,
    /// Gateway RSS just before the flood, just after it, and its peak (`VmHWM`) so far (MiB).
    pub gateway_rss_before_mib: f64,
    pub gateway_rss_after_mib: f64,
    pub gateway_peak_rss_mib: f64,
}

/// PostgreSQL's counters for the cluster's database (`pg_stat_database`,
/// `pg_stat_user_tables`) and the statements the services sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PgCounters {
    pub commits: i64,
    pub rows_inserted: i64,
    pub rows_updated: i64,
    pub rows_deleted: i64,
    /// SQL statements our services sent (the sum of their `db_statements_total`; this
    /// PostgreSQL has no `pg_stat_statements`).
    pub statements: i64,
    /// The same per service (`gateway`, `worker-0`, …).
    pub statements_by_service: Vec<(String, i64)>,
    /// Rows written per table, most first.
    pub tables: Vec<TableWrites>,
}

/// Rows one table had inserted, updated and deleted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableWrites {
    pub table: String,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
}

impl TableWrites {
    pub fn written(&self) -> i64 {
        self.inserted + self.updated + self.deleted
    }
}

impl PgCounters {
    async fn read(
        conn: &sea_orm::DatabaseConnection,
        http: &reqwest::Client,
        services: &[&Proc],
    ) -> anyhow::Result<Self> {
        use sea_orm::{ConnectionTrait, Statement};
        let backend = conn.get_database_backend();
        let row = conn
            .query_one_raw(Statement::from_string(
                backend,
                "SELECT xact_commit::bigint AS c, tup_inserted::bigint AS i, \
                 tup_updated::bigint AS u, tup_deleted::bigint AS d \
                 FROM pg_stat_database WHERE datname = current_database()",
            ))
            .await?
            .context("no pg_stat_database row")?;
        let mut tables = Vec::new();
        for row in conn
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT relname::text AS t, n_tup_ins::bigint AS i, n_tup_upd::bigint AS u, \
                 n_tup_del::bigint AS d FROM pg_stat_user_tables",
            ))
            .await?
        {
            tables.push(TableWrites {
                table: row.try_get("", "t")?,
                inserted: row.try_get("", "i")?,
                updated: row.try_get("", "u")?,
                deleted: row.try_get("", "d")?,
            });
        }
        let mut statements_by_service = Vec::new();
        for service in services {
            let count = scrape_statements(http, &service.ops_addr)
                .await
                .with_context(|| format!("{}'s statement count", service.name))?;
            statements_by_service.push((service.name.clone(), count));
        }
        Ok(Self {
            commits: row.try_get("", "c")?,
            rows_inserted: row.try_get("", "i")?,
            rows_updated: row.try_get("", "u")?,
            rows_deleted: row.try_get("", "d")?,
            statements: statements_by_service.iter().map(|(_, n)| n).sum(),
            statements_by_service,
            tables,
        })
    }

    fn minus(self, base: &Self) -> Self {
        let mut tables: Vec<TableWrites> = self
            .tables
            .into_iter()
            .map(|t| {
                let before = base.tables.iter().find(|b| b.table == t.table);
                let (i, u, d) = before.map_or((0, 0, 0), |b| (b.inserted, b.updated, b.deleted));
                TableWrites {
                    inserted: t.inserted - i,
                    updated: t.updated - u,
                    deleted: t.deleted - d,
                    table: t.table,
                }
            })
            .filter(|t| t.written() > 0)
            .collect();
        tables.sort_by(|a, b| b.written().cmp(&a.written()).then(a.table.cmp(&b.table)));
        Self {
            commits: self.commits - base.commits,
            rows_inserted: self.rows_inserted - base.rows_inserted,
            rows_updated: self.rows_updated - base.rows_updated,
            rows_deleted: self.rows_deleted - base.rows_deleted,
            statements: self.statements - base.statements,
            statements_by_service: self
                .statements_by_service
                .into_iter()
                .map(|(name, n)| {
                    let before = base.statements_by_service.iter().find(|(b, _)| *b == name);
                    let n = n - before.map_or(0, |(_, b)| *b);
                    (name, n)
                })
                .collect(),
            tables,
        }
    }
}

/// The sum of a service's `db_statements_total` samples (Prometheus text on its ops port).
async fn scrape_statements(http: &reqwest::Client, ops_addr: &str) -> anyhow::Result<i64> {
    let text = http
        .get(format!("http://{ops_addr}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(statement_samples(&text))
}

fn statement_samples(text: &str) -> i64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix("db_statements_total")
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as i64)
        .sum()
}

/// One paid payment, as the load generator saw it.
#[derive(Debug, Clone)]
struct Paid {
    user: i64,
    /// When its first webhook went out (Unix µs); for Stars, when the user paid.
    sent_us: i64,
}

struct Ctx {
    cluster: Cluster,
    sandbox: SandboxClient,
    http: reqwest::Client,
    /// Sends from the allow-listed address, like YooKassa.
    notifier: reqwest::Client,
    webhook_url: String,
    users: Vec<TestUser>,
    idle: Vec<(String, e2e::Usage)>,
    cpu_base: std::sync::Mutex<(Vec<f64>, Option<machine::Snapshot>)>,
    pg_base: std::sync::Mutex<PgCounters>,
}

/// Our services, then the sandbox.
fn procs(cluster: &Cluster) -> Vec<&Proc> {
    let mut all = our_services(cluster);
    all.push(&cluster.sandbox);
    all
}

/// Our services (they talk to the database; the sandbox does not).
fn our_services(cluster: &Cluster) -> Vec<&Proc> {
    let mut all = vec![&cluster.gateway];
    all.extend(cluster.workers.iter());
    all.extend(cluster.syncs.iter());
    all.push(&cluster.bot);
    all
}

impl Ctx {
    async fn start(settings: &Settings, users: usize) -> anyhow::Result<Self> {
        Self::start_with(settings, users, Vec::new()).await
    }

    /// [`Ctx::start`] with more environment for every process.
    async fn start_with(
        settings: &Settings,
        users: usize,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let progress = Progress::start(format!(
            "starting the cluster ({} worker(s), {} sync(s)) and {users} Telegram users",
            settings.workers, settings.syncs
        ));
        let cluster = Cluster::start(ClusterConfig {
            workers: settings.workers,
            syncs: settings.syncs,
            // `PANEL=pasarguard|remnawave make bench` provisions that panel's emulator.
            panel: PanelKind::from_env()?,
            env: [
                ("RUST_LOG".into(), settings.log.clone()),
                // Empty: the emulator's notifier is off; the load generator notifies.
                ("SANDBOX_YOOKASSA_WEBHOOK_URL".into(), String::new()),
                // The outside services are emulators here, and the load generator plays the
                // bot and a thousand users from one address: the limits on outside calls and
                // on the service token's address would measure themselves, not the pipeline.
                // The gateway's limits on unverified traffic stay at their defaults.
                ("TELEGRAM_API_LIMIT".into(), "off".into()),
                // The Telegram emulator's own sending limits (30/s in all) would cap the bot's
                // answers to a thousand users; the bot's compliance is tested in its own suite.
                ("SANDBOX_TELEGRAM_SEND_LIMITS".into(), "false".into()),
                ("YOOKASSA_API_LIMIT".into(), "off".into()),
                ("TRONGRID_API_LIMIT".into(), "off".into()),
                ("GATEWAY_API_TOKEN_LIMIT".into(), "off".into()),
            ]
            .into_iter()
            .chain(env)
            .collect(),
        })
        .await?;
        let sandbox = cluster.sandbox_client();
        // Idle connections are dropped before the gateway's keep-alive (5 s) closes them, so a
        // request never goes out on a connection the server is closing.
        let client = || {
            reqwest::Client::builder()
                .pool_max_idle_per_host(settings.concurrency)
                .pool_idle_timeout(Duration::from_secs(2))
        };
        let http = client().build()?;
        let notifier = client()
            .local_address(NOTIFY_FROM.parse::<IpAddr>()?)
            .build()?;
        let webhook_url = format!("http://{}/webhook/payment/yookassa", cluster.gateway.addr);
        // Idle: a moment after start, before any load.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = procs(&cluster)
            .into_iter()
            .map(|p| (p.name.clone(), p.usage().unwrap_or_default()))
            .collect();
        let users: Vec<TestUser> = (0..users as i64)
            .map(|i| TestUser::new(5_000_000 + i, &format!("Load {i}"), "en"))
            .collect();
        // Each user has written to the bot, so the bot may write to them.
        let registered = Arc::new(AtomicU64::new(0));
        let ticker = progress.follow(registered.clone(), Some(users.len() as u64));
        let sent: Vec<anyhow::Result<i64>> = futures::stream::iter(&users)
            .map(|user| sandbox.send_text(user, "/start"))
            .buffer_unordered(32)
            .collect()
            .await;
        sent.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        let need = users.iter().map(|u| (u.id, 1)).collect();
        wait_for_messages(
            &sandbox,
            &need,
            |_| true,
            Duration::from_secs(120),
            &registered,
        )
        .await?;
        ticker.abort();
        anyhow::ensure!(
            registered.load(Ordering::Relaxed) == users.len() as u64,
            "the bot did not answer every /start"
        );
        progress.finish("ready");
        Ok(Self {
            cluster,
            sandbox,
            http,
            notifier,
            webhook_url,
            users,
            idle,
            cpu_base: std::sync::Mutex::new((Vec::new(), None)),
            pg_base: std::sync::Mutex::new(PgCounters::default()),
        })
    }

    /// CPU and PostgreSQL's work counted from here.
    async fn mark(&self) -> anyhow::Result<()> {
        let pg = PgCounters::read(
            &self.cluster.db.conn,
            &self.http,
            &our_services(&self.cluster),
        )
        .await?;
        *self.pg_base.lock().unwrap_or_else(|e| e.into_inner()) = pg;
        self.mark_cpu();
        Ok(())
    }

    fn mark_cpu(&self) {
        let now = procs(&self.cluster)
            .into_iter()
            .map(|p| p.usage().unwrap_or_default().cpu_seconds)
            .collect();
        *self.cpu_base.lock().unwrap_or_else(|e| e.into_inner()) = (now, Some(machine::snapshot()));
    }

    fn usage(&self) -> (Vec<ServiceUsage>, CpuSplit) {
        let (base, machine) = self
            .cpu_base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let split = machine.map(|m| m.since()).unwrap_or_default();
        let services = procs(&self.cluster)
            .into_iter()
            .zip(&self.idle)
            .zip(base)
            .map(|((p, (_, idle)), base)| {
                let now = p.usage().unwrap_or_default();
                ServiceUsage {
                    name: p.name.clone(),
                    idle_rss_mib: idle.rss_kib as f64 / 1024.0,
                    peak_rss_mib: now.peak_rss_kib as f64 / 1024.0,
                    cpu_seconds: now.cpu_seconds - base,
                }
            })
            .collect();
        (services, split)
    }

    /// Creates a payment through the gateway and pays it on the emulator; returns the
    /// notification body and the create latency (ms).
    async fn create_and_pay(&self, user: i64, tariff: &str) -> anyhow::Result<(String, f64)> {
        let started = Instant::now();
        let key = uuid::Uuid::new_v4().to_string();
        let created =
            create_payment(&self.http, &self.cluster.gateway.addr, user, tariff, &key).await?;
        let create_ms = started.elapsed().as_secs_f64() * 1000.0;
        let object = self
            .sandbox
            .yookassa_pay(&created.provider_payment_id)
            .await?;
        let body = serde_json::json!({
            "type": "notification",
            "event": "payment.succeeded",
            "object": object,
        });
        Ok((body.to_string(), create_ms))
    }

    /// POSTs the notification `copies` times at once; returns each ack latency (ms) or None
    /// for a non-200.
    async fn notify(&self, body: &str, copies: usize) -> Vec<Option<f64>> {
        let sends = (0..copies).map(|_| async {
            let started = Instant::now();
            let answer = self
                .notifier
                .post(&self.webhook_url)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await;
            match answer {
                Ok(r) if r.status().as_u16() == 200 => {
                    Some(started.elapsed().as_secs_f64() * 1000.0)
                }
                _ => None,
            }
        });
        futures::future::join_all(sends).await
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.cluster.stop().await
    }
}

/// Counters shown on the progress line while sending.
#[derive(Default)]
struct Live {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

#[derive(Default)]
struct Sent {
    /// The webhooks went to the gateway alone (the consumers were paused): end-to-end times
    /// include the pause and are not reported.
    gateway_alone: bool,
    paid: Vec<Paid>,
    acks: Vec<f64>,
    creates: Vec<f64>,
    errors: u64,
    webhooks: u64,
    seconds: f64,
}

/// Open loop at `rate` payments/s for `seconds`: create, pay, notify (`copies` times).
async fn steady(ctx: &Arc<Ctx>, settings: &Settings, rate: f64, copies: usize) -> Sent {
    let total = (rate * settings.seconds).round() as u64;
    let live = Arc::new(Live::default());
    let progress = Progress::start(format!(
        "  sending {total} payments at {rate}/s{}",
        if copies > 1 {
            format!(", every webhook {copies}x")
        } else {
            String::new()
        }
    ));
    let ticker = {
        let live = live.clone();
        progress.follow_with(move || {
            let sent = live.sent.load(Ordering::Relaxed);
            (
                sent,
                total,
                format!(
                    "{sent}/{total} paid, {} webhooks acked, {} errors",
                    live.acked.load(Ordering::Relaxed),
                    live.errors.load(Ordering::Relaxed)
                ),
            )
        })
    };
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (ctx, live) = (ctx.clone(), live.clone());
        let user = ctx.users[i as usize % ctx.users.len()].id;
        // A user's next payment is for the next tariff: the gateway hands a second checkout of
        // the same tariff the open one, so the same tariff comes back only every fourth round.
        let tariff = TARIFFS[(i as usize / ctx.users.len()) % TARIFFS.len()];
        tasks.push(tokio::spawn(async move {
            let result = match ctx.create_and_pay(user, tariff).await {
                Ok((body, create_ms)) => {
                    live.sent.fetch_add(1, Ordering::Relaxed);
                    let sent_us = now_us();
                    let acks = ctx.notify(&body, copies).await;
                    let ok = acks.iter().flatten().count() as u64;
                    live.acked.fetch_add(ok, Ordering::Relaxed);
                    live.errors.fetch_add(copies as u64 - ok, Ordering::Relaxed);
                    Some((Paid { user, sent_us }, create_ms, acks))
                }
                Err(error) => {
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    tracing_error(&error);
                    None
                }
            };
            drop(permit);
            result
        }));
    }
    let mut sent = Sent::default();
    for task in tasks {
        match task.await.ok().flatten() {
            Some((paid, create_ms, acks)) => {
                sent.paid.push(paid);
                sent.creates.push(create_ms);
                sent.webhooks += acks.len() as u64;
                for ack in acks {
                    match ack {
                        Some(ms) => sent.acks.push(ms),
                        None => sent.errors += 1,
                    }
                }
            }
            None => sent.errors += 1,
        }
    }
    sent.seconds = started.elapsed().as_secs_f64();
    ticker.abort();
    progress.finish(&format!(
        "{} paid, {} webhooks, {} errors",
        sent.paid.len(),
        sent.webhooks,
        sent.errors
    ));
    sent
}

fn tracing_error(error: &anyhow::Error) {
    static SHOWN: AtomicU64 = AtomicU64::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 3 {
        eprintln!("\n  error: {error:#}");
    }
}

/// Freezes (`true`) or thaws the workers, syncs and the bot.
async fn pause_consumers(ctx: &Ctx, pause: bool) {
    for proc in ctx.cluster.consumers() {
        let done = if pause {
            proc.pause().await
        } else {
            proc.resume().await
        };
        if let Err(error) = done {
            tracing_error(&error);
        }
    }
}

/// `count` payments created and paid (not timed), for the users from `first_user` on: each
/// user's notification body, and the create latencies and errors into `sent`. A second batch
/// must start at other users: the gateway hands a user's open checkout of the same tariff out
/// again (issue 18), and it is paid already.
async fn prepare(
    ctx: &Arc<Ctx>,
    count: usize,
    first_user: usize,
    sent: &mut Sent,
) -> Vec<(i64, String)> {
    let progress = Progress::start(format!("  creating and paying {count} payments first"));
    let made = Arc::new(AtomicU64::new(0));
    let ticker = progress.follow(made.clone(), Some(count as u64));
    let prepared: Vec<anyhow::Result<(i64, String, f64)>> = futures::stream::iter(0..count)
        .map(|i| {
            let (ctx, made) = (ctx.clone(), made.clone());
            async move {
                let user = ctx.users[(first_user + i) % ctx.users.len()].id;
                let (body, create_ms) = ctx.create_and_pay(user, TARIFFS[0]).await?;
                made.fetch_add(1, Ordering::Relaxed);
                Ok((user, body, create_ms))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    ticker.abort();
    let mut bodies = Vec::new();
    for result in prepared {
        match result {
            Ok((user, body, create_ms)) => {
                bodies.push((user, body));
                sent.creates.push(create_ms);
            }
            Err(error) => {
                tracing_error(&error);
                sent.errors += 1;
            }
        }
    }
    progress.finish(&format!("{} ready", bodies.len()));
    bodies
}

/// Sends the webhooks of `bodies` at `rate`/s open loop, or all at once (`None`,
/// `concurrency` in flight); acks (counted from when each was due), errors and the paid
/// payments go into `sent`.
async fn send_webhooks(
    ctx: &Arc<Ctx>,
    settings: &Settings,
    bodies: Vec<(i64, String)>,
    rate: Option<f64>,
    sent: &mut Sent,
) {
    let total = bodies.len() as u64;
    let live = Arc::new(Live::default());
    let what = match rate {
        Some(rate) => format!("  {total} webhooks at {rate}/s"),
        None => format!(
            "  {total} webhooks at once ({} in flight)",
            settings.concurrency
        ),
    };
    let progress = Progress::start(what);
    let ticker = {
        let live = live.clone();
        progress.follow_with(move || {
            let acked = live.acked.load(Ordering::Relaxed);
            (acked, total, format!("{acked}/{total} acked"))
        })
    };
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(bodies.len());
    for (i, (user, body)) in bodies.into_iter().enumerate() {
        let due = match rate {
            Some(rate) => started + Duration::from_secs_f64(i as f64 / rate),
            None => started,
        };
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (ctx, live) = (ctx.clone(), live.clone());
        tasks.push(tokio::spawn(async move {
            let sent_us = now_us();
            let ack = ctx.notify(&body, 1).await.pop().flatten();
            // From when it was due, so queueing behind the in-flight limit is not hidden.
            let ack = ack.map(|_| due.elapsed().as_secs_f64() * 1000.0);
            if ack.is_some() {
                live.acked.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
            (Paid { user, sent_us }, ack)
        }));
    }
    let mut acks = 0;
    for task in tasks {
        if let Ok((paid, ack)) = task.await {
            sent.webhooks += 1;
            match ack {
                Some(ms) => {
                    sent.acks.push(ms);
                    acks += 1;
                }
                None => sent.errors += 1,
            }
            sent.paid.push(paid);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    sent.seconds += seconds;
    ticker.abort();
    progress.finish(&format!("{acks} acked = {:.0}/s", acks as f64 / seconds));
}

/// `count` payments created and paid first (not timed), then their webhooks: at `rate`/s
/// open loop, or all at once (`None`, `concurrency` in flight).
async fn burst(
    ctx: &Arc<Ctx>,
    settings: &Settings,
    count: usize,
    rate: Option<f64>,
    gateway_alone: bool,
) -> Sent {
    let mut sent = Sent {
        gateway_alone,
        ..Sent::default()
    };
    let bodies = prepare(ctx, count, 0, &mut sent).await;
    // Only the webhooks count from here.
    if let Err(error) = ctx.mark().await {
        tracing_error(&error);
    }
    if gateway_alone {
        // Let the consumers finish what the preparation sent them, then freeze them.
        tokio::time::sleep(Duration::from_secs(2)).await;
        pause_consumers(ctx, true).await;
    }
    send_webhooks(ctx, settings, bodies, rate, &mut sent).await;
    if gateway_alone {
        pause_consumers(ctx, false).await;
    }
    sent
}

/// Result of following payments to their activation messages.
struct Followed {
    e2e: Vec<f64>,
    activated: u64,
    lost: u64,
    double: u64,
    last_us: i64,
}

/// Polls the users' chats in rounds until each has `need[user]` messages matching `pred`
/// (or `timeout` passed); `seen` counts the matching messages found, capped per user.
async fn wait_for_messages(
    sandbox: &SandboxClient,
    need: &HashMap<i64, usize>,
    pred: fn(&SentMessage) -> bool,
    timeout: Duration,
    seen: &AtomicU64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut waiting: Vec<i64> = need.keys().copied().collect();
    let mut counts: HashMap<i64, usize> = HashMap::new();
    loop {
        let found: Vec<anyhow::Result<(i64, usize)>> = futures::stream::iter(&waiting)
            .map(|user| async move {
                let messages = sandbox.messages(*user).await?;
                Ok((*user, messages.iter().filter(|m| pred(m)).count()))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for result in found {
            let (user, n) = result?;
            counts.insert(user, n);
        }
        seen.store(
            counts.iter().map(|(u, n)| (*n).min(need[u]) as u64).sum(),
            Ordering::Relaxed,
        );
        waiting.retain(|u| counts.get(u).copied().unwrap_or(0) < need[u]);
        if waiting.is_empty() || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every user has one activation message per payment (or the drain time ran
/// out), then matches them up in order.
async fn follow(ctx: &Ctx, paid: &[Paid], drain: Duration) -> anyhow::Result<Followed> {
    let mut expected: HashMap<i64, Vec<i64>> = HashMap::new();
    for p in paid {
        expected.entry(p.user).or_default().push(p.sent_us);
    }
    let total = paid.len() as u64;
    let progress = Progress::start(format!("  following {total} payments to activation"));
    let seen = Arc::new(AtomicU64::new(0));
    let ticker = progress.follow(seen.clone(), Some(total));
    let need: HashMap<i64, usize> = expected.iter().map(|(u, s)| (*u, s.len())).collect();
    wait_for_messages(&ctx.sandbox, &need, is_activation, drain, &seen).await?;
    // A late duplicate would show up now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    ticker.abort();
    let mut followed = Followed {
        e2e: Vec::new(),
        activated: 0,
        lost: 0,
        double: 0,
        last_us: 0,
    };
    for (user, mut sent) in expected {
        sent.sort_unstable();
        let mut activations: Vec<_> = ctx
            .sandbox
            .messages(user)
            .await?
            .into_iter()
            .filter(is_activation)
            .collect();
        activations.sort_by_key(|m| m.message_id);
        for (sent_us, message) in sent.iter().zip(&activations) {
            followed
                .e2e
                .push((message.sent_at_us - sent_us) as f64 / 1000.0);
            followed.last_us = followed.last_us.max(message.sent_at_us);
        }
        followed.activated += activations.len().min(sent.len()) as u64;
        followed.lost += sent.len().saturating_sub(activations.len()) as u64;
        followed.double += activations.len().saturating_sub(sent.len()) as u64;
    }
    progress.finish(&format!(
        "{} activated, {} lost, {} double",
        followed.activated, followed.lost, followed.double
    ));
    Ok(followed)
}

async fn finish(
    ctx: Arc<Ctx>,
    settings: &Settings,
    name: &str,
    offered: String,
    sent: Sent,
) -> anyhow::Result<Outcome> {
    let followed = follow(&ctx, &sent.paid, settings.drain).await?;
    let (services, cpu) = ctx.usage();
    // Backends flush their statistics when idle at the latest 10 s after their last
    // transaction (PostgreSQL 15).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let base = ctx
        .pg_base
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let postgres = PgCounters::read(&ctx.cluster.db.conn, &ctx.http, &our_services(&ctx.cluster))
        .await?
        .minus(&base);
    let report = audit(&ctx.cluster.db.conn).await?;
    let first_us = sent.paid.iter().map(|p| p.sent_us).min().unwrap_or(0);
    let span = (followed.last_us - first_us) as f64 / 1e6;
    let outcome = Outcome {
        name: name.to_owned(),
        offered,
        payments: sent.paid.len() as u64,
        webhooks_sent: sent.webhooks,
        errors: sent.errors,
        create_ms: Latency::of(sent.creates),
        ack_ms: Latency::of(sent.acks.clone()),
        ack_ms_baseline: None,
        slow_checkouts: None,
        flood: None,
        e2e_ms: if sent.gateway_alone {
            None
        } else {
            Latency::of(followed.e2e)
        },
        pre_checkout_ms: None,
        send_seconds: sent.seconds,
        ingest_per_s: sent.acks.len() as f64 / sent.seconds.max(1e-9),
        sustained_per_s: if span > 0.0 {
            followed.activated as f64 / span
        } else {
            0.0
        },
        activated: followed.activated,
        lost: followed.lost,
        double: followed.double,
        ledger_grants: report.grants,
        ledger_succeeded: report.succeeded,
        services,
        postgres,
        cpu,
        load_average: machine::load_average(),
    };
    Arc::into_inner(ctx)
        .context("the scenario still holds the cluster")?
        .stop()
        .await?;
    Ok(outcome)
}

/// Steady load: `rate` payments/s for the configured seconds, each webhook `copies` times.
pub async fn run_steady(
    settings: &Settings,
    name: &str,
    rate: f64,
    copies: usize,
) -> anyhow::Result<Outcome> {
    let total = (rate * settings.seconds).round() as usize;
    let ctx = Ctx::start(settings, settings.users.min(total.max(1))).await?;
    ctx.mark().await?;
    let ctx = Arc::new(ctx);
    let sent = steady(&ctx, settings, rate, copies).await;
    let offered = if copies > 1 {
        format!(
            "{rate}/s × {:.0} s, every webhook {copies}×",
            settings.seconds
        )
    } else {
        format!("{rate}/s × {:.0} s", settings.seconds)
    };
    finish(ctx, settings, name, offered, sent).await
}

/// A burst of webhooks for payments made beforehand. With `gateway_alone` the consumers
/// (workers, syncs, bot) are paused while the webhooks are sent, so the figures are the
/// gateway's own (with PostgreSQL and RabbitMQ); they resume afterwards and every payment must
/// still be activated once.
pub async fn run_burst(
    settings: &Settings,
    name: &str,
    rate: Option<f64>,
    gateway_alone: bool,
) -> anyhow::Result<Outcome> {
    let count = settings.spike;
    // One user per payment: all are made before any webhook, and a user's open checkout of
    // the tariff would be handed out again (issue 18).
    let ctx = Ctx::start(settings, count).await?;
    let ctx = Arc::new(ctx);
    let sent = burst(&ctx, settings, count, rate, gateway_alone).await;
    let alone = if gateway_alone { ", gateway alone" } else { "" };
    let offered = match rate {
        Some(rate) => format!("{count} webhooks at {rate}/s{alone}"),
        None => format!("{count} webhooks at once{alone}"),
    };
    finish(ctx, settings, name, offered, sent).await
}

/// `flood` users open a Stars invoice each, then all pay at the same moment: a
/// `pre_checkout_query` each, which the bot must answer within Telegram's 10 s.
pub async fn run_pre_checkout(settings: &Settings) -> anyhow::Result<Outcome> {
    let n = settings.flood;
    let ctx = Ctx::start(settings, n).await?;
    let script = Script::new(ctx.sandbox.clone(), false);
    let progress = Progress::start(format!("  {n} users open a Stars invoice"));
    let opened = Arc::new(AtomicU64::new(0));
    let ticker = progress.follow(opened.clone(), Some(n as u64));
    let invoices: Vec<anyhow::Result<(TestUser, i64)>> = futures::stream::iter(&ctx.users)
        .map(|user| {
            let (script, opened) = (&script, &opened);
            async move {
                let (invoice, _) = script.checkout(user, "month_1", "telegram", "XTR").await?;
                opened.fetch_add(1, Ordering::Relaxed);
                Ok((user.clone(), invoice.message_id))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    ticker.abort();
    let invoices = invoices.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    progress.finish("invoices sent");

    ctx.mark().await?;
    let ctx = Arc::new(ctx);
    let progress = Progress::start(format!("  {n} pre_checkout_query at once"));
    let started = Instant::now();
    let paid: Vec<(i64, i64, anyhow::Result<PayOutcome>)> =
        futures::future::join_all(invoices.iter().map(|(user, message_id)| {
            let ctx = ctx.clone();
            async move {
                let at = now_us();
                (
                    user.id,
                    at,
                    ctx.sandbox.pay_invoice(user, *message_id).await,
                )
            }
        }))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut sent = Sent {
        seconds,
        ..Sent::default()
    };
    let mut answers = Vec::new();
    for (user, sent_us, outcome) in paid {
        match outcome {
            Ok(PayOutcome::Paid { answered_in_ms, .. }) => {
                answers.push(answered_in_ms as f64);
                sent.paid.push(Paid { user, sent_us });
            }
            _ => sent.errors += 1,
        }
    }
    progress.finish(&format!("{} paid, {} errors", sent.paid.len(), sent.errors));
    let pre_checkout = Latency::of(answers);
    let mut outcome = finish(
        ctx,
        settings,
        "pre-checkout flood",
        format!("{n} Stars payments at once"),
        sent,
    )
    .await?;
    outcome.pre_checkout_ms = pre_checkout;
    // The Stars path has no webhook; its e2e figure is "user paid → activation".
    Ok(outcome)
}

/// Sets how long the YooKassa emulator holds back every API answer.
async fn yookassa_latency(ctx: &Ctx, latency: Duration) -> anyhow::Result<()> {
    let url = format!("{}/sandbox/yookassa/latency", ctx.sandbox.urls.yookassa);
    let delay_ms = u64::try_from(latency.as_millis())?;
    let response = ctx
        .http
        .put(url)
        .json(&serde_json::json!({ "delay_ms": delay_ms }))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "set the YooKassa latency: {}",
        response.status()
    );
    Ok(())
}

/// A slow YooKassa: every answer after `latency`, with `in_flight` checkouts kept waiting on
/// it (each starts a new one when its answer comes) while the webhooks of payments made
/// beforehand arrive at `rate`/s. The same number of webhooks is first sent with YooKassa
/// answering at once, in the same cluster: the baseline next to it. No transaction is open
/// while a checkout waits, so the webhooks should not notice.
pub async fn run_slow_yookassa(
    settings: &Settings,
    name: &str,
    latency: Duration,
    in_flight: usize,
    rate: f64,
) -> anyhow::Result<Outcome> {
    let count = ((rate * settings.seconds).round() as usize).max(1);
    // YooKassa's own limit: it answers within ~30 s or with a 500.
    let env = vec![("YOOKASSA_TIMEOUT_MS".to_owned(), "35000".to_owned())];
    // One user per payment: a user's open checkout of the tariff would be handed out again.
    let ctx = Arc::new(Ctx::start_with(settings, 2 * count, env).await?);
    let mut baseline = Sent::default();
    let quick = prepare(&ctx, count, 0, &mut baseline).await;
    let slow = prepare(&ctx, count, count, &mut baseline).await;
    ctx.mark().await?;
    eprintln!("  YooKassa answering at once:");
    send_webhooks(&ctx, settings, quick, Some(rate), &mut baseline).await;

    yookassa_latency(&ctx, latency).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkouts: Vec<_> = (0..in_flight)
        .map(|i| {
            let (ctx, stop) = (ctx.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut done, mut failed, mut times) = (0_u64, 0_u64, Vec::new());
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let user = ctx.users[(i + n * in_flight) % ctx.users.len()].id;
                    n += 1;
                    let started = Instant::now();
                    let key = uuid::Uuid::new_v4().to_string();
                    match create_payment(
                        &ctx.http,
                        &ctx.cluster.gateway.addr,
                        user,
                        "month_1",
                        &key,
                    )
                    .await
                    {
                        Ok(_) => {
                            done += 1;
                            times.push(started.elapsed().as_secs_f64() * 1000.0);
                        }
                        Err(error) => {
                            failed += 1;
                            tracing_error(&error);
                        }
                    }
                }
                (done, failed, times)
            })
        })
        .collect();
    // Every checkout is waiting on YooKassa before the webhooks start.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("  YooKassa answering after {latency:?}, {in_flight} checkouts in flight:");
    let mut sent = Sent::default();
    send_webhooks(&ctx, settings, slow, Some(rate), &mut sent).await;
    stop.store(true, Ordering::Relaxed);
    yookassa_latency(&ctx, Duration::ZERO).await?;
    let progress = Progress::start(format!("  waiting for the {in_flight} checkouts"));
    let (mut done, mut failed) = (0, 0);
    for task in checkouts {
        let (d, f, times) = task.await?;
        done += d;
        failed += f;
        sent.creates.extend(times);
    }
    progress.finish(&format!("{done} created, {failed} failed"));
    sent.errors += baseline.errors + failed;
    sent.paid.extend(baseline.paid);
    sent.webhooks += baseline.webhooks;
    let offered = format!(
        "{count} webhooks at {rate}/s with YooKassa answering after {:.0} s, {in_flight} checkouts in flight (and {count} with YooKassa quick)",
        latency.as_secs_f64()
    );
    let mut outcome = finish(ctx, settings, name, offered, sent).await?;
    outcome.ack_ms_baseline = Latency::of(baseline.acks);
    outcome.slow_checkouts = Some((done, failed));
    Ok(outcome)
}

/// The gateway's RSS and peak RSS now (MiB).
fn gateway_rss(ctx: &Ctx) -> (f64, f64) {
    let usage = ctx.cluster.gateway.usage().unwrap_or_default();
    (
        usage.rss_kib as f64 / 1024.0,
        usage.peak_rss_kib as f64 / 1024.0,
    )
}

/// Unverified junk at `junk_rate`/s from loopback while YooKassa's notifications keep arriving
/// at `rate`/s from its allow-listed address: half of the junk forbidden YooKassa
/// notifications (a real body from the wrong address), half forged crypto notices; every tenth
/// from a fresh address behind our "proxy" (the load generator's 127.0.0.1 is a trusted
/// proxy here), so the limit tables see new keys all the time. The same number of webhooks is
/// first sent without the flood, in the same cluster: the baseline next to it. Every
/// legitimate webhook must be acknowledged and its payment activated once; the gateway keeps
/// its default limits (`GATEWAY_WEBHOOK_LIMIT` 5/s,burst=20 per address).
pub async fn run_flood(
    settings: &Settings,
    name: &str,
    junk_rate: f64,
    rate: f64,
) -> anyhow::Result<Outcome> {
    let count = ((rate * settings.seconds).round() as usize).max(1);
    let env = vec![("TRUSTED_PROXIES".to_owned(), "127.0.0.1/32".to_owned())];
    // One user per payment: a user's open checkout of the tariff would be handed out again.
    let ctx = Arc::new(Ctx::start_with(settings, 2 * count, env).await?);
    let mut baseline = Sent::default();
    let quiet = prepare(&ctx, count, 0, &mut baseline).await;
    let flooded = prepare(&ctx, count, count, &mut baseline).await;
    ctx.mark().await?;
    eprintln!("  no flood:");
    send_webhooks(&ctx, settings, quiet, Some(rate), &mut baseline).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_before, _) = gateway_rss(&ctx);

    // The flood: open loop at `junk_rate`, at most `concurrency` in flight, for as long as
    // the legitimate webhooks take; what a saturated machine cannot send in time is dropped.
    let junk_client = reqwest::Client::builder()
        .pool_max_idle_per_host(settings.concurrency)
        .pool_idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .build()?;
    let gateway = ctx.cluster.gateway.addr.clone();
    let yookassa_url = format!("http://{gateway}/webhook/payment/yookassa");
    let crypto_url = format!("http://{gateway}/webhook/payment/crypto");
    let forbidden = serde_json::json!({
        "type": "notification",
        "event": "payment.succeeded",
        "object": {"id": uuid::Uuid::new_v4().to_string(), "status": "succeeded", "paid": true,
                   "amount": {"value": "199.00", "currency": "RUB"}},
    })
    .to_string();
    let forged = format!("t={},v1={}", chrono::Utc::now().timestamp(), "0".repeat(64));
    let statuses: Arc<[AtomicU64; 5]> = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood_started = Instant::now();
    // On a thread and runtime of its own: the flood's thousands of tasks a second must not
    // delay the legitimate sender's timers and tasks in this process (which would count as
    // acknowledgement time); the two still share the machine's cores with everything else.
    let flood = {
        let (statuses, stop) = (statuses.clone(), stop.clone());
        let concurrency = settings.concurrency;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let work = async move {
            let slots = Arc::new(Semaphore::new(concurrency));
            let mut i: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let due = flood_started + Duration::from_secs_f64(i as f64 / junk_rate);
                tokio::time::sleep_until(due.into()).await;
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let request = if i.is_multiple_of(2) {
                    junk_client.post(&yookassa_url).body(forbidden.clone())
                } else {
                    junk_client
                        .post(&crypto_url)
                        .header("X-Signature", forged.clone())
                        .body("{}")
                };
                let mut request = request.header("content-type", "application/json");
                if i.is_multiple_of(10) {
                    let fresh = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                    request = request.header("X-Forwarded-For", fresh);
                }
                let statuses = statuses.clone();
                tokio::spawn(async move {
                    let slot = match request.send().await {
                        Ok(response) => {
                            let slot = match response.status().as_u16() {
                                403 => 0,
                                401 => 1,
                                429 => 2,
                                _ => 3,
                            };
                            let _ = response.bytes().await;
                            slot
                        }
                        Err(_) => 3,
                    };
                    statuses[slot].fetch_add(1, Ordering::Relaxed);
                    statuses[4].fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                });
                i += 1;
            }
            // The last ones in flight.
            let _ = slots.acquire_many(concurrency as u32).await;
        };
        std::thread::spawn(move || runtime.block_on(work))
    };
    // The flood at full speed before the first legitimate webhook.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("  under a flood of {junk_rate:.0} unverified requests/s:");
    let mut sent = Sent::default();
    send_webhooks(&ctx, settings, flooded, Some(rate), &mut sent).await;
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || flood.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?;
    let flood_seconds = flood_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_after, peak) = gateway_rss(&ctx);
    let n = |slot: usize| statuses[slot].load(Ordering::Relaxed);
    let figures = Flood {
        offered_per_s: junk_rate,
        seconds: flood_seconds,
        sent: n(4),
        sent_per_s: n(4) as f64 / flood_seconds,
        forbidden_403: n(0),
        bad_signature_401: n(1),
        limited_429: n(2),
        other: n(3),
        gateway_rss_before_mib: rss_before,
        gateway_rss_after_mib: rss_after,
        gateway_peak_rss_mib: peak,
    };
    eprintln!(
        "  junk: {} answered ({:.0}/s): 403 {}, 401 {}, 429 {}, other {}; gateway RSS {:.1} -> {:.1} MiB",
        figures.sent,
        figures.sent_per_s,
        figures.forbidden_403,
        figures.bad_signature_401,
        figures.limited_429,
        figures.other,
        rss_before,
        rss_after
    );
    sent.errors += baseline.errors;
    sent.paid.extend(baseline.paid);
    sent.webhooks += baseline.webhooks;
    let offered = format!(
        "{count} webhooks at {rate}/s under {junk_rate:.0} unverified requests/s (and {count} without)"
    );
    let mut outcome = finish(ctx, settings, name, offered, sent).await?;
    outcome.ack_ms_baseline = Latency::of(baseline.acks);
    outcome.flood = Some(figures);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_samples_add_up_every_kind() {
        let text = "# TYPE db_statements_total counter\n\
                    db_statements_total{kind=\"select\"} 120\n\
                    db_statements_total{kind=\"insert\"} 30\n\
                    db_statements_total_other 9\n\
                    messaging_consumer_messages_total{consumer=\"x\"} 7\n";
        assert_eq!(statement_samples(text), 150);
        assert_eq!(statement_samples(""), 0);
    }

    #[test]
    fn table_writes_are_counted_from_the_mark_and_sorted() {
        let table = |name: &str, i, u, d| TableWrites {
            table: name.into(),
            inserted: i,
            updated: u,
            deleted: d,
        };
        let base = PgCounters {
            commits: 10,
            statements: 100,
            statements_by_service: vec![("gateway".into(), 60), ("bot".into(), 40)],
            tables: vec![table("outbox", 5, 5, 0), table("payments", 1, 0, 0)],
            ..PgCounters::default()
        };
        let now = PgCounters {
            commits: 16,
            statements: 160,
            statements_by_service: vec![("gateway".into(), 70), ("bot".into(), 90)],
            tables: vec![
                table("outbox", 9, 9, 0),
                table("payments", 1, 0, 0),
                table("ledger", 3, 0, 0),
            ],
            ..PgCounters::default()
        };
        let diff = now.minus(&base);
        assert_eq!((diff.commits, diff.statements), (6, 60));
        assert_eq!(
            diff.statements_by_service,
            [("gateway".to_owned(), 10), ("bot".to_owned(), 50)]
        );
        let names: Vec<_> = diff
            .tables
            .iter()
            .map(|t| (t.table.as_str(), t.written()))
            .collect();
        assert_eq!(names, [("outbox", 8), ("ledger", 3)]);
    }
}
