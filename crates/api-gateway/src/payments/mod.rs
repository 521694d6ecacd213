//! The payments API: the provider list, creating a payment (with `Idempotency-Key`), reading
//! one, and refunds.
//!
//! - [`routes`]: the actix handlers — authorise, parse, call the use case, answer;
//! - [`create`] and [`refund`]: the use cases, each recording its intent, asking the provider
//!   outside any transaction and recording the answer;
//! - [`views`]: the JSON the routes answer with.
//!
//! Both use cases take their `Idempotency-Key` through [`crate::idempotency`].

mod create;
mod refund;
mod routes;
mod views;

pub(crate) use create::{Profile, upsert_and_lock_user};

use payment_core::ProviderError;

use crate::error::ApiError;

pub use routes::configure;
pub(crate) use views::MoneyView;

/// Set (`true`) when a press answers with the customer's open checkout of the same tariff,
/// provider and currency instead of a new payment (see [`crate::checkout`]).
pub const CHECKOUT_REUSED: &str = "checkout-reused";

/// A provider's refusal (or silence) as the answer of the API.
fn provider_error(error: ProviderError) -> ApiError {
    match error {
        e if e.is_result_unknown() => ApiError::ProviderUnavailable(e.to_string()),
        e @ (ProviderError::NotEnabled(_)
        | ProviderError::Unsupported(_)
        | ProviderError::InvalidRequest(_)
        | ProviderError::RefundRefused(_)) => ApiError::Unprocessable(e.to_string()),
        e @ ProviderError::Client(_) => ApiError::internal(e),
        e => ApiError::ProviderRejected(e.to_string()),
    }
}
