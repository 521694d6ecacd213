//! The consumer: `payment.completed` grants days, `payment.refunded` takes them back; both
//! bring the panel in line with the ledger and announce the result.
//!
//! Everything happens inside the runner's transaction, in this order: lock the subscription
//! row, write the ledger, call the panel, update the subscription, enqueue the event. The
//! runner commits only when all of it succeeded, so a committed grant always means the panel
//! was updated. A panel failure rolls the ledger back and the message is retried; the retry
//! derives the expiry from the same ledger and sends it as an absolute value, so an update
//! the panel applied but could not confirm is simply applied again, never added twice.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::entities::{payments, subscription_grants, subscriptions, tariffs, users};
use domain::ids::{MarzbanUsername, TelegramUserId};
use domain::status::PaymentStatus;
use messaging::events::{
    PaymentCompleted, PaymentRefunded, SubscriptionActivated, SubscriptionChange,
    SubscriptionRevoked,
};
use messaging::{Envelope, Event, Handler, HandlerError, OutboxError};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use crate::ledger::{self, Entry};
use crate::marzban::{MarzbanClient, MarzbanError, UserResponse};
use crate::panel::{self, Desired};

/// The consumer name: queue `<prefix>.marzban-sync` and the `processed_messages` key.
pub const CONSUMER: &str = "marzban-sync";

/// Counter: grants written for payments.
pub const METRIC_GRANTS: &str = "marzban_sync_grants_total";
/// Counter: refunds that took days back.
pub const METRIC_REVOCATIONS: &str = "marzban_sync_revocations_total";

/// `subscription_grants.kind` of a paid grant.
pub const KIND_PURCHASE: &str = "purchase";

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("Marzban: {0}")]
    Panel(#[from] MarzbanError),
    /// The event cannot be applied now but may be later (e.g. a refund before its grant).
    #[error("{0}")]
    NotYet(String),
    /// The event makes no sense against our data; retrying will not help.
    #[error("{0}")]
    Invalid(String),
}

impl From<SyncError> for HandlerError {
    fn from(error: SyncError) -> Self {
        let permanent = match &error {
            SyncError::Db(_) | SyncError::Outbox(_) | SyncError::NotYet(_) => false,
            // Refused credentials may be a panel restart or a fix on its way: retry, then park.
            SyncError::Panel(e) => {
                !(e.is_retryable() || matches!(e, MarzbanError::Unauthorized { .. }))
            }
            SyncError::Invalid(_) => true,
        };
        if permanent {
            HandlerError::permanent(error)
        } else {
            HandlerError::transient(error)
        }
    }
}

/// The `marzban-sync` [`Handler`].
#[derive(Debug, Clone)]
pub struct SubscriptionSync {
    client: MarzbanClient,
}

impl SubscriptionSync {
    pub fn new(client: MarzbanClient) -> Self {
        Self { client }
    }

    /// `payment.completed`: one grant per payment, the panel user active until the new expiry,
    /// then `subscription.activated`.
    pub async fn on_completed(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        event: &PaymentCompleted,
    ) -> Result<(), SyncError> {
        let payment_id = event.payment.payment_id;
        let payment = payments::Entity::find_by_id(payment_id)
            .one(tx)
            .await?
            .ok_or_else(|| SyncError::Invalid(format!("unknown payment {payment_id}")))?;
        if !matches!(
            payment.status,
            PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
        ) {
            return Err(SyncError::Invalid(format!(
                "payment {payment_id} is {}, not paid",
                payment.status.as_str()
            )));
        }
        let tariff = tariffs::Entity::find_by_id(payment.tariff_id)
            .one(tx)
            .await?
            .ok_or_else(|| SyncError::Invalid(format!("payment {payment_id}: unknown tariff")))?;
        if tariff.duration_days <= 0 {
            return Err(SyncError::Invalid(format!(
                "tariff {} grants {} days",
                tariff.code, tariff.duration_days
            )));
        }
        let (subscription, telegram_id) = lock_or_create_subscription(tx, payment.user_id).await?;

        // Under the subscription lock, so a concurrent delivery of the same payment waits
        // here and then sees the grant.
        if let Some(grant) = find_grant(tx, payment_id).await? {
            tracing::info!(%payment_id, grant_id = grant.id, "payment already granted; nothing to do");
            return Ok(());
        }

        let now = ledger::whole_seconds(Utc::now());
        let current = has_grants(tx, subscription.id)
            .await?
            .then_some(subscription.expires_at);
        let expires_at = ledger::extend(current, now, tariff.duration_days);
        subscription_grants::ActiveModel {
            id: NotSet,
            subscription_id: Set(subscription.id),
            payment_id: Set(Some(payment_id)),
            kind: Set(KIND_PURCHASE.to_owned()),
            days_granted: Set(tariff.duration_days),
            days_revoked: Set(0),
            expires_at_after: Set(expires_at),
            created_at: Set(now),
            revoked_at: Set(None),
        }
        .insert(tx)
        .await?;

        let desired = Desired::new(
            username(&subscription)?,
            expires_at,
            tariff.data_limit_bytes,
        );
        let note = format!("telegram {telegram_id}");
        let user = panel::activate(
            &self.client,
            &desired,
            subscription.synced_at.is_some(),
            &note,
        )
        .await?;
        let url = self.client.subscription_url(&user);
        tracing::info!(%payment_id, username = %desired.username, expires_at = %expires_at, days = tariff.duration_days, "subscription extended");
        // Counted before the commit: a rolled-back attempt is counted again when retried.
        metrics::counter!(METRIC_GRANTS).increment(1);
        save_sync(
            tx,
            subscription,
            expires_at,
            desired.data_limit,
            Some(&user),
            Some(url.clone()),
            now,
        )
        .await?;

        let change = change(telegram_id, payment_id, &desired, expires_at, url);
        let activated = SubscriptionActivated {
            subscription: change,
        };
        messaging::outbox::enqueue(
            tx,
            &Envelope::caused_by(&activated, envelope).map_err(OutboxError::from)?,
        )
        .await?;
        Ok(())
    }

    /// `payment.refunded`: the payment's grant loses days in proportion to what was refunded,
    /// the expiry is replayed from the ledger, the panel follows (disabled when nothing is
    /// left), then `subscription.revoked`.
    pub async fn on_refunded(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        event: &PaymentRefunded,
    ) -> Result<(), SyncError> {
        let payment_id = event.payment.payment_id;
        let Some(grant) = find_grant(tx, payment_id).await? else {
            // payment.completed may still be waiting for the panel; its grant comes first.
            return Err(SyncError::NotYet(format!(
                "payment {payment_id} refunded but not granted yet"
            )));
        };
        let subscription = subscriptions::Entity::find_by_id(grant.subscription_id)
            .lock_exclusive()
            .one(tx)
            .await?
            .ok_or_else(|| SyncError::Invalid(format!("grant {} has no subscription", grant.id)))?;
        // Read again under the lock: a concurrent refund of the same payment may have won.
        let grant = find_grant(tx, payment_id)
            .await?
            .ok_or_else(|| SyncError::Invalid(format!("grant of {payment_id} vanished")))?;
        let revoke = ledger::days_to_revoke(
            grant.days_granted,
            event.payment.amount_minor,
            event.total_refunded_minor,
        );
        if revoke <= grant.days_revoked {
            tracing::info!(%payment_id, days_revoked = grant.days_revoked, "refund already applied; nothing to do");
            return Ok(());
        }

        let now = ledger::whole_seconds(Utc::now());
        let mut revoked: subscription_grants::ActiveModel = grant.clone().into();
        revoked.days_revoked = Set(revoke);
        revoked.revoked_at = Set(Some(now));
        revoked.update(tx).await?;

        let entries: Vec<Entry> = subscription_grants::Entity::find()
            .filter(subscription_grants::Column::SubscriptionId.eq(subscription.id))
            // Insertion order, which the subscription lock makes the order of the grants.
            .order_by_asc(subscription_grants::Column::Id)
            .all(tx)
            .await?
            .into_iter()
            .map(|g| Entry {
                granted_at: g.created_at,
                days_granted: g.days_granted,
                days_revoked: g.days_revoked,
            })
            .collect();
        let expires_at = ledger::replay(&entries).unwrap_or(now);

        let desired = Desired::new(
            username(&subscription)?,
            expires_at,
            subscription.data_limit_bytes,
        );
        let user = panel::shorten(&self.client, &desired, now).await?;
        let url = user
            .as_ref()
            .map(|u| self.client.subscription_url(u))
            .or_else(|| subscription.subscription_url.clone())
            .unwrap_or_default();
        tracing::info!(%payment_id, username = %desired.username, days_revoked = revoke - grant.days_revoked, expires_at = %expires_at, paid = desired.is_paid_at(now), "days revoked");
        metrics::counter!(METRIC_REVOCATIONS).increment(1);
        let telegram_id = telegram_id_of(tx, subscription.user_id).await?;
        let data_limit = desired.data_limit;
        save_sync(
            tx,
            subscription,
            expires_at,
            data_limit,
            user.as_ref(),
            Some(url.clone()).filter(|u| !u.is_empty()),
            now,
        )
        .await?;

        let revoked = SubscriptionRevoked {
            subscription: change(telegram_id, payment_id, &desired, expires_at, url),
        };
        messaging::outbox::enqueue(
            tx,
            &Envelope::caused_by(&revoked, envelope).map_err(OutboxError::from)?,
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Handler for SubscriptionSync {
    fn consumer(&self) -> &str {
        CONSUMER
    }

    fn bindings(&self) -> Vec<String> {
        vec![
            PaymentCompleted::EVENT_TYPE.to_owned(),
            PaymentRefunded::EVENT_TYPE.to_owned(),
        ]
    }

    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        _prepared: messaging::Prepared,
    ) -> Result<(), HandlerError> {
        if envelope.is::<PaymentCompleted>() {
            let event: PaymentCompleted = envelope.decode()?;
            Ok(self.on_completed(tx, envelope, &event).await?)
        } else if envelope.is::<PaymentRefunded>() {
            let event: PaymentRefunded = envelope.decode()?;
            Ok(self.on_refunded(tx, envelope, &event).await?)
        } else {
            Ok(())
        }
    }
}

/// The user's subscription row, locked for this transaction; created (expiring now, never
/// synced) on the first payment. Also returns the user's Telegram id.
async fn lock_or_create_subscription(
    tx: &DatabaseTransaction,
    user_id: i64,
) -> Result<(subscriptions::Model, i64), SyncError> {
    let telegram_id = telegram_id_of(tx, user_id).await?;
    let telegram = TelegramUserId::parse(telegram_id)
        .map_err(|e| SyncError::Invalid(format!("user {user_id}: telegram id: {e}")))?;
    if let Some(subscription) = find_locked(tx, user_id).await? {
        return Ok((subscription, telegram_id));
    }
    let now = ledger::whole_seconds(Utc::now());
    // A concurrent first payment of the same user waits on the unique index here, then
    // skips its insert and locks the other's row.
    subscriptions::Entity::insert(subscriptions::ActiveModel {
        id: NotSet,
        user_id: Set(user_id),
        marzban_username: Set(MarzbanUsername::from_telegram_id(telegram).into_inner()),
        expires_at: Set(now),
        data_limit_bytes: Set(None),
        status: Set("new".to_owned()),
        subscription_url: Set(None),
        synced_at: Set(None),
        sync_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict_do_nothing_on([subscriptions::Column::UserId])
    .exec_without_returning(tx)
    .await?;
    let subscription = find_locked(tx, user_id)
        .await?
        .ok_or_else(|| SyncError::Invalid(format!("no subscription row for user {user_id}")))?;
    Ok((subscription, telegram_id))
}

async fn find_locked(
    tx: &DatabaseTransaction,
    user_id: i64,
) -> Result<Option<subscriptions::Model>, DbErr> {
    subscriptions::Entity::find()
        .filter(subscriptions::Column::UserId.eq(user_id))
        .lock_exclusive()
        .one(tx)
        .await
}

async fn telegram_id_of(conn: &impl ConnectionTrait, user_id: i64) -> Result<i64, SyncError> {
    users::Entity::find_by_id(user_id)
        .one(conn)
        .await?
        .map(|user| user.telegram_id)
        .ok_or_else(|| SyncError::Invalid(format!("unknown user {user_id}")))
}

async fn find_grant(
    conn: &impl ConnectionTrait,
    payment_id: Uuid,
) -> Result<Option<subscription_grants::Model>, DbErr> {
    subscription_grants::Entity::find()
        .filter(subscription_grants::Column::PaymentId.eq(payment_id))
        .one(conn)
        .await
}

async fn has_grants(conn: &impl ConnectionTrait, subscription_id: i64) -> Result<bool, DbErr> {
    Ok(subscription_grants::Entity::find()
        .filter(subscription_grants::Column::SubscriptionId.eq(subscription_id))
        .one(conn)
        .await?
        .is_some())
}

pub(crate) fn username(subscription: &subscriptions::Model) -> Result<MarzbanUsername, SyncError> {
    MarzbanUsername::parse(subscription.marzban_username.as_str()).map_err(|e| {
        SyncError::Invalid(format!(
            "subscription {}: marzban username: {e}",
            subscription.id
        ))
    })
}

/// Records a successful push to the panel on the subscription row.
pub(crate) async fn save_sync(
    conn: &impl ConnectionTrait,
    subscription: subscriptions::Model,
    expires_at: DateTime<Utc>,
    data_limit: Option<i64>,
    user: Option<&UserResponse>,
    subscription_url: Option<String>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let status = user.map_or("absent", |u| panel::status_str(u.status));
    let mut row: subscriptions::ActiveModel = subscription.into();
    row.expires_at = Set(expires_at);
    row.data_limit_bytes = Set(data_limit);
    row.status = Set(status.to_owned());
    if subscription_url.is_some() {
        row.subscription_url = Set(subscription_url);
    }
    row.synced_at = Set(Some(now));
    row.sync_error = Set(None);
    row.updated_at = Set(now);
    row.update(conn).await?;
    Ok(())
}

fn change(
    telegram_id: i64,
    payment_id: Uuid,
    desired: &Desired,
    expires_at: DateTime<Utc>,
    subscription_url: String,
) -> SubscriptionChange {
    SubscriptionChange {
        telegram_id,
        payment_id,
        marzban_username: desired.username.as_str().to_owned(),
        expires_at,
        subscription_url,
    }
}
