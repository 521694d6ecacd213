//! Telegram Stars subscriptions as "My subscription" shows them (table `star_subscriptions`).
//!
//! A subscription is born with the `successful_payment` of a subscription invoice link
//! (`is_first_recurring`): its invoice payload (our first payment's id) names it, and its
//! charge id is what `editUserStarSubscription` takes. Every recurring charge moves
//! `expires_at` on (never back: a late copy changes nothing). Whether the user canceled it is
//! set after Telegram accepted the change. The charges themselves are payments, kept by the
//! inbox and the worker; this table holds no money.

use chrono::{DateTime, TimeZone, Utc};
use payment_core::providers::telegram::transformers::SuccessfulPayment;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};

/// How long a Star subscription runs between charges: Telegram's only `subscription_period`.
pub const PERIOD_SECS: u32 = 2_592_000;
/// The tariff length sold as a Stars subscription.
pub const PERIOD_DAYS: i32 = 30;

/// A user's Stars subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StarSubscription {
    pub invoice_payload: String,
    /// The first payment's charge id.
    pub charge_id: String,
    pub telegram_id: i64,
    /// Paid until.
    pub expires_at: DateTime<Utc>,
    pub canceled: bool,
}

/// Records what a subscription's `successful_payment` says (nothing for other payments): the
/// first charge starts it, a later one moves its expiry on.
pub async fn record(
    db: &DatabaseConnection,
    telegram_id: i64,
    paid: &SuccessfulPayment,
) -> Result<(), DbErr> {
    let (Some(true), Some(expires_at)) = (paid.is_recurring, paid.subscription_expiration_date)
    else {
        return Ok(());
    };
    let later = "CASE WHEN excluded.expires_at > star_subscriptions.expires_at \
                 THEN excluded.expires_at ELSE star_subscriptions.expires_at END";
    let statement = if paid.is_renewal() {
        Statement::from_sql_and_values(
            db.get_database_backend(),
            "UPDATE star_subscriptions SET expires_at = CASE WHEN $1 > expires_at THEN $1 \
             ELSE expires_at END WHERE invoice_payload = $2 AND telegram_id = $3",
            [
                expires_at.into(),
                paid.invoice_payload.clone().into(),
                telegram_id.into(),
            ],
        )
    } else {
        Statement::from_sql_and_values(
            db.get_database_backend(),
            format!(
                "INSERT INTO star_subscriptions \
                 (invoice_payload, telegram_payment_charge_id, telegram_id, expires_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (invoice_payload) DO UPDATE SET \
                 expires_at = {later}"
            ),
            [
                paid.invoice_payload.clone().into(),
                paid.telegram_payment_charge_id.clone().into(),
                telegram_id.into(),
                expires_at.into(),
            ],
        )
    };
    db.execute_raw(statement).await?;
    Ok(())
}

/// The user's Stars subscription that runs longest, if any.
pub async fn of_user(
    db: &DatabaseConnection,
    telegram_id: i64,
) -> Result<Option<StarSubscription>, DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT invoice_payload, telegram_payment_charge_id, expires_at, canceled \
             FROM star_subscriptions WHERE telegram_id = $1 \
             ORDER BY expires_at DESC LIMIT 1",
            [telegram_id.into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let expires_at: i64 = row.try_get("", "expires_at")?;
    Ok(Some(StarSubscription {
        invoice_payload: row.try_get("", "invoice_payload")?,
        charge_id: row.try_get("", "telegram_payment_charge_id")?,
        telegram_id,
        expires_at: Utc
            .timestamp_opt(expires_at, 0)
            .single()
            .unwrap_or_default(),
        canceled: row.try_get("", "canceled")?,
    }))
}

/// Records that Telegram canceled (or re-enabled) the subscription.
pub async fn set_canceled(
    db: &DatabaseConnection,
    invoice_payload: &str,
    canceled: bool,
) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        "UPDATE star_subscriptions SET canceled = $1 WHERE invoice_payload = $2",
        [canceled.into(), invoice_payload.into()],
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use domain::migration::Migrator;
    use sea_orm_migration::MigratorTrait;

    use super::*;

    fn charge(id: &str, expires: i64, first: bool) -> SuccessfulPayment {
        serde_json::from_value(serde_json::json!({
            "currency": "XTR", "total_amount": 150, "invoice_payload": "pay-1",
            "telegram_payment_charge_id": id, "is_recurring": true,
            "is_first_recurring": first, "subscription_expiration_date": expires,
        }))
        .expect("a successful_payment")
    }

    /// The SQL on SQLite, the single-process mode's database: the first charge starts the
    /// subscription, later ones move its expiry on and never back, cancel is kept.
    #[tokio::test]
    async fn charges_move_the_expiry_on_sqlite() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        Migrator::up(&db, None).await.unwrap();
        record(&db, 42, &charge("stx1", 1_000, true)).await.unwrap();
        record(&db, 42, &charge("stx3", 1_000 + 2 * 2_592_000, false))
            .await
            .unwrap();
        record(&db, 42, &charge("stx2", 1_000 + 2_592_000, false))
            .await
            .unwrap();
        record(&db, 43, &charge("stx9", 9_999_999_999, false))
            .await
            .unwrap();
        set_canceled(&db, "pay-1", true).await.unwrap();
        let found = of_user(&db, 42).await.unwrap().expect("recorded");
        assert_eq!(found.charge_id, "stx1", "named by the first charge");
        assert_eq!(found.expires_at.timestamp(), 1_000 + 2 * 2_592_000);
        assert!(found.canceled);
        assert!(
            of_user(&db, 43).await.unwrap().is_none(),
            "someone else's charge for this payload moves nothing"
        );
    }
}
