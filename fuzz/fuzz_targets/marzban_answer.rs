//! A Marzban panel answer (the user object marzban-sync reads after every call).
#![no_main]

use libfuzzer_sys::fuzz_target;
use marzban_sync::marzban::{UserResponse, absolute_subscription_url};

fuzz_target!(|body: &[u8]| {
    if let Ok(user) = serde_json::from_slice::<UserResponse>(body) {
        let _ = absolute_subscription_url("http://panel.example:8000", &user.subscription_url);
    }
});
