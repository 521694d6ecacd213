//! Telegram card payments (a provider token): no Bot API method can look them up, so the
//! stored `successful_payment` is the status source — checked against the payment's payload,
//! payer, currency and amount — and an unpaid Telegram invoice expires at its deadline.

use std::sync::Arc;

use chrono::Utc;
use domain::PaymentStatus;
use domain::entities::{payments, users};
use domain::money::{Currency, Money};
use payment_core::providers::telegram::TelegramSettings;
use payment_core::{PaymentService, PaymentSettings};
use payment_worker::{NotificationHandler, ReconcileSettings, Reconciler};
use sea_orm::ActiveValue::Set;
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::sync::Notify;

use crate::helpers::*;

/// Telegram Payments with a provider token. The Bot API URL points nowhere: a card payment's
/// status must come from the stored update, never from a call.
fn telegram_sources(db: &DatabaseConnection) -> PaymentService {
    let mut telegram = TelegramSettings::new("1:test");
    telegram.api_url = "http://127.0.0.1:9".into();
    telegram.provider_token = Some("381764678:TEST:100500".to_owned().into());
    PaymentService::from_settings(&PaymentSettings {
        telegram: Some(telegram.with_database(db.clone())),
        ..PaymentSettings::default()
    })
    .expect("service")
}

/// A pending RUB payment made inside Telegram, and its payer's Telegram id.
async fn card_payment(
    db: &DatabaseConnection,
    tweak: impl FnOnce(&mut payments::ActiveModel),
) -> (payments::Model, i64) {
    let id = domain::PaymentId::new();
    let payment = insert_payment(
        db,
        id,
        Money::new(PRICE, Currency::Rub),
        Some(id.to_string()),
        |p| {
            p.provider = Set(domain::ProviderId::from_static("telegram"));
            p.expires_at = Set(Some(Utc::now() + chrono::Duration::hours(1)));
            tweak(p);
        },
    )
    .await;
    let payer = users::Entity::find_by_id(payment.user_id)
        .one(db)
        .await
        .unwrap()
        .expect("user")
        .telegram_id;
    (payment, payer)
}

/// The update the bot stores: `successful_payment` as Telegram sends it for a card payment
/// (a non-empty `provider_payment_charge_id`, reference §2b).
fn successful_payment(payment: &payments::Model, from: i64, total: i64) -> String {
    serde_json::json!({
        "update_id": 10_002,
        "message": {
            "message_id": 55,
            "date": Utc::now().timestamp(),
            "chat": {"id": from, "type": "private", "first_name": "Dasha"},
            "from": {"id": from, "is_bot": false, "first_name": "Dasha"},
            "successful_payment": {
                "currency": "RUB",
                "total_amount": total,
                "invoice_payload": payment.id.to_string(),
                "telegram_payment_charge_id": format!("tgc-{}", payment.id),
                "provider_payment_charge_id": format!("2f6c-{}", payment.id),
            }
        }
    })
    .to_string()
}

async fn store(
    db: &DatabaseConnection,
    payment: &payments::Model,
    body: String,
) -> messaging::Envelope {
    store_notification(
        db,
        &payment_core::providers::telegram::ID,
        &format!("payment:tgc-{}", payment.id),
        Some(payment.id.to_string()),
        Some(payment.id),
        body,
    )
    .await
}

fn reconciler(db: &DatabaseConnection) -> Reconciler {
    Reconciler::new(
        db.clone(),
        Arc::new(telegram_sources(db)),
        ReconcileSettings::default(),
        Arc::new(Notify::new()),
    )
}

/// Due for a check now.
async fn make_due(db: &DatabaseConnection, payment: &payments::Model, expired: bool) {
    let mut row: payments::ActiveModel = payment.clone().into();
    row.next_check_at = Set(Some(Utc::now() - chrono::Duration::seconds(1)));
    if expired {
        // Past its expiry and the grace period (one hour by default).
        let long_ago = Utc::now() - chrono::Duration::hours(3);
        row.created_at = Set(long_ago);
        row.expires_at = Set(Some(long_ago + chrono::Duration::minutes(60)));
    }
    payments::Entity::update(row)
        .exec(db)
        .await
        .expect("update");
}

#[tokio::test]
async fn a_card_payment_inside_telegram_completes_from_the_stored_successful_payment() {
    let env = env().await;
    let db = &env.db.conn;
    let (payment, payer) = card_payment(db, |_| {}).await;
    let handler = NotificationHandler::new(Arc::new(telegram_sources(db)), db.clone());
    let envelope = store(db, &payment, successful_payment(&payment, payer, PRICE)).await;

    deliver(&handler, db, &envelope).await.expect("handled");
    let after = reload(db, payment.id).await;
    assert_eq!(after.status, PaymentStatus::Succeeded);
    assert!(!after.flagged);
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
    let row = inbox_row(db, &envelope).await;
    assert_eq!(row.outcome.as_deref(), Some("applied"));

    // The same update again (a redelivery): completed once.
    deliver(&handler, db, &envelope).await.expect("handled");
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
}

#[tokio::test]
async fn someone_elses_or_a_wrong_amount_card_payment_is_flagged_not_completed() {
    let env = env().await;
    let db = &env.db.conn;
    let handler = NotificationHandler::new(Arc::new(telegram_sources(db)), db.clone());

    let (theirs, payer) = card_payment(db, |_| {}).await;
    let forged = store(db, &theirs, successful_payment(&theirs, payer + 1, PRICE)).await;
    deliver(&handler, db, &forged).await.expect("handled");
    let after = reload(db, theirs.id).await;
    assert_eq!(after.status, PaymentStatus::Pending);
    assert!(after.flagged, "another payer's message proves nothing");
    assert!(after.flag_reason.unwrap_or_default().contains("payer"));

    let (short, payer) = card_payment(db, |_| {}).await;
    let cheap = store(db, &short, successful_payment(&short, payer, PRICE - 100)).await;
    deliver(&handler, db, &cheap).await.expect("handled");
    let after = reload(db, short.id).await;
    assert_eq!(after.status, PaymentStatus::Pending);
    assert!(after.flagged);
    assert!(events(db, "payment.completed", short.id).await.is_empty());
}

#[tokio::test]
async fn reconciliation_completes_a_stored_card_payment_whose_notification_was_lost() {
    let env = env().await;
    let db = &env.db.conn;
    let (payment, payer) = card_payment(db, |_| {}).await;
    // Stored by the bot; its notification never reached a worker.
    store(db, &payment, successful_payment(&payment, payer, PRICE)).await;
    make_due(db, &payment, false).await;

    let report = reconciler(db).run_once().await.expect("reconcile");
    assert_eq!((report.checked, report.moved), (1, 1));
    assert_eq!(
        reload(db, payment.id).await.status,
        PaymentStatus::Succeeded
    );
    let log = logs(db, "payment.completed", payment.id).await;
    assert_eq!(
        log[0].metadata.as_ref().unwrap()["trigger"],
        "reconciliation"
    );
}

#[tokio::test]
async fn an_unpaid_telegram_invoice_expires_at_its_deadline() {
    let env = env().await;
    let db = &env.db.conn;
    let (recent, _) = card_payment(db, |_| {}).await;
    make_due(db, &recent, false).await;
    let (old, _) = card_payment(db, |_| {}).await;
    make_due(db, &old, true).await;

    reconciler(db).run_once().await.expect("reconcile");
    let recent = reload(db, recent.id).await;
    assert_eq!(recent.status, PaymentStatus::Pending, "still payable");
    assert!(recent.next_check_at.is_some(), "and checked again later");
    let old = reload(db, old.id).await;
    assert_eq!(old.status, PaymentStatus::Expired);
    assert_eq!(old.next_check_at, None);
    assert_eq!(events(db, "payment.failed", old.id).await.len(), 1);

    // Its successful_payment arriving now (it cannot: pre-checkout refuses an expired
    // invoice) would not bring it back.
    assert!(events(db, "payment.completed", old.id).await.is_empty());
}

#[tokio::test]
async fn a_payment_whose_creation_never_finished_expires_after_its_window_and_a_yookassa_one_stays_pending()
 {
    let env = env().await;
    let db = &env.db.conn;
    // No provider payment id: the provider call never answered, the payer never saw a link.
    let half_made = insert_payment(
        db,
        domain::PaymentId::new(),
        Money::new(PRICE, Currency::Rub),
        None,
        |_| {},
    )
    .await;
    make_due(db, &half_made, true).await;
    // One still inside the gateway's creation window: a repeat of its key may finish it.
    let fresh = insert_payment(
        db,
        domain::PaymentId::new(),
        Money::new(PRICE, Currency::Rub),
        None,
        |_| {},
    )
    .await;
    make_due(db, &fresh, false).await;
    // A YooKassa payment YooKassa still calls pending: YooKassa can still complete it.
    let pending = payment(&env).await;
    make_due(db, &pending, true).await;

    let service = PaymentService::from_settings(&PaymentSettings {
        yookassa: Some(yookassa_settings(&env.shop)),
        ..PaymentSettings::default()
    })
    .unwrap();
    Reconciler::new(
        db.clone(),
        Arc::new(service),
        ReconcileSettings::default(),
        Arc::new(Notify::new()),
    )
    .run_once()
    .await
    .expect("reconcile");
    assert_eq!(
        reload(db, half_made.id).await.status,
        PaymentStatus::Expired
    );
    assert_eq!(events(db, "payment.failed", half_made.id).await.len(), 1);
    let fresh_after = reload(db, fresh.id).await;
    assert_eq!(fresh_after.status, PaymentStatus::Pending);
    assert_eq!(
        fresh_after.next_check_at.map(|t| t.timestamp()),
        Some((fresh.created_at + chrono::Duration::minutes(5)).timestamp()),
        "looked at again when its creation window ends"
    );
    let asked: Vec<_> = env
        .shop
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        asked.len(),
        1,
        "only the YooKassa payment is looked up: {asked:?}"
    );
    let pending = reload(db, pending.id).await;
    assert_eq!(pending.status, PaymentStatus::Pending);
    assert_eq!(pending.next_check_at, None, "polling stopped");
    assert_eq!(
        logs(db, "payment.reconcile_exhausted", pending.id)
            .await
            .len(),
        1
    );
}
