//! Errors of provider calls, refund pre-checks and webhook verification.

use std::net::IpAddr;

use domain::money::{Currency, Money};
use domain::{PaymentId, PaymentStatus};
use serde::Deserialize;

use crate::ProviderId;

/// Why a provider call did not produce a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("payment provider {0} is not enabled")]
    NotEnabled(ProviderId),
    #[error("{0} is not supported by this provider")]
    Unsupported(&'static str),
    /// Our own request was invalid; nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The provider's refund rules would refuse this refund; nothing was sent.
    #[error("refund refused before calling the provider: {0}")]
    RefundRefused(#[from] RefundRefusal),
    /// A definite "no" from the provider (its 4xx error body, typed).
    #[error("the provider rejected the request: {0}")]
    Rejected(#[from] Rejection),
    /// No definite answer (HTTP 5xx, 429 or timeouts until the attempts ran out). The
    /// operation may or may not have happened: keep the payment as it is and retry later
    /// with the same idempotence key, or re-fetch. Never treat this as a failure.
    #[error("no definite answer after {attempts} attempt(s), last: {last}; the result is unknown")]
    ResultUnknown {
        attempts: u32,
        last: TransientFailure,
    },
    /// The answer is about a different amount, currency or payment than ours.
    #[error("the provider's answer does not match our payment: {0}")]
    Mismatch(#[from] Mismatch),
    /// A `test: true` object while test mode is off (a live shop must never see one).
    #[error("object {object_id} is a test object and test mode is off")]
    TestObjectRefused { object_id: String },
    /// A 2xx answer we could not read.
    #[error("malformed answer from the provider: {0}")]
    MalformedResponse(String),
    /// Building the HTTP client or request failed before anything was sent.
    #[error("http client: {0}")]
    Client(String),
}

impl ProviderError {
    /// True when the provider may have acted: the caller must not mark anything failed, but
    /// retry (same idempotence key) or re-fetch later.
    pub fn is_result_unknown(&self) -> bool {
        matches!(
            self,
            ProviderError::ResultUnknown { .. } | ProviderError::MalformedResponse(_)
        )
    }
}

/// A retryable answer (or lack of one): the transport's vocabulary.
pub use outbound::TransientFailure;

/// The error code of a provider's error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionCode {
    InvalidRequest,
    InvalidCredentials,
    Forbidden,
    NotFound,
    TooManyRequests,
    InternalServerError,
    #[serde(other)]
    Unknown,
}

/// A provider's definite refusal, from its error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {http_status} {code:?}{}{}",
    .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default(),
    .parameter.as_deref().map(|p| format!(" (parameter {p})")).unwrap_or_default())]
pub struct Rejection {
    pub http_status: u16,
    pub code: RejectionCode,
    pub description: Option<String>,
    /// The request field the provider complained about.
    pub parameter: Option<String>,
    /// The provider's id of this error, for support requests.
    pub error_id: Option<String>,
}

/// A provider answer that disagrees with our payment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("amount: expected {expected}, got {actual}")]
    Amount { expected: Money, actual: Money },
    #[error("currency: expected {expected}, got {actual:?}")]
    Currency { expected: Currency, actual: String },
    #[error("payment id in metadata: expected {expected}, got {actual:?}")]
    PaymentId {
        expected: PaymentId,
        actual: Option<String>,
    },
    #[error("provider object id: expected {expected}, got {actual}")]
    ObjectId { expected: String, actual: String },
    /// Someone else paid: the payer's Telegram id differs from our payment's user.
    #[error("payer: expected Telegram user {expected}, got {actual:?}")]
    Payer { expected: i64, actual: Option<i64> },
}

/// A refund the provider's own rules would refuse (checked before calling it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundRefusal {
    #[error("only succeeded payments can be refunded, this one is {0}")]
    NotSucceeded(PaymentStatus),
    #[error("refund currency {refund} differs from the payment currency {payment}")]
    CurrencyMismatch { payment: Currency, refund: Currency },
    #[error("refund amount must be positive")]
    NotPositive,
    #[error("refund of {requested} exceeds the {remaining} left to refund")]
    ExceedsRemaining { requested: Money, remaining: Money },
    #[error("a partial refund must leave more than {minimum}; it would leave {remainder}")]
    RemainderTooSmall { remainder: Money, minimum: Money },
}

/// Why a webhook call was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The (resolved) source address is outside the provider's allow-list.
    #[error("source address {0} is not allowed")]
    ForbiddenSource(IpAddr),
    /// A trusted proxy sent a forwarding header we cannot read.
    #[error("malformed forwarding header: {0:?}")]
    MalformedForwardingHeader(String),
    /// The body is not the provider's notification format.
    #[error("malformed notification: {0}")]
    MalformedBody(String),
    /// The signature is missing, malformed or does not match the body.
    #[error("{0}")]
    BadSignature(String),
    /// The signature matches but its timestamp is outside the tolerance (a replay).
    #[error("{0}")]
    ExpiredSignature(String),
}

/// A setting is missing or unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{0} must be set")]
    Missing(&'static str),
    #[error("{var}: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("two payment providers are both named {0:?}")]
    DuplicateProvider(crate::ProviderId),
}

impl From<domain::env::EnvError> for SettingsError {
    fn from(error: domain::env::EnvError) -> Self {
        match error {
            domain::env::EnvError::Missing { name, .. } => Self::Missing(name),
            domain::env::EnvError::Invalid { name, reason } => Self::Invalid { var: name, reason },
        }
    }
}
