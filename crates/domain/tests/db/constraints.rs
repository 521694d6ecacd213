use chrono::Duration;
use domain::entities::{crypto_invoices, outbox, processed_messages, provider_notifications};
use domain::{CryptoInvoiceStatus, Currency};
use sea_orm::{ActiveModelTrait, DatabaseConnection, DbErr, EntityTrait, Set, SqlErr};

use crate::helpers::{
    assert_check_violation, assert_unique_violation, grant, now, pending_payment, subscription,
    subscription_model, tariff, user,
};
use crate::on_both_backends;

async fn duplicate_idempotency_key_is_rejected(conn: &DatabaseConnection) {
    let first = pending_payment(conn, 1).await;
    let key = first.idempotency_key.clone().unwrap();
    first.insert(conn).await.unwrap();

    let mut second = pending_payment(conn, 2).await;
    second.idempotency_key = Set(key);
    assert_unique_violation(second.insert(conn).await);
}

async fn provider_payment_id_is_unique_per_provider(conn: &DatabaseConnection) {
    let mut first = pending_payment(conn, 1).await;
    first.provider_payment_id = Set(Some("2d9e-0001".to_owned()));
    first.insert(conn).await.unwrap();

    let mut same = pending_payment(conn, 2).await;
    same.provider_payment_id = Set(Some("2d9e-0001".to_owned()));
    assert_unique_violation(same.insert(conn).await);

    // The same id at another provider is a different payment.
    let mut other_provider = pending_payment(conn, 3).await;
    other_provider.provider = Set(domain::ProviderId::from_static("telegram"));
    other_provider.provider_payment_id = Set(Some("2d9e-0001".to_owned()));
    other_provider.insert(conn).await.unwrap();

    // Payments not yet known to the provider do not collide.
    pending_payment(conn, 4).await.insert(conn).await.unwrap();
    pending_payment(conn, 5).await.insert(conn).await.unwrap();
}

fn invoice(payment_id: domain::PaymentId, expected_minor: i64) -> crypto_invoices::ActiveModel {
    let now = now();
    crypto_invoices::ActiveModel {
        payment_id: Set(payment_id),
        network: Set("TRC20".to_owned()),
        address: Set("TXYZwallet".to_owned()),
        expected_minor: Set(expected_minor),
        currency: Set(Currency::Usdt),
        status: Set(CryptoInvoiceStatus::Open),
        tx_id: Set(None),
        event_index: Set(None),
        received_minor: Set(None),
        from_address: Set(None),
        confirmations: Set(0),
        paid_at: Set(None),
        expires_at: Set(now + Duration::minutes(30)),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
}

async fn crypto_payment(conn: &DatabaseConnection, telegram_id: i64) -> domain::PaymentId {
    let mut payment = pending_payment(conn, telegram_id).await;
    payment.provider = Set(domain::ProviderId::from_static("crypto"));
    payment.currency = Set(Currency::Usdt);
    payment.amount_minor = Set(2_500_017);
    payment.insert(conn).await.unwrap().id
}

async fn open_invoice_amount_is_reserved_until_settled(conn: &DatabaseConnection) {
    let first = invoice(crypto_payment(conn, 1).await, 2_500_017)
        .insert(conn)
        .await
        .unwrap();

    let second_payment = crypto_payment(conn, 2).await;
    assert_unique_violation(invoice(second_payment, 2_500_017).insert(conn).await);

    // Another amount, or the same amount to another wallet, is fine meanwhile.
    invoice(crypto_payment(conn, 3).await, 2_500_018)
        .insert(conn)
        .await
        .unwrap();
    let mut other_wallet = invoice(crypto_payment(conn, 4).await, 2_500_017);
    other_wallet.address = Set("TOtherWallet".to_owned());
    other_wallet.insert(conn).await.unwrap();

    // Once the first invoice is no longer open, its amount is free again.
    let mut settled: crypto_invoices::ActiveModel = first.into();
    settled.status = Set(CryptoInvoiceStatus::Expired);
    settled.update(conn).await.unwrap();
    invoice(second_payment, 2_500_017)
        .insert(conn)
        .await
        .unwrap();
}

async fn a_transfer_settles_one_invoice_only(conn: &DatabaseConnection) {
    let mut paid = invoice(crypto_payment(conn, 1).await, 1_000_001);
    paid.status = Set(CryptoInvoiceStatus::Paid);
    paid.tx_id = Set(Some("abc123".to_owned()));
    paid.event_index = Set(Some(0));
    paid.insert(conn).await.unwrap();

    let mut again = invoice(crypto_payment(conn, 2).await, 1_000_002);
    again.status = Set(CryptoInvoiceStatus::Paid);
    again.tx_id = Set(Some("abc123".to_owned()));
    again.event_index = Set(Some(0));
    assert_unique_violation(again.insert(conn).await);

    let mut next_event = invoice(crypto_payment(conn, 3).await, 1_000_003);
    next_event.tx_id = Set(Some("abc123".to_owned()));
    next_event.event_index = Set(Some(1));
    next_event.insert(conn).await.unwrap();
}

async fn a_payment_grants_once(conn: &DatabaseConnection) {
    let payment = pending_payment(conn, 1).await.insert(conn).await.unwrap();
    let sub = subscription(conn, payment.user_id).await;
    grant(sub.id, Some(payment.id)).insert(conn).await.unwrap();
    assert_unique_violation(grant(sub.id, Some(payment.id)).insert(conn).await);

    // Grants without a payment (manual) are not limited.
    grant(sub.id, None).insert(conn).await.unwrap();
    grant(sub.id, None).insert(conn).await.unwrap();
}

async fn revoking_more_than_granted_is_rejected(conn: &DatabaseConnection) {
    let payment = pending_payment(conn, 1).await.insert(conn).await.unwrap();
    let sub = subscription(conn, payment.user_id).await;
    let mut over = grant(sub.id, Some(payment.id));
    over.days_revoked = Set(31);
    assert_check_violation(over.insert(conn).await);
}

async fn one_subscription_per_user(conn: &DatabaseConnection) {
    let u = user(conn, 1).await;
    subscription(conn, u.id).await;
    let mut second = subscription_model(u.id);
    second.marzban_username = Set("tg_other".to_owned());
    assert_unique_violation(second.insert(conn).await);
}

async fn duplicate_notification_is_rejected(conn: &DatabaseConnection) {
    let notification = |provider: &str| provider_notifications::ActiveModel {
        provider: Set(provider.parse().expect("a provider name")),
        dedupe_key: Set("payment.succeeded:2d9e-0001".to_owned()),
        source: Set("webhook".to_owned()),
        peer: Set(Some("185.71.76.1".to_owned())),
        body: Set(r#"{"event":"payment.succeeded"}"#.to_owned()),
        provider_payment_id: Set(Some("2d9e-0001".to_owned())),
        payment_id: Set(None),
        received_at: Set(now()),
        processed_at: Set(None),
        outcome: Set(None),
        ..Default::default()
    };
    notification("yookassa").insert(conn).await.unwrap();
    assert_unique_violation(notification("yookassa").insert(conn).await);
    notification("telegram").insert(conn).await.unwrap();
}

async fn messaging_tables_deduplicate(conn: &DatabaseConnection) {
    let event_id = uuid::Uuid::now_v7();
    let row = || outbox::ActiveModel {
        event_id: Set(event_id),
        routing_key: Set("payment.created".to_owned()),
        envelope: Set("{}".to_owned()),
        created_at: Set(now()),
        published_at: Set(None),
        attempts: Set(0),
        last_error: Set(None),
        ..Default::default()
    };
    let first = row().insert(conn).await.unwrap();
    assert!(first.id > 0);
    assert_unique_violation(row().insert(conn).await);

    let processed = || processed_messages::ActiveModel {
        consumer: Set("marzban-sync".to_owned()),
        message_id: Set(event_id.to_string()),
        processed_at: Set(now()),
    };
    processed().insert(conn).await.unwrap();
    assert_unique_violation(processed().insert(conn).await);
    assert_eq!(
        processed_messages::Entity::find()
            .all(conn)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn unique_tariff_code_and_telegram_id(conn: &DatabaseConnection) {
    tariff(conn, "m1").await;
    let dup = domain::entities::tariffs::ActiveModel {
        code: Set("m1".to_owned()),
        title: Set("again".to_owned()),
        duration_days: Set(30),
        active: Set(true),
        sort_order: Set(0),
        ..Default::default()
    };
    assert_unique_violation(dup.insert(conn).await);

    user(conn, 42).await;
    let dup_user = domain::entities::users::ActiveModel {
        telegram_id: Set(42),
        created_at: Set(now()),
        ..Default::default()
    };
    assert_unique_violation(dup_user.insert(conn).await);
}

async fn payment_needs_an_existing_user(conn: &DatabaseConnection) {
    let mut orphan = pending_payment(conn, 1).await;
    orphan.user_id = Set(987_654);
    let err: DbErr = orphan.insert(conn).await.unwrap_err();
    assert!(
        matches!(
            err.sql_err(),
            Some(SqlErr::ForeignKeyConstraintViolation(_))
        ),
        "{err:?}"
    );
}

async fn refunded_amount_cannot_exceed_the_payment(conn: &DatabaseConnection) {
    let mut payment = pending_payment(conn, 1).await;
    payment.refunded_minor = Set(19_901);
    assert_check_violation(payment.insert(conn).await);
}

on_both_backends!(
    duplicate_idempotency_key_is_rejected,
    provider_payment_id_is_unique_per_provider,
    open_invoice_amount_is_reserved_until_settled,
    a_transfer_settles_one_invoice_only,
    a_payment_grants_once,
    revoking_more_than_granted_is_rejected,
    one_subscription_per_user,
    duplicate_notification_is_rejected,
    messaging_tables_deduplicate,
    unique_tariff_code_and_telegram_id,
    payment_needs_an_existing_user,
    refunded_amount_cannot_exceed_the_payment,
);
