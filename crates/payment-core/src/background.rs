//! A provider's own background loop (the crypto chain watcher) and what it may ask of the
//! worker that runs it.
//!
//! The worker starts every provider's [`PaymentProvider::background_task`] beside its
//! consumer and gives it a [`ProviderHost`]: the database, a wake-up for the notices the
//! provider checks itself, and the worker's own ways of settling a payment and of writing its
//! events and log rows. So a provider that needs a loop brings it, and the worker knows no
//! provider by name.
//!
//! [`PaymentProvider::background_task`]: crate::PaymentProvider::background_task

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::PaymentId;
use domain::entities::payments;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
use tokio::sync::Notify;

use crate::ProviderId;

/// A provider's loop, run by the worker until its shutdown.
pub type BackgroundTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Which loop acted, and on what: logged as `{"trigger": task, key: id}` with the payment's
/// transition (the chain watcher: `chain_watch`, `invoice_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCause {
    pub task: &'static str,
    pub key: &'static str,
    pub id: i64,
}

/// What a short transfer left: everything received so far, what is missing, and until when
/// the rest can come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub received_minor: i64,
    pub shortfall_minor: i64,
    pub tx_id: String,
    pub pay_before: DateTime<Utc>,
}

/// What the worker offers a provider's loop.
#[async_trait]
pub trait ProviderHost: Send + Sync {
    /// The database the loop keeps its own rows in.
    fn db(&self) -> &DatabaseConnection;

    /// Notified when a notice this provider checks itself
    /// ([`PaymentProvider::checks_own_notices`](crate::PaymentProvider::checks_own_notices))
    /// waits in the inbox.
    fn notices(&self) -> &Notify;

    /// Re-checks `payment_id` through its provider's status look-up, as reconciliation does,
    /// and applies the answer (its transition, event and log row), flagging the payment for
    /// an admin first when `flag` gives a reason. Returns the outcome's label; a failure is
    /// logged and left to reconciliation.
    async fn settle(
        &self,
        payment_id: PaymentId,
        cause: TaskCause,
        flag: Option<String>,
    ) -> &'static str;

    /// Tells the payer a transfer fell short (`payment.underpaid`), inside `txn`: once per
    /// transfer when `txn` also records the transfer.
    async fn underpaid(
        &self,
        txn: &DatabaseTransaction,
        payment: &payments::Model,
        short: &Shortfall,
        cause: TaskCause,
    ) -> Result<(), DbErr>;

    /// Writes a log row about `payment` for an admin, inside `txn`.
    async fn log(
        &self,
        txn: &DatabaseTransaction,
        event_type: &str,
        payment: &payments::Model,
        message: String,
        metadata: serde_json::Value,
    ) -> Result<(), DbErr>;

    /// Counts a notice the loop checked (`outcome` as recorded on its inbox row).
    fn notice_checked(&self, provider: &ProviderId, outcome: &'static str);
}
