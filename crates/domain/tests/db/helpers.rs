use chrono::{DateTime, SubsecRound, Utc};
use domain::entities::{payments, subscription_grants, subscriptions, tariffs, users};
use domain::{Currency, IdempotencyKey, PaymentId, PaymentStatus};
use sea_orm::{ActiveModelTrait, DatabaseConnection, DbErr, Set, SqlErr};

/// Runs each listed `async fn(&DatabaseConnection)` once on PostgreSQL and once on SQLite.
#[macro_export]
macro_rules! on_both_backends {
    ($($check:ident),+ $(,)?) => {
        $(
            mod $check {
                #[tokio::test]
                async fn postgres() {
                    let db = testkit::TestDb::new().await;
                    super::$check(&db.conn).await;
                }

                #[tokio::test]
                async fn sqlite() {
                    let db = testkit::TestDb::sqlite().await;
                    super::$check(&db.conn).await;
                }
            }
        )+
    };
}

/// Now, at the microsecond precision PostgreSQL keeps, so values round-trip exactly.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn assert_unique_violation(result: Result<impl std::fmt::Debug, DbErr>) {
    match result {
        Err(err) => assert!(
            matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))),
            "expected a unique violation, got {err:?}"
        ),
        Ok(value) => panic!("expected a unique violation, got {value:?}"),
    }
}

/// sea-orm has no `SqlErr` variant for CHECK constraints; both backends name it in the text.
pub fn assert_check_violation(result: Result<impl std::fmt::Debug, DbErr>) {
    match result {
        Err(err) => assert!(
            err.to_string().to_lowercase().contains("check constraint"),
            "expected a CHECK violation, got {err:?}"
        ),
        Ok(value) => panic!("expected a CHECK violation, got {value:?}"),
    }
}

pub async fn user(conn: &DatabaseConnection, telegram_id: i64) -> users::Model {
    users::ActiveModel {
        telegram_id: Set(telegram_id),
        username: Set(Some(format!("user{telegram_id}"))),
        first_name: Set(Some("Test".to_owned())),
        language_code: Set(Some("ru".to_owned())),
        created_at: Set(now()),
        ..Default::default()
    }
    .insert(conn)
    .await
    .unwrap()
}

pub async fn tariff(conn: &DatabaseConnection, code: &str) -> tariffs::Model {
    tariffs::ActiveModel {
        code: Set(code.to_owned()),
        title: Set("1 month".to_owned()),
        duration_days: Set(30),
        data_limit_bytes: Set(None),
        price_rub_minor: Set(Some(19_900)),
        price_xtr: Set(Some(150)),
        price_usdt_minor: Set(Some(2_500_000)),
        active: Set(true),
        sort_order: Set(1),
        ..Default::default()
    }
    .insert(conn)
    .await
    .unwrap()
}

/// A pending RUB payment by a new user; callers override fields before inserting.
pub async fn pending_payment(conn: &DatabaseConnection, telegram_id: i64) -> payments::ActiveModel {
    let user = user(conn, telegram_id).await;
    let tariff = tariff(conn, &format!("m1-{telegram_id}")).await;
    let now = now();
    payments::ActiveModel {
        id: Set(PaymentId::new()),
        user_id: Set(user.id),
        tariff_id: Set(tariff.id),
        provider: Set(domain::ProviderId::from_static("yookassa")),
        amount_minor: Set(19_900),
        currency: Set(Currency::Rub),
        status: Set(PaymentStatus::Pending),
        provider_payment_id: Set(None),
        idempotency_key: Set(IdempotencyKey::random().into_inner()),
        confirmation_url: Set(None),
        failure_reason: Set(None),
        metadata: Set(serde_json::json!({})),
        created_at: Set(now),
        updated_at: Set(now),
        completed_at: Set(None),
        expires_at: Set(None),
        refunded_minor: Set(0),
        flagged: Set(false),
        flag_reason: Set(None),
        next_check_at: Set(None),
        check_attempts: Set(0),
    }
}

pub fn subscription_model(user_id: i64) -> subscriptions::ActiveModel {
    let now = now();
    subscriptions::ActiveModel {
        user_id: Set(user_id),
        marzban_username: Set(format!("tg_{user_id}")),
        expires_at: Set(now),
        data_limit_bytes: Set(None),
        status: Set("active".to_owned()),
        subscription_url: Set(None),
        synced_at: Set(None),
        sync_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
}

pub async fn subscription(conn: &DatabaseConnection, user_id: i64) -> subscriptions::Model {
    subscription_model(user_id).insert(conn).await.unwrap()
}

pub fn grant(
    subscription_id: i64,
    payment_id: Option<domain::PaymentId>,
) -> subscription_grants::ActiveModel {
    subscription_grants::ActiveModel {
        subscription_id: Set(subscription_id),
        payment_id: Set(payment_id),
        kind: Set("purchase".to_owned()),
        days_granted: Set(30),
        days_revoked: Set(0),
        expires_at_after: Set(now()),
        created_at: Set(now()),
        revoked_at: Set(None),
        ..Default::default()
    }
}
