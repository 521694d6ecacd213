//! Telegram card payments (a provider token): no Bot API method can look them up, so the
//! stored `successful_payment` is the status source — checked against the payment's payload,
//! payer, currency and amount — and an unpaid Telegram invoice expires at its deadline. A
//! Stars subscription's recurring charge becomes one renewal payment, however its notices race.

use std::sync::Arc;

use chrono::Utc;
use domain::PaymentStatus;
use domain::entities::{payments, users};
use domain::money::{Currency, Money};
use messaging::Handler;
use payment_core::providers::telegram::TelegramSettings;
use payment_core::{PaymentService, PaymentSettings};
use payment_worker::{NotificationHandler, ReconcileSettings, Reconciler};
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait};
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

/// Telegram Stars on the Bot API emulator, the Star ledger in `db`.
fn stars_sources(db: &DatabaseConnection, tg: &sandbox::telegram::Handle) -> PaymentService {
    let mut telegram = TelegramSettings::new(tg.token());
    telegram.api_url = tg.api_url();
    PaymentService::from_settings(&PaymentSettings {
        telegram: Some(telegram.with_database(db.clone())),
        ..PaymentSettings::default()
    })
    .expect("service")
}

#[tokio::test]
async fn a_recurring_stars_charge_becomes_one_renewal_payment_however_its_notices_race() {
    recurring_charge_race(env().await).await;
}

/// The same in the single-process mode's database.
#[tokio::test]
async fn a_recurring_stars_charge_becomes_one_renewal_payment_on_sqlite() {
    recurring_charge_race(sqlite_env().await).await;
}

/// Two notices of one recurring charge, the second looked up before the first is applied:
/// one renewal payment, completed once.
async fn recurring_charge_race(env: Env) {
    let db = &env.db.conn;
    let tg = sandbox::telegram::spawn(sandbox::telegram::Config::default())
        .await
        .expect("telegram emulator");
    let id = domain::PaymentId::new();
    let first = insert_payment(
        db,
        id,
        Money::new(150, Currency::Xtr),
        Some(id.to_string()),
        |p| {
            p.provider = Set(domain::ProviderId::from_static("telegram"));
            p.status = Set(PaymentStatus::Succeeded);
        },
    )
    .await;
    let payer = users::Entity::find_by_id(first.user_id)
        .one(db)
        .await
        .unwrap()
        .expect("user")
        .telegram_id;
    // Telegram charged the subscription again: a Star transaction with the first payload.
    let user = sandbox::telegram::TestUser::new(payer, "Ann", "en");
    let charge = tg.record_star_payment(&user, &id.to_string(), 150);
    let body = serde_json::json!({
        "update_id": 7,
        "message": {"message_id": 8, "date": Utc::now().timestamp(),
            "chat": {"id": payer, "type": "private", "first_name": "Ann"},
            "from": {"id": payer, "is_bot": false, "first_name": "Ann"},
            "successful_payment": {"currency": "XTR", "total_amount": 150,
                "invoice_payload": id.to_string(), "telegram_payment_charge_id": charge,
                "provider_payment_charge_id": "", "is_recurring": true,
                "subscription_expiration_date": Utc::now().timestamp() + 2_592_000}}
    })
    .to_string();
    // Two notices of the one charge (as if two sources stored it), looked up side by side.
    let telegram = payment_core::providers::telegram::ID;
    let a = store_notification(
        db,
        &telegram,
        &format!("payment:{charge}"),
        Some(id.to_string()),
        Some(id),
        body.clone(),
    )
    .await;
    let b = store_notification(
        db,
        &telegram,
        &format!("payment:{charge}:copy"),
        Some(id.to_string()),
        Some(id),
        body,
    )
    .await;
    let handler = NotificationHandler::new(Arc::new(stars_sources(db, &tg)), db.clone());
    let prepared_b = handler.prepare(&b).await.expect("looked up");
    deliver(&handler, db, &a).await.expect("handled");
    let tx = db.begin().await.unwrap();
    let raced = handler.handle(&tx, &b, prepared_b).await;
    tx.rollback().await.unwrap();
    assert!(raced.is_err(), "b drafted another row: asked again");
    deliver(&handler, db, &b).await.expect("handled");

    let renewals = payments::Entity::find()
        .filter(payments::Column::ProviderPaymentId.eq(charge.as_str()))
        .all(db)
        .await
        .unwrap();
    assert_eq!(renewals.len(), 1, "one payment per charge");
    let renewal = &renewals[0];
    assert_eq!(renewal.status, PaymentStatus::Succeeded);
    assert_eq!(
        (renewal.user_id, renewal.tariff_id, renewal.amount_minor),
        (first.user_id, first.tariff_id, 150)
    );
    assert_eq!(events(db, "payment.created", renewal.id).await.len(), 1);
    assert_eq!(events(db, "payment.completed", renewal.id).await.len(), 1);
    assert!(events(db, "payment.completed", id).await.is_empty());
    assert_eq!(inbox_row(db, &a).await.outcome.as_deref(), Some("applied"));
    assert_eq!(
        inbox_row(db, &b).await.outcome.as_deref(),
        Some("duplicate")
    );
}
