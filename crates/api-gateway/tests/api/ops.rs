//! Health, metrics (on the ops port only), request ids and the OpenAPI document.

use std::time::Duration;

use futures::StreamExt;

use crate::helpers::{TestApp, created_payment, sample, spawn_app};

/// `GET url` (on either port).
async fn get(app: &TestApp, url: String) -> reqwest::Response {
    app.http.get(url).send().await.unwrap()
}

/// Polls the ops port's `/health/ready` until it answers 200 (the first round of checks runs
/// as the gateway starts); returns the body.
async fn ready_body(app: &TestApp) -> serde_json::Value {
    for _ in 0..100 {
        let ready = get(app, app.ops_url("/health/ready")).await;
        if ready.status() == 200 {
            return ready.json().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/health/ready never answered 200");
}

#[tokio::test]
async fn health_reports_database_and_broker_on_the_ops_port() {
    let app = spawn_app(&[]).await;
    assert_ne!(app.addr, app.ops_addr);
    let live = get(&app, app.ops_url("/health/live")).await;
    assert_eq!(live.status(), 200);
    let body = ready_body(&app).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["broker"], "ok");
    let metrics = get(&app, app.ops_url("/metrics")).await;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(
        sample(&text, "service_readiness_check_up", &["check=\"database\""]) >= 1.0,
        "{text}"
    );
}

#[tokio::test]
async fn the_public_port_has_no_health_or_metrics() {
    let app = spawn_app(&[]).await;
    let unknown: serde_json::Value = get(&app, app.url("/no/such/route"))
        .await
        .json()
        .await
        .unwrap();
    for path in [
        "/metrics",
        "/health/live",
        "/health/ready",
        "/health",
        "/metrics/",
    ] {
        let response = get(&app, app.url(path)).await;
        assert_eq!(response.status(), 404, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body, unknown, "{path} answers like any unknown route");
    }
    // And the ops port serves nothing else.
    let webhook = app
        .http
        .post(app.ops_url("/webhook/payment/yookassa"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 404);
}

#[tokio::test]
async fn a_burst_of_readiness_probes_is_answered_from_the_cache() {
    let app = spawn_app(&[]).await;
    ready_body(&app).await;
    let rounds_before = app.readiness_rounds();
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..1000)
        .map(|_| async {
            let response = get(&app, app.ops_url("/health/ready")).await;
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            status
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let rounds = app.readiness_rounds() - rounds_before;
    let elapsed = started.elapsed();
    println!("1,000 /health/ready probes in {elapsed:?}: {rounds} rounds of checks");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // One round every 2 s, whatever the number of probes (plus one for a round under way).
    let allowed = elapsed.as_secs() / 2 + 2;
    assert!(
        rounds <= allowed,
        "1,000 probes in {elapsed:?} ran {rounds} rounds of checks (allowed {allowed})"
    );
}

#[tokio::test]
async fn requests_are_counted_by_route_and_status_and_carry_an_id() {
    let app = spawn_app(&[]).await;
    let response = app
        .http
        .get(app.url("/api/payments/00000000-0000-0000-0000-000000000000"))
        .header("X-Request-Id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["x-request-id"], "req-abc-123");
    // Without one, the gateway makes one.
    let response = get(&app, app.url("/api/openapi.json")).await;
    assert!(!response.headers()["x-request-id"].is_empty());
    let missing = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let metrics = app.metrics().await;
    assert!(
        sample(
            &metrics,
            "gateway_http_requests_total",
            &[
                "route=\"/api/payments/{id}\"",
                "status=\"401\"",
                "method=\"GET\""
            ]
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "gateway_http_requests_total",
            &["route=\"unmatched\""]
        ) >= 1.0
    );
    assert!(
        metrics.contains("gateway_http_request_duration_seconds"),
        "latency recorded: {metrics}"
    );
}

#[tokio::test]
async fn openapi_document_describes_every_route() {
    let app = spawn_app(&[]).await;
    let response = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: serde_json::Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/webhook/payment/yookassa", "post"),
        ("/webhook/payment/crypto", "post"),
        ("/api/payment/providers", "get"),
        ("/api/payments", "post"),
        ("/api/payments/{id}", "get"),
        ("/api/payments/{id}/refund", "post"),
        ("/api/stats", "get"),
        ("/api/admin/grants", "post"),
        ("/api/admin/broadcasts", "post"),
        ("/api/admin/broadcasts/{id}", "get"),
        ("/api/admin/promos", "get"),
        ("/api/admin/promos", "post"),
        ("/api/admin/promos/{code}", "get"),
        ("/api/admin/promos/{code}/disable", "post"),
        ("/api/trials", "post"),
        ("/api/admin/users/{who}", "get"),
        ("/api/openapi.json", "get"),
    ];
    let methods: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(methods, expected.len());
    for (path, method) in expected {
        assert!(paths[path][method].is_object(), "{method} {path}");
    }
    // Every $ref points at a defined component.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/").skip(1) {
        let target = piece.split('"').next().unwrap();
        let (kind, name) = target.split_once('/').unwrap();
        assert!(doc["components"][kind][name].is_object(), "{target}");
    }
}

/// Every SQL statement the service sends is counted by kind (`db_statements_total`), which
/// the load generator turns into statements per payment.
#[tokio::test]
async fn statements_are_counted_by_kind() {
    let app = spawn_app(&[]).await;
    let count = |metrics: &str, kind: &str| {
        sample(
            metrics,
            "db_statements_total",
            &[&format!("kind=\"{kind}\"")],
        )
    };
    let before = app.metrics().await;
    created_payment(&app, "statements-1").await;
    let after = app.metrics().await;
    for kind in ["select", "insert"] {
        assert!(
            count(&after, kind) > count(&before, kind),
            "creating a payment sends {kind} statements: {after}"
        );
    }
}
