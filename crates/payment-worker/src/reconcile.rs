//! Reconciliation: pending payments are re-checked with their provider on a schedule, so a
//! lost notification costs minutes, not money.
//!
//! Each poll claims a batch of due payments in one short transaction —
//! `SELECT … WHERE status = 'pending' AND due … FOR UPDATE SKIP LOCKED` on PostgreSQL, then
//! `next_check_at = now + lease, check_attempts += 1` — so several worker instances share the
//! work and a payment is checked by one of them at a time. Then, outside any transaction,
//! each payment's status source is asked; the answer is applied like a notification's (same
//! conditional UPDATE, outbox event and log row) and the next check is scheduled.
//!
//! A payment whose creation never finished (the gateway stored its intent, then the provider
//! call never answered: no provider payment id, so the payer never saw a way to pay) is
//! **expired** once the gateway's creation window has passed — checked again under the row's
//! lock, so a request that finished it meanwhile wins — and its crypto invoice, if it has one,
//! frees its amount. It is never looked up: there is nothing to look up with.
//!
//! At the deadline (the payment's expiry, or the default window, plus the grace period):
//! - a Telegram payment its source still calls pending is **expired** (`pending → expired`,
//!   `payment.failed` with reason `expired`): the bot's pre-checkout refuses an expired
//!   invoice, so no payment can start after the expiry, and the grace period covers one that
//!   started just before it;
//! - any other payment the provider still calls `pending` stays pending and polling stops
//!   (`next_check_at = NULL`, a `payment.reconcile_exhausted` log row): that provider can still
//!   complete it on its own (YooKassa cancels unpaid payments itself), and its late
//!   notification is then applied as usual.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::PaymentStatus;
use domain::entities::payments;
use domain::money::Money;
use payment_core::{PaymentService, ProviderError, ProviderPayment};
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metric;
use crate::settings::ReconcileSettings;
use crate::sources::{disagreement, look_up, provider_of};
use crate::transition::{self, Applied, Trigger};

/// When the next check of a still-pending payment is due; `None` when polling should stop.
pub fn next_check(
    settings: &ReconcileSettings,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let deadline = expires_at
        .unwrap_or_else(|| created_at + chrono_duration(settings.default_window))
        + chrono_duration(settings.grace);
    if now >= deadline {
        return None;
    }
    let interval = if now - created_at < chrono_duration(settings.fast_phase) {
        settings.fast_interval
    } else {
        settings.slow_interval
    };
    // One last look right at the deadline rather than skipping past it.
    Some(std::cmp::min(now + chrono_duration(interval), deadline))
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// What one [`Reconciler::run_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Payments claimed and checked.
    pub checked: usize,
    /// Checks that moved a payment.
    pub moved: usize,
}

/// The reconciliation loop of one worker instance.
#[derive(Debug, Clone)]
pub struct Reconciler {
    db: DatabaseConnection,
    providers: Arc<PaymentService>,
    settings: ReconcileSettings,
    nudge: Arc<Notify>,
}

impl Reconciler {
    /// `nudge` wakes the outbox relay after a commit that wrote events.
    pub fn new(
        db: DatabaseConnection,
        providers: Arc<PaymentService>,
        settings: ReconcileSettings,
        nudge: Arc<Notify>,
    ) -> Self {
        Self {
            db,
            providers,
            settings,
            nudge,
        }
    }

    /// Polls until `shutdown`; a check in progress is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let full = match self.run_once().await {
                Ok(report) => report.checked as u64 >= self.settings.batch_size,
                Err(error) => {
                    tracing::warn!(%error, "reconciliation poll failed");
                    false
                }
            };
            if full && !shutdown.is_cancelled() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        tracing::debug!("reconciliation stopped");
    }

    /// Claims the due payments and checks each once.
    pub async fn run_once(&self) -> Result<ReconcileReport, DbErr> {
        let claimed = self.claim(Utc::now()).await?;
        let mut report = ReconcileReport::default();
        for payment in claimed {
            report.checked += 1;
            let provider = payment.provider.clone();
            let outcome = match self.check(payment).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    // The lease brings the payment back for another try.
                    tracing::warn!(%error, "reconciliation check failed");
                    "error"
                }
            };
            if outcome == "applied" {
                report.moved += 1;
            }
            metric::reconcile_check(&provider, outcome);
        }
        Ok(report)
    }

    /// Checks one payment now, whatever its schedule (the operator's `acpctl reconcile`): asks
    /// its provider and applies the answer exactly like a scheduled check (the same conditional
    /// UPDATE, event and log row; a payment still pending is rescheduled). Returns the outcome
    /// (`applied`, `pending`, `duplicate`, `stale`, `flagged`, `no_source`, …), `None` when
    /// there is no such payment.
    pub async fn check_now(
        &self,
        payment_id: domain::PaymentId,
    ) -> Result<Option<&'static str>, DbErr> {
        let Some(payment) = payments::Entity::find_by_id(payment_id)
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let provider = payment.provider.clone();
        let outcome = self.check(payment).await?;
        metric::reconcile_check(&provider, outcome);
        Ok(Some(outcome))
    }

    /// Takes up to `batch_size` due pending payments and leases them.
    async fn claim(&self, now: DateTime<Utc>) -> Result<Vec<payments::Model>, DbErr> {
        use payments::Column as P;
        let first_due = now - chrono_duration(self.settings.first_check);
        let tx = self.db.begin().await?;
        let due = payments::Entity::find()
            .filter(P::Status.eq(PaymentStatus::Pending))
            .filter(
                Condition::any().add(P::NextCheckAt.lte(now)).add(
                    // Never checked and never scheduled: due `first_check` after creation.
                    Condition::all()
                        .add(P::NextCheckAt.is_null())
                        .add(P::CheckAttempts.eq(0))
                        .add(P::CreatedAt.lte(first_due)),
                ),
            )
            .order_by_asc(P::CreatedAt)
            .limit(self.settings.batch_size)
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .all(&tx)
            .await?;
        if !due.is_empty() {
            payments::Entity::update_many()
                .col_expr(
                    P::NextCheckAt,
                    Expr::value(now + chrono_duration(self.settings.lease)),
                )
                .col_expr(P::CheckAttempts, Expr::col(P::CheckAttempts).add(1))
                .filter(P::Id.is_in(due.iter().map(|p| p.id)))
                .exec(&tx)
                .await?;
        }
        tx.commit().await?;
        Ok(due)
    }

    /// Asks the provider about one claimed payment and applies the answer.
    async fn check(&self, payment: payments::Model) -> Result<&'static str, DbErr> {
        let attempt = payment.check_attempts + 1;
        let trigger = Trigger::Reconciliation { attempt };
        if payment.is_half_made() {
            return self.half_made(payment).await;
        }
        let Some(source) = provider_of(&self.providers, &payment) else {
            tracing::debug!(payment_id = %payment.id, provider = %payment.provider, "this worker does not have the payment's provider; rescheduled");
            let tx = self.db.begin().await?;
            let outcome = self.reschedule(&tx, &payment, "no_source").await?;
            tx.commit().await?;
            return Ok(outcome);
        };
        let answer = look_up(source.as_ref(), &payment, None).await;
        let tx = self.db.begin().await?;
        let outcome = match answer {
            Ok(answer) => match transition::apply(&tx, payment.id, &answer, trigger).await {
                Ok(Applied::Unchanged {
                    status: PaymentStatus::Pending,
                }) => self.reschedule(&tx, &payment, "pending").await?,
                Ok(applied) => applied.outcome(),
                Err(error) => {
                    tracing::warn!(payment_id = %payment.id, %error, "cannot apply the provider's answer");
                    return Ok("error");
                }
            },
            Err(ProviderError::Unsupported(what)) => {
                tracing::debug!(payment_id = %payment.id, provider = %payment.provider, what, "the provider cannot be asked about this payment; rescheduled");
                self.reschedule(&tx, &payment, "unsupported").await?
            }
            Err(error) if error.is_result_unknown() => {
                tracing::info!(payment_id = %payment.id, %error, "provider gave no definite answer; will ask again");
                self.reschedule(&tx, &payment, "unknown").await?
            }
            Err(error) => match disagreement(&error) {
                Some(reason) => {
                    transition::flag(&tx, &payment, &reason, trigger).await?;
                    "flagged"
                }
                None => {
                    tracing::error!(payment_id = %payment.id, %error, "status look-up failed");
                    self.reschedule(&tx, &payment, "error").await?
                }
            },
        };
        tx.commit().await?;
        self.nudge.notify_one();
        Ok(outcome)
    }

    /// Sets the next check of a still-pending payment, or stops polling it past its deadline.
    async fn reschedule<C: ConnectionTrait>(
        &self,
        tx: &C,
        payment: &payments::Model,
        outcome: &'static str,
    ) -> Result<&'static str, DbErr> {
        use payments::Column as P;
        let next = next_check(
            &self.settings,
            payment.created_at,
            payment.expires_at,
            Utc::now(),
        );
        payments::Entity::update_many()
            .col_expr(P::NextCheckAt, Expr::value(next))
            .filter(P::Id.eq(payment.id))
            .filter(P::Status.eq(PaymentStatus::Pending))
            .exec(tx)
            .await?;
        if next.is_some() {
            return Ok(outcome);
        }
        if outcome == "pending"
            && provider_of(&self.providers, payment)
                .is_some_and(|p| p.expires_pending_at_deadline())
        {
            return self.expire(tx, payment).await;
        }
        tracing::warn!(payment_id = %payment.id, provider = %payment.provider, "provider still says pending after the expiry and grace period; polling stops, the payment stays pending");
        transition::log(
            tx,
            "payment.reconcile_exhausted",
            payment,
            Some(PaymentStatus::Pending.as_str()),
            "still pending at the provider after its expiry and the grace period; no longer polled"
                .to_owned(),
            json!({"check_attempts": payment.check_attempts + 1, "expires_at": payment.expires_at, "last_outcome": outcome}),
        )
        .await?;
        Ok("exhausted")
    }

    /// A payment whose creation never finished: expired once the creation window has passed,
    /// else looked at again when it has.
    async fn half_made(&self, payment: payments::Model) -> Result<&'static str, DbErr> {
        use payments::Column as P;
        let window_ends = payment.created_at + chrono_duration(payments::CREATION_WINDOW);
        let tx = self.db.begin().await?;
        let outcome = if Utc::now() < window_ends {
            payments::Entity::update_many()
                .col_expr(P::NextCheckAt, Expr::value(Some(window_ends)))
                .filter(P::Id.eq(payment.id))
                .filter(P::Status.eq(PaymentStatus::Pending))
                .exec(&tx)
                .await?;
            "pending"
        } else {
            // The gateway may have finished it since the claim: decide on the locked row.
            let current = payments::Entity::find_by_id(payment.id)
                .lock_exclusive()
                .one(&tx)
                .await?;
            match current {
                Some(current) if current.is_half_made() => {
                    let outcome = self.expire(&tx, &current).await?;
                    // Nobody can pay it: what its checkout reserved is free at once.
                    if let Some(provider) = provider_of(&self.providers, &current) {
                        provider
                            .release_checkout(&tx, current.id, PaymentStatus::Expired, Utc::now())
                            .await
                            .map_err(|e| DbErr::Custom(e.to_string()))?;
                    }
                    outcome
                }
                // Finished after all: back on the normal schedule.
                _ => "pending",
            }
        };
        tx.commit().await?;
        self.nudge.notify_one();
        Ok(outcome)
    }

    /// Expires a payment past its deadline (see the module docs).
    async fn expire<C: ConnectionTrait>(
        &self,
        tx: &C,
        payment: &payments::Model,
    ) -> Result<&'static str, DbErr> {
        let amount = payment.amount();
        let answer = ProviderPayment {
            provider_payment_id: payment.provider_payment_id.clone().unwrap_or_default(),
            status: PaymentStatus::Expired,
            amount,
            refunded: Money::new(0, amount.currency()),
            paid_at: None,
            failure_reason: Some("expired".to_owned()),
            confirmation: None,
            test: false,
            saved_method: None,
        };
        let trigger = Trigger::Reconciliation {
            attempt: payment.check_attempts + 1,
        };
        match transition::apply(tx, payment.id, &answer, trigger).await {
            Ok(applied) => {
                tracing::info!(payment_id = %payment.id, provider = %payment.provider, outcome = applied.outcome(), "not paid by its deadline; expired");
                Ok(match applied {
                    Applied::Moved { .. } => "expired",
                    other => other.outcome(),
                })
            }
            Err(error) => {
                tracing::warn!(payment_id = %payment.id, %error, "cannot expire the payment");
                Ok("error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn the_default_schedule() {
        let s = ReconcileSettings::default();
        let created = at(0);
        // Fast phase: every 5 minutes for the first hour.
        assert_eq!(next_check(&s, created, None, at(60)), Some(at(60 + 300)));
        assert_eq!(next_check(&s, created, None, at(3_000)), Some(at(3_300)));
        // Then hourly.
        assert_eq!(next_check(&s, created, None, at(3_600)), Some(at(7_200)));
        // Until the default window plus grace; the last check lands on the deadline.
        let deadline = 86_400 + 3_600;
        assert_eq!(
            next_check(&s, created, None, at(deadline - 60)),
            Some(at(deadline))
        );
        assert_eq!(next_check(&s, created, None, at(deadline)), None);
    }

    #[test]
    fn the_provider_expiry_bounds_the_checks() {
        let s = ReconcileSettings::default();
        let expires = at(1_800);
        assert_eq!(
            next_check(&s, at(0), Some(expires), at(5_000)),
            Some(at(5_400))
        );
        assert_eq!(next_check(&s, at(0), Some(expires), at(5_400)), None);
    }
}
