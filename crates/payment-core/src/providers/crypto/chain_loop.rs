//! The crypto provider's background loop: polls TronGrid through [`ChainWatcher`], checks the
//! transactions that crypto notices name, and has the worker settle the payments whose
//! invoices moved (see [`crate::background`]).
//!
//! The watcher changes only its own rows; for each [`InvoiceOutcome`] the worker re-checks the
//! payment exactly as reconciliation does (this provider's status answers from the invoice
//! row), so the transition, its outbox event and its log row are the worker's, as for every
//! provider. A poll commits before its outcomes are applied: if applying one fails, the
//! invoice already says what happened and reconciliation completes the payment later.
//!
//! A short transfer is announced to the payer (`payment.underpaid`) by [`Announcer`], inside
//! the poll's own transaction: the event commits with the claim of the transfer, so it is
//! written once per transfer however often the history is read. The surplus of an
//! overpayment is recorded for an admin the same way (a [`OVERPAID_EVENT`] log row).
//!
//! **Notices** (`/webhook/payment/crypto`, stored in the inbox as `provider = crypto`) never
//! complete anything by themselves. The worker's notification consumer leaves their inbox
//! rows open and wakes this loop, which, outside any consumer transaction (on SQLite a second
//! writer inside one would wait for itself), asks the chain about the named transaction with
//! [`ChainWatcher::check_transaction`]: unknown or failed → recorded, nothing changes;
//! confirmed → the wallet's history is polled and its outcomes are applied exactly as the
//! polling loop applies them. The open inbox row is the durable work item: a worker that
//! stops before checking leaves it for the next one.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use domain::entities::{crypto_invoices, payments, provider_notifications};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use tokio_util::sync::CancellationToken;

use super::watcher::{
    ChainWatcher, InvoiceOutcome, NoticeCheck, OutcomeKind, OutcomeSink, WatchError,
};
use super::{ID, LatePolicy};
use crate::background::{ProviderHost, Shortfall, TaskCause};

/// `system_logs.event_type` of an overpayment's surplus.
pub const OVERPAID_EVENT: &str = "crypto.overpaid";

/// Notices checked per pass of the loop (the rest wait for the next pass).
const NOTICES_PER_PASS: u64 = 50;

/// The chain-watch loop of one worker instance (the wallet's lease lets one poll at a time).
#[derive(Clone)]
pub struct ChainLoop {
    host: Arc<dyn ProviderHost>,
    watcher: Arc<ChainWatcher>,
}

impl std::fmt::Debug for ChainLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainLoop")
            .field("watcher", &self.watcher)
            .finish_non_exhaustive()
    }
}

/// What a settlement is logged as caused by.
fn cause(outcome: &InvoiceOutcome) -> TaskCause {
    TaskCause {
        task: "chain_watch",
        key: "invoice_id",
        id: outcome.invoice_id,
    }
}

impl ChainLoop {
    /// The loop over `watcher`, settling through `host`; the watcher gets the [`Announcer`].
    pub fn new(watcher: ChainWatcher, host: Arc<dyn ProviderHost>) -> Self {
        let announcer = Announcer { host: host.clone() };
        Self {
            watcher: Arc::new(watcher.with_sink(Arc::new(announcer))),
            host,
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
                let result = self.watcher.poll_once(self.host.db()).await;
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
                () = self.host.notices().notified() => {}
            }
        }
        tracing::debug!("chain watcher stopped");
    }

    /// Checks every open crypto notice once (oldest first); returns how many were closed.
    pub async fn check_notices(&self) -> usize {
        let open = provider_notifications::Entity::find()
            .filter(provider_notifications::Column::Provider.eq(ID))
            .filter(provider_notifications::Column::ProcessedAt.is_null())
            .order_by_asc(provider_notifications::Column::Id)
            .limit(NOTICES_PER_PASS)
            .all(self.host.db())
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
                        self.host.notice_checked(&ID, outcome);
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
        let check = match self.watcher.check_transaction(self.host.db(), &tx_id).await {
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
            .exec(self.host.db())
            .await?;
        Ok(done.rows_affected == 1)
    }

    /// Has the worker apply one invoice outcome to its payment; returns the outcome label.
    /// With `CRYPTO_LATE_POLICY=flag` a late transfer flags the payment (this provider then
    /// answers `expired`; an admin decides).
    pub async fn settle(&self, outcome: &InvoiceOutcome) -> &'static str {
        let flag = match &outcome.kind {
            OutcomeKind::Late {
                received,
                action: LatePolicy::Flag,
            } => Some(format!(
                "late crypto transfer of {received} after the invoice expired"
            )),
            _ => None,
        };
        self.host
            .settle(outcome.payment_id, cause(outcome), flag)
            .await
    }
}

/// Announces a short transfer to the payer: `payment.underpaid` with what arrived, what is
/// missing and until when; records an overpayment's surplus for an admin. Both are written in
/// the chain watcher's poll transaction (see the module docs); the payment itself is settled
/// after the poll.
struct Announcer {
    host: Arc<dyn ProviderHost>,
}

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
        let Some(payment) = payments::Entity::find_by_id(outcome.payment_id)
            .one(txn)
            .await?
        else {
            tracing::warn!(payment_id = %outcome.payment_id, "transfer for an invoice without a payment");
            return Ok(());
        };
        match &outcome.kind {
            OutcomeKind::Underpaid {
                received,
                shortfall,
            } => {
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
                self.host
                    .underpaid(txn, &payment, &short, cause(outcome))
                    .await
            }
            OutcomeKind::Overpaid { received, surplus } => {
                tracing::warn!(payment_id = %payment.id, %received, %surplus, tx = %tx_id, "crypto overpayment; surplus recorded");
                let cause = cause(outcome);
                let metadata = serde_json::json!({
                    "received_minor": received.minor(),
                    "surplus_minor": surplus.minor(),
                    "tx_id": tx_id,
                    "invoice_id": outcome.invoice_id,
                    "trigger": cause.task,
                });
                let message = format!("received {received}, {surplus} more than the invoice");
                self.host
                    .log(txn, OVERPAID_EVENT, &payment, message, metadata)
                    .await
            }
            _ => Ok(()),
        }
    }
}
