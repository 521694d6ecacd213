//! The crypto chain-watch loop: polls TronGrid through
//! [`ChainWatcher`](payment_core::providers::crypto::ChainWatcher), checks the transactions
//! that crypto notices name, and settles the payments whose invoices moved.
//!
//! The watcher changes only its own rows; for each [`InvoiceOutcome`] the payment is re-checked
//! exactly as reconciliation does (the crypto status source answers from the invoice row), so
//! the transition, its outbox event and its log row come from [`crate::transition`] as for
//! every provider. A poll commits before its outcomes are applied: if applying one fails, the
//! invoice already says what happened and reconciliation completes the payment later.
//!
//! A short transfer is announced to the payer (`payment.underpaid`) by [`Announcer`], inside
//! the poll's own transaction: the event commits with the claim of the transfer, so it is
//! written once per transfer however often the history is read. The surplus of an
//! overpayment is recorded for an admin the same way (a `crypto.overpaid` log row).
//!
//! **Notices** (`/webhook/payment/crypto`, stored in the inbox as `provider = crypto`) never
//! complete anything by themselves. The notification consumer leaves their inbox rows open
//! and wakes this loop, which, outside any consumer transaction (on SQLite a second writer
//! inside one would wait for itself), asks the chain about the named transaction with
//! [`ChainWatcher::check_transaction`]: unknown or failed → recorded, nothing changes;
//! confirmed → the wallet's history is polled and its outcomes are applied exactly as the
//! polling loop applies them. The open inbox row is the durable work item: a worker that
//! stops before checking leaves it for the next one.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use domain::entities::{crypto_invoices, payments, provider_notifications};
use payment_core::PaymentService;
use payment_core::providers::crypto::{
    ChainWatcher, InvoiceOutcome, LatePolicy, NoticeCheck, OutcomeKind, OutcomeSink, WatchError,
};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::sources::{disagreement, look_up, provider_of};
use crate::transition::{self, ApplyError, Shortfall, Trigger};

/// Notices checked per pass of the loop (the rest wait for the next pass).
const NOTICES_PER_PASS: u64 = 50;

/// The chain-watch loop of one worker instance (the wallet's lease lets one poll at a time).
#[derive(Debug, Clone)]
pub struct ChainWatch {
    db: DatabaseConnection,
    watcher: Arc<ChainWatcher>,
    providers: Arc<PaymentService>,
    nudge: Arc<Notify>,
    notices: Arc<Notify>,
}

impl ChainWatch {
    /// `nudge` wakes the outbox relay after a commit that wrote events; `notices` wakes this
    /// loop when a crypto notice waits. The watcher gets the [`Announcer`].
    pub fn new(
        db: DatabaseConnection,
        watcher: ChainWatcher,
        providers: Arc<PaymentService>,
        nudge: Arc<Notify>,
        notices: Arc<Notify>,
    ) -> Self {
        Self {
            db,
            watcher: Arc::new(watcher.with_sink(Arc::new(Announcer))),
            providers,
            nudge,
            notices,
        }
    }

    /// Polls until `shutdown`; a poll in progress is finished (and its outcomes applied) first.
    /// A notice wakes the loop early to check its transaction; the next poll stays on its
    /// schedule.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut next_poll = tokio::time::Instant::now();
        loop {
            self.check_notices().await;
            if tokio::time::Instant::now() >= next_poll {
                let result = self.watcher.poll_once(&self.db).await;
                match &result {
                    Ok(poll) => {
                        for outcome in &poll.invoices {
                            self.settle(outcome).await;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "chain watcher poll failed"),
                }
                next_poll = tokio::time::Instant::now() + self.watcher.delay_after(&result);
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(next_poll) => {}
                () = self.notices.notified() => {}
            }
        }
        tracing::debug!("chain watcher stopped");
    }

    /// Checks every open crypto notice once (oldest first); returns how many were closed.
    pub async fn check_notices(&self) -> usize {
        let open = provider_notifications::Entity::find()
            .filter(
                provider_notifications::Column::Provider.eq(payment_core::providers::crypto::ID),
            )
            .filter(provider_notifications::Column::ProcessedAt.is_null())
            .order_by_asc(provider_notifications::Column::Id)
            .limit(NOTICES_PER_PASS)
            .all(&self.db)
            .await;
        let open = match open {
            Ok(open) => open,
            Err(error) => {
                tracing::warn!(%error, "cannot read crypto notices");
                return 0;
            }
        };
        let mut closed = 0;
        for row in &open {
            match self.check_notice(row).await {
                Ok(Some(outcome)) => match self.close_notice(row, outcome).await {
                    Ok(true) => {
                        closed += 1;
                        crate::metric::notification(&payment_core::providers::crypto::ID, outcome);
                        tracing::info!(
                            notification_id = row.id,
                            outcome,
                            "crypto notice checked on chain"
                        );
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(notification_id = row.id, %error, "cannot record a crypto notice's outcome");
                    }
                },
                // Left open: the next pass asks again.
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(notification_id = row.id, %error, "crypto notice not checked yet; will retry");
                }
            }
        }
        closed
    }

    /// The outcome to record for a notice, or `None` to leave it open (another worker holds
    /// the wallet's lease right now).
    async fn check_notice(
        &self,
        row: &provider_notifications::Model,
    ) -> Result<Option<&'static str>, WatchError> {
        let tx_id = serde_json::from_str::<serde_json::Value>(&row.body)
            .ok()
            .and_then(|body| body.get("tx_id")?.as_str().map(str::to_owned));
        let Some(tx_id) = tx_id.filter(|t| !t.trim().is_empty()) else {
            return Ok(Some("no_tx_id"));
        };
        let check = match self.watcher.check_transaction(&self.db, &tx_id).await {
            Err(WatchError::InvalidTxId(_)) => return Ok(Some("invalid_tx_id")),
            other => other?,
        };
        Ok(match check {
            NoticeCheck::NotOnChain => {
                tracing::warn!(notification_id = row.id, tx = %tx_id, "a crypto notice names a transaction the chain does not confirm; nothing changed");
                Some("not_on_chain")
            }
            NoticeCheck::Failed { result } => {
                tracing::warn!(notification_id = row.id, tx = %tx_id, %result, "a crypto notice names a failed transaction; nothing changed");
                Some("tx_failed")
            }
            NoticeCheck::Polled(poll) if poll.skipped => None,
            NoticeCheck::Polled(poll) => {
                for outcome in &poll.invoices {
                    self.settle(outcome).await;
                }
                Some("chain_checked")
            }
        })
    }

    /// Marks the notice processed (once, whichever worker gets there first).
    async fn close_notice(
        &self,
        row: &provider_notifications::Model,
        outcome: &'static str,
    ) -> Result<bool, DbErr> {
        use provider_notifications::Column as N;
        let done = provider_notifications::Entity::update_many()
            .col_expr(N::ProcessedAt, Expr::value(Utc::now()))
            .col_expr(N::Outcome, Expr::value(Some(outcome.to_owned())))
            .filter(N::Id.eq(row.id))
            .filter(N::ProcessedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected == 1)
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

    /// Re-checks the payment through its status source (the invoice row), as reconciliation
    /// does, and applies the answer.
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
        let Some(source) = provider_of(&self.providers, &payment) else {
            tracing::warn!(payment_id = %payment.id, provider = %payment.provider, "the invoice's payment has a provider this worker does not have");
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

/// `system_logs.event_type` of an overpayment's surplus.
pub const OVERPAID_EVENT: &str = "crypto.overpaid";

/// Announces a short transfer to the payer: `payment.underpaid` with what arrived, what is
/// missing and until when; records an overpayment's surplus for an admin. Both are written in
/// the chain watcher's poll transaction (see the module docs); the payment itself is settled
/// after the poll.
#[derive(Debug, Clone, Copy, Default)]
pub struct Announcer;

#[async_trait]
impl OutcomeSink for Announcer {
    async fn record(
        &self,
        txn: &DatabaseTransaction,
        outcome: &InvoiceOutcome,
    ) -> Result<(), DbErr> {
        let (Some(tx_id), OutcomeKind::Underpaid { .. } | OutcomeKind::Overpaid { .. }) =
            (&outcome.tx_id, &outcome.kind)
        else {
            return Ok(());
        };
        let Some(payment) = payments::Entity::find_by_id(outcome.payment_id.into_inner())
            .one(txn)
            .await?
        else {
            tracing::warn!(payment_id = %outcome.payment_id, "transfer for an invoice without a payment");
            return Ok(());
        };
        let trigger = Trigger::ChainWatch {
            invoice_id: outcome.invoice_id,
        };
        let (received, shortfall) = match &outcome.kind {
            OutcomeKind::Underpaid {
                received,
                shortfall,
            } => (received, shortfall),
            OutcomeKind::Overpaid { received, surplus } => {
                tracing::warn!(payment_id = %payment.id, %received, %surplus, tx = %tx_id, "crypto overpayment; surplus recorded");
                let metadata = serde_json::json!({
                    "received_minor": received.minor(),
                    "surplus_minor": surplus.minor(),
                    "tx_id": tx_id,
                    "invoice_id": outcome.invoice_id,
                    "trigger": trigger.name(),
                });
                let message = format!("received {received}, {surplus} more than the invoice");
                return transition::log(txn, OVERPAID_EVENT, &payment, None, message, metadata)
                    .await;
            }
            _ => return Ok(()),
        };
        let invoice = crypto_invoices::Entity::find_by_id(outcome.invoice_id)
            .one(txn)
            .await?;
        let pay_before = invoice
            .map(|i| i.expires_at)
            .or(payment.expires_at)
            .unwrap_or(outcome.at);
        let short = Shortfall {
            received_minor: received.minor(),
            shortfall_minor: shortfall.minor(),
            tx_id: tx_id.clone(),
            pay_before,
        };
        transition::underpaid(txn, &payment, &short, trigger)
            .await
            .map_err(|error| match error {
                ApplyError::Db(error) => error,
                other => DbErr::Custom(other.to_string()),
            })
    }
}
