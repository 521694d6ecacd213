//! A stateful YooKassa API v3 emulator.
//!
//! It serves `POST /v3/payments`, `GET /v3/payments/{id}`, `POST /v3/payments/{id}/capture`,
//! `POST /v3/payments/{id}/cancel`, `POST /v3/refunds`, `GET /v3/refunds/{id}` and `GET /v3/me`
//! with YooKassa's Basic auth, `Idempotence-Key` rules and error shape; a checkout page at
//! `GET /checkout/{id}` (the `confirmation_url`) with Pay / Cancel buttons; and a control API
//! under `/sandbox/yookassa/` for tests and demos. Notifications are POSTed to the configured
//! webhook URL as `{"type":"notification","event":…,"object":…}`, optionally from a chosen
//! local address so the receiver's IP allow-list is exercised for real.
//!
//! Faults are scripted per request ([`Fault`]) and per notification ([`NotificationMode`]),
//! from Rust through [`Handle`] or over HTTP:
//!
//! | control endpoint | effect |
//! |---|---|
//! | `POST /sandbox/yookassa/payments/{id}/pay` | the payer pays (`succeeded`, or `waiting_for_capture` when `capture` was false) |
//! | `POST /sandbox/yookassa/payments/{id}/decline` (or `/cancel`), body `{"reason":"insufficient_funds"}` | canceled with that reason (default `general_decline`) |
//! | `POST /sandbox/yookassa/payments/{id}/expire` | canceled with `expired_on_confirmation` (`expired_on_capture` when waiting for capture) |
//! | `POST /sandbox/yookassa/expire-pending`, body `{"older_than_ms":0}` | expires every pending payment at least that old (default: past `confirmation_ttl`) |
//! | `POST /sandbox/yookassa/faults`, body `{"kind":"internal_error","times":2}` | next requests fail; kinds: `internal_error`, `internal_error_after_processing`, `too_many_requests`, `slow` (`delay_ms`), `wrong_amount` (`amount`) |
//! | `DELETE /sandbox/yookassa/faults` | clears scripted faults |
//! | `PUT /sandbox/yookassa/latency`, body `{"delay_ms":10000}` (`GET` reads it) | every API answer from now on is held back that long after the work is done (a slow YooKassa; 0 = none); adds to a `slow` fault |
//! | `POST /sandbox/yookassa/notification-modes`, body `{"kind":"late","delay_ms":500,"times":1}` | next notifications are `normal`, `duplicate`, `late`, `reordered` or `dropped` |
//! | `PUT /sandbox/yookassa/webhook`, body `{"url":"http://…"}` | sets (or with `null` clears) the webhook URL |
//! | `GET /sandbox/yookassa/{payments,refunds,requests,notifications}` | inspects the state, the request log and delivery attempts |
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let yookassa = sandbox::yookassa::spawn(sandbox::yookassa::Config::default()).await?;
//! let api_url = yookassa.api_url(); // http://127.0.0.1:<port>/v3
//! # let _ = api_url; Ok(()) }
//! ```

mod http;
pub mod model;
mod notify;
mod state;
mod validate;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_web::web;

use crate::server::{Listen, serve};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use model::Amount;
use state::{Outgoing, State};

/// One shop the emulator accepts: Basic-auth credentials and whether it is a test shop
/// (its objects then carry `"test": true`).
#[derive(Debug, Clone)]
pub struct Shop {
    pub shop_id: String,
    pub secret_key: String,
    pub test: bool,
    /// Whether YooKassa let this shop save payment methods (recurring charges); without it
    /// `save_payment_method` and `payment_method_id` get 403 "Forbidden to save payment
    /// method". On by default, as for a shop that asked its manager for autopayments.
    pub can_save_methods: bool,
}

impl Shop {
    pub fn new(shop_id: impl Into<String>, secret_key: impl Into<String>, test: bool) -> Self {
        Self {
            shop_id: shop_id.into(),
            secret_key: secret_key.into(),
            test,
            can_save_methods: true,
        }
    }

    /// The shop without the right to save payment methods.
    #[must_use]
    pub fn without_saved_methods(mut self) -> Self {
        self.can_save_methods = false;
        self
    }
}

impl Default for Shop {
    fn default() -> Self {
        Self::new("100500", "test_sandbox_secret", true)
    }
}

/// Emulator settings; `Config::default()` suits tests (port 0, one test shop, no webhook).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free one.
    pub bind: SocketAddr,
    /// Base URL used in `confirmation_url` (default: `http://<bound address>`).
    pub public_url: Option<String>,
    pub shops: Vec<Shop>,
    /// Where notifications go; `None` = notifications are recorded but not sent.
    pub webhook_url: Option<String>,
    /// Local source address for notification requests (e.g. 127.0.0.2).
    pub notify_from: Option<IpAddr>,
    /// How long a pending payment waits for the payer before `expired_on_confirmation`.
    pub confirmation_ttl: Duration,
    /// How often overdue pending payments are looked for.
    pub sweep_interval: Duration,
    /// How long an `Idempotence-Key` is remembered (YooKassa: 24 h).
    pub idempotence_ttl: Duration,
    /// Pauses between redeliveries after a non-200 answer (YooKassa retries for 24 h).
    pub redelivery: Vec<Duration>,
    /// How long a [`NotificationMode::Reordered`] notification waits for a later one to overtake it.
    pub reorder_hold: Duration,
    pub webhook_timeout: Duration,
    pub workers: usize,
    /// Every API answer is held back this long after the work is done, like a slow
    /// YooKassa; [`Handle::set_latency`] or `PUT /sandbox/yookassa/latency` change it.
    pub latency: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            shops: vec![Shop::default()],
            webhook_url: None,
            notify_from: None,
            confirmation_ttl: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(1),
            idempotence_ttl: Duration::from_secs(24 * 3600),
            redelivery: vec![
                Duration::from_millis(200),
                Duration::from_secs(2),
                Duration::from_secs(10),
            ],
            reorder_hold: Duration::from_secs(2),
            webhook_timeout: Duration::from_secs(5),
            workers: 2,
            latency: Duration::ZERO,
        }
    }
}

/// A scripted fault for the next API request(s), consumed in order, one per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer 500 without doing anything.
    InternalError,
    /// Do the work (create the payment, store the idempotence record), then answer 500:
    /// the caller cannot know that it succeeded.
    InternalErrorAfterProcessing,
    /// Answer 429 `too_many_requests` without doing anything.
    TooManyRequests,
    /// Do the work, then hold the answer back for `delay_ms`.
    Slow { delay_ms: u64 },
    /// Do the work, but answer with this `amount` in the object (a tampered answer).
    WrongAmount { amount: Amount },
}

impl Fault {
    pub fn slow(delay: Duration) -> Self {
        Self::Slow {
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// How the next notification(s) are delivered, consumed in order, one per notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NotificationMode {
    #[default]
    Normal,
    /// Sent twice in a row.
    Duplicate,
    /// Sent after `delay_ms`, so later notifications overtake it.
    Late { delay_ms: u64 },
    /// Held until the next notification has been sent (or `reorder_hold` passes).
    Reordered,
    /// Never sent.
    Dropped,
}

impl NotificationMode {
    pub fn late(delay: Duration) -> Self {
        Self::Late {
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// One API request as the emulator saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub idempotence_key: Option<String>,
    pub status: u16,
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The receiver answered 200.
    Delivered { status: u16 },
    /// The receiver answered something else; a redelivery is scheduled if any are left.
    Rejected { status: u16 },
    /// The request failed (connection refused, timeout, bad local address, …).
    Error { message: String },
    /// [`NotificationMode::Dropped`].
    Dropped,
    /// No webhook URL is configured.
    NoWebhook,
}

/// One delivery attempt of one notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// Per-notification sequence number (duplicates share it).
    pub seq: u64,
    pub event: String,
    pub object_id: String,
    pub attempt: u32,
    pub outcome: DeliveryOutcome,
    /// The exact JSON body sent.
    pub body: Value,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("payment {0} not found")]
    NotFound(String),
    #[error("payment {id} is {status}")]
    InvalidState { id: String, status: &'static str },
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the maps half-written in a way that matters
    // to an emulator, so keep serving.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the HTTP handlers, the notifier, the expiry sweeper and the [`Handle`].
pub(crate) struct Shared {
    config: Config,
    public_url: String,
    state: Mutex<State>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    webhook_url: Mutex<Option<String>>,
    deliveries: Mutex<Vec<Delivery>>,
    /// How long every API answer is held back (ms).
    latency_ms: AtomicU64,
}

impl Shared {
    fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }

    fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::Relaxed);
    }

    fn send(&self, notes: Vec<Outgoing>) {
        for note in notes {
            // The notifier only stops when the emulator does.
            let _ = self.outbox.send(note);
        }
    }

    fn take_fault(&self) -> Option<Fault> {
        lock(&self.state).faults.pop_front()
    }

    fn take_mode(&self) -> NotificationMode {
        lock(&self.state)
            .notification_modes
            .pop_front()
            .unwrap_or_default()
    }

    fn control<F>(&self, op: F) -> Result<Value, ControlError>
    where
        F: FnOnce(&mut State) -> Result<(Value, Outgoing), ControlError>,
    {
        let (body, note) = op(&mut lock(&self.state))?;
        self.send(vec![note]);
        Ok(body)
    }

    fn pay(&self, id: &str) -> Result<Value, ControlError> {
        self.control(|s| s.pay(id, Utc::now()))
    }

    fn decline(&self, id: &str, reason: &str) -> Result<Value, ControlError> {
        self.control(|s| s.decline(id, reason))
    }

    fn expire(&self, id: &str) -> Result<Value, ControlError> {
        self.control(|s| s.expire(id))
    }

    /// Expires pending payments created more than `older_than` ago (or whose deadline passed).
    fn expire_pending(&self, older_than: Option<Duration>) -> Vec<String> {
        let now = Utc::now();
        let cutoff = match older_than {
            Some(age) => {
                let ttl = chrono::Duration::from_std(self.config.confirmation_ttl)
                    .unwrap_or(chrono::Duration::MAX);
                let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
                // deadline = created + ttl, so "created <= now - age" is "deadline <= now - age + ttl".
                now.checked_sub_signed(age)
                    .and_then(|t| t.checked_add_signed(ttl))
                    .unwrap_or(now)
            }
            None => now,
        };
        let mut state = lock(&self.state);
        let ids = state.overdue(cutoff);
        let mut notes = Vec::new();
        for id in &ids {
            if let Ok((_, note)) = state.expire(id) {
                notes.push(note);
            }
        }
        drop(state);
        self.send(notes);
        ids
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
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let client = reqwest::Client::builder()
        .local_address(config.notify_from)
        .timeout(config.webhook_timeout)
        .user_agent("YooKassa-sandbox")
        .build()
        .map_err(std::io::Error::other)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let workers = config.workers.max(1);
    let shared = Arc::new(Shared {
        webhook_url: Mutex::new(config.webhook_url.clone()),
        latency_ms: AtomicU64::new(u64::try_from(config.latency.as_millis()).unwrap_or(u64::MAX)),
        config,
        public_url,
        state: Mutex::new(State::default()),
        outbox: tx,
        deliveries: Mutex::new(Vec::new()),
    });

    let data = web::Data::from(shared.clone());
    let running = serve("yookassa", Listen::Socket(listener), workers, move |cfg| {
        cfg.app_data(data.clone());
        http::routes(cfg);
    })?;
    let tasks = vec![
        running.task,
        tokio::spawn(notify::run(shared.clone(), client, rx)),
        tokio::spawn(sweep(shared.clone())),
    ];
    tracing::info!(%addr, "yookassa emulator listening");
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
        shared.expire_pending(None);
    }
}

impl Handle {
    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The value for `YOOKASSA_API_URL`: `http://127.0.0.1:<port>/v3`.
    pub fn api_url(&self) -> String {
        format!("{}/v3", self.base_url())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The first configured shop (the one tests usually authenticate as).
    pub fn shop(&self) -> Option<&Shop> {
        self.shared.config.shops.first()
    }

    pub fn set_webhook_url(&self, url: Option<String>) {
        *lock(&self.shared.webhook_url) = url;
    }

    /// The next `times` API requests fail with `fault`.
    pub fn push_fault(&self, fault: Fault, times: usize) {
        let mut state = lock(&self.shared.state);
        state.faults.extend(std::iter::repeat_n(fault, times));
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.state).faults.clear();
    }

    /// From now on every API answer is held back `latency` after the work is done (a slow
    /// YooKassa); `Duration::ZERO` answers at once again. Requests already waiting keep
    /// their delay.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.set_latency(latency);
    }

    pub fn latency(&self) -> Duration {
        self.shared.latency()
    }

    /// The next `times` notifications are delivered in `mode`.
    pub fn push_notification_mode(&self, mode: NotificationMode, times: usize) {
        let mut state = lock(&self.shared.state);
        state
            .notification_modes
            .extend(std::iter::repeat_n(mode, times));
    }

    /// The payer pays on the checkout page.
    pub fn pay(&self, payment_id: &str) -> Result<Value, ControlError> {
        self.shared.pay(payment_id)
    }

    /// The payment is declined with a YooKassa cancellation reason (e.g. `insufficient_funds`).
    pub fn decline(&self, payment_id: &str, reason: &str) -> Result<Value, ControlError> {
        self.shared.decline(payment_id, reason)
    }

    /// Charges of saved method `method_id` are declined with `reason` (e.g.
    /// `insufficient_funds`, `card_expired`, `permission_revoked`), or with `None` succeed again.
    pub fn script_method(
        &self,
        method_id: &str,
        decline: Option<&str>,
    ) -> Result<(), ControlError> {
        lock(&self.shared.state).script_method(method_id, decline.map(str::to_owned))
    }

    /// The payer never came back: `expired_on_confirmation` (or `expired_on_capture`).
    pub fn expire(&self, payment_id: &str) -> Result<Value, ControlError> {
        self.shared.expire(payment_id)
    }

    /// Expires every pending payment created at least `older_than` ago; returns their ids.
    pub fn expire_pending(&self, older_than: Duration) -> Vec<String> {
        self.shared.expire_pending(Some(older_than))
    }

    pub fn payment(&self, payment_id: &str) -> Option<Value> {
        let state = lock(&self.shared.state);
        state
            .payments
            .get(payment_id)
            .and_then(|p| serde_json::to_value(&p.object).ok())
    }

    /// Every payment, in creation order.
    pub fn payments(&self) -> Vec<Value> {
        lock(&self.shared.state).payments_json()
    }

    pub fn refunds(&self) -> Vec<Value> {
        lock(&self.shared.state).refunds_json()
    }

    /// Every API request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.state).requests.clone()
    }

    /// Every notification delivery attempt so far.
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
