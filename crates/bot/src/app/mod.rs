//! What the bot does with each update, one module per use case:
//!
//! - [`menu`] — the main menu, "My subscription", the tariffs;
//! - [`checkout`] — payment methods, creating the payment for a Pay press, showing how to pay;
//! - [`pre_checkout`] — answering `pre_checkout_query`;
//! - [`payments`] — storing `successful_payment` / `refunded_payment` in the inbox;
//! - [`refunds`] — the admin's `/refund` and its confirmation;
//! - [`trial`] — the free trial button;
//! - [`promo`] — promo codes: a customer's `/promo CODE`, the admins' `/promo`;
//! - [`referral`] — `/start ref_<code>` and `/ref`;
//! - [`lookup`] — the admin's `/user`;
//! - [`ui`] — keyboards, sending and the keys every use case shares.
//!
//! This module holds the state and dispatches an update to its use case.

mod autopay;
mod broadcast;
mod checkout;
mod grants;
mod lookup;
mod menu;
mod payments;
mod pre_checkout;
mod promo;
mod referral;
mod refunds;
mod star_subscription;
mod trial;
pub(crate) mod ui;

use std::collections::BTreeSet;
use std::sync::Arc;

use frankenstein::client_reqwest::Bot as Api;
use frankenstein::types::{CallbackQuery, MaybeInaccessibleMessage, Message};
use frankenstein::updates::{Update, UpdateContent};
use sea_orm::DatabaseConnection;
use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::Notify;

use service_kit::inbox::{Inbox, InboxError};

use crate::gateway::Gateway;

pub use payments::is_payment_message;
pub use ui::click_key;
use ui::{Click, lang_of, user_id};

/// Handling an update failed in a way that must keep it unconfirmed (fetched again).
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("cannot store the payment message: {0}")]
    Store(#[from] InboxError),
    #[error("cannot record the Stars subscription: {0}")]
    StarSubscription(#[from] sea_orm::DbErr),
}

/// The bot's state shared by the poller's tasks.
pub struct App {
    pub(crate) api: Api,
    db: DatabaseConnection,
    gateway: Gateway,
    admins: BTreeSet<i64>,
    provider_token: Option<SecretString>,
    /// Stores payment messages (group commit, shared with the gateway's webhooks).
    inbox: Inbox,
    /// Per-user limits on commands and button presses ([`crate::limits`]).
    limits: crate::limits::Limits,
    /// The free trial offered in the main menu (`TRIAL_DAYS` 0: none).
    trial: domain::trial::TrialPolicy,
    /// The referral program (`REFERRAL_BONUS_DAYS` 0: off).
    referrals: domain::referral::ReferralPolicy,
    /// The bot's @username for referral links, asked from `getMe` once.
    bot_username: tokio::sync::OnceCell<String>,
}

impl std::fmt::Debug for App {
    // The client's URL holds the token: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("gateway", &self.gateway)
            .field("admins", &self.admins)
            .finish_non_exhaustive()
    }
}

/// `/refund@bot abc` → `("refund", "abc")`.
fn command(text: &str) -> Option<(String, String)> {
    let rest = text.trim().strip_prefix('/')?;
    let (head, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let name = head.split('@').next().unwrap_or(head).to_ascii_lowercase();
    Some((name, arg.trim().to_owned()))
}

impl App {
    pub fn new(
        api: Api,
        db: DatabaseConnection,
        gateway: Gateway,
        admins: BTreeSet<i64>,
        provider_token: Option<SecretString>,
        outbox_nudge: Arc<Notify>,
    ) -> Self {
        Self {
            api,
            inbox: Inbox::start(db.clone(), outbox_nudge),
            db,
            gateway,
            admins,
            provider_token,
            limits: crate::limits::Limits::default(),
            trial: domain::trial::TrialPolicy::default(),
            referrals: domain::referral::ReferralPolicy::default(),
            bot_username: tokio::sync::OnceCell::new(),
        }
    }

    /// The same app offering this free trial (the settings' `TRIAL_DAYS`).
    pub fn with_trial(mut self, trial: domain::trial::TrialPolicy) -> Self {
        self.trial = trial;
        self
    }

    /// The same app with this referral program (the settings' `REFERRAL_BONUS_DAYS`).
    pub fn with_referrals(mut self, referrals: domain::referral::ReferralPolicy) -> Self {
        self.referrals = referrals;
        self
    }

    /// The same app with these per-user limits (the settings' instead of the defaults).
    pub fn with_limits(mut self, limits: crate::limits::Limits) -> Self {
        self.limits = limits;
        self
    }

    fn is_admin(&self, user: i64) -> bool {
        self.admins.contains(&user)
    }

    /// Handles one raw update. Only a payment message that could not be stored is an error:
    /// everything else is answered as well as possible and logged.
    pub async fn handle(&self, raw: &Value) -> Result<(), HandleError> {
        if is_payment_message(raw) {
            // Read from the raw JSON: a payment must be stored even if the typed model of
            // the rest of the message fails to decode.
            return self.on_payment_message(raw).await;
        }
        let update: Update = match serde_json::from_value(raw.clone()) {
            Ok(update) => update,
            Err(error) => {
                tracing::warn!(%error, update_id = ?raw.get("update_id"), "undecodable update skipped");
                return Ok(());
            }
        };
        match update.content {
            UpdateContent::Message(message) => self.on_message(&message).await,
            UpdateContent::CallbackQuery(query) => self.on_callback(&query).await,
            UpdateContent::PreCheckoutQuery(query) => self.on_pre_checkout(&query).await,
            _ => {}
        }
        Ok(())
    }

    // ---- messages ----------------------------------------------------------------------

    async fn on_message(&self, message: &Message) {
        let Some(from) = message.from.as_deref() else {
            return;
        };
        let chat = message.chat.id;
        let t = lang_of(from).texts();
        let decision = self.limits.user.check(&user_id(from));
        if !decision.is_allowed() {
            // Said once in a while, not once per message: a flood of commands must not turn
            // into a flood of answers.
            if self.limits.may_notify(user_id(from)) {
                let text = crate::limits::refusal(t.rate_limited, decision);
                self.send(chat, text, None).await;
            }
            return;
        }
        // A user who writes has not blocked the bot (any more): queued messages reach them again.
        if let Err(error) = crate::sender::unblock(&self.db, user_id(from)).await {
            tracing::warn!(%error, "cannot clear the chat's blocked mark");
        }
        let admin = self.is_admin(user_id(from));
        let text = message.text.as_deref().unwrap_or_default();
        match command(text) {
            Some((name, _)) if name == "help" => {
                self.send(chat, t.help.to_owned(), Some(Self::back(t)))
                    .await;
            }
            Some((name, _)) if admin && name == "stats" => {
                crate::admin::stats(&self.api, &self.db, chat, lang_of(from)).await;
            }
            Some((name, _)) if admin && name == "admin" => {
                crate::admin::admin(&self.api, &self.db, chat, lang_of(from)).await;
            }
            Some((name, arg)) if admin && name == "refund" => {
                self.refund_prompt(chat, t, &arg).await;
            }
            Some((name, arg)) if admin && name == "broadcast" => {
                self.broadcast_command(chat, user_id(from), message.message_id, t, &arg)
                    .await;
            }
            Some((name, arg)) if admin && name == "grant" => {
                self.grant(chat, user_id(from), t, &arg).await;
            }
            Some((name, arg)) if name == "promo" => {
                self.promo_command(chat, from, t, admin, &arg).await;
            }
            Some((name, arg)) if admin && name == "user" => {
                self.user_lookup(chat, t, &arg).await;
            }
            Some((name, _)) if name == "ref" => {
                self.referral_info(chat, from, t).await;
            }
            Some((name, arg)) if name == "start" && !arg.is_empty() => {
                self.start_with(chat, from, t, &arg).await;
            }
            // /start, /menu, anything else — and admin commands from non-admins, which get
            // the ordinary menu so the commands stay invisible.
            _ => self.main_menu(chat, from).await,
        }
    }

    // ---- callbacks ---------------------------------------------------------------------

    async fn on_callback(&self, query: &CallbackQuery) {
        let from = &query.from;
        let user = user_id(from);
        let t = lang_of(from).texts();
        let click = match &query.message {
            Some(MaybeInaccessibleMessage::Message(m)) => Click {
                chat: m.chat.id,
                message_id: m.message_id,
            },
            Some(MaybeInaccessibleMessage::InaccessibleMessage(m)) => Click {
                chat: m.chat.id,
                message_id: m.message_id,
            },
            None => Click {
                chat: user,
                message_id: 0,
            },
        };
        let data = query.data.as_deref().unwrap_or_default();
        let parts: Vec<&str> = data.split(':').collect();
        // A press over the user's limit, or a Pay press over the checkout limit, is answered
        // with a toast and does nothing.
        let mut decision = self.limits.user.check(&user);
        if decision.is_allowed() && matches!(parts.first(), Some(&("p" | "s" | "a"))) {
            decision = self.limits.checkout.check(&user);
        }
        if !decision.is_allowed() {
            let text = crate::limits::refusal(t.rate_limited, decision);
            self.answer_callback(&query.id, Some(&text)).await;
            return;
        }
        let answer: Option<&str> = match parts.as_slice() {
            ["menu"] => {
                self.main_menu(click.chat, from).await;
                None
            }
            ["help"] => {
                self.send(click.chat, t.help.to_owned(), Some(Self::back(t)))
                    .await;
                None
            }
            ["sub"] => {
                self.my_subscription(click.chat, user, t).await;
                None
            }
            ["rm", setting @ ("on" | "off")] => {
                self.set_reminders(click.chat, user, t, *setting == "off")
                    .await;
                None
            }
            ["buy"] => {
                self.tariffs(click.chat, t).await;
                None
            }
            ["trial"] => {
                self.start_trial(click.chat, from, t).await;
                None
            }
            ["promo"] => {
                let ask = crate::texts::promo::texts(t.lang).ask;
                self.send(click.chat, ask.to_owned(), Some(Self::back(t)))
                    .await;
                None
            }
            ["t", code] => {
                self.providers(click.chat, user, t, code, None).await;
                None
            }
            ["t", code, promo] => {
                self.providers(click.chat, user, t, code, Some(promo)).await;
                None
            }
            ["p", code, provider, currency] => {
                self.pay(click, from, t, data, code, provider, currency, false, None)
                    .await
            }
            ["p", code, provider, currency, promo] => {
                self.pay(
                    click,
                    from,
                    t,
                    data,
                    code,
                    provider,
                    currency,
                    false,
                    Some(promo),
                )
                .await
            }
            ["s", code] => self.subscribe(click, from, t, data, code).await,
            ["a", code, provider, currency] => {
                self.pay(click, from, t, data, code, provider, currency, true, None)
                    .await
            }
            ["ap", setting @ ("on" | "off" | "rm")] => {
                self.set_autopay(click.chat, user, t, setting).await
            }
            ["ss", setting @ ("on" | "off")] => {
                self.set_star_subscription(click.chat, user, t, *setting == "off")
                    .await
            }
            ["nw", setting @ ("on" | "off")] => {
                self.set_news(click.chat, user, t, *setting == "off").await;
                None
            }
            ["bc", id, decision @ ("go" | "no")] if self.is_admin(user) => {
                self.broadcast_decision(click.chat, user, t, id, *decision == "go")
                    .await
            }
            ["rf", id] if self.is_admin(user) => self.refund(click.chat, user, t, click, id).await,
            ["rfno"] if self.is_admin(user) => {
                self.send(click.chat, t.refund_cancelled.to_owned(), None)
                    .await;
                None
            }
            _ => {
                self.main_menu(click.chat, from).await;
                None
            }
        };
        self.answer_callback(&query.id, answer).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(command("/start"), Some(("start".into(), String::new())));
        assert_eq!(
            command("/refund@acp_bot  0193-x "),
            Some(("refund".into(), "0193-x".into()))
        );
        assert_eq!(command("hello"), None);
    }
}
