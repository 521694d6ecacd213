//! The crypto webhook's `X-Signature` header against a body: the first line of the input is
//! the header, the rest the body. Verifying must refuse or accept, never panic, and a header
//! we produce must verify.
#![no_main]

use payment_core::providers::crypto::signature::{sign, verify};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"whsec_fuzz";
const NOW: i64 = 1_767_225_600;

fuzz_target!(|input: &[u8]| {
    let (header, body) = match input.iter().position(|b| *b == b'\n') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    if let Ok(header) = std::str::from_utf8(header) {
        let _ = verify(SECRET, Some(header), body, NOW, 300);
    }
    let good = sign(SECRET, NOW, body).expect("any key length is fine");
    assert_eq!(verify(SECRET, Some(&good), body, NOW, 300), Ok(NOW));
});
