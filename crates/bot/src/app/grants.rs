//! `/grant <telegram id> <days> <reason>` for admins: days without a payment, through the
//! gateway's `POST /api/admin/grants` (admin token). The idempotency key is the command's own
//! content, so the same command sent again — or redelivered by Telegram — grants once.

use sha2::{Digest, Sha256};

use super::App;
use crate::gateway::{GatewayError, GrantDays};
use crate::texts::{self, Texts, fill};

/// The most days one grant may give; the gateway refuses more (`api_gateway::grants`).
pub const MAX_DAYS: i64 = 3650;

/// `/grant`'s arguments, checked: a positive Telegram id, 1 to [`MAX_DAYS`] days, a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GrantArgs {
    telegram_id: i64,
    days: i64,
    reason: String,
}

impl GrantArgs {
    fn parse(arg: &str) -> Option<Self> {
        let (telegram_id, rest) = arg.trim().split_once(char::is_whitespace)?;
        let (days, reason) = rest.trim_start().split_once(char::is_whitespace)?;
        let telegram_id = telegram_id.parse::<i64>().ok().filter(|id| *id > 0)?;
        let days = days
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=MAX_DAYS).contains(d))?;
        let reason = reason.trim();
        (!reason.is_empty()).then(|| Self {
            telegram_id,
            days,
            reason: reason.to_owned(),
        })
    }

    /// The idempotency key of this admin's command: the same command gives the same key.
    fn key(&self, admin: i64) -> String {
        let digest = Sha256::digest(
            format!(
                "{admin}\n{}\n{}\n{}",
                self.telegram_id, self.days, self.reason
            )
            .as_bytes(),
        );
        format!("grant:{admin}:{}", &hex::encode(digest)[..24])
    }
}

impl App {
    pub(super) async fn grant(&self, chat: i64, admin: i64, t: &Texts, arg: &str) {
        let Some(args) = GrantArgs::parse(arg) else {
            let usage = fill(t.grant_usage, &[("max", &MAX_DAYS.to_string())]);
            return self.send(chat, usage, None).await;
        };
        if !self.gateway.can_refund() {
            return self.send(chat, t.grant_disabled.to_owned(), None).await;
        }
        let body = GrantDays {
            telegram_id: args.telegram_id,
            days: args.days,
            reason: args.reason.clone(),
            admin_telegram_id: admin,
        };
        let text = match self.gateway.grant(&body, &args.key(admin)).await {
            Ok((grant, true)) => fill(t.grant_repeated, &[("id", &grant.grant_id.to_string())]),
            Ok((grant, false)) => {
                tracing::info!(
                    admin,
                    grant_id = grant.grant_id,
                    telegram_id = grant.telegram_id,
                    days = grant.days,
                    "days granted from the bot"
                );
                fill(
                    t.grant_done,
                    &[
                        ("days", &texts::days(t.lang, i64::from(grant.days))),
                        ("user", &grant.telegram_id.to_string()),
                        ("id", &grant.grant_id.to_string()),
                    ],
                )
            }
            Err(GatewayError::Rejected { status: 404, .. }) => fill(
                t.grant_unknown_user,
                &[("user", &args.telegram_id.to_string())],
            ),
            Err(error) => {
                tracing::warn!(%error, admin, "grant failed");
                fill(t.grant_failed, &[("reason", &error.to_string())])
            }
        };
        self.send(chat, text, None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let args = GrantArgs::parse(" 123  7 compensation for the outage ").unwrap();
        assert_eq!(
            args,
            GrantArgs {
                telegram_id: 123,
                days: 7,
                reason: "compensation for the outage".into()
            }
        );
        for bad in [
            "",
            "123",
            "123 7",
            "123 7  ",
            "x 7 gift",
            "123 x gift",
            "-5 7 gift",
        ] {
            assert_eq!(GrantArgs::parse(bad), None, "{bad:?}");
        }
        for days in ["0", "-1", "3651", "99999999999999999999"] {
            assert_eq!(GrantArgs::parse(&format!("1 {days} gift")), None, "{days}");
        }
        assert!(GrantArgs::parse("1 3650 gift").is_some());
    }

    #[test]
    fn the_same_command_has_the_same_key() {
        let args = GrantArgs::parse("123 7 gift").unwrap();
        let key = args.key(42);
        assert_eq!(key, GrantArgs::parse("123  7 gift").unwrap().key(42));
        assert_ne!(key, GrantArgs::parse("123 8 gift").unwrap().key(42));
        assert_ne!(key, args.key(43));
        assert!(domain::IdempotencyKey::parse(key.as_str()).is_ok(), "{key}");
    }
}
