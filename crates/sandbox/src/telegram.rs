//! Telegram Bot API emulator (`reference/external-apis.md` §2).
//!
//! One bot, any number of scripted users. The bot side speaks the real wire format —
//! `POST /bot<token>/<method>` with JSON, form or multipart parameters, answers
//! `{"ok":true,"result":…}` or Telegram-shaped errors — so the `frankenstein` client works
//! against it unchanged. The user side is a Rust API (and the same operations over HTTP under
//! `/sandbox/telegram/…`): a user sends text, presses inline buttons, and pays invoices. Paying
//! follows Telegram: the emulator sends `pre_checkout_query`, waits up to 10 s for
//! `answerPreCheckoutQuery`, and only after `ok: true` sends the `successful_payment` message.
//!
//! Methods: getMe, getUpdates (long polling, offsets, `allowed_updates`, 409 for a second
//! poller or while a webhook is set), setWebhook / deleteWebhook / getWebhookInfo (updates
//! are then POSTed with `X-Telegram-Bot-Api-Secret-Token`), sendMessage, sendPhoto,
//! editMessageText, answerCallbackQuery, sendInvoice, createInvoiceLink,
//! answerPreCheckoutQuery, refundStarPayment, getStarTransactions, editUserStarSubscription.
//! Tests read what each user
//! was sent ([`Emulator::messages`], uploaded photos with their bytes) and script Telegram's
//! failures ([`Emulator::fail_next`]: 5xx, 429 with `retry_after`, 400, 403) and slow answers
//! ([`Emulator::slow_next`]).
//!
//! Sending limits, as Telegram enforces them ([`SendLimits`]): about 30 messages a second in
//! all and about one a second per chat (short bursts tolerated); a send over either is
//! refused with 429 and `parameters.retry_after`, and does nothing. A user who blocked the bot
//! ([`Emulator::block_bot`]) gets nothing: sends to them answer 403 "Forbidden: bot was
//! blocked by the user".
//!
//! Star subscriptions: `createInvoiceLink` takes `subscription_period` only for `XTR` and only
//! [`SUBSCRIPTION_PERIOD`] (else 400 `SUBSCRIPTION_PERIOD_INVALID`); paying such a link starts a
//! subscription whose `successful_payment` carries `is_recurring`, `is_first_recurring` and
//! `subscription_expiration_date`. Telegram charges again every 30 days; here the test fires
//! the next charge ([`Emulator::charge_subscription`], `POST
//! /sandbox/telegram/subscriptions/{charge id}/charge`): a new `successful_payment` with a new
//! charge id, the same payload and the expiry 30 days later. `editUserStarSubscription`
//! cancels or re-enables one; a canceled subscription is not charged.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use crate::server::{Listen, serve};

/// How long Telegram waits for `answerPreCheckoutQuery`.
pub const PRE_CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// The only `subscription_period` Telegram accepts: 30 days, in seconds.
pub const SUBSCRIPTION_PERIOD: i64 = 2_592_000;

/// Emulator settings; `Config::default()` suits tests.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free one.
    pub bind: SocketAddr,
    /// The bot's token (`<id>:<secret>`); requests with any other token get 401.
    pub token: String,
    pub bot_username: String,
    /// Limit for `answerPreCheckoutQuery` (Telegram: 10 s).
    pub pre_checkout_timeout: Duration,
    pub workers: usize,
    /// Telegram's sending limits; `None`: unlimited (benchmarks of other parts).
    pub send_limits: Option<SendLimits>,
}

/// How fast a bot may send (`sendMessage`, `sendPhoto`, `sendInvoice`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimits {
    /// All chats together: Telegram allows about 30 messages a second.
    pub global: ratelimit::Rate,
    /// One chat: about one a second; Telegram tolerates short bursts (a conversation's
    /// replies), so the default allows 20 before the one-a-second pace applies.
    pub per_chat: ratelimit::Rate,
}

impl Default for SendLimits {
    fn default() -> Self {
        Self {
            global: ratelimit::Rate::per_second(30, 30),
            per_chat: ratelimit::Rate::per_second(1, 20),
        }
    }
}

/// The methods that send a message and so count against [`SendLimits`].
const SEND_METHODS: [&str; 3] = ["sendMessage", "sendPhoto", "sendInvoice"];

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: "123456:TEST-sandbox-token".to_owned(),
            bot_username: "anomaly_sandbox_bot".to_owned(),
            pre_checkout_timeout: PRE_CHECKOUT_TIMEOUT,
            workers: 2,
            send_limits: Some(SendLimits::default()),
        }
    }
}

impl Config {
    fn bot_id(&self) -> i64 {
        self.token
            .split(':')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or(1)
    }
}

/// A scripted Telegram user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestUser {
    pub id: i64,
    pub first_name: String,
    #[serde(default)]
    pub username: Option<String>,
    /// `ru`, `en`, … — the bot picks its language from it.
    #[serde(default)]
    pub language_code: Option<String>,
}

impl TestUser {
    pub fn new(id: i64, first_name: &str, language_code: &str) -> Self {
        Self {
            id,
            first_name: first_name.to_owned(),
            username: None,
            language_code: Some(language_code.to_owned()),
        }
    }

    fn to_json(&self) -> Value {
        let mut user = json!({"id": self.id, "is_bot": false, "first_name": self.first_name});
        if let Some(username) = &self.username {
            user["username"] = json!(username);
        }
        if let Some(language) = &self.language_code {
            user["language_code"] = json!(language);
        }
        user
    }

    fn chat(&self) -> Value {
        json!({"id": self.id, "type": "private", "first_name": self.first_name})
    }
}

/// A message the bot sent (or edited), as the user sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentMessage {
    pub message_id: i64,
    /// `sendMessage`, `sendPhoto` or `sendInvoice`.
    pub method: String,
    pub text: Option<String>,
    pub caption: Option<String>,
    /// Bytes of an uploaded photo, or the file id / URL that was passed.
    pub photo: Option<PhotoSent>,
    pub reply_markup: Option<Value>,
    pub invoice: Option<Invoice>,
    /// How many times `editMessageText` changed it.
    pub edits: u32,
    /// When the emulator received the send (Unix microseconds), for end-to-end latency.
    #[serde(default)]
    pub sent_at_us: i64,
}

impl SentMessage {
    /// What the user reads: the text of a message, or the caption of a photo.
    pub fn body(&self) -> Option<&str> {
        self.text.as_deref().or(self.caption.as_deref())
    }

    /// The `callback_data` of every inline button.
    pub fn callback_data(&self) -> Vec<String> {
        self.buttons()
            .filter_map(|b| b.get("callback_data").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// The `url` of every inline URL button.
    pub fn button_urls(&self) -> Vec<String> {
        self.buttons()
            .filter_map(|b| b.get("url").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    fn buttons(&self) -> impl Iterator<Item = &Value> {
        self.reply_markup
            .as_ref()
            .and_then(|m| m.get("inline_keyboard"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_array)
            .flatten()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PhotoSent {
    Upload {
        file_name: String,
        /// The upload's size.
        bytes: usize,
        /// The uploaded file itself (not in the control API's JSON).
        #[serde(skip)]
        data: Vec<u8>,
    },
    Reference(String),
}

/// An invoice sent with `sendInvoice` or made with `createInvoiceLink`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub title: String,
    pub description: String,
    pub payload: String,
    pub currency: String,
    /// Sum of the price items, in the currency's smallest units.
    pub total_amount: i64,
    pub provider_token: String,
    /// `subscription_period` of a link made by `createInvoiceLink`: paying it subscribes.
    #[serde(default)]
    pub subscription_period: Option<i64>,
}

impl Invoice {
    /// A Stars invoice with no title, as the emulator's own charges record it.
    fn stars(payload: &str, total_amount: i64, subscription_period: Option<i64>) -> Self {
        Self {
            title: String::new(),
            description: String::new(),
            payload: payload.to_owned(),
            currency: "XTR".to_owned(),
            total_amount,
            provider_token: String::new(),
            subscription_period,
        }
    }
}

/// A Star subscription a user started by paying a subscription invoice link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StarSubscription {
    pub user_id: i64,
    /// The first payment's charge id, which names the subscription.
    pub telegram_payment_charge_id: String,
    pub invoice_payload: String,
    pub total_amount: i64,
    /// Unix time until which the last charge paid.
    pub expiration_date: i64,
    pub canceled: bool,
    /// Charge ids of the recurring charges, oldest first.
    pub renewals: Vec<String>,
}

/// Why [`Emulator::charge_subscription`] charged nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscriptionError {
    #[error("no subscription with charge id {0}")]
    Unknown(String),
    #[error("subscription {0} is canceled")]
    Canceled(String),
}

/// A successful payment the emulator made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    pub user_id: i64,
    pub telegram_payment_charge_id: String,
    pub currency: String,
    pub total_amount: i64,
    pub invoice_payload: String,
    pub refunded: bool,
}

/// What became of a user's attempt to pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PayOutcome {
    /// The bot said `ok: true`; `successful_payment` was sent.
    Paid {
        telegram_payment_charge_id: String,
        answered_in_ms: u64,
    },
    /// The bot said `ok: false` with this message.
    Refused {
        error_message: String,
        answered_in_ms: u64,
    },
    /// The bot did not answer in time; Telegram shows the user an error.
    TimedOut,
}

/// Errors of the user-side API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserActionError {
    #[error("message {0} was not sent to this user")]
    NoSuchMessage(i64),
    #[error("message {message_id} has no button with callback data {data:?}")]
    NoSuchButton { message_id: i64, data: String },
    #[error("message {0} is not an invoice")]
    NotAnInvoice(i64),
    #[error("unknown invoice link {0}")]
    UnknownLink(String),
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct State {
    /// Updates not yet confirmed by an offset.
    updates: VecDeque<Value>,
    next_update_id: i64,
    /// `allowed_updates` from the last getUpdates/setWebhook that gave it.
    allowed_updates: Option<Vec<String>>,
    /// Incremented by every getUpdates; a waiting poller that sees another number lost.
    poll_generation: u64,
    webhook: Option<Webhook>,
    users: HashMap<i64, TestUser>,
    /// Per chat: the bot's messages, by message id.
    chats: HashMap<i64, BTreeMap<i64, SentMessage>>,
    next_message_id: HashMap<i64, i64>,
    callback_queries: HashMap<String, (i64, Option<Value>)>,
    pre_checkouts: HashMap<String, oneshot::Sender<(bool, Option<String>)>>,
    invoice_links: HashMap<String, Invoice>,
    charges: Vec<Charge>,
    subscriptions: Vec<StarSubscription>,
    /// The bot's Star transactions in `getStarTransactions` shape, oldest first.
    star_transactions: Vec<Value>,
    next_id: u64,
    /// The `file_id`s of uploaded photos (with their size), which `sendPhoto` takes again.
    files: HashMap<String, usize>,
    /// Calls per method, for tests.
    calls: HashMap<String, u64>,
    /// Scripted failures per method (error codes), used up oldest first.
    faults: HashMap<String, VecDeque<u16>>,
    /// Scripted slow answers per method, used up oldest first.
    delays: HashMap<String, VecDeque<Duration>>,
    /// Users who blocked the bot.
    blocked: HashSet<i64>,
    /// Sends refused with 429.
    rate_limited: u64,
}

#[derive(Clone)]
struct Webhook {
    url: String,
    secret_token: Option<String>,
}

struct Shared {
    config: Config,
    /// The global and per-chat budgets of [`SendLimits`] (none when unlimited).
    limits: Option<(ratelimit::Keyed<()>, ratelimit::Keyed<i64>)>,
    state: Mutex<State>,
    /// Woken when updates arrive or a poller is displaced.
    updates_changed: Notify,
}

impl Shared {
    fn next_id(state: &mut State, prefix: &str) -> String {
        state.next_id += 1;
        format!("{prefix}{:016x}", state.next_id)
    }

    fn next_message_id(state: &mut State, chat: i64) -> i64 {
        let id = state.next_message_id.entry(chat).or_insert(0);
        *id += 1;
        *id
    }

    fn push_update(&self, kind: &str, body: Value) {
        let mut state = lock(&self.state);
        state.next_update_id += 1;
        let mut update = Map::new();
        update.insert("update_id".to_owned(), json!(state.next_update_id));
        update.insert(kind.to_owned(), body);
        state.updates.push_back(Value::Object(update));
        drop(state);
        self.updates_changed.notify_waiters();
    }

    fn user_message(&self, user: &TestUser, fields: Map<String, Value>) -> i64 {
        let mut state = lock(&self.state);
        state.users.insert(user.id, user.clone());
        let message_id = Self::next_message_id(&mut state, user.id);
        drop(state);
        let mut message = json!({
            "message_id": message_id,
            "date": chrono::Utc::now().timestamp(),
            "chat": user.chat(),
            "from": user.to_json(),
        });
        if let Some(object) = message.as_object_mut() {
            object.extend(fields);
        }
        self.push_update("message", message);
        message_id
    }

    fn bot_user(&self) -> Value {
        json!({
            "id": self.config.bot_id(),
            "is_bot": true,
            "first_name": "Anomaly Sandbox",
            "username": self.config.bot_username,
        })
    }
}

/// The user side of the emulator and what tests read back. [`Handle`] derefs to it.
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
}

/// A running emulator. Dropping it stops the server.
pub struct Handle {
    emulator: Emulator,
    addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Starts the emulator on the current tokio runtime and returns once it is listening.
pub async fn spawn(config: Config) -> std::io::Result<Handle> {
    let listener = std::net::TcpListener::bind(config.bind)?;
    let addr = listener.local_addr()?;
    let workers = config.workers.max(1);
    let limits = config.send_limits.map(|l| {
        (
            ratelimit::Keyed::new("sandbox_telegram_global", Some(l.global), 1),
            ratelimit::Keyed::new("sandbox_telegram_chat", Some(l.per_chat), 1_000_000),
        )
    });
    let shared = Arc::new(Shared {
        config,
        limits,
        state: Mutex::new(State::default()),
        updates_changed: Notify::new(),
    });
    let data = web::Data::from(shared.clone());
    let running = serve("telegram", Listen::Socket(listener), workers, move |cfg| {
        cfg.app_data(data.clone());
        routes(cfg);
    })?;
    let tasks = vec![
        running.task,
        tokio::spawn(deliver_to_webhook(shared.clone())),
    ];
    tracing::info!(%addr, "telegram emulator listening");
    Ok(Handle {
        emulator: Emulator { shared },
        addr,
        server: running.handle,
        tasks,
    })
}

impl Drop for Handle {
    fn drop(&mut self) {
        // `stop` sends its command at once; the returned future only waits for completion.
        drop(self.server.stop(false));
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::ops::Deref for Handle {
    type Target = Emulator;

    fn deref(&self) -> &Emulator {
        &self.emulator
    }
}

impl Handle {
    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The value for `TELEGRAM_API_URL`: the base URL without `/bot<token>`.
    pub fn api_url(&self) -> String {
        self.base_url()
    }

    pub async fn stop(self) {
        self.server.stop(true).await;
    }
}

impl Emulator {
    /// The bot token the emulator accepts.
    pub fn token(&self) -> &str {
        &self.shared.config.token
    }

    /// The user sends a text message (e.g. `/start`); returns its message id.
    pub fn send_text(&self, user: &TestUser, text: &str) -> i64 {
        let mut fields = Map::new();
        fields.insert("text".to_owned(), json!(text));
        if let Some(command) = text.strip_prefix('/') {
            let length = command.split_whitespace().next().map_or(0, str::len) + 1;
            fields.insert(
                "entities".to_owned(),
                json!([{"type": "bot_command", "offset": 0, "length": length}]),
            );
        }
        self.shared.user_message(user, fields)
    }

    /// The user presses the inline button with `data` under the bot's message; returns the
    /// callback query id.
    pub fn press(
        &self,
        user: &TestUser,
        message_id: i64,
        data: &str,
    ) -> Result<String, UserActionError> {
        let message = self
            .message(user.id, message_id)
            .ok_or(UserActionError::NoSuchMessage(message_id))?;
        if !message.callback_data().iter().any(|d| d == data) {
            return Err(UserActionError::NoSuchButton {
                message_id,
                data: data.to_owned(),
            });
        }
        let mut state = lock(&self.shared.state);
        let id = Shared::next_id(&mut state, "cbq");
        state.callback_queries.insert(id.clone(), (user.id, None));
        drop(state);
        let bot_message = json!({
            "message_id": message_id,
            "date": chrono::Utc::now().timestamp(),
            "chat": user.chat(),
            "from": self.shared.bot_user(),
            "text": message.text.or(message.caption).unwrap_or_default(),
            "reply_markup": message.reply_markup,
        });
        self.shared.push_update(
            "callback_query",
            json!({
                "id": id,
                "from": user.to_json(),
                "message": bot_message,
                "chat_instance": format!("ci{}", user.id),
                "data": data,
            }),
        );
        Ok(id)
    }

    /// The answer the bot gave to a callback query, once it has answered.
    pub fn callback_answer(&self, id: &str) -> Option<Value> {
        lock(&self.shared.state)
            .callback_queries
            .get(id)
            .and_then(|(_, answer)| answer.clone())
    }

    /// The user pays the invoice in the bot's message `message_id`.
    pub async fn pay_invoice(
        &self,
        user: &TestUser,
        message_id: i64,
    ) -> Result<PayOutcome, UserActionError> {
        let invoice = self
            .message(user.id, message_id)
            .ok_or(UserActionError::NoSuchMessage(message_id))?
            .invoice
            .ok_or(UserActionError::NotAnInvoice(message_id))?;
        Ok(self.pay(user, invoice).await)
    }

    /// The user opens an invoice link made by `createInvoiceLink` and pays.
    pub async fn pay_link(
        &self,
        user: &TestUser,
        link: &str,
    ) -> Result<PayOutcome, UserActionError> {
        let invoice = lock(&self.shared.state)
            .invoice_links
            .get(link)
            .cloned()
            .ok_or_else(|| UserActionError::UnknownLink(link.to_owned()))?;
        Ok(self.pay(user, invoice).await)
    }

    async fn pay(&self, user: &TestUser, invoice: Invoice) -> PayOutcome {
        let (tx, rx) = oneshot::channel();
        let query_id = {
            let mut state = lock(&self.shared.state);
            state.users.insert(user.id, user.clone());
            let query_id = Shared::next_id(&mut state, "pcq");
            state.pre_checkouts.insert(query_id.clone(), tx);
            query_id
        };
        let started = Instant::now();
        self.shared.push_update(
            "pre_checkout_query",
            json!({
                "id": query_id,
                "from": user.to_json(),
                "currency": invoice.currency,
                "total_amount": invoice.total_amount,
                "invoice_payload": invoice.payload,
            }),
        );
        let answer = tokio::time::timeout(self.shared.config.pre_checkout_timeout, rx).await;
        let answered_in_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (ok, error_message) = match answer {
            Ok(Ok(answer)) => answer,
            _ => {
                lock(&self.shared.state).pre_checkouts.remove(&query_id);
                return PayOutcome::TimedOut;
            }
        };
        if !ok {
            return PayOutcome::Refused {
                error_message: error_message.unwrap_or_default(),
                answered_in_ms,
            };
        }
        let mut state = lock(&self.shared.state);
        let charge_id = Shared::next_id(&mut state, "stx");
        let provider_charge_id = if invoice.currency == "XTR" {
            String::new()
        } else {
            Shared::next_id(&mut state, "prov")
        };
        record_charge(&mut state, user, &invoice, &charge_id);
        let mut paid = json!({
            "currency": invoice.currency,
            "total_amount": invoice.total_amount,
            "invoice_payload": invoice.payload,
            "telegram_payment_charge_id": charge_id,
            "provider_payment_charge_id": provider_charge_id,
        });
        if let Some(period) = invoice.subscription_period {
            let expiration_date = chrono::Utc::now().timestamp() + period;
            paid["subscription_expiration_date"] = json!(expiration_date);
            paid["is_recurring"] = json!(true);
            paid["is_first_recurring"] = json!(true);
            state.subscriptions.push(StarSubscription {
                user_id: user.id,
                telegram_payment_charge_id: charge_id.clone(),
                invoice_payload: invoice.payload.clone(),
                total_amount: invoice.total_amount,
                expiration_date,
                canceled: false,
                renewals: Vec::new(),
            });
        }
        drop(state);
        let mut fields = Map::new();
        fields.insert("successful_payment".to_owned(), paid);
        self.shared.user_message(user, fields);
        PayOutcome::Paid {
            telegram_payment_charge_id: charge_id,
            answered_in_ms,
        }
    }

    /// Telegram's next monthly charge of the subscription named by its first payment's
    /// `charge_id` (any of its charges' ids works): a new Star transaction and a
    /// `successful_payment` with a new charge id, the same payload, `is_recurring: true` and
    /// the expiry 30 days after the previous one. Returns the new charge id.
    pub fn charge_subscription(&self, charge_id: &str) -> Result<String, SubscriptionError> {
        let mut state = lock(&self.shared.state);
        let index = subscription_index(&state, charge_id)
            .ok_or_else(|| SubscriptionError::Unknown(charge_id.to_owned()))?;
        let subscription = state.subscriptions[index].clone();
        if subscription.canceled {
            return Err(SubscriptionError::Canceled(
                subscription.telegram_payment_charge_id,
            ));
        }
        let user = state
            .users
            .get(&subscription.user_id)
            .cloned()
            .unwrap_or_else(|| TestUser::new(subscription.user_id, "Subscriber", "ru"));
        let new_charge = Shared::next_id(&mut state, "stx");
        let invoice = Invoice::stars(
            &subscription.invoice_payload,
            subscription.total_amount,
            Some(SUBSCRIPTION_PERIOD),
        );
        record_charge(&mut state, &user, &invoice, &new_charge);
        let expiration_date = subscription.expiration_date + SUBSCRIPTION_PERIOD;
        let stored = &mut state.subscriptions[index];
        stored.expiration_date = expiration_date;
        stored.renewals.push(new_charge.clone());
        drop(state);
        let mut fields = Map::new();
        fields.insert(
            "successful_payment".to_owned(),
            json!({
                "currency": "XTR",
                "total_amount": subscription.total_amount,
                "invoice_payload": subscription.invoice_payload,
                "telegram_payment_charge_id": new_charge,
                "provider_payment_charge_id": "",
                "subscription_expiration_date": expiration_date,
                "is_recurring": true,
            }),
        );
        self.shared.user_message(&user, fields);
        Ok(new_charge)
    }

    /// The Star subscriptions users started, oldest first.
    pub fn subscriptions(&self) -> Vec<StarSubscription> {
        lock(&self.shared.state).subscriptions.clone()
    }

    /// A Star payment `user` made earlier, for seeding a bot's transaction history (a live
    /// payment goes through [`Handle::pay_invoice`], with its pre-checkout query): appended
    /// to `getStarTransactions` and to the charges. Returns its charge id.
    pub fn record_star_payment(&self, user: &TestUser, payload: &str, amount: i64) -> String {
        let mut state = lock(&self.shared.state);
        state.users.insert(user.id, user.clone());
        let charge_id = Shared::next_id(&mut state, "stx");
        let invoice = Invoice::stars(payload, amount, None);
        record_charge(&mut state, user, &invoice, &charge_id);
        charge_id
    }

    /// Everything the bot sent to `chat`, oldest first.
    pub fn messages(&self, chat: i64) -> Vec<SentMessage> {
        lock(&self.shared.state)
            .chats
            .get(&chat)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn message(&self, chat: i64, message_id: i64) -> Option<SentMessage> {
        lock(&self.shared.state)
            .chats
            .get(&chat)
            .and_then(|m| m.get(&message_id))
            .cloned()
    }

    /// Waits until the bot has sent `chat` a message matching `pred`; returns it.
    pub async fn wait_for_message<F>(
        &self,
        chat: i64,
        timeout: Duration,
        pred: F,
    ) -> Option<SentMessage>
    where
        F: Fn(&SentMessage) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.messages(chat).into_iter().find(|m| pred(m)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn charges(&self) -> Vec<Charge> {
        lock(&self.shared.state).charges.clone()
    }

    /// How many times the bot called `method`.
    pub fn calls(&self, method: &str) -> u64 {
        lock(&self.shared.state)
            .calls
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    /// The user blocks the bot: every send to them is refused with 403 until
    /// [`Emulator::unblock_bot`].
    pub fn block_bot(&self, user: &TestUser) {
        let mut state = lock(&self.shared.state);
        state.users.insert(user.id, user.clone());
        state.blocked.insert(user.id);
    }

    pub fn unblock_bot(&self, user: &TestUser) {
        lock(&self.shared.state).blocked.remove(&user.id);
    }

    /// A user who started the bot earlier: the bot may write to them without a new update.
    pub fn add_user(&self, user: &TestUser) {
        lock(&self.shared.state).users.insert(user.id, user.clone());
    }

    /// Sends refused with 429 for going over [`SendLimits`].
    pub fn rate_limited(&self) -> u64 {
        lock(&self.shared.state).rate_limited
    }

    /// Messages the bot sent to each chat, counted (chats it never wrote to are left out).
    pub fn message_counts(&self) -> HashMap<i64, usize> {
        lock(&self.shared.state)
            .chats
            .iter()
            .map(|(chat, messages)| (*chat, messages.len()))
            .collect()
    }

    /// Updates the bot has not yet confirmed.
    pub fn pending_updates(&self) -> usize {
        lock(&self.shared.state).updates.len()
    }

    /// The next `times` calls of `method` fail with Telegram's error `code` and do nothing
    /// (429 carries `retry_after: 1`), as Telegram does under load or in an outage.
    pub fn fail_next(&self, method: &str, code: u16, times: usize) {
        lock(&self.shared.state)
            .faults
            .entry(method.to_owned())
            .or_default()
            .extend(std::iter::repeat_n(code, times));
    }

    /// The next `times` calls of `method` do their work (a sent message is in the chat at
    /// once), then hold the answer back for `delay`: a slow Telegram.
    pub fn slow_next(&self, method: &str, delay: Duration, times: usize) {
        lock(&self.shared.state)
            .delays
            .entry(method.to_owned())
            .or_default()
            .extend(std::iter::repeat_n(delay, times));
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/bot{token}/{method}", web::post().to(bot_method))
        .route("/bot{token}/{method}", web::get().to(bot_method))
        .route(
            "/sandbox/telegram/users/{id}/messages",
            web::post().to(control_send),
        )
        .route(
            "/sandbox/telegram/users/{id}/press",
            web::post().to(control_press),
        )
        .route(
            "/sandbox/telegram/users/{id}/pay",
            web::post().to(control_pay),
        )
        .route(
            "/sandbox/telegram/chats/{id}/messages",
            web::get().to(control_messages),
        )
        .route(
            "/sandbox/telegram/subscriptions/{charge_id}/charge",
            web::post().to(control_charge_subscription),
        )
        .default_service(web::to(|| async {
            HttpResponse::NotFound()
                .json(json!({"ok": false, "error_code": 404, "description": "Not Found"}))
        }));
}

/// A Telegram error answer: `{"ok":false,"error_code":…,"description":…}` with the same
/// HTTP status.
#[derive(Debug)]
struct ApiError {
    code: u16,
    description: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn bad_request(what: &str) -> Self {
        Self {
            code: 400,
            description: format!("Bad Request: {what}"),
            retry_after: None,
        }
    }

    /// A scripted failure with Telegram's wording.
    fn scripted(code: u16) -> Self {
        match code {
            429 => Self {
                code,
                description: "Too Many Requests: retry after 1".to_owned(),
                retry_after: Some(1),
            },
            400 => Self::bad_request("scripted failure"),
            403 => Self::new(code, "Forbidden: bot was blocked by the user"),
            502 => Self::new(code, "Bad Gateway"),
            _ => Self::new(code, "Internal Server Error"),
        }
    }

    fn new(code: u16, description: &str) -> Self {
        Self {
            code,
            description: description.to_owned(),
            retry_after: None,
        }
    }

    fn response(&self) -> HttpResponse {
        let mut body =
            json!({"ok": false, "error_code": self.code, "description": self.description});
        if let Some(retry_after) = self.retry_after {
            body["parameters"] = json!({"retry_after": retry_after});
        }
        HttpResponse::build(
            actix_web::http::StatusCode::from_u16(self.code)
                .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
        )
        .json(body)
    }
}

type ApiResult = Result<Value, ApiError>;

/// Parameters from the query string, a JSON body, a form or a multipart body; uploaded files
/// are kept aside with their file name.
struct Params {
    values: Map<String, Value>,
    files: HashMap<String, (String, Vec<u8>)>,
}

impl Params {
    fn str(&self, name: &str) -> Option<String> {
        match self.values.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    fn required_str(&self, name: &str) -> Result<String, ApiError> {
        self.str(name)
            .ok_or_else(|| ApiError::bad_request(&format!("parameter \"{name}\" is required")))
    }

    fn i64(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.values.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(&format!("invalid {name}"))),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(&format!("invalid {name}"))),
            Some(_) => Err(ApiError::bad_request(&format!("invalid {name}"))),
        }
    }

    fn bool(&self, name: &str) -> Option<bool> {
        match self.values.get(name)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => Some(s == "true"),
            _ => None,
        }
    }

    /// A JSON-typed parameter (sent as JSON, or as a JSON string in forms).
    fn json(&self, name: &str) -> Result<Option<Value>, ApiError> {
        match self.values.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => serde_json::from_str(s)
                .map(Some)
                .map_err(|_| ApiError::bad_request(&format!("can't parse {name} JSON object"))),
            Some(other) => Ok(Some(other.clone())),
        }
    }
}

async fn read_params(req: &HttpRequest, payload: web::Payload) -> Result<Params, ApiError> {
    let mut values = Map::new();
    for (k, v) in crate::form::parse(req.query_string()) {
        values.insert(k, Value::String(v));
    }
    let mut files = HashMap::new();
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = actix_multipart::Multipart::new(req.headers(), payload);
        while let Some(field) = multipart.next().await {
            let mut field = field.map_err(|e| ApiError::bad_request(&e.to_string()))?;
            let name = field.name().unwrap_or_default().to_owned();
            let file_name = field
                .content_disposition()
                .and_then(|cd| cd.get_filename())
                .map(str::to_owned);
            let mut bytes = Vec::new();
            while let Some(chunk) = field.next().await {
                bytes.extend_from_slice(&chunk.map_err(|e| ApiError::bad_request(&e.to_string()))?);
            }
            match file_name {
                Some(file_name) => {
                    files.insert(name, (file_name, bytes));
                }
                None => {
                    values.insert(
                        name,
                        Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                    );
                }
            }
        }
        return Ok(Params { values, files });
    }
    let body = payload
        .to_bytes_limited(1 << 20)
        .await
        .map_err(|_| ApiError::new(413, "Request Entity Too Large"))?
        .map_err(|e| ApiError::bad_request(&e.to_string()))?;
    if body.is_empty() {
        return Ok(Params { values, files });
    }
    if content_type.starts_with("application/json") {
        let parsed: Value = serde_json::from_slice(&body)
            .map_err(|_| ApiError::bad_request("can't parse JSON request body"))?;
        match parsed {
            Value::Object(map) => values.extend(map),
            _ => return Err(ApiError::bad_request("JSON request body must be an object")),
        }
    } else {
        for (k, v) in crate::form::parse(&String::from_utf8_lossy(&body)) {
            values.insert(k, Value::String(v));
        }
    }
    Ok(Params { values, files })
}

async fn bot_method(
    shared: web::Data<Shared>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (token, method) = path.into_inner();
    if token != shared.config.token {
        return ApiError::new(401, "Unauthorized").response();
    }
    let params = match read_params(&req, payload).await {
        Ok(params) => params,
        Err(error) => return error.response(),
    };
    let (fault, delay) = {
        let mut state = lock(&shared.state);
        *state.calls.entry(method.clone()).or_insert(0) += 1;
        let fault = state.faults.get_mut(&method).and_then(VecDeque::pop_front);
        let delay = match fault {
            Some(_) => None,
            None => state.delays.get_mut(&method).and_then(VecDeque::pop_front),
        };
        (fault, delay)
    };
    if let Some(code) = fault {
        return ApiError::scripted(code).response();
    }
    if SEND_METHODS.contains(&method.as_str())
        && let Err(error) = may_send(&shared, &params)
    {
        return error.response();
    }
    let result = match method.as_str() {
        "getMe" => Ok(shared.bot_user()),
        "getUpdates" => get_updates(&shared, &params).await,
        "setWebhook" => set_webhook(&shared, &params),
        "deleteWebhook" => delete_webhook(&shared, &params),
        "getWebhookInfo" => Ok(webhook_info(&shared)),
        "sendMessage" => send_message(&shared, &params),
        "sendPhoto" => send_photo(&shared, &params),
        "editMessageText" => edit_message_text(&shared, &params),
        "answerCallbackQuery" => answer_callback_query(&shared, &params),
        "sendInvoice" => send_invoice(&shared, &params),
        "createInvoiceLink" => create_invoice_link(&shared, &params),
        "answerPreCheckoutQuery" => answer_pre_checkout_query(&shared, &params),
        "refundStarPayment" => refund_star_payment(&shared, &params),
        "getStarTransactions" => get_star_transactions(&shared, &params),
        "editUserStarSubscription" => edit_user_star_subscription(&shared, &params),
        _ => Err(ApiError::new(404, "Not Found: method not found")),
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match result {
        Ok(result) => HttpResponse::Ok().json(json!({"ok": true, "result": result})),
        Err(error) => error.response(),
    }
}

/// A send to a user who blocked the bot is refused with 403; one over Telegram's limits
/// with 429 and `retry_after` (whole seconds, rounded up).
fn may_send(shared: &Shared, params: &Params) -> Result<(), ApiError> {
    let Ok(Some(chat)) = params.i64("chat_id") else {
        return Ok(());
    };
    if lock(&shared.state).blocked.contains(&chat) {
        return Err(ApiError::new(403, "Forbidden: bot was blocked by the user"));
    }
    let Some((global, per_chat)) = &shared.limits else {
        return Ok(());
    };
    let decision = match global.check(&()) {
        ratelimit::Decision::Allowed => per_chat.check(&chat),
        limited => limited,
    };
    if decision.is_allowed() {
        return Ok(());
    }
    lock(&shared.state).rate_limited += 1;
    let retry_after = decision.retry_after_secs();
    Err(ApiError {
        code: 429,
        description: format!("Too Many Requests: retry after {retry_after}"),
        retry_after: Some(retry_after),
    })
}

fn update_kind(update: &Value) -> Option<&str> {
    update
        .as_object()?
        .keys()
        .find(|k| k.as_str() != "update_id")
        .map(String::as_str)
}

fn parse_allowed_updates(params: &Params) -> Result<Option<Vec<String>>, ApiError> {
    let Some(value) = params.json("allowed_updates")? else {
        return Ok(None);
    };
    let list = value
        .as_array()
        .ok_or_else(|| ApiError::bad_request("can't parse allowed updates"))?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApiError::bad_request("can't parse allowed updates"))?;
    Ok(Some(list))
}

async fn get_updates(shared: &Shared, params: &Params) -> ApiResult {
    let offset = params.i64("offset")?;
    let limit = params.i64("limit")?.unwrap_or(100).clamp(1, 100);
    let timeout = params.i64("timeout")?.unwrap_or(0).clamp(0, 50);
    let allowed = parse_allowed_updates(params)?;
    let generation = {
        let mut state = lock(&shared.state);
        if state.webhook.is_some() {
            return Err(ApiError::new(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
            ));
        }
        if let Some(allowed) = allowed {
            state.allowed_updates = Some(allowed);
        }
        if let Some(offset) = offset.filter(|o| *o > 0) {
            // Confirms every update before the offset.
            while state
                .updates
                .front()
                .and_then(|u| u["update_id"].as_i64())
                .is_some_and(|id| id < offset)
            {
                state.updates.pop_front();
            }
        }
        state.poll_generation += 1;
        state.poll_generation
    };
    // A newer poller displaces this one.
    shared.updates_changed.notify_waiters();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout.unsigned_abs());
    loop {
        let notified = shared.updates_changed.notified();
        {
            let mut state = lock(&shared.state);
            if state.poll_generation != generation {
                return Err(ApiError::new(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
                ));
            }
            let allowed = state.allowed_updates.clone();
            let is_allowed = |u: &Value| match (&allowed, update_kind(u)) {
                (Some(list), Some(kind)) if !list.is_empty() => list.iter().any(|a| a == kind),
                _ => true,
            };
            // Updates of kinds the bot did not ask for are dropped, as Telegram does.
            state.updates.retain(|u| is_allowed(u));
            let batch: Vec<Value> = state
                .updates
                .iter()
                .take(usize::try_from(limit).unwrap_or(100))
                .cloned()
                .collect();
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(Value::Array(batch));
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let state = lock(&shared.state);
            if state.poll_generation != generation {
                continue;
            }
            return Ok(json!([]));
        }
    }
}

fn set_webhook(shared: &Shared, params: &Params) -> ApiResult {
    let url = params.required_str("url")?;
    let secret_token = params.str("secret_token");
    if let Some(secret) = &secret_token
        && (secret.is_empty()
            || secret.len() > 256
            || !secret
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(ApiError::bad_request(
            "secret token contains unallowed characters",
        ));
    }
    let allowed = parse_allowed_updates(params)?;
    let mut state = lock(&shared.state);
    if let Some(allowed) = allowed {
        state.allowed_updates = Some(allowed);
    }
    if url.is_empty() {
        state.webhook = None;
    } else {
        state.webhook = Some(Webhook { url, secret_token });
    }
    if params.bool("drop_pending_updates") == Some(true) {
        state.updates.clear();
    }
    drop(state);
    shared.updates_changed.notify_waiters();
    Ok(json!(true))
}

fn delete_webhook(shared: &Shared, params: &Params) -> ApiResult {
    let mut state = lock(&shared.state);
    state.webhook = None;
    if params.bool("drop_pending_updates") == Some(true) {
        state.updates.clear();
    }
    Ok(json!(true))
}

fn webhook_info(shared: &Shared) -> Value {
    let state = lock(&shared.state);
    json!({
        "url": state.webhook.as_ref().map(|w| w.url.clone()).unwrap_or_default(),
        "has_custom_certificate": false,
        "pending_update_count": state.updates.len(),
        "allowed_updates": state.allowed_updates,
    })
}

/// Delivers updates to the webhook while one is set: one at a time, in order, each until the
/// bot answers 2xx (Telegram retries failed deliveries).
async fn deliver_to_webhook(shared: Arc<Shared>) {
    let client = reqwest::Client::new();
    loop {
        let notified = shared.updates_changed.notified();
        let next = {
            let state = lock(&shared.state);
            state
                .webhook
                .clone()
                .and_then(|hook| state.updates.front().cloned().map(|u| (hook, u)))
        };
        let Some((hook, update)) = next else {
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
            continue;
        };
        let mut request = client
            .post(&hook.url)
            .json(&update)
            .timeout(Duration::from_secs(10));
        if let Some(secret) = &hook.secret_token {
            request = request.header("X-Telegram-Bot-Api-Secret-Token", secret);
        }
        let delivered = request.send().await.is_ok_and(|r| r.status().is_success());
        if delivered {
            let mut state = lock(&shared.state);
            if state.updates.front() == Some(&update) {
                state.updates.pop_front();
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn chat_id(shared: &Shared, params: &Params) -> Result<i64, ApiError> {
    let chat = params
        .i64("chat_id")
        .map_err(|_| ApiError::bad_request("chat not found"))?
        .ok_or_else(|| ApiError::bad_request("chat_id is empty"))?;
    if !lock(&shared.state).users.contains_key(&chat) {
        return Err(ApiError::bad_request("chat not found"));
    }
    Ok(chat)
}

fn checked_reply_markup(params: &Params) -> Result<Option<Value>, ApiError> {
    let Some(markup) = params.json("reply_markup")? else {
        return Ok(None);
    };
    if let Some(rows) = markup.get("inline_keyboard") {
        let rows = rows
            .as_array()
            .ok_or_else(|| ApiError::bad_request("can't parse inline keyboard button"))?;
        for button in rows.iter().flat_map(|r| r.as_array().into_iter().flatten()) {
            let text = button
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if text.is_empty() {
                return Err(ApiError::bad_request(
                    "inline keyboard button text is empty",
                ));
            }
            let data = button.get("callback_data").and_then(Value::as_str);
            let url = button.get("url").and_then(Value::as_str);
            let pay = button.get("pay").and_then(Value::as_bool);
            match (data, url, pay) {
                (Some(data), None, None) if !data.is_empty() && data.len() <= 64 => {}
                (Some(_), None, None) => return Err(ApiError::bad_request("BUTTON_DATA_INVALID")),
                (None, Some(url), None)
                    if url.starts_with("http://")
                        || url.starts_with("https://")
                        || url.starts_with("tg://") => {}
                (None, Some(_), None) => return Err(ApiError::bad_request("BUTTON_URL_INVALID")),
                (None, None, Some(true)) => {}
                _ => {
                    return Err(ApiError::bad_request(
                        "can't find field \"callback_data\" or \"url\" in inline keyboard button",
                    ));
                }
            }
        }
    }
    Ok(Some(markup))
}

fn check_text(text: &str, what: &str, max: usize) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(&format!("{what} is empty")));
    }
    if text.chars().count() > max {
        return Err(ApiError::bad_request(&format!("{what} is too long")));
    }
    Ok(())
}

/// Stores a bot message and returns it in Telegram's `Message` shape.
fn store_message(shared: &Shared, chat: i64, mut message: SentMessage, extra: Value) -> Value {
    let mut state = lock(&shared.state);
    let message_id = Shared::next_message_id(&mut state, chat);
    message.message_id = message_id;
    message.sent_at_us = chrono::Utc::now().timestamp_micros();
    let chat_json = state
        .users
        .get(&chat)
        .map(TestUser::chat)
        .unwrap_or_else(|| json!({"id": chat, "type": "private"}));
    let mut out = json!({
        "message_id": message_id,
        "date": chrono::Utc::now().timestamp(),
        "chat": chat_json,
        "from": shared.bot_user(),
    });
    if let Some(text) = &message.text {
        out["text"] = json!(text);
    }
    if let Some(caption) = &message.caption {
        out["caption"] = json!(caption);
    }
    if let Some(markup) = &message.reply_markup {
        out["reply_markup"] = markup.clone();
    }
    if let (Some(object), Value::Object(extra)) = (out.as_object_mut(), extra) {
        object.extend(extra);
    }
    state
        .chats
        .entry(chat)
        .or_default()
        .insert(message_id, message);
    out
}

fn blank(method: &str) -> SentMessage {
    SentMessage {
        message_id: 0,
        method: method.to_owned(),
        text: None,
        caption: None,
        photo: None,
        reply_markup: None,
        invoice: None,
        edits: 0,
        sent_at_us: 0,
    }
}

fn send_message(shared: &Shared, params: &Params) -> ApiResult {
    let chat = chat_id(shared, params)?;
    let text = params.str("text").unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("message text is empty"));
    }
    if text.chars().count() > 4096 {
        return Err(ApiError::bad_request("message is too long"));
    }
    let message = SentMessage {
        text: Some(text),
        reply_markup: checked_reply_markup(params)?,
        ..blank("sendMessage")
    };
    Ok(store_message(shared, chat, message, json!({})))
}

fn send_photo(shared: &Shared, params: &Params) -> ApiResult {
    let chat = chat_id(shared, params)?;
    let photo = match (params.files.get("photo"), params.str("photo")) {
        (Some((file_name, data)), _) if !data.is_empty() => PhotoSent::Upload {
            file_name: file_name.clone(),
            bytes: data.len(),
            data: data.clone(),
        },
        (Some(_), _) => return Err(ApiError::bad_request("file must be non-empty")),
        (None, Some(reference)) if !reference.is_empty() => {
            let known = reference.starts_with("http://")
                || reference.starts_with("https://")
                || lock(&shared.state).files.contains_key(&reference);
            if !known {
                return Err(ApiError::bad_request(
                    "wrong file identifier/HTTP URL specified",
                ));
            }
            PhotoSent::Reference(reference)
        }
        _ => return Err(ApiError::bad_request("there is no photo in the request")),
    };
    let caption = params.str("caption");
    if caption.as_ref().is_some_and(|c| c.chars().count() > 1024) {
        return Err(ApiError::bad_request("message caption is too long"));
    }
    let message = SentMessage {
        caption,
        photo: Some(photo),
        reply_markup: checked_reply_markup(params)?,
        ..blank("sendPhoto")
    };
    // Telegram answers with the photo's sizes; each has a file_id to send it again by.
    let file_id = match &message.photo {
        Some(PhotoSent::Upload { bytes, .. }) => {
            let mut state = lock(&shared.state);
            let id = Shared::next_id(&mut state, "AgACAgIAAxkDAAI");
            state.files.insert(id.clone(), *bytes);
            state.files.insert(format!("{id}-s"), *bytes);
            id
        }
        Some(PhotoSent::Reference(reference)) => reference.clone(),
        None => String::new(),
    };
    let unique = file_id.chars().rev().take(16).collect::<String>();
    let extra = json!({"photo": [
        {"file_id": format!("{file_id}-s"), "file_unique_id": format!("{unique}-s"), "width": 90, "height": 90},
        {"file_id": file_id, "file_unique_id": unique, "width": 512, "height": 512},
    ]});
    Ok(store_message(shared, chat, message, extra))
}

fn edit_message_text(shared: &Shared, params: &Params) -> ApiResult {
    let chat = chat_id(shared, params)?;
    let message_id = params
        .i64("message_id")?
        .ok_or_else(|| ApiError::bad_request("message identifier is not specified"))?;
    let text = params.str("text").unwrap_or_default();
    check_text(&text, "message text", 4096)?;
    let markup = checked_reply_markup(params)?;
    let mut state = lock(&shared.state);
    let message = state
        .chats
        .get_mut(&chat)
        .and_then(|m| m.get_mut(&message_id))
        .ok_or_else(|| ApiError::bad_request("message to edit not found"))?;
    if message.text.is_none() {
        return Err(ApiError::bad_request(
            "there is no text in the message to edit",
        ));
    }
    if message.text.as_deref() == Some(text.as_str()) && message.reply_markup == markup {
        return Err(ApiError::bad_request(
            "message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
        ));
    }
    message.text = Some(text.clone());
    message.reply_markup = markup.clone();
    message.edits += 1;
    let mut out = json!({
        "message_id": message_id,
        "date": chrono::Utc::now().timestamp(),
        "edit_date": chrono::Utc::now().timestamp(),
        "chat": {"id": chat, "type": "private"},
        "from": shared.bot_user(),
        "text": text,
    });
    if let Some(markup) = markup {
        out["reply_markup"] = markup;
    }
    Ok(out)
}

fn answer_callback_query(shared: &Shared, params: &Params) -> ApiResult {
    let id = params.required_str("callback_query_id")?;
    let mut state = lock(&shared.state);
    let Some((_, answer)) = state.callback_queries.get_mut(&id) else {
        return Err(ApiError::bad_request(
            "query is too old and response timeout expired or query ID is invalid",
        ));
    };
    if answer.is_some() {
        return Err(ApiError::bad_request(
            "query is too old and response timeout expired or query ID is invalid",
        ));
    }
    *answer = Some(json!({
        "text": params.str("text"),
        "show_alert": params.bool("show_alert").unwrap_or(false),
    }));
    Ok(json!(true))
}

fn parse_invoice(params: &Params) -> Result<Invoice, ApiError> {
    let title = params.str("title").unwrap_or_default();
    check_text(&title, "invoice title", 32)?;
    let description = params.str("description").unwrap_or_default();
    check_text(&description, "invoice description", 255)?;
    let payload = params.str("payload").unwrap_or_default();
    if payload.is_empty() || payload.len() > 128 {
        return Err(ApiError::bad_request("INVOICE_PAYLOAD_INVALID"));
    }
    let currency = params.required_str("currency")?;
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(ApiError::bad_request("CURRENCY_INVALID"));
    }
    let prices = params
        .json("prices")?
        .and_then(|p| p.as_array().cloned())
        .ok_or_else(|| ApiError::bad_request("can't parse prices JSON object"))?;
    let mut total: i64 = 0;
    for price in &prices {
        let label = price
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let amount = price
            .get("amount")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::bad_request("can't parse prices JSON object"))?;
        if label.is_empty() {
            return Err(ApiError::bad_request("PRICE_LABEL_INVALID"));
        }
        total = total
            .checked_add(amount)
            .ok_or_else(|| ApiError::bad_request("CURRENCY_TOTAL_AMOUNT_INVALID"))?;
    }
    if prices.is_empty() || total <= 0 {
        return Err(ApiError::bad_request("CURRENCY_TOTAL_AMOUNT_INVALID"));
    }
    let provider_token = params.str("provider_token").unwrap_or_default();
    if currency == "XTR" {
        if prices.len() != 1 {
            return Err(ApiError::bad_request(
                "STARS_INVOICE_INVALID: exactly one price item is allowed for payments in Telegram Stars",
            ));
        }
        if !provider_token.is_empty() {
            return Err(ApiError::bad_request("PAYMENT_PROVIDER_INVALID"));
        }
        if params.i64("max_tip_amount")?.unwrap_or(0) > 0 {
            return Err(ApiError::bad_request(
                "tips are not supported in Telegram Stars",
            ));
        }
    } else if provider_token.is_empty() {
        return Err(ApiError::bad_request("PAYMENT_PROVIDER_INVALID"));
    }
    Ok(Invoice {
        title,
        description,
        payload,
        currency,
        total_amount: total,
        provider_token,
        subscription_period: None,
    })
}

fn send_invoice(shared: &Shared, params: &Params) -> ApiResult {
    let chat = chat_id(shared, params)?;
    let invoice = parse_invoice(params)?;
    let extra = json!({"invoice": {
        "title": invoice.title,
        "description": invoice.description,
        "start_parameter": params.str("start_parameter").unwrap_or_default(),
        "currency": invoice.currency,
        "total_amount": invoice.total_amount,
    }});
    let message = SentMessage {
        reply_markup: checked_reply_markup(params)?,
        invoice: Some(invoice),
        ..blank("sendInvoice")
    };
    Ok(store_message(shared, chat, message, extra))
}

fn create_invoice_link(shared: &Shared, params: &Params) -> ApiResult {
    let mut invoice = parse_invoice(params)?;
    if let Some(period) = params.i64("subscription_period")? {
        if period != SUBSCRIPTION_PERIOD || invoice.currency != "XTR" {
            return Err(ApiError::bad_request("SUBSCRIPTION_PERIOD_INVALID"));
        }
        invoice.subscription_period = Some(period);
    }
    let mut state = lock(&shared.state);
    let slug = Shared::next_id(&mut state, "");
    let link = format!("https://t.me/${slug}");
    state.invoice_links.insert(link.clone(), invoice);
    Ok(json!(link))
}

fn answer_pre_checkout_query(shared: &Shared, params: &Params) -> ApiResult {
    let id = params.required_str("pre_checkout_query_id")?;
    let ok = params
        .bool("ok")
        .ok_or_else(|| ApiError::bad_request("parameter \"ok\" is required"))?;
    let error_message = params.str("error_message");
    if !ok && error_message.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("ERROR_MESSAGE_EMPTY"));
    }
    let waiter = lock(&shared.state).pre_checkouts.remove(&id);
    // A query nobody waits for any more (answered twice, or after the 10 s) is refused.
    let delivered = waiter.is_some_and(|waiter| waiter.send((ok, error_message)).is_ok());
    if delivered {
        Ok(json!(true))
    } else {
        Err(ApiError::bad_request(
            "query is too old and response timeout expired or query ID is invalid",
        ))
    }
}

fn refund_star_payment(shared: &Shared, params: &Params) -> ApiResult {
    let user_id = params
        .i64("user_id")?
        .ok_or_else(|| ApiError::bad_request("USER_ID_INVALID"))?;
    let charge_id = params.required_str("telegram_payment_charge_id")?;
    let mut state = lock(&shared.state);
    let charge = state
        .charges
        .iter_mut()
        .find(|c| c.telegram_payment_charge_id == charge_id)
        .ok_or_else(|| ApiError::bad_request("CHARGE_NOT_FOUND"))?;
    if charge.user_id != user_id {
        return Err(ApiError::bad_request("USER_ID_INVALID"));
    }
    if charge.currency != "XTR" {
        return Err(ApiError::bad_request("CHARGE_NOT_FOUND"));
    }
    if charge.refunded {
        return Err(ApiError::bad_request("CHARGE_ALREADY_REFUNDED"));
    }
    charge.refunded = true;
    let refunded = json!({
        "currency": charge.currency,
        "total_amount": charge.total_amount,
        "invoice_payload": charge.invoice_payload,
        "telegram_payment_charge_id": charge.telegram_payment_charge_id,
    });
    let user = state.users.get(&user_id).cloned();
    // A refund is an outgoing transaction with the original charge's id.
    let outgoing = json!({
        "id": charge_id,
        "amount": refunded["total_amount"],
        "date": chrono::Utc::now().timestamp(),
        "receiver": {
            "type": "user",
            "transaction_type": "invoice_payment",
            "user": user.as_ref().map_or_else(|| json!({"id": user_id, "is_bot": false, "first_name": ""}), TestUser::to_json),
            "invoice_payload": refunded["invoice_payload"],
        },
    });
    state.star_transactions.push(outgoing);
    drop(state);
    if let Some(user) = user {
        let mut fields = Map::new();
        fields.insert("refunded_payment".to_owned(), refunded);
        shared.user_message(&user, fields);
    }
    Ok(json!(true))
}

/// A paid charge: in the charges, and for Stars in the bot's Star transactions.
fn record_charge(state: &mut State, user: &TestUser, invoice: &Invoice, charge_id: &str) {
    if invoice.currency == "XTR" {
        state.star_transactions.push(json!({
            "id": charge_id,
            "amount": invoice.total_amount,
            "date": chrono::Utc::now().timestamp(),
            "source": {
                "type": "user",
                "transaction_type": "invoice_payment",
                "user": user.to_json(),
                "invoice_payload": invoice.payload,
            },
        }));
    }
    state.charges.push(Charge {
        user_id: user.id,
        telegram_payment_charge_id: charge_id.to_owned(),
        currency: invoice.currency.clone(),
        total_amount: invoice.total_amount,
        invoice_payload: invoice.payload.clone(),
        refunded: false,
    });
}

/// The subscription one of whose charges is `charge_id`.
fn subscription_index(state: &State, charge_id: &str) -> Option<usize> {
    state.subscriptions.iter().position(|s| {
        s.telegram_payment_charge_id == charge_id || s.renewals.iter().any(|r| r == charge_id)
    })
}

/// `editUserStarSubscription{user_id, telegram_payment_charge_id, is_canceled}`.
fn edit_user_star_subscription(shared: &Shared, params: &Params) -> ApiResult {
    let user_id = params
        .i64("user_id")?
        .ok_or_else(|| ApiError::bad_request("USER_ID_INVALID"))?;
    let charge_id = params.required_str("telegram_payment_charge_id")?;
    let canceled = params
        .bool("is_canceled")
        .ok_or_else(|| ApiError::bad_request("parameter \"is_canceled\" is required"))?;
    let mut state = lock(&shared.state);
    let index = subscription_index(&state, &charge_id)
        .ok_or_else(|| ApiError::bad_request("CHARGE_ID_INVALID"))?;
    let subscription = &mut state.subscriptions[index];
    if subscription.user_id != user_id {
        return Err(ApiError::bad_request("USER_ID_INVALID"));
    }
    subscription.canceled = canceled;
    Ok(json!(true))
}

/// `getStarTransactions{offset, limit}`: the bot's Star transactions, oldest first.
fn get_star_transactions(shared: &Shared, params: &Params) -> ApiResult {
    let offset = params.i64("offset")?.unwrap_or(0).max(0);
    let limit = params.i64("limit")?.unwrap_or(100).clamp(1, 100);
    let state = lock(&shared.state);
    let page: Vec<Value> = state
        .star_transactions
        .iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(100))
        .cloned()
        .collect();
    Ok(json!({"transactions": page}))
}

// ---- control API over HTTP (demo, load generator) ------------------------------------------

#[derive(Deserialize)]
struct ControlUser {
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    language_code: Option<String>,
}

impl ControlUser {
    fn user(&self, id: i64) -> TestUser {
        TestUser::new(
            id,
            self.first_name.as_deref().unwrap_or("Sandbox user"),
            self.language_code.as_deref().unwrap_or("ru"),
        )
    }
}

#[derive(Deserialize)]
struct ControlSend {
    text: String,
    #[serde(flatten)]
    user: ControlUser,
}

#[derive(Deserialize)]
struct ControlPress {
    message_id: i64,
    data: String,
    #[serde(flatten)]
    user: ControlUser,
}

#[derive(Deserialize)]
struct ControlPay {
    message_id: i64,
    #[serde(flatten)]
    user: ControlUser,
}

fn emulator(shared: web::Data<Shared>) -> Emulator {
    Emulator {
        shared: shared.into_inner(),
    }
}

async fn control_send(
    shared: web::Data<Shared>,
    id: web::Path<i64>,
    body: web::Json<ControlSend>,
) -> HttpResponse {
    let handle = emulator(shared);
    let message_id = handle.send_text(&body.user.user(*id), &body.text);
    HttpResponse::Ok().json(json!({"message_id": message_id}))
}

async fn control_press(
    shared: web::Data<Shared>,
    id: web::Path<i64>,
    body: web::Json<ControlPress>,
) -> HttpResponse {
    let handle = emulator(shared);
    match handle.press(&body.user.user(*id), body.message_id, &body.data) {
        Ok(query_id) => HttpResponse::Ok().json(json!({"callback_query_id": query_id})),
        Err(error) => HttpResponse::BadRequest().json(json!({"error": error.to_string()})),
    }
}

async fn control_pay(
    shared: web::Data<Shared>,
    id: web::Path<i64>,
    body: web::Json<ControlPay>,
) -> HttpResponse {
    let handle = emulator(shared);
    match handle
        .pay_invoice(&body.user.user(*id), body.message_id)
        .await
    {
        Ok(outcome) => HttpResponse::Ok().json(outcome),
        Err(error) => HttpResponse::BadRequest().json(json!({"error": error.to_string()})),
    }
}

async fn control_charge_subscription(
    shared: web::Data<Shared>,
    charge_id: web::Path<String>,
) -> HttpResponse {
    match emulator(shared).charge_subscription(&charge_id) {
        Ok(charge) => HttpResponse::Ok().json(json!({"telegram_payment_charge_id": charge})),
        Err(error) => HttpResponse::BadRequest().json(json!({"error": error.to_string()})),
    }
}

async fn control_messages(shared: web::Data<Shared>, id: web::Path<i64>) -> HttpResponse {
    HttpResponse::Ok().json(emulator(shared).messages(*id))
}
