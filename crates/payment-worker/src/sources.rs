//! Where the worker learns a payment's true status: the payment's provider.
//!
//! A notification is only a reason to look; what the worker applies is the answer of
//! [`PaymentProvider::current_status`](payment_core::PaymentProvider::current_status) of the
//! provider stored in `payments.provider`, found in the one registry, [`PaymentService`]. For
//! YooKassa that is a fresh `GET`; Telegram answers card payments from the stored
//! `successful_payment`, crypto from the invoice row the chain watcher keeps. A notification
//! for a provider this worker does not have is parked (not lost), to be replayed once a worker
//! that knows the provider runs.

use std::sync::Arc;

use domain::entities::{payments, provider_notifications};
use payment_core::{PaymentProvider, PaymentService, ProviderError, ProviderPayment, StatusQuery};

/// The enabled provider of `payment` (as stored in `payments.provider`), if this worker has it.
pub(crate) fn provider_of<'a>(
    service: &'a PaymentService,
    payment: &payments::Model,
) -> Option<&'a Arc<dyn PaymentProvider>> {
    service.provider_named(&payment.provider)
}

/// Asks `provider` about `payment`, timing the call and counting answers without a result.
pub(crate) async fn look_up(
    provider: &dyn PaymentProvider,
    payment: &payments::Model,
    notification: Option<&provider_notifications::Model>,
) -> Result<ProviderPayment, ProviderError> {
    let started = std::time::Instant::now();
    let answer = provider
        .current_status(StatusQuery {
            payment,
            notification,
        })
        .await;
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
