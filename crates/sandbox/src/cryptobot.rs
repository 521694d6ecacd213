//! A stateful Crypto Pay API (@CryptoBot) emulator (shared/reference/external-apis.md §5).
//!
//! It serves `/api/{method}` (GET with a query string, or POST with JSON or a form) for
//! `getMe`, `createInvoice`, `getInvoices`, `deleteInvoice`, `transfer`, `getBalance` and
//! `getExchangeRates`, every call authenticated by the `Crypto-Pay-API-Token` header; answers
//! are `{"ok":true,"result":…}` or `{"ok":false,"error":{"code":…,"name":…}}` with the code as
//! the HTTP status (`UNAUTHORIZED` 401, `METHOD_NOT_FOUND` 405, `<PARAM>_INVALID` 400,
//! `INSUFFICIENT_FUNDS` 400 for a transfer the app balance cannot cover). Where §5 is silent
//! the emulator is strict: an amount must be a decimal string within the asset's precision,
//! `count` 1–1000, `status` `active` or `paid`.
//!
//! Paying an invoice credits the app balance with the paid amount less the fee
//! ([`Config::fee_bps`], Crypto Pay's 3 %) and POSTs `{"update_id","update_type":
//! "invoice_paid","request_date","payload":<Invoice>}` to the webhook URL with
//! `crypto-pay-api-signature` = hex(HMAC-SHA256(key = SHA256(token), raw body)); a non-200
//! answer is redelivered on [`Config::redelivery`]. Invoices with `expires_in` expire when it
//! passes (no update is sent for that, as in the real API).
//!
//! | control endpoint | effect |
//! |---|---|
//! | `POST /sandbox/cryptobot/invoices/{id}/pay`, body `{"asset":"TON"}` (optional) | the payer pays (a fiat invoice in that asset, default its first accepted one) |
//! | `POST /sandbox/cryptobot/invoices/{id}/expire` | the invoice expires |
//! | `PUT /sandbox/cryptobot/balance`, body `{"asset":"USDT","available":"12.5"}` | sets the app balance of an asset |
//! | `POST /sandbox/cryptobot/notification-modes`, body `{"kind":"late","delay_ms":500,"times":1}` | next updates are `normal`, `duplicate`, `late` or `dropped` |
//! | `POST /sandbox/cryptobot/faults`, body `{"kind":"internal_error","times":2}` / `DELETE` | next API calls answer 500 (`internal_error_after_processing`: after doing the work) |
//! | `PUT /sandbox/cryptobot/webhook`, body `{"url":"http://…"}` | sets (or with `null` clears) the webhook URL |
//! | `GET /sandbox/cryptobot/{invoices,transfers,requests,deliveries}` | inspects the state, the request log and delivery attempts |
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let cryptobot = sandbox::cryptobot::spawn(sandbox::cryptobot::Config::default()).await?;
//! let api_url = cryptobot.api_url(); // http://127.0.0.1:<port>/api, the CRYPTOBOT_API_URL
//! # let _ = api_url; Ok(()) }
//! ```

mod http;
mod notify;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_web::web;
use chrono::Utc;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::server::{Listen, serve};
pub use notify::{SIGNATURE_HEADER, sign};
pub use state::{ASSETS, FIATS};
use state::{Outgoing, Prices, State};

/// The header every API call authenticates with.
pub const TOKEN_HEADER: &str = "Crypto-Pay-API-Token";

/// Emulator settings; `Config::default()` suits tests (port 0, no webhook, empty balance).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free one.
    pub bind: SocketAddr,
    /// The app token the API accepts and the webhooks are signed with.
    pub token: String,
    /// Where `invoice_paid` updates go; `None` = recorded, not sent.
    pub webhook_url: Option<String>,
    /// RUB per unit of each asset, for fiat invoices paid in crypto.
    pub rub_per_unit: BTreeMap<String, Decimal>,
    /// The fee taken from a paid invoice, in basis points (300 = 3 %).
    pub fee_bps: u32,
    /// The app balance per asset at start.
    pub balances: BTreeMap<String, Decimal>,
    /// Pauses between redeliveries after a non-200 answer (the real API retries for 3 days).
    pub redelivery: Vec<Duration>,
    /// How often overdue invoices are expired.
    pub sweep_interval: Duration,
    pub webhook_timeout: Duration,
    pub workers: usize,
}

/// The test token (`<app id>:<secret>`, the shape @CryptoBot issues).
pub const SANDBOX_TOKEN: &str = "7777:AAsandboxCryptoPayToken";

impl Default for Config {
    fn default() -> Self {
        let rub_per_unit = [
            ("USDT", 90_i64, 0),
            ("USDC", 90, 0),
            ("TON", 250, 0),
            ("BTC", 9_000_000, 0),
            ("ETH", 300_000, 0),
            ("LTC", 8_000, 0),
            ("BNB", 60_000, 0),
            ("TRX", 25, 0),
        ]
        .into_iter()
        .map(|(asset, units, scale)| (asset.to_owned(), Decimal::new(units, scale)))
        .collect();
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: SANDBOX_TOKEN.to_owned(),
            webhook_url: None,
            rub_per_unit,
            fee_bps: 300,
            balances: BTreeMap::new(),
            redelivery: vec![
                Duration::from_millis(200),
                Duration::from_secs(2),
                Duration::from_secs(10),
            ],
            sweep_interval: Duration::from_secs(1),
            webhook_timeout: Duration::from_secs(5),
            workers: 2,
        }
    }
}

/// A scripted fault for the next API call(s), one per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer 500 without doing anything.
    InternalError,
    /// Do the work, then answer 500: the caller cannot know that it happened.
    InternalErrorAfterProcessing,
}

/// How the next update(s) are delivered, one per update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NotificationMode {
    #[default]
    Normal,
    /// Sent twice (the same body and signature).
    Duplicate,
    /// Sent after `delay_ms`.
    Late { delay_ms: u64 },
    /// Never sent.
    Dropped,
}

/// One API call as the emulator saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    pub http_method: String,
    pub method: String,
    pub status: u16,
    /// The error name of a refused call.
    pub error: Option<String>,
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeliveryOutcome {
    Delivered { status: u16 },
    Rejected { status: u16 },
    Error { message: String },
    Dropped,
    NoWebhook,
}

/// One delivery attempt of one update.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub update_id: i64,
    pub invoice_id: i64,
    pub attempt: u32,
    pub outcome: DeliveryOutcome,
    /// The exact body sent, as text, and its signature.
    pub body: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("invoice {0} not found")]
    NotFound(i64),
    #[error("invoice {id} is {status}")]
    NotActive { id: i64, status: String },
    #[error("asset {0} is not accepted by this invoice")]
    NotAccepted(String),
    #[error("no exchange rate for this invoice")]
    NoRate,
    #[error("{0} is not an asset of the emulator")]
    UnknownAsset(String),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is plain maps; a panicking handler cannot leave it half-written in a way that
    // matters to an emulator, so keep serving.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Shared {
    config: Config,
    prices: Prices,
    state: Mutex<State>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    webhook_url: Mutex<Option<String>>,
    deliveries: Mutex<Vec<Delivery>>,
}

impl Shared {
    fn pay(&self, id: i64, asset: Option<&str>) -> Result<Value, ControlError> {
        let (answer, note) = lock(&self.state).pay(id, asset, &self.prices, Utc::now())?;
        // The notifier only stops when the emulator does.
        let _ = self.outbox.send(note);
        Ok(answer)
    }

    fn set_balance(&self, asset: &str, available: Decimal) -> Result<(), ControlError> {
        if state::asset_decimals(asset).is_none() {
            return Err(ControlError::UnknownAsset(asset.to_owned()));
        }
        lock(&self.state)
            .balances
            .insert(asset.to_owned(), available);
        Ok(())
    }

    fn take_mode(&self) -> NotificationMode {
        lock(&self.state)
            .notification_modes
            .pop_front()
            .unwrap_or_default()
    }

    fn record_delivery(&self, delivery: Delivery) {
        lock(&self.deliveries).push(delivery);
    }
}

/// A running emulator. Dropping it stops the server and its background tasks.
pub struct Handle {
    shared: Arc<Shared>,
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
    let client = reqwest::Client::builder()
        .timeout(config.webhook_timeout)
        .user_agent("CryptoPay-sandbox")
        .build()
        .map_err(std::io::Error::other)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let workers = config.workers.max(1);
    let shared = Arc::new(Shared {
        prices: Prices {
            rub_per_unit: config.rub_per_unit.clone(),
            fee_bps: config.fee_bps,
        },
        state: Mutex::new(State::new(config.balances.clone())),
        webhook_url: Mutex::new(config.webhook_url.clone()),
        config,
        outbox: tx,
        deliveries: Mutex::new(Vec::new()),
    });
    let data = web::Data::from(shared.clone());
    let running = serve("cryptobot", Listen::Socket(listener), workers, move |cfg| {
        cfg.app_data(data.clone());
        http::routes(cfg);
    })?;
    let tasks = vec![
        running.task,
        tokio::spawn(notify::run(shared.clone(), client, rx)),
        tokio::spawn(sweep(shared.clone())),
    ];
    tracing::info!(%addr, "cryptobot emulator listening");
    Ok(Handle {
        shared,
        addr,
        server: running.handle,
        tasks,
    })
}

async fn sweep(shared: Arc<Shared>) {
    let mut tick =
        tokio::time::interval(shared.config.sweep_interval.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        lock(&shared.state).expire_due(Utc::now());
    }
}

impl Handle {
    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The value for `CRYPTOBOT_API_URL`: `http://127.0.0.1:<port>/api`.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base_url())
    }

    pub fn token(&self) -> &str {
        &self.shared.config.token
    }

    pub fn set_webhook_url(&self, url: Option<String>) {
        *lock(&self.shared.webhook_url) = url;
    }

    /// The next `times` API calls fail with `fault`.
    pub fn push_fault(&self, fault: Fault, times: usize) {
        lock(&self.shared.state)
            .faults
            .extend(std::iter::repeat_n(fault, times));
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.state).faults.clear();
    }

    /// The next `times` updates are delivered in `mode`.
    pub fn push_notification_mode(&self, mode: NotificationMode, times: usize) {
        lock(&self.shared.state)
            .notification_modes
            .extend(std::iter::repeat_n(mode, times));
    }

    /// The payer pays the invoice (a fiat one in `asset`, default its first accepted asset).
    pub fn pay(&self, invoice_id: i64, asset: Option<&str>) -> Result<Value, ControlError> {
        self.shared.pay(invoice_id, asset)
    }

    /// The invoice expires now.
    pub fn expire(&self, invoice_id: i64) -> Result<Value, ControlError> {
        lock(&self.shared.state).expire(invoice_id)
    }

    /// Sets the app's available balance of `asset`.
    pub fn set_balance(&self, asset: &str, available: Decimal) -> Result<(), ControlError> {
        self.shared.set_balance(asset, available)
    }

    /// The app's available balance of `asset`.
    pub fn balance(&self, asset: &str) -> Decimal {
        lock(&self.shared.state)
            .balances
            .get(asset)
            .copied()
            .unwrap_or_default()
    }

    pub fn invoice(&self, invoice_id: i64) -> Option<Value> {
        lock(&self.shared.state).invoice(invoice_id)
    }

    /// Every invoice, oldest first.
    pub fn invoices(&self) -> Vec<Value> {
        lock(&self.shared.state).invoices()
    }

    /// Every transfer made, in order.
    pub fn transfers(&self) -> Vec<Value> {
        lock(&self.shared.state).transfers()
    }

    /// Every API call so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.state).requests.clone()
    }

    /// Every update delivery attempt so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.shared.deliveries).clone()
    }

    /// Waits until at least `count` delivery attempts are recorded (or `timeout` passes) and
    /// returns all of them.
    pub async fn wait_for_deliveries(&self, count: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let deliveries = self.deliveries();
            if deliveries.len() >= count || tokio::time::Instant::now() >= deadline {
                return deliveries;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(self) {
        self.server.stop(false).await;
    }
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
