//! Per-user rate limits of the bot (issue 18).
//!
//! Commands and button presses count against the user's `BOT_USER_LIMIT`; a Pay button press
//! (each makes or shows a payment at the gateway) also against `BOT_CHECKOUT_LIMIT`. A limited
//! press is answered with a toast ("too many requests, try again in N s", in the user's
//! language) and does nothing else; a limited command gets the same words as a message, at
//! most once every [`NOTICE_EVERY`] per user, so flooding commands cannot make the bot flood
//! Telegram. The pre-checkout answer and payment messages (`successful_payment`,
//! `refunded_payment`) are never limited: they are Telegram's, not the user's, and a payment
//! must never be refused for the user's clicking.
//!
//! Each limit keeps at most `BOT_LIMIT_USERS` users (idle ones swept every 10 s; new users
//! that find the table full share one overflow budget): bounded memory whoever writes.

use std::time::Duration;

use ratelimit::{Decision, Keyed, Rate};

use crate::settings::{DEFAULT_CHECKOUT_LIMIT, DEFAULT_LIMIT_USERS, DEFAULT_USER_LIMIT};

/// Limiter names: the `limiter` label of `rate_limit_decisions_total`.
pub const USER: &str = "bot_user";
pub const CHECKOUT: &str = "bot_checkout";
pub const NOTICE: &str = "bot_limit_notice";

/// The "too many requests" message to one user at most this often.
pub const NOTICE_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    pub user: Option<Rate>,
    pub checkout: Option<Rate>,
    pub users: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            user: Some(DEFAULT_USER_LIMIT),
            checkout: Some(DEFAULT_CHECKOUT_LIMIT),
            users: DEFAULT_LIMIT_USERS,
        }
    }
}

/// The bot's per-user limits.
#[derive(Debug)]
pub struct Limits {
    pub user: Keyed<i64>,
    pub checkout: Keyed<i64>,
    notice: Keyed<i64>,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            user: Keyed::new(USER, settings.user, settings.users),
            checkout: Keyed::new(CHECKOUT, settings.checkout, settings.users),
            notice: Keyed::new(
                NOTICE,
                Some(Rate::per_minute(60 / NOTICE_EVERY.as_secs() as u32, 1)),
                settings.users,
            ),
        }
    }

    /// Whether the "too many requests" message may go to `user` now.
    pub fn may_notify(&self, user: i64) -> bool {
        self.notice.check(&user).is_allowed()
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(&LimitSettings::default())
    }
}

/// The polite refusal: `{secs}` filled in.
pub fn refusal(template: &str, decision: Decision) -> String {
    crate::texts::fill(
        template,
        &[("secs", &decision.retry_after_secs().to_string())],
    )
}
