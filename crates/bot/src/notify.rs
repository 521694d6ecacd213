//! The notifications consumer: tells users about their payments and subscriptions.
//!
//! One message per event, even on redelivery: the runner records the event in
//! `processed_messages` in the transaction this handler runs in, and the handler sends the
//! message before that transaction commits. The one gap is a crash (or a lost commit) after
//! Telegram accepted the message and before the commit: the event is then delivered again and
//! the user gets the message twice. Telegram has no idempotent send, so at-least-once is the
//! honest guarantee; the window is the few milliseconds of one commit.

use std::str::FromStr;

use async_trait::async_trait;
use domain::money::{Currency, Money};
use frankenstein::AsyncTelegramApi;
use frankenstein::client_reqwest::Bot as Api;
use frankenstein::methods::SendMessageParams;
use frankenstein::types::{InlineKeyboardButton, InlineKeyboardMarkup, ReplyMarkup};
use messaging::events::{
    PaymentCompleted, PaymentFailed, PaymentRefunded, SubscriptionActivated, SubscriptionRevoked,
};
use messaging::{Envelope, Event, Handler, HandlerError};
use sea_orm::DatabaseTransaction;

use crate::store;
use crate::texts::{self, Lang, fill};

/// The consumer name: queue `<prefix>.bot`, `processed_messages.consumer`.
pub const CONSUMER: &str = messaging::topology::consumers::BOT;

/// The events the bot tells users about.
pub const BINDINGS: [&str; 5] = [
    PaymentCompleted::EVENT_TYPE,
    PaymentFailed::EVENT_TYPE,
    PaymentRefunded::EVENT_TYPE,
    SubscriptionActivated::EVENT_TYPE,
    SubscriptionRevoked::EVENT_TYPE,
];

/// Sends one Telegram message per event.
pub struct Notifier {
    api: Api,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(api: Api) -> Self {
        Self { api }
    }
}

/// What to tell whom.
enum Note {
    Completed(Money),
    Failed(String),
    Refunded(Money),
    Activated { expires: String, link: String },
    Revoked { expires: String },
}

fn money(minor: i64, currency: &str) -> Result<Money, HandlerError> {
    Currency::from_str(currency)
        .map(|c| Money::new(minor, c))
        .map_err(|e| HandlerError::permanent(format!("currency {currency:?}: {e}")))
}

fn decode(envelope: &Envelope) -> Result<Option<(i64, Note)>, HandlerError> {
    Ok(Some(match envelope.event_type.as_str() {
        PaymentCompleted::EVENT_TYPE => {
            let e: PaymentCompleted = envelope.decode()?;
            let amount = money(e.payment.amount_minor, &e.payment.currency)?;
            (e.payment.telegram_id, Note::Completed(amount))
        }
        PaymentFailed::EVENT_TYPE => {
            let e: PaymentFailed = envelope.decode()?;
            (e.payment.telegram_id, Note::Failed(e.failure_reason))
        }
        PaymentRefunded::EVENT_TYPE => {
            let e: PaymentRefunded = envelope.decode()?;
            let amount = money(e.refunded_minor, &e.payment.currency)?;
            (e.payment.telegram_id, Note::Refunded(amount))
        }
        SubscriptionActivated::EVENT_TYPE => {
            let e: SubscriptionActivated = envelope.decode()?;
            let s = e.subscription;
            (
                s.telegram_id,
                Note::Activated {
                    expires: texts::date(s.expires_at),
                    link: s.subscription_url,
                },
            )
        }
        SubscriptionRevoked::EVENT_TYPE => {
            let e: SubscriptionRevoked = envelope.decode()?;
            let s = e.subscription;
            (
                s.telegram_id,
                Note::Revoked {
                    expires: texts::date(s.expires_at),
                },
            )
        }
        _ => return Ok(None),
    }))
}

#[async_trait]
impl Handler for Notifier {
    fn consumer(&self) -> &str {
        CONSUMER
    }

    fn bindings(&self) -> Vec<String> {
        BINDINGS.iter().map(|b| (*b).to_owned()).collect()
    }

    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let Some((chat, note)) = decode(envelope)? else {
            return Ok(());
        };
        let language = store::user(tx, chat).await?.and_then(|u| u.language_code);
        let t = Lang::from_code(language.as_deref()).texts();
        let mut markup = None;
        let text = match note {
            Note::Completed(amount) => {
                fill(t.payment_completed, &[("amount", &texts::money(amount))])
            }
            Note::Failed(reason) => fill(t.payment_failed, &[("reason", &reason)]),
            Note::Refunded(amount) => {
                fill(t.payment_refunded, &[("amount", &texts::money(amount))])
            }
            Note::Activated { expires, link } => {
                if link.starts_with("https://") || link.starts_with("http://") {
                    markup = Some(ReplyMarkup::InlineKeyboardMarkup(
                        InlineKeyboardMarkup::builder()
                            .inline_keyboard(vec![vec![
                                InlineKeyboardButton::builder()
                                    .text(t.btn_open_link)
                                    .url(link.clone())
                                    .build(),
                            ]])
                            .build(),
                    ));
                }
                fill(
                    t.subscription_activated,
                    &[("expires", &expires), ("link", &link)],
                )
            }
            Note::Revoked { expires } => fill(t.subscription_revoked, &[("expires", &expires)]),
        };
        let params = SendMessageParams::builder()
            .chat_id(chat)
            .text(text)
            .maybe_reply_markup(markup)
            .build();
        match self.api.send_message(&params).await {
            Ok(_) => {
                tracing::info!(event = %envelope.event_type, event_id = %envelope.event_id, chat, "user notified");
                Ok(())
            }
            // The user blocked the bot or never started it: retrying cannot help.
            Err(frankenstein::Error::Api(error)) if matches!(error.error_code, 400 | 403) => {
                tracing::warn!(event = %envelope.event_type, chat, description = %error.description, "user cannot be notified");
                Ok(())
            }
            Err(error) => Err(HandlerError::transient(format!("sendMessage: {error}"))),
        }
    }
}
