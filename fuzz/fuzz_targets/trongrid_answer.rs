//! A TronGrid answer (TRC20 transfers page) and what the chain watcher derives from each row:
//! the amount, the timestamp and the addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payment_core::providers::crypto::TronAddress;
use payment_core::providers::crypto::transformers::Trc20Page;

fuzz_target!(|body: &[u8]| {
    let Ok(page) = serde_json::from_slice::<Trc20Page>(body) else {
        return;
    };
    for t in &page.data {
        let _ = t.amount_minor();
        let _ = chrono::DateTime::from_timestamp_millis(t.block_timestamp);
        let _ = TronAddress::parse(&t.from);
        let _ = TronAddress::parse(&t.to);
        let _ = TronAddress::parse(&t.token_info.address);
    }
});
