use chrono::Duration;
use domain::entities::{payments, refunds, system_logs, tariffs};
use domain::{Currency, IdempotencyKey, Money, PaymentStatus, RefundStatus};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, ModelTrait, QueryFilter, Set,
};

use crate::helpers::{now, pending_payment};
use crate::on_both_backends;

async fn payment_round_trips(conn: &DatabaseConnection) {
    let mut payment = pending_payment(conn, 1).await;
    let now = now();
    payment.provider_payment_id = Set(Some("2d9e-0001-5000-a000".to_owned()));
    payment.confirmation_url = Set(Some("https://yoomoney.ru/checkout/x".to_owned()));
    payment.failure_reason = Set(Some("none yet".to_owned()));
    payment.metadata = Set(serde_json::json!({
        "tariff_code": "m1",
        "chat": {"id": 1, "lang": "ru"},
        "tags": [1, 2, 3],
    }));
    payment.completed_at = Set(Some(now + Duration::seconds(5)));
    payment.expires_at = Set(Some(now + Duration::hours(1)));
    payment.next_check_at = Set(Some(now + Duration::minutes(2)));
    payment.check_attempts = Set(3);
    payment.flagged = Set(true);
    payment.flag_reason = Set(Some("amount mismatch: 199.00 RUB vs 100.00 RUB".to_owned()));
    payment.refunded_minor = Set(900);
    payment.status = Set(PaymentStatus::PartiallyRefunded);
    payment.amount_minor = Set(i64::MAX);

    let inserted = payment.insert(conn).await.unwrap();
    let fetched = payments::Entity::find_by_id(inserted.id)
        .one(conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched, inserted);
    assert_eq!(fetched.amount(), Money::new(i64::MAX, Currency::Rub));
    assert_eq!(fetched.refunded(), Money::new(900, Currency::Rub));
    assert_eq!(fetched.status, PaymentStatus::PartiallyRefunded);
    assert_eq!(fetched.metadata["chat"]["lang"], "ru");
    assert_eq!(fetched.id, inserted.id);

    let tariff = fetched
        .find_related(tariffs::Entity)
        .one(conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        tariff.price(Currency::Xtr),
        Some(Money::new(150, Currency::Xtr))
    );
}

/// The state machine's conditional UPDATE: the first notification moves the payment, a
/// duplicate or stale one affects no row.
async fn conditional_transition_applies_once(conn: &DatabaseConnection) {
    let payment = pending_payment(conn, 1).await.insert(conn).await.unwrap();
    let transition = |next: PaymentStatus| {
        payments::Entity::update_many()
            .col_expr(payments::Column::Status, Expr::value(next))
            .col_expr(payments::Column::UpdatedAt, Expr::value(now()))
            .filter(payments::Column::Id.eq(payment.id))
            .filter(payments::Column::Status.is_in(next.allowed_predecessors().iter().copied()))
            .exec(conn)
    };

    assert_eq!(
        transition(PaymentStatus::Succeeded)
            .await
            .unwrap()
            .rows_affected,
        1
    );
    assert_eq!(
        transition(PaymentStatus::Succeeded)
            .await
            .unwrap()
            .rows_affected,
        0
    );
    assert_eq!(
        transition(PaymentStatus::Canceled)
            .await
            .unwrap()
            .rows_affected,
        0
    );
    assert_eq!(
        transition(PaymentStatus::Refunded)
            .await
            .unwrap()
            .rows_affected,
        1
    );
    assert_eq!(
        transition(PaymentStatus::Pending)
            .await
            .unwrap()
            .rows_affected,
        0
    );

    let status = payments::Entity::find_by_id(payment.id)
        .one(conn)
        .await
        .unwrap()
        .unwrap()
        .status;
    assert_eq!(status, PaymentStatus::Refunded);
}

async fn refund_and_log_round_trip(conn: &DatabaseConnection) {
    let payment = pending_payment(conn, 1).await.insert(conn).await.unwrap();
    let now = now();
    let refund = refunds::ActiveModel {
        id: Set(uuid::Uuid::now_v7()),
        payment_id: Set(payment.id),
        provider: Set(domain::ProviderId::from_static("yookassa")),
        provider_refund_id: Set(Some("r-1".to_owned())),
        amount_minor: Set(5_000),
        currency: Set(Currency::Rub),
        status: Set(RefundStatus::Pending),
        reason: Set(Some("user asked".to_owned())),
        requested_by: Set("admin:1".to_owned()),
        idempotency_key: Set(IdempotencyKey::random().into_inner()),
        failure_reason: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        completed_at: Set(None),
        outside_provider: Set(false),
    }
    .insert(conn)
    .await
    .unwrap();
    let related = payment
        .find_related(refunds::Entity)
        .all(conn)
        .await
        .unwrap();
    assert_eq!(related, vec![refund.clone()]);
    assert_eq!(refund.amount(), Money::new(5_000, Currency::Rub));

    let log = system_logs::ActiveModel {
        event_type: Set("payment.created".to_owned()),
        user_id: Set(Some(payment.user_id)),
        payment_id: Set(Some(payment.id)),
        provider: Set(Some(domain::ProviderId::from_static("yookassa"))),
        amount_minor: Set(Some(19_900)),
        currency: Set(Some("RUB".to_owned())),
        status: Set(Some("pending".to_owned())),
        message: Set(Some("created".to_owned())),
        metadata: Set(Some(serde_json::json!({"ip": "10.0.0.1"}))),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(conn)
    .await
    .unwrap();
    let fetched = system_logs::Entity::find()
        .filter(system_logs::Column::PaymentId.eq(payment.id))
        .one(conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched, log);
}

on_both_backends!(
    payment_round_trips,
    conditional_transition_applies_once,
    refund_and_log_round_trip,
);
