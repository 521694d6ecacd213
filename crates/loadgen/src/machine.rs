//! Where the machine's CPU went during a scenario: the whole machine (`/proc/stat`),
//! PostgreSQL's and RabbitMQ's processes, and the load generator itself — so a figure can be
//! read against what else was running on the same cores.

use std::time::Instant;

use serde::Serialize;

/// Linux reports CPU time in ticks of 1/100 s on every mainstream configuration.
const TICK: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    at: Instant,
    busy: f64,
    postgres: f64,
    rabbitmq: f64,
    loadgen: f64,
}

/// CPU seconds spent between a snapshot and now.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuSplit {
    pub wall_seconds: f64,
    pub cores: usize,
    /// Every process on the machine (non-idle time of all cores).
    pub machine_busy: f64,
    pub postgres: f64,
    pub rabbitmq: f64,
    pub loadgen: f64,
}

/// utime + stime of a `/proc/<pid>/stat` line, and its command name.
fn process_cpu(stat: &str) -> Option<(&str, f64)> {
    let open = stat.find('(')?;
    let (name, after) = stat[open + 1..].rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks / TICK))
}

pub fn snapshot() -> Snapshot {
    let busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            let v: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            Some(v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4)?)
        })
        .unwrap_or_default()
        / TICK;
    let (mut postgres, mut rabbitmq) = (0.0, 0.0);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let path = entry.path().join("stat");
            let Ok(stat) = std::fs::read_to_string(path) else {
                continue;
            };
            match process_cpu(&stat) {
                Some(("postgres", cpu)) => postgres += cpu,
                Some(("beam.smp", cpu)) => rabbitmq += cpu,
                _ => {}
            }
        }
    }
    let loadgen = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| process_cpu(&s).map(|(_, cpu)| cpu))
        .unwrap_or_default();
    Snapshot {
        at: Instant::now(),
        busy,
        postgres,
        rabbitmq,
        loadgen,
    }
}

impl Snapshot {
    pub fn since(&self) -> CpuSplit {
        let now = snapshot();
        CpuSplit {
            wall_seconds: now.at.duration_since(self.at).as_secs_f64(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            machine_busy: now.busy - self.busy,
            postgres: now.postgres - self.postgres,
            rabbitmq: now.rabbitmq - self.rabbitmq,
            loadgen: now.loadgen - self.loadgen,
        }
    }
}

/// `/proc/loadavg`'s three averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
