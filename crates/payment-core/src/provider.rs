//! The provider abstraction: what every payment provider does, in our own types.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::money::{Currency, Money};
use domain::{PaymentId, PaymentStatus, RefundStatus};
use serde::Serialize;
use uuid::Uuid;

use crate::ProviderId;
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

/// One payment provider. Implementations live in `providers/<name>.rs`; the registry in
/// `providers/mod.rs` builds them from [`crate::PaymentSettings`].
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    fn descriptor(&self) -> &ProviderDescriptor;

    fn id(&self) -> ProviderId {
        self.descriptor().id
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

    /// The webhook pipeline: verify, then parse.
    async fn receive_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<WebhookNotification, WebhookError> {
        self.verify_webhook(request).await?;
        self.process_webhook(request.body).await
    }
}
