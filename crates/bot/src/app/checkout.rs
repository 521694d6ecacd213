//! Checkout: the payment methods of a tariff, creating the payment for a Pay press (keyed by
//! the click) and showing how to pay — a Pay button, transfer details or a Telegram invoice.

use std::str::FromStr;

use domain::money::{Currency, Money};
use frankenstein::AsyncTelegramApi;
use frankenstein::methods::SendInvoiceParams;
use frankenstein::payments::LabeledPrice;
use frankenstein::types::User;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::App;
use super::ui::{Click, button, click_key, keyboard, url_button, user_id};
use crate::gateway::{CreatePayment, GatewayError, PaymentView};
use crate::store;
use crate::texts::{self, Texts, fill};

/// Where the provider button leads for `(provider, currency)`.
fn provider_label(t: &Texts, provider: &str, currency: Currency, title: &str) -> String {
    use payment_core::providers::{crypto, telegram, yookassa};
    let label = if provider == yookassa::ID.as_str() {
        t.provider_yookassa
    } else if provider == telegram::ID.as_str() && currency == Currency::Xtr {
        t.provider_stars
    } else if provider == telegram::ID.as_str() {
        t.provider_telegram_card
    } else if provider == crypto::ID.as_str() {
        t.provider_crypto
    } else {
        title
    };
    label.to_owned()
}

impl App {
    /// The tariff card: its payment methods and prices — with `promo` (a code the customer
    /// entered), only those the code is good for, priced with it, their buttons carrying it.
    pub(super) async fn providers(
        &self,
        chat: i64,
        user: i64,
        t: &Texts,
        code: &str,
        promo: Option<&str>,
    ) {
        let promo = match promo {
            Some(promo) => match self.usable_promo(chat, user, t, promo, Some(code)).await {
                Some(row) => match domain::promo::Benefit::of(&row) {
                    Some(benefit) => Some((row, benefit)),
                    None => return,
                },
                None => return,
            },
            None => None,
        };
        let local = match store::tariff(&self.db, code, t.lang).await {
            Ok(Some(local)) => local,
            Ok(None) => return self.tariffs(chat, t).await,
            Err(error) => {
                tracing::error!(%error, "cannot read the tariff");
                return self
                    .send(chat, t.payment_unavailable.to_owned(), Some(Self::back(t)))
                    .await;
            }
        };
        let providers = match self.gateway.providers().await {
            Ok(providers) => providers,
            Err(error) => {
                tracing::warn!(%error, "cannot list payment providers");
                return self
                    .send(chat, t.payment_unavailable.to_owned(), Some(Self::back(t)))
                    .await;
            }
        };
        let tariff = &local.tariff;
        let mut rows = Vec::new();
        for provider in &providers {
            for currency in provider
                .currencies
                .iter()
                .filter_map(|c| Currency::from_str(c).ok())
            {
                let Some(price) = tariff.price(currency) else {
                    continue;
                };
                let mut shown = texts::money(price);
                let mut data = format!("p:{}:{}:{}", tariff.code, provider.id, currency.code());
                if let Some((row, benefit)) = &promo {
                    let allowed = domain::promo::offer_refusal(
                        row,
                        None,
                        Some(&provider.id),
                        chrono::Utc::now(),
                    )
                    .is_none();
                    let Some(priced) = allowed
                        .then(|| domain::promo::price(*benefit, price).ok())
                        .flatten()
                    else {
                        continue;
                    };
                    if priced.amount != price {
                        shown = fill(
                            super::promo::price_text(t),
                            &[
                                ("price", &texts::money(priced.amount)),
                                ("list", &texts::money(price)),
                            ],
                        );
                    }
                    data = format!("{data}:{}", row.code);
                }
                let label = format!(
                    "{} — {shown}",
                    provider_label(t, &provider.id, currency, &provider.title),
                );
                if data.len() <= 64 {
                    rows.push(vec![button(label, data)]);
                }
                // Renewals are charged at the list price: no automatic ones with a code.
                if promo.is_some() {
                    continue;
                }
                if let Some(subscribe) =
                    super::star_subscription::offer(t, tariff, provider, currency)
                {
                    rows.push(vec![subscribe]);
                }
                if let Some(autopay) = super::autopay::offer(t, tariff, provider, currency) {
                    rows.push(vec![autopay]);
                }
            }
        }
        let text = if rows.is_empty() {
            t.no_providers.to_owned()
        } else if let Some((row, _)) = &promo {
            let card = fill(
                t.choose_provider,
                &[
                    ("title", &local.title),
                    ("days", &tariff.duration_days.to_string()),
                    ("description", ""),
                ],
            );
            format!("{}\n{card}", super::promo::card_line(t, row))
        } else {
            fill(
                t.choose_provider,
                &[
                    ("title", &local.title),
                    ("days", &tariff.duration_days.to_string()),
                    (
                        "description",
                        &local
                            .description
                            .as_ref()
                            .map_or_else(String::new, |d| format!("\n{d}")),
                    ),
                ],
            )
        };
        rows.push(vec![button(t.btn_menu, "menu")]);
        self.send(chat, text, Some(keyboard(rows))).await;
    }

    /// Creates the payment through the gateway (keyed by the click) and shows how to pay;
    /// `autopay`: the payer agreed to automatic renewal (the provider saves the card).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn pay(
        &self,
        click: Click,
        from: &User,
        t: &'static Texts,
        data: &str,
        code: &str,
        provider: &str,
        currency: &str,
        autopay: bool,
        promo: Option<&str>,
    ) -> Option<&'static str> {
        let payment = match self
            .create_for_click(
                click, from, t, data, code, provider, currency, autopay, promo,
            )
            .await
        {
            Ok(payment) => payment,
            Err(answer) => return answer,
        };
        let (title, days) = self.tariff_title(code, t).await;
        self.present(click.chat, t, &payment, &title, days).await
    }

    /// The tariff's title in the user's language and its length in days (the code and 0 if it
    /// cannot be read).
    pub(super) async fn tariff_title(&self, code: &str, t: &Texts) -> (String, i32) {
        match store::tariff(&self.db, code, t.lang).await {
            Ok(Some(local)) => (local.title, local.tariff.duration_days),
            _ => (code.to_owned(), 0),
        }
    }

    /// Creates the payment of a Pay press through the gateway, keyed by the click (`autopay`:
    /// the payer agreed to automatic renewal; `promo`: the code the button carries); on
    /// failure the user has been told and the callback's answer is returned.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn create_for_click(
        &self,
        click: Click,
        from: &User,
        t: &'static Texts,
        data: &str,
        code: &str,
        provider: &str,
        currency: &str,
        autopay: bool,
        promo: Option<&str>,
    ) -> Result<PaymentView, Option<&'static str>> {
        let user = user_id(from);
        let body = CreatePayment {
            telegram_id: user,
            tariff_code: code.to_owned(),
            provider: provider.to_owned(),
            currency: Some(currency.to_owned()),
            username: from.username.clone(),
            first_name: Some(from.first_name.clone()),
            language_code: from.language_code.clone(),
            autopay,
            promo_code: promo.map(str::to_owned),
        };
        let key = click_key(user, click.message_id, data);
        let payment = match self.gateway.create_payment(&body, &key).await {
            Ok(payment) => payment,
            Err(GatewayError::InFlight) => return Err(Some(t.payment_busy)),
            Err(GatewayError::Rejected {
                status: 409,
                message,
            }) if message.contains("too_many_open_payments") => {
                tracing::info!(
                    user,
                    code,
                    provider,
                    "payment refused: too many open payments"
                );
                self.send(
                    click.chat,
                    t.too_many_open_payments.to_owned(),
                    Some(Self::back(t)),
                )
                .await;
                return Err(Some(t.too_many_open_payments));
            }
            Err(error) => {
                if let Some((text, toast)) = super::promo::refusal_of(t, &error) {
                    tracing::info!(%error, user, code, provider, "payment refused: the promo code");
                    self.send(click.chat, text, Some(Self::back(t))).await;
                    return Err(Some(toast));
                }
                tracing::warn!(%error, user, code, provider, "payment not created");
                self.send(
                    click.chat,
                    t.payment_unavailable.to_owned(),
                    Some(Self::back(t)),
                )
                .await;
                return Err(Some(t.payment_unavailable));
            }
        };
        tracing::info!(payment_id = %payment.payment_id, user, provider, "payment created for a click");
        Ok(payment)
    }

    /// Shows the payment's confirmation: a Pay button, transfer details, or an invoice.
    pub(super) async fn present(
        &self,
        chat: i64,
        t: &'static Texts,
        payment: &PaymentView,
        title: &str,
        days: i32,
    ) -> Option<&'static str> {
        let currency = Currency::from_str(&payment.amount.currency).ok()?;
        let amount = Money::new(payment.amount.minor, currency);
        let confirmation = payment.confirmation.clone().unwrap_or(Value::Null);
        match confirmation.get("type").and_then(Value::as_str) {
            Some("redirect") => {
                let url = confirmation
                    .get("url")
                    .and_then(Value::as_str)
                    .or(payment.confirmation_url.as_deref())?;
                let markup = keyboard(vec![
                    vec![url_button(t.btn_pay, url)],
                    vec![button(t.btn_menu, "menu")],
                ]);
                let text = fill(t.pay_redirect, &[("amount", &texts::money(amount))]);
                self.send(chat, text, Some(markup)).await;
                None
            }
            Some("transfer") => {
                let exact = confirmation
                    .get("amount")
                    .and_then(|a| serde_json::from_value::<Money>(a.clone()).ok())
                    .unwrap_or(amount);
                let expires = confirmation
                    .get("expires_at")
                    .and_then(|e| serde_json::from_value(e.clone()).ok())
                    .or(payment.expires_at)
                    .map_or_else(|| "—".to_owned(), texts::date);
                let address = confirmation.get("address").and_then(Value::as_str);
                let text = fill(
                    t.pay_transfer,
                    &[
                        (
                            "amount",
                            &format!("{} {}", exact.to_decimal_string(), exact.currency()),
                        ),
                        ("address", address.unwrap_or("—")),
                        (
                            "network",
                            confirmation
                                .get("network")
                                .and_then(Value::as_str)
                                .unwrap_or("—"),
                        ),
                        ("expires", &expires),
                    ],
                );
                self.send(chat, text, Some(Self::back(t))).await;
                if let Some(address) = address {
                    self.send_qr(chat, address, &fill(t.qr_address, &[("address", address)]))
                        .await;
                }
                None
            }
            Some("invoice") => {
                let payload = confirmation.get("payload").and_then(Value::as_str)?;
                self.send_invoice(chat, t, payload, amount, title, days)
                    .await
            }
            other => {
                tracing::error!(payment_id = %payment.payment_id, confirmation = ?other, "payment without a usable confirmation");
                self.send(chat, t.payment_unavailable.to_owned(), Some(Self::back(t)))
                    .await;
                Some(t.payment_unavailable)
            }
        }
    }

    pub(super) async fn send_invoice(
        &self,
        chat: i64,
        t: &'static Texts,
        payload: &str,
        amount: Money,
        title: &str,
        days: i32,
    ) -> Option<&'static str> {
        // Stars: no provider token, one price item, whole Stars. Fiat: the provider token.
        let provider_token = match amount.currency() {
            Currency::Xtr => None,
            _ => match &self.provider_token {
                Some(token) => Some(token.expose_secret().to_owned()),
                None => {
                    tracing::error!(
                        "a fiat Telegram invoice needs TELEGRAM_PAYMENT_PROVIDER_TOKEN"
                    );
                    return Some(t.payment_unavailable);
                }
            },
        };
        let Ok(total) = u32::try_from(amount.minor()) else {
            return Some(t.payment_unavailable);
        };
        let invoice_title: String = fill(t.invoice_title, &[("title", title)])
            .chars()
            .take(32)
            .collect();
        let params = SendInvoiceParams::builder()
            .chat_id(chat)
            .title(invoice_title)
            .description(fill(t.invoice_description, &[("days", &days.to_string())]))
            .payload(payload)
            .maybe_provider_token(provider_token)
            .currency(amount.currency().code())
            .prices(vec![
                LabeledPrice::builder().label(title).amount(total).build(),
            ])
            .build();
        ratelimit::TELEGRAM.wait().await;
        match self.api.send_invoice(&params).await {
            Ok(_) => Some(t.invoice_sent),
            Err(error) => {
                tracing::warn!(chat, %error, "sendInvoice failed");
                Some(t.payment_unavailable)
            }
        }
    }
}
