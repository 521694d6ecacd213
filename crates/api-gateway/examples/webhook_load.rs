//! Load generator (a benchmark, not a test): starts the gateway in-process on a fresh
//! PostgreSQL database and RabbitMQ, fires valid YooKassa notifications (each about a new
//! object, so every one is stored: inbox + outbox rows) at a fixed rate, and reports the
//! accepted requests per second and the ack latency percentiles.
//!
//! ```text
//! cargo run --release -p api-gateway --example webhook_load
//! BENCH_RATE=2000 BENCH_SECONDS=10 BENCH_CONCURRENCY=256 cargo run --release -p api-gateway --example webhook_load
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_gateway::{Settings, start};
use service_kit::Shutdown;
use service_kit::runtime::Infra;
use service_kit::settings::Source;
use tokio::sync::Semaphore;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn notification(id: &str) -> String {
    serde_json::json!({
        "type": "notification",
        "event": "payment.succeeded",
        "object": {
            "id": id,
            "status": "succeeded",
            "paid": true,
            "amount": {"value": "199.00", "currency": "RUB"},
            "created_at": "2026-11-29T10:00:00.000Z",
            "test": true,
            "metadata": {}
        }
    })
    .to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate = env_or("BENCH_RATE", 1000).max(1);
    let seconds = env_or("BENCH_SECONDS", 10).max(1);
    let concurrency = env_or("BENCH_CONCURRENCY", 256).max(1) as usize;
    let workers = env_or("GATEWAY_WORKERS", 2);

    let db = testkit::TestDb::new().await;
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", db.url.clone()),
        ("AMQP_URL", testkit::amqp_url()),
        ("AMQP_PREFIX", testkit::unique_prefix("bench")),
        ("RUN_MIGRATIONS", "false".into()),
        ("GATEWAY_BIND", "127.0.0.1:0".into()),
        ("GATEWAY_OPS_BIND", "127.0.0.1:0".into()),
        ("GATEWAY_WORKERS", workers.to_string()),
        ("YOOKASSA_SHOP_ID", "100500".into()),
        ("YOOKASSA_SECRET_KEY", "bench".into()),
        ("YOOKASSA_ALLOWED_IPS", "127.0.0.1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = Settings::load(&Source::Map(vars))?;
    let infra = Infra::connect(api_gateway::SERVICE, &settings.common).await?;
    let shutdown = Shutdown::new();
    let gateway = start(&settings.gateway, &infra, shutdown.clone()).await?;
    let url = format!("http://{}/webhook/payment/yookassa", gateway.addr);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;

    // Warm-up: connections, prepared statements.
    for _ in 0..50 {
        let id = uuid::Uuid::new_v4().to_string();
        client.post(&url).body(notification(&id)).send().await?;
    }

    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let slots = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        // Open loop: request i is due at i / rate, whether or not earlier ones answered.
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = slots.clone().acquire_owned().await?;
        let (client, url) = (client.clone(), url.clone());
        let body = notification(&uuid::Uuid::new_v4().to_string());
        tasks.push(tokio::spawn(async move {
            // Latency counts from when the request was due, so queueing is not hidden.
            let result = client.post(&url).body(body).send().await;
            let latency = due.elapsed();
            drop(permit);
            (result.map(|r| r.status().as_u16()).unwrap_or(0), latency)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut accepted = 0u64;
    for task in tasks {
        let (status, latency) = task.await?;
        if status == 200 {
            accepted += 1;
        }
        latencies.push(latency);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "target {rate}/s for {seconds}s (concurrency {concurrency}, {workers} gateway workers)"
    );
    println!(
        "sent {total}, accepted {accepted} in {:.2}s = {:.0} accepted/s",
        elapsed.as_secs_f64(),
        accepted as f64 / elapsed.as_secs_f64()
    );
    println!(
        "ack latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 95.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    shutdown.cancel();
    gateway.server.task.await??;
    infra.stop().await;
    Ok(())
}
