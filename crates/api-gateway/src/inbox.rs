//! The inbox: a verified notification is stored in `provider_notifications` together with its
//! `provider.notification.<provider>` outbox row, in one transaction. The inbox's
//! `(provider, dedupe_key)` uniqueness turns redelivery into a no-op: a duplicate adds
//! neither row, even when the copies arrive at the same moment.

use std::sync::Arc;

use chrono::Utc;
use domain::entities::{payments, provider_notifications};
use messaging::Envelope;
use messaging::events::ProviderNotificationReceived;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, QueryFilter, QuerySelect, TryInsertResult,
};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::error::ApiError;

/// One notification to store.
#[derive(Debug, Clone)]
pub struct Notice {
    /// `yookassa`, `crypto`, …: the inbox's provider column and the routing-key suffix.
    pub provider: String,
    pub dedupe_key: String,
    /// `webhook`, or `refund_api` for refunds the admin API started.
    pub source: &'static str,
    pub peer: Option<String>,
    pub body: String,
    pub provider_payment_id: Option<String>,
    /// Our payment id as the notice claims it (checked against `payments` before use).
    pub claimed_payment_id: Option<Uuid>,
}

/// What storing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New {
        notification_id: i64,
        payment_id: Option<Uuid>,
    },
    Duplicate,
}

/// Stores `notice` and its outbox row in one transaction, then wakes the relay.
pub async fn store(
    db: &DatabaseConnection,
    nudge: &Arc<Notify>,
    notice: Notice,
) -> Result<Stored, ApiError> {
    let txn = service_kit::db::begin_write(db).await?;
    let stored = store_in(&txn, &notice).await?;
    txn.commit().await?;
    if matches!(stored, Stored::New { .. }) {
        nudge.notify_one();
    }
    Ok(stored)
}

/// Like [`store`], inside the caller's transaction (the caller commits and nudges).
pub async fn store_in<C: ConnectionTrait>(conn: &C, notice: &Notice) -> Result<Stored, ApiError> {
    let payment_id = match_payment(conn, notice).await?;
    let row = provider_notifications::ActiveModel {
        id: NotSet,
        provider: Set(notice.provider.clone()),
        dedupe_key: Set(notice.dedupe_key.clone()),
        source: Set(notice.source.to_owned()),
        peer: Set(notice.peer.clone()),
        body: Set(notice.body.clone()),
        provider_payment_id: Set(notice.provider_payment_id.clone()),
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
        .exec(conn)
        .await?;
    let notification_id = match inserted {
        TryInsertResult::Inserted(result) => result.last_insert_id,
        TryInsertResult::Conflicted | TryInsertResult::Empty => return Ok(Stored::Duplicate),
    };
    let event = ProviderNotificationReceived {
        provider: notice.provider.clone(),
        notification_id,
        dedupe_key: notice.dedupe_key.clone(),
        payment_id,
    };
    // Notices about payments we do not know still need a correlation id: the nil UUID says
    // "no payment" without inventing one.
    let envelope = Envelope::new(&event, payment_id.unwrap_or(Uuid::nil()), None)?;
    messaging::outbox::enqueue(conn, &envelope).await?;
    Ok(Stored::New {
        notification_id,
        payment_id,
    })
}

/// Our payment, by the provider's id first, else by the id the notice claims; `None` when we
/// do not know it (the notice is still recorded).
async fn match_payment<C: ConnectionTrait>(
    conn: &C,
    notice: &Notice,
) -> Result<Option<Uuid>, ApiError> {
    if let Some(provider_payment_id) = &notice.provider_payment_id {
        let found: Option<Uuid> = payments::Entity::find()
            .select_only()
            .column(payments::Column::Id)
            .filter(payments::Column::Provider.eq(notice.provider.as_str()))
            .filter(payments::Column::ProviderPaymentId.eq(provider_payment_id.as_str()))
            .into_tuple()
            .one(conn)
            .await?;
        if found.is_some() {
            return Ok(found);
        }
    }
    if let Some(claimed) = notice.claimed_payment_id {
        let found: Option<Uuid> = payments::Entity::find_by_id(claimed)
            .select_only()
            .column(payments::Column::Id)
            .into_tuple()
            .one(conn)
            .await?;
        return Ok(found);
    }
    Ok(None)
}
