//! The `provider.notification.*` consumer.
//!
//! The gateway (or the bot) stored a verified notification in the inbox and announced it.
//! For each announcement, inside the runner's transaction (so the idempotency row, the
//! payment change, its outbox event, its log row and the inbox outcome commit together):
//!
//! 1. lock the inbox row; if it was processed already, this is a duplicate: done;
//! 2. find our payment by `(provider, provider_payment_id)`, else by our payment id;
//! 3. ask the payment's [`StatusSource`](crate::sources::StatusSource) — for YooKassa a fresh
//!    `GET` of the payment, never the body's claim;
//! 4. apply the answer ([`crate::transition::apply`]) and record the outcome on the inbox row.
//!
//! A look-up without a definite answer (HTTP 5xx, timeouts) fails the message transiently:
//! it is retried through the delay queues and the payment stays as it is.
//!
//! Crypto notices are the exception when this worker watches the chain: their inbox rows stay
//! open for the chain-watch loop, which asks the chain about the named transaction outside
//! this transaction ([`crate::chain`]); the consumer only wakes it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use domain::entities::{payments, provider_notifications};
use messaging::events::ProviderNotificationReceived;
use messaging::{Envelope, Event, Handler, HandlerError};
use payment_core::{ProviderError, ProviderId, RejectionCode};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QuerySelect};

use crate::metric;
use crate::sources::{StatusSources, disagreement, look_up};
use crate::transition::{self, ApplyError, Trigger};

/// The consumer name: queue `<prefix>.payment-worker`, `processed_messages.consumer`.
pub const CONSUMER: &str = "payment-worker";

/// Applies provider notifications. See the module docs.
#[derive(Debug, Clone)]
pub struct NotificationHandler {
    sources: Arc<StatusSources>,
}

impl NotificationHandler {
    pub fn new(sources: Arc<StatusSources>) -> Self {
        Self { sources }
    }

    async fn process(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        event: &ProviderNotificationReceived,
    ) -> Result<&'static str, HandlerError> {
        let Some(row) = provider_notifications::Entity::find_by_id(event.notification_id)
            .lock_exclusive()
            .one(tx)
            .await?
        else {
            // The gateway writes the row and the event in one transaction, so this is not a
            // timing issue: park it for a look.
            return Err(HandlerError::permanent(format!(
                "notification {} is not in the inbox",
                event.notification_id
            )));
        };
        if row.processed_at.is_some() {
            return Ok("already_processed");
        }
        if row.provider == ProviderId::Crypto.as_str()
            && let Some(chain) = self.sources.chain_notices()
        {
            chain.notify_one();
            return Ok("chain_check");
        }

        let Some(payment) = find_payment(tx, &row, event).await? else {
            tracing::warn!(notification_id = row.id, provider = %row.provider, provider_payment_id = ?row.provider_payment_id, "notification about a payment we do not know; recorded");
            return finish(tx, &row, None, "unknown_payment").await;
        };
        if payment.provider != row.provider {
            tracing::warn!(notification_id = row.id, payment_id = %payment.id, notification_provider = %row.provider, payment_provider = %payment.provider, "notification from another provider than the payment's; ignored");
            return finish(tx, &row, Some(payment.id), "wrong_provider").await;
        }
        let Some(source) = self.sources.get(&payment.provider) else {
            // Parked, inbox row untouched: replay once a worker that knows the provider runs.
            return Err(HandlerError::permanent(format!(
                "no status source for provider {:?} in this worker",
                payment.provider
            )));
        };

        let trigger = Trigger::Notification {
            notification_id: row.id,
            event_id: envelope.event_id,
        };
        let outcome = match look_up(source.as_ref(), &payment, Some(&row)).await {
            Ok(answer) => transition::apply(tx, payment.id, &answer, trigger)
                .await
                .map_err(apply_error)?
                .outcome(),
            Err(error) if error.is_result_unknown() => {
                tracing::warn!(payment_id = %payment.id, notification_id = row.id, %error, "provider gave no definite answer; the notification will be retried");
                return Err(HandlerError::transient(error));
            }
            Err(error) => match disagreement(&error) {
                Some(reason) => {
                    transition::flag(tx, &payment, &reason, trigger).await?;
                    "flagged"
                }
                None => rejected(&payment, &row, error)?,
            },
        };
        finish(tx, &row, Some(payment.id), outcome).await
    }
}

/// Definite provider refusals that a retry cannot change are recorded; our own failures
/// (provider disabled, bad settings) park the message so nothing is lost.
fn rejected(
    payment: &payments::Model,
    row: &provider_notifications::Model,
    error: ProviderError,
) -> Result<&'static str, HandlerError> {
    match &error {
        ProviderError::Rejected(rejection) if rejection.code == RejectionCode::NotFound => {
            tracing::error!(payment_id = %payment.id, notification_id = row.id, %error, "the provider does not know this payment");
            Ok("provider_not_found")
        }
        ProviderError::InvalidRequest(_) => {
            tracing::error!(payment_id = %payment.id, notification_id = row.id, %error, "cannot look the payment up");
            Ok("not_looked_up")
        }
        _ => Err(HandlerError::permanent(error)),
    }
}

fn apply_error(error: ApplyError) -> HandlerError {
    match error {
        ApplyError::Db(_) | ApplyError::Outbox(_) | ApplyError::PaymentNotFound(_) => {
            HandlerError::transient(error)
        }
        ApplyError::Event(_) => HandlerError::permanent(error),
    }
}

/// Our payment: by the provider's id first, else by the id the gateway matched or the
/// event names.
async fn find_payment(
    tx: &DatabaseTransaction,
    row: &provider_notifications::Model,
    event: &ProviderNotificationReceived,
) -> Result<Option<payments::Model>, DbErr> {
    if let Some(provider_payment_id) = &row.provider_payment_id {
        let found = payments::Entity::find()
            .filter(payments::Column::Provider.eq(row.provider.as_str()))
            .filter(payments::Column::ProviderPaymentId.eq(provider_payment_id.as_str()))
            .one(tx)
            .await?;
        if found.is_some() {
            return Ok(found);
        }
    }
    for id in [row.payment_id, event.payment_id].into_iter().flatten() {
        if let Some(found) = payments::Entity::find_by_id(id).one(tx).await? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Marks the inbox row processed with `outcome`.
async fn finish(
    tx: &DatabaseTransaction,
    row: &provider_notifications::Model,
    payment_id: Option<uuid::Uuid>,
    outcome: &'static str,
) -> Result<&'static str, HandlerError> {
    use provider_notifications::Column as N;
    let mut update = provider_notifications::Entity::update_many()
        .col_expr(N::ProcessedAt, Expr::value(Utc::now()))
        .col_expr(N::Outcome, Expr::value(Some(outcome.to_owned())))
        .filter(N::Id.eq(row.id));
    if row.payment_id.is_none() && payment_id.is_some() {
        update = update.col_expr(N::PaymentId, Expr::value(payment_id));
    }
    update.exec(tx).await?;
    Ok(outcome)
}

#[async_trait]
impl Handler for NotificationHandler {
    fn consumer(&self) -> &str {
        CONSUMER
    }

    fn bindings(&self) -> Vec<String> {
        vec![format!("{}.*", ProviderNotificationReceived::EVENT_TYPE)]
    }

    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        _prepared: messaging::Prepared,
    ) -> Result<(), HandlerError> {
        if !envelope.is::<ProviderNotificationReceived>() {
            return Ok(());
        }
        let event: ProviderNotificationReceived = envelope.decode()?;
        let lag = (Utc::now() - envelope.occurred_at)
            .num_milliseconds()
            .max(0) as f64
            / 1000.0;
        metric::notification_lag(&event.provider, lag);
        let outcome = self.process(tx, envelope, &event).await?;
        metric::notification(&event.provider, outcome);
        tracing::info!(notification_id = event.notification_id, provider = %event.provider, outcome, "notification processed");
        Ok(())
    }
}
