//! Promo codes (issue 23): a payment's code is counted once, in the transaction of its
//! `succeeded` transition, however often the success is notified, and given back by a full
//! refund; a provider amount other than the discounted one counts nothing.

use std::time::Duration;

use chrono::Utc;
use domain::PaymentStatus;
use domain::entities::{payment_promos, payments, promo_codes};
use domain::money::{Currency, Money};
use sea_orm::{ActiveModelTrait, ActiveValue::NotSet, ActiveValue::Set, DatabaseConnection};
use sea_orm::{EntityTrait, PaginatorTrait};

use crate::helpers::*;

/// A fixed code (50.00 off) and the `payment_promos` row of `payment` (made with it: a list price of
/// `PRICE` + 50.00, 50.00 off).
async fn with_code(db: &DatabaseConnection, payment: &payments::Model) -> promo_codes::Model {
    let code = promo_codes::ActiveModel {
        id: NotSet,
        code: Set(
            format!("P{}", &payment.id.to_string().replace('-', "")[20..]).to_ascii_uppercase(),
        ),
        kind: Set("fixed".into()),
        value: Set(5_000),
        currency: Set(Some(Currency::Rub)),
        max_uses: Set(Some(10)),
        once_per_user: Set(true),
        starts_at: Set(None),
        ends_at: Set(None),
        tariffs: Set(String::new()),
        providers: Set(String::new()),
        active: Set(true),
        created_by: Set(None),
        created_at: Set(Utc::now()),
        disabled_at: Set(None),
    }
    .insert(db)
    .await
    .unwrap();
    payment_promos::ActiveModel {
        payment_id: Set(payment.id),
        promo_code_id: Set(code.id),
        user_id: Set(payment.user_id),
        code: Set(code.code.clone()),
        list_price_minor: Set(payment.amount_minor + 5_000),
        discount_minor: Set(5_000),
        extra_days: Set(0),
        created_at: Set(Utc::now()),
        used_at: Set(None),
        returned_at: Set(None),
    }
    .insert(db)
    .await
    .unwrap();
    code
}

async fn row(db: &DatabaseConnection, payment: &payments::Model) -> payment_promos::Model {
    payment_promos::Entity::find_by_id(payment.id)
        .one(db)
        .await
        .unwrap()
        .unwrap()
}

async fn uses(db: &DatabaseConnection, code: &promo_codes::Model) -> u64 {
    domain::promo::uses(db, code.id).await.unwrap()
}

#[tokio::test]
async fn a_use_is_counted_once_however_often_the_success_is_notified() {
    let env = env().await;
    let db = &env.db.conn;
    let prefix = testkit::unique_prefix("pwpromo");
    let settings = worker_settings(&env.shop, &[("WORKER_PREFETCH", "4")]);
    let worker = start_worker(&env.db.url, &prefix, &settings).await;

    let payment = payment(&env).await;
    let code = with_code(db, &payment).await;
    env.shop.pay(ppid(&payment)).unwrap();
    // Three notices of the success, each one published through RabbitMQ.
    let mut envelopes = Vec::new();
    for i in 0..3 {
        envelopes.push(notify(db, &payment, "succeeded", &format!(":{i}")).await);
    }
    worker.nudge();
    let done = eventually(Duration::from_secs(30), || async {
        let mut done = true;
        for envelope in &envelopes {
            done &= inbox_row(db, envelope).await.processed_at.is_some();
        }
        done
    })
    .await;
    assert!(done, "every notification processed");
    assert_eq!(
        reload(db, payment.id).await.status,
        PaymentStatus::Succeeded
    );
    let counted = row(db, &payment).await;
    assert!(counted.used_at.is_some());
    assert_eq!(counted.returned_at, None);
    assert_eq!(uses(db, &code).await, 1);

    // The same message delivered again (at-least-once): nothing more.
    deliver(&handler_for(&env), db, &envelopes[0])
        .await
        .unwrap();
    assert_eq!(row(db, &payment).await, counted);
    assert_eq!(uses(db, &code).await, 1);

    worker.stop().await;
    delete_topology(&prefix).await;
}

#[tokio::test]
async fn a_full_refund_gives_the_use_back_and_a_partial_one_keeps_it() {
    let env = env().await;
    let db = &env.db.conn;
    let script = Scripted::default();
    let handler = scripted_handler(&script, db);

    let payment = pending_payment(db, "pp-promo-1").await;
    let code = with_code(db, &payment).await;
    script.push(Ok(answer(&payment, PaymentStatus::Succeeded, 0)));
    let first = notify(db, &payment, "succeeded", "").await;
    deliver(&handler, db, &first).await.unwrap();
    assert_eq!(uses(db, &code).await, 1);

    // Part of it back: the code stays used.
    script.push(Ok(answer(
        &payment,
        PaymentStatus::PartiallyRefunded,
        5_000,
    )));
    let partial = notify(db, &payment, "refund", ":partial").await;
    deliver(&handler, db, &partial).await.unwrap();
    assert_eq!(
        reload(db, payment.id).await.status,
        PaymentStatus::PartiallyRefunded
    );
    assert_eq!(uses(db, &code).await, 1);

    // All of it back: the use returns, once, even when the refund is notified twice.
    for suffix in [":full-1", ":full-2"] {
        script.push(Ok(answer(&payment, PaymentStatus::Refunded, PRICE)));
        let full = notify(db, &payment, "refund", suffix).await;
        deliver(&handler, db, &full).await.unwrap();
    }
    assert_eq!(reload(db, payment.id).await.status, PaymentStatus::Refunded);
    let returned = row(db, &payment).await;
    assert!(returned.used_at.is_some() && returned.returned_at.is_some());
    assert_eq!(uses(db, &code).await, 0);

    // Paid and refunded before we saw either: counted and given back in one go.
    let late = pending_payment(db, "pp-promo-2").await;
    let late_code = with_code(db, &late).await;
    script.push(Ok(answer(&late, PaymentStatus::Refunded, PRICE)));
    let notice = notify(db, &late, "refund", "").await;
    deliver(&handler, db, &notice).await.unwrap();
    let row = row(db, &late).await;
    assert!(row.used_at.is_some() && row.returned_at.is_some());
    assert_eq!(uses(db, &late_code).await, 0);
}

#[tokio::test]
async fn a_provider_amount_other_than_the_discounted_one_counts_nothing() {
    let env = env().await;
    let db = &env.db.conn;
    // Ours is the discounted 149.00; the provider was paid the full 199.00.
    let payment = payment_with(&env, Money::new(PRICE - 5_000, Currency::Rub), |_| {}).await;
    let code = with_code(db, &payment).await;
    env.shop.pay(ppid(&payment)).unwrap();
    let envelope = notify(db, &payment, "succeeded", "").await;
    deliver(&handler_for(&env), db, &envelope).await.unwrap();
    let after = reload(db, payment.id).await;
    assert!(after.flagged);
    assert_eq!(after.status, PaymentStatus::Pending);
    assert_eq!(row(db, &payment).await.used_at, None);
    assert_eq!(uses(db, &code).await, 0);
    assert_eq!(payment_promos::Entity::find().count(db).await.unwrap(), 1);
}
