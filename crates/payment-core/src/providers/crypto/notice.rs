//! The crypto notice (`POST /webhook/payment/crypto`): a signed hint for the worker to look at
//! the chain; it never marks a payment paid by itself.

use std::time::Duration;

use domain::PaymentId;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::signature::{self, SignatureError};
use crate::error::WebhookError;
use crate::webhook::{WebhookNotification, WebhookRequest, WebhookSubject};

/// Default `CRYPTO_WEBHOOK_TOLERANCE_SECS`: how far a signed timestamp may be from our clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The key crypto notices are signed with (`CRYPTO_WEBHOOK_SECRET`) and the clock tolerance
/// (`CRYPTO_WEBHOOK_TOLERANCE_SECS`). Without it the notice route is closed.
#[derive(Debug, Clone)]
pub struct NoticeKey {
    pub secret: SecretString,
    pub tolerance: Duration,
}

/// The notice as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CryptoNotice {
    /// What the sender saw, e.g. `transfer.detected`.
    event: String,
    /// The transaction, when the notice is about one.
    #[serde(default)]
    tx_id: Option<String>,
    /// Our payment, when the sender knows it.
    #[serde(default)]
    payment_id: Option<Uuid>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    address: Option<String>,
}

/// Checks the `X-Signature` of `request` against its raw body.
pub(super) fn verify(key: &NoticeKey, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
    let now = chrono::Utc::now().timestamp();
    signature::verify(
        key.secret.expose_secret().as_bytes(),
        request.headers.get(signature::HEADER),
        request.body,
        now,
        key.tolerance.as_secs(),
    )
    .map(|_| ())
    .map_err(|error| match error {
        SignatureError::Expired { .. } => WebhookError::ExpiredSignature(error.to_string()),
        other => WebhookError::BadSignature(other.to_string()),
    })
}

/// Parses a verified notice. The same event about the same transaction is one notice (one
/// dedupe key), whenever it is re-sent.
pub(super) fn parse(body: &[u8]) -> Result<WebhookNotification, WebhookError> {
    if body.is_empty() {
        return Err(WebhookError::MalformedBody("the body is empty".into()));
    }
    let notice: CryptoNotice =
        serde_json::from_slice(body).map_err(|e| WebhookError::MalformedBody(e.to_string()))?;
    let event = notice.event.trim();
    if event.is_empty() || event.len() > 64 {
        return Err(WebhookError::MalformedBody(
            "event must be 1 to 64 characters".into(),
        ));
    }
    let dedupe_key = match notice.tx_id.as_deref().map(str::trim) {
        Some(tx) if !tx.is_empty() => format!("{event}:{tx}"),
        _ => format!("{event}:sha256:{}", hex::encode(Sha256::digest(body))),
    };
    tracing::debug!(network = ?notice.network, address = ?notice.address, "crypto notice verified");
    Ok(WebhookNotification {
        provider: crate::providers::crypto::ID,
        event: event.to_owned(),
        subject: WebhookSubject::Hint {
            payment_id: notice.payment_id.map(PaymentId::from),
        },
        claimed_status: None,
        dedupe_key,
    })
}
