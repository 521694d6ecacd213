//! `GET /api/payment/providers`, `POST /api/payments` (with Idempotency-Key) and
//! `GET /api/payments/{id}`.

use std::time::Duration;

use domain::PaymentStatus;
use domain::entities::users;
use messaging::Envelope;
use messaging::events::PaymentCreated;
use sandbox::yookassa::Fault;
use sea_orm::{ConnectionTrait, EntityTrait};

use crate::helpers::{ADMIN_TOKEN, CREATE_BODY, SERVICE_TOKEN, created_payment, spawn_app};

fn creates(app: &crate::helpers::TestApp) -> usize {
    app.yookassa
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v3/payments")
        .count()
}

async fn providers_of(app: &crate::helpers::TestApp) -> serde_json::Value {
    app.http
        .get(app.url("/api/payment/providers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn providers_lists_the_enabled_ones() {
    let app = spawn_app(&[]).await;
    let body = providers_of(&app).await;
    assert_eq!(
        body,
        serde_json::json!({"providers": [{
            "id": "yookassa",
            "title": "YooKassa",
            "currencies": ["RUB"],
            "capabilities": ["payments", "webhooks", "refunds", "autopay"]
        }, {
            "id": "crypto",
            "title": "USDT (TRC20)",
            "currencies": ["USDT"],
            "capabilities": ["payments", "webhooks"]
        }]})
    );

    // Without its notice secret the crypto provider takes payments but no webhooks.
    let quiet = spawn_app(&[("CRYPTO_WEBHOOK_SECRET", "")]).await;
    let body = providers_of(&quiet).await;
    assert_eq!(
        body["providers"][1]["capabilities"],
        serde_json::json!(["payments"])
    );

    let none = spawn_app(&[
        ("YOOKASSA_SHOP_ID", ""),
        ("YOOKASSA_SECRET_KEY", ""),
        ("CRYPTO_WALLET_ADDRESS", ""),
    ])
    .await;
    let body = providers_of(&none).await;
    assert_eq!(body, serde_json::json!({"providers": []}));
}

#[tokio::test]
async fn create_stores_a_pending_payment_with_its_event() {
    let app = spawn_app(&[]).await;
    let response = app.create_payment("create-1", CREATE_BODY).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: serde_json::Value = response.json().await.unwrap();
    assert_eq!(created["status"], "pending");
    assert_eq!(created["provider"], "yookassa");
    assert_eq!(created["tariff_code"], "month_1");
    assert_eq!(created["telegram_id"], 123456);
    assert_eq!(
        created["amount"],
        serde_json::json!({"minor": 19900, "currency": "RUB", "value": "199.00"})
    );
    assert_eq!(created["confirmation"]["type"], "redirect");
    let url = created["confirmation"]["url"].as_str().unwrap();
    assert_eq!(created["confirmation_url"], url);
    let id = created["payment_id"].as_str().unwrap();
    assert_eq!(location, format!("/api/payments/{id}"));

    // Stored pending, with the provider's id, and the user upserted.
    let rows = app.payments().await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.id.to_string(), id);
    assert_eq!(row.status, PaymentStatus::Pending);
    assert_eq!(row.amount_minor, 19_900);
    assert_eq!(row.idempotency_key, "api:create-1");
    let provider_payment_id = row.provider_payment_id.clone().unwrap();
    assert_eq!(created["provider_payment_id"], provider_payment_id.as_str());
    let at_provider = app
        .yookassa
        .payment(&provider_payment_id)
        .expect("at the emulator");
    assert_eq!(at_provider["metadata"]["payment_id"], id);
    let user = users::Entity::find_by_id(row.user_id)
        .one(&app.db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (user.telegram_id, user.username.as_deref()),
        (123456, Some("alice"))
    );

    // payment.created in the outbox, same transaction.
    let outbox = app.outbox_with_key("payment.created").await;
    assert_eq!(outbox.len(), 1);
    let event: PaymentCreated = Envelope::from_json(outbox[0].envelope.as_bytes())
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(event.payment.payment_id, row.id);
    assert_eq!(event.payment.telegram_id, 123456);
    assert_eq!(event.payment.tariff_code, "month_1");
    assert_eq!(
        (event.payment.amount_minor, event.payment.currency.as_str()),
        (19_900, "RUB")
    );

    // GET returns the same state.
    let fetched: serde_json::Value = app
        .http
        .get(app.url(&location))
        .bearer_auth(SERVICE_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, created);

    // A second payment of the same user reuses the user row.
    let other = app
        .create_payment(
            "create-2",
            r#"{"telegram_id":123456,"tariff_code":"month_3","provider":"yookassa"}"#,
        )
        .await;
    assert_eq!(other.status(), 201);
    let rows = app.payments().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].user_id, rows[1].user_id);
}

#[tokio::test]
async fn replay_returns_the_stored_response_byte_for_byte() {
    let app = spawn_app(&[]).await;
    let first = app.create_payment("replay-1", CREATE_BODY).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = first.bytes().await.unwrap();

    // Same request; other whitespace and key order are the same request.
    let reordered = r#"{ "username":"alice", "provider":"yookassa","tariff_code":"month_1","telegram_id":123456 }"#;
    for body in [CREATE_BODY, reordered] {
        let again = app.create_payment("replay-1", body).await;
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.bytes().await.unwrap(), first);
    }
    assert_eq!(app.payments().await.len(), 1);
    assert_eq!(creates(&app), 1, "the provider was asked once");
    assert_eq!(app.outbox_with_key("payment.created").await.len(), 1);

    // Keys are kept at least 24 h: a day-old key still replays.
    app.db
        .conn
        .execute_unprepared("UPDATE payments SET created_at = now() - interval '25 hours'")
        .await
        .unwrap();
    let later = app.create_payment("replay-1", CREATE_BODY).await;
    assert_eq!(later.status(), 201);
    assert_eq!(later.bytes().await.unwrap(), first);
}

#[tokio::test]
async fn same_key_with_another_body_is_422() {
    let app = spawn_app(&[]).await;
    created_payment(&app, "mismatch-1").await;
    let other = r#"{"telegram_id":123456,"tariff_code":"month_12","provider":"yookassa"}"#;
    let response = app.create_payment("mismatch-1", other).await;
    assert_eq!(response.status(), 422);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "idempotency_key_reused");
    assert_eq!(app.payments().await.len(), 1);
    assert_eq!(creates(&app), 1);
}

#[tokio::test]
async fn same_key_while_in_flight_is_409() {
    let app = spawn_app(&[]).await;
    app.yookassa
        .push_fault(Fault::slow(Duration::from_millis(1500)), 1);
    let first = app.create_payment("inflight-1", CREATE_BODY);
    let second = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        app.create_payment("inflight-1", CREATE_BODY).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(second.status(), 409);
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["error"], "request_in_flight");
    assert_eq!(first.status(), 201);
    let first = first.bytes().await.unwrap();

    let replay = app.create_payment("inflight-1", CREATE_BODY).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.bytes().await.unwrap(), first);
    assert_eq!(app.payments().await.len(), 1);
}

#[tokio::test]
async fn the_service_token_is_required() {
    let app = spawn_app(&[]).await;
    let request = |token: Option<&str>| {
        let mut r = app
            .http
            .post(app.url("/api/payments"))
            .header("Idempotency-Key", "auth-1")
            .header("Content-Type", "application/json")
            .body(CREATE_BODY);
        if let Some(token) = token {
            r = r.bearer_auth(token);
        }
        r.send()
    };
    for token in [None, Some("wrong"), Some(ADMIN_TOKEN)] {
        let response = request(token).await.unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let response = app
        .http
        .get(app.url(&format!("/api/payments/{}", uuid::Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(app.payments().await.is_empty());

    let unconfigured = spawn_app(&[("API_SERVICE_TOKEN", "")]).await;
    let response = unconfigured.create_payment("auth-2", CREATE_BODY).await;
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn bad_requests_get_clear_answers() {
    let app = spawn_app(&[]).await;
    let error = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        (
            status,
            body["error"].as_str().unwrap().to_owned(),
            body["message"].as_str().unwrap().to_owned(),
        )
    };

    let (status, code, message) = error(
        app.create_payment(
            "bad-1",
            r#"{"telegram_id":1,"tariff_code":"month_1","provider":"yookassa","promo":"x"}"#,
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "invalid_json"));
    assert!(message.contains("unknown field `promo`"), "{message}");

    let (status, code, message) =
        error(app.create_payment("bad-2", r#"{"telegram_id":"1"}"#).await).await;
    assert_eq!((status, code.as_str()), (400, "invalid_json"));
    assert!(message.contains("invalid type"), "{message}");

    let (status, code, _) = error(
        app.create_payment(
            "bad-3",
            r#"{"telegram_id":1,"tariff_code":"month_99","provider":"yookassa"}"#,
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (422, "unprocessable"));

    let (status, _, message) = error(
        app.create_payment(
            "bad-4",
            r#"{"telegram_id":1,"tariff_code":"month_1","provider":"paypal"}"#,
        )
        .await,
    )
    .await;
    assert_eq!(status, 422);
    assert!(message.contains("paypal"), "{message}");

    let (status, _, message) = error(
        app.create_payment(
            "bad-5",
            r#"{"telegram_id":-5,"tariff_code":"month_1","provider":"yookassa"}"#,
        )
        .await,
    )
    .await;
    assert_eq!(status, 422);
    assert!(message.contains("telegram_id"), "{message}");

    let no_key = app
        .http
        .post(app.url("/api/payments"))
        .bearer_auth(SERVICE_TOKEN)
        .header("Content-Type", "application/json")
        .body(CREATE_BODY)
        .send()
        .await
        .unwrap();
    let (status, _, message) = error(no_key).await;
    assert_eq!(status, 400);
    assert!(message.contains("Idempotency-Key"), "{message}");

    let bad_key = app.create_payment("has space", CREATE_BODY).await;
    assert_eq!(bad_key.status(), 400);

    let text = app
        .http
        .post(app.url("/api/payments"))
        .bearer_auth(SERVICE_TOKEN)
        .header("Idempotency-Key", "bad-6")
        .header("Content-Type", "text/plain")
        .body(CREATE_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 415);

    let huge = format!(
        r#"{{"telegram_id":1,"tariff_code":"{}","provider":"yookassa"}}"#,
        "m".repeat(70_000)
    );
    let (status, code, _) = error(app.create_payment("bad-7", &huge).await).await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));

    // Failed attempts store nothing: the same key may then be used for a good request.
    assert!(app.payments().await.is_empty());
    assert_eq!(app.create_payment("bad-1", CREATE_BODY).await.status(), 201);
}

/// No definite answer from YooKassa: the intent row stays, unfinished (the marker
/// reconciliation looks for), and no `payment.created` is announced; a repeat of the key asks
/// YooKassa again for the same payment id and finishes the same row.
#[tokio::test]
async fn provider_failures_leave_an_intent_that_a_retry_of_the_key_finishes() {
    let app = spawn_app(&[]).await;
    app.yookassa.push_fault(Fault::InternalError, 2);
    let response = app.create_payment("flaky-1", CREATE_BODY).await;
    assert_eq!(response.status(), 504);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "provider_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("same Idempotency-Key"),
        "{body}"
    );
    let rows = app.payments().await;
    assert_eq!(rows.len(), 1);
    let intent = &rows[0];
    assert_eq!(intent.status, PaymentStatus::Pending);
    assert_eq!(intent.provider_payment_id, None);
    assert_eq!(intent.metadata["gateway_creation"], "in_progress");
    assert_eq!(intent.expires_at, None);
    assert_eq!(
        intent.next_check_at,
        Some(intent.created_at + chrono::Duration::minutes(5))
    );
    assert!(app.outbox_with_key("payment.created").await.is_empty());

    let retry = app.create_payment("flaky-1", CREATE_BODY).await;
    assert_eq!(retry.status(), 201);
    let created: serde_json::Value = retry.json().await.unwrap();
    assert_eq!(created["payment_id"], intent.id.to_string());
    let rows = app.payments().await;
    assert_eq!(rows.len(), 1);
    let done = &rows[0];
    assert_eq!(
        done.provider_payment_id.as_deref(),
        created["provider_payment_id"].as_str()
    );
    assert!(done.metadata.get("gateway_creation").is_none());
    assert_eq!(done.next_check_at, None);
    assert_eq!(app.outbox_with_key("payment.created").await.len(), 1);
    assert_eq!(app.yookassa.payments().len(), 1);
}

/// YooKassa made the payment but both answers were lost (500 after processing): the retry of
/// the key asks again under the same idempotence key and gets that payment, not a second one.
#[tokio::test]
async fn a_lost_answer_is_recovered_with_the_same_provider_payment() {
    let app = spawn_app(&[]).await;
    app.yookassa
        .push_fault(Fault::InternalErrorAfterProcessing, 2);
    let response = app.create_payment("lost-1", CREATE_BODY).await;
    assert_eq!(response.status(), 504);
    assert_eq!(app.yookassa.payments().len(), 1, "YooKassa made it");
    let retry = app.create_payment("lost-1", CREATE_BODY).await;
    assert_eq!(retry.status(), 201);
    let created: serde_json::Value = retry.json().await.unwrap();
    let at_provider = app.yookassa.payments();
    assert_eq!(at_provider.len(), 1, "no second payment at YooKassa");
    assert_eq!(created["provider_payment_id"], at_provider[0]["id"]);
    let keys: std::collections::HashSet<_> = app
        .yookassa
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v3/payments")
        .map(|r| r.idempotence_key)
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "one idempotence key for every attempt: {keys:?}"
    );
}

/// The client gives up (timeout) while YooKassa is slow; its retry with the same
/// `Idempotency-Key` gets the same payment — one payment at YooKassa, one row, one event.
#[tokio::test]
async fn a_retry_after_a_client_timeout_returns_the_same_provider_payment() {
    let app = spawn_app(&[]).await;
    app.yookassa.set_latency(Duration::from_secs(2));
    let impatient = app
        .http
        .post(app.url("/api/payments"))
        .bearer_auth(SERVICE_TOKEN)
        .header("Idempotency-Key", "timeout-1")
        .header("Content-Type", "application/json")
        .body(CREATE_BODY)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(impatient.unwrap_err().is_timeout());

    // Retries: 409 while the first attempt is still running here, then the payment.
    let mut answer = None;
    for _ in 0..100 {
        let retry = app.create_payment("timeout-1", CREATE_BODY).await;
        match retry.status().as_u16() {
            409 => tokio::time::sleep(Duration::from_millis(100)).await,
            201 => {
                answer = Some(retry.json::<serde_json::Value>().await.unwrap());
                break;
            }
            other => panic!("unexpected {other}: {}", retry.text().await.unwrap()),
        }
    }
    let created = answer.expect("the retry got the payment");
    let at_provider = app.yookassa.payments();
    assert_eq!(
        at_provider.len(),
        1,
        "one payment created at YooKassa, not two"
    );
    assert_eq!(created["provider_payment_id"], at_provider[0]["id"]);
    let rows = app.payments().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(created["payment_id"], rows[0].id.to_string());
    assert_eq!(app.outbox_with_key("payment.created").await.len(), 1);
    app.yookassa.set_latency(Duration::ZERO);
    let again = app.create_payment("timeout-1", CREATE_BODY).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
}

/// A definite refusal (here a tampered amount) marks the intent failed and becomes the key's
/// answer: a repeat gets the same error without asking YooKassa again; a new key may try.
#[tokio::test]
async fn a_provider_refusal_is_stored_as_the_answer_of_the_key() {
    let app = spawn_app(&[]).await;
    app.yookassa.push_fault(
        Fault::WrongAmount {
            amount: sandbox::yookassa::Amount {
                value: "1.00".into(),
                currency: "RUB".into(),
            },
        },
        1,
    );
    let refused = app.create_payment("refused-1", CREATE_BODY).await;
    assert_eq!(refused.status(), 502);
    let first = refused.text().await.unwrap();
    let rows = app.payments().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, PaymentStatus::Failed);
    assert_eq!(rows[0].metadata["gateway_creation"], "refused");
    assert_eq!(rows[0].next_check_at, None);
    assert!(app.outbox_with_key("payment.created").await.is_empty());

    let asked = creates(&app);
    let again = app.create_payment("refused-1", CREATE_BODY).await;
    assert_eq!(again.status(), 502);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), first);
    assert_eq!(creates(&app), asked, "not asked again");
    assert_eq!(
        app.create_payment("refused-2", CREATE_BODY).await.status(),
        201
    );
}

#[tokio::test]
async fn get_unknown_or_malformed_id_is_404() {
    let app = spawn_app(&[]).await;
    for id in [uuid::Uuid::now_v7().to_string(), "not-a-uuid".to_owned()] {
        let response = app
            .http
            .get(app.url(&format!("/api/payments/{id}")))
            .bearer_auth(SERVICE_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }
}

#[tokio::test]
async fn crypto_checkout_reserves_a_unique_amount() {
    let app = spawn_app(&[(
        "CRYPTO_WALLET_ADDRESS",
        "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE",
    )])
    .await;
    let body = |telegram_id: i64| {
        format!(r#"{{"telegram_id":{telegram_id},"tariff_code":"month_1","provider":"crypto"}}"#)
    };
    let first = app.create_payment("crypto-1", &body(1001)).await;
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    let second: serde_json::Value = app
        .create_payment("crypto-2", &body(1002))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["confirmation"]["type"], "transfer");
    assert_eq!(
        first["confirmation"]["address"],
        "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE"
    );
    assert!(first["expires_at"].is_string());
    let amounts: Vec<i64> = [&first, &second]
        .iter()
        .map(|p| p["amount"]["minor"].as_i64().unwrap())
        .collect();
    for amount in &amounts {
        // 2.50 USDT plus a tag of 1..=MAX_TAG micro-USDT.
        let tag = amount - 2_500_000;
        assert!(
            (1..=payment_core::providers::crypto::MAX_TAG).contains(&tag),
            "{amount}"
        );
    }
    assert_ne!(
        amounts[0], amounts[1],
        "each invoice asks for its own amount"
    );
    let invoices = domain::entities::crypto_invoices::Entity::find()
        .all(&app.db.conn)
        .await
        .unwrap();
    assert_eq!(invoices.len(), 2);
    let events = app.outbox_with_key("payment.created").await;
    assert_eq!(events.len(), 2);
    let replay = app.create_payment("crypto-1", &body(1001)).await;
    assert_eq!(replay.json::<serde_json::Value>().await.unwrap(), first);
}
