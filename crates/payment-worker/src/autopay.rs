//! Automatic renewal with a saved payment method (issue 22).
//!
//! **Saving.** A checkout with "renew automatically" asks its provider to save the method
//! (`Recurring::SaveMethod`); when that payment succeeds the provider's answer names the saved
//! method, and [`record`] (called by [`crate::transition::apply`] in the transition's own
//! transaction) keeps it in `saved_methods`, one per user and provider, with the tariff bought.
//!
//! **Charging.** [`Autopay::run_once`] finds the subscriptions that expire within
//! `AUTOPAY_LEAD_HOURS` whose user has a saved method with autopay on, and charges each period
//! once: the charge is an ordinary `payments` row whose idempotency key is
//! `autopay:<subscription>:<period end>` (UNIQUE), written before the provider is called, and
//! the provider's idempotence key derives from that row's id — so a retry, a restart or a
//! second worker charges the same period at most once. The provider is asked with
//! `Recurring::Charge` (no payer, no confirmation), and the payment is then settled like any
//! other (look-up, transition, `payment.completed` → marzban-sync extends through the ledger;
//! a decline → `payment.failed`, which the bot tells the user, who still gets the reminders).
//!
//! **Declines.** A declined renewal counts in `saved_methods.declines` (with the provider's
//! reason, e.g. `insufficient_funds`); [`MAX_DECLINES`] in a row turn autopay off; a success
//! resets the count.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::PaymentStatus;
use domain::entities::saved_methods::{self, MAX_DECLINES};
use domain::entities::{payments, subscriptions, tariffs};
use domain::{IdempotencyKey, PaymentId};
use payment_core::background::TaskCause;
use payment_core::{CreatePaymentRequest, PaymentService, ProviderPayment, Recurring};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::host::WorkerHost;

/// `payments.metadata` key of a renewal charge: `{"subscription_id", "period_end"}`.
pub const META_AUTOPAY: &str = "autopay";

/// `AUTOPAY_*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutopaySettings {
    /// `AUTOPAY_LEAD_HOURS` (default 24; 0 turns charging off): how long before the expiry a
    /// period is charged.
    pub lead: Duration,
    /// `AUTOPAY_POLL_SECS` (default 60): how often due subscriptions are looked for.
    pub poll_interval: Duration,
    /// Subscriptions charged per poll.
    pub batch_size: u64,
}

impl Default for AutopaySettings {
    fn default() -> Self {
        Self {
            lead: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(60),
            batch_size: 100,
        }
    }
}

/// What one poll did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AutopayReport {
    /// Renewal charges asked of a provider.
    pub charged: usize,
    /// Outcome labels of the settled charges (`applied`, `error`, …).
    pub outcomes: Vec<&'static str>,
}

/// The renewal loop of one worker.
#[derive(Debug, Clone)]
pub struct Autopay {
    db: DatabaseConnection,
    providers: Arc<PaymentService>,
    host: Arc<WorkerHost>,
    settings: AutopaySettings,
}

impl Autopay {
    pub fn new(
        db: DatabaseConnection,
        providers: Arc<PaymentService>,
        host: Arc<WorkerHost>,
        settings: AutopaySettings,
    ) -> Self {
        Self {
            db,
            providers,
            host,
            settings,
        }
    }

    /// Polls until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.run_once(Utc::now()).await {
                tracing::warn!(%error, "autopay poll failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        tracing::debug!("autopay stopped");
    }

    /// Charges every due period once (as of `now`).
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<AutopayReport, DbErr> {
        let mut report = AutopayReport::default();
        let lead = chrono::Duration::from_std(self.settings.lead).unwrap_or_default();
        if lead.is_zero() {
            return Ok(report);
        }
        // Only users with autopay on, a page at a time in (expiry, id) order through the whole
        // window: periods already charged or declined stay in the window until they end, and
        // must not hide the ones after them.
        let with_autopay = sea_orm::sea_query::Query::select()
            .column(saved_methods::Column::UserId)
            .from(saved_methods::Entity)
            .and_where(saved_methods::Column::Autopay.eq(true))
            .to_owned();
        let mut after: Option<(DateTime<Utc>, i64)> = None;
        loop {
            let mut page = subscriptions::Entity::find()
                .filter(subscriptions::Column::ExpiresAt.gt(now))
                .filter(subscriptions::Column::ExpiresAt.lte(now + lead))
                .filter(subscriptions::Column::UserId.in_subquery(with_autopay.clone()));
            if let Some((at, id)) = after {
                page = page.filter(
                    Condition::any()
                        .add(subscriptions::Column::ExpiresAt.gt(at))
                        .add(
                            Condition::all()
                                .add(subscriptions::Column::ExpiresAt.eq(at))
                                .add(subscriptions::Column::Id.gt(id)),
                        ),
                );
            }
            let due = page
                .order_by_asc(subscriptions::Column::ExpiresAt)
                .order_by_asc(subscriptions::Column::Id)
                .limit(self.settings.batch_size)
                .all(&self.db)
                .await?;
            let Some(last) = due.last() else { break };
            after = Some((last.expires_at, last.id));
            for subscription in due {
                self.renew(&subscription, now, &mut report).await?;
            }
        }
        Ok(report)
    }

    /// Charges `subscription`'s current period once, if its user has a saved method with
    /// autopay on.
    async fn renew(
        &self,
        subscription: &subscriptions::Model,
        now: DateTime<Utc>,
        report: &mut AutopayReport,
    ) -> Result<(), DbErr> {
        let methods = saved_methods::Entity::find()
            .filter(saved_methods::Column::UserId.eq(subscription.user_id))
            .filter(saved_methods::Column::Autopay.eq(true))
            .all(&self.db)
            .await?;
        // One charge per period whichever provider: the first enabled one with a method.
        let Some(method) = methods
            .into_iter()
            .find(|m| self.providers.provider_named(&m.provider).is_some())
        else {
            return Ok(());
        };
        let Some(payment) = self.charge_row(subscription, &method, now).await? else {
            return Ok(());
        };
        if payment.provider_payment_id.is_some() || payment.status != PaymentStatus::Pending {
            return Ok(()); // this period was charged already
        }
        report.charged += 1;
        report
            .outcomes
            .push(self.charge(&payment, &method, subscription.id).await);
        Ok(())
    }

    /// The period's charge row, written once (UNIQUE idempotency key); `None` when the
    /// tariff has no price in a currency the provider charges in.
    async fn charge_row(
        &self,
        subscription: &subscriptions::Model,
        method: &saved_methods::Model,
        now: DateTime<Utc>,
    ) -> Result<Option<payments::Model>, DbErr> {
        let key = format!(
            "autopay:{}:{}",
            subscription.id,
            subscription.expires_at.timestamp()
        );
        if let Some(found) = find_by_key(&self.db, &key).await? {
            return Ok(Some(found));
        }
        let Some(tariff) = tariffs::Entity::find_by_id(method.tariff_id)
            .one(&self.db)
            .await?
        else {
            tracing::warn!(
                user_id = method.user_id,
                tariff_id = method.tariff_id,
                "autopay tariff is gone; not charged"
            );
            return Ok(None);
        };
        let Some(provider) = self.providers.provider_named(&method.provider) else {
            return Ok(None);
        };
        let Some(price) = provider
            .descriptor()
            .currencies
            .iter()
            .find_map(|c| tariff.price(*c))
        else {
            tracing::warn!(tariff = %tariff.code, provider = %method.provider, "autopay tariff has no price in the provider's currencies; not charged");
            return Ok(None);
        };
        let key = IdempotencyKey::parse(&key).map_err(|e| DbErr::Custom(e.to_string()))?;
        let row = payments::ActiveModel {
            id: Set(PaymentId::new()),
            user_id: Set(subscription.user_id),
            tariff_id: Set(tariff.id),
            provider: Set(method.provider.clone()),
            amount_minor: Set(price.minor()),
            currency: Set(price.currency()),
            status: Set(PaymentStatus::Pending),
            provider_payment_id: Set(None),
            idempotency_key: Set(key.as_str().to_owned()),
            confirmation_url: Set(None),
            failure_reason: Set(None),
            metadata: Set(json!({
                META_AUTOPAY: {
                    "subscription_id": subscription.id,
                    "period_end": subscription.expires_at.to_rfc3339(),
                    "method_id": method.method_id,
                }
            })),
            created_at: Set(now),
            updated_at: Set(now),
            completed_at: Set(None),
            expires_at: Set(None),
            refunded_minor: Set(0),
            flagged: Set(false),
            flag_reason: Set(None),
            next_check_at: Set(None),
            check_attempts: Set(0),
        };
        payments::Entity::insert(row)
            .on_conflict(
                OnConflict::column(payments::Column::IdempotencyKey)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        find_by_key(&self.db, key.as_str()).await
    }

    /// Asks the provider to charge the saved method, stores its id for the payment, and
    /// settles the payment as reconciliation would.
    async fn charge(
        &self,
        payment: &payments::Model,
        method: &saved_methods::Model,
        subscription_id: i64,
    ) -> &'static str {
        let request = CreatePaymentRequest {
            payment_id: payment.id,
            amount: payment.amount(),
            description: "VPN subscription: automatic renewal".to_owned(),
            metadata: [("autopay".to_owned(), subscription_id.to_string())].into(),
            return_url: None,
            receipt_email: None,
            recurring: Recurring::Charge {
                method_id: method.method_id.clone(),
            },
        };
        let created = match self
            .providers
            .create_payment(method.provider.clone(), &request)
            .await
        {
            Ok(created) => created,
            Err(error) => {
                // No definite answer: the row stays half-made and reconciliation expires it;
                // the user still gets the expiry reminders.
                tracing::warn!(payment_id = %payment.id, %error, "autopay charge not made");
                return "error";
            }
        };
        let stored = payments::Entity::update_many()
            .col_expr(
                payments::Column::ProviderPaymentId,
                Expr::value(Some(created.provider_payment_id.clone())),
            )
            .filter(payments::Column::Id.eq(payment.id))
            .filter(payments::Column::ProviderPaymentId.is_null())
            .exec(&self.db)
            .await;
        if let Err(error) = stored {
            tracing::warn!(payment_id = %payment.id, %error, "cannot store the autopay charge's provider id");
            return "error";
        }
        let cause = TaskCause {
            task: "autopay",
            key: "subscription_id",
            id: subscription_id,
        };
        let outcome = payment_core::background::ProviderHost::settle(
            self.host.as_ref(),
            payment.id,
            cause,
            None,
        )
        .await;
        tracing::info!(payment_id = %payment.id, subscription_id, outcome, "autopay charge made");
        outcome
    }
}

async fn find_by_key<C: ConnectionTrait>(
    db: &C,
    key: &str,
) -> Result<Option<payments::Model>, DbErr> {
    payments::Entity::find()
        .filter(payments::Column::IdempotencyKey.eq(key))
        .one(db)
        .await
}

/// What a payment's move means for automatic renewal, in the move's transaction: a payment
/// that saved a method keeps it (autopay on, declines reset); a renewal charge resets the
/// declines when it succeeds and counts one when it fails ([`MAX_DECLINES`] turn autopay off).
pub(crate) async fn record<C: ConnectionTrait>(
    tx: &C,
    moved: &payments::Model,
    answer: &ProviderPayment,
) -> Result<(), DbErr> {
    use saved_methods::Column as M;
    let now = Utc::now();
    let renewal = moved.metadata.get(META_AUTOPAY).is_some();
    match moved.status {
        PaymentStatus::Succeeded => {
            if let Some(saved) = &answer.saved_method {
                let row = saved_methods::ActiveModel {
                    user_id: Set(moved.user_id),
                    provider: Set(moved.provider.clone()),
                    method_id: Set(saved.id.clone()),
                    title: Set(saved.title.clone()),
                    tariff_id: Set(moved.tariff_id),
                    autopay: Set(true),
                    declines: Set(0),
                    last_decline: Set(None),
                    created_at: Set(now),
                    updated_at: Set(now),
                    ..Default::default()
                };
                let mut keep = OnConflict::columns([M::UserId, M::Provider]);
                if renewal {
                    // A renewal charge names the method it charged: nothing new to keep.
                    keep.update_columns([M::Declines, M::LastDecline, M::UpdatedAt]);
                } else {
                    keep.update_columns([
                        M::MethodId,
                        M::Title,
                        M::TariffId,
                        M::Autopay,
                        M::Declines,
                        M::LastDecline,
                        M::UpdatedAt,
                    ]);
                }
                saved_methods::Entity::insert(row)
                    .on_conflict(keep.to_owned())
                    .exec(tx)
                    .await?;
                tracing::info!(user_id = moved.user_id, provider = %moved.provider, title = %saved.title, renewal, "payment method saved for automatic renewal");
            } else if renewal {
                saved_methods::Entity::update_many()
                    .col_expr(M::Declines, Expr::value(0))
                    .col_expr(M::LastDecline, Expr::value(Option::<String>::None))
                    .col_expr(M::UpdatedAt, Expr::value(now))
                    .filter(M::UserId.eq(moved.user_id))
                    .filter(M::Provider.eq(moved.provider.clone()))
                    .exec(tx)
                    .await?;
            }
        }
        PaymentStatus::Failed | PaymentStatus::Canceled | PaymentStatus::Expired if renewal => {
            let reason = moved
                .failure_reason
                .clone()
                .unwrap_or_else(|| moved.status.as_str().to_owned());
            saved_methods::Entity::update_many()
                .col_expr(M::Declines, Expr::col(M::Declines).add(1))
                .col_expr(
                    M::Autopay,
                    Expr::col(M::Autopay).and(Expr::col(M::Declines).add(1).lt(MAX_DECLINES)),
                )
                .col_expr(M::LastDecline, Expr::value(Some(reason.clone())))
                .col_expr(M::UpdatedAt, Expr::value(now))
                .filter(M::UserId.eq(moved.user_id))
                .filter(M::Provider.eq(moved.provider.clone()))
                .exec(tx)
                .await?;
            tracing::warn!(user_id = moved.user_id, payment_id = %moved.id, %reason, "automatic renewal declined");
        }
        _ => {}
    }
    Ok(())
}
