//! What the worker offers its providers' own loops ([`ProviderHost`]): its database, the
//! wake-up for notices those providers check themselves, and its transition code, so a
//! provider's loop (the crypto chain watcher) settles payments exactly as reconciliation does.

use std::sync::Arc;

use async_trait::async_trait;
use domain::PaymentId;
use domain::entities::payments;
use payment_core::background::{ProviderHost, Shortfall, TaskCause};
use payment_core::{PaymentService, ProviderId};
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, TransactionTrait};
use tokio::sync::Notify;

use crate::sources::{disagreement, look_up, provider_of};
use crate::transition::{self, ApplyError, Trigger};

/// The worker's side of its providers' loops.
#[derive(Debug)]
pub struct WorkerHost {
    db: DatabaseConnection,
    providers: Arc<PaymentService>,
    /// Wakes the outbox relay after a commit that wrote events.
    nudge: Arc<Notify>,
    notices: Arc<Notify>,
}

impl WorkerHost {
    pub fn new(
        db: DatabaseConnection,
        providers: Arc<PaymentService>,
        nudge: Arc<Notify>,
        notices: Arc<Notify>,
    ) -> Self {
        Self {
            db,
            providers,
            nudge,
            notices,
        }
    }

    /// Re-checks the payment through its status source, as reconciliation does, and applies
    /// the answer (after the flag, if any).
    async fn try_settle(
        &self,
        payment_id: PaymentId,
        trigger: Trigger,
        flag: Option<String>,
    ) -> Result<&'static str, ApplyError> {
        let Some(payment) = payments::Entity::find_by_id(payment_id)
            .one(&self.db)
            .await?
        else {
            return Err(ApplyError::PaymentNotFound(payment_id));
        };
        let Some(source) = provider_of(&self.providers, &payment) else {
            tracing::warn!(payment_id = %payment.id, provider = %payment.provider, "a payment settled by a provider's loop has a provider this worker does not have");
            return Ok("no_source");
        };
        let answer = look_up(source.as_ref(), &payment, None).await;
        let tx = self.db.begin().await?;
        if let Some(reason) = flag {
            transition::flag(&tx, &payment, &reason, trigger).await?;
        }
        let label = match answer {
            Ok(answer) => transition::apply(&tx, payment.id, &answer, trigger)
                .await?
                .outcome(),
            Err(error) => match disagreement(&error) {
                Some(reason) => {
                    transition::flag(&tx, &payment, &reason, trigger).await?;
                    "flagged"
                }
                None => {
                    tracing::warn!(payment_id = %payment.id, %error, "status look-up failed; left to reconciliation");
                    "error"
                }
            },
        };
        tx.commit().await?;
        self.nudge.notify_one();
        Ok(label)
    }
}

#[async_trait]
impl ProviderHost for WorkerHost {
    fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    fn notices(&self) -> &Notify {
        &self.notices
    }

    async fn settle(
        &self,
        payment_id: PaymentId,
        cause: TaskCause,
        flag: Option<String>,
    ) -> &'static str {
        match self
            .try_settle(payment_id, Trigger::Task(cause), flag)
            .await
        {
            Ok(label) => label,
            Err(error) => {
                // The provider's own row is committed: reconciliation will apply it.
                tracing::warn!(payment_id = %payment_id, task = cause.task, id = cause.id, %error, "cannot apply a provider loop's outcome");
                "error"
            }
        }
    }

    async fn underpaid(
        &self,
        txn: &DatabaseTransaction,
        payment: &payments::Model,
        short: &Shortfall,
        cause: TaskCause,
    ) -> Result<(), DbErr> {
        transition::underpaid(txn, payment, short, Trigger::Task(cause))
            .await
            .map_err(|error| match error {
                ApplyError::Db(error) => error,
                other => DbErr::Custom(other.to_string()),
            })
    }

    async fn log(
        &self,
        txn: &DatabaseTransaction,
        event_type: &str,
        payment: &payments::Model,
        message: String,
        metadata: serde_json::Value,
    ) -> Result<(), DbErr> {
        transition::log(txn, event_type, payment, None, message, metadata).await
    }

    fn notice_checked(&self, provider: &ProviderId, outcome: &'static str) {
        crate::metric::notification(provider, outcome);
    }
}
