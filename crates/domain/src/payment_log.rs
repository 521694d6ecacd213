//! The payment log: every `payment.created`, `payment.completed`, `payment.failed` and
//! `payment.refunded` (and `payment.flagged`) as a `system_logs` row written in the
//! transaction of the change it records, and as a structured `tracing` event with target
//! [`TARGET`], which the services' JSON file appender writes under `LOG_DIR`.
//!
//! The row is the record: it commits or rolls back with the change. The line is written once
//! the row is inserted, so a transaction rolled back afterwards leaves a line without a row
//! (rare: the callers write the log last).

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::NotSet, ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait};

use crate::entities::{payments, system_logs};

/// The `tracing` target of the payment log lines (`RUST_LOG=payment_log=info` keeps them).
pub const TARGET: &str = "payment_log";

/// One event about a payment.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// `payment.created`, `payment.completed`, …
    pub event_type: &'a str,
    pub payment: &'a payments::Model,
    /// The payment's status after the event.
    pub status: &'a str,
    pub message: String,
    pub metadata: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// Appends the `system_logs` row of `entry` in `tx` and emits its log line.
pub async fn record<C: ConnectionTrait>(tx: &C, entry: Entry<'_>) -> Result<(), DbErr> {
    system_logs::Entity::insert(row(&entry))
        .exec_without_returning(tx)
        .await?;
    trace(&entry);
    Ok(())
}

/// The `system_logs` row of `entry`, for a caller that inserts it with another statement
/// (then [`trace`] once it is in).
pub fn row(entry: &Entry<'_>) -> system_logs::ActiveModel {
    let payment = entry.payment;
    system_logs::ActiveModel {
        id: NotSet,
        event_type: Set(entry.event_type.to_owned()),
        user_id: Set(Some(payment.user_id)),
        payment_id: Set(Some(payment.id)),
        provider: Set(Some(payment.provider.clone())),
        amount_minor: Set(Some(payment.amount_minor)),
        currency: Set(Some(payment.currency.code().to_owned())),
        status: Set(Some(entry.status.to_owned())),
        message: Set(Some(entry.message.clone())),
        metadata: Set(Some(entry.metadata.clone())),
        created_at: Set(entry.at),
    }
}

/// Emits the log line of `entry` (its row is inserted).
pub fn trace(entry: &Entry<'_>) {
    let payment = entry.payment;
    tracing::info!(
        target: TARGET,
        event_type = entry.event_type,
        payment_id = %payment.id,
        user_id = payment.user_id,
        provider = %payment.provider,
        amount_minor = payment.amount_minor,
        currency = payment.currency.code(),
        status = entry.status,
        at = %entry.at.to_rfc3339(),
        metadata = %entry.metadata,
        "{}",
        entry.message
    );
}
