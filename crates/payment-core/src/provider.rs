//! The provider abstraction: what every payment provider does, in our own types.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::entities::tariffs;
use domain::money::{Currency, Money};
use domain::{PaymentId, PaymentStatus, RefundStatus};
use sea_orm::DatabaseTransaction;
use sea_orm::sea_query::SimpleExpr;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ProviderId;
use crate::background::{BackgroundTask, ProviderHost};
use crate::error::{ProviderError, WebhookError};
use crate::webhook::{WebhookNotification, WebhookRequest};

/// What the registry and `GET /api/payment/providers` show about a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderDescriptor {
    pub id: ProviderId,
    /// Human-readable name for the bot's buttons.
    pub title: &'static str,
    /// Currencies it can charge in.
    pub currencies: &'static [Currency],
    pub supports_refunds: bool,
}

/// Ask the provider to start a payment.
#[derive(Debug, Clone)]
pub struct CreatePaymentRequest {
    /// Our id; the provider's idempotence key is derived from it, so calling
    /// `create_payment` again for the same payment can never charge twice.
    pub payment_id: PaymentId,
    pub amount: Money,
    /// Shown to the payer (YooKassa truncates nothing: longer texts are cut to its limit here).
    pub description: String,
    /// Extra string metadata (e.g. the Telegram user id); our payment id is always added.
    pub metadata: BTreeMap<String, String>,
    /// Where the payer returns after the checkout; `None` = the provider's configured one.
    pub return_url: Option<String>,
    /// Contact for the fiscal receipt, overriding the configured default.
    pub receipt_email: Option<String>,
    /// Whether the method is saved for later charges, or a saved one charged now.
    pub recurring: Recurring,
}

/// A payment's part in automatic renewal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Recurring {
    /// A one-off payment.
    #[default]
    No,
    /// The payer agreed to automatic renewal: save the method they pay with.
    SaveMethod,
    /// A merchant-initiated charge of a saved method (no payer, no confirmation).
    Charge { method_id: String },
}

/// A payment method the provider saved for later charges (YooKassa: `payment_method.saved`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedMethod {
    pub id: String,
    /// What the payer recognises it by, e.g. "Bank card *4477".
    pub title: String,
}

/// What the payer has to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Confirmation {
    /// Open this URL (YooKassa's checkout page).
    Redirect { url: String },
    /// Send exactly `amount` to `address` on `network` before `expires_at` (crypto).
    Transfer {
        network: String,
        address: String,
        amount: Money,
        expires_at: Option<DateTime<Utc>>,
    },
    /// The bot sends a Telegram invoice carrying this payload (Telegram Payments / Stars).
    Invoice { payload: String },
}

/// The provider accepted the payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedPayment {
    pub provider_payment_id: String,
    pub status: PaymentStatus,
    pub amount: Money,
    pub confirmation: Option<Confirmation>,
    pub expires_at: Option<DateTime<Utc>>,
    pub test: bool,
}

/// Our record of a payment, against which every provider answer is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRef {
    pub payment_id: PaymentId,
    pub provider_payment_id: String,
    pub amount: Money,
}

/// The provider's current view of a payment, mapped to our status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPayment {
    pub provider_payment_id: String,
    pub status: PaymentStatus,
    pub amount: Money,
    /// Refunded so far according to the provider.
    pub refunded: Money,
    pub paid_at: Option<DateTime<Utc>>,
    /// The provider's reason for a cancellation (e.g. `insufficient_funds`).
    pub failure_reason: Option<String>,
    pub confirmation: Option<Confirmation>,
    pub test: bool,
    /// The method saved by this payment for automatic renewal, if the provider saved one.
    pub saved_method: Option<SavedMethod>,
}

/// A charge the provider made on its own for an earlier payment of ours (a Telegram Stars
/// subscription's monthly charge): a new payment, a renewal of the one it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecurringCharge {
    /// The charge's own id at the provider, unique per charge: the renewal's
    /// `provider_payment_id`.
    pub provider_payment_id: String,
    /// The `provider_payment_id` of the payment it renews.
    pub renews: String,
    pub amount: Money,
}

/// Ask the provider to return money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// Our refund id; the idempotence key is derived from it.
    pub refund_id: Uuid,
    pub payment: PaymentRef,
    /// Our payment status (must be succeeded or partially refunded).
    pub payment_status: PaymentStatus,
    /// Refunded so far according to our records.
    pub already_refunded: Money,
    pub amount: Money,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRefund {
    pub provider_refund_id: String,
    pub status: RefundStatus,
    pub amount: Money,
}

/// How a refund of a payment is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundRoute {
    /// Through the provider's refund call ([`PaymentProvider::refund`]).
    Provider,
    /// Nobody can be asked (e.g. a fiat Telegram payment: no Bot API method refunds it): the
    /// refund is recorded as made outside the provider and the money returned by hand.
    OutsideProvider,
}

/// Why a checkout could not reserve what its provider needs ([`PaymentProvider::reserve_checkout`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckoutError {
    /// The database failed; nothing was reserved.
    #[error("database: {0}")]
    Database(String),
    /// Another checkout holds what this one needs right now; try again.
    #[error("{0}")]
    Contended(String),
    /// This checkout cannot be made (a clear reason for the caller).
    #[error("{0}")]
    Refused(String),
}

/// What the worker knows of a payment when it asks its provider for the current status.
#[derive(Debug, Clone, Copy)]
pub struct StatusQuery<'a> {
    pub payment: &'a domain::entities::payments::Model,
    /// The stored notification that triggered the check; `None` for reconciliation.
    pub notification: Option<&'a domain::entities::provider_notifications::Model>,
}

impl StatusQuery<'_> {
    /// Our record as a [`PaymentRef`]: the provider's id from the payment, else from the
    /// notification (a payment whose creation answer was lost has none yet; the fetch checks
    /// that the object carries our payment id).
    pub fn reference(&self) -> Result<PaymentRef, ProviderError> {
        let provider_payment_id = self
            .payment
            .provider_payment_id
            .clone()
            .or_else(|| {
                self.notification
                    .and_then(|n| n.provider_payment_id.clone())
            })
            .ok_or_else(|| {
                ProviderError::InvalidRequest(format!(
                    "payment {} has no provider payment id to look up",
                    self.payment.id
                ))
            })?;
        Ok(PaymentRef {
            payment_id: self.payment.id,
            provider_payment_id,
            amount: self.payment.amount(),
        })
    }
}

/// One payment provider. Implementations live in `providers/<name>.rs`; the registry in
/// `providers/mod.rs` builds them from [`crate::PaymentSettings`].
///
/// Everything provider-specific is answered here, so the gateway and the worker never match
/// on a provider: its webhook (verify + parse), its checkout (price, reservation, release), its
/// refund route and its status look-up.
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    fn descriptor(&self) -> &ProviderDescriptor;

    fn id(&self) -> ProviderId {
        self.descriptor().id.clone()
    }

    /// Whether `POST /webhook/payment/{id}` is open for this provider (YooKassa: always; crypto:
    /// with its notice secret; Telegram: never, its updates reach the bot).
    fn accepts_webhooks(&self) -> bool {
        false
    }

    /// What `tariff` costs through this provider, in one of `currencies` (those it charges in,
    /// narrowed by the caller's choice). By default the tariff's price in the first of them it
    /// has; the error is a sentence for the customer.
    fn quote(&self, tariff: &tariffs::Model, currencies: &[Currency]) -> Result<Money, String> {
        currencies
            .iter()
            .find_map(|c| tariff.price(*c))
            .ok_or_else(|| {
                format!(
                    "tariff {} has no price in a currency {} charges in",
                    tariff.code,
                    self.id()
                )
            })
    }

    /// Whether this provider can save the payer's method for automatic renewal
    /// ([`Recurring::SaveMethod`]) and charge it later ([`Recurring::Charge`]); providers
    /// that cannot ignore [`CreatePaymentRequest::recurring`].
    fn saves_methods(&self) -> bool {
        false
    }

    /// Whether a checkout asking `asked` is what this provider asks now for `price`, so that
    /// a second press may hand it out again: by default the same amount; crypto: the price
    /// plus a tag.
    fn asks_at_price(&self, price: &Money, asked: &Money) -> bool {
        price == asked
    }

    /// A condition on `payments` under which a pending payment of this provider still holds
    /// what its checkout reserved, so it counts against its customer's open payments even
    /// after it expired (crypto: an open invoice keeps its tag through the late window); none
    /// by default.
    fn holds_reservation(&self) -> Option<SimpleExpr> {
        None
    }

    /// Inside the payment-creation transaction, once the payment row is written: reserves what
    /// the checkout needs and returns the amount the payer is asked for (by default `price`).
    /// Crypto reserves its invoice's unique amount here.
    async fn reserve_checkout(
        &self,
        txn: &DatabaseTransaction,
        payment_id: PaymentId,
        price: Money,
    ) -> Result<Money, CheckoutError> {
        let _ = (txn, payment_id);
        Ok(price)
    }

    /// In the transaction that ends a checkout nobody can pay any more (refused by the
    /// provider: `ended` is `failed`; never finished creating: `expired`): frees what
    /// [`PaymentProvider::reserve_checkout`] reserved (nothing by default).
    async fn release_checkout(
        &self,
        txn: &DatabaseTransaction,
        payment_id: PaymentId,
        ended: PaymentStatus,
        now: DateTime<Utc>,
    ) -> Result<(), CheckoutError> {
        let _ = (txn, payment_id, ended, now);
        Ok(())
    }

    /// How a refund of `payment` is made (by default through [`PaymentProvider::refund`]).
    fn refund_route(&self, payment: &PaymentRef) -> RefundRoute {
        let _ = payment;
        RefundRoute::Provider
    }

    /// The provider's current view of one of our payments, for the worker and reconciliation.
    /// By default a fresh [`PaymentProvider::get_payment_status`]. Errors use the provider
    /// vocabulary: a [`ProviderError::is_result_unknown`] error keeps the payment as it is and
    /// is retried; [`ProviderError::Mismatch`] flags it.
    async fn current_status(
        &self,
        query: StatusQuery<'_>,
    ) -> Result<ProviderPayment, ProviderError> {
        self.get_payment_status(&query.reference()?).await
    }

    /// Whether a payment this provider still calls pending at the end of reconciliation is
    /// expired rather than left pending (Telegram: nothing arrives after an invoice is
    /// abandoned). By default it stays pending for an admin.
    fn expires_pending_at_deadline(&self) -> bool {
        false
    }

    /// Whether this provider's notifications are checked by its own loop rather than by a
    /// status look-up (the crypto chain watcher asks the chain about a notice's transaction):
    /// the worker's consumer then leaves their inbox rows open and wakes that loop.
    fn checks_own_notices(&self) -> bool {
        false
    }

    /// The recurring charge a stored notice reports, if it is one (see [`RecurringCharge`]):
    /// the worker records it as a new payment renewing the one it names, then completes that
    /// payment like any other. `None` (the default): the notice is about the payment it names.
    fn recurring_charge(&self, _notice: &[u8]) -> Option<RecurringCharge> {
        None
    }

    /// The id of the charge a stored notice is about, when it is more precise than the
    /// payment id the notice names (a refund of a Stars subscription's renewal names the
    /// subscription's first payment): the worker first looks for a payment recorded under it
    /// ([`RecurringCharge::provider_payment_id`]). None by default.
    fn notice_charge(&self, _notice: &[u8]) -> Option<String> {
        None
    }

    /// The loop this provider needs running beside the worker until `shutdown` (the crypto
    /// chain watcher), given what the worker offers it; none by default.
    fn background_task(
        &self,
        _host: Arc<dyn ProviderHost>,
        _shutdown: CancellationToken,
    ) -> Option<BackgroundTask> {
        None
    }

    /// Starts a payment. Safe to call again for the same `payment_id` (same idempotence key).
    async fn create_payment(
        &self,
        request: &CreatePaymentRequest,
    ) -> Result<CreatedPayment, ProviderError>;

    /// Fetches the payment and checks it against `payment` (amount, currency, our id).
    async fn get_payment_status(
        &self,
        payment: &PaymentRef,
    ) -> Result<ProviderPayment, ProviderError>;

    /// Checks that a webhook call comes from the provider (source address, signature, …).
    async fn verify_webhook(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookError>;

    /// Parses a verified webhook body. The status in it is a hint only: the worker re-fetches.
    async fn process_webhook(&self, body: &[u8]) -> Result<WebhookNotification, WebhookError>;

    /// Returns money; the provider's refund rules are checked before the call.
    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        let _ = request;
        Err(ProviderError::Unsupported("refund"))
    }

    /// A refund of `payment` made outside the provider (its [`RefundRoute::OutsideProvider`]),
    /// named as the provider would name it, so the provider's own later word on it is the same
    /// refund. By default an id of our own, `outside-<refund id>`.
    async fn refund_made_outside(
        &self,
        payment: &domain::entities::payments::Model,
        refund_id: Uuid,
        amount: Money,
    ) -> Result<ProviderRefund, ProviderError> {
        let _ = payment;
        Ok(ProviderRefund {
            provider_refund_id: format!("outside-{refund_id}"),
            status: RefundStatus::Succeeded,
            amount,
        })
    }

    /// The notice the gateway stores for a refund it made through [`PaymentProvider::refund`]
    /// (or recorded as made outside the provider), worded as the provider's own notification
    /// of that refund would be: the worker reads it like any webhook, and the provider's real
    /// notification of the same refund (same dedupe key, from
    /// [`PaymentProvider::process_webhook`]) is a duplicate. By default a plain
    /// [`generic_refund_notice`], for a provider that sends no refund notifications (such a
    /// provider reads it back with [`read_generic_refund_notice`] in its
    /// [`PaymentProvider::current_status`]).
    fn refund_notice(&self, notice: &RefundNotice<'_>) -> String {
        generic_refund_notice(notice)
    }

    /// The webhook pipeline: verify, then parse.
    async fn receive_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<WebhookNotification, WebhookError> {
        self.verify_webhook(request).await?;
        self.process_webhook(request.body).await
    }
}

/// A refund the gateway made or recorded, for [`PaymentProvider::refund_notice`].
#[derive(Debug, Clone, Copy)]
pub struct RefundNotice<'a> {
    pub provider_payment_id: &'a str,
    pub refund: &'a ProviderRefund,
    /// Everything refunded of the payment with this refund included (our refund records).
    pub total_refunded: Money,
    pub at: DateTime<Utc>,
}

/// A refund notice in no provider's format (see [`PaymentProvider::refund_notice`]).
pub fn generic_refund_notice(notice: &RefundNotice<'_>) -> String {
    serde_json::json!({
        "type": GENERIC_REFUND,
        "provider_refund_id": notice.refund.provider_refund_id,
        "provider_payment_id": notice.provider_payment_id,
        "status": notice.refund.status,
        "amount_minor": notice.refund.amount.minor(),
        "total_refunded_minor": notice.total_refunded.minor(),
        "currency": notice.refund.amount.currency().code(),
    })
    .to_string()
}

const GENERIC_REFUND: &str = "refund";

/// What a [`generic_refund_notice`] says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct GenericRefund {
    pub provider_refund_id: String,
    pub provider_payment_id: String,
    pub status: RefundStatus,
    pub amount_minor: i64,
    pub total_refunded_minor: i64,
    pub currency: String,
}

/// Reads a [`generic_refund_notice`]; `None` for any other body.
pub fn read_generic_refund_notice(body: &[u8]) -> Option<GenericRefund> {
    #[derive(serde::Deserialize)]
    struct Tagged {
        #[serde(rename = "type")]
        kind: String,
        #[serde(flatten)]
        refund: GenericRefund,
    }
    serde_json::from_slice::<Tagged>(body)
        .ok()
        .filter(|t| t.kind == GENERIC_REFUND)
        .map(|t| t.refund)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generic_refund_notice_reads_back_and_nothing_else_does() {
        let refund = ProviderRefund {
            provider_refund_id: "77".into(),
            status: RefundStatus::Succeeded,
            amount: Money::new(5_000, Currency::Rub),
        };
        let body = generic_refund_notice(&RefundNotice {
            provider_payment_id: "1000",
            refund: &refund,
            total_refunded: Money::new(12_000, Currency::Rub),
            at: Utc::now(),
        });
        let read = read_generic_refund_notice(body.as_bytes()).expect("ours");
        assert_eq!(
            (
                read.provider_refund_id.as_str(),
                read.provider_payment_id.as_str()
            ),
            ("77", "1000")
        );
        assert_eq!(
            (read.amount_minor, read.total_refunded_minor),
            (5_000, 12_000)
        );
        assert_eq!(
            (read.status, read.currency.as_str()),
            (RefundStatus::Succeeded, "RUB")
        );
        for other in [
            &br#"{"type":"notification","event":"refund.succeeded"}"#[..],
            br#"{"update_id":1,"update_type":"invoice_paid"}"#,
            b"not json",
        ] {
            assert_eq!(read_generic_refund_notice(other), None);
        }
    }
}
