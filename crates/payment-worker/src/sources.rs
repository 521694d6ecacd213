//! Where the worker learns a payment's true status: one [`StatusSource`] per provider.
//!
//! A notification is only a reason to look; what the worker applies is the answer of the
//! payment's status source. For YooKassa (and any provider with a status API in
//! `payment_core`) that is a fresh `GET` through [`PaymentService`]. Providers without such an
//! API plug in here:
//!
//! - Telegram Payments ([`TelegramPayments`]): Stars are looked up with the Bot API
//!   (`getStarTransactions`, through [`PaymentService`]); card payments made with a provider
//!   token have no look-up API — the `successful_payment` update the bot stored is their only
//!   proof (reference §2b), so the source reads it from the inbox (the notification's body, or
//!   for reconciliation the payment's stored Telegram messages) and checks payload, payer,
//!   currency and amount against the payment.
//! - Crypto (USDT TRC20): its source answers from the invoice row the chain watcher keeps
//!   (confirmed transfers of the invoice's amount to the wallet). A crypto notice is not
//!   looked up here at all: with [`StatusSources::with_chain_notices`] the consumer leaves it
//!   to the chain-watch loop ([`crate::chain`]), which asks the chain about its transaction.
//!
//! Register them with [`StatusSources::with`] under the provider name stored in
//! `payments.provider`. A notification for a provider without a source is parked (not lost),
//! to be replayed once a worker that knows the provider runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Notify;

use async_trait::async_trait;
use domain::entities::{payments, provider_notifications, users};
use domain::money::{Currency, Money};
use payment_core::error::TransientFailure;
use payment_core::providers::telegram::payment_from_notification;
use payment_core::{PaymentRef, PaymentService, ProviderError, ProviderId, ProviderPayment};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder};

/// The provider's current view of one of our payments.
#[async_trait]
pub trait StatusSource: Send + Sync {
    /// Asks the provider about `payment`. `notification` is the inbox row that triggered the
    /// check, or `None` for reconciliation. Errors use the provider vocabulary: a
    /// [`ProviderError::is_result_unknown`] error keeps the payment as it is and is retried;
    /// [`ProviderError::Mismatch`] flags the payment.
    async fn current_status(
        &self,
        payment: &payments::Model,
        notification: Option<&provider_notifications::Model>,
    ) -> Result<ProviderPayment, ProviderError>;
}

/// The status sources by provider name (`payments.provider`).
#[derive(Clone, Default)]
pub struct StatusSources {
    by_provider: BTreeMap<String, Arc<dyn StatusSource>>,
    /// Wakes the chain-watch loop; set when it checks crypto notices.
    chain_notices: Option<Arc<Notify>>,
}

impl std::fmt::Debug for StatusSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusSources")
            .field("providers", &self.by_provider.keys().collect::<Vec<_>>())
            .field("chain_notices", &self.chain_notices.is_some())
            .finish()
    }
}

impl StatusSources {
    /// A source for every provider enabled in `service`, asking its API — and for Telegram
    /// card payments, which have none, reading the stored `successful_payment` through `db`.
    pub fn from_payment_service(service: PaymentService, db: &DatabaseConnection) -> Self {
        let service = Arc::new(service);
        let mut sources = Self::default();
        for id in ProviderId::ALL {
            if !service.is_enabled(*id) {
                continue;
            }
            let api = ProviderApi {
                service: service.clone(),
                id: *id,
            };
            sources = match id {
                ProviderId::Telegram => sources.with(
                    id.as_str(),
                    TelegramPayments {
                        stars: api,
                        db: db.clone(),
                    },
                ),
                _ => sources.with(id.as_str(), api),
            };
        }
        sources
    }

    /// Adds (or replaces) the source of `provider`.
    #[must_use]
    pub fn with(mut self, provider: &str, source: impl StatusSource + 'static) -> Self {
        self.by_provider
            .insert(provider.to_owned(), Arc::new(source));
        self
    }

    /// Crypto notices go to the chain-watch loop, woken through `wake` (see [`crate::chain`]).
    #[must_use]
    pub fn with_chain_notices(mut self, wake: Arc<Notify>) -> Self {
        self.chain_notices = Some(wake);
        self
    }

    /// The chain-watch loop's wake-up, when it checks crypto notices.
    pub fn chain_notices(&self) -> Option<&Arc<Notify>> {
        self.chain_notices.as_ref()
    }

    pub fn get(&self, provider: &str) -> Option<&Arc<dyn StatusSource>> {
        self.by_provider.get(provider)
    }

    /// The providers that have a source.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.by_provider.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_provider.is_empty()
    }
}

/// Re-fetches the payment from the provider's API (`GET /v3/payments/{id}` for YooKassa).
/// `payment_core` checks the answer's object id, our payment id in its metadata, the amount
/// and the currency against our payment.
struct ProviderApi {
    service: Arc<PaymentService>,
    id: ProviderId,
}

#[async_trait]
impl StatusSource for ProviderApi {
    async fn current_status(
        &self,
        payment: &payments::Model,
        notification: Option<&provider_notifications::Model>,
    ) -> Result<ProviderPayment, ProviderError> {
        // A payment whose creation answer was lost has no provider id yet; the notification
        // names it, and the fetch checks that the object carries our payment id.
        let provider_payment_id = payment
            .provider_payment_id
            .clone()
            .or_else(|| notification.and_then(|n| n.provider_payment_id.clone()))
            .ok_or_else(|| {
                ProviderError::InvalidRequest(format!(
                    "payment {} has no provider payment id to look up",
                    payment.id
                ))
            })?;
        let reference = PaymentRef {
            payment_id: payment.payment_id(),
            provider_payment_id,
            amount: payment.amount(),
        };
        self.service.get_payment_status(self.id, &reference).await
    }
}

/// Telegram Payments: Stars through the Bot API; card payments (a provider token) through the
/// stored `successful_payment`, the only proof Telegram gives of them (no Bot API method looks
/// up or refunds a fiat payment).
struct TelegramPayments {
    stars: ProviderApi,
    db: DatabaseConnection,
}

impl TelegramPayments {
    /// The payment's stored Telegram messages, newest first (a refund notice is newer than
    /// the payment it refunds).
    async fn stored_messages(
        &self,
        payment: &payments::Model,
    ) -> Result<Vec<provider_notifications::Model>, DbErr> {
        provider_notifications::Entity::find()
            .filter(provider_notifications::Column::PaymentId.eq(payment.id))
            .filter(provider_notifications::Column::Provider.eq(ProviderId::Telegram.as_str()))
            .order_by_desc(provider_notifications::Column::Id)
            .all(&self.db)
            .await
    }

    async fn payer(&self, payment: &payments::Model) -> Result<i64, ProviderError> {
        let user = users::Entity::find_by_id(payment.user_id)
            .one(&self.db)
            .await
            .map_err(database_unknown)?
            .ok_or_else(|| {
                ProviderError::InvalidRequest(format!(
                    "payment {} names user {} who does not exist",
                    payment.id, payment.user_id
                ))
            })?;
        Ok(user.telegram_id)
    }
}

#[async_trait]
impl StatusSource for TelegramPayments {
    async fn current_status(
        &self,
        payment: &payments::Model,
        notification: Option<&provider_notifications::Model>,
    ) -> Result<ProviderPayment, ProviderError> {
        if payment.currency == Currency::Xtr {
            return self.stars.current_status(payment, notification).await;
        }
        let reference = PaymentRef {
            payment_id: payment.payment_id(),
            provider_payment_id: payment
                .provider_payment_id
                .clone()
                .unwrap_or_else(|| payment.id.to_string()),
            amount: payment.amount(),
        };
        let stored = match notification {
            Some(row) => vec![row.clone()],
            None => self
                .stored_messages(payment)
                .await
                .map_err(database_unknown)?,
        };
        let Some(proof) = stored.first() else {
            // Nothing paid (yet): `successful_payment` is the only way we learn of a payment.
            return Ok(ProviderPayment {
                provider_payment_id: reference.provider_payment_id,
                status: domain::PaymentStatus::Pending,
                amount: reference.amount,
                refunded: Money::new(0, reference.amount.currency()),
                paid_at: None,
                failure_reason: None,
                confirmation: None,
                test: false,
            });
        };
        let payer = self.payer(payment).await?;
        payment_from_notification(&reference, payer, proof.body.as_bytes())
    }
}

/// A database error while reading what a provider told us: no answer yet, ask again.
fn database_unknown(error: DbErr) -> ProviderError {
    ProviderError::ResultUnknown {
        attempts: 1,
        last: TransientFailure::Connection(format!("database: {error}")),
    }
}

/// Asks `source`, timing the call and counting answers without a result.
pub(crate) async fn look_up(
    source: &dyn StatusSource,
    payment: &payments::Model,
    notification: Option<&provider_notifications::Model>,
) -> Result<ProviderPayment, ProviderError> {
    let started = std::time::Instant::now();
    let answer = source.current_status(payment, notification).await;
    crate::metric::lookup(&payment.provider, started.elapsed().as_secs_f64());
    if let Err(error) = &answer
        && error.is_result_unknown()
    {
        crate::metric::result_unknown(&payment.provider);
    }
    answer
}

/// The flag reason when `error` says the provider's answer disagrees with our payment.
pub(crate) fn disagreement(error: &ProviderError) -> Option<String> {
    match error {
        ProviderError::Mismatch(mismatch) => Some(mismatch.to_string()),
        ProviderError::TestObjectRefused { object_id } => Some(format!(
            "provider object {object_id} is a test object and test mode is off"
        )),
        _ => None,
    }
}
