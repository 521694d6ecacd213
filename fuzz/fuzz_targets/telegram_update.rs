//! A Telegram update as the bot receives it (long poll or webhook): JSON first, then the typed
//! `Update` the bot dispatches on — both may refuse, neither may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    // The bot reads payments from the raw JSON before the typed decode.
    let message = raw.get("message");
    let _ = message.and_then(|m| m.get("successful_payment"));
    let _ = serde_json::from_value::<frankenstein::updates::Update>(raw);
});
