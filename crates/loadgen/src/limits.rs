//! The machine's own limits, measured in the same run so the figures compare across machines:
//! PostgreSQL single-row durable inserts (like `pgbench` with a one-row INSERT script) and
//! RabbitMQ publishes with publisher confirms (persistent messages to a durable queue).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, Statement, Value};
use serde::Serialize;

use crate::progress::Progress;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Limits {
    /// Committed single-row INSERTs per second, one client.
    pub pg_inserts_1: f64,
    /// Committed single-row INSERTs per second, 32 clients.
    pub pg_inserts_32: f64,
    /// Persistent publishes confirmed per second, one at a time.
    pub amqp_confirms_1: f64,
    /// Persistent publishes confirmed per second, 256 in flight on one channel.
    pub amqp_confirms_256: f64,
}

pub async fn measure(seconds: f64) -> anyhow::Result<Limits> {
    let window = Duration::from_secs_f64(seconds);
    let db = testkit::TestDb::try_new().await?;
    let pg_inserts_1 = pg_inserts(&db.url, 1, window).await?;
    let pg_inserts_32 = pg_inserts(&db.url, 32, window).await?;
    let amqp_confirms_1 = amqp_confirms(1, window).await?;
    let amqp_confirms_256 = amqp_confirms(256, window).await?;
    Ok(Limits {
        pg_inserts_1,
        pg_inserts_32,
        amqp_confirms_1,
        amqp_confirms_256,
    })
}

/// `clients` connections each inserting one row per transaction (autocommit, default
/// `synchronous_commit = on`) for `window`.
async fn pg_inserts(url: &str, clients: u32, window: Duration) -> anyhow::Result<f64> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(clients)
        .min_connections(clients)
        .sqlx_logging(false);
    let conn = Database::connect(options).await?;
    conn.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS bench_inserts \
         (id bigserial PRIMARY KEY, body text NOT NULL, at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(format!("limits: PostgreSQL inserts, {clients} clients"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (conn, done) = (conn.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let backend = conn.get_database_backend();
            while started.elapsed() < window {
                conn.execute_raw(Statement::from_sql_and_values(
                    backend,
                    "INSERT INTO bench_inserts (body) VALUES ($1)",
                    [Value::from(uuid::Uuid::new_v4().to_string())],
                ))
                .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let ticker = progress.follow(done.clone(), None);
    for task in tasks {
        task.await??;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    ticker.abort();
    progress.finish(&format!("{rate:.0} inserts/s"));
    conn.close().await?;
    Ok(rate)
}

/// Persistent 256-byte messages to a durable classic queue, `in_flight` unconfirmed at most.
async fn amqp_confirms(in_flight: usize, window: Duration) -> anyhow::Result<f64> {
    let connection =
        Connection::connect(&testkit::amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = testkit::unique_prefix("bench-confirms");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let body = vec![b'x'; 256];
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(format!(
        "limits: RabbitMQ confirmed publishes, {in_flight} in flight"
    ));
    let ticker = progress.follow(done.clone(), None);
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    while started.elapsed() < window {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        pending.push_back(confirm);
        while pending.len() >= in_flight {
            if let Some(confirm) = pending.pop_front() {
                check(confirm.await?)?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    while let Some(confirm) = pending.pop_front() {
        check(confirm.await?)?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    ticker.abort();
    progress.finish(&format!("{rate:.0} confirmed/s"));
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "done".into()).await.ok();
    Ok(rate)
}

fn check(confirmation: Confirmation) -> anyhow::Result<()> {
    match confirmation {
        Confirmation::Ack(_) => Ok(()),
        other => anyhow::bail!("publish not confirmed: {other:?}"),
    }
}
