//! Telegram Stars subscriptions: the monthly offer beside the one-time Stars payment of a
//! 30-day tariff, its invoice link (`createInvoiceLink` with `subscription_period`), and
//! cancelling or re-enabling it from "My subscription" (`editUserStarSubscription`).
//!
//! The first payment is an ordinary Telegram payment made through the gateway (its payload is
//! our payment id); Telegram's later monthly charges carry the same payload and are stored like
//! every payment message, and the worker turns each into a renewal payment
//! (`payment_worker::renewals`).

use std::str::FromStr;

use domain::entities::tariffs;
use domain::money::{Currency, Money};
use frankenstein::AsyncTelegramApi;
use frankenstein::methods::{CreateInvoiceLinkParams, EditUserStarSubscriptionParams};
use frankenstein::payments::LabeledPrice;
use frankenstein::types::{InlineKeyboardButton, User};
use payment_core::providers::telegram;
use serde_json::Value;

use super::App;
use super::ui::{Click, button, keyboard, url_button};
use crate::gateway::ProviderView;
use crate::stars;
use crate::texts::{self, Texts, fill};

/// The "subscribe monthly with Stars" button beside the Stars payment of a 30-day tariff.
pub(super) fn offer(
    t: &Texts,
    tariff: &tariffs::Model,
    provider: &ProviderView,
    currency: Currency,
) -> Option<InlineKeyboardButton> {
    if provider.id != telegram::ID.as_str()
        || currency != Currency::Xtr
        || tariff.duration_days != stars::PERIOD_DAYS
    {
        return None;
    }
    let price = tariff.price(currency)?;
    let data = format!("s:{}", tariff.code);
    (data.len() <= 64).then(|| {
        button(
            format!(
                "{} — {}",
                t.provider_stars_subscription,
                texts::money(price)
            ),
            data,
        )
    })
}

impl App {
    /// A Subscribe press: the payment through the gateway (keyed by the click, like a Pay
    /// press), then its subscription invoice link.
    pub(super) async fn subscribe(
        &self,
        click: Click,
        from: &User,
        t: &'static Texts,
        data: &str,
        code: &str,
    ) -> Option<&'static str> {
        let (title, days) = self.tariff_title(code, t).await;
        if days != stars::PERIOD_DAYS {
            return Some(t.payment_unavailable);
        }
        let payment = match self
            .create_for_click(
                click,
                from,
                t,
                data,
                code,
                telegram::ID.as_str(),
                Currency::Xtr.code(),
                false,
                None,
            )
            .await
        {
            Ok(payment) => payment,
            Err(answer) => return answer,
        };
        let payload = payment
            .confirmation
            .as_ref()
            .and_then(|c| c.get("payload"))
            .and_then(Value::as_str);
        let (Some(payload), Ok(Currency::Xtr)) =
            (payload, Currency::from_str(&payment.amount.currency))
        else {
            tracing::error!(payment_id = %payment.payment_id, "a Stars subscription needs a Stars invoice");
            return Some(t.payment_unavailable);
        };
        let amount = Money::new(payment.amount.minor, Currency::Xtr);
        let Ok(total) = u32::try_from(amount.minor()) else {
            return Some(t.payment_unavailable);
        };
        let params = CreateInvoiceLinkParams::builder()
            .title(
                fill(t.invoice_title, &[("title", &title)])
                    .chars()
                    .take(32)
                    .collect::<String>(),
            )
            .description(fill(t.invoice_description, &[("days", &days.to_string())]))
            .payload(payload)
            .currency(Currency::Xtr.code())
            .prices(vec![
                LabeledPrice::builder().label(&title).amount(total).build(),
            ])
            .subscription_period(stars::PERIOD_SECS)
            .build();
        ratelimit::TELEGRAM.wait().await;
        let link = match self.api.create_invoice_link(&params).await {
            Ok(answer) => answer.result,
            Err(error) => {
                tracing::warn!(%error, payment_id = %payment.payment_id, "createInvoiceLink failed");
                return Some(t.payment_unavailable);
            }
        };
        let text = fill(
            t.pay_subscription,
            &[("title", &title), ("amount", &texts::money(amount))],
        );
        let markup = keyboard(vec![
            vec![url_button(t.btn_subscribe, link)],
            vec![button(t.btn_menu, "menu")],
        ]);
        self.send(click.chat, text, Some(markup)).await;
        None
    }

    /// The "My subscription" line about the user's Stars subscription and its cancel or
    /// re-enable button; `None` when they have none running.
    pub(super) async fn star_subscription_line(
        &self,
        user: i64,
        t: &Texts,
    ) -> Option<(String, InlineKeyboardButton)> {
        let subscription = match stars::of_user(&self.db, user).await {
            Ok(found) => found?,
            Err(error) => {
                tracing::warn!(%error, "cannot read the Stars subscription");
                return None;
            }
        };
        if subscription.expires_at <= chrono::Utc::now() {
            return None;
        }
        let date = texts::date(subscription.expires_at);
        Some(if subscription.canceled {
            (
                fill(t.star_subscription_canceled, &[("date", &date)]),
                button(t.btn_star_resume, "ss:on"),
            )
        } else {
            (
                fill(t.star_subscription_on, &[("date", &date)]),
                button(t.btn_star_cancel, "ss:off"),
            )
        })
    }

    /// Cancels (or re-enables) the user's Stars subscription at Telegram, records it, then
    /// shows "My subscription" again.
    pub(super) async fn set_star_subscription(
        &self,
        chat: i64,
        user: i64,
        t: &'static Texts,
        canceled: bool,
    ) -> Option<&'static str> {
        let subscription = match stars::of_user(&self.db, user).await {
            Ok(Some(subscription)) => subscription,
            Ok(None) => {
                self.my_subscription(chat, user, t).await;
                return None;
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the Stars subscription");
                return Some(t.payment_unavailable);
            }
        };
        let params = EditUserStarSubscriptionParams::builder()
            .user_id(u64::try_from(user).unwrap_or_default())
            .telegram_payment_charge_id(subscription.charge_id.clone())
            .is_canceled(canceled)
            .build();
        if let Err(error) = self.api.edit_user_star_subscription(&params).await {
            tracing::warn!(%error, user, canceled, "editUserStarSubscription failed");
            return Some(t.payment_unavailable);
        }
        if let Err(error) =
            stars::set_canceled(&self.db, &subscription.invoice_payload, canceled).await
        {
            tracing::error!(%error, user, canceled, "Stars subscription changed at Telegram, not recorded");
        }
        tracing::info!(user, canceled, charge = %subscription.charge_id, "Stars subscription changed");
        self.my_subscription(chat, user, t).await;
        None
    }
}
