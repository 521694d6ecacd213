//! Issue 18, case 2 (without the rate limits): one open checkout per customer, tariff,
//! provider and currency; a cap on a customer's open payments; a tariff's USDT checkout
//! that a script pressing the button cannot exhaust.

use chrono::Utc;
use domain::entities::{crypto_invoices, payments};
use domain::{CryptoInvoiceStatus, PaymentStatus};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

use crate::helpers::{CREATE_BODY, TestApp, spawn_app};

/// A valid TRON address for the crypto provider's wallet.
const WALLET: &str = "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE";

fn yookassa_creates(app: &TestApp) -> usize {
    app.yookassa
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v3/payments")
        .count()
}

fn body(telegram_id: i64, tariff: &str, provider: &str) -> String {
    serde_json::json!({"telegram_id": telegram_id, "tariff_code": tariff, "provider": provider})
        .to_string()
}

async fn press(app: &TestApp, key: &str, body: &str) -> (u16, bool, serde_json::Value) {
    let response = app.create_payment(key, body).await;
    let status = response.status().as_u16();
    let reused = response.headers().contains_key("checkout-reused");
    (status, reused, response.json().await.unwrap())
}

async fn spawn_with_crypto() -> TestApp {
    spawn_app(&[("CRYPTO_WALLET_ADDRESS", WALLET)]).await
}

#[tokio::test]
async fn a_second_press_returns_the_same_payment_and_yookassa_is_asked_once() {
    let app = spawn_app(&[]).await;
    let (status, reused, first) = press(&app, "press-1", CREATE_BODY).await;
    assert_eq!((status, reused), (201, false), "{first}");
    let (status, reused, second) = press(&app, "press-2", CREATE_BODY).await;
    assert_eq!((status, reused), (200, true), "{second}");
    assert_eq!(second["payment_id"], first["payment_id"]);
    assert_eq!(second["confirmation"], first["confirmation"]);
    assert_eq!(second["confirmation_url"], first["confirmation_url"]);
    assert_eq!(yookassa_creates(&app), 1);
    assert_eq!(app.payments().await.len(), 1);
    // The first key still replays its own answer.
    let (status, _, replay) = press(&app, "press-1", CREATE_BODY).await;
    assert_eq!(status, 201);
    assert_eq!(replay["payment_id"], first["payment_id"]);

    // Another tariff is another checkout; once the first is no longer open (paid, failed or
    // past the reuse window), a press makes a new one.
    let (status, _, other) = press(&app, "press-3", &body(123456, "month_3", "yookassa")).await;
    assert_eq!(status, 201, "{other}");
    assert_ne!(other["payment_id"], first["payment_id"]);
    let id = domain::PaymentId::parse(first["payment_id"].as_str().unwrap()).unwrap();
    payments::ActiveModel {
        id: Set(id),
        created_at: Set(Utc::now() - chrono::Duration::minutes(31)),
        ..Default::default()
    }
    .update(&app.db.conn)
    .await
    .unwrap();
    let (status, reused, fresh) = press(&app, "press-4", CREATE_BODY).await;
    assert_eq!((status, reused), (201, false), "{fresh}");
    assert_ne!(fresh["payment_id"], first["payment_id"]);
    assert_eq!(yookassa_creates(&app), 3);
}

#[tokio::test]
async fn concurrent_presses_create_one_payment() {
    let app = spawn_app(&[]).await;
    // YooKassa slow, so every press arrives while the first is still being created.
    app.yookassa
        .set_latency(std::time::Duration::from_millis(300));
    let presses = (0..8).map(|n| {
        let app = &app;
        async move { press(app, &format!("tap-{n}"), CREATE_BODY).await }
    });
    let answers = futures::future::join_all(presses).await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(status, _, body)| {
            assert!(matches!(status, 200 | 201), "{status}: {body}");
            body["payment_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let urls: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(_, _, body)| body["confirmation_url"].to_string())
        .collect();
    assert_eq!(urls.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(s, _, _)| *s == 201).count(), 1);
    let rows = app.payments().await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].provider_payment_id.is_some());
}

#[tokio::test]
async fn a_customer_holds_at_most_the_cap_of_open_payments() {
    let app = spawn_with_crypto().await;
    // Five open checkouts: three tariffs by YooKassa, two by USDT.
    let open = [
        ("month_1", "yookassa"),
        ("month_3", "yookassa"),
        ("month_6", "yookassa"),
        ("month_1", "crypto"),
        ("month_3", "crypto"),
    ];
    for (n, (tariff, provider)) in open.iter().enumerate() {
        let (status, _, answer) = press(&app, &format!("k{n}"), &body(77, tariff, provider)).await;
        assert_eq!(status, 201, "{answer}");
    }
    let (status, _, refused) = press(&app, "k-six", &body(77, "month_6", "crypto")).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "too_many_open_payments");
    assert!(refused["message"].as_str().unwrap().contains('5'));
    // Nothing was stored or asked for the refused press; the open ones are still answered.
    assert_eq!(app.payments().await.len(), 5);
    assert_eq!(yookassa_creates(&app), 3);
    let (status, reused, _) = press(&app, "k-again", &body(77, "month_1", "crypto")).await;
    assert_eq!((status, reused), (200, true));
    // Another customer is not affected.
    let (status, _, _) = press(&app, "other", &body(78, "month_6", "crypto")).await;
    assert_eq!(status, 201);

    // A payment that is no longer open (here: failed) frees a place.
    let first = app
        .payments()
        .await
        .into_iter()
        .find(|p| p.provider == "yookassa")
        .unwrap();
    payments::ActiveModel {
        id: Set(first.id),
        status: Set(PaymentStatus::Failed),
        ..Default::default()
    }
    .update(&app.db.conn)
    .await
    .unwrap();
    let (status, _, answer) = press(&app, "k-seven", &body(77, "month_6", "crypto")).await;
    assert_eq!(status, 201, "{answer}");
}

/// An expired USDT checkout is no longer handed out, but its invoice holds its tag through
/// the late window: it still counts against the cap, so one customer never holds more tags
/// than the cap.
#[tokio::test]
async fn an_expired_invoice_in_its_late_window_counts_against_the_cap() {
    let app = spawn_with_crypto().await;
    let (status, _, first) = press(&app, "c1", &body(90, "month_1", "crypto")).await;
    assert_eq!(status, 201, "{first}");
    let id = domain::PaymentId::parse(first["payment_id"].as_str().unwrap()).unwrap();
    payments::ActiveModel {
        id: Set(id),
        expires_at: Set(Some(Utc::now() - chrono::Duration::minutes(1))),
        ..Default::default()
    }
    .update(&app.db.conn)
    .await
    .unwrap();
    let mut amounts = std::collections::BTreeSet::new();
    amounts.insert(first["amount"]["minor"].as_i64().unwrap());
    let (status, reused, second) = press(&app, "c2", &body(90, "month_1", "crypto")).await;
    assert_eq!((status, reused), (201, false), "{second}");
    assert!(amounts.insert(second["amount"]["minor"].as_i64().unwrap()));
    let open_invoices = crypto_invoices::Entity::find()
        .filter(crypto_invoices::Column::Status.eq(CryptoInvoiceStatus::Open))
        .all(&app.db.conn)
        .await
        .unwrap();
    assert_eq!(open_invoices.len(), 2);
    // Cap of 5: the expired one still counts, so three more and then no more.
    for (n, tariff) in ["month_3", "month_6", "month_12"].iter().enumerate() {
        let (status, _, answer) =
            press(&app, &format!("c{}", n + 3), &body(90, tariff, "crypto")).await;
        assert_eq!(status, 201, "{tariff}: {answer}");
    }
    let (status, _, refused) = press(&app, "c9", &body(90, "month_1", "yookassa")).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (409, Some("too_many_open_payments"))
    );
}

/// A script pressing a tariff's USDT button 1,000 times holds one tag; another customer
/// still checks out.
#[tokio::test]
async fn a_tariffs_usdt_checkout_survives_a_thousand_presses() {
    let app = spawn_with_crypto().await;
    let script = body(4242, "month_1", "crypto");
    let (status, _, first) = press(&app, "script-0", &script).await;
    assert_eq!(status, 201, "{first}");
    // Eight presses at a time, 1,000 in all.
    for batch in 0..125 {
        let presses = (0..8).map(|n| {
            let app = &app;
            let script = &script;
            async move { press(app, &format!("script-{batch}-{n}"), script).await }
        });
        for (status, _, answer) in futures::future::join_all(presses).await {
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["payment_id"], first["payment_id"]);
            assert_eq!(answer["amount"], first["amount"]);
        }
    }
    let invoices = crypto_invoices::Entity::find()
        .all(&app.db.conn)
        .await
        .unwrap();
    assert_eq!(invoices.len(), 1);
    let (status, _, other) = press(&app, "customer", &body(5151, "month_1", "crypto")).await;
    assert_eq!(status, 201, "{other}");
    assert_ne!(other["amount"], first["amount"]);
}
