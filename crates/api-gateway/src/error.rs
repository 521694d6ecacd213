//! The one error type of the HTTP surface and its mapping to status codes.
//!
//! Every error answers `{"error": "<code>", "message": "<what to fix>"}`; the code is stable
//! (clients branch on it), the message is for people.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is not valid JSON for this endpoint: {0}")]
    InvalidJson(String),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadSignature(String),
    #[error("source address {0} is not allowed")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("a request with this Idempotency-Key is still being processed; retry later")]
    InFlight,
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyMismatch,
    /// Another refund of the payment is still in progress: one refund at a time per payment.
    #[error(
        "refund {refund_id} of this payment is still in progress; wait for it to settle, or \
         repeat its request with Idempotency-Key {key} to settle it, then ask again"
    )]
    RefundInProgress { refund_id: uuid::Uuid, key: String },
    /// The customer holds as many open payments as allowed (`CHECKOUT_MAX_OPEN_PAYMENTS`).
    #[error(
        "this customer already has {limit} open payments; pay or let one of them expire \
         before starting another"
    )]
    TooManyOpenPayments { limit: u32 },
    /// A promo code this checkout cannot use (issue 23): 422 `promo_rejected`, the message
    /// starting with the reason's code (`expired: …`).
    #[error("{0}")]
    PromoRejected(domain::promo::Refusal),
    #[error("{0}")]
    Unprocessable(String),
    #[error("the payment provider rejected the request: {0}")]
    ProviderRejected(String),
    #[error("the payment provider gave no definite answer: {0}")]
    ProviderUnavailable(String),
    #[error("{0} is not configured on this gateway")]
    NotConfigured(&'static str),
    /// Over a rate limit (issue 18): 429 with `Retry-After`.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadSignature(_) => "bad_signature",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::InFlight => "request_in_flight",
            ApiError::IdempotencyMismatch => "idempotency_key_reused",
            ApiError::RefundInProgress { .. } => "refund_in_progress",
            ApiError::TooManyOpenPayments { .. } => "too_many_open_payments",
            ApiError::PromoRejected(_) => "promo_rejected",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::ProviderRejected(_) => "provider_rejected",
            ApiError::ProviderUnavailable(_) => "provider_unavailable",
            ApiError::NotConfigured(_) => "not_configured",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal(_) => "internal",
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidJson(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized | ApiError::BadSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_)
            | ApiError::InFlight
            | ApiError::RefundInProgress { .. }
            | ApiError::TooManyOpenPayments { .. } => StatusCode::CONFLICT,
            ApiError::IdempotencyMismatch
            | ApiError::Unprocessable(_)
            | ApiError::PromoRejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::ProviderRejected(_) => StatusCode::BAD_GATEWAY,
            ApiError::ProviderUnavailable(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(error) = self {
            // The whole cause chain goes to the log, never to the client.
            tracing::error!(error = format!("{error:#}"), "request failed");
        }
        let mut response = HttpResponse::build(self.status_code()).json(ErrorBody {
            error: self.code(),
            message: self.to_string(),
        });
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::RateLimited { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(error: sea_orm::DbErr) -> Self {
        Self::internal(error)
    }
}

impl From<messaging::OutboxError> for ApiError {
    fn from(error: messaging::OutboxError) -> Self {
        Self::internal(error)
    }
}

impl From<service_kit::inbox::InboxError> for ApiError {
    fn from(error: service_kit::inbox::InboxError) -> Self {
        Self::internal(error)
    }
}

impl From<messaging::EnvelopeError> for ApiError {
    fn from(error: messaging::EnvelopeError) -> Self {
        Self::internal(error)
    }
}
