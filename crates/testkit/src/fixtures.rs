//! Rows that tests of payments need before their own: a customer, a tariff, a payment.

use chrono::Utc;
use domain::entities::{payments, tariffs, users};
use domain::money::Currency;
use domain::{PaymentId, PaymentStatus, ProviderId};
use sea_orm::ActiveValue::Set;
use sea_orm::{ActiveModelTrait, ConnectionTrait};

/// Price of [`customer_and_tariff`]'s tariff and of [`pending_payment`], in kopecks.
pub const PRICE_MINOR: i64 = 19_900;

/// A customer with the Telegram id `telegram_id` and an active 30-day tariff `month_1` at
/// [`PRICE_MINOR`], inserted. Panics when the database refuses.
pub async fn customer_and_tariff(
    conn: &impl ConnectionTrait,
    telegram_id: i64,
) -> (users::Model, tariffs::Model) {
    let now = Utc::now();
    let user = users::ActiveModel {
        telegram_id: Set(telegram_id),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(conn)
    .await
    .expect("a customer");
    let tariff = tariffs::ActiveModel {
        code: Set("month_1".into()),
        title: Set("1 month".into()),
        duration_days: Set(30),
        price_rub_minor: Set(Some(PRICE_MINOR)),
        active: Set(true),
        sort_order: Set(1),
        ..Default::default()
    }
    .insert(conn)
    .await
    .expect("a tariff");
    (user, tariff)
}

/// A pending payment of `user` for `tariff` at [`PRICE_MINOR`] through `provider`, naming
/// `provider_payment_id`, with a key of its own; to insert.
pub fn pending_payment(
    user: &users::Model,
    tariff: &tariffs::Model,
    provider: &'static str,
    provider_payment_id: Option<&str>,
) -> payments::ActiveModel {
    let id = PaymentId::new();
    let now = Utc::now();
    payments::ActiveModel {
        id: Set(id),
        user_id: Set(user.id),
        tariff_id: Set(tariff.id),
        provider: Set(ProviderId::from_static(provider)),
        amount_minor: Set(PRICE_MINOR),
        currency: Set(Currency::Rub),
        status: Set(PaymentStatus::Pending),
        provider_payment_id: Set(provider_payment_id.map(str::to_owned)),
        idempotency_key: Set(format!("k-{id}")),
        metadata: Set(serde_json::json!({})),
        created_at: Set(now),
        updated_at: Set(now),
        refunded_minor: Set(0),
        flagged: Set(false),
        check_attempts: Set(0),
        ..Default::default()
    }
}
