//! The Grafana dashboard (`deploy/grafana/*.json`) and the code cannot drift apart: every
//! metric a panel queries is a name some service defines (a string literal under
//! `crates/*/src`), and every histogram it reads by bucket gets explicit buckets from the
//! exporter (`*_seconds`, `*_ms`).

use std::path::{Path, PathBuf};

/// The services' metric name prefixes: a PromQL identifier starting with one is a metric.
const PREFIXES: [&str; 5] = [
    "gateway_",
    "payment_worker_",
    "messaging_",
    "marzban_sync_",
    "bot_",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// Every `expr` of every panel of every dashboard.
fn queries() -> Vec<(String, String)> {
    let mut dashboards = Vec::new();
    files(&workspace().join("deploy/grafana"), "json", &mut dashboards);
    assert!(!dashboards.is_empty(), "no dashboard under deploy/grafana");
    let mut out = Vec::new();
    for path in dashboards {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in doc["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let title = panel["title"].as_str().unwrap_or_default().to_owned();
                out.push((title, target["expr"].as_str().unwrap().to_owned()));
            }
        }
    }
    out
}

fn identifiers(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| !t.is_empty())
}

#[test]
fn every_metric_on_the_dashboard_is_emitted_by_the_code() {
    let mut sources = Vec::new();
    let crates = workspace().join("crates");
    for entry in std::fs::read_dir(&crates).unwrap().flatten() {
        let src = entry.path().join("src");
        if src.is_dir() {
            files(&src, "rs", &mut sources);
        }
    }
    let code: String = sources
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let defined = |name: &str| code.contains(&format!("\"{name}\""));

    let queries = queries();
    assert!(queries.len() > 10, "{queries:?}");
    for (title, expr) in queries {
        let metrics: Vec<&str> = identifiers(&expr)
            .filter(|t| PREFIXES.iter().any(|p| t.starts_with(p)))
            .collect();
        assert!(!metrics.is_empty(), "{title}: no metric of ours in {expr}");
        for metric in metrics {
            if defined(metric) {
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| metric.strip_suffix(s))
                .unwrap_or_else(|| panic!("{title}: {metric} is not defined in the code"));
            assert!(defined(base), "{title}: {base} is not defined in the code");
            if metric.ends_with("_bucket") {
                assert!(
                    base.ends_with("_seconds") || base.ends_with("_ms"),
                    "{title}: {base} has no explicit buckets (see service_kit::ops)"
                );
            }
        }
    }
}

#[test]
fn histograms_are_rendered_with_buckets() {
    let handle = service_kit::ops::metrics_handle();
    metrics::histogram!("dashboard_test_seconds").record(0.2);
    metrics::histogram!("dashboard_test_ms").record(1_500.0);
    let text = handle.render();
    assert!(
        text.contains("dashboard_test_seconds_bucket{le=\"0.25\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("dashboard_test_ms_bucket{le=\"2500\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("dashboard_test_ms_bucket{le=\"1000\"} 0"),
        "{text}"
    );
}
