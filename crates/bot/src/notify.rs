//! The notifications consumer: tells users about their payments and subscriptions.
//!
//! One message per event — one Telegram call: the activation is a single `sendPhoto` (the
//! link's QR code) whose caption is the text, so there is never half a notification to redo.
//!
//! Sent at least once, shown once in effect: the runner inserts the event's sent-marker row
//! (`processed_messages`, `(bot, event_id)`) in the transaction this handler runs in, the
//! handler sends, and only a successful send lets that transaction commit and the delivery be
//! acknowledged. A failed send (Telegram 5xx, 429, a timeout) rolls the marker back and the
//! event comes again after the retry delay; a redelivery after the commit finds the marker
//! and sends nothing; two copies delivered at once wait on the marker's key, and the second
//! finds it committed. The one window left is a crash (or a lost commit) after Telegram
//! accepted the message and before the commit: the event is delivered again and the user gets
//! the message twice. Telegram has no idempotent send, so at-least-once is the honest
//! guarantee there; the window is one commit's few milliseconds.

use std::str::FromStr;

use async_trait::async_trait;
use domain::money::{Currency, Money};
use frankenstein::AsyncTelegramApi;
use frankenstein::client_reqwest::Bot as Api;
use frankenstein::methods::SendMessageParams;
use frankenstein::types::{InlineKeyboardButton, InlineKeyboardMarkup, ReplyMarkup};
use messaging::events::{
    PaymentCompleted, PaymentFailed, PaymentRefunded, PaymentUnderpaid, SubscriptionActivated,
    SubscriptionRevoked,
};
use messaging::{Envelope, Event, Handler, HandlerError};
use sea_orm::DatabaseTransaction;

use crate::texts::{self, Lang, fill};
use crate::{qr, store};

/// The consumer name: queue `<prefix>.bot`, `processed_messages.consumer`.
pub const CONSUMER: &str = messaging::topology::consumers::BOT;

/// The events the bot tells users about.
pub const BINDINGS: [&str; 6] = [
    PaymentCompleted::EVENT_TYPE,
    PaymentFailed::EVENT_TYPE,
    PaymentRefunded::EVENT_TYPE,
    PaymentUnderpaid::EVENT_TYPE,
    SubscriptionActivated::EVENT_TYPE,
    SubscriptionRevoked::EVENT_TYPE,
];

/// Telegram's limit for a photo's caption.
const CAPTION_LIMIT: usize = 1024;

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

    async fn send_text(
        &self,
        chat: i64,
        text: String,
        markup: Option<InlineKeyboardMarkup>,
    ) -> Result<(), frankenstein::Error> {
        let params = SendMessageParams::builder()
            .chat_id(chat)
            .text(text)
            .maybe_reply_markup(markup.map(ReplyMarkup::InlineKeyboardMarkup))
            .build();
        self.api.send_message(&params).await.map(|_| ())
    }
}

/// What to tell whom.
enum Note {
    Completed(Money),
    Failed(String),
    Refunded(Money),
    Underpaid {
        received: Money,
        shortfall: Money,
        pay_before: String,
    },
    Activated {
        expires: String,
        link: String,
    },
    Revoked {
        expires: String,
    },
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
        PaymentUnderpaid::EVENT_TYPE => {
            let e: PaymentUnderpaid = envelope.decode()?;
            (
                e.payment.telegram_id,
                Note::Underpaid {
                    received: money(e.received_minor, &e.payment.currency)?,
                    shortfall: money(e.shortfall_minor, &e.payment.currency)?,
                    pay_before: texts::date(e.pay_before),
                },
            )
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
        _prepared: messaging::Prepared,
    ) -> Result<(), HandlerError> {
        let Some((chat, note)) = decode(envelope)? else {
            return Ok(());
        };
        let language = store::user(tx, chat).await?.and_then(|u| u.language_code);
        let t = Lang::from_code(language.as_deref()).texts();
        let mut markup = None;
        // What the QR code shows, when the message comes with one.
        let mut qr_of = None;
        let text = match note {
            Note::Completed(amount) => {
                fill(t.payment_completed, &[("amount", &texts::money(amount))])
            }
            Note::Failed(reason) => fill(t.payment_failed, &[("reason", &reason)]),
            Note::Refunded(amount) => {
                fill(t.payment_refunded, &[("amount", &texts::money(amount))])
            }
            Note::Underpaid {
                received,
                shortfall,
                pay_before,
            } => fill(
                t.payment_underpaid,
                &[
                    ("received", &texts::money(received)),
                    ("shortfall", &texts::money(shortfall)),
                    ("expires", &pay_before),
                ],
            ),
            Note::Activated { expires, link } => {
                if link.starts_with("https://") || link.starts_with("http://") {
                    markup = Some(
                        InlineKeyboardMarkup::builder()
                            .inline_keyboard(vec![vec![
                                InlineKeyboardButton::builder()
                                    .text(t.btn_open_link)
                                    .url(link.clone())
                                    .build(),
                            ]])
                            .build(),
                    );
                    // A relative link (a panel without a URL prefix) is no use to a camera.
                    qr_of = Some(link.clone());
                }
                fill(
                    t.subscription_activated,
                    &[("expires", &expires), ("link", &link)],
                )
            }
            Note::Revoked { expires } => fill(t.subscription_revoked, &[("expires", &expires)]),
        };
        let image = qr_of
            .filter(|_| text.chars().count() <= CAPTION_LIMIT)
            .and_then(|data| {
                qr::png(&data)
                    .inspect_err(|error| tracing::warn!(%error, "no QR code; text only"))
                    .ok()
            });
        let sent = match image {
            Some(image) => {
                match qr::send_photo(
                    &self.api,
                    chat,
                    &image.bytes,
                    "qr.png",
                    Some(&text),
                    markup.as_ref(),
                )
                .await
                {
                    // Telegram refused the photo itself: the text alone still says it all.
                    Err(frankenstein::Error::Api(error)) if error.error_code == 400 => {
                        tracing::warn!(chat, description = %error.description, "sendPhoto refused; sending the text");
                        self.send_text(chat, text, markup).await
                    }
                    other => other,
                }
            }
            None => self.send_text(chat, text, markup).await,
        };
        match sent {
            Ok(()) => {
                tracing::info!(event = %envelope.event_type, event_id = %envelope.event_id, chat, "user notified");
                Ok(())
            }
            // The user blocked the bot or never started it: retrying cannot help.
            Err(frankenstein::Error::Api(error)) if matches!(error.error_code, 400 | 403) => {
                tracing::warn!(event = %envelope.event_type, chat, description = %error.description, "user cannot be notified");
                Ok(())
            }
            // Not sent (5xx, 429, timeout): the marker rolls back and the event comes again.
            Err(error) => Err(HandlerError::transient(format!(
                "send to Telegram: {error}"
            ))),
        }
    }
}
