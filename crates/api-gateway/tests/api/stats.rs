//! `GET /api/stats` (admin token) and the payment log of `payment.created`, on PostgreSQL and
//! on SQLite (the single-process mode).

use domain::PaymentStatus;
use domain::entities::{payments, system_logs};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, SERVICE_TOKEN, TestApp, created_payment, sample, spawn_app, spawn_embedded_app,
};

async fn get_stats(app: &TestApp, query: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app.http.get(app.url(&format!("/api/stats{query}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn stats(app: &TestApp, query: &str) -> Value {
    let response = get_stats(app, query, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Creates a payment through the API, checks its `payment.created` log row, marks it paid
/// 1.5 s after creation with a 50.00 refund, and reads the figures back.
async fn created_logged_and_counted(app: &TestApp) {
    let payment = created_payment(app, "stats-1").await;
    let id: uuid::Uuid = payment["payment_id"].as_str().unwrap().parse().unwrap();
    let amount = payment["amount"]["minor"].as_i64().unwrap();

    let logs = system_logs::Entity::find()
        .filter(system_logs::Column::PaymentId.eq(id))
        .all(&app.db.conn)
        .await
        .unwrap();
    assert_eq!(logs.len(), 1);
    let log = &logs[0];
    assert_eq!(log.event_type, "payment.created");
    assert!(log.user_id.is_some());
    assert_eq!(log.provider, Some(payment_core::providers::yookassa::ID));
    assert_eq!(log.amount_minor, Some(amount));
    assert_eq!(log.currency.as_deref(), Some("RUB"));
    assert_eq!(log.status.as_deref(), Some("pending"));
    let metadata = log.metadata.as_ref().unwrap();
    assert_eq!(metadata["telegram_id"], 123_456);
    assert_eq!(metadata["tariff_code"], "month_1");
    assert_eq!(
        metadata["provider_payment_id"],
        payment["provider_payment_id"]
    );
    // Counted too (the recorder is shared by the tests of this process: at least this one).
    let created = sample(
        &app.metrics().await,
        "gateway_payments_created_total",
        &["provider=\"yookassa\"", "currency=\"RUB\""],
    );
    assert!(created >= 1.0, "{created}");

    let pending = stats(app, "?period=today").await;
    assert_eq!(
        pending["total"]["counts"],
        json!({"created": 1, "succeeded": 0, "failed": 0, "refunded": 0, "pending": 1})
    );
    assert_eq!(
        pending["total"]["conversion"],
        json!({"succeeded": 0, "created": 1, "basis_points": 0, "percent": "0.00"})
    );
    assert_eq!(pending["total"]["revenue"], json!([]));
    assert_eq!(pending["total"]["processing_ms"], Value::Null);
    let empty = json!({"numerator": 0, "denominator": 0, "basis_points": null, "percent": null});
    assert_eq!(
        pending["retention"],
        json!({
            "autopay": {"charges": 0, "succeeded": 0, "success": empty, "declines": {}},
            "churn": {"subscribers": 0, "churned": 0, "rate": empty},
        })
    );

    // What the worker would have done: paid 1.5 s after creation, 50.00 refunded since.
    let row = payments::Entity::find_by_id(id)
        .one(&app.db.conn)
        .await
        .unwrap()
        .unwrap();
    let mut paid: payments::ActiveModel = row.clone().into();
    paid.status = Set(PaymentStatus::PartiallyRefunded);
    paid.refunded_minor = Set(5000);
    paid.completed_at = Set(Some(row.created_at + chrono::Duration::milliseconds(1500)));
    paid.update(&app.db.conn).await.unwrap();
    let net = amount - 5000;
    let money = |minor: i64| json!({"minor": minor, "currency": "RUB", "value": format!("{}.{:02}", minor / 100, minor % 100)});
    let expected = json!({
        "counts": {"created": 1, "succeeded": 1, "failed": 0, "refunded": 1, "pending": 0},
        "conversion": {"succeeded": 1, "created": 1, "basis_points": 10000, "percent": "100.00"},
        "revenue": [{
            "currency": "RUB",
            "payments": 1,
            "gross": money(amount),
            "refunded": money(5000),
            "net": money(net),
            "average_check": money(amount),
        }],
        "processing_ms": {"count": 1, "p50": 1500, "p95": 1500},
        "new_paying_users": 1,
        "renewals": 0,
    });
    let all = stats(app, "").await;
    assert_eq!(all["from"], Value::Null);
    assert_eq!(all["total"], expected);
    assert_eq!(all["providers"], json!({"yookassa": expected}));

    let telegram = stats(app, "?period=30d&provider=telegram").await;
    assert_eq!(telegram["provider"], "telegram");
    assert_eq!(telegram["total"]["counts"]["created"], 0);
    assert_eq!(telegram["providers"], json!({}));

    let before = stats(app, "?to=2020-01-01").await;
    assert_eq!(before["to"], "2020-01-02T00:00:00Z");
    assert_eq!(before["total"]["counts"]["created"], 0);
}

#[tokio::test]
async fn created_payment_is_logged_and_counted_on_postgres() {
    created_logged_and_counted(&spawn_app(&[]).await).await;
}

#[tokio::test]
async fn created_payment_is_logged_and_counted_on_sqlite() {
    created_logged_and_counted(&spawn_embedded_app().await).await;
}

#[tokio::test]
async fn only_the_admin_token_reads_stats_and_bad_parameters_are_400() {
    let app = spawn_app(&[]).await;
    assert_eq!(get_stats(&app, "", None).await.status(), 401);
    assert_eq!(get_stats(&app, "", Some(SERVICE_TOKEN)).await.status(), 401);
    for query in [
        "?period=week",
        "?period=7d&from=2026-11-01",
        "?from=yesterday",
        "?from=2026-11-02&to=2026-11-01",
        "?provider=Pay%20Pal",
        "?limit=5",
    ] {
        let response = get_stats(&app, query, Some(ADMIN_TOKEN)).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_request", "{query}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let post = app
        .http
        .post(app.url("/api/stats"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET");
}
