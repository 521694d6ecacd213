//! `reminders`: expiry reminders at scale (issue 22) — 100,000 subscriptions ending the same
//! day are scheduled with bounded memory, the reminders drain at Telegram's rate with no
//! duplicate, and a restart in the middle of each phase resumes where it stopped.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/reminders            # REMINDERS_SUBSCRIPTIONS=100000 REMINDERS_SEND_SECONDS=60
//! ```
//!
//! On a fresh PostgreSQL database (testkit): the subscriptions end in 20 hours, so with the
//! default offsets (`-3d,-1d,0,+3d`) each gets three reminder rows (the `-3d` one is already
//! more than the grace period past) and the `-1d` one is due at once. Phases, each timed with
//! this process's CPU (the scheduler and the sender run in it, as in the bot) and its peak RSS:
//! 1. scheduling, stopped halfway and started again with a new scheduler (a restart), which
//!    must resume from the cursor in `reminder_cursors`;
//! 2. dispatching the due reminders into the sending queue (`send_queue`);
//! 3. sending for `REMINDERS_SEND_SECONDS` through the Telegram emulator with its limits on
//!    (30 messages/s in all, about 1/s per chat), with the sender restarted halfway.
//!
//! Prints a Markdown report and writes it to `bench/results/<date>-reminders.md` (`BENCH_OUT`
//! changes the directory). Exits non-zero if a row is missing or a chat got a message twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bot::reminders::{Offsets, Reminders};
use bot::sender::{Sender, SenderConfig};
use frankenstein::client_reqwest::Bot as Api;
use sandbox::telegram::{self, TestUser};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's CPU time so far (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the stat line (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

/// A `/proc/self/status` figure in MiB (`VmRSS`, `VmHWM`).
fn memory_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn count(db: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .context("a count")?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// What one phase cost.
struct Phase {
    name: &'static str,
    seconds: f64,
    cpu_seconds: f64,
    rss_mib: f64,
    detail: String,
}

async fn phase<F, Fut>(name: &'static str, work: F) -> anyhow::Result<Phase>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    eprintln!("== {name}");
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let detail = work().await?;
    Ok(Phase {
        name,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
        rss_mib: memory_mib("VmRSS:"),
        detail,
    })
}

/// Schedules until the cursor has read every subscription; with `stop_after`, stops after
/// that many pages (a restart follows). Returns the pages read.
async fn schedule(reminders: &Reminders, stop_after: Option<u64>) -> anyhow::Result<u64> {
    let mut pages = 0;
    while stop_after.is_none_or(|n| pages < n) && reminders.schedule_page().await?.read > 0 {
        pages += 1;
    }
    Ok(pages)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: i64 = env("REMINDERS_SUBSCRIPTIONS", 100_000);
    let page: u64 = env("REMINDERS_PAGE", 1_000);
    let send_seconds: f64 = env("REMINDERS_SEND_SECONDS", 60.0);
    let db_handle = testkit::TestDb::new().await;
    let db = db_handle.conn.clone();
    let mut phases = Vec::new();

    phases.push(
        phase("seed", || async {
            db.execute_unprepared(&format!(
                "INSERT INTO users (telegram_id, username, first_name, language_code, created_at)
                 SELECT 50000000 + g, 'u' || g, 'User', CASE WHEN g % 5 = 0 THEN 'en' ELSE 'ru' END, now()
                 FROM generate_series(1, {n}) g;
                 INSERT INTO subscriptions (user_id, marzban_username, expires_at, data_limit_bytes,
                     status, subscription_url, synced_at, sync_error, created_at, updated_at)
                 SELECT id, 'tg_' || telegram_id, now() + interval '20 hours', NULL, 'active',
                     'https://vpn.example/sub/' || telegram_id, now(), NULL,
                     now() - interval '10 days', now() - interval '1 minute'
                 FROM users WHERE telegram_id > 50000000;"
            ))
            .await?;
            Ok(format!("{n} users and subscriptions ending in 20 hours"))
        })
        .await?,
    );

    let nudge = Arc::new(Notify::new());
    let scheduler =
        || Reminders::new(db.clone(), Offsets::default(), nudge.clone()).with_page(page);
    let half = (n as u64).div_ceil(page) / 2;
    phases.push(
        phase("schedule (restarted halfway)", || async {
            let first = schedule(&scheduler(), Some(half)).await?;
            // A restart: a new scheduler, only the cursor in the database remembers.
            let second = schedule(&scheduler(), None).await?;
            let rows = count(&db, "SELECT count(*) FROM reminders").await?;
            ensure!(
                rows == 3 * n,
                "expected {} reminder rows (3 per subscription), found {rows}",
                3 * n
            );
            Ok(format!(
                "{rows} reminder rows (3 per subscription), {first} + {second} pages of {page}"
            ))
        })
        .await?,
    );

    phases.push(
        phase("dispatch into the sending queue", || async {
            let reminders = scheduler();
            let mut pages = 0;
            while reminders.dispatch_page().await?.read > 0 {
                pages += 1;
            }
            let queued = count(&db, "SELECT count(*) FROM send_queue").await?;
            ensure!(queued == n, "expected {n} queued messages, found {queued}");
            Ok(format!("{queued} messages queued in {pages} pages"))
        })
        .await?,
    );

    let tg = telegram::spawn(telegram::Config {
        send_limits: Some(telegram::SendLimits::default()),
        ..telegram::Config::default()
    })
    .await?;
    for i in 1..=n {
        tg.add_user(&TestUser::new(50_000_000 + i, "User", "ru"));
    }
    let api = Api::new_url(format!("{}/bot{}", tg.api_url(), tg.token()));
    let run_sender = |seconds: f64| {
        let (api, db) = (api.clone(), db.clone());
        async move {
            let sender = Arc::new(Sender::new(api, db, SenderConfig::default()));
            let stop = CancellationToken::new();
            let task = tokio::spawn(sender.run(stop.clone()));
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            stop.cancel();
            task.await.ok();
        }
    };
    phases.push(
        phase("send through the Telegram emulator (restarted halfway)", || async {
            run_sender(send_seconds / 2.0).await;
            run_sender(send_seconds / 2.0).await;
            let sent = count(&db, "SELECT count(*) FROM send_queue WHERE status = 'sent'").await?;
            let counts = tg.message_counts();
            let delivered: usize = counts.values().sum();
            let twice = counts.values().filter(|c| **c > 1).count();
            ensure!(twice == 0, "{twice} chats got a reminder twice");
            Ok(format!(
                "{sent} sent ({:.1}/s), {delivered} delivered to {} chats, 0 twice, {} answered 429 by the emulator",
                sent as f64 / send_seconds,
                counts.len(),
                tg.rate_limited()
            ))
        })
        .await?,
    );

    let mut md = format!(
        "# Expiry reminders at scale ({})\n\n`target/release/reminders`: {n} subscriptions ending the same day, pages of {page}, {send_seconds} s of sending. CPU and RSS are this process's (the scheduler and the sender run in it, as in the bot); PostgreSQL's own time is not counted.\n\n| phase | wall s | CPU s | RSS MiB | result |\n|---|---:|---:|---:|---|\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    for p in &phases {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.0} | {} |\n",
            p.name, p.seconds, p.cpu_seconds, p.rss_mib, p.detail
        ));
    }
    md.push_str(&format!(
        "\nPeak RSS of the whole run: {:.0} MiB (the Telegram emulator, in this process, holds the {n} users).\n",
        memory_mib("VmHWM:")
    ));
    println!("\n{md}");
    let dir = std::env::var("BENCH_OUT").unwrap_or_else(|_| "bench/results".into());
    std::fs::create_dir_all(&dir)?;
    let path = format!(
        "{dir}/{}-reminders.md",
        chrono::Utc::now().format("%Y-%m-%d")
    );
    std::fs::write(&path, md)?;
    eprintln!("wrote {path}");
    tg.stop().await;
    Ok(())
}
