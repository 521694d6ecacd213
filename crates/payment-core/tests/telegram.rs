//! Star payments found incrementally: with a database attached, each status look-up reads only
//! the `getStarTransactions` entries added since the last one (against the Telegram emulator
//! and a real PostgreSQL database).

use domain::money::{Currency, Money};
use domain::{PaymentId, PaymentStatus};
use payment_core::providers::telegram::{TelegramProvider, TelegramSettings};
use payment_core::{PaymentProvider, PaymentRef};
use sandbox::telegram::{self, TestUser};
use testkit::TestDb;

fn provider(tg: &telegram::Handle, db: Option<&TestDb>, scan_pages: u32) -> TelegramProvider {
    let mut settings = TelegramSettings::new(tg.token());
    settings.api_url = tg.api_url();
    settings.scan_pages = scan_pages;
    if let Some(db) = db {
        settings = settings.with_database(db.conn.clone());
    }
    TelegramProvider::new(settings).expect("provider")
}

fn reference(payload: &str) -> PaymentRef {
    let payment_id = PaymentId::parse(payload).expect("a payment id");
    PaymentRef {
        payment_id,
        provider_payment_id: payload.to_owned(),
        amount: Money::new(150, Currency::Xtr),
    }
}

async fn status(provider: &TelegramProvider, payload: &str) -> PaymentStatus {
    provider
        .get_payment_status(&reference(payload))
        .await
        .expect("status")
        .status
}

/// Telegram's own refund of a Star payment (what `refundStarPayment` does).
async fn refund(tg: &telegram::Handle, user: &TestUser, charge: &str) {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/bot{}/refundStarPayment",
            tg.api_url(),
            tg.token()
        ))
        .json(&serde_json::json!({"user_id": user.id, "telegram_payment_charge_id": charge}))
        .send()
        .await
        .expect("refundStarPayment")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["ok"], true, "{answer}");
}

#[tokio::test]
async fn star_transactions_are_read_once_across_look_ups() {
    let db = TestDb::new().await;
    let tg = telegram::spawn(telegram::Config::default())
        .await
        .expect("emulator");
    let user = TestUser::new(42, "Boris", "en");
    let payloads: Vec<String> = (0..250).map(|_| PaymentId::new().to_string()).collect();
    let mut charges = Vec::new();
    for payload in &payloads {
        charges.push(tg.record_star_payment(&user, payload, 150));
    }
    let stars = provider(&tg, Some(&db), 50);

    // The first look-up counts the list and reads it once.
    assert_eq!(
        status(&stars, &payloads[249]).await,
        PaymentStatus::Succeeded
    );
    let first = tg.calls("getStarTransactions");
    // Every later look-up of a known payment reads only the (empty) end of the list.
    assert_eq!(status(&stars, &payloads[7]).await, PaymentStatus::Succeeded);
    assert_eq!(
        status(&stars, &payloads[120]).await,
        PaymentStatus::Succeeded
    );
    assert_eq!(tg.calls("getStarTransactions"), first + 2);
    // Unknown: still pending, at the same cost.
    let unpaid = PaymentId::new().to_string();
    assert_eq!(status(&stars, &unpaid).await, PaymentStatus::Pending);
    assert_eq!(tg.calls("getStarTransactions"), first + 3);

    // New payments and a refund: one page read finds them.
    refund(&tg, &user, &charges[7]).await;
    let fresh = PaymentId::new().to_string();
    tg.record_star_payment(&user, &fresh, 150);
    assert_eq!(status(&stars, &fresh).await, PaymentStatus::Succeeded);
    assert_eq!(status(&stars, &payloads[7]).await, PaymentStatus::Refunded);
    assert_eq!(tg.calls("getStarTransactions"), first + 5);

    // Another process sharing the database continues from the same cursor.
    let other = provider(&tg, Some(&db), 50);
    assert_eq!(status(&other, &payloads[0]).await, PaymentStatus::Succeeded);
    assert_eq!(tg.calls("getStarTransactions"), first + 6);
}

#[tokio::test]
async fn the_first_look_up_reads_as_far_back_as_the_scan_would() {
    let db = TestDb::new().await;
    let tg = telegram::spawn(telegram::Config::default())
        .await
        .expect("emulator");
    let user = TestUser::new(43, "Anna", "en");
    let payloads: Vec<String> = (0..250).map(|_| PaymentId::new().to_string()).collect();
    for payload in &payloads {
        tg.record_star_payment(&user, payload, 150);
    }
    // One page back: the newest 100 are read, older payments stay unknown (as with the scan).
    let stars = provider(&tg, Some(&db), 1);
    assert_eq!(
        status(&stars, &payloads[249]).await,
        PaymentStatus::Succeeded
    );
    assert_eq!(
        status(&stars, &payloads[150]).await,
        PaymentStatus::Succeeded
    );
    assert_eq!(status(&stars, &payloads[149]).await, PaymentStatus::Pending);
    // Without a database the scan agrees.
    let scan = provider(&tg, None, 1);
    assert_eq!(
        status(&scan, &payloads[150]).await,
        PaymentStatus::Succeeded
    );
    assert_eq!(status(&scan, &payloads[149]).await, PaymentStatus::Pending);
}
