//! The CryptoBot webhook: the first line of the input is the `crypto-pay-api-signature`
//! header, the rest the body. Verifying must refuse or accept, never panic; a signature we make
//! must verify and must not verify another body; parsing any body must answer, never panic,
//! and an update it reads keys its dedupe on its invoice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payment_core::providers::cryptobot::{SignatureKey, webhook};

fuzz_target!(|input: &[u8]| {
    let key = SignatureKey::from_token("7777:AAfuzzToken");
    let (header, body) = match input.iter().position(|b| *b == b'\n') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    if let Ok(header) = std::str::from_utf8(header) {
        let _ = key.verify(Some(header), body);
    }
    let good = key.sign(body);
    assert_eq!(key.verify(Some(&good), body), Ok(()));
    let mut other = body.to_vec();
    other.push(b' ');
    assert!(key.verify(Some(&good), &other).is_err());
    if let Ok(update) = webhook::parse(body) {
        assert!(update.dedupe_key.ends_with(&update.invoice_id.to_string()));
    }
});
