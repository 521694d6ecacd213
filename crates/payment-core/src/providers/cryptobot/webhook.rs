//! The `invoice_paid` webhook: its signature, checked on the raw body, and its parsing.
//!
//! Crypto Pay signs each update with `crypto-pay-api-signature` = hex(HMAC-SHA256(key =
//! SHA256(app token) as raw bytes, message = the body as sent)). The check runs on the bytes
//! received, never on re-serialised JSON (a re-serialiser's key order or number format would
//! turn a genuine update into a forged one, or the other way round), and compares in constant
//! time (`Mac::verify_slice`). A verified update only names the invoice: its status is
//! re-read from `getInvoices` before anything changes.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::transformers::{InvoiceStatus, Update};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "crypto-pay-api-signature";

/// The only update type Crypto Pay sends.
pub const INVOICE_PAID: &str = "invoice_paid";

/// The key signatures are checked with: SHA256 of the app token.
#[derive(Clone)]
pub struct SignatureKey([u8; 32]);

impl std::fmt::Debug for SignatureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignatureKey(..)")
    }
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the crypto-pay-api-signature header is missing")]
    Missing,
    #[error("the crypto-pay-api-signature header is not 64 hex digits")]
    Malformed,
    #[error("the crypto-pay-api-signature does not match the body")]
    Mismatch,
}

impl SignatureKey {
    pub fn from_token(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    fn mac(&self, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; a 32-byte key cannot be refused.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(body);
        mac
    }

    /// hex(HMAC-SHA256(key, body)): what Crypto Pay sends for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        hex::encode(self.mac(body).finalize().into_bytes())
    }

    /// Checks `header` (the signature as received, if any) against the raw `body`.
    pub fn verify(&self, header: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?.trim();
        let signature = hex::decode(header).map_err(|_| SignatureError::Malformed)?;
        if signature.len() != 32 {
            return Err(SignatureError::Malformed);
        }
        self.mac(body)
            .verify_slice(&signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// A verified body, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUpdate {
    pub update_type: String,
    pub invoice_id: i64,
    /// Our payment id from the invoice's payload (unverified until the re-fetch).
    pub payment_id: Option<domain::PaymentId>,
    pub claimed_status: InvoiceStatus,
    /// The same update about the same invoice, however often delivered, has the same key.
    pub dedupe_key: String,
}

/// Reads an update's body; anything but Crypto Pay's update shape is an error with a reason.
pub fn parse(body: &[u8]) -> Result<ParsedUpdate, String> {
    let update: Update = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let invoice = &update.payload;
    Ok(ParsedUpdate {
        dedupe_key: format!("{}:{}", update.update_type, invoice.invoice_id),
        payment_id: invoice.our_payload().map(|p| p.payment_id),
        update_type: update.update_type,
        invoice_id: invoice.invoice_id,
        claimed_status: invoice.status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "7777:AAsandboxCryptoPayToken";

    #[test]
    fn signatures_are_checked_on_the_raw_body() {
        // Computed independently: Python's hmac.new(sha256(token).digest(), body, sha256).
        let body = br#"{"update_id":1}"#;
        let expected = "4383f9224ecb37606e71da76f23fb061b4a9c71fcfe06ecc0bcaa8ffe9390d3f";
        let key = SignatureKey::from_token(TOKEN);
        assert_eq!(key.sign(body), expected);
        assert_eq!(key.verify(Some(expected), body), Ok(()));
        assert_eq!(
            key.verify(Some(&expected.to_uppercase()), body),
            Ok(()),
            "hex digits in either case"
        );
        // The same JSON re-serialised with a space is another message.
        assert_eq!(
            key.verify(Some(expected), br#"{"update_id": 1}"#),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            SignatureKey::from_token("7777:other").verify(Some(expected), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(key.verify(None, body), Err(SignatureError::Missing));
        assert_eq!(key.verify(Some("zz"), body), Err(SignatureError::Malformed));
        assert_eq!(
            key.verify(Some(&expected[..62]), body),
            Err(SignatureError::Malformed)
        );
        assert!(!format!("{key:?}").contains(&hex::encode(key.0)));
    }

    #[test]
    fn updates_name_their_invoice_and_our_payment() {
        let payment = domain::PaymentId::from_uuid(uuid::Uuid::from_u128(9));
        let payload = super::super::transformers::InvoicePayload {
            payment_id: payment,
            telegram_id: Some(1),
        };
        let body = serde_json::json!({
            "update_id": 3, "update_type": "invoice_paid",
            "request_date": "2026-12-06T12:00:00.000Z",
            "payload": {"invoice_id": 1001, "fiat": "RUB", "amount": "100", "status": "paid",
                        "bot_invoice_url": "https://t.me/CryptoBot?start=IV1",
                        "payload": payload.to_text()}
        });
        let parsed = parse(body.to_string().as_bytes()).expect("parsed");
        assert_eq!(parsed.invoice_id, 1001);
        assert_eq!(parsed.payment_id, Some(payment));
        assert_eq!(parsed.claimed_status, InvoiceStatus::Paid);
        assert_eq!(parsed.dedupe_key, "invoice_paid:1001");
        assert!(parse(b"{}").is_err());
        assert!(parse(b"not json").is_err());
        let foreign = serde_json::json!({"update_id": 4, "update_type": "invoice_paid",
            "payload": {"invoice_id": 5, "asset": "TON", "amount": "1", "status": "paid",
                        "bot_invoice_url": "u", "payload": "someone else's"}});
        assert_eq!(
            parse(foreign.to_string().as_bytes())
                .expect("parsed")
                .payment_id,
            None
        );
    }
}
