//! The crypto chain-watch loop: polls TronGrid through
//! [`ChainWatcher`](payment_core::providers::crypto::ChainWatcher) and settles the payments
//! whose invoices moved.
//!
//! The watcher changes only its own rows; for each [`InvoiceOutcome`] the payment is re-checked
//! exactly as reconciliation does (the crypto status source answers from the invoice row), so
//! the transition, its outbox event and its log row come from [`crate::transition`] as for
//! every provider. A poll commits before its outcomes are applied: if applying one fails, the
//! invoice already says what happened and reconciliation completes the payment later.

use std::sync::Arc;

use domain::entities::payments;
use payment_core::providers::crypto::{ChainWatcher, InvoiceOutcome, LatePolicy, OutcomeKind};
use sea_orm::{DatabaseConnection, EntityTrait, TransactionTrait};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::sources::{StatusSources, disagreement, look_up};
use crate::transition::{self, ApplyError, Trigger};

/// The chain-watch loop of one worker instance (the wallet's lease lets one poll at a time).
#[derive(Debug, Clone)]
pub struct ChainWatch {
    db: DatabaseConnection,
    watcher: Arc<ChainWatcher>,
    sources: Arc<StatusSources>,
    nudge: Arc<Notify>,
}

impl ChainWatch {
    /// `nudge` wakes the outbox relay after a commit that wrote events.
    pub fn new(
        db: DatabaseConnection,
        watcher: Arc<ChainWatcher>,
        sources: Arc<StatusSources>,
        nudge: Arc<Notify>,
    ) -> Self {
        Self {
            db,
            watcher,
            sources,
            nudge,
        }
    }

    /// Polls until `shutdown`; a poll in progress is finished (and its outcomes applied) first.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let result = self.watcher.poll_once(&self.db).await;
            match &result {
                Ok(poll) => {
                    for outcome in &poll.invoices {
                        self.settle(outcome).await;
                    }
                }
                Err(error) => tracing::warn!(%error, "chain watcher poll failed"),
            }
            let delay = self.watcher.delay_after(&result);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        tracing::debug!("chain watcher stopped");
    }

    /// Applies one invoice outcome to its payment; returns the transition outcome label.
    pub async fn settle(&self, outcome: &InvoiceOutcome) -> &'static str {
        match self.try_settle(outcome).await {
            Ok(label) => label,
            Err(error) => {
                // The invoice row is committed: reconciliation will apply it.
                tracing::warn!(payment_id = %outcome.payment_id, invoice_id = outcome.invoice_id, %error, "cannot apply the chain watcher's outcome");
                "error"
            }
        }
    }

    async fn try_settle(&self, outcome: &InvoiceOutcome) -> Result<&'static str, ApplyError> {
        let trigger = Trigger::ChainWatch {
            invoice_id: outcome.invoice_id,
        };
        let Some(payment) = payments::Entity::find_by_id(outcome.payment_id.into_inner())
            .one(&self.db)
            .await?
        else {
            return Err(ApplyError::PaymentNotFound(outcome.payment_id.into_inner()));
        };
        let Some(source) = self.sources.get(&payment.provider) else {
            tracing::warn!(payment_id = %payment.id, provider = %payment.provider, "no status source for the invoice's payment");
            return Ok("no_source");
        };
        let answer = look_up(source.as_ref(), &payment, None).await;
        let tx = self.db.begin().await?;
        if let OutcomeKind::Late {
            received,
            action: LatePolicy::Flag,
        } = &outcome.kind
        {
            // CRYPTO_LATE_POLICY=flag: the provider answers `expired`; an admin decides.
            let reason = format!("late crypto transfer of {received} after the invoice expired");
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
                    tracing::warn!(payment_id = %payment.id, %error, "crypto status look-up failed; left to reconciliation");
                    "error"
                }
            },
        };
        tx.commit().await?;
        self.nudge.notify_one();
        Ok(label)
    }
}
