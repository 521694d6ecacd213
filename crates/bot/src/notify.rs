//! The notifications consumer: tells users about their payments and subscriptions.
//!
//! One message per event — one Telegram call: the activation is a single `sendPhoto` (the
//! link's QR code) whose caption is the text, so there is never half a notification to redo.
//!
//! The call to Telegram is made with no database transaction open
//! ([`Handler::prepare`]; the user's language is read on the notifier's own connection), so
//! a slow Telegram holds no pooled connection and no lock. The runner first skips an event
//! whose sent-marker row (`processed_messages`, `(bot, event_id)`) is committed; then the
//! notifier sends; only after Telegram accepted the message (or refused it for good: the user
//! blocked the bot) does the runner's transaction insert and commit the marker, and the
//! delivery is acknowledged. A failed send (Telegram 5xx, 429, a timeout) writes nothing: the
//! event comes again after the retry delay. A redelivery after the commit finds the marker
//! and sends nothing.
//!
//! Delivery is **at least once**: Telegram has no idempotent send, and a send cannot commit
//! together with the marker. A user gets a message twice only when
//!
//! - the bot process dies (crash, `kill -9`, lost host) between Telegram's answer and the
//!   marker's commit: the event is delivered again, to a process that does not know it was
//!   sent, and sent again; or
//! - two bot processes handle two copies of one event at the same moment: both see no marker
//!   and both send. RabbitMQ hands an unacknowledged message to another consumer only after
//!   the first consumer's channel closed, so this takes a broker connection dropped while a
//!   send is in flight (or the outbox relay publishing an event twice — it died between the
//!   broker's confirm and its own commit — with both copies handled at once).
//!
//! Within one running process a copy never sends twice: the notifier remembers the events it is sending and
//! has sent in the last hour. A copy that arrives while another copy of the same event is
//! being sent fails transiently and, retried after the delay, finds the marker; a copy of an
//! event this process already sent (its marker's commit failed, or is not visible yet) sends
//! nothing and lets the marker commit.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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
use messaging::{Envelope, Event, Handler, HandlerError, Prepared};
use sea_orm::{DatabaseConnection, DatabaseTransaction};
use uuid::Uuid;

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
    /// For the user's language, read outside any transaction.
    db: DatabaseConnection,
    /// Events this process is sending or sent lately (see the module docs).
    recent: Recent,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(api: Api, db: DatabaseConnection) -> Self {
        Self {
            api,
            db,
            recent: Recent::default(),
        }
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
        ratelimit::TELEGRAM.wait().await;
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

    fn prepares(&self) -> bool {
        true
    }

    /// The send, with no transaction open.
    async fn prepare(&self, envelope: &Envelope) -> Result<Prepared, HandlerError> {
        let Some((chat, note)) = decode(envelope)? else {
            return Ok(Prepared::none());
        };
        let claim = match self.recent.begin(envelope.event_id) {
            Begin::Send(claim) => claim,
            Begin::Busy => {
                return Err(HandlerError::transient(format!(
                    "event {} is being sent by another delivery; retried later",
                    envelope.event_id
                )));
            }
            Begin::Sent => {
                tracing::info!(event = %envelope.event_type, event_id = %envelope.event_id, "sent before by this process; only the marker is written");
                return Ok(Prepared::none());
            }
        };
        self.notify(envelope, chat, note).await?;
        claim.sent();
        Ok(Prepared::none())
    }

    /// Only the sent-marker row, which the runner writes in this transaction.
    async fn handle(
        &self,
        _tx: &DatabaseTransaction,
        _envelope: &Envelope,
        _prepared: Prepared,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl Notifier {
    /// Tells `chat` about `note` with one Telegram call.
    async fn notify(&self, envelope: &Envelope, chat: i64, note: Note) -> Result<(), HandlerError> {
        let language = store::user(&self.db, chat)
            .await?
            .and_then(|u| u.language_code);
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
            // Not sent (5xx, 429, timeout): no marker is written and the event comes again.
            Err(error) => Err(HandlerError::transient(format!(
                "send to Telegram: {error}"
            ))),
        }
    }
}

/// How long this process remembers that it sent an event: longer than the retry delays, so
/// a retry after a failed commit writes the marker without sending again.
const REMEMBER_SENT: Duration = Duration::from_secs(3600);

/// At most this many sent events are remembered (the oldest are forgotten first), so a burst
/// of notifications cannot grow the process without bound.
const REMEMBER_AT_MOST: usize = 100_000;

/// What this process did with recent events (see the module docs).
#[derive(Default)]
struct Recent(Mutex<RecentSteps>);

/// The steps by event, and the sent events oldest first, so forgetting expired ones costs
/// only the ones forgotten (not a scan of every remembered event per message).
#[derive(Default)]
struct RecentSteps {
    steps: HashMap<Uuid, Step>,
    sent_order: VecDeque<(Instant, Uuid)>,
}

enum Step {
    Sending,
    Sent,
}

enum Begin<'a> {
    /// Another delivery of the event is being sent right now.
    Busy,
    /// This process sent it already.
    Sent,
    /// Send it; the claim records the outcome when dropped.
    Send(Claim<'a>),
}

impl RecentSteps {
    fn forget_old(&mut self) {
        while let Some((at, event_id)) = self.sent_order.front().copied() {
            if at.elapsed() < REMEMBER_SENT && self.sent_order.len() <= REMEMBER_AT_MOST {
                break;
            }
            self.sent_order.pop_front();
            if matches!(self.steps.get(&event_id), Some(Step::Sent)) {
                self.steps.remove(&event_id);
            }
        }
    }
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecentSteps> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(&self, event_id: Uuid) -> Begin<'_> {
        let mut recent = self.lock();
        recent.forget_old();
        match recent.steps.get(&event_id) {
            Some(Step::Sending) => Begin::Busy,
            Some(Step::Sent) => Begin::Sent,
            None => {
                recent.steps.insert(event_id, Step::Sending);
                Begin::Send(Claim {
                    recent: self,
                    event_id,
                    sent: false,
                })
            }
        }
    }
}

/// An event being sent; forgotten when dropped unless [`Claim::sent`] was called (a failed
/// or cancelled send may be tried again).
struct Claim<'a> {
    recent: &'a Recent,
    event_id: Uuid,
    sent: bool,
}

impl Claim<'_> {
    fn sent(mut self) {
        self.sent = true;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut recent = self.recent.lock();
        if self.sent {
            recent.steps.insert(self.event_id, Step::Sent);
            recent.sent_order.push_back((Instant::now(), self.event_id));
        } else {
            recent.steps.remove(&self.event_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_waits_while_one_is_sent_and_is_not_sent_again_afterwards() {
        let recent = Recent::default();
        let event = Uuid::now_v7();
        let Begin::Send(claim) = recent.begin(event) else {
            panic!("the first copy sends");
        };
        assert!(matches!(recent.begin(event), Begin::Busy));
        claim.sent();
        assert!(matches!(recent.begin(event), Begin::Sent));
        assert!(matches!(recent.begin(Uuid::now_v7()), Begin::Send(_)));
    }

    #[test]
    fn sent_events_are_remembered_up_to_a_bound_oldest_forgotten_first() {
        let recent = Recent::default();
        let first = Uuid::now_v7();
        let send = |event| match recent.begin(event) {
            Begin::Send(claim) => claim.sent(),
            _ => panic!("a new event is sent"),
        };
        send(first);
        for _ in 0..REMEMBER_AT_MOST {
            send(Uuid::now_v7());
        }
        // One over the bound: the oldest went first, the newest are still known.
        let newest = Uuid::now_v7();
        send(newest);
        assert!(matches!(recent.begin(newest), Begin::Sent));
        assert!(matches!(recent.begin(first), Begin::Send(_)));
        let kept = recent.lock().steps.len();
        assert!(kept <= REMEMBER_AT_MOST + 2, "{kept} remembered");
    }

    #[test]
    fn a_failed_send_is_forgotten() {
        let recent = Recent::default();
        let event = Uuid::now_v7();
        let Begin::Send(claim) = recent.begin(event) else {
            panic!("the first copy sends");
        };
        drop(claim);
        assert!(matches!(recent.begin(event), Begin::Send(_)));
    }
}
