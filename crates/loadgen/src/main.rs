//! `loadgen`: the whole payment path under load, next to the machine's own limits.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/loadgen                       # the standard set (make bench)
//! BENCH_SECONDS=10 target/release/loadgen steady-50 spike
//! ```
//!
//! Scenarios (arguments; all when none): `limits`, `steady-50`, `steady-200`, `spike`,
//! `burst`, `ingest-spike`, `ingest-burst` (the spike and the burst with the consumers paused
//! while the webhooks are sent: the gateway's own figures), `duplicate-storm`, `pre-checkout`,
//! `slow-yookassa` (YooKassa answering after 10 s with 50 checkouts in flight while webhooks
//! arrive, next to the same webhooks with YooKassa quick), `flood` (10,000 unverified requests/s
//! at the gateway while YooKassa's notifications arrive at 50/s, next to the same webhooks
//! without the flood).
//! Writes `bench/results/<date>.json` and `.md` (`BENCH_OUT` changes the directory).

mod limits;
mod machine;
mod progress;
mod report;
mod scenario;
mod stats;

use std::time::Duration;

use scenario::Settings;

const STANDARD: [&str; 11] = [
    "limits",
    "steady-50",
    "steady-200",
    "spike",
    "burst",
    "ingest-spike",
    "ingest-burst",
    "duplicate-storm",
    "pre-checkout",
    "slow-yookassa",
    "flood",
];

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = env("BENCH_SECONDS", 60.0);
    let settings = Settings {
        seconds,
        users: env("BENCH_USERS", 1000),
        workers: env("BENCH_WORKERS", 1),
        syncs: env("BENCH_SYNCS", 1),
        concurrency: env("BENCH_CONCURRENCY", 256),
        spike: env("BENCH_SPIKE", 2000),
        spike_rate: env("BENCH_SPIKE_RATE", 1000.0),
        flood: env("BENCH_FLOOD", 300),
        drain: Duration::from_secs_f64(env("BENCH_DRAIN_SECONDS", 120.0)),
        log: env("BENCH_SERVICE_LOG", "warn".to_owned()),
    };
    let mut chosen: Vec<String> = std::env::args().skip(1).collect();
    if chosen.is_empty() {
        chosen = STANDARD.iter().map(|s| (*s).to_owned()).collect();
    }
    for name in &chosen {
        anyhow::ensure!(
            STANDARD.contains(&name.as_str()),
            "unknown scenario {name:?}; known: {}",
            STANDARD.join(", ")
        );
    }
    let started = std::time::Instant::now();
    let mut run = report::Run::new(&settings);
    // The limits come first so every figure has its ratio.
    run.limits = Some(limits::measure(env("BENCH_LIMIT_SECONDS", 5.0)).await?);
    for name in &chosen {
        eprintln!("\n== {name}");
        let outcome = match name.as_str() {
            "limits" => continue,
            "steady-50" => scenario::run_steady(&settings, name, 50.0, 1).await?,
            "steady-200" => scenario::run_steady(&settings, name, 200.0, 1).await?,
            "spike" => {
                scenario::run_burst(&settings, name, Some(settings.spike_rate), false).await?
            }
            "burst" => scenario::run_burst(&settings, name, None, false).await?,
            "ingest-spike" => {
                scenario::run_burst(&settings, name, Some(settings.spike_rate), true).await?
            }
            "ingest-burst" => scenario::run_burst(&settings, name, None, true).await?,
            "duplicate-storm" => {
                let storm = Settings {
                    seconds: (settings.seconds / 2.0).max(1.0),
                    ..settings.clone()
                };
                scenario::run_steady(&storm, name, 50.0, 5).await?
            }
            "pre-checkout" => scenario::run_pre_checkout(&settings).await?,
            "slow-yookassa" => {
                scenario::run_slow_yookassa(
                    &settings,
                    name,
                    Duration::from_millis(env("BENCH_SLOW_LATENCY_MS", 10_000)),
                    env("BENCH_SLOW_CHECKOUTS", 50),
                    env("BENCH_SLOW_RATE", 100.0),
                )
                .await?
            }
            "flood" => {
                scenario::run_flood(
                    &settings,
                    name,
                    env("BENCH_FLOOD_JUNK_RATE", 10_000.0),
                    env("BENCH_FLOOD_RATE", 50.0),
                )
                .await?
            }
            _ => unreachable!("checked above"),
        };
        run.scenarios.push(outcome);
    }
    run.wall_seconds = started.elapsed().as_secs_f64();
    let (json, markdown) =
        run.write(&std::env::var("BENCH_OUT").unwrap_or_else(|_| "bench/results".into()))?;
    println!("\n{}", run.markdown());
    eprintln!("wrote {} and {}", json.display(), markdown.display());
    Ok(())
}
