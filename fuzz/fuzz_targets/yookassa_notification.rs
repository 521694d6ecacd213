//! A YooKassa notification body as the gateway receives it: parsed into our provider-neutral
//! form, or refused with an error — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payment_core::providers::yookassa::YooKassaWebhookVerifier;

fuzz_target!(|body: &[u8]| {
    if let Ok(notification) = YooKassaWebhookVerifier::parse(body) {
        // What the gateway reads next from a parsed notification.
        let _ = notification.provider_payment_id();
        assert!(!notification.dedupe_key.is_empty());
    }
});
