//! Refunds of Telegram payments: Stars are refunded through the Bot API once however many
//! refunds are asked at the same time; fiat (a provider token) has no Bot API refund, so the
//! refund is recorded as made outside Telegram, Telegram is not called, and the worker still
//! moves the payment to `refunded` (`payment.refunded` revokes the access).

use std::sync::Arc;
use std::time::Duration;

use domain::entities::{payments, provider_notifications, refunds};
use domain::{PaymentStatus, RefundStatus};
use sandbox::telegram::{self, TestUser};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use service_kit::Shutdown;
use service_kit::inbox::{self, Notice};
use service_kit::settings::Source;

use crate::helpers::{ADMIN_TOKEN, TestApp, connect_beside, spawn_app};

const PROVIDER_TOKEN: &str = "381764678:TEST:sandbox";

async fn spawn_with_telegram(fiat: bool) -> (TestApp, telegram::Handle) {
    let tg = telegram::spawn(telegram::Config::default())
        .await
        .expect("emulator starts");
    let api_url = tg.api_url();
    let mut vars = vec![
        ("TELEGRAM_BOT_TOKEN", tg.token().to_owned()),
        ("TELEGRAM_API_URL", api_url),
    ];
    if fiat {
        vars.push(("TELEGRAM_PAYMENT_PROVIDER_TOKEN", PROVIDER_TOKEN.to_owned()));
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    (spawn_app(&vars).await, tg)
}

/// Calls a Bot API method as the bot would.
async fn bot(app: &TestApp, tg: &telegram::Handle, method: &str, params: Value) -> Value {
    let answer: Value = app
        .http
        .post(format!("{}/bot{}/{method}", tg.api_url(), tg.token()))
        .json(&params)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["ok"], true, "{method}: {answer}");
    answer["result"].clone()
}

async fn get_updates(app: &TestApp, tg: &telegram::Handle, offset: i64) -> Value {
    bot(
        app,
        tg,
        "getUpdates",
        json!({"offset": offset, "timeout": 5}),
    )
    .await
}

/// Creates a Telegram payment through the API, and the user pays its invoice in the emulator
/// (the test answers the pre-checkout query as the bot). The payment is then marked succeeded
/// (the worker's part) and the `successful_payment` update stored as the bot stores it.
async fn paid_telegram_payment(
    app: &TestApp,
    tg: &telegram::Handle,
    user: &TestUser,
    currency: &str,
) -> payments::Model {
    let body = json!({"telegram_id": user.id, "tariff_code": "month_1", "provider": "telegram",
        "currency": currency})
    .to_string();
    let response = app.create_payment(&format!("tg-{currency}"), &body).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let payload = created["confirmation"]["payload"]
        .as_str()
        .unwrap()
        .to_owned();
    let amount = created["amount"]["minor"].as_i64().unwrap();

    tg.send_text(user, "/start");
    let mut invoice = json!({"chat_id": user.id, "title": "1 month", "description": "VPN",
        "payload": payload, "currency": currency,
        "prices": [{"label": "1 month", "amount": amount}]});
    if currency != "XTR" {
        invoice["provider_token"] = json!(PROVIDER_TOKEN);
    }
    let message_id = bot(app, tg, "sendInvoice", invoice).await["message_id"]
        .as_i64()
        .unwrap();
    let bot_side = async {
        let mut offset = 0;
        loop {
            let updates = get_updates(app, tg, offset).await;
            for update in updates.as_array().unwrap() {
                offset = update["update_id"].as_i64().unwrap() + 1;
                if let Some(query) = update.get("pre_checkout_query") {
                    let id = query["id"].clone();
                    bot(
                        app,
                        tg,
                        "answerPreCheckoutQuery",
                        json!({"pre_checkout_query_id": id, "ok": true}),
                    )
                    .await;
                    return offset;
                }
            }
        }
    };
    let (paid, offset) = tokio::join!(tg.pay_invoice(user, message_id), bot_side);
    assert!(matches!(paid.unwrap(), telegram::PayOutcome::Paid { .. }));
    let updates = get_updates(app, tg, offset).await;
    let update = updates
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["message"].get("successful_payment").is_some())
        .expect("successful_payment")
        .clone();
    let charge = update["message"]["successful_payment"]["telegram_payment_charge_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let txn = service_kit::db::begin_write(&app.db.conn).await.unwrap();
    inbox::store_in(
        &txn,
        &Notice {
            provider: domain::ProviderId::from_static("telegram"),
            dedupe_key: format!("payment:{charge}"),
            source: "bot",
            peer: None,
            body: update.to_string(),
            provider_payment_id: Some(payload.clone()),
            claimed_payment_id: Some(payload.parse().unwrap()),
        },
    )
    .await
    .unwrap();
    txn.commit().await.unwrap();
    app.db
        .conn
        .execute_unprepared(&format!(
            "UPDATE payments SET status = 'succeeded', completed_at = now() WHERE id = '{payload}'"
        ))
        .await
        .unwrap();
    payments::Entity::find_by_id(payload.parse::<uuid::Uuid>().unwrap())
        .one(&app.db.conn)
        .await
        .unwrap()
        .unwrap()
}

async fn refund(app: &TestApp, id: domain::PaymentId, key: &str) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/api/payments/{id}/refund")))
        .bearer_auth(ADMIN_TOKEN)
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .body(r#"{"requested_by": "42"}"#)
        .send()
        .await
        .unwrap()
}

async fn refund_rows(app: &TestApp) -> Vec<refunds::Model> {
    refunds::Entity::find().all(&app.db.conn).await.unwrap()
}

/// Two refunds of one Stars payment: while the first is in progress the second gets 409
/// naming it; Telegram refunds once; one refund is recorded.
#[tokio::test]
async fn stars_are_refunded_once_however_many_refunds_are_asked() {
    let (app, tg) = spawn_with_telegram(false).await;
    let user = TestUser::new(910_001, "Boris", "ru");
    let payment = paid_telegram_payment(&app, &tg, &user, "XTR").await;

    // The first refund's answer is lost: it stays pending, in progress.
    tg.fail_next("getStarTransactions", 500, 1);
    let first = refund(&app, payment.id, "stars-a").await;
    assert_eq!(first.status(), 504);
    let rows = refund_rows(&app).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, RefundStatus::Pending);
    let in_progress = rows[0].id;

    let second = refund(&app, payment.id, "stars-b").await;
    assert_eq!(second.status(), 409);
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"], "refund_in_progress");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&in_progress.to_string()), "{message}");
    assert!(message.contains("stars-a"), "{message}");
    assert_eq!(tg.calls("refundStarPayment"), 0);
    assert_eq!(refund_rows(&app).await.len(), 1);

    // The first settles when repeated; then both at once: Telegram is asked once in all.
    let (settled, again) = tokio::join!(
        refund(&app, payment.id, "stars-a"),
        refund(&app, payment.id, "stars-c")
    );
    assert_eq!(settled.status(), 200);
    assert!(
        [409, 422].contains(&again.status().as_u16()),
        "{}",
        again.status()
    );
    assert_eq!(tg.calls("refundStarPayment"), 1);
    assert!(tg.charges()[0].refunded);
    let rows = refund_rows(&app).await;
    assert_eq!(rows.len(), 1, "one refund recorded: {rows:?}");
    assert_eq!(rows[0].status, RefundStatus::Succeeded);
    assert!(!rows[0].outside_provider);
}

/// A fiat Telegram payment's refund: recorded as made outside Telegram, Telegram not called,
/// the answer tells the admin to return the money in the provider's cabinet, and the worker
/// emits `payment.refunded` (which makes marzban-sync revoke the access).
#[tokio::test]
async fn a_fiat_telegram_refund_is_recorded_as_made_outside_telegram() {
    let (app, tg) = spawn_with_telegram(true).await;
    let user = TestUser::new(910_002, "Dasha", "ru");
    let payment = paid_telegram_payment(&app, &tg, &user, "RUB").await;
    assert_eq!(payment.amount_minor, 19_900);
    let charge = tg.charges()[0].telegram_payment_charge_id.clone();
    let telegram_calls = |tg: &telegram::Handle| {
        ["getStarTransactions", "refundStarPayment"]
            .iter()
            .map(|m| tg.calls(m))
            .sum::<u64>()
    };
    assert_eq!(telegram_calls(&tg), 0);

    // Only in full.
    let partial = app
        .http
        .post(app.url(&format!("/api/payments/{}/refund", payment.id)))
        .bearer_auth(ADMIN_TOKEN)
        .header("Content-Type", "application/json")
        .body(r#"{"amount_minor": 100}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), 422);

    let response = refund(&app, payment.id, "fiat-1").await;
    assert_eq!(response.status(), 200);
    let view: Value = response.json().await.unwrap();
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["outside_provider"], true);
    assert_eq!(view["provider_refund_id"], charge.as_str());
    let action = view["admin_action"].as_str().unwrap();
    assert!(action.contains("payment provider's cabinet"), "{action}");
    assert!(action.contains("199.00"), "{action}");
    assert_eq!(telegram_calls(&tg), 0, "Telegram is never asked");

    let rows = refund_rows(&app).await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].outside_provider);
    assert_eq!(rows[0].status, RefundStatus::Succeeded);
    let notice = provider_notifications::Entity::find()
        .filter(provider_notifications::Column::Source.eq("refund_api"))
        .one(&app.db.conn)
        .await
        .unwrap()
        .expect("a notice for the worker");
    assert_eq!(notice.dedupe_key, format!("refund:{charge}"));
    // The replay says the same.
    let again = refund(&app, payment.id, "fiat-1").await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), view);

    // The worker applies the notice like any other: `payment.refunded`.
    // The worker with its real Telegram status source (the stored update is the proof).
    let api_url = tg.api_url();
    let settings = payment_worker::ServiceSettings::load(&Source::map([
        ("WORKER_BIND", "127.0.0.1:0"),
        ("RECONCILE_ENABLED", "off"),
        ("TELEGRAM_BOT_TOKEN", tg.token()),
        ("TELEGRAM_API_URL", api_url.as_str()),
        ("TELEGRAM_PAYMENT_PROVIDER_TOKEN", PROVIDER_TOKEN),
    ]))
    .unwrap();
    let infra = connect_beside(&app, "telegram-refund-worker").await;
    let shutdown = Shutdown::new();
    let tasks = payment_worker::Worker::from_settings(
        &settings,
        infra.db.clone(),
        Arc::clone(&infra.bus),
        infra.outbox_nudge.clone(),
    )
    .expect("worker")
    .spawn(shutdown.clone());
    let mut refunded = Vec::new();
    for _ in 0..200 {
        refunded = app.outbox_with_key("payment.refunded").await;
        if !refunded.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    tasks.join().await;
    assert_eq!(refunded.len(), 1, "payment.refunded emitted");
    let after = payments::Entity::find_by_id(payment.id)
        .one(&app.db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.status, PaymentStatus::Refunded);
    assert_eq!(after.refunded_minor, 19_900);
    assert_eq!(telegram_calls(&tg), 0);
}
