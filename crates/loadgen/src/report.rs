//! The run's figures as JSON and as a Markdown table, each rate also as a ratio to the
//! machine's limits and each latency also in durable commits (one-client insert time).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::limits::Limits;
use crate::scenario::{Outcome, Settings};
use crate::stats::{Latency, ms};

#[derive(Debug, Serialize)]
pub struct Run {
    pub date: String,
    pub commit: String,
    pub machine: String,
    pub settings: String,
    pub limits: Option<Limits>,
    pub scenarios: Vec<Outcome>,
    pub wall_seconds: f64,
    /// `/proc/loadavg` when the run started.
    pub load_average: String,
}

fn command(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Run {
    pub fn new(settings: &Settings) -> Self {
        let mut commit = command("git", &["rev-parse", "--short", "HEAD"]);
        if !command("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            commit.push_str(" (+ uncommitted changes)");
        }
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_default();
        Self {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            commit,
            machine: format!("{cores} cores, {model}"),
            settings: format!(
                "{:.0} s steady phases, {} users, {} worker(s), {} sync(s), {} webhooks in flight at most, release build",
                settings.seconds,
                settings.users,
                settings.workers,
                settings.syncs,
                settings.concurrency
            ),
            limits: None,
            scenarios: Vec::new(),
            wall_seconds: 0.0,
            load_average: crate::machine::load_average(),
        }
    }

    /// Writes `<dir>/<date>.json` and `<dir>/<date>.md`.
    pub fn write(&self, dir: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let dir = Path::new(dir);
        std::fs::create_dir_all(dir)?;
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let json = dir.join(format!("{day}.json"));
        let md = dir.join(format!("{day}.md"));
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")?;
        std::fs::write(&md, self.markdown())?;
        Ok((json, md))
    }

    /// `heading`, then a line per scenario with payments: its name and `items` (given the
    /// scenario and its number of payments).
    fn per_payment(
        &self,
        out: &mut String,
        heading: &str,
        items: impl Fn(&Outcome, f64) -> Vec<String>,
    ) {
        let _ = writeln!(out, "\n{heading}");
        for s in self.scenarios.iter().filter(|s| s.payments > 0) {
            let _ = writeln!(
                out,
                "- {}: {}",
                s.name,
                items(s, s.payments as f64).join(", ")
            );
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Measured {} at commit {} on {}; {}; the load generator, the services, the sandbox, \
             PostgreSQL and RabbitMQ all on this machine (load average {} at the start). Run took \
             {:.0} s.\n",
            self.date,
            self.commit,
            self.machine,
            self.settings,
            self.load_average,
            self.wall_seconds
        );
        let limits = self.limits.clone().unwrap_or_default();
        let commit_ms = if limits.pg_inserts_1 > 0.0 {
            1000.0 / limits.pg_inserts_1
        } else {
            0.0
        };
        let _ = writeln!(out, "| machine limit | rate |\n|---|---|");
        let _ = writeln!(
            out,
            "| PostgreSQL single-row durable INSERTs, 1 client | {:.0}/s ({:.2} ms per commit) |",
            limits.pg_inserts_1, commit_ms
        );
        let _ = writeln!(
            out,
            "| PostgreSQL single-row durable INSERTs, 32 clients | {:.0}/s |",
            limits.pg_inserts_32
        );
        let _ = writeln!(
            out,
            "| RabbitMQ persistent publishes confirmed, 1 in flight | {:.0}/s |",
            limits.amqp_confirms_1
        );
        let _ = writeln!(
            out,
            "| RabbitMQ persistent publishes confirmed, 256 in flight | {:.0}/s |\n",
            limits.amqp_confirms_256
        );
        let _ = writeln!(
            out,
            "| scenario | offered | payments | webhook ack ms p50 / p95 / p99 | end-to-end ms p50 / p95 / p99 | pre-checkout ms p50 / p95 / p99 | ingest webhooks/s (÷ PG 32) | sustained payments/s (÷ PG 32) | errors | lost | double |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
        for s in &self.scenarios {
            let ratio = |v: f64| {
                if limits.pg_inserts_32 > 0.0 {
                    format!("{v:.0} ({:.2})", v / limits.pg_inserts_32)
                } else {
                    format!("{v:.0}")
                }
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.name,
                s.offered,
                s.payments,
                Latency::triple(s.ack_ms),
                Latency::triple(s.e2e_ms),
                Latency::triple(s.pre_checkout_ms),
                if s.webhooks_sent > 0 {
                    ratio(s.ingest_per_s)
                } else {
                    "–".into()
                },
                ratio(s.sustained_per_s),
                s.errors,
                s.lost,
                s.double
            );
        }
        let _ = writeln!(
            out,
            "\nIn durable commits (÷ {:.2} ms, one client's INSERT): ",
            commit_ms
        );
        for s in &self.scenarios {
            if let Some(e2e) = s.e2e_ms
                && commit_ms > 0.0
            {
                let _ = writeln!(
                    out,
                    "- {}: end-to-end p50 ≈ {:.0} commits, p99 ≈ {:.0} commits{}",
                    s.name,
                    e2e.p50 / commit_ms,
                    e2e.p99 / commit_ms,
                    s.ack_ms.map_or(String::new(), |a| format!(
                        "; ack p99 ≈ {:.1} commits",
                        a.p99 / commit_ms
                    ))
                );
            }
        }
        let _ = writeln!(
            out,
            "\n| scenario | service | idle RSS MiB | peak RSS MiB | CPU s |\n|---|---|---|---|---|"
        );
        for s in &self.scenarios {
            for u in &s.services {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {:.1} | {:.1} |",
                    s.name, u.name, u.idle_rss_mib, u.peak_rss_mib, u.cpu_seconds
                );
            }
        }
        let _ = writeln!(
            out,
            "\nWhere the CPU went, load start → last activation (CPU seconds; `other` is everything \
             else on the machine, e.g. other builds; the load average is at the scenario's end):\n\n\
             | scenario | wall s | machine busy (of cores × wall) | our 4 services | sandbox | PostgreSQL | RabbitMQ | load generator | other | load average |\n\
             |---|---|---|---|---|---|---|---|---|---|"
        );
        for s in &self.scenarios {
            let services: f64 = s
                .services
                .iter()
                .filter(|u| u.name != "sandbox")
                .map(|u| u.cpu_seconds)
                .sum();
            let sandbox: f64 = s
                .services
                .iter()
                .filter(|u| u.name == "sandbox")
                .map(|u| u.cpu_seconds)
                .sum();
            let c = s.cpu;
            let other = c.machine_busy - services - sandbox - c.postgres - c.rabbitmq - c.loadgen;
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} (of {:.1}) | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                s.name,
                c.wall_seconds,
                c.machine_busy,
                c.wall_seconds * c.cores as f64,
                services,
                sandbox,
                c.postgres,
                c.rabbitmq,
                c.loadgen,
                other.max(0.0),
                s.load_average
            );
        }
        let _ = writeln!(
            out,
            "\nPostgreSQL per payment (the cluster's database, `pg_stat_database`; statements: \
             the services' own `db_statements_total`, `BEGIN`/`COMMIT` not counted): {}",
            self.scenarios
                .iter()
                .filter(|s| s.payments > 0)
                .map(|s| {
                    let n = s.payments as f64;
                    let p = &s.postgres;
                    format!(
                        "{} {:.1} statements, {:.1} commits, {:.1} rows inserted, {:.1} updated, {:.1} deleted",
                        s.name,
                        p.statements as f64 / n,
                        p.commits as f64 / n,
                        p.rows_inserted as f64 / n,
                        p.rows_updated as f64 / n,
                        p.rows_deleted as f64 / n
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        );
        self.per_payment(
            &mut out,
            "Statements per payment, by service (`db_statements_total`):",
            |s, n| {
                s.postgres
                    .statements_by_service
                    .iter()
                    .map(|(service, count)| format!("{service} {:.1}", *count as f64 / n))
                    .collect()
            },
        );
        self.per_payment(
            &mut out,
            "Rows written per payment, by table (`pg_stat_user_tables`: inserted + updated + \
             deleted):",
            |s, n| {
                s.postgres
                    .tables
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {:.1} ({:.1} + {:.1} + {:.1})",
                            t.table,
                            t.written() as f64 / n,
                            t.inserted as f64 / n,
                            t.updated as f64 / n,
                            t.deleted as f64 / n
                        )
                    })
                    .collect()
            },
        );
        for s in &self.scenarios {
            if let (Some(baseline), Some(flood)) = (s.ack_ms_baseline, &s.flood) {
                let _ = writeln!(
                    out,
                    "\n{}: webhook ack ms p50 / p95 / p99 under the flood {} (max {}), without it {} \
                     (max {}); junk offered {:.0}/s for {:.1} s, answered {} ({:.0}/s): 403 {}, \
                     401 {}, 429 {}, other {}; gateway RSS {:.1} MiB before the flood, {:.1} after, \
                     peak {:.1}.",
                    s.name,
                    Latency::triple(s.ack_ms),
                    s.ack_ms.map_or("–".into(), |a| ms(a.max)),
                    Latency::triple(Some(baseline)),
                    ms(baseline.max),
                    flood.offered_per_s,
                    flood.seconds,
                    flood.sent,
                    flood.sent_per_s,
                    flood.forbidden_403,
                    flood.bad_signature_401,
                    flood.limited_429,
                    flood.other,
                    flood.gateway_rss_before_mib,
                    flood.gateway_rss_after_mib,
                    flood.gateway_peak_rss_mib,
                );
                continue;
            }
            if let Some(baseline) = s.ack_ms_baseline {
                let (done, failed) = s.slow_checkouts.unwrap_or_default();
                let _ = writeln!(
                    out,
                    "\n{}: webhook ack ms p50 / p95 / p99 with YooKassa slow {} (max {}), with \
                     YooKassa quick {} (max {}); {done} slow checkouts finished, {failed} failed.",
                    s.name,
                    Latency::triple(s.ack_ms),
                    s.ack_ms.map_or("–".into(), |a| ms(a.max)),
                    Latency::triple(Some(baseline)),
                    ms(baseline.max),
                );
            }
        }
        let _ = writeln!(
            out,
            "\nGateway create (`POST /api/payments`, incl. the YooKassa call) ms p50 / p99: {}",
            self.scenarios
                .iter()
                .filter_map(|s| s.create_ms.map(|c| format!(
                    "{} {} / {}",
                    s.name,
                    ms(c.p50),
                    ms(c.p99)
                )))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let _ = writeln!(
            out,
            "\nDefinitions: webhook ack = the gateway's answer to a YooKassa notification the load \
             generator POSTs (spike and burst: counted from when it was due). End-to-end = that \
             webhook sent → the activation message (the QR code with the link) received by the \
             Telegram emulator, both clocks on this machine; for the pre-checkout flood, the user \
             paying → activation. Sustained = payments activated ÷ (first webhook → last \
             activation). Lost = paid, no activation within the drain time; double = activation \
             messages beyond one per payment. Each figure is also given as a ratio to the \
             machine limits above (÷ PG 32 = ÷ PostgreSQL's 32-client insert rate)."
        );
        out
    }
}
