//! The menu: the main menu, "My subscription" and the list of tariffs.

use domain::money::Currency;
use frankenstein::types::{InlineKeyboardButton, User};

use super::App;
use super::ui::{button, keyboard, lang_of};
use crate::store;
use crate::texts::{self, Texts, fill};

impl App {
    pub(super) async fn main_menu(&self, chat: i64, user: &User) {
        let t = lang_of(user).texts();
        let text = fill(t.welcome, &[("name", &user.first_name)]);
        let trial = self.trial_offer(user.id).await;
        self.send(chat, text, Some(Self::main_menu_keyboard(t, trial)))
            .await;
    }

    /// Status, expiry and link of the user's subscription, whether expiry reminders are on,
    /// and the button that turns them off or on.
    pub(super) async fn my_subscription(&self, chat: i64, user: i64, t: &Texts) {
        let subscription = store::subscription(&self.db, user).await;
        let mut text = match &subscription {
            Ok(Some(sub)) => {
                let active = sub.expires_at > chrono::Utc::now() && sub.status != "revoked";
                fill(
                    t.subscription,
                    &[
                        (
                            "status",
                            if active {
                                t.status_active
                            } else {
                                t.status_expired
                            },
                        ),
                        ("expires", &texts::date(sub.expires_at)),
                        ("link", sub.subscription_url.as_deref().unwrap_or("—")),
                    ],
                )
            }
            Ok(None) => t.no_subscription.to_owned(),
            Err(error) => {
                tracing::error!(%error, "cannot read the subscription");
                t.payment_unavailable.to_owned()
            }
        };
        let mut rows = Vec::new();
        if matches!(subscription, Ok(Some(_))) {
            match crate::reminders::are_off(&self.db, user).await {
                Ok(off) => {
                    let (line, toggle) = if off {
                        (t.reminders_are_off, button(t.btn_reminders_on, "rm:on"))
                    } else {
                        (t.reminders_are_on, button(t.btn_reminders_off, "rm:off"))
                    };
                    text = format!("{text}\n{line}");
                    rows.push(vec![toggle]);
                }
                Err(error) => tracing::warn!(%error, "cannot read the reminder setting"),
            }
        }
        if let Some((line, toggle)) = self.news_line(user, t).await {
            text = format!("{text}\n{line}");
            rows.push(vec![toggle]);
        }
        if let Some((line, toggle)) = self.star_subscription_line(user, t).await {
            text = format!("{text}\n{line}");
            rows.push(vec![toggle]);
        }
        if let Some((line, buttons)) = self.autopay_lines(user, t).await {
            text = format!("{text}\n{line}");
            rows.push(buttons);
        }
        rows.push(vec![button(t.btn_menu, "menu")]);
        self.send(chat, text, Some(keyboard(rows))).await;
    }

    /// Turns the user's expiry reminders off or on, then shows "My subscription" again.
    pub(super) async fn set_reminders(&self, chat: i64, user: i64, t: &Texts, off: bool) {
        if let Err(error) = crate::reminders::set_off(&self.db, user, off).await {
            tracing::error!(%error, "cannot change the reminder setting");
            return self
                .send(chat, t.payment_unavailable.to_owned(), Some(Self::back(t)))
                .await;
        }
        tracing::info!(user, reminders_off = off, "reminder setting changed");
        self.my_subscription(chat, user, t).await;
    }

    pub(super) async fn tariffs(&self, chat: i64, t: &Texts) {
        let tariffs = match store::active_tariffs(&self.db, t.lang).await {
            Ok(tariffs) => tariffs,
            Err(error) => {
                tracing::error!(%error, "cannot read tariffs");
                Vec::new()
            }
        };
        let mut rows: Vec<Vec<InlineKeyboardButton>> = tariffs
            .iter()
            .filter(|local| local.tariff.code.len() <= 40)
            .map(|local| {
                let tariff = &local.tariff;
                let prices = [Currency::Rub, Currency::Xtr, Currency::Usdt]
                    .into_iter()
                    .filter_map(|c| tariff.price(c))
                    .map(texts::money)
                    .collect::<Vec<_>>()
                    .join(" / ");
                vec![button(
                    fill(
                        t.tariff_button,
                        &[("title", &local.title), ("prices", &prices)],
                    ),
                    format!("t:{}", tariff.code),
                )]
            })
            .collect();
        let text = if rows.is_empty() {
            t.no_tariffs
        } else {
            t.choose_tariff
        };
        if !rows.is_empty() {
            let promo = crate::texts::promo::texts(t.lang).btn_promo;
            rows.push(vec![button(promo, "promo")]);
        }
        rows.push(vec![button(t.btn_menu, "menu")]);
        self.send(chat, text.to_owned(), Some(keyboard(rows))).await;
    }
}
