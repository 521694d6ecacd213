//! `POST /api/payments/{id}/refund`: admin token, provider refund, `refunds` row, and a notice
//! for the worker (inbox + `provider.notification.yookassa` outbox row).

use domain::RefundStatus;
use domain::entities::refunds;
use sea_orm::{ConnectionTrait, EntityTrait};

use crate::helpers::{ADMIN_TOKEN, SERVICE_TOKEN, TestApp, created_payment, spawn_app};

/// A payment the payer paid and the worker marked succeeded.
async fn succeeded_payment(app: &TestApp, key: &str) -> (String, String) {
    let payment = created_payment(app, key).await;
    let id = payment["payment_id"].as_str().unwrap().to_owned();
    let provider_payment_id = payment["provider_payment_id"].as_str().unwrap().to_owned();
    app.yookassa.pay(&provider_payment_id).expect("paid");
    app.db
        .conn
        .execute_unprepared(&format!(
            "UPDATE payments SET status = 'succeeded', completed_at = now() WHERE id = '{id}'"
        ))
        .await
        .unwrap();
    (id, provider_payment_id)
}

async fn refund(app: &TestApp, id: &str, token: &str, body: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url(&format!("/api/payments/{id}/refund")))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_owned());
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn partial_then_full_refund() {
    let app = spawn_app(&[]).await;
    let (id, provider_payment_id) = succeeded_payment(&app, "refund-1").await;

    let response = refund(
        &app,
        &id,
        ADMIN_TOKEN,
        Some(r#"{"amount_minor": 5000, "reason": "asked", "requested_by": "42"}"#),
    )
    .await;
    assert_eq!(response.status(), 200);
    let partial: serde_json::Value = response.json().await.unwrap();
    assert_eq!(partial["status"], "succeeded");
    assert_eq!(partial["amount"]["minor"], 5000);
    assert_eq!(partial["requested_by"], "admin:42");
    let provider_refund_id = partial["provider_refund_id"].as_str().unwrap().to_owned();

    let rows = refunds::Entity::find().all(&app.db.conn).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, RefundStatus::Succeeded);
    assert_eq!(
        rows[0].provider_refund_id.as_deref(),
        Some(provider_refund_id.as_str())
    );

    // The worker learns of it like of any YooKassa notification.
    let inbox = app.inbox().await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].source, "refund_api");
    assert_eq!(
        inbox[0].dedupe_key,
        format!("refund.succeeded:{provider_refund_id}")
    );
    assert_eq!(inbox[0].payment_id.map(|p| p.to_string()), Some(id.clone()));
    assert_eq!(
        app.outbox_with_key("provider.notification.yookassa")
            .await
            .len(),
        1
    );

    // YooKassa's own notification of the same refund is then a duplicate.
    let real = serde_json::json!({
        "type": "notification",
        "event": "refund.succeeded",
        "object": {
            "id": provider_refund_id,
            "payment_id": provider_payment_id,
            "status": "succeeded",
            "amount": {"value": "50.00", "currency": "RUB"},
            "created_at": "2026-11-29T10:00:00.000Z"
        }
    })
    .to_string();
    let ack: serde_json::Value = app.post_yookassa(&real, &[]).await.json().await.unwrap();
    assert_eq!(ack["duplicate"], true);

    // The rest (empty body = everything not yet refunded), although the worker has not yet
    // applied the first refund to the payment row.
    let response = refund(&app, &id, ADMIN_TOKEN, None).await;
    assert_eq!(response.status(), 200);
    let rest: serde_json::Value = response.json().await.unwrap();
    assert_eq!(rest["amount"]["minor"], 19_900 - 5000);
    assert_eq!(app.yookassa.refunds().len(), 2);

    // Nothing left.
    let response = refund(&app, &id, ADMIN_TOKEN, Some("{}")).await;
    assert_eq!(response.status(), 422);
    assert_eq!(app.yookassa.refunds().len(), 2);
}

#[tokio::test]
async fn refunds_need_the_admin_token_and_a_paid_payment() {
    let app = spawn_app(&[]).await;
    let payment = created_payment(&app, "refund-2").await;
    let id = payment["payment_id"].as_str().unwrap();
    for token in [SERVICE_TOKEN, "wrong"] {
        assert_eq!(refund(&app, id, token, None).await.status(), 401);
    }
    // Still pending.
    let response = refund(&app, id, ADMIN_TOKEN, None).await;
    assert_eq!(response.status(), 409);
    let response = refund(&app, &uuid::Uuid::now_v7().to_string(), ADMIN_TOKEN, None).await;
    assert_eq!(response.status(), 404);
    let response = refund(&app, id, ADMIN_TOKEN, Some(r#"{"amount": 1}"#)).await;
    assert_eq!(response.status(), 400);
    assert!(
        refunds::Entity::find()
            .all(&app.db.conn)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_refund_the_provider_refuses_is_recorded_as_failed() {
    let app = spawn_app(&[]).await;
    let (id, _) = succeeded_payment(&app, "refund-3").await;
    // More than was paid: refused before (or by) the provider.
    let response = refund(&app, &id, ADMIN_TOKEN, Some(r#"{"amount_minor": 99999}"#)).await;
    assert_eq!(response.status(), 422);
    let rows = refunds::Entity::find().all(&app.db.conn).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, RefundStatus::Failed);
    assert!(rows[0].failure_reason.is_some());
    assert_eq!(app.inbox_count().await, 0);
}

#[tokio::test]
async fn a_repeated_refund_key_returns_the_first_refund() {
    let app = spawn_app(&[]).await;
    let (id, _) = succeeded_payment(&app, "refund-4").await;
    let send = || {
        app.http
            .post(app.url(&format!("/api/payments/{id}/refund")))
            .bearer_auth(ADMIN_TOKEN)
            .header("Idempotency-Key", "admin-refund-1")
            .header("Content-Type", "application/json")
            .body(r#"{"amount_minor": 1000}"#)
            .send()
    };
    let first: serde_json::Value = send().await.unwrap().json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(first["refund_id"], again["refund_id"]);
    assert_eq!(app.yookassa.refunds().len(), 1);
}

/// The provider made the refund but its answer was lost (500 after processing, then 500):
/// the refund stays pending with a 504 that says how to settle it; repeating the request with
/// the same key asks the provider again under the same idempotence key, which answers with the
/// refund it made — one refund at the provider, recorded as succeeded, announced once.
#[tokio::test]
async fn a_refund_whose_result_was_lost_is_settled_by_repeating_the_key() {
    let app = spawn_app(&[]).await;
    let (id, _) = succeeded_payment(&app, "refund-lost").await;
    let send = || {
        app.http
            .post(app.url(&format!("/api/payments/{id}/refund")))
            .bearer_auth(ADMIN_TOKEN)
            .header("Idempotency-Key", "admin-refund-lost")
            .header("Content-Type", "application/json")
            .body(r#"{"amount_minor": 5000}"#)
            .send()
    };
    // YOOKASSA_MAX_ATTEMPTS is 2 in the test app: both attempts fail, the first after the
    // refund was made.
    app.yookassa
        .push_fault(sandbox::yookassa::Fault::InternalErrorAfterProcessing, 1);
    app.yookassa
        .push_fault(sandbox::yookassa::Fault::InternalError, 1);
    let lost = send().await.unwrap();
    assert_eq!(lost.status(), 504);
    let message = lost.text().await.unwrap();
    assert!(message.contains("same Idempotency-Key"), "{message}");
    let rows = refunds::Entity::find().all(&app.db.conn).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, RefundStatus::Pending);
    assert!(rows[0].provider_refund_id.is_none());
    assert_eq!(app.yookassa.refunds().len(), 1, "the provider made it");
    assert_eq!(app.inbox_count().await, 0);

    let settled = send().await.unwrap();
    assert_eq!(settled.status(), 200);
    assert_eq!(settled.headers()["idempotent-replayed"], "true");
    let view: serde_json::Value = settled.json().await.unwrap();
    assert_eq!(view["refund_id"], rows[0].id.to_string());
    assert_eq!(view["status"], "succeeded");
    assert_eq!(app.yookassa.refunds().len(), 1, "no second refund");
    let rows = refunds::Entity::find().all(&app.db.conn).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, RefundStatus::Succeeded);
    assert_eq!(
        rows[0].provider_refund_id.as_deref(),
        app.yookassa.refunds()[0]["id"].as_str()
    );
    assert_eq!(app.inbox_count().await, 1, "the worker is told once");

    // Settled now: a third repeat replays the stored answer without asking the provider.
    let requests = app.yookassa.requests().len();
    assert_eq!(send().await.unwrap().status(), 200);
    assert_eq!(app.yookassa.requests().len(), requests);
}

/// Two refunds of one payment at once with different keys, YooKassa slow: one proceeds, the
/// other gets 409 naming it (no provider call); one refund recorded, one made at YooKassa. A
/// refund asked after the first settled sees it (nothing left: 422).
#[tokio::test]
async fn concurrent_refunds_one_proceeds_the_other_gets_409() {
    let app = spawn_app(&[]).await;
    let (id, _) = succeeded_payment(&app, "refund-race").await;
    app.yookassa
        .set_latency(std::time::Duration::from_millis(1500));
    let send = |key: &'static str| {
        app.http
            .post(app.url(&format!("/api/payments/{id}/refund")))
            .bearer_auth(ADMIN_TOKEN)
            .header("Idempotency-Key", key)
            .send()
    };
    let (a, b) = tokio::join!(send("race-a"), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        send("race-b").await
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 409);
    let first: serde_json::Value = a.json().await.unwrap();
    let conflict: serde_json::Value = b.json().await.unwrap();
    assert_eq!(conflict["error"], "refund_in_progress");
    let message = conflict["message"].as_str().unwrap();
    assert!(
        message.contains(first["refund_id"].as_str().unwrap()),
        "{message}"
    );
    let rows = refunds::Entity::find().all(&app.db.conn).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, RefundStatus::Succeeded);
    assert_eq!(app.yookassa.refunds().len(), 1);

    app.yookassa.set_latency(std::time::Duration::ZERO);
    let later = send("race-c").await.unwrap();
    assert_eq!(later.status(), 422);
    assert_eq!(app.yookassa.refunds().len(), 1);
    assert_eq!(
        refunds::Entity::find()
            .all(&app.db.conn)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The partial unique index holds even without the gateway's check: a second pending refund
/// of one payment cannot be stored.
#[tokio::test]
async fn the_database_refuses_a_second_pending_refund() {
    let app = spawn_app(&[]).await;
    let (id, _) = succeeded_payment(&app, "refund-index").await;
    let insert = |key: &str| {
        format!(
            "INSERT INTO refunds (id, payment_id, provider, amount_minor, currency, status, \
             requested_by, idempotency_key, created_at, updated_at) VALUES ('{}', '{id}', \
             'yookassa', 100, 'RUB', 'pending', 'api', '{key}', now(), now())",
            uuid::Uuid::now_v7()
        )
    };
    app.db
        .conn
        .execute_unprepared(&insert("ix-1"))
        .await
        .unwrap();
    let second = app.db.conn.execute_unprepared(&insert("ix-2")).await;
    assert!(
        second
            .unwrap_err()
            .to_string()
            .contains("uq_refunds_one_pending")
    );
    app.db
        .conn
        .execute_unprepared("UPDATE refunds SET status = 'failed'")
        .await
        .unwrap();
    app.db
        .conn
        .execute_unprepared(&insert("ix-3"))
        .await
        .unwrap();
}

/// The refund row is its key's record: a repeat of the key asking for something else (here
/// another amount) is 422 `idempotency_key_reused`, not the first refund replayed.
#[tokio::test]
async fn a_refund_key_repeated_with_another_body_is_422() {
    let app = spawn_app(&[]).await;
    let (id, _) = succeeded_payment(&app, "refund-reuse").await;
    let send = |body: &'static str| {
        app.http
            .post(app.url(&format!("/api/payments/{id}/refund")))
            .bearer_auth(ADMIN_TOKEN)
            .header("Idempotency-Key", "admin-refund-reuse")
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        send(r#"{"amount_minor": 1000}"#).await.unwrap().status(),
        200
    );
    let other = send(r#"{"amount_minor": 2000}"#).await.unwrap();
    assert_eq!(other.status(), 422);
    let body: serde_json::Value = other.json().await.unwrap();
    assert_eq!(body["error"], "idempotency_key_reused");
    // Without an amount it asks for what was left when the key was first used: the same.
    let same = send(r#"{}"#).await.unwrap();
    assert_eq!(same.headers()["idempotent-replayed"], "true");
    assert_eq!(app.yookassa.refunds().len(), 1);
}
