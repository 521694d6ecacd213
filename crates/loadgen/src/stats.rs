//! Latency percentiles.

use serde::Serialize;

/// Milliseconds: p50/p95/p99/max of `n` samples (nearest rank).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(mut samples: Vec<f64>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let r = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[r.clamp(1, samples.len()) - 1]
        };
        Some(Self {
            n: samples.len(),
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: samples[samples.len() - 1],
        })
    }

    /// `p50 / p95 / p99`.
    pub fn triple(this: Option<Self>) -> String {
        match this {
            Some(l) => format!("{} / {} / {}", ms(l.p50), ms(l.p95), ms(l.p99)),
            None => "–".to_owned(),
        }
    }
}

/// A millisecond figure with sensible precision.
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Unix microseconds now.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
