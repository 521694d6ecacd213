//! Delivers `invoice_paid` updates to the webhook URL, signed as §5 documents, applying the
//! scripted [`NotificationMode`]s. A non-200 answer is redelivered in the background on the
//! configured schedule (the real API keeps trying for three days).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedReceiver;

use super::state::Outgoing;
use super::{Delivery, DeliveryOutcome, NotificationMode, Shared, lock};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "crypto-pay-api-signature";

/// hex(HMAC-SHA256(key = SHA256(token) as raw bytes, message = body)).
pub fn sign(token: &str, body: &[u8]) -> String {
    let key = Sha256::digest(token.as_bytes());
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    client: reqwest::Client,
    mut rx: UnboundedReceiver<Outgoing>,
) {
    while let Some(note) = rx.recv().await {
        match shared.take_mode() {
            NotificationMode::Normal => deliver(&shared, &client, note).await,
            NotificationMode::Duplicate => {
                deliver(&shared, &client, note.clone()).await;
                deliver(&shared, &client, note).await;
            }
            NotificationMode::Late { delay_ms } => {
                let (shared, client) = (shared.clone(), client.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    deliver(&shared, &client, note).await;
                });
            }
            NotificationMode::Dropped => {
                let record = record(&shared, &note, 0, DeliveryOutcome::Dropped);
                shared.record_delivery(record);
            }
        }
    }
}

fn record(shared: &Shared, note: &Outgoing, attempt: u32, outcome: DeliveryOutcome) -> Delivery {
    Delivery {
        update_id: note.update_id,
        invoice_id: note.invoice_id,
        attempt,
        outcome,
        body: String::from_utf8_lossy(&note.body).into_owned(),
        signature: sign(&shared.config.token, &note.body),
    }
}

/// First attempt inline; redeliveries in the background.
async fn deliver(shared: &Arc<Shared>, client: &reqwest::Client, note: Outgoing) {
    if attempt(shared, client, &note, 1).await {
        return;
    }
    let schedule = shared.config.redelivery.clone();
    let (shared, client) = (shared.clone(), client.clone());
    tokio::spawn(async move {
        for (n, pause) in (2u32..).zip(schedule) {
            tokio::time::sleep(pause).await;
            if attempt(&shared, &client, &note, n).await {
                return;
            }
        }
    });
}

/// Returns true when no further attempt is needed.
async fn attempt(shared: &Shared, client: &reqwest::Client, note: &Outgoing, n: u32) -> bool {
    let url = lock(&shared.webhook_url).clone();
    let Some(url) = url else {
        shared.record_delivery(record(shared, note, n, DeliveryOutcome::NoWebhook));
        return true;
    };
    let sent = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sign(&shared.config.token, &note.body))
        .body(note.body.clone())
        .send()
        .await;
    let outcome = match sent {
        Ok(response) if response.status().as_u16() == 200 => {
            DeliveryOutcome::Delivered { status: 200 }
        }
        Ok(response) => DeliveryOutcome::Rejected {
            status: response.status().as_u16(),
        },
        Err(error) => DeliveryOutcome::Error {
            message: error.to_string(),
        },
    };
    let done = matches!(outcome, DeliveryOutcome::Delivered { .. });
    shared.record_delivery(record(shared, note, n, outcome));
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_keyed_by_the_token_digest() {
        // Computed independently: Python's hmac.new(sha256(token).digest(), body, sha256).
        let body = br#"{"update_id":1}"#;
        assert_eq!(
            sign("7777:AAsandboxCryptoPayToken", body),
            "4383f9224ecb37606e71da76f23fb061b4a9c71fcfe06ecc0bcaa8ffe9390d3f"
        );
        assert_ne!(
            sign("7777:other", body),
            sign("7777:AAsandboxCryptoPayToken", body)
        );
    }
}
