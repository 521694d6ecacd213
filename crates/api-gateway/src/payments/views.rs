//! The JSON the payments API answers with.

use actix_web::HttpResponse;
use chrono::{DateTime, Utc};
use domain::PaymentId;
use domain::entities::{payments, refunds};
use domain::money::Money;
use domain::{PaymentStatus, RefundStatus};
use payment_core::{PaymentProvider, ProviderId};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Serialize)]
pub(crate) struct MoneyView {
    minor: i64,
    currency: &'static str,
    /// Decimal string in the currency's units, e.g. `"199.00"`.
    value: String,
}

impl From<Money> for MoneyView {
    fn from(money: Money) -> Self {
        Self {
            minor: money.minor(),
            currency: money.currency().code(),
            value: money.to_decimal_string(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct PaymentView {
    payment_id: PaymentId,
    status: PaymentStatus,
    provider: String,
    provider_payment_id: Option<String>,
    telegram_id: i64,
    tariff_code: String,
    amount: MoneyView,
    refunded: MoneyView,
    /// What the payer does next (`redirect` URL, `transfer` details or `invoice` payload).
    confirmation: Option<serde_json::Value>,
    confirmation_url: Option<String>,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

impl PaymentView {
    pub(super) fn new(payment: &payments::Model, telegram_id: i64, tariff_code: String) -> Self {
        Self {
            payment_id: payment.id,
            status: payment.status,
            provider: payment.provider.to_string(),
            provider_payment_id: payment.provider_payment_id.clone(),
            telegram_id,
            tariff_code,
            amount: payment.amount().into(),
            refunded: payment.refunded().into(),
            confirmation: payment.metadata.get("confirmation").cloned(),
            confirmation_url: payment.confirmation_url.clone(),
            failure_reason: payment.failure_reason.clone(),
            created_at: payment.created_at,
            updated_at: payment.updated_at,
            completed_at: payment.completed_at,
            expires_at: payment.expires_at,
        }
    }
}

/// One enabled provider of `GET /api/payment/providers`.
#[derive(Serialize)]
pub(super) struct ProviderView {
    id: ProviderId,
    title: &'static str,
    currencies: Vec<&'static str>,
    capabilities: Vec<&'static str>,
}

impl ProviderView {
    pub(super) fn new(provider: &dyn PaymentProvider) -> Self {
        let d = provider.descriptor();
        let mut capabilities = vec!["payments"];
        // Only providers that notify this gateway over HTTP (Telegram talks to the bot).
        if provider.accepts_webhooks() {
            capabilities.push("webhooks");
        }
        if d.supports_refunds {
            capabilities.push("refunds");
        }
        // Saves the payer's card for automatic renewal (YooKassa, unless the shop may not).
        if provider.saves_methods() {
            capabilities.push("autopay");
        }
        Self {
            id: d.id.clone(),
            title: d.title,
            currencies: d.currencies.iter().map(|c| c.code()).collect(),
            capabilities,
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct RefundView {
    refund_id: Uuid,
    payment_id: PaymentId,
    provider: String,
    provider_refund_id: Option<String>,
    status: RefundStatus,
    amount: MoneyView,
    reason: Option<String>,
    requested_by: String,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    /// The refund was not made through the provider's API (fiat Telegram payments): the
    /// access is revoked and the money must be returned in the payment provider's cabinet.
    outside_provider: bool,
    /// What the admin still has to do, when something is left (see `outside_provider`).
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_action: Option<String>,
}

impl From<&refunds::Model> for RefundView {
    fn from(r: &refunds::Model) -> Self {
        Self {
            refund_id: r.id,
            payment_id: r.payment_id,
            provider: r.provider.to_string(),
            provider_refund_id: r.provider_refund_id.clone(),
            status: r.status,
            amount: r.amount().into(),
            reason: r.reason.clone(),
            requested_by: r.requested_by.clone(),
            failure_reason: r.failure_reason.clone(),
            created_at: r.created_at,
            outside_provider: r.outside_provider,
            admin_action: r.outside_provider.then(|| {
                format!(
                    "Telegram has no refund for card payments: the access is revoked and this \
                     refund is recorded as made outside Telegram. Return {} to the payer in \
                     the payment provider's cabinet (Telegram charge {}).",
                    r.amount(),
                    r.provider_refund_id.as_deref().unwrap_or("unknown")
                )
            }),
        }
    }
}

pub(super) fn refund_response(refund: &refunds::Model) -> HttpResponse {
    let view = RefundView::from(refund);
    match refund.status {
        RefundStatus::Succeeded => HttpResponse::Ok().json(view),
        // Accepted by the provider but not final: the result arrives as a notification.
        RefundStatus::Pending => HttpResponse::Accepted().json(view),
        RefundStatus::Failed => HttpResponse::UnprocessableEntity().json(view),
    }
}
