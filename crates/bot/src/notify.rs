//! The notifications consumer: tells users about their payments and subscriptions.
//!
//! Each event becomes one row of the sending queue ([`crate::sender`]), written in the
//! consumer's transaction together with its processed-marker row (`processed_messages`,
//! `(bot, event_id)`) under the dedupe key `event:<event id>`: an event is queued exactly once
//! however often it is delivered, and nothing here calls Telegram or waits for it. The sender
//! then sends the row at Telegram's pace (30 a second in all, one a second per chat, 429s
//! honoured, blocked users skipped) with no transaction open.
//!
//! Delivery is **at least once**: Telegram has no idempotent send, and a send cannot commit
//! together with its `sent` mark, so a sender that dies between Telegram's answer and the
//! mark sends that message again after the claim's lease.
//!
//! The activation is one message: a photo of the link's QR code whose caption is the text
//! (plain text when the link is relative or Telegram refuses the photo).

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use domain::money::{Currency, Money};
use frankenstein::types::{InlineKeyboardButton, InlineKeyboardMarkup};
use messaging::events::{
    GrantActivated, GrantRefused, PaymentCompleted, PaymentFailed, PaymentRefunded,
    PaymentUnderpaid, SubscriptionActivated, SubscriptionRevoked,
};
use messaging::{Envelope, Event, Handler, HandlerError, Prepared};
use sea_orm::{DatabaseTransaction, EntityTrait};
use tokio::sync::Notify;

use crate::sender::{self, Kind, Outgoing, Queued};
use crate::texts::{self, Lang, fill};

/// The consumer name: queue `<prefix>.bot`, `processed_messages.consumer`.
pub const CONSUMER: &str = messaging::topology::consumers::BOT;

/// The events the bot tells users about.
pub const BINDINGS: [&str; 8] = [
    PaymentCompleted::EVENT_TYPE,
    PaymentFailed::EVENT_TYPE,
    PaymentRefunded::EVENT_TYPE,
    PaymentUnderpaid::EVENT_TYPE,
    SubscriptionActivated::EVENT_TYPE,
    SubscriptionRevoked::EVENT_TYPE,
    GrantActivated::EVENT_TYPE,
    GrantRefused::EVENT_TYPE,
];

/// Queues one message per event.
#[derive(Debug)]
pub struct Notifier {
    /// Wakes this process's sender once a row is queued.
    nudge: Arc<Notify>,
}

impl Notifier {
    pub fn new(nudge: Arc<Notify>) -> Self {
        Self { nudge }
    }
}

/// What to tell whom.
#[derive(Clone)]
enum Note {
    Completed(Money),
    Failed(String),
    /// An automatic renewal charge was declined.
    RenewalDeclined(String),
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
    /// A free trial is on the panel (`grant.activated` of kind `trial`).
    TrialActive {
        days: i64,
        expires: String,
        link: String,
    },
    /// marzban-sync refused the free trial (`grant.refused` of kind `trial`): the panel
    /// already has the user. Sent with the main menu.
    TrialRefused,
    /// A referrer's bonus is on the panel (`grant.activated` of kind `referral`); the friend
    /// whose payment earned it is told too.
    ReferralBonus {
        grant_id: i64,
        days: i64,
        expires: String,
        link: String,
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
        GrantActivated::EVENT_TYPE => {
            let e: GrantActivated = envelope.decode()?;
            if e.kind == domain::referral::KIND {
                return Ok(Some((
                    e.telegram_id,
                    Note::ReferralBonus {
                        grant_id: e.grant_id,
                        days: i64::from(e.days),
                        expires: texts::date(e.expires_at),
                        link: e.subscription_url,
                    },
                )));
            }
            // An admin's grant is not announced to the customer (yet).
            if e.kind != domain::trial::KIND {
                return Ok(None);
            }
            (
                e.telegram_id,
                Note::TrialActive {
                    days: i64::from(e.days),
                    expires: texts::date(e.expires_at),
                    link: e.subscription_url,
                },
            )
        }
        GrantRefused::EVENT_TYPE => {
            let e: GrantRefused = envelope.decode()?;
            if e.kind != domain::trial::KIND {
                return Ok(None);
            }
            (e.telegram_id, Note::TrialRefused)
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

    /// Queues the message in the runner's transaction (see the module docs).
    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        _prepared: Prepared,
    ) -> Result<(), HandlerError> {
        let Some((chat, mut note)) = decode(envelope)? else {
            return Ok(());
        };
        if let Note::Failed(reason) = &note
            && is_renewal_charge(tx, envelope).await?
        {
            note = Note::RenewalDeclined(reason.clone());
        }
        let friend = match &note {
            Note::ReferralBonus { grant_id, days, .. } => {
                referred_friend(tx, envelope, *grant_id, *days).await?
            }
            _ => None,
        };
        // In the payer's language, which the queueing statement reads.
        let queued = sender::enqueue_in_language(
            tx,
            chat,
            Kind::Notification,
            format!("event:{}", envelope.event_id),
            |lang| message(lang, note.clone()),
        )
        .await?;
        if let Some(friend) = friend {
            sender::enqueue(tx, &[friend]).await?;
        }
        if queued {
            tracing::info!(event = %envelope.event_type, event_id = %envelope.event_id, chat, "notification queued");
        }
        Ok(())
    }

    /// The row is visible now: the sender picks it up at once instead of at its next poll.
    fn committed(&self, _envelope: &Envelope) {
        self.nudge.notify_one();
    }
}

/// The message to the referred user whose first payment earned the referral bonus
/// `grant_id` (`days`); `None` when no referral names the grant.
async fn referred_friend(
    tx: &DatabaseTransaction,
    envelope: &Envelope,
    grant_id: i64,
    days: i64,
) -> Result<Option<Queued>, HandlerError> {
    let Some(referral) = domain::referral::by_reward_grant(tx, grant_id).await? else {
        return Ok(None);
    };
    let Some(friend) = domain::entities::users::Entity::find_by_id(referral.referred_user_id)
        .one(tx)
        .await?
    else {
        return Ok(None);
    };
    let lang = Lang::from_code(friend.language_code.as_deref());
    let text = fill(
        texts::referral::texts(lang).friend_rewarded,
        &[("days", &texts::days(lang, days))],
    );
    Ok(Some(Queued {
        chat: friend.telegram_id,
        kind: Kind::Notification,
        dedupe_key: format!("event:{}:referred", envelope.event_id),
        message: Outgoing::text(text, None),
    }))
}

/// Whether the failed payment of `envelope` was an automatic renewal charge (the worker's
/// `autopay` mark on the payment).
async fn is_renewal_charge(
    tx: &DatabaseTransaction,
    envelope: &Envelope,
) -> Result<bool, HandlerError> {
    let payment = domain::entities::payments::Entity::find_by_id(domain::PaymentId::from_uuid(
        envelope.correlation_id,
    ))
    .one(tx)
    .await?;
    Ok(payment.is_some_and(|p| p.metadata.get("autopay").is_some()))
}

/// The Open button and the QR code of a subscription link; none for a relative link (a panel
/// without a URL prefix), which is no use to a browser or a camera.
fn link_button(t: &texts::Texts, link: &str) -> (Option<InlineKeyboardMarkup>, Option<String>) {
    if !(link.starts_with("https://") || link.starts_with("http://")) {
        return (None, None);
    }
    let markup = InlineKeyboardMarkup::builder()
        .inline_keyboard(vec![vec![
            InlineKeyboardButton::builder()
                .text(t.btn_open_link)
                .url(link.to_owned())
                .build(),
        ]])
        .build();
    (Some(markup), Some(link.to_owned()))
}

/// The message that tells about `note`.
fn message(lang: Lang, note: Note) -> Outgoing {
    let t = lang.texts();
    let mut markup = None;
    // What the QR code shows, when the message comes with one.
    let mut qr = None;
    let text = match note {
        Note::Completed(amount) => fill(t.payment_completed, &[("amount", &texts::money(amount))]),
        Note::Failed(reason) => fill(t.payment_failed, &[("reason", &reason)]),
        Note::RenewalDeclined(reason) => fill(t.autopay_failed, &[("reason", &reason)]),
        Note::Refunded(amount) => fill(t.payment_refunded, &[("amount", &texts::money(amount))]),
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
            (markup, qr) = link_button(t, &link);
            fill(
                t.subscription_activated,
                &[("expires", &expires), ("link", &link)],
            )
        }
        Note::TrialActive {
            days,
            expires,
            link,
        } => {
            (markup, qr) = link_button(t, &link);
            fill(
                t.trial_active,
                &[
                    ("days", &texts::days(lang, days)),
                    ("expires", &expires),
                    ("link", &link),
                ],
            )
        }
        Note::ReferralBonus {
            days,
            expires,
            link,
            ..
        } => {
            (markup, qr) = link_button(t, &link);
            fill(
                texts::referral::texts(lang).bonus_active,
                &[
                    ("days", &texts::days(lang, days)),
                    ("expires", &expires),
                    ("link", &link),
                ],
            )
        }
        Note::Revoked { expires } => fill(t.subscription_revoked, &[("expires", &expires)]),
        Note::TrialRefused => {
            // The main menu, without the trial it may no longer offer.
            markup = Some(crate::app::App::main_menu_keyboard(t, None));
            t.trial_existing_account.to_owned()
        }
    };
    Outgoing {
        qr,
        ..Outgoing::text(text, markup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_trial_is_explained_with_the_menu_in_both_languages() {
        for (lang, expected) in [
            (Lang::Ru, "только для новых клиентов"),
            (Lang::En, "new customers only"),
        ] {
            let message = message(lang, Note::TrialRefused);
            assert!(message.text.contains(expected), "{}", message.text);
            let markup = serde_json::to_string(&message.reply_markup).unwrap();
            assert!(markup.contains("\"buy\""), "{markup}");
            assert!(!markup.contains("\"trial\""), "{markup}");
        }
    }
}
