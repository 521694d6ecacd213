//! What the bot reads from and writes to the database: tariffs, users' subscriptions, the
//! pre-checkout check and the inbox for Telegram payment messages.

use chrono::Utc;
use domain::PaymentStatus;
use domain::entities::{payments, provider_notifications, subscriptions, tariffs, users};
use messaging::Envelope;
use messaging::events::ProviderNotificationReceived;
use payment_core::ProviderId;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, QueryOrder, TryInsertResult,
};
use uuid::Uuid;

/// Storing a payment message failed; the update must not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("outbox: {0}")]
    Outbox(#[from] messaging::OutboxError),
    #[error("event: {0}")]
    Event(#[from] messaging::EnvelopeError),
}

pub async fn active_tariffs(db: &DatabaseConnection) -> Result<Vec<tariffs::Model>, DbErr> {
    tariffs::Entity::find()
        .filter(tariffs::Column::Active.eq(true))
        .order_by_asc(tariffs::Column::SortOrder)
        .order_by_asc(tariffs::Column::Id)
        .all(db)
        .await
}

pub async fn tariff(db: &DatabaseConnection, code: &str) -> Result<Option<tariffs::Model>, DbErr> {
    tariffs::Entity::find()
        .filter(tariffs::Column::Code.eq(code))
        .filter(tariffs::Column::Active.eq(true))
        .one(db)
        .await
}

pub async fn user<C: ConnectionTrait>(
    db: &C,
    telegram_id: i64,
) -> Result<Option<users::Model>, DbErr> {
    users::Entity::find()
        .filter(users::Column::TelegramId.eq(telegram_id))
        .one(db)
        .await
}

pub async fn subscription(
    db: &DatabaseConnection,
    telegram_id: i64,
) -> Result<Option<subscriptions::Model>, DbErr> {
    let Some(user) = user(db, telegram_id).await? else {
        return Ok(None);
    };
    subscriptions::Entity::find()
        .filter(subscriptions::Column::UserId.eq(user.id))
        .one(db)
        .await
}

/// The answer to a `pre_checkout_query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreCheckout {
    Ok,
    /// The payload names no Telegram payment of this user.
    Unknown,
    /// Paid, failed or closed already.
    NotPending,
    /// Amount or currency differ from the payment.
    Mismatch,
}

/// Checks that `payload` names a pending Telegram payment of `from` for exactly `total` in
/// `currency`.
pub async fn check_pre_checkout(
    db: &DatabaseConnection,
    payload: &str,
    from: i64,
    currency: &str,
    total: i64,
) -> Result<PreCheckout, DbErr> {
    let Ok(id) = Uuid::parse_str(payload) else {
        return Ok(PreCheckout::Unknown);
    };
    let Some((payment, Some(user))) = payments::Entity::find_by_id(id)
        .find_also_related(users::Entity)
        .one(db)
        .await?
    else {
        return Ok(PreCheckout::Unknown);
    };
    if payment.provider != ProviderId::Telegram.as_str() || user.telegram_id != from {
        return Ok(PreCheckout::Unknown);
    }
    if payment.status != PaymentStatus::Pending {
        return Ok(PreCheckout::NotPending);
    }
    if payment.currency.code() != currency || payment.amount_minor != total {
        return Ok(PreCheckout::Mismatch);
    }
    Ok(PreCheckout::Ok)
}

/// A Telegram payment message for the inbox.
#[derive(Debug, Clone)]
pub struct Notice {
    pub dedupe_key: String,
    /// The raw update, as Telegram sent it.
    pub body: String,
    /// The invoice payload (our payment id, also the payment's `provider_payment_id`).
    pub invoice_payload: String,
}

/// What storing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New { notification_id: i64 },
    Duplicate,
}

/// Stores `notice` in the inbox with its `provider.notification.telegram` outbox row, in
/// one transaction; a second copy (same charge) adds nothing.
pub async fn store_notice(db: &DatabaseConnection, notice: &Notice) -> Result<Stored, StoreError> {
    let txn = service_kit::db::begin_write(db).await?;
    let claimed = Uuid::parse_str(&notice.invoice_payload).ok();
    let payment_id = match claimed {
        Some(id) => payments::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .map(|p| p.id),
        None => None,
    };
    let provider = ProviderId::Telegram.as_str();
    let row = provider_notifications::ActiveModel {
        id: NotSet,
        provider: Set(provider.to_owned()),
        dedupe_key: Set(notice.dedupe_key.clone()),
        source: Set("bot".to_owned()),
        peer: Set(None),
        body: Set(notice.body.clone()),
        provider_payment_id: Set(Some(notice.invoice_payload.clone())),
        payment_id: Set(payment_id),
        received_at: Set(Utc::now()),
        processed_at: Set(None),
        outcome: Set(None),
    };
    let inserted = provider_notifications::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([
                provider_notifications::Column::Provider,
                provider_notifications::Column::DedupeKey,
            ])
            .do_nothing()
            .to_owned(),
        )
        .try_insert()
        .exec(&txn)
        .await?;
    let notification_id = match inserted {
        TryInsertResult::Inserted(result) => result.last_insert_id,
        TryInsertResult::Conflicted | TryInsertResult::Empty => {
            txn.rollback().await?;
            return Ok(Stored::Duplicate);
        }
    };
    let event = ProviderNotificationReceived {
        provider: provider.to_owned(),
        notification_id,
        dedupe_key: notice.dedupe_key.clone(),
        payment_id,
    };
    let envelope = Envelope::new(&event, payment_id.unwrap_or(Uuid::nil()), None)?;
    messaging::outbox::enqueue(&txn, &envelope).await?;
    txn.commit().await?;
    Ok(Stored::New { notification_id })
}

/// A payment and its payer's Telegram id, for the admin's refund confirmation.
pub async fn payment_with_payer(
    db: &DatabaseConnection,
    id: Uuid,
) -> Result<Option<(payments::Model, Option<i64>)>, DbErr> {
    Ok(payments::Entity::find_by_id(id)
        .find_also_related(users::Entity)
        .one(db)
        .await?
        .map(|(payment, user)| (payment, user.map(|u| u.telegram_id))))
}
