//! The write side of the payment state machine (DESIGN §3).
//!
//! Given the provider's answer, [`plan`] decides which moves to make (pure, unit-tested);
//! [`apply`] makes each one with a single conditional
//! `UPDATE payments SET … WHERE id = $1 AND status IN (allowed predecessors) RETURNING *`
//! and, only when a row came back, writes the outbox event and the `system_logs` row in the
//! same transaction. A stale or duplicate answer changes nothing and is reported as such.

use chrono::{DateTime, Utc};
use domain::PaymentStatus;
use domain::entities::{payment_promos, payments, referrals, tariffs, users};
use messaging::events::{
    PaymentCompleted, PaymentFailed, PaymentRefunded, PaymentSnapshot, PaymentUnderpaid,
};
use messaging::{Envelope, Event, OutboxError};
use payment_core::ProviderPayment;
pub use payment_core::background::{Shortfall, TaskCause};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect};
use serde_json::json;
use uuid::Uuid;

use crate::metric;

/// What made the worker look at a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A provider notification (`provider_notifications.id`) carried by event `event_id`.
    Notification {
        notification_id: i64,
        event_id: Uuid,
    },
    /// The reconciliation loop's `attempt`-th check.
    Reconciliation { attempt: i32 },
    /// A provider's own loop (the crypto chain watcher on an invoice).
    Task(TaskCause),
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Notification { .. } => "notification",
            Trigger::Reconciliation { .. } => "reconciliation",
            Trigger::Task(cause) => cause.task,
        }
    }

    fn causation_id(self) -> Option<Uuid> {
        match self {
            Trigger::Notification { event_id, .. } => Some(event_id),
            Trigger::Reconciliation { .. } | Trigger::Task(_) => None,
        }
    }

    fn metadata(self) -> serde_json::Value {
        match self {
            Trigger::Notification {
                notification_id,
                event_id,
            } => {
                json!({"trigger": "notification", "notification_id": notification_id, "notification_event_id": event_id})
            }
            Trigger::Reconciliation { attempt } => {
                json!({"trigger": "reconciliation", "check_attempt": attempt})
            }
            Trigger::Task(cause) => {
                let mut metadata = json!({ "trigger": cause.task });
                metadata[cause.key] = json!(cause.id);
                metadata
            }
        }
    }
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Move through these states, in order.
    Move(Vec<PaymentStatus>),
    /// The provider agrees with what we have.
    Unchanged,
    /// The provider's answer is behind ours, or contradicts it; ours stands.
    Stale,
}

/// The moves from our state to the provider's. `refunded` are the amounts refunded so far,
/// ours and the provider's, in minor units.
pub fn plan(
    ours: PaymentStatus,
    our_refunded: i64,
    theirs: PaymentStatus,
    their_refunded: i64,
) -> Plan {
    use PaymentStatus::*;
    match theirs {
        Pending if ours == Pending => Plan::Unchanged,
        Pending => Plan::Stale,
        Succeeded | Failed | Canceled | Expired if ours == Pending => Plan::Move(vec![theirs]),
        Succeeded | Failed | Canceled | Expired if ours == theirs => Plan::Unchanged,
        Succeeded | Failed | Canceled | Expired => Plan::Stale,
        // Paid and (partly) refunded before we saw the success: complete, then refund, so
        // the subscription ledger sees both.
        PartiallyRefunded | Refunded if ours == Pending => Plan::Move(vec![Succeeded, theirs]),
        PartiallyRefunded | Refunded
            if matches!(ours, Succeeded | PartiallyRefunded) && their_refunded > our_refunded =>
        {
            Plan::Move(vec![theirs])
        }
        PartiallyRefunded | Refunded if ours == theirs && their_refunded == our_refunded => {
            Plan::Unchanged
        }
        PartiallyRefunded | Refunded => Plan::Stale,
    }
}

/// What applying an answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The payment moved from `from` to `to` (one or two transitions).
    Moved {
        from: PaymentStatus,
        to: PaymentStatus,
    },
    /// Nothing to do: the provider says what we already have (`pending` while waiting, or a
    /// duplicate of an applied answer).
    Unchanged { status: PaymentStatus },
    /// The answer is behind ours or contradicts it; nothing changed.
    Stale {
        ours: PaymentStatus,
        theirs: PaymentStatus,
    },
    /// The answer disagrees with our payment (amount or currency); flagged for an admin.
    Flagged,
}

impl Applied {
    /// The `provider_notifications.outcome` / metric label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Applied::Moved { .. } => "applied",
            Applied::Unchanged {
                status: PaymentStatus::Pending,
            } => "pending",
            Applied::Unchanged { .. } => "duplicate",
            Applied::Stale { .. } => "stale",
            Applied::Flagged => "flagged",
        }
    }
}

/// Failure to apply an answer (the transaction is to be rolled back).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("payment {0} not found")]
    PaymentNotFound(domain::PaymentId),
    #[error("cannot build the event: {0}")]
    Event(#[from] messaging::EnvelopeError),
}

/// Applies the provider's `answer` to payment `payment_id` inside `tx`.
///
/// Locks the payment row first (PostgreSQL `FOR UPDATE`; SQLite serialises writers anyway),
/// so the refunded delta and the event contents are computed from the row being changed.
pub async fn apply<C: ConnectionTrait>(
    tx: &C,
    payment_id: domain::PaymentId,
    answer: &ProviderPayment,
    trigger: Trigger,
) -> Result<Applied, ApplyError> {
    let payment = payments::Entity::find_by_id(payment_id)
        .lock_exclusive()
        .one(tx)
        .await?
        .ok_or(ApplyError::PaymentNotFound(payment_id))?;
    apply_to(tx, payment, answer, trigger).await
}

/// [`apply`] to a payment row the caller read locked in `tx` (`FOR UPDATE`), as it is now.
pub async fn apply_to<C: ConnectionTrait>(
    tx: &C,
    mut payment: payments::Model,
    answer: &ProviderPayment,
    trigger: Trigger,
) -> Result<Applied, ApplyError> {
    let payment_id = payment.id;

    // `payment_core` providers check this already; a source that does not must not be able
    // to complete a payment for a different amount.
    if answer.amount != payment.amount() {
        let reason = format!(
            "amount mismatch: expected {} {}, provider says {} {}",
            payment.amount_minor,
            payment.currency.code(),
            answer.amount.minor(),
            answer.amount.currency().code()
        );
        flag(tx, &payment, &reason, trigger).await?;
        return Ok(Applied::Flagged);
    }

    let steps = match plan(
        payment.status,
        payment.refunded_minor,
        answer.status,
        answer.refunded.minor(),
    ) {
        Plan::Unchanged => {
            return Ok(Applied::Unchanged {
                status: payment.status,
            });
        }
        Plan::Stale => {
            tracing::warn!(payment_id = %payment.id, ours = %payment.status, theirs = %answer.status, trigger = trigger.name(), "provider answer is behind or contradicts ours; ignored");
            return Ok(Applied::Stale {
                ours: payment.status,
                theirs: answer.status,
            });
        }
        Plan::Move(steps) => steps,
    };

    let from = payment.status;
    let (snapshot, ties) = snapshot_and_ties(tx, &payment).await?;
    for next in steps {
        let Some(moved) = transition(tx, &payment, next, answer).await? else {
            // Another transaction moved it first (only possible without row locks); theirs
            // is the one that counts.
            let current = payments::Entity::find_by_id(payment_id)
                .one(tx)
                .await?
                .map_or(payment.status, |p| p.status);
            return Ok(if current == from {
                Applied::Unchanged { status: current }
            } else {
                Applied::Stale {
                    ours: current,
                    theirs: answer.status,
                }
            });
        };
        announce(tx, &snapshot, &payment, &moved, trigger).await?;
        crate::autopay::record(tx, &moved, answer).await?;
        if ties.promo {
            promo_use(tx, &moved).await?;
        }
        if ties.open_referral {
            crate::referral::reward(tx, &moved).await?;
        }
        payment = moved;
    }
    Ok(Applied::Moved {
        from,
        to: payment.status,
    })
}

/// One conditional UPDATE; `None` when the payment was no longer in an allowed state.
async fn transition<C: ConnectionTrait>(
    tx: &C,
    payment: &payments::Model,
    next: PaymentStatus,
    answer: &ProviderPayment,
) -> Result<Option<payments::Model>, DbErr> {
    use payments::Column as P;
    let now = Utc::now();
    let mut update = payments::Entity::update_many()
        .col_expr(P::Status, Expr::value(next.as_str()))
        .col_expr(P::UpdatedAt, Expr::value(now))
        .filter(P::Id.eq(payment.id))
        .filter(P::Status.is_in(next.allowed_predecessors().iter().copied()));
    if payment.provider_payment_id.is_none() {
        update = update.col_expr(
            P::ProviderPaymentId,
            Expr::value(answer.provider_payment_id.clone()),
        );
    }
    update = match next {
        PaymentStatus::Succeeded => {
            // The provider's time of payment, never before creation (clock skew).
            let paid_at = answer.paid_at.unwrap_or(now).max(payment.created_at);
            update
                .col_expr(P::CompletedAt, Expr::value(paid_at))
                .col_expr(P::NextCheckAt, Expr::value(Option::<DateTime<Utc>>::None))
        }
        PaymentStatus::Failed | PaymentStatus::Canceled | PaymentStatus::Expired => update
            .col_expr(
                P::FailureReason,
                Expr::value(Some(failure_reason(next, answer))),
            )
            .col_expr(P::NextCheckAt, Expr::value(Option::<DateTime<Utc>>::None)),
        PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded => update
            .col_expr(P::RefundedMinor, Expr::value(answer.refunded.minor()))
            // Refunds only grow: an older answer can never lower the total.
            .filter(P::RefundedMinor.lt(answer.refunded.minor())),
        PaymentStatus::Pending => return Ok(None),
    };
    Ok(update.exec_with_returning(tx).await?.into_iter().next())
}

/// A promo code's use (issue 23), in the transaction of the transition that makes it: counted
/// when the payment succeeds, given back when it is refunded in full. Each is a conditional
/// update of the payment's `payment_promos` row, and the transition happens once, so a
/// duplicated notification counts nothing twice ([`domain::promo`]).
async fn promo_use<C: ConnectionTrait>(tx: &C, moved: &payments::Model) -> Result<(), DbErr> {
    let now = moved.updated_at;
    let changed = match moved.status {
        PaymentStatus::Succeeded => domain::promo::count_use(tx, moved.id, now).await?,
        PaymentStatus::Refunded => domain::promo::return_use(tx, moved.id, now).await?,
        _ => false,
    };
    if changed {
        tracing::info!(payment_id = %moved.id, status = %moved.status, "promo code use counted or given back");
    }
    Ok(())
}

fn failure_reason(next: PaymentStatus, answer: &ProviderPayment) -> String {
    answer
        .failure_reason
        .clone()
        .unwrap_or_else(|| next.as_str().to_owned())
}

/// What else a transition of the payment may have to update: most payments have neither, and
/// then the statements that would find nothing are not sent.
#[derive(Debug, Clone, Copy)]
struct Ties {
    /// The payment carries a promo code (`payment_promos`), whose use a success counts and a
    /// refund gives back.
    promo: bool,
    /// The payer was referred and the referral is not rewarded yet: a first success rewards it.
    open_referral: bool,
}

async fn snapshot<C: ConnectionTrait>(
    tx: &C,
    payment: &payments::Model,
) -> Result<PaymentSnapshot, ApplyError> {
    Ok(snapshot_and_ties(tx, payment).await?.0)
}

/// The event snapshot (the payer's Telegram id, the tariff's code) and the payment's [`Ties`],
/// in one statement. The ties are read in the transition's transaction: the promo row is
/// written with the payment, and a referral is recorded when the user first comes to the bot.
async fn snapshot_and_ties<C: ConnectionTrait>(
    tx: &C,
    payment: &payments::Model,
) -> Result<(PaymentSnapshot, Ties), ApplyError> {
    use sea_orm::sea_query::ExprTrait as _;
    let promo = Query::select()
        .expr(Expr::val(1))
        .from(payment_promos::Entity)
        .and_where(
            Expr::col((payment_promos::Entity, payment_promos::Column::PaymentId))
                .equals((payments::Entity, payments::Column::Id)),
        )
        .to_owned();
    let referral = Query::select()
        .expr(Expr::val(1))
        .from(referrals::Entity)
        .and_where(
            Expr::col((referrals::Entity, referrals::Column::ReferredUserId))
                .equals((payments::Entity, payments::Column::UserId)),
        )
        .and_where(referrals::Column::RewardedPaymentId.is_null())
        .to_owned();
    let (telegram_id, tariff_code, promo, open_referral): (i64, String, bool, bool) =
        payments::Entity::find_by_id(payment.id)
            .select_only()
            .column(users::Column::TelegramId)
            .column(tariffs::Column::Code)
            .column_as(Expr::exists(promo), "promo")
            .column_as(Expr::exists(referral), "open_referral")
            .inner_join(users::Entity)
            .inner_join(tariffs::Entity)
            .into_tuple()
            .one(tx)
            .await?
            .ok_or_else(|| {
                DbErr::RecordNotFound(format!(
                    "user {} or tariff {} of payment {}",
                    payment.user_id, payment.tariff_id, payment.id
                ))
            })?;
    let snapshot = PaymentSnapshot {
        payment_id: payment.id,
        user_id: payment.user_id,
        telegram_id,
        tariff_code,
        provider: payment.provider.clone(),
        amount_minor: payment.amount_minor,
        currency: payment.currency.code().to_owned(),
    };
    Ok((
        snapshot,
        Ties {
            promo,
            open_referral,
        },
    ))
}

/// The outbox event and the `system_logs` row of one transition.
async fn announce<C: ConnectionTrait>(
    tx: &C,
    snapshot: &PaymentSnapshot,
    before: &payments::Model,
    after: &payments::Model,
    trigger: Trigger,
) -> Result<(), ApplyError> {
    let causation = trigger.causation_id();
    let mut metadata = json!({
        "from": before.status.as_str(),
        "to": after.status.as_str(),
        "provider_payment_id": after.provider_payment_id,
    });
    let (event_type, envelope, message) = match after.status {
        PaymentStatus::Succeeded => {
            let paid_at = after.completed_at.unwrap_or(after.updated_at);
            let processing_ms = (paid_at - after.created_at).num_milliseconds().max(0);
            metadata["processing_ms"] = json!(processing_ms);
            metadata["paid_at"] = json!(paid_at.to_rfc3339());
            metric::processing_time(&after.provider, processing_ms);
            metric::revenue(&after.provider, after.currency.code(), after.amount_minor);
            let event = PaymentCompleted {
                payment: snapshot.clone(),
                paid_at,
                processing_ms,
            };
            (
                PaymentCompleted::EVENT_TYPE,
                Envelope::new(&event, after.id, causation)?,
                format!("payment completed in {processing_ms} ms"),
            )
        }
        PaymentStatus::Failed | PaymentStatus::Canceled | PaymentStatus::Expired => {
            let reason = after
                .failure_reason
                .clone()
                .unwrap_or_else(|| after.status.as_str().to_owned());
            metadata["failure_reason"] = json!(reason);
            let event = PaymentFailed {
                payment: snapshot.clone(),
                failure_reason: reason.clone(),
            };
            (
                PaymentFailed::EVENT_TYPE,
                Envelope::new(&event, after.id, causation)?,
                format!("payment {}: {reason}", after.status),
            )
        }
        PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded => {
            let refunded_minor = after.refunded_minor - before.refunded_minor;
            metadata["refunded_minor"] = json!(refunded_minor);
            metadata["total_refunded_minor"] = json!(after.refunded_minor);
            metric::refunded(&after.provider, after.currency.code(), refunded_minor);
            let event = PaymentRefunded {
                payment: snapshot.clone(),
                refunded_minor,
                total_refunded_minor: after.refunded_minor,
            };
            (
                PaymentRefunded::EVENT_TYPE,
                Envelope::new(&event, after.id, causation)?,
                format!(
                    "refunded {refunded_minor}, {} in total",
                    after.refunded_minor
                ),
            )
        }
        PaymentStatus::Pending => return Ok(()),
    };
    metadata["event_id"] = json!(envelope.event_id);
    merge(&mut metadata, trigger.metadata());
    announce_logged(
        tx,
        &envelope,
        event_type,
        after,
        after.status.as_str(),
        message,
        metadata,
    )
    .await?;
    metric::transition(&after.provider, before.status, after.status);
    tracing::info!(payment_id = %after.id, provider = %after.provider, from = %before.status, to = %after.status, trigger = trigger.name(), "payment transition");
    Ok(())
}

/// Announces a partial payment (`payment.underpaid` and its log row); the payment stays
/// pending. The caller makes it once per transfer (the chain watcher's transfer claim
/// commits in the same transaction).
pub async fn underpaid<C: ConnectionTrait>(
    tx: &C,
    payment: &payments::Model,
    short: &Shortfall,
    trigger: Trigger,
) -> Result<(), ApplyError> {
    let event = PaymentUnderpaid {
        payment: snapshot(tx, payment).await?,
        received_minor: short.received_minor,
        shortfall_minor: short.shortfall_minor,
        tx_id: short.tx_id.clone(),
        pay_before: short.pay_before,
    };
    let envelope = Envelope::new(&event, payment.id, trigger.causation_id())?;
    let mut metadata = json!({
        "event_id": envelope.event_id,
        "received_minor": short.received_minor,
        "shortfall_minor": short.shortfall_minor,
        "tx_id": short.tx_id,
    });
    merge(&mut metadata, trigger.metadata());
    announce_logged(
        tx,
        &envelope,
        PaymentUnderpaid::EVENT_TYPE,
        payment,
        payment.status.as_str(),
        format!(
            "received {} of {}, {} missing",
            short.received_minor, payment.amount_minor, short.shortfall_minor
        ),
        metadata,
    )
    .await?;
    tracing::info!(payment_id = %payment.id, received = short.received_minor, shortfall = short.shortfall_minor, tx = %short.tx_id, "crypto payment short; payer told");
    Ok(())
}

/// Flags `payment` for an admin (first time only: one log row per payment); it stays in its
/// state and reconciliation stops polling it.
pub async fn flag<C: ConnectionTrait>(
    tx: &C,
    payment: &payments::Model,
    reason: &str,
    trigger: Trigger,
) -> Result<bool, DbErr> {
    use payments::Column as P;
    metric::mismatch(&payment.provider);
    tracing::error!(payment_id = %payment.id, provider = %payment.provider, %reason, trigger = trigger.name(), "provider answer does not match the payment; flagged, not applied");
    let flagged = payments::Entity::update_many()
        .col_expr(P::Flagged, Expr::value(true))
        .col_expr(P::FlagReason, Expr::value(Some(reason.to_owned())))
        .col_expr(P::NextCheckAt, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(P::UpdatedAt, Expr::value(Utc::now()))
        .filter(P::Id.eq(payment.id))
        .filter(P::Flagged.eq(false))
        .exec(tx)
        .await?
        .rows_affected
        > 0;
    if flagged {
        let mut metadata = json!({"reason": reason});
        merge(&mut metadata, trigger.metadata());
        log(
            tx,
            "payment.flagged",
            payment,
            Some(payment.status.as_str()),
            format!("flagged: {reason}"),
            metadata,
        )
        .await?;
    }
    Ok(flagged)
}

/// Appends a `system_logs` row about `payment` and its payment-log line
/// ([`domain::payment_log`]).
pub async fn log<C: ConnectionTrait>(
    tx: &C,
    event_type: &str,
    payment: &payments::Model,
    status: Option<&str>,
    message: String,
    metadata: serde_json::Value,
) -> Result<(), DbErr> {
    domain::payment_log::record(
        tx,
        domain::payment_log::Entry {
            event_type,
            payment,
            status: status.unwrap_or(payment.status.as_str()),
            message,
            metadata,
            at: Utc::now(),
        },
    )
    .await
}

/// The event `envelope` about `payment` and its `system_logs` row, written together
/// ([`messaging::outbox::enqueue_logged`]).
async fn announce_logged<C: ConnectionTrait>(
    tx: &C,
    envelope: &Envelope,
    event_type: &str,
    payment: &payments::Model,
    status: &str,
    message: String,
    metadata: serde_json::Value,
) -> Result<(), OutboxError> {
    let entry = domain::payment_log::Entry {
        event_type,
        payment,
        status,
        message,
        metadata,
        at: Utc::now(),
    };
    messaging::outbox::enqueue_logged(tx, envelope, entry).await
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PaymentStatus::*;

    #[test]
    fn pending_moves_to_whatever_the_provider_concluded() {
        for theirs in [Succeeded, Failed, Canceled, Expired] {
            assert_eq!(plan(Pending, 0, theirs, 0), Plan::Move(vec![theirs]));
        }
        assert_eq!(plan(Pending, 0, Pending, 0), Plan::Unchanged);
        assert_eq!(
            plan(Pending, 0, Refunded, 100),
            Plan::Move(vec![Succeeded, Refunded])
        );
    }

    #[test]
    fn duplicates_and_late_answers_change_nothing() {
        assert_eq!(plan(Succeeded, 0, Succeeded, 0), Plan::Unchanged);
        assert_eq!(plan(Succeeded, 0, Pending, 0), Plan::Stale);
        assert_eq!(plan(Expired, 0, Pending, 0), Plan::Stale);
        assert_eq!(plan(Failed, 0, Succeeded, 0), Plan::Stale);
        assert_eq!(plan(Refunded, 100, Succeeded, 0), Plan::Stale);
        assert_eq!(
            plan(PartiallyRefunded, 50, PartiallyRefunded, 30),
            Plan::Stale
        );
        assert_eq!(
            plan(PartiallyRefunded, 50, PartiallyRefunded, 50),
            Plan::Unchanged
        );
    }

    #[test]
    fn refunds_only_grow() {
        assert_eq!(
            plan(Succeeded, 0, PartiallyRefunded, 30),
            Plan::Move(vec![PartiallyRefunded])
        );
        assert_eq!(
            plan(PartiallyRefunded, 30, PartiallyRefunded, 50),
            Plan::Move(vec![PartiallyRefunded])
        );
        assert_eq!(
            plan(PartiallyRefunded, 30, Refunded, 100),
            Plan::Move(vec![Refunded])
        );
        assert_eq!(plan(Failed, 0, Refunded, 100), Plan::Stale);
    }

    proptest::proptest! {
        /// Whatever the provider says, every planned step is a legal transition and nothing
        /// leaves a terminal state.
        #[test]
        fn plans_are_legal(
            ours in proptest::sample::select(PaymentStatus::ALL.to_vec()),
            theirs in proptest::sample::select(PaymentStatus::ALL.to_vec()),
            our_refunded in 0i64..3,
            their_refunded in 0i64..3,
        ) {
            if let Plan::Move(steps) = plan(ours, our_refunded, theirs, their_refunded) {
                proptest::prop_assert!(!ours.is_terminal());
                let mut current = ours;
                for next in steps {
                    proptest::prop_assert!(current.can_transition_to(next), "{current} -> {next}");
                    current = next;
                }
                proptest::prop_assert_eq!(current, theirs);
            }
        }
    }
}
