//! The `provider.notification.*` consumer.
//!
//! The gateway (or the bot) stored a verified notification in the inbox and announced it.
//! Asking the provider is an outside call — for YooKassa a `GET` that may take minutes with
//! its retries — so it is made before the runner's transaction opens, and the transaction
//! only records what the answer means. For each announcement:
//!
//! Outside any transaction ([`Handler::prepare`], on the handler's own connection; a copy of
//! a processed message finds its inbox row processed in step 1, so the runner does not look
//! the message's idempotency row up first — [`Handler::prepare_spots_done_work`]):
//!
//! 1. read the inbox row, without a lock; if it is processed already, or a crypto notice
//!    that the chain-watch loop checks (below), there is nothing to ask;
//! 2. find our payment by `(provider, provider_payment_id)`, else by our payment id;
//! 3. ask the payment's [`StatusSource`](crate::sources::StatusSource) — for YooKassa a fresh
//!    `GET` of the payment, never the body's claim. A look-up without a definite answer
//!    (HTTP 5xx, timeouts) fails the message transiently right here: it is retried through
//!    the delay queues, no transaction was opened and the payment stays as it is. A definite
//!    answer (a status, a disagreement, a refusal) is handed to the next step.
//!
//! In the runner's transaction ([`Handler::handle`]: the idempotency row, the payment change,
//! its outbox event, its log row and the inbox outcome commit together):
//!
//! 4. lock the inbox row; if it was processed meanwhile (another copy of the notice got there
//!    first), this is a duplicate: done;
//! 5. find the payment again, locking its row; if it is not the one that was looked up (it
//!    appeared or was linked after step 2), the message is retried so that the look-up is
//!    made again;
//! 6. apply the answer ([`crate::transition::apply`]): its conditional `UPDATE` of the locked
//!    payment row refuses an answer that is behind what another notification or
//!    reconciliation applied since the look-up (outcome `stale`); an answer that disagrees
//!    with our payment flags it; then record the outcome on the inbox row.
//!
//! A notice of a recurring charge (a Stars subscription's monthly charge,
//! [`payment_core::PaymentProvider::recurring_charge`]) is about a payment of its own: in
//! step 2 the charge's payment is found or drafted, in step 5 inserted
//! ([`crate::renewals`]), and then applied like any other.
//!
//! Crypto notices are the exception when this worker watches the chain: their inbox rows stay
//! open for the chain-watch loop, which asks the chain about the named transaction outside
//! any transaction ([`crate::chain`]); the consumer only wakes it. It does so in step 4, with
//! the row locked and seen open, so that the loop cannot close the row before this message is
//! counted as `chain_check` (woken from step 1, the loop could close it first and the message
//! would count as `already_processed`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use domain::entities::{payments, provider_notifications};
use messaging::events::ProviderNotificationReceived;
use messaging::{Envelope, Event, Handler, HandlerError, Prepared};
use payment_core::{PaymentService, ProviderError, ProviderPayment, RejectionCode};
use sea_orm::sea_query::{Expr, IntoCondition};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    JoinType, QueryFilter, QuerySelect,
};
use tokio::sync::Notify;

use crate::metric;
use crate::renewals;
use crate::sources::{disagreement, look_up, provider_of};
use crate::transition::{self, ApplyError, Trigger};

/// The consumer name: queue `<prefix>.payment-worker`, `processed_messages.consumer`.
pub const CONSUMER: &str = "payment-worker";

/// Applies provider notifications. See the module docs.
#[derive(Debug, Clone)]
pub struct NotificationHandler {
    providers: Arc<PaymentService>,
    /// Wakes the loop of a provider that checks its own notices (the crypto chain watcher);
    /// without it, such notices are looked up like any other.
    own_notices: Option<Arc<Notify>>,
    /// For the reads before the look-up, outside the runner's transaction.
    db: DatabaseConnection,
}

/// A status source's definite answer about one payment, from [`Handler::prepare`].
struct LookedUp {
    payment_id: domain::PaymentId,
    answer: Result<ProviderPayment, ProviderError>,
    /// A recurring charge's payment as looked up, to insert if it is not recorded yet.
    draft: Option<payments::Model>,
}

impl NotificationHandler {
    pub fn new(providers: Arc<PaymentService>, db: DatabaseConnection) -> Self {
        Self {
            providers,
            own_notices: None,
            db,
        }
    }

    /// Leaves the notices of providers that check their own
    /// ([`payment_core::PaymentProvider::checks_own_notices`]) to their loop, woken by `wake`.
    #[must_use]
    pub fn with_own_notices(mut self, wake: Arc<Notify>) -> Self {
        self.own_notices = Some(wake);
        self
    }

    /// A notice left to its provider's own loop (the crypto chain watcher).
    fn for_own_loop(&self, row: &provider_notifications::Model) -> bool {
        self.own_notices.is_some() && self.providers.checks_own_notices(&row.provider)
    }

    /// Steps 1–3 of the module docs: the look-up, with no transaction open.
    async fn look_up(
        &self,
        event: &ProviderNotificationReceived,
    ) -> Result<Option<LookedUp>, HandlerError> {
        let Some((row, by_provider_id)) =
            notice_and_payment(&self.db, event.notification_id).await?
        else {
            return Err(not_in_inbox(event));
        };
        if row.processed_at.is_some() || self.for_own_loop(&row) {
            return Ok(None);
        }
        // Nothing to ask about an unknown payment, another provider's payment or one without
        // a source: the transaction records (or parks) those.
        let charge = renewals::charge_of(&self.providers, &row);
        let payment = match &charge {
            Some(charge) => renewals::find_or_draft(&self.db, &row, charge).await?,
            // `find_payment`'s rule by the provider's id, read with the notice — unless the
            // notice names a charge, which `find_payment` looks for first.
            None if by_provider_id.is_some() && notice_charge(&self.providers, &row).is_none() => {
                by_provider_id
            }
            None => find_payment(&self.db, &self.providers, &row, event, false).await?,
        };
        let Some(payment) = payment else {
            return Ok(None);
        };
        let Some(source) =
            provider_of(&self.providers, &payment).filter(|_| payment.provider == row.provider)
        else {
            return Ok(None);
        };
        match look_up(source.as_ref(), &payment, Some(&row)).await {
            Err(error) if error.is_result_unknown() => {
                tracing::warn!(payment_id = %payment.id, notification_id = row.id, %error, "provider gave no definite answer; the notification will be retried");
                Err(HandlerError::transient(error))
            }
            answer => Ok(Some(LookedUp {
                payment_id: payment.id,
                answer,
                draft: charge.map(|_| payment),
            })),
        }
    }

    /// Steps 4–6 of the module docs, in the runner's transaction.
    async fn process(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        event: &ProviderNotificationReceived,
        looked_up: Option<LookedUp>,
    ) -> Result<&'static str, HandlerError> {
        let Some(row) = provider_notifications::Entity::find_by_id(event.notification_id)
            .lock_exclusive()
            .one(tx)
            .await?
        else {
            return Err(not_in_inbox(event));
        };
        if row.processed_at.is_some() {
            return Ok("already_processed");
        }
        if self.for_own_loop(&row)
            && let Some(wake) = &self.own_notices
        {
            wake.notify_one();
            return Ok("chain_check");
        }

        let charge = renewals::charge_of(&self.providers, &row);
        let payment = match &charge {
            Some(charge) => {
                let draft = looked_up.as_ref().and_then(|l| l.draft.clone());
                renewals::find_or_insert(tx, &row, charge, draft)
                    .await
                    .map_err(HandlerError::transient)?
            }
            // Locked: the transition below changes the row as read here.
            None => find_payment(tx, &self.providers, &row, event, true).await?,
        };
        let locked = charge.is_none();
        let Some(payment) = payment else {
            if let Some(charge) = charge {
                tracing::error!(notification_id = row.id, provider = %row.provider, charge = %charge.provider_payment_id, renews = %charge.renews, amount = %charge.amount, "recurring charge for a payment we do not know: stored in the inbox for an admin, not applied");
                return finish(tx, &row, None, renewals::UNKNOWN_SUBSCRIPTION).await;
            }
            tracing::warn!(notification_id = row.id, provider = %row.provider, provider_payment_id = ?row.provider_payment_id, "notification about a payment we do not know; recorded");
            return finish(tx, &row, None, "unknown_payment").await;
        };
        if payment.provider != row.provider {
            tracing::warn!(notification_id = row.id, payment_id = %payment.id, notification_provider = %row.provider, payment_provider = %payment.provider, "notification from another provider than the payment's; ignored");
            return finish(tx, &row, Some(payment.id), "wrong_provider").await;
        }
        if provider_of(&self.providers, &payment).is_none() {
            // Parked, inbox row untouched: replay once a worker that knows the provider runs.
            return Err(HandlerError::permanent(format!(
                "provider {:?} is not enabled in this worker",
                payment.provider
            )));
        }
        let Some(looked_up) = looked_up.filter(|l| l.payment_id == payment.id) else {
            return Err(HandlerError::transient(format!(
                "notification {}: payment {} was not looked up before the transaction; asking again",
                row.id, payment.id
            )));
        };

        let trigger = Trigger::Notification {
            notification_id: row.id,
            event_id: envelope.event_id,
        };
        let payment_id = payment.id;
        let outcome = match looked_up.answer {
            Ok(answer) if locked => transition::apply_to(tx, payment, &answer, trigger)
                .await
                .map_err(apply_error)?
                .outcome(),
            // A renewal's row found, not read locked: the transition locks it.
            Ok(answer) => transition::apply(tx, payment.id, &answer, trigger)
                .await
                .map_err(apply_error)?
                .outcome(),
            Err(error) => match disagreement(&error) {
                Some(reason) => {
                    transition::flag(tx, &payment, &reason, trigger).await?;
                    "flagged"
                }
                None => rejected(&payment, &row, error)?,
            },
        };
        finish(tx, &row, Some(payment_id), outcome).await
    }
}

/// The gateway writes the inbox row and the event in one transaction, so a missing row is not
/// a timing issue: park the message for a look.
fn not_in_inbox(event: &ProviderNotificationReceived) -> HandlerError {
    HandlerError::permanent(format!(
        "notification {} is not in the inbox",
        event.notification_id
    ))
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

/// The inbox row `id` and, in the same statement, the payment of its provider with the
/// provider's id it names (if any): the second rule of [`find_payment`].
async fn notice_and_payment(
    db: &impl ConnectionTrait,
    id: i64,
) -> Result<Option<(provider_notifications::Model, Option<payments::Model>)>, DbErr> {
    use provider_notifications::Column as N;
    let by_provider_id = provider_notifications::Entity::belongs_to(payments::Entity)
        .from(N::ProviderPaymentId)
        .to(payments::Column::ProviderPaymentId)
        .on_condition(|notice, payment| {
            sea_orm::sea_query::ExprTrait::equals(
                Expr::col((notice, N::Provider)),
                (payment, payments::Column::Provider),
            )
            .into_condition()
        })
        .into();
    provider_notifications::Entity::find_by_id(id)
        .join(JoinType::LeftJoin, by_provider_id)
        .select_also(payments::Entity)
        .one(db)
        .await
}

/// The charge a notice is about when its provider names one (a renewal's refund).
fn notice_charge(
    providers: &PaymentService,
    row: &provider_notifications::Model,
) -> Option<String> {
    providers
        .provider_named(&row.provider)
        .and_then(|p| p.notice_charge(row.body.as_bytes()))
}

/// Our payment: by the charge the notice is about when its provider names one (a renewal's
/// refund), else by the provider's id, else by the id the gateway matched or the event names.
async fn find_payment(
    db: &impl ConnectionTrait,
    providers: &PaymentService,
    row: &provider_notifications::Model,
    event: &ProviderNotificationReceived,
    lock: bool,
) -> Result<Option<payments::Model>, DbErr> {
    if let Some(charge) = notice_charge(providers, row)
        && let Some(found) =
            payments::find_notified_as(db, &row.provider, Some(&charge), None, lock).await?
    {
        return Ok(Some(found));
    }
    payments::find_notified_as(
        db,
        &row.provider,
        row.provider_payment_id.as_deref(),
        [row.payment_id, event.payment_id].into_iter().flatten(),
        lock,
    )
    .await
}

/// Marks the inbox row processed with `outcome`.
async fn finish(
    tx: &DatabaseTransaction,
    row: &provider_notifications::Model,
    payment_id: Option<domain::PaymentId>,
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

    fn prepares(&self) -> bool {
        true
    }

    /// Step 1 reads the inbox row anyway: a processed one asks nobody.
    fn prepare_spots_done_work(&self) -> bool {
        true
    }

    async fn prepare(&self, envelope: &Envelope) -> Result<Prepared, HandlerError> {
        if !envelope.is::<ProviderNotificationReceived>() {
            return Ok(Prepared::none());
        }
        let event: ProviderNotificationReceived = envelope.decode()?;
        Ok(match self.look_up(&event).await? {
            Some(looked_up) => Prepared::new(looked_up),
            None => Prepared::none(),
        })
    }

    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        prepared: Prepared,
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
        let outcome = self
            .process(tx, envelope, &event, prepared.take::<LookedUp>())
            .await?;
        metric::notification(&event.provider, outcome);
        tracing::info!(notification_id = event.notification_id, provider = %event.provider, outcome, "notification processed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use domain::ProviderId;
    use sea_orm::ActiveModelTrait;
    use sea_orm::ActiveValue::{NotSet, Set};
    use testkit::TestDb;
    use testkit::fixtures::{customer_and_tariff, pending_payment};

    use super::*;

    /// The notice's read brings the payment of the notice's provider with the provider's id
    /// it names, and nothing for a notice without one, an unknown id or another provider's.
    #[tokio::test]
    async fn a_notice_is_read_with_its_payment_by_the_providers_id() {
        let db = TestDb::new().await;
        let now = Utc::now();
        let (user, tariff) = customer_and_tariff(&db.conn, 42).await;
        let payment = |provider| pending_payment(&user, &tariff, provider, Some("pp-1"));
        let yookassa = payment("yookassa").insert(&db.conn).await.unwrap();
        let telegram = payment("telegram").insert(&db.conn).await.unwrap();
        let notice = |key: &str, provider: &'static str, provider_payment_id: Option<&str>| {
            provider_notifications::ActiveModel {
                id: NotSet,
                provider: Set(ProviderId::from_static(provider)),
                dedupe_key: Set(key.to_owned()),
                source: Set("webhook".into()),
                peer: Set(None),
                body: Set("{}".into()),
                provider_payment_id: Set(provider_payment_id.map(str::to_owned)),
                // The inbox's match plays no part in this rule.
                payment_id: Set(Some(telegram.id)),
                received_at: Set(now),
                processed_at: Set(None),
                outcome: Set(None),
            }
        };
        let cases = [
            (notice("a", "yookassa", Some("pp-1")), Some(yookassa.id)),
            (notice("b", "telegram", Some("pp-1")), Some(telegram.id)),
            (notice("c", "yookassa", None), None),
            (notice("d", "yookassa", Some("pp-unknown")), None),
            (notice("e", "crypto", Some("pp-1")), None),
        ];
        for (row, expected) in cases {
            let row = row.insert(&db.conn).await.unwrap();
            let (read, payment) = notice_and_payment(&db.conn, row.id).await.unwrap().unwrap();
            assert_eq!(read, row);
            assert_eq!(payment.map(|p| p.id), expected, "notice {}", row.dedupe_key);
        }
        assert!(notice_and_payment(&db.conn, -1).await.unwrap().is_none());
    }
}
