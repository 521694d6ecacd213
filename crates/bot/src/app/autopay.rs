//! Automatic renewal with a saved card: the "card, renew automatically" offer beside a
//! provider that can save methods (the gateway lists it with the `autopay` capability; YooKassa
//! unless the shop may not save cards), and the card in "My subscription" with autopay on/off
//! and "remove card". The charges themselves are the worker's (`payment_worker::autopay`).

use chrono::Utc;
use domain::entities::{saved_methods, tariffs};
use domain::money::Currency;
use frankenstein::types::InlineKeyboardButton;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::App;
use super::ui::button;
use crate::gateway::ProviderView;
use crate::store;
use crate::texts::{self, Texts, fill};

/// The gateway's capability of a provider that saves methods.
pub(super) const CAPABILITY: &str = "autopay";

/// The "card, renew automatically" button beside a provider that can save methods.
pub(super) fn offer(
    t: &Texts,
    tariff: &tariffs::Model,
    provider: &ProviderView,
    currency: Currency,
) -> Option<InlineKeyboardButton> {
    if !provider.capabilities.iter().any(|c| c == CAPABILITY) {
        return None;
    }
    let price = tariff.price(currency)?;
    let data = format!("a:{}:{}:{}", tariff.code, provider.id, currency.code());
    (data.len() <= 64).then(|| {
        button(
            format!("{} — {}", t.provider_autopay, texts::money(price)),
            data,
        )
    })
}

impl App {
    /// The user's saved card as a line of "My subscription" and its buttons.
    pub(super) async fn autopay_lines(
        &self,
        user: i64,
        t: &Texts,
    ) -> Option<(String, Vec<InlineKeyboardButton>)> {
        let method = match self.saved_method(user).await {
            Ok(method) => method?,
            Err(error) => {
                tracing::warn!(%error, "cannot read the saved card");
                return None;
            }
        };
        let line = if method.autopay {
            fill(t.autopay_on, &[("card", &method.title)])
        } else {
            let mut line = fill(t.autopay_off, &[("card", &method.title)]);
            if method.declines > 0 {
                line.push('\n');
                line.push_str(&fill(
                    t.autopay_declined,
                    &[("reason", method.last_decline.as_deref().unwrap_or("—"))],
                ));
            }
            line
        };
        let toggle = if method.autopay {
            button(t.btn_autopay_off, "ap:off")
        } else {
            button(t.btn_autopay_on, "ap:on")
        };
        Some((line, vec![toggle, button(t.btn_card_remove, "ap:rm")]))
    }

    async fn saved_method(
        &self,
        user: i64,
    ) -> Result<Option<saved_methods::Model>, sea_orm::DbErr> {
        let Some(row) = store::user(&self.db, user).await? else {
            return Ok(None);
        };
        saved_methods::Entity::find()
            .filter(saved_methods::Column::UserId.eq(row.id))
            .one(&self.db)
            .await
    }

    /// Turns autopay on or off (`on` also forgets the declines), or removes the card; then
    /// shows "My subscription" again.
    pub(super) async fn set_autopay(
        &self,
        chat: i64,
        user: i64,
        t: &Texts,
        setting: &str,
    ) -> Option<&'static str> {
        let result = async {
            let Some(method) = self.saved_method(user).await? else {
                return Ok::<_, sea_orm::DbErr>(());
            };
            let by_id = saved_methods::Column::Id.eq(method.id);
            match setting {
                "rm" => {
                    saved_methods::Entity::delete_many()
                        .filter(by_id)
                        .exec(&self.db)
                        .await?;
                }
                _ => {
                    let on = setting == "on";
                    let mut update = saved_methods::Entity::update_many()
                        .col_expr(saved_methods::Column::Autopay, Expr::value(on))
                        .col_expr(saved_methods::Column::UpdatedAt, Expr::value(Utc::now()));
                    if on {
                        update = update
                            .col_expr(saved_methods::Column::Declines, Expr::value(0))
                            .col_expr(
                                saved_methods::Column::LastDecline,
                                Expr::value(Option::<String>::None),
                            );
                    }
                    update.filter(by_id).exec(&self.db).await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            tracing::error!(%error, "cannot change the autopay setting");
            self.send(chat, t.payment_unavailable.to_owned(), Some(Self::back(t)))
                .await;
            return None;
        }
        tracing::info!(user, setting, "autopay setting changed");
        self.my_subscription(chat, user, t).await;
        None
    }
}
