//! Issue 20 case 4 for the bot: its `/health/ready` includes Telegram (`getMe`).

use std::time::Instant;

use crate::helpers::{WAIT, world, world_with};

/// Polls the bot's `/health/ready` until it answers `status` with `"telegram": state`.
async fn ready_until(w: &crate::helpers::World, status: u16, state: &str) -> String {
    let addr = w.bot_ops_addr().to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let (got, body) = service_kit::testing::http_get(&addr, "/health/ready")
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        if got == status && json["checks"]["telegram"] == state {
            return body;
        }
        assert!(Instant::now() < deadline, "{got} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_bot_whose_token_telegram_refuses_is_not_ready() {
    let w = world_with(&[(
        "TELEGRAM_BOT_TOKEN",
        "123456:not-the-emulators-token".to_owned(),
    )])
    .await;
    let body = ready_until(&w, 503, "down").await;
    assert!(body.contains(r#""database":"ok""#), "{body}");
    assert!(!body.contains("not-the-emulators-token"), "{body}");
}

#[tokio::test]
async fn a_bot_that_telegram_answers_is_ready() {
    let w = world().await;
    ready_until(&w, 200, "ok").await;
    assert!(w.tg.calls("getMe") >= 1, "asked getMe");
}
