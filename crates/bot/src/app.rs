//! What the bot does with each update: the menu, checkout, the pre-checkout check, storing
//! Telegram payments, and the admin commands.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use domain::money::{Currency, Money};
use frankenstein::AsyncTelegramApi;
use frankenstein::client_reqwest::Bot as Api;
use frankenstein::methods::{
    AnswerCallbackQueryParams, AnswerPreCheckoutQueryParams, SendInvoiceParams, SendMessageParams,
};
use frankenstein::payments::{LabeledPrice, PreCheckoutQuery};
use frankenstein::types::{
    CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, MaybeInaccessibleMessage, Message,
    ReplyMarkup, User,
};
use frankenstein::updates::{Update, UpdateContent};
use payment_core::ProviderId;
use payment_core::providers::telegram::notification_from_body;
use sea_orm::DatabaseConnection;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use uuid::Uuid;

use service_kit::inbox::{Inbox, InboxError, Notice, Stored};

use crate::gateway::{CreatePayment, Gateway, GatewayError, PaymentView};
use crate::store::{self, PreCheckout};
use crate::texts::{self, Lang, Texts, fill};

/// Handling an update failed in a way that must keep it unconfirmed (fetched again).
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("cannot store the payment message: {0}")]
    Store(#[from] InboxError),
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

/// Where a callback's message is.
#[derive(Debug, Clone, Copy)]
struct Click {
    chat: i64,
    message_id: i32,
}

/// A Telegram user id as ours (`u64` on the wire, positive `i64` in the database).
fn user_id(user: &User) -> i64 {
    i64::try_from(user.id).unwrap_or(i64::MAX)
}

fn lang_of(user: &User) -> Lang {
    Lang::from_code(user.language_code.as_deref())
}

fn button(text: impl Into<String>, data: impl Into<String>) -> InlineKeyboardButton {
    InlineKeyboardButton::builder()
        .text(text)
        .callback_data(data)
        .build()
}

fn url_button(text: impl Into<String>, url: impl Into<String>) -> InlineKeyboardButton {
    InlineKeyboardButton::builder().text(text).url(url).build()
}

fn keyboard(rows: Vec<Vec<InlineKeyboardButton>>) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::builder()
        .inline_keyboard(rows)
        .build()
}

/// The idempotency key of a click: the same button under the same message always gives the
/// same key, so a double tap creates one payment.
pub fn click_key(user: i64, message_id: i32, data: &str) -> String {
    let digest = hex::encode(Sha256::digest(data.as_bytes()));
    format!("tg:{user}:{message_id}:{}", &digest[..16])
}

/// `/refund@bot abc` → `("refund", "abc")`.
fn command(text: &str) -> Option<(String, String)> {
    let rest = text.trim().strip_prefix('/')?;
    let (head, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let name = head.split('@').next().unwrap_or(head).to_ascii_lowercase();
    Some((name, arg.trim().to_owned()))
}

/// Where the provider button leads for `(provider, currency)`.
fn provider_label(t: &Texts, provider: &str, currency: Currency, title: &str) -> String {
    match (ProviderId::from_str(provider), currency) {
        (Ok(ProviderId::YooKassa), _) => t.provider_yookassa.to_owned(),
        (Ok(ProviderId::Telegram), Currency::Xtr) => t.provider_stars.to_owned(),
        (Ok(ProviderId::Telegram), _) => t.provider_telegram_card.to_owned(),
        (Ok(ProviderId::Crypto), _) => t.provider_crypto.to_owned(),
        _ => title.to_owned(),
    }
}

async fn send_message(api: &Api, chat: i64, text: String, markup: Option<InlineKeyboardMarkup>) {
    let params = SendMessageParams::builder()
        .chat_id(chat)
        .text(text)
        .maybe_reply_markup(markup.map(ReplyMarkup::InlineKeyboardMarkup))
        .build();
    // Telegram allows a bot about 30 messages a second: wait for a slot (TELEGRAM_API_LIMIT).
    ratelimit::TELEGRAM.wait().await;
    if let Err(error) = api.send_message(&params).await {
        tracing::warn!(chat, %error, "sendMessage failed");
    }
}

/// A `successful_payment` or `refunded_payment` message: the only updates that must be stored
/// before Telegram is told they were handled.
pub fn is_payment_message(raw: &Value) -> bool {
    raw.get("message").is_some_and(|m| {
        m.get("successful_payment").is_some() || m.get("refunded_payment").is_some()
    })
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
        }
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

    // ---- sending -----------------------------------------------------------------------

    async fn send(&self, chat: i64, text: String, markup: Option<InlineKeyboardMarkup>) {
        send_message(&self.api, chat, text, markup).await;
    }

    /// A QR code of `data` with `caption`, after the message that explains it; the text is
    /// enough on its own, so a failure is only logged.
    async fn send_qr(&self, chat: i64, data: &str, caption: &str) {
        let sent = match crate::qr::png(data) {
            Ok(image) => {
                crate::qr::send_photo(&self.api, chat, &image.bytes, "qr.png", Some(caption), None)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = sent {
            tracing::warn!(chat, %error, "QR code not sent");
        }
    }

    async fn answer_callback(&self, id: &str, text: Option<&str>) {
        let params = AnswerCallbackQueryParams::builder()
            .callback_query_id(id)
            .maybe_text(text.map(str::to_owned))
            .build();
        if let Err(error) = self.api.answer_callback_query(&params).await {
            tracing::debug!(%error, "answerCallbackQuery failed");
        }
    }

    fn main_menu_keyboard(t: &Texts) -> InlineKeyboardMarkup {
        keyboard(vec![
            vec![button(t.btn_buy, "buy")],
            vec![button(t.btn_subscription, "sub")],
            vec![button(t.btn_help, "help")],
        ])
    }

    fn back(t: &Texts) -> InlineKeyboardMarkup {
        keyboard(vec![vec![button(t.btn_menu, "menu")]])
    }

    async fn main_menu(&self, chat: i64, user: &User) {
        let t = lang_of(user).texts();
        let text = fill(t.welcome, &[("name", &user.first_name)]);
        self.send(chat, text, Some(Self::main_menu_keyboard(t)))
            .await;
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
            // /start, /menu, anything else — and admin commands from non-admins, which get
            // the ordinary menu so the commands stay invisible.
            _ => self.main_menu(chat, from).await,
        }
    }

    async fn on_payment_message(&self, raw: &Value) -> Result<(), HandleError> {
        let body = raw.to_string();
        let notification = match notification_from_body(body.as_bytes()) {
            Ok(notification) => notification,
            Err(error) => {
                tracing::error!(%error, update_id = ?raw.get("update_id"), "unreadable payment message");
                return Ok(());
            }
        };
        let notice = Notice {
            provider: ProviderId::Telegram.as_str().to_owned(),
            dedupe_key: notification.dedupe_key.clone(),
            source: "bot",
            peer: None,
            body,
            // The invoice payload: our payment id, also the payment's provider payment id.
            provider_payment_id: notification.provider_payment_id().map(str::to_owned),
            claimed_payment_id: notification
                .provider_payment_id()
                .and_then(|payload| Uuid::parse_str(payload).ok()),
        };
        match self.inbox.store(notice).await? {
            Stored::New {
                notification_id, ..
            } => {
                tracing::info!(notification_id, dedupe_key = %notification.dedupe_key, event = %notification.event, "telegram payment message stored");
            }
            Stored::Duplicate => {
                tracing::info!(dedupe_key = %notification.dedupe_key, "telegram payment message seen before");
            }
        }
        if notification.event == "successful_payment"
            && let Some(chat) = raw.pointer("/message/chat/id").and_then(Value::as_i64)
        {
            let language = raw
                .pointer("/message/from/language_code")
                .and_then(Value::as_str);
            let t = Lang::from_code(language).texts();
            // On its own task: the batch (and with it the next `getUpdates`) waits only for
            // the payment to be stored, not for this courtesy message.
            let (api, text) = (self.api.clone(), t.payment_received.to_owned());
            tokio::spawn(async move { send_message(&api, chat, text, None).await });
        }
        Ok(())
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
        if decision.is_allowed() && parts.first() == Some(&"p") {
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
            ["buy"] => {
                self.tariffs(click.chat, t).await;
                None
            }
            ["t", code] => {
                self.providers(click.chat, t, code).await;
                None
            }
            ["p", code, provider, currency] => {
                self.pay(click, from, t, data, code, provider, currency)
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

    async fn my_subscription(&self, chat: i64, user: i64, t: &Texts) {
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

    async fn tariffs(&self, chat: i64, t: &Texts) {
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

    async fn providers(&self, chat: i64, t: &Texts, code: &str) {
        let tariff = match store::tariff(&self.db, code).await {
            Ok(Some(tariff)) => tariff,
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
                let label = format!(
                    "{} — {}",
                    provider_label(t, &provider.id, currency, &provider.title),
                    texts::money(price)
                );
                let data = format!("p:{}:{}:{}", tariff.code, provider.id, currency.code());
                if data.len() <= 64 {
                    rows.push(vec![button(label, data)]);
                }
            }
        }
        let text = if rows.is_empty() {
            t.no_providers.to_owned()
        } else {
            fill(
                t.choose_provider,
                &[
                    ("title", &tariff.title),
                    ("days", &tariff.duration_days.to_string()),
                ],
            )
        };
        rows.push(vec![button(t.btn_menu, "menu")]);
        self.send(chat, text, Some(keyboard(rows))).await;
    }

    /// Creates the payment through the gateway (keyed by the click) and shows how to pay.
    #[allow(clippy::too_many_arguments)]
    async fn pay(
        &self,
        click: Click,
        from: &User,
        t: &'static Texts,
        data: &str,
        code: &str,
        provider: &str,
        currency: &str,
    ) -> Option<&'static str> {
        let user = user_id(from);
        let body = CreatePayment {
            telegram_id: user,
            tariff_code: code.to_owned(),
            provider: provider.to_owned(),
            currency: Some(currency.to_owned()),
            username: from.username.clone(),
            first_name: Some(from.first_name.clone()),
            language_code: from.language_code.clone(),
        };
        let key = click_key(user, click.message_id, data);
        let payment = match self.gateway.create_payment(&body, &key).await {
            Ok(payment) => payment,
            Err(GatewayError::InFlight) => return Some(t.payment_busy),
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
                return Some(t.too_many_open_payments);
            }
            Err(error) => {
                tracing::warn!(%error, user, code, provider, "payment not created");
                self.send(
                    click.chat,
                    t.payment_unavailable.to_owned(),
                    Some(Self::back(t)),
                )
                .await;
                return Some(t.payment_unavailable);
            }
        };
        tracing::info!(payment_id = %payment.payment_id, user, provider, "payment created for a click");
        let title = match store::tariff(&self.db, code).await {
            Ok(Some(tariff)) => (tariff.title, tariff.duration_days),
            _ => (code.to_owned(), 0),
        };
        self.present(click.chat, t, &payment, &title.0, title.1)
            .await
    }

    /// Shows the payment's confirmation: a Pay button, transfer details, or an invoice.
    async fn present(
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

    async fn send_invoice(
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

    // ---- payments inside Telegram ------------------------------------------------------

    async fn on_pre_checkout(&self, query: &PreCheckoutQuery) {
        let started = Instant::now();
        let t = lang_of(&query.from).texts();
        let verdict = store::check_pre_checkout(
            &self.db,
            &query.invoice_payload,
            user_id(&query.from),
            &query.currency,
            i64::from(query.total_amount),
            chrono::Utc::now(),
        )
        .await;
        let refusal = match verdict {
            Ok(PreCheckout::Ok) => None,
            Ok(PreCheckout::Unknown) => Some(t.precheckout_unknown),
            Ok(PreCheckout::NotPending) => Some(t.precheckout_not_pending),
            Ok(PreCheckout::Mismatch) => Some(t.precheckout_mismatch),
            Ok(PreCheckout::Expired) => Some(t.precheckout_expired),
            Ok(PreCheckout::PriceChanged) => Some(t.precheckout_price_changed),
            Err(error) => {
                tracing::error!(%error, "pre-checkout check failed");
                Some(t.precheckout_unavailable)
            }
        };
        let params = AnswerPreCheckoutQueryParams::builder()
            .pre_checkout_query_id(query.id.clone())
            .ok(refusal.is_none())
            .maybe_error_message(refusal.map(str::to_owned))
            .build();
        if let Err(error) = self.api.answer_pre_checkout_query(&params).await {
            tracing::warn!(%error, "answerPreCheckoutQuery failed");
        }
        tracing::info!(
            payload = %query.invoice_payload,
            ok = refusal.is_none(),
            elapsed_ms = started.elapsed().as_millis(),
            "pre-checkout answered"
        );
    }

    // ---- admin -------------------------------------------------------------------------

    async fn refund_prompt(&self, chat: i64, t: &Texts, arg: &str) {
        let Ok(id) = Uuid::parse_str(arg) else {
            return self.send(chat, t.refund_usage.to_owned(), None).await;
        };
        if !self.gateway.can_refund() {
            return self.send(chat, t.refund_disabled.to_owned(), None).await;
        }
        match store::payment_with_payer(&self.db, id).await {
            Ok(Some((payment, payer))) => {
                let text = fill(
                    t.refund_confirm,
                    &[
                        ("id", &id.to_string()),
                        ("amount", &texts::money(payment.amount())),
                        ("provider", &payment.provider),
                        ("status", payment.status.as_str()),
                        (
                            "user",
                            &payer.map_or_else(|| "—".to_owned(), |p| p.to_string()),
                        ),
                    ],
                );
                let markup = keyboard(vec![vec![
                    button(t.btn_refund_yes, format!("rf:{id}")),
                    button(t.btn_refund_no, "rfno"),
                ]]);
                self.send(chat, text, Some(markup)).await;
            }
            Ok(None) => {
                self.send(chat, fill(t.refund_not_found, &[("id", arg)]), None)
                    .await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the payment");
                self.send(chat, t.payment_unavailable.to_owned(), None)
                    .await;
            }
        }
    }

    async fn refund(
        &self,
        chat: i64,
        admin: i64,
        t: &'static Texts,
        click: Click,
        id: &str,
    ) -> Option<&'static str> {
        let Ok(id) = Uuid::parse_str(id) else {
            return Some(t.refund_usage);
        };
        // One refund per confirmation message, however often the button is pressed.
        let key = click_key(admin, click.message_id, &format!("rf:{id}"));
        let text = match self.gateway.refund(id, admin, &key).await {
            Ok(refund) => {
                tracing::info!(payment_id = %id, refund_id = %refund.refund_id, status = %refund.status, admin, "refund requested in the bot");
                match refund.failure_reason {
                    Some(reason) if refund.status == "failed" => {
                        fill(t.refund_failed, &[("reason", &reason)])
                    }
                    _ if refund.outside_provider => {
                        let amount = refund
                            .amount
                            .map_or_else(String::new, |a| format!("{} {}", a.value, a.currency));
                        fill(
                            t.refund_outside,
                            &[("id", &id.to_string()), ("amount", &amount)],
                        )
                    }
                    _ => fill(
                        t.refund_done,
                        &[("id", &id.to_string()), ("status", &refund.status)],
                    ),
                }
            }
            Err(GatewayError::InFlight) => return Some(t.payment_busy),
            Err(error) => {
                tracing::warn!(payment_id = %id, %error, "refund failed");
                fill(t.refund_failed, &[("reason", &error.to_string())])
            }
        };
        self.send(chat, text, None).await;
        None
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

    #[test]
    fn click_keys_are_stable_and_valid() {
        let a = click_key(123_456_789, 42, "p:month_1:telegram:XTR");
        assert_eq!(a, click_key(123_456_789, 42, "p:month_1:telegram:XTR"));
        assert_ne!(a, click_key(123_456_789, 43, "p:month_1:telegram:XTR"));
        assert_ne!(a, click_key(123_456_789, 42, "p:month_3:telegram:XTR"));
        assert!(domain::IdempotencyKey::parse(a.as_str()).is_ok(), "{a}");
        let long = click_key(i64::MAX, i32::MAX, "p:month_1:telegram:XTR");
        assert!(long.len() <= 64, "{long}");
    }
}
