//! Shared set-up: a fresh database, the YooKassa emulator, payments created on both sides,
//! notifications stored the way the gateway stores them, and running worker instances.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use domain::entities::{outbox, payments, provider_notifications, system_logs, tariffs, users};
use domain::money::{Currency, Money};
use domain::{IdempotencyKey, PaymentId, PaymentStatus};
use messaging::events::ProviderNotificationReceived;
use messaging::{Envelope, Handler, HandlerError};
use payment_core::providers::yookassa::YooKassaSettings;
use payment_core::{
    CreatePaymentRequest, CreatedPayment, HttpRetry, PaymentProvider, PaymentRef, PaymentService,
    PaymentSettings, ProviderDescriptor, ProviderError, ProviderId, ProviderPayment, StatusQuery,
    WebhookError, WebhookNotification, WebhookRequest,
};
use payment_worker::{NotificationHandler, ServiceSettings};
use sandbox::yookassa::{self, Config, Handle};
use sea_orm::{
    ActiveModelTrait, ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, DatabaseConnection,
    EntityTrait, QueryFilter, TransactionTrait,
};
use service_kit::Shutdown;
use service_kit::ops::RunningServer;
use service_kit::runtime::Infra;
use service_kit::settings::{Source, load_common};
use testkit::TestDb;
use uuid::Uuid;

pub const PRICE: i64 = 19_900;

/// A database and a YooKassa test shop.
pub struct Env {
    pub db: TestDb,
    pub shop: Handle,
    /// Talks to the emulator as the gateway would (to create payments).
    pub service: PaymentService,
}

pub async fn env() -> Env {
    env_on(TestDb::new().await).await
}

/// The embedded mode's database.
pub async fn sqlite_env() -> Env {
    env_on(TestDb::sqlite().await).await
}

async fn env_on(db: TestDb) -> Env {
    let shop = yookassa::spawn(Config::default())
        .await
        .expect("emulator starts");
    let service = PaymentService::from_settings(&PaymentSettings {
        yookassa: Some(yookassa_settings(&shop)),
        ..PaymentSettings::default()
    })
    .expect("service");
    Env { db, shop, service }
}

/// Fast provider retries: two attempts per look-up, so a scripted 500 reaches the worker.
pub fn yookassa_settings(shop: &Handle) -> YooKassaSettings {
    let mut s = YooKassaSettings::new("100500", "test_sandbox_secret");
    s.api_url = shop.api_url();
    s.test_mode = true;
    s.retry = HttpRetry {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
    };
    s
}

/// Worker settings for tests: port 0, short retry delays, reconciliation off unless `extra`
/// turns it on, the emulator as YooKassa.
pub fn worker_settings(shop: &Handle, extra: &[(&str, &str)]) -> ServiceSettings {
    let vars: Vec<(String, String)> = [
        ("WORKER_BIND", "127.0.0.1:0"),
        ("WORKER_RETRY_DELAYS_MS", "200,400,800,1600"),
        ("RECONCILE_ENABLED", "false"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let mut settings =
        ServiceSettings::load(&Source::Map(vars.into_iter().collect())).expect("settings");
    settings.payments.yookassa = Some(yookassa_settings(shop));
    settings
}

/// A user and a tariff of our own.
pub async fn user_and_tariff(db: &DatabaseConnection) -> (users::Model, tariffs::Model) {
    let n = (Uuid::now_v7().as_u128() % 1_000_000_000_000) as i64 + 1;
    let user = users::ActiveModel {
        id: NotSet,
        telegram_id: Set(n),
        username: Set(Some(format!("u{n}"))),
        first_name: Set(None),
        language_code: Set(Some("ru".into())),
        created_at: Set(Utc::now()),
    }
    .insert(db)
    .await
    .expect("user");
    let tariff = tariffs::ActiveModel {
        id: NotSet,
        code: Set(format!("month_1_{n}")),
        title: Set("1 month".into()),
        duration_days: Set(30),
        data_limit_bytes: Set(None),
        price_rub_minor: Set(Some(PRICE)),
        price_xtr: Set(Some(150)),
        price_usdt_minor: Set(Some(2_500_000)),
        active: Set(true),
        sort_order: Set(1),
    }
    .insert(db)
    .await
    .expect("tariff");
    (user, tariff)
}

/// A pending payment row (no provider call).
pub async fn insert_payment(
    db: &DatabaseConnection,
    id: PaymentId,
    amount: Money,
    provider_payment_id: Option<String>,
    tweak: impl FnOnce(&mut payments::ActiveModel),
) -> payments::Model {
    let (user, tariff) = user_and_tariff(db).await;
    let now = Utc::now();
    let mut row = payments::ActiveModel {
        id: Set(id),
        user_id: Set(user.id),
        tariff_id: Set(tariff.id),
        provider: Set(domain::ProviderId::from_static("yookassa")),
        amount_minor: Set(amount.minor()),
        currency: Set(amount.currency()),
        status: Set(PaymentStatus::Pending),
        provider_payment_id: Set(provider_payment_id),
        idempotency_key: Set(IdempotencyKey::random().into_inner()),
        confirmation_url: Set(None),
        failure_reason: Set(None),
        metadata: Set(serde_json::json!({})),
        created_at: Set(now),
        updated_at: Set(now),
        completed_at: Set(None),
        expires_at: Set(None),
        refunded_minor: Set(0),
        flagged: Set(false),
        flag_reason: Set(None),
        next_check_at: Set(None),
        check_attempts: Set(0),
    };
    tweak(&mut row);
    row.insert(db).await.expect("payment")
}

/// A pending `PRICE` RUB payment row with this provider id (for scripted answers).
pub async fn pending_payment(
    db: &DatabaseConnection,
    provider_payment_id: &str,
) -> payments::Model {
    insert_payment(
        db,
        PaymentId::new(),
        Money::new(PRICE, Currency::Rub),
        Some(provider_payment_id.to_owned()),
        |_| {},
    )
    .await
}

/// A payment created on the emulator for `PRICE` and stored pending on our side, with our
/// amount given by `ours` (a different one makes a mismatch).
pub async fn payment_with(
    env: &Env,
    ours: Money,
    tweak: impl FnOnce(&mut payments::ActiveModel),
) -> payments::Model {
    let payment_id = PaymentId::new();
    let created = env
        .service
        .create_payment(
            payment_core::providers::yookassa::ID,
            &CreatePaymentRequest {
                payment_id,
                amount: Money::new(PRICE, Currency::Rub),
                description: "VPN, 30 days".into(),
                metadata: Default::default(),
                return_url: None,
                receipt_email: None,
                recurring: Default::default(),
            },
        )
        .await
        .expect("created on the emulator");
    insert_payment(
        &env.db.conn,
        payment_id,
        ours,
        Some(created.provider_payment_id),
        tweak,
    )
    .await
}

pub async fn payment(env: &Env) -> payments::Model {
    payment_with(env, Money::new(PRICE, Currency::Rub), |_| {}).await
}

pub fn ppid(payment: &payments::Model) -> &str {
    payment.provider_payment_id.as_deref().expect("provider id")
}

/// Stores a notification about `payment` the way the gateway does (inbox row + outbox event,
/// one transaction); the body claims `claimed`. Returns the envelope.
pub async fn notify(
    db: &DatabaseConnection,
    payment: &payments::Model,
    claimed: &str,
    dedupe_suffix: &str,
) -> Envelope {
    let provider_payment_id = payment.provider_payment_id.clone();
    let body = serde_json::json!({
        "type": "notification",
        "event": format!("payment.{claimed}"),
        "object": {"id": provider_payment_id, "status": claimed, "paid": claimed == "succeeded",
                   "amount": {"value": "199.00", "currency": "RUB"},
                   "metadata": {"payment_id": payment.id.to_string()}},
    });
    store_notification(
        db,
        &payment.provider,
        &format!(
            "payment.{claimed}:{}{dedupe_suffix}",
            provider_payment_id.as_deref().unwrap_or("-")
        ),
        provider_payment_id,
        Some(payment.id),
        body.to_string(),
    )
    .await
}

pub async fn store_notification(
    db: &DatabaseConnection,
    provider: &ProviderId,
    dedupe_key: &str,
    provider_payment_id: Option<String>,
    payment_id: Option<PaymentId>,
    body: String,
) -> Envelope {
    let tx = db.begin().await.expect("begin");
    let row = provider_notifications::ActiveModel {
        id: NotSet,
        provider: Set(provider.clone()),
        dedupe_key: Set(dedupe_key.to_owned()),
        source: Set("webhook".into()),
        peer: Set(Some("185.71.76.1".into())),
        body: Set(body),
        provider_payment_id: Set(provider_payment_id),
        payment_id: Set(payment_id),
        received_at: Set(Utc::now()),
        processed_at: Set(None),
        outcome: Set(None),
    }
    .insert(&tx)
    .await
    .expect("inbox row");
    let event = ProviderNotificationReceived {
        provider: provider.clone(),
        notification_id: row.id,
        dedupe_key: dedupe_key.to_owned(),
        payment_id,
    };
    let envelope =
        Envelope::new(&event, payment_id.map_or(Uuid::nil(), Uuid::from), None).expect("envelope");
    messaging::outbox::enqueue(&tx, &envelope)
        .await
        .expect("outbox");
    tx.commit().await.expect("commit");
    envelope
}

/// Runs `handler` on `envelope` as the consumer runner does: its outside step with no
/// transaction open, then the rest in one transaction.
pub async fn deliver(
    handler: &NotificationHandler,
    db: &DatabaseConnection,
    envelope: &Envelope,
) -> Result<(), HandlerError> {
    let prepared = if handler.prepares() {
        handler.prepare(envelope).await?
    } else {
        messaging::Prepared::none()
    };
    let tx = db.begin().await.expect("begin");
    match handler.handle(&tx, envelope, prepared).await {
        Ok(()) => {
            tx.commit().await.expect("commit");
            Ok(())
        }
        Err(error) => {
            tx.rollback().await.expect("rollback");
            Err(error)
        }
    }
}

/// A handler asking `env`'s emulator, reading `env`'s database before its transaction.
pub fn handler_for(env: &Env) -> NotificationHandler {
    let service = PaymentService::from_settings(&PaymentSettings {
        yookassa: Some(yookassa_settings(&env.shop)),
        ..PaymentSettings::default()
    })
    .expect("service");
    // YooKassa only: no provider here reads the database.
    NotificationHandler::new(Arc::new(service), env.db.conn.clone())
}

pub async fn reload(db: &DatabaseConnection, id: PaymentId) -> payments::Model {
    payments::Entity::find_by_id(id)
        .one(db)
        .await
        .expect("query")
        .expect("payment")
}

pub async fn inbox_row(
    db: &DatabaseConnection,
    envelope: &Envelope,
) -> provider_notifications::Model {
    let event: ProviderNotificationReceived = envelope.decode().expect("event");
    provider_notifications::Entity::find_by_id(event.notification_id)
        .one(db)
        .await
        .expect("query")
        .expect("inbox row")
}

/// Outbox envelopes of `event_type` about `payment_id`.
pub async fn events(
    db: &DatabaseConnection,
    event_type: &str,
    payment_id: PaymentId,
) -> Vec<Envelope> {
    outbox::Entity::find()
        .filter(outbox::Column::RoutingKey.eq(event_type))
        .all(db)
        .await
        .expect("outbox")
        .into_iter()
        .map(|row| Envelope::from_json(row.envelope.as_bytes()).expect("envelope"))
        .filter(|e| e.correlation_id == Uuid::from(payment_id))
        .collect()
}

pub async fn logs(
    db: &DatabaseConnection,
    event_type: &str,
    payment_id: PaymentId,
) -> Vec<system_logs::Model> {
    system_logs::Entity::find()
        .filter(system_logs::Column::EventType.eq(event_type))
        .filter(system_logs::Column::PaymentId.eq(payment_id))
        .all(db)
        .await
        .expect("logs")
}

/// GET requests the emulator received for this payment, with their HTTP status.
pub fn fetches(shop: &Handle, payment: &payments::Model) -> Vec<u16> {
    let path = format!("/v3/payments/{}", ppid(payment));
    shop.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .map(|r| r.status)
        .collect()
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One worker instance as its own "process": its own infrastructure (pool, broker
/// connection, outbox relay) on the shared database and broker prefix.
pub struct RunningWorker {
    pub infra: Infra,
    pub server: RunningServer,
    pub shutdown: Shutdown,
}

pub async fn start_worker(db_url: &str, prefix: &str, settings: &ServiceSettings) -> RunningWorker {
    let amqp = testkit::amqp_url();
    let common = load_common(&Source::map([
        ("DATABASE_URL", db_url),
        ("AMQP_URL", amqp.as_str()),
        ("AMQP_PREFIX", prefix),
    ]))
    .expect("common settings");
    let infra = Infra::connect("payment-worker-test", &common)
        .await
        .expect("infrastructure");
    // Declared before anything is published, so no notification is unroutable.
    infra
        .bus
        .declare(&payment_worker::consumer_spec(settings))
        .await
        .expect("declare");
    // Stands in for marzban-sync and the bot, so the worker's payment events are routable.
    infra.bus.declare(&sink()).await.expect("declare the sink");
    let shutdown = Shutdown::new();
    let server = payment_worker::start(settings, &infra, shutdown.clone()).expect("start");
    RunningWorker {
        infra,
        server,
        shutdown,
    }
}

fn sink() -> messaging::ConsumerSpec {
    messaging::ConsumerSpec::new("sink", ["payment.#"])
}

/// Deletes what [`start_worker`] declared under `prefix` on RabbitMQ (call once every worker
/// on the prefix stopped), so test runs do not pile queues up on the broker.
pub async fn delete_topology(prefix: &str) {
    let url = testkit::amqp_url();
    // The sink first: connecting declares the events exchange, which the system clean-up
    // below deletes last (the other way round left one exchange per test on the broker).
    let bus = messaging::RabbitBus::connect(messaging::RabbitConfig::new(url.as_str(), prefix))
        .await
        .expect("broker");
    bus.delete_consumer(&sink()).await.expect("delete the sink");
    bus.close().await;
    service_kit::testing::delete_system_topology_with(
        &url,
        prefix,
        &[messaging::RetryPolicy::from_millis([200, 400, 800, 1600])],
    )
    .await
    .expect("delete the system queues and the exchange");
}

impl RunningWorker {
    pub fn nudge(&self) {
        self.infra.outbox_nudge.notify_one();
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.server.task)
            .await
            .expect("worker stops in time")
            .expect("join")
            .expect("worker ran cleanly");
        self.infra.stop().await;
    }
}

/// A provider standing in for YooKassa whose status look-ups answer what the test says (for
/// sequences YooKassa would never produce, like `pending` after `succeeded`).
#[derive(Clone, Default)]
pub struct Scripted {
    answers: Arc<Mutex<VecDeque<Result<ProviderPayment, ProviderError>>>>,
}

impl Scripted {
    pub fn push(&self, answer: Result<ProviderPayment, ProviderError>) {
        self.answers.lock().unwrap().push_back(answer);
    }
}

/// A provider answer about `payment`.
pub fn answer(payment: &payments::Model, status: PaymentStatus, refunded: i64) -> ProviderPayment {
    ProviderPayment {
        provider_payment_id: payment
            .provider_payment_id
            .clone()
            .unwrap_or_else(|| "pp".into()),
        status,
        amount: payment.amount(),
        refunded: Money::new(refunded, payment.currency),
        paid_at: matches!(
            status,
            PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
        )
        .then(Utc::now),
        failure_reason: matches!(status, PaymentStatus::Failed).then(|| "general_decline".into()),
        confirmation: None,
        test: true,
        saved_method: None,
    }
}

static SCRIPTED: ProviderDescriptor = ProviderDescriptor {
    id: payment_core::providers::yookassa::ID,
    title: "Scripted",
    currencies: &[Currency::Rub],
    supports_refunds: false,
};

#[async_trait]
impl PaymentProvider for Scripted {
    fn descriptor(&self) -> &ProviderDescriptor {
        &SCRIPTED
    }

    async fn current_status(
        &self,
        _query: StatusQuery<'_>,
    ) -> Result<ProviderPayment, ProviderError> {
        self.answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Err(ProviderError::InvalidRequest("no scripted answer".into())))
    }

    async fn create_payment(
        &self,
        _request: &CreatePaymentRequest,
    ) -> Result<CreatedPayment, ProviderError> {
        Err(ProviderError::Unsupported("create_payment"))
    }

    async fn get_payment_status(
        &self,
        _payment: &PaymentRef,
    ) -> Result<ProviderPayment, ProviderError> {
        Err(ProviderError::Unsupported("get_payment_status"))
    }

    async fn verify_webhook(&self, _request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
        Err(WebhookError::MalformedBody("scripted".into()))
    }

    async fn process_webhook(&self, _body: &[u8]) -> Result<WebhookNotification, WebhookError> {
        Err(WebhookError::MalformedBody("scripted".into()))
    }
}

pub fn scripted_handler(script: &Scripted, db: &DatabaseConnection) -> NotificationHandler {
    NotificationHandler::new(
        Arc::new(PaymentService::from_providers([
            Arc::new(script.clone()) as Arc<dyn PaymentProvider>
        ])),
        db.clone(),
    )
}
