//! Health, metrics, request ids and the OpenAPI document.

use crate::helpers::{sample, spawn_app};

#[tokio::test]
async fn health_reports_database_and_broker() {
    let app = spawn_app(&[]).await;
    let live = app.http.get(app.url("/health/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["broker"], "ok");
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
    let response = app.http.get(app.url("/health/live")).send().await.unwrap();
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
        ("/api/openapi.json", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
    ];
    assert_eq!(paths.len(), expected.len());
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
