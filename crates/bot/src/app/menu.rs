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
        self.send(chat, text, Some(Self::main_menu_keyboard(t)))
            .await;
    }

    pub(super) async fn my_subscription(&self, chat: i64, user: i64, t: &Texts) {
        let text = match store::subscription(&self.db, user).await {
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
        self.send(chat, text, Some(Self::back(t))).await;
    }

    pub(super) async fn tariffs(&self, chat: i64, t: &Texts) {
        let tariffs = match store::active_tariffs(&self.db).await {
            Ok(tariffs) => tariffs,
            Err(error) => {
                tracing::error!(%error, "cannot read tariffs");
                Vec::new()
            }
        };
        let mut rows: Vec<Vec<InlineKeyboardButton>> = tariffs
            .iter()
            .filter(|tariff| tariff.code.len() <= 40)
            .map(|tariff| {
                let prices = [Currency::Rub, Currency::Xtr, Currency::Usdt]
                    .into_iter()
                    .filter_map(|c| tariff.price(c))
                    .map(texts::money)
                    .collect::<Vec<_>>()
                    .join(" / ");
                vec![button(
                    fill(
                        t.tariff_button,
                        &[("title", &tariff.title), ("prices", &prices)],
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
        rows.push(vec![button(t.btn_menu, "menu")]);
        self.send(chat, text.to_owned(), Some(keyboard(rows))).await;
    }
}
