//! The service end to end: `marzban_sync::start` on real PostgreSQL and RabbitMQ (a unique
//! prefix per test; its queues and exchange are deleted at the end), against the sandbox's
//! Marzban emulator. Events are published to the broker as the payment worker's relay would,
//! and `subscription.*` events are read back from a queue of the test's own.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::entities::{
    manual_grants, payments, subscription_grants, subscriptions, system_logs, tariffs, users,
};
use domain::money::Currency;
use domain::status::PaymentStatus;
use futures::StreamExt;
use marzban_sync::SubscriptionSync;
use marzban_sync::marzban::{CreateUser, MarzbanClient, MarzbanUsername};
use marzban_sync::{Service, ServiceSettings};
use messaging::events::{
    GrantActivated, GrantCreated, GrantRefused, PaymentCompleted, PaymentRefunded, PaymentSnapshot,
    SubscriptionActivated, SubscriptionRevoked,
};
use messaging::{Bus, ConsumerSpec, Envelope, RabbitBus, RabbitConfig};
use messaging::{Handler, HandlerError, Prepared};
use sandbox::marzban::{self as emulator, Fault, UserStatus, route};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, Statement,
    TransactionTrait,
};
use service_kit::runtime::Infra;
use service_kit::settings::{Source, load_common};
use testkit::TestDb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const GIB: i64 = 1 << 30;
const WAIT: Duration = Duration::from_secs(20);
/// Short delays so the retry tests finish quickly; 9 attempts in 3.6 s.
const RETRY_DELAYS_MS: &str = "100,200,300,400,500,600,700,800";

struct Harness {
    db: TestDb,
    emu: emulator::Handle,
    /// A client of our own, for the drift check and for setting up panel users.
    client: MarzbanClient,
    /// The service's bus, shared with the test for publishing and observing.
    bus: Arc<dyn Bus>,
    /// In RabbitMQ mode, a connection for deleting the test's queues at the end.
    rabbit: Option<RabbitBus>,
    infra: Option<Infra>,
    service: Option<Service>,
    observer: ConsumerSpec,
    events: mpsc::UnboundedReceiver<Envelope>,
    shutdown: CancellationToken,
    observer_stop: CancellationToken,
}

/// A paid payment as the worker would have stored it.
#[derive(Clone)]
struct Paid {
    id: domain::PaymentId,
    user_id: i64,
    telegram_id: i64,
    tariff: tariffs::Model,
    amount_minor: i64,
}

/// Which bus the service runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// RabbitMQ with a unique prefix, as deployed.
    Rabbit,
    /// The in-process bus of the single-process mode (still on PostgreSQL).
    InProcess,
}

impl Harness {
    /// [`Harness::start`], failing instead of hanging when the broker does not answer.
    async fn start_within(mode: Mode, tag: &str) -> Self {
        tokio::time::timeout(Duration::from_secs(60), Self::start(mode, tag))
            .await
            .expect("the service did not start within 60 s (is RabbitMQ answering?)")
    }

    async fn start(mode: Mode, tag: &str) -> Self {
        Self::start_with(mode, tag, emulator::Config::default(), "admin-password").await
    }

    /// The service against an emulator with `config`, logging in with `password`.
    async fn start_with(mode: Mode, tag: &str, config: emulator::Config, password: &str) -> Self {
        // `RUST_LOG=marzban_sync=debug cargo test ...` shows what the service did.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let db = TestDb::new().await;
        let emu = emulator::spawn(config).await.unwrap();
        let prefix = testkit::unique_prefix(tag);
        let amqp = testkit::amqp_url();
        let common = load_common(&Source::map([
            ("DATABASE_URL", db.url.as_str()),
            ("AMQP_URL", amqp.as_str()),
            ("AMQP_PREFIX", prefix.as_str()),
        ]))
        .unwrap();
        let (infra, rabbit) = match mode {
            Mode::Rabbit => {
                let infra = Infra::connect(marzban_sync::SERVICE, &common)
                    .await
                    .unwrap();
                let rabbit = RabbitBus::connect(RabbitConfig::new(amqp, prefix))
                    .await
                    .unwrap();
                (infra, Some(rabbit))
            }
            Mode::InProcess => (
                Infra::embedded(marzban_sync::SERVICE, &common)
                    .await
                    .unwrap(),
                None,
            ),
        };
        let bus = infra.bus.clone();

        // Stands in for the bot: receives every subscription.*, grant.activated and
        // grant.refused event.
        let observer = ConsumerSpec::new(
            "test-bot",
            vec![
                "subscription.#".to_owned(),
                "grant.activated".to_owned(),
                "grant.refused".to_owned(),
            ],
        );
        bus.declare(&observer).await.unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let observer_stop = CancellationToken::new();
        let mut stream = bus.subscribe(&observer, 16).await.unwrap();
        let stop = observer_stop.clone();
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    () = stop.cancelled() => break,
                    next = stream.next() => match next {
                        Some(Ok(delivery)) => delivery,
                        _ => break,
                    },
                };
                let envelope = Envelope::from_json(&delivery.message.body).unwrap();
                delivery.ack().await.unwrap();
                if tx.send(envelope).is_err() {
                    break;
                }
            }
        });

        let service_settings = settings_with(&emu, password);
        let client = MarzbanClient::new(marzban_settings(&emu)).unwrap();
        let shutdown = CancellationToken::new();
        let service = marzban_sync::start(&service_settings, &infra, shutdown.clone())
            .await
            .unwrap();
        Self {
            db,
            emu,
            client,
            bus,
            rabbit,
            infra: Some(infra),
            service: Some(service),
            observer,
            events,
            shutdown,
            observer_stop,
        }
    }

    /// Stops the service and deletes this test's queues and exchange.
    async fn finish(mut self) {
        self.shutdown.cancel();
        self.observer_stop.cancel();
        let service = self.service.take().unwrap();
        service.server.task.await.unwrap().unwrap();
        self.infra.take().unwrap().stop().await;
        if let Some(rabbit) = self.rabbit.take() {
            rabbit
                .delete_consumer(service.consumer_spec.as_ref().unwrap())
                .await
                .unwrap();
            // Start-up declared every system consumer's queues (the worker's and the bot's too).
            for consumer in messaging::topology::system_consumers() {
                rabbit.delete_consumer(&consumer).await.unwrap();
            }
            rabbit.delete_consumer(&self.observer).await.unwrap();
            rabbit.delete_exchange().await.unwrap();
            rabbit.close().await;
        }
    }

    fn stats(&self) -> &messaging::ConsumerStats {
        self.service
            .as_ref()
            .unwrap()
            .consumer_stats
            .as_deref()
            .unwrap()
    }

    async fn user(&self, telegram_id: i64) -> i64 {
        users::ActiveModel {
            id: NotSet,
            telegram_id: Set(telegram_id),
            username: Set(None),
            first_name: Set(Some("Test".to_owned())),
            language_code: Set(None),
            created_at: Set(Utc::now()),
        }
        .insert(&self.db.conn)
        .await
        .unwrap()
        .id
    }

    async fn tariff(&self, code: &str, days: i32, data_limit: Option<i64>) -> tariffs::Model {
        tariffs::ActiveModel {
            id: NotSet,
            code: Set(code.to_owned()),
            title: Set(code.to_owned()),
            duration_days: Set(days),
            data_limit_bytes: Set(data_limit),
            price_rub_minor: Set(Some(19_900)),
            price_xtr: Set(None),
            price_usdt_minor: Set(None),
            active: Set(true),
            sort_order: Set(0),
        }
        .insert(&self.db.conn)
        .await
        .unwrap()
    }

    async fn pay(&self, user_id: i64, tariff: &tariffs::Model) -> Paid {
        let id = domain::PaymentId::new();
        let now = Utc::now();
        payments::ActiveModel {
            id: Set(id),
            user_id: Set(user_id),
            tariff_id: Set(tariff.id),
            provider: Set(domain::ProviderId::from_static("yookassa")),
            amount_minor: Set(19_900),
            currency: Set(Currency::Rub),
            status: Set(PaymentStatus::Succeeded),
            provider_payment_id: Set(Some(id.to_string())),
            idempotency_key: Set(id.as_uuid().simple().to_string()),
            confirmation_url: Set(None),
            failure_reason: Set(None),
            metadata: Set(serde_json::json!({})),
            created_at: Set(now),
            updated_at: Set(now),
            completed_at: Set(Some(now)),
            expires_at: Set(None),
            refunded_minor: Set(0),
            flagged: Set(false),
            flag_reason: Set(None),
            next_check_at: Set(None),
            check_attempts: Set(0),
        }
        .insert(&self.db.conn)
        .await
        .unwrap();
        let user = users::Entity::find_by_id(user_id)
            .one(&self.db.conn)
            .await
            .unwrap()
            .unwrap();
        Paid {
            id,
            user_id,
            telegram_id: user.telegram_id,
            tariff: tariff.clone(),
            amount_minor: 19_900,
        }
    }

    /// An admin's grant of `days` to `user_id` as the gateway stores it, and its event.
    async fn manual_grant(&self, user_id: i64, days: i32) -> Envelope {
        self.grant_of(user_id, manual_grants::KIND_ADMIN, days, None)
            .await
    }

    /// A manual grant of `kind` as the gateway stores it, and its event.
    async fn grant_of(
        &self,
        user_id: i64,
        kind: &str,
        days: i32,
        data_limit_bytes: Option<i64>,
    ) -> Envelope {
        let row = manual_grants::ActiveModel {
            id: NotSet,
            idempotency_key: Set(format!("test:{kind}:{user_id}:{days}")),
            user_id: Set(user_id),
            kind: Set(kind.to_owned()),
            days: Set(days),
            data_limit_bytes: Set(data_limit_bytes),
            reason: Set("support".to_owned()),
            granted_by: Set(Some(42)),
            created_at: Set(Utc::now()),
        }
        .insert(&self.db.conn)
        .await
        .unwrap();
        let user = users::Entity::find_by_id(user_id)
            .one(&self.db.conn)
            .await
            .unwrap()
            .unwrap();
        let event = GrantCreated {
            grant_id: row.id,
            user_id,
            telegram_id: user.telegram_id,
            kind: row.kind,
            days,
        };
        Envelope::new(&event, uuid::Uuid::now_v7(), None).unwrap()
    }

    async fn publish(&self, envelope: &Envelope) {
        self.bus.publish_envelope(envelope).await.unwrap();
    }

    /// The next `subscription.*` event.
    async fn next_event(&mut self) -> Envelope {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("no subscription event in time")
            .unwrap()
    }

    /// Waits a little and checks that no further event arrived.
    async fn assert_no_more_events(&mut self) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        if let Ok(extra) = self.events.try_recv() {
            panic!("unexpected event {} {}", extra.event_type, extra.payload);
        }
    }

    async fn activated(&mut self) -> SubscriptionActivated {
        let envelope = self.next_event().await;
        envelope.decode().unwrap()
    }

    async fn subscription(&self, user_id: i64) -> subscriptions::Model {
        subscriptions::Entity::find()
            .filter(subscriptions::Column::UserId.eq(user_id))
            .one(&self.db.conn)
            .await
            .unwrap()
            .expect("a subscription")
    }

    async fn grants(&self) -> Vec<subscription_grants::Model> {
        subscription_grants::Entity::find()
            .all(&self.db.conn)
            .await
            .unwrap()
    }

    /// A second copy of the consumer's handler, as another marzban-sync process would run it
    /// (its own panel client, logged in, and its own in-memory turns).
    async fn other_process(&self) -> SubscriptionSync {
        let client = MarzbanClient::new(marzban_settings(&self.emu)).unwrap();
        client.login().await.unwrap();
        SubscriptionSync::new(std::sync::Arc::new(client), self.db.conn.clone())
    }

    /// What the consumer runner does with a prepared message: `handle` in a transaction,
    /// committed on success.
    async fn handle(
        &self,
        sync: &SubscriptionSync,
        envelope: &Envelope,
        prepared: Prepared,
    ) -> Result<(), HandlerError> {
        let tx = self.db.conn.begin().await.unwrap();
        let result = sync.handle(&tx, envelope, prepared).await;
        if result.is_ok() {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        result
    }

    /// Sessions of this test's database (other than the caller's) inside a transaction for
    /// more than 150 ms, or idle inside one for more than 50 ms, described.
    async fn open_transactions(&self) -> Vec<String> {
        let rows = self
            .db
            .conn
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT coalesce(state, '') || ' since ' || coalesce(xact_start::text, '') \
                        || ': ' || left(query, 100) AS what \
                 FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND (xact_start < clock_timestamp() - interval '150 milliseconds' \
                        OR (state LIKE 'idle in transaction%' \
                            AND state_change < clock_timestamp() - interval '50 milliseconds'))",
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|row| row.try_get::<String>("", "what").unwrap())
            .collect()
    }

    fn panel_user(&self, telegram_id: i64) -> emulator::UserState {
        self.emu
            .user(&format!("tg_{telegram_id}"))
            .expect("a panel user")
    }

    /// Waits until the consumer has settled `n` deliveries (handled or skipped).
    async fn settled(&self, n: u64) {
        wait_until(|| async {
            let stats = self.stats();
            stats.handled() + stats.duplicates() >= n
        })
        .await;
    }
}

fn marzban_settings(emu: &emulator::Handle) -> marzban_sync::marzban::MarzbanSettings {
    match settings_with(emu, "admin-password").panel {
        Some(marzban_sync::PanelSettings::Marzban(settings)) => settings,
        other => panic!("not Marzban: {other:?}"),
    }
}

fn settings_with(emu: &emulator::Handle, password: &str) -> ServiceSettings {
    let vars = [
        ("MARZBAN_SYNC_BIND", "127.0.0.1:0"),
        ("MARZBAN_URL", emu.base_url.as_str()),
        ("MARZBAN_USERNAME", "admin"),
        ("MARZBAN_PASSWORD", password),
        (
            "MARZBAN_PROXIES",
            r#"{"vless": {"flow": "xtls-rprx-vision"}}"#,
        ),
        ("MARZBAN_INBOUNDS", r#"{"vless": ["VLESS TCP REALITY"]}"#),
        ("MARZBAN_TIMEOUT_SECS", "2"),
        ("MARZBAN_DRIFT_CHECK_SECS", "0"),
        ("MARZBAN_SYNC_RETRY_DELAYS_MS", RETRY_DELAYS_MS),
    ];
    ServiceSettings::from_vars(
        &vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
    .unwrap()
}

fn snapshot(paid: &Paid) -> PaymentSnapshot {
    PaymentSnapshot {
        payment_id: paid.id,
        user_id: paid.user_id,
        telegram_id: paid.telegram_id,
        tariff_code: paid.tariff.code.clone(),
        provider: domain::ProviderId::from_static("yookassa"),
        amount_minor: paid.amount_minor,
        currency: "RUB".to_owned(),
    }
}

fn completed(paid: &Paid) -> Envelope {
    let event = PaymentCompleted {
        payment: snapshot(paid),
        paid_at: Utc::now(),
        processing_ms: 1_000,
    };
    Envelope::new(&event, paid.id, None).unwrap()
}

fn refunded(paid: &Paid, refunded_minor: i64, total_refunded_minor: i64) -> Envelope {
    let event = PaymentRefunded {
        payment: snapshot(paid),
        refunded_minor,
        total_refunded_minor,
    };
    Envelope::new(&event, paid.id, None).unwrap()
}

async fn wait_until<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn days(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

/// `t` is within a minute of `expected` (the handler picks its own `now`).
fn close_to(t: DateTime<Utc>, expected: DateTime<Utc>) -> bool {
    (t - expected).num_seconds().abs() < 60
}

async fn payment_completed_five_times_extends_once_and_announces_an_absolute_url(mut h: Harness) {
    let user = h.user(100_001).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let paid = h.pay(user, &month).await;

    // The same message three times (redelivery), then twice re-emitted with new event ids.
    let envelope = completed(&paid);
    for _ in 0..3 {
        h.publish(&envelope).await;
    }
    h.publish(&completed(&paid)).await;
    h.publish(&completed(&paid)).await;
    h.settled(5).await;

    let activated = h.activated().await.subscription;
    h.assert_no_more_events().await;
    assert_eq!(h.stats().handled() + h.stats().duplicates(), 5);

    let grants = h.grants().await;
    assert_eq!(grants.len(), 1, "one grant per payment");
    let grant = &grants[0];
    assert_eq!(grant.payment_id, Some(paid.id));
    assert_eq!(grant.days_granted, 30);
    assert!(close_to(grant.expires_at_after, Utc::now() + days(30)));

    let subscription = h.subscription(user).await;
    assert_eq!(subscription.expires_at, grant.expires_at_after);
    assert_eq!(subscription.marzban_username, "tg_100001");
    assert_eq!(subscription.data_limit_bytes, Some(100 * GIB));
    assert!(subscription.synced_at.is_some());

    let panel = h.panel_user(100_001);
    assert_eq!(panel.expire, Some(grant.expires_at_after.timestamp()));
    assert_eq!(panel.data_limit, Some(100 * GIB));
    assert_eq!(panel.status, UserStatus::Active);
    assert_eq!(h.emu.users().len(), 1);
    assert_eq!(h.emu.count(route::CREATE_USER), 1);
    assert_eq!(h.emu.count(route::MODIFY_USER), 0);
    let create = h.emu.requests_to(route::CREATE_USER)[0]
        .body
        .clone()
        .unwrap();
    assert_eq!(
        create["proxies"],
        serde_json::json!({"vless": {"flow": "xtls-rprx-vision"}})
    );
    assert_eq!(
        create["inbounds"],
        serde_json::json!({"vless": ["VLESS TCP REALITY"]})
    );
    assert_eq!(create["expire"], grant.expires_at_after.timestamp());

    // subscription.activated: the new expiry and an absolute link.
    assert_eq!(activated.payment_id, paid.id);
    assert_eq!(activated.telegram_id, 100_001);
    assert_eq!(activated.marzban_username, "tg_100001");
    assert_eq!(activated.expires_at, grant.expires_at_after);
    assert!(
        activated
            .subscription_url
            .starts_with(&format!("{}/sub/", h.emu.base_url)),
        "{}",
        activated.subscription_url
    );
    assert_eq!(
        subscription.subscription_url.as_deref(),
        Some(activated.subscription_url.as_str())
    );
    h.finish().await;
}

async fn two_payments_stack_and_keep_the_customers_key(mut h: Harness) {
    let user = h.user(100_002).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let quarter = h.tariff("month_3", 90, None).await;

    let first = h.pay(user, &month).await;
    h.publish(&completed(&first)).await;
    let first_expiry = h.activated().await.subscription.expires_at;
    let key = h.emu.vless_id("tg_100002").unwrap();

    let second = h.pay(user, &quarter).await;
    h.publish(&completed(&second)).await;
    let activated = h.activated().await.subscription;
    assert_eq!(activated.payment_id, second.id);
    assert_eq!(
        activated.expires_at,
        first_expiry + days(90),
        "the durations stack"
    );

    let subscription = h.subscription(user).await;
    assert_eq!(subscription.expires_at, first_expiry + days(90));
    assert_eq!(
        subscription.data_limit_bytes, None,
        "the 3-month tariff is unlimited"
    );
    let panel = h.panel_user(100_002);
    assert_eq!(panel.expire, Some((first_expiry + days(90)).timestamp()));
    assert_eq!(panel.data_limit, None);
    assert_eq!(
        panel.vless_id(),
        Some(key.as_str()),
        "the customer's key survives"
    );

    // The extension sent only absolute values, never `proxies`.
    let modify = h.emu.requests_to(route::MODIFY_USER)[0]
        .body
        .clone()
        .unwrap();
    assert_eq!(
        modify,
        serde_json::json!({
            "expire": (first_expiry + days(90)).timestamp(),
            "data_limit": 0,
            "status": "active",
        })
    );
    assert_eq!(h.grants().await.len(), 2);
    h.finish().await;
}

/// The panel answers every call with a new subscription URL, all of them valid until the
/// subscription is revoked: a renewal keeps the link the customer has (so the bot can resend
/// its QR code by `file_id`), and a revoke on the panel brings the panel's new link.
async fn renewals_keep_the_customers_link_until_the_panel_revokes_it(mut h: Harness) {
    let user = h.user(100_003).await;
    let month = h.tariff("month_1", 30, None).await;
    let status = |url: String| async move {
        reqwest::get(format!("{url}/info"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    let first = h.pay(user, &month).await;
    h.publish(&completed(&first)).await;
    let link = h.activated().await.subscription.subscription_url;

    let second = h.pay(user, &month).await;
    h.publish(&completed(&second)).await;
    let renewed = h.activated().await.subscription;
    assert_eq!(renewed.payment_id, second.id);
    assert_eq!(
        renewed.subscription_url, link,
        "the customer keeps one link"
    );
    assert_eq!(h.emu.count(route::MODIFY_USER), 1);
    assert_eq!(status(link.clone()).await, 200, "the kept link works");
    assert_eq!(
        h.subscription(user).await.subscription_url.as_deref(),
        Some(link.as_str())
    );

    // An admin revokes the subscription on the panel: the old link stops working, the
    // customer's key changes, and the next activation carries the panel's new link.
    h.emu
        .edit_user("tg_100003", |u| u.revoke_sub(Utc::now()))
        .unwrap();
    assert_eq!(status(link.clone()).await, 404, "revoked");
    let third = h.pay(user, &month).await;
    h.publish(&completed(&third)).await;
    let after = h.activated().await.subscription.subscription_url;
    assert_ne!(after, link);
    assert_eq!(status(after.clone()).await, 200, "the new link works");
    assert_eq!(
        h.subscription(user).await.subscription_url.as_deref(),
        Some(after.as_str())
    );
    h.finish().await;
}

async fn concurrent_payments_of_one_user_serialise_and_stack(mut h: Harness) {
    let user = h.user(100_010).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let payments = [
        h.pay(user, &month).await,
        h.pay(user, &month).await,
        h.pay(user, &month).await,
    ];
    // All at once, on a first purchase: the subscription row is created by one of them and
    // the others wait on its lock.
    for paid in &payments {
        h.publish(&completed(paid)).await;
    }
    let mut expiries = Vec::new();
    for _ in &payments {
        expiries.push(h.activated().await.subscription.expires_at);
    }
    expiries.sort();
    assert_eq!(expiries[1], expiries[0] + days(30));
    assert_eq!(expiries[2], expiries[0] + days(60));
    assert!(close_to(expiries[2], Utc::now() + days(90)));
    assert_eq!(h.subscription(user).await.expires_at, expiries[2]);
    assert_eq!(h.panel_user(100_010).expire, Some(expiries[2].timestamp()));
    assert_eq!(h.emu.users().len(), 1);
    h.finish().await;
}

async fn panel_down_for_several_retries_then_activated_once(mut h: Harness) {
    let user = h.user(100_003).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let paid = h.pay(user, &month).await;

    h.emu.set_down(true);
    h.publish(&completed(&paid)).await;
    // Each attempt first looks for the user (a first payment), and gets no further.
    wait_until(|| async { h.emu.count(route::LIST_USERS) >= 3 }).await;
    // The grant is committed before the panel is called; the panel is behind and nothing is
    // announced until it answers.
    let grants = h.grants().await;
    assert_eq!(grants.len(), 1, "granted once, however many attempts");
    assert!(h.events.try_recv().is_err());
    let subscription = h.subscription(user).await;
    assert_eq!(
        subscription.expires_at, grants[0].expires_at_after,
        "the intent"
    );
    assert!(
        subscription.synced_at.is_none(),
        "never confirmed by the panel"
    );
    assert!(subscription.sync_error.is_some());

    h.emu.set_down(false);
    let activated = h.activated().await.subscription;
    h.assert_no_more_events().await;
    assert!(h.stats().retried() >= 3, "retried {}", h.stats().retried());
    assert_eq!(h.stats().handled(), 1);
    assert_eq!(h.stats().parked(), 0);

    let grants = h.grants().await;
    assert_eq!(grants.len(), 1);
    assert_eq!(activated.expires_at, grants[0].expires_at_after);
    assert_eq!(h.emu.users().len(), 1);
    assert_eq!(
        h.panel_user(100_003).expire,
        Some(grants[0].expires_at_after.timestamp())
    );
    // Every attempt sent the same absolute expiry.
    for create in h.emu.requests_to(route::CREATE_USER) {
        assert_eq!(
            create.body.unwrap()["expire"],
            grants[0].expires_at_after.timestamp()
        );
    }
    assert!(h.subscription(user).await.sync_error.is_none());
    h.finish().await;
}

async fn panel_that_applies_but_answers_500_is_not_applied_twice(mut h: Harness) {
    let user = h.user(100_004).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let first = h.pay(user, &month).await;

    // The create happens but we see a 500: the retry finds the user and brings it to the
    // ledger, without taking its time for an opening balance (it is the time we sent).
    h.emu
        .push_fault_on(route::CREATE_USER, Fault::InternalErrorAfterProcessing, 1);
    h.publish(&completed(&first)).await;
    let activated = h.activated().await.subscription;
    let key = h.emu.vless_id("tg_100004").unwrap();
    assert_eq!(h.emu.count(route::CREATE_USER), 1);
    assert_eq!(h.grants().await.len(), 1, "no opening balance");
    assert!(close_to(activated.expires_at, Utc::now() + days(30)));
    assert_eq!(h.emu.users().len(), 1);
    assert_eq!(h.stats().retried(), 1);

    // The extension is applied but answered 500: the retry sends the same absolute expiry.
    let second = h.pay(user, &month).await;
    h.emu.push_fault(Fault::InternalErrorAfterProcessing, 1);
    h.publish(&completed(&second)).await;
    let extended = h.activated().await.subscription;
    h.assert_no_more_events().await;
    assert_eq!(extended.expires_at, activated.expires_at + days(30));
    let modifies = h.emu.requests_to(route::MODIFY_USER);
    let last_two: Vec<_> = modifies
        .iter()
        .rev()
        .take(2)
        .map(|r| r.body.clone().unwrap()["expire"].clone())
        .collect();
    assert_eq!(
        last_two[0], last_two[1],
        "the retry re-sent the same absolute value"
    );
    assert_eq!(
        h.panel_user(100_004).expire,
        Some(extended.expires_at.timestamp()),
        "extended once, not twice"
    );
    assert_eq!(h.emu.vless_id("tg_100004").as_deref(), Some(key.as_str()));
    h.finish().await;
}

async fn refund_removes_the_granted_days_and_disables_when_nothing_is_left(mut h: Harness) {
    let user = h.user(100_005).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;

    let first = h.pay(user, &month).await;
    h.publish(&completed(&first)).await;
    let first_expiry = h.activated().await.subscription.expires_at;
    let second = h.pay(user, &month).await;
    h.publish(&completed(&second)).await;
    assert_eq!(
        h.activated().await.subscription.expires_at,
        first_expiry + days(30)
    );

    // Refunding the second payment gives back exactly the first month.
    h.publish(&refunded(&second, 19_900, 19_900)).await;
    let revoked_envelope = h.next_event().await;
    assert!(revoked_envelope.is::<SubscriptionRevoked>());
    let revoked: SubscriptionRevoked = revoked_envelope.decode().unwrap();
    assert_eq!(revoked.subscription.payment_id, second.id);
    assert_eq!(revoked.subscription.expires_at, first_expiry);
    assert!(revoked.subscription.subscription_url.starts_with("http://"));
    let panel = h.panel_user(100_005);
    assert_eq!(panel.expire, Some(first_expiry.timestamp()));
    assert_eq!(panel.status, UserStatus::Active);

    // A redelivered refund (new event id) changes nothing.
    h.publish(&refunded(&second, 19_900, 19_900)).await;
    h.settled(4).await;
    h.assert_no_more_events().await;

    // Refunding the first too leaves nothing: the panel user is disabled.
    h.publish(&refunded(&first, 19_900, 19_900)).await;
    let revoked: SubscriptionRevoked = h.next_event().await.decode().unwrap();
    assert!(revoked.subscription.expires_at <= Utc::now());
    let grants = h.grants().await;
    assert!(
        grants
            .iter()
            .all(|g| g.days_revoked == 30 && g.revoked_at.is_some())
    );
    let subscription = h.subscription(user).await;
    assert_eq!(subscription.expires_at, revoked.subscription.expires_at);
    assert_eq!(subscription.status, "disabled");
    let panel = h.panel_user(100_005);
    assert_eq!(panel.status, UserStatus::Disabled);
    assert_eq!(
        panel.expire,
        Some(revoked.subscription.expires_at.timestamp())
    );

    // Paying again brings the disabled user back, for a fresh month from now.
    let third = h.pay(user, &month).await;
    h.publish(&completed(&third)).await;
    let activated = h.activated().await.subscription;
    assert!(close_to(activated.expires_at, Utc::now() + days(30)));
    assert_eq!(h.panel_user(100_005).status, UserStatus::Active);
    h.finish().await;
}

/// A new envelope (its own event id) of the same event, as a repeated publish would make.
fn copy_of(envelope: &Envelope) -> Envelope {
    let event: GrantCreated = envelope.decode().unwrap();
    Envelope::new(&event, envelope.correlation_id, None).unwrap()
}

async fn a_manual_grant_counts_once_stacks_with_payments_and_outlives_their_refund(mut h: Harness) {
    // A user who never paid: the grant alone creates the panel user.
    let newcomer = h.user(100_030).await;
    let grant = h.manual_grant(newcomer, 7).await;
    h.publish(&grant).await;
    h.publish(&copy_of(&grant)).await;
    h.publish(&grant).await;
    h.settled(3).await;
    let activated: GrantActivated = h.next_event().await.decode().unwrap();
    let granted = h.subscription(newcomer).await;
    assert_eq!(
        (
            activated.kind.as_str(),
            activated.days,
            activated.expires_at
        ),
        ("admin", 7, granted.expires_at),
        "announced once for three copies"
    );
    assert_eq!(activated.telegram_id, 100_030);
    assert!(close_to(granted.expires_at, Utc::now() + days(7)));
    assert_eq!(granted.status, "active");
    assert!(granted.synced_at.is_some());
    let panel = h.panel_user(100_030);
    assert_eq!(panel.expire, Some(granted.expires_at.timestamp()));
    assert_eq!(panel.status, UserStatus::Active);
    let ledger = h.grants().await;
    assert_eq!(ledger.len(), 1, "three copies, one ledger entry");
    assert_eq!(ledger[0].kind, manual_grants::KIND_ADMIN);
    assert_eq!((ledger[0].payment_id, ledger[0].days_granted), (None, 7));

    // A paying user: the grant stacks on the paid month, a refund takes only the paid days.
    let user = h.user(100_031).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let paid = h.pay(user, &month).await;
    h.publish(&completed(&paid)).await;
    let paid_until = h.activated().await.subscription.expires_at;
    h.publish(&h.manual_grant(user, 10).await).await;
    h.settled(5).await;
    assert_eq!(h.subscription(user).await.expires_at, paid_until + days(10));
    assert_eq!(
        h.panel_user(100_031).expire,
        Some((paid_until + days(10)).timestamp())
    );
    assert_eq!(
        h.subscription(user).await.data_limit_bytes,
        Some(100 * GIB),
        "a grant keeps the paid data limit"
    );
    // The grant is announced as a grant: `subscription.*` events name a payment.
    let activated: GrantActivated = h.next_event().await.decode().unwrap();
    assert_eq!(activated.expires_at, paid_until + days(10));
    h.assert_no_more_events().await;

    h.publish(&refunded(&paid, 19_900, 19_900)).await;
    let revoked: SubscriptionRevoked = h.next_event().await.decode().unwrap();
    assert!(close_to(
        revoked.subscription.expires_at,
        Utc::now() + days(10)
    ));
    assert_eq!(h.panel_user(100_031).status, UserStatus::Active);
    h.finish().await;
}

async fn a_trial_is_a_ledger_entry_of_kind_trial_with_its_data_limit(mut h: Harness) {
    let user = h.user(100_032).await;
    let trial = h
        .grant_of(user, domain::trial::KIND, 3, Some(5 * GIB))
        .await;
    h.publish(&trial).await;
    h.publish(&copy_of(&trial)).await;
    h.settled(2).await;
    let activated: GrantActivated = h.next_event().await.decode().unwrap();
    assert_eq!((activated.kind.as_str(), activated.days), ("trial", 3));
    assert!(
        !activated.subscription_url.is_empty(),
        "the link is in the notice"
    );
    let subscription = h.subscription(user).await;
    assert!(close_to(subscription.expires_at, Utc::now() + days(3)));
    assert_eq!(activated.expires_at, subscription.expires_at);
    assert_eq!(subscription.data_limit_bytes, Some(5 * GIB));
    let panel = h.panel_user(100_032);
    assert_eq!(panel.expire, Some(subscription.expires_at.timestamp()));
    assert_eq!(panel.data_limit, Some(5 * GIB));
    assert_eq!(panel.status, UserStatus::Active);
    let ledger = h.grants().await;
    assert_eq!(ledger.len(), 1, "two copies, one ledger entry");
    assert_eq!(ledger[0].kind, "trial");
    assert_eq!((ledger[0].payment_id, ledger[0].days_granted), (None, 3));
    h.assert_no_more_events().await;
    h.finish().await;
}

/// `system_logs` rows of refused trials.
async fn refusal_logs(h: &Harness) -> Vec<system_logs::Model> {
    system_logs::Entity::find()
        .filter(system_logs::Column::EventType.eq(domain::trial::REFUSED_LOG))
        .all(&h.db.conn)
        .await
        .unwrap()
}

/// Issue 23: "never for a user who already has a panel user". A seller's customer from an
/// older bot is on the panel as `TG_<id>` (another letter case) with time and a key, and we
/// have no subscription row for them: their trial is refused — no ledger entry, no
/// subscription, the panel user untouched — recorded once (`trial.refused` log row and
/// `grant.refused`) though `grant.created` arrives three times. Other kinds still adopt the
/// user, as before.
async fn a_trial_for_a_user_the_panel_already_has_is_refused_once(mut h: Harness) {
    let user = h.user(100_040).await;
    let key = "2b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3";
    let before = existing_user(
        &h,
        "TG_100040",
        serde_json::json!({"vless": {"id": key}}),
        5,
    );
    let trial = h
        .grant_of(user, domain::trial::KIND, 3, Some(5 * GIB))
        .await;
    h.publish(&trial).await;
    h.publish(&trial).await;
    h.publish(&copy_of(&trial)).await;
    h.settled(3).await;
    let refused: GrantRefused = h.next_event().await.decode().unwrap();
    let grant: GrantCreated = trial.decode().unwrap();
    assert_eq!(
        refused,
        GrantRefused {
            grant_id: grant.grant_id,
            user_id: user,
            telegram_id: 100_040,
            kind: "trial".to_owned(),
            reason: domain::trial::REASON_PANEL_USER.to_owned(),
        }
    );
    h.assert_no_more_events().await;
    assert!(h.grants().await.is_empty(), "no ledger entry");
    assert!(
        subscriptions::Entity::find()
            .all(&h.db.conn)
            .await
            .unwrap()
            .is_empty(),
        "no subscription"
    );
    let logs = refusal_logs(&h).await;
    assert_eq!(logs.len(), 1, "refused once for three copies");
    assert_eq!(logs[0].user_id, Some(user));
    assert_eq!(
        logs[0].metadata.as_ref().unwrap()["grant_id"],
        grant.grant_id
    );
    // The panel user is as it was: nothing created, modified or reset.
    assert_eq!(h.emu.users().len(), 1);
    for route in [route::CREATE_USER, route::MODIFY_USER, route::RESET_USER] {
        assert_eq!(h.emu.count(route), 0, "{route}");
    }
    let panel = h.emu.user("TG_100040").unwrap();
    assert_eq!(panel.expire, Some(before.timestamp()));
    assert_eq!(panel.vless_id(), Some(key));

    // An admin's grant to the same user adopts them as before, their 5 days kept.
    h.publish(&h.manual_grant(user, 7).await).await;
    let activated: GrantActivated = h.next_event().await.decode().unwrap();
    assert_eq!(activated.kind, "admin");
    assert_eq!(activated.marzban_username, "TG_100040");
    assert_eq!(activated.expires_at, before + days(7));
    assert_eq!(h.emu.vless_id("TG_100040").as_deref(), Some(key));
    assert_eq!(
        h.grants().await.len(),
        2,
        "the opening balance and the admin's days"
    );
    assert_eq!(refusal_logs(&h).await.len(), 1);
    h.assert_no_more_events().await;
    h.finish().await;
}

/// A trial while the panel is down is neither granted nor refused blind: the message is
/// retried, nothing is written meanwhile, and once the panel answers the trial is refused
/// (the panel has the user) — or, for a user it has not got, granted.
async fn a_trial_waits_for_the_panel_and_is_never_granted_blind(mut h: Harness) {
    let known = h.user(100_041).await;
    let before = existing_user(
        &h,
        "tg_100041",
        serde_json::json!({"vless": {"id": "3b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"}}),
        2,
    );
    let newcomer = h.user(100_042).await;
    h.emu.set_down(true);
    h.publish(&h.grant_of(known, domain::trial::KIND, 3, None).await)
        .await;
    h.publish(&h.grant_of(newcomer, domain::trial::KIND, 3, None).await)
        .await;
    wait_until(|| async { h.emu.count(route::LIST_USERS) >= 4 }).await;
    assert!(
        h.grants().await.is_empty(),
        "nothing granted while the panel is down"
    );
    assert!(refusal_logs(&h).await.is_empty());
    assert!(h.events.try_recv().is_err());

    h.emu.set_down(false);
    let mut refused = None;
    let mut activated = None;
    for _ in 0..2 {
        let envelope = h.next_event().await;
        match envelope.event_type.as_str() {
            "grant.refused" => refused = Some(envelope.decode::<GrantRefused>().unwrap()),
            "grant.activated" => activated = Some(envelope.decode::<GrantActivated>().unwrap()),
            other => panic!("unexpected {other}"),
        }
    }
    h.assert_no_more_events().await;
    assert_eq!(refused.unwrap().telegram_id, 100_041);
    assert_eq!(activated.unwrap().telegram_id, 100_042);
    assert_eq!(
        h.emu.user("tg_100041").unwrap().expire,
        Some(before.timestamp())
    );
    let ledger = h.grants().await;
    assert_eq!(ledger.len(), 1, "the newcomer's trial only");
    assert_eq!(ledger[0].kind, "trial");
    assert_eq!(h.subscription(newcomer).await.marzban_username, "tg_100042");
    assert_eq!(refusal_logs(&h).await.len(), 1);
    h.finish().await;
}

/// Two processes and one trial: copies that both find the panel user refuse it once; and a
/// copy whose look-up finds the user another copy has just created for the trial does not
/// refuse what was granted — the grant wins, the refusal fails transiently, and its retry has
/// nothing left to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_a_trial_are_granted_or_refused_never_both() {
    let mut h = Harness::start_within(Mode::Rabbit, "ms-trial-race").await;
    let (a_sync, b_sync) = (h.other_process().await, h.other_process().await);

    // Both copies find the customer from the older bot: one refusal.
    let known = h.user(100_043).await;
    existing_user(
        &h,
        "Tg_100043",
        serde_json::json!({"vless": {"id": "4b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"}}),
        4,
    );
    let trial = h.grant_of(known, domain::trial::KIND, 3, None).await;
    let a_prepared = a_sync.prepare(&trial).await.unwrap();
    let b_prepared = b_sync.prepare(&copy_of(&trial)).await.unwrap();
    h.handle(&a_sync, &trial, a_prepared).await.unwrap();
    h.handle(&b_sync, &trial, b_prepared).await.unwrap();
    assert_eq!(refusal_logs(&h).await.len(), 1);
    assert!(h.grants().await.is_empty());
    let b_again = b_sync.prepare(&trial).await.unwrap();
    h.handle(&b_sync, &trial, b_again).await.unwrap();
    assert_eq!(refusal_logs(&h).await.len(), 1, "a late copy does nothing");

    // B's look-up is slow; meanwhile A grants the newcomer's trial and creates the user, which
    // B's look-up then finds.
    let newcomer = h.user(100_044).await;
    let trial = h.grant_of(newcomer, domain::trial::KIND, 3, None).await;
    h.emu.clear_requests();
    h.emu.push_fault_on(
        route::LIST_USERS,
        Fault::slow_work(Duration::from_millis(1_200)),
        1,
    );
    let b_prepare = {
        let (sync, envelope) = (b_sync.clone(), trial.clone());
        tokio::spawn(async move { sync.prepare(&envelope).await })
    };
    wait_until(|| async { h.emu.count(route::LIST_USERS) == 1 }).await;
    let a_prepared = a_sync.prepare(&trial).await.unwrap();
    assert!(h.emu.user("tg_100044").is_some(), "A created the user");
    let b_prepared = b_prepare.await.unwrap().unwrap();
    h.handle(&a_sync, &trial, a_prepared).await.unwrap();
    let error = h.handle(&b_sync, &trial, b_prepared).await.unwrap_err();
    assert!(!error.is_permanent(), "{error}");
    assert_eq!(
        refusal_logs(&h).await.len(),
        1,
        "the trial was granted, not refused"
    );
    let b_retry = b_sync.prepare(&trial).await.unwrap();
    h.handle(&b_sync, &trial, b_retry).await.unwrap();
    let ledger = h.grants().await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].kind, "trial");

    // What reached the bot: one refusal (the first user), one activation (the newcomer).
    let mut seen = Vec::new();
    for _ in 0..2 {
        let envelope = h.next_event().await;
        seen.push(envelope.event_type.clone());
    }
    seen.sort();
    assert_eq!(seen, ["grant.activated", "grant.refused"]);
    h.assert_no_more_events().await;
    h.finish().await;
}

/// A referral bonus (issue 23: the payment worker writes it when a friend's first payment
/// succeeds): one ledger entry of kind `referral`, however many copies of its event arrive,
/// stacked on the referrer's paid time with their data limit kept, announced once.
async fn a_referral_bonus_is_a_ledger_entry_of_kind_referral_on_top_of_the_paid_time(
    mut h: Harness,
) {
    let user = h.user(100_034).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let paid = h.pay(user, &month).await;
    h.publish(&completed(&paid)).await;
    let paid_until = h.activated().await.subscription.expires_at;
    let bonus = h.grant_of(user, domain::referral::KIND, 7, None).await;
    h.publish(&bonus).await;
    h.publish(&copy_of(&bonus)).await;
    h.settled(3).await;
    let activated: GrantActivated = h.next_event().await.decode().unwrap();
    assert_eq!(
        (
            activated.kind.as_str(),
            activated.days,
            activated.telegram_id
        ),
        ("referral", 7, 100_034)
    );
    assert_eq!(activated.expires_at, paid_until + days(7));
    let subscription = h.subscription(user).await;
    assert_eq!(subscription.expires_at, paid_until + days(7));
    assert_eq!(subscription.data_limit_bytes, Some(100 * GIB));
    assert_eq!(
        h.panel_user(100_034).expire,
        Some((paid_until + days(7)).timestamp())
    );
    let kinds: Vec<(String, i32)> = h
        .grants()
        .await
        .into_iter()
        .map(|g| (g.kind, g.days_granted))
        .collect();
    assert_eq!(
        kinds,
        [("purchase".to_owned(), 30), ("referral".to_owned(), 7)],
        "two copies, one referral entry"
    );
    h.assert_no_more_events().await;
    h.finish().await;
}

/// A payment made with an extra-days promo code (issue 23): one ledger entry of the tariff's
/// days and the code's, written once however often the success is delivered, and taken back
/// whole by a full refund.
async fn a_promo_codes_extra_days_are_part_of_the_payments_grant(mut h: Harness) {
    let user = h.user(100_033).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let paid = h.pay(user, &month).await;
    let now = Utc::now();
    let code = domain::entities::promo_codes::ActiveModel {
        id: NotSet,
        code: Set("WEEK".into()),
        kind: Set("days".into()),
        value: Set(7),
        currency: Set(None),
        max_uses: Set(None),
        once_per_user: Set(false),
        starts_at: Set(None),
        ends_at: Set(None),
        tariffs: Set(String::new()),
        providers: Set(String::new()),
        active: Set(true),
        created_by: Set(None),
        created_at: Set(now),
        disabled_at: Set(None),
    }
    .insert(&h.db.conn)
    .await
    .unwrap();
    domain::entities::payment_promos::ActiveModel {
        payment_id: Set(paid.id),
        promo_code_id: Set(code.id),
        user_id: Set(user),
        code: Set(code.code.clone()),
        list_price_minor: Set(paid.amount_minor),
        discount_minor: Set(0),
        extra_days: Set(7),
        created_at: Set(now),
        used_at: Set(Some(now)),
        returned_at: Set(None),
    }
    .insert(&h.db.conn)
    .await
    .unwrap();

    let envelope = completed(&paid);
    h.publish(&envelope).await;
    h.publish(&envelope).await;
    h.settled(2).await;
    let activated = h.activated().await.subscription;
    assert!(close_to(activated.expires_at, Utc::now() + days(37)));
    let ledger = h.grants().await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        (ledger[0].payment_id, ledger[0].days_granted),
        (Some(paid.id), 37)
    );
    h.assert_no_more_events().await;

    h.publish(&refunded(&paid, 19_900, 19_900)).await;
    let revoked: SubscriptionRevoked = h.next_event().await.decode().unwrap();
    assert!(revoked.subscription.expires_at <= Utc::now());
    assert_eq!(h.grants().await[0].days_revoked, 37);
    h.finish().await;
}

async fn partial_refund_revokes_days_in_proportion(mut h: Harness) {
    let user = h.user(100_006).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let paid = h.pay(user, &month).await;
    h.publish(&completed(&paid)).await;
    let expiry = h.activated().await.subscription.expires_at;

    h.publish(&refunded(&paid, 9_950, 9_950)).await;
    let revoked: SubscriptionRevoked = h.next_event().await.decode().unwrap();
    assert_eq!(revoked.subscription.expires_at, expiry - days(15));
    assert_eq!(h.grants().await[0].days_revoked, 15);
    assert_eq!(h.panel_user(100_006).status, UserStatus::Active);
    h.finish().await;
}

async fn existing_panel_user_is_adopted_not_duplicated(mut h: Harness) {
    let user = h.user(100_007).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;

    // Someone created the user by hand, with 3 days and a key the customer already uses.
    let existing = CreateUser {
        username: MarzbanUsername::parse("tg_100007").unwrap(),
        expire: (Utc::now() + days(3)).timestamp(),
        data_limit: Some(GIB),
        note: Some("by hand".to_owned()),
    };
    h.client.create_user(&existing).await.unwrap();
    let key = h.emu.vless_id("tg_100007").unwrap();
    h.emu.set_status("tg_100007", UserStatus::Disabled).unwrap();

    let paid = h.pay(user, &month).await;
    h.publish(&completed(&paid)).await;
    let activated = h.activated().await.subscription;
    assert_eq!(h.emu.users().len(), 1, "adopted, not duplicated");
    assert_eq!(h.emu.count(route::CREATE_USER), 1, "the test's own");
    let panel = h.panel_user(100_007);
    assert_eq!(panel.vless_id(), Some(key.as_str()), "the key is kept");
    assert_eq!(panel.status, UserStatus::Active, "paid, so active again");
    // The ledger decides the expiry: the 3 days it had (its opening balance) + 30 paid.
    assert_eq!(panel.expire, Some(activated.expires_at.timestamp()));
    assert_eq!(
        activated.expires_at.timestamp(),
        existing.expire + 30 * 86_400
    );
    assert_eq!(panel.data_limit, Some(100 * GIB));
    h.finish().await;
}

async fn limited_user_that_pays_is_reset_and_active_again(mut h: Harness) {
    let user = h.user(100_008).await;
    let month = h.tariff("month_1", 30, Some(10 * GIB)).await;
    let first = h.pay(user, &month).await;
    h.publish(&completed(&first)).await;
    h.activated().await;

    h.emu.set_used_traffic("tg_100008", 11 * GIB).unwrap();
    assert_eq!(h.panel_user(100_008).status, UserStatus::Limited);

    let second = h.pay(user, &month).await;
    h.publish(&completed(&second)).await;
    h.activated().await;
    let panel = h.panel_user(100_008);
    assert_eq!(panel.status, UserStatus::Active);
    assert_eq!(panel.used_traffic, 0);
    assert_eq!(h.emu.count(route::RESET_USER), 1);
    h.finish().await;
}

async fn drift_check_repairs_a_panel_user_edited_by_hand(mut h: Harness) {
    let user = h.user(100_009).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let paid = h.pay(user, &month).await;
    h.publish(&completed(&paid)).await;
    let expiry = h.activated().await.subscription.expires_at;
    let key = h.emu.vless_id("tg_100009").unwrap();

    let report = marzban_sync::check_drift(&h.db.conn, &h.client)
        .await
        .unwrap();
    assert_eq!((report.checked, report.repaired, report.failed), (1, 0, 0));

    // An admin gives a year, lifts the limit and disables the user in the dashboard.
    h.emu
        .edit_user("tg_100009", |u| {
            u.expire = Some((Utc::now() + days(365)).timestamp());
            u.data_limit = None;
            u.status = UserStatus::Disabled;
        })
        .unwrap();
    let report = marzban_sync::check_drift(&h.db.conn, &h.client)
        .await
        .unwrap();
    assert_eq!((report.checked, report.repaired, report.failed), (1, 1, 0));
    let panel = h.panel_user(100_009);
    assert_eq!(panel.expire, Some(expiry.timestamp()));
    assert_eq!(panel.data_limit, Some(100 * GIB));
    assert_eq!(panel.status, UserStatus::Active);
    assert_eq!(panel.vless_id(), Some(key.as_str()));

    // Deleted on the panel: created again.
    h.client
        .delete_user(&MarzbanUsername::parse("tg_100009").unwrap())
        .await
        .unwrap();
    let report = marzban_sync::check_drift(&h.db.conn, &h.client)
        .await
        .unwrap();
    assert_eq!(report.repaired, 1);
    assert_eq!(h.panel_user(100_009).expire, Some(expiry.timestamp()));

    let report = marzban_sync::check_drift(&h.db.conn, &h.client)
        .await
        .unwrap();
    assert_eq!((report.checked, report.repaired), (1, 0), "in sync now");

    // Panel down: the pass stops with an error instead of marking everything failed.
    h.emu.set_down(true);
    assert!(
        marzban_sync::check_drift(&h.db.conn, &h.client)
            .await
            .is_err()
    );
    h.emu.set_down(false);
    h.finish().await;
}

/// A panel user someone else made, with `proxies` (ids kept) and `days_left`.
fn existing_user(
    h: &Harness,
    name: &str,
    proxies: serde_json::Value,
    days_left: i64,
) -> DateTime<Utc> {
    let expire = ledger_seconds(Utc::now() + days(days_left));
    let serde_json::Value::Object(proxies) = proxies else {
        panic!("proxies must be an object")
    };
    let proxies = proxies
        .into_iter()
        .map(|(protocol, settings)| {
            let serde_json::Value::Object(settings) = settings else {
                panic!("settings must be an object")
            };
            (protocol, settings)
        })
        .collect();
    h.emu.insert_user(name, proxies, Some(expire.timestamp()));
    expire
}

fn ledger_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap()
}

/// Issue 20 case 1: the customer's panel user is `TG_<id>` while we look for `tg_<id>`. On
/// SQLite a `GET` of our spelling is 404 and a create would make a second user; on MySQL the
/// create is a 409. Either way it is found first, adopted under its own spelling, and extended.
async fn a_panel_user_differing_in_case_is_adopted_not_duplicated(mut h: Harness) {
    let user = h.user(900_004).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let key = "0b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3";
    let before = existing_user(
        &h,
        "TG_900004",
        serde_json::json!({"vless": {"id": key}}),
        5,
    );

    let paid = h.pay(user, &month).await;
    h.publish(&completed(&paid)).await;
    let activated = h.activated().await.subscription;
    assert_eq!(h.emu.users().len(), 1, "adopted, not duplicated");
    assert_eq!(h.emu.count(route::CREATE_USER), 0);
    assert_eq!(activated.marzban_username, "TG_900004");
    assert_eq!(h.subscription(user).await.marzban_username, "TG_900004");
    let panel = h.emu.user("TG_900004").unwrap();
    assert_eq!(panel.username, "TG_900004");
    assert_eq!(panel.vless_id(), Some(key));
    assert_eq!(activated.expires_at, before + days(30));
    assert_eq!(panel.expire, Some(activated.expires_at.timestamp()));

    // Later payments and the drift check use the panel's spelling.
    let second = h.pay(user, &month).await;
    h.publish(&completed(&second)).await;
    let extended = h.activated().await.subscription;
    assert_eq!(extended.expires_at, before + days(60));
    let report = marzban_sync::check_drift(&h.db.conn, &h.client)
        .await
        .unwrap();
    assert_eq!((report.checked, report.repaired), (1, 0));
    assert_eq!(h.emu.users().len(), 1);
    h.finish().await;
}

/// Case 1 with the 409 kept handled: the user appears on a case-insensitive (MySQL) panel
/// between our look-up and our create; the create's 409 makes us look again and adopt it.
/// (The adoption decision was taken when nothing was found: no opening balance then.)
async fn a_user_created_after_the_look_up_is_adopted_on_409(mut h: Harness) {
    let user = h.user(900_005).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let paid = h.pay(user, &month).await;
    h.emu.push_fault_on(
        route::LIST_USERS,
        Fault::slow_answer(Duration::from_millis(1_500)),
        1,
    );
    h.publish(&completed(&paid)).await;
    wait_until(|| async { h.emu.count(route::LIST_USERS) == 1 }).await;
    // The search has been answered inside the panel by now; its answer is on its way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let key = "1b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3";
    existing_user(
        &h,
        "Tg_900005",
        serde_json::json!({"vless": {"id": key}}),
        5,
    );

    let activated = h.activated().await.subscription;
    let creates = h.emu.requests_to(route::CREATE_USER);
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].status, Some(409));
    assert_eq!(h.emu.users().len(), 1);
    assert_eq!(activated.marzban_username, "Tg_900005");
    assert_eq!(h.emu.vless_id("Tg_900005").as_deref(), Some(key));
    assert!(close_to(activated.expires_at, Utc::now() + days(30)));
    assert_eq!(
        h.emu.user("Tg_900005").unwrap().expire,
        Some(activated.expires_at.timestamp())
    );
    h.finish().await;
}

/// Case 2: a VMess-only user pays; VLESS is added (with `MARZBAN_INBOUNDS`' inbound) by a
/// `PUT` that carries the VMess proxy with its id, so the old key keeps working.
async fn an_adopted_vmess_user_gets_vless_and_keeps_its_vmess_id(mut h: Harness) {
    let user = h.user(900_006).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let vmess = "2b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3";
    existing_user(
        &h,
        "tg_900006",
        serde_json::json!({"vmess": {"id": vmess}}),
        5,
    );

    let paid = h.pay(user, &month).await;
    h.publish(&completed(&paid)).await;
    h.activated().await;
    let panel = h.panel_user(900_006);
    assert_eq!(panel.proxies["vmess"]["id"], vmess, "the VMess key is kept");
    let vless = panel.vless_id().expect("a VLESS key").to_owned();
    assert_eq!(panel.proxies["vless"]["flow"], "xtls-rprx-vision");
    assert_eq!(panel.inbounds["vless"], ["VLESS TCP REALITY"]);
    assert_eq!(panel.inbounds["vmess"], ["VMess TCP"]);
    let with_proxies: Vec<_> = h
        .emu
        .requests_to(route::MODIFY_USER)
        .into_iter()
        .filter(|r| r.body.as_ref().unwrap().get("proxies").is_some())
        .collect();
    assert_eq!(with_proxies.len(), 1);
    assert_eq!(
        with_proxies[0].body.as_ref().unwrap()["proxies"]["vmess"]["id"],
        vmess
    );

    // The next payment only extends: both keys stay.
    let second = h.pay(user, &month).await;
    h.publish(&completed(&second)).await;
    h.activated().await;
    let panel = h.panel_user(900_006);
    assert_eq!(panel.proxies["vmess"]["id"], vmess);
    assert_eq!(panel.vless_id(), Some(vless.as_str()));
    assert_eq!(
        h.emu
            .requests_to(route::MODIFY_USER)
            .iter()
            .filter(|r| r.body.as_ref().unwrap().get("proxies").is_some())
            .count(),
        1
    );
    h.finish().await;
}

/// Case 3: an adopted user with 5 days left gets 5 + 30, and a full refund takes the 30 days
/// back but not the 5 we never sold. The opening balance is written once.
async fn adoption_keeps_the_panel_remaining_days_and_a_refund_does_not_take_them(mut h: Harness) {
    let user = h.user(900_007).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let before = existing_user(
        &h,
        "tg_900007",
        serde_json::json!({"vless": {"id": "3b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"}}),
        5,
    );
    let key = h.emu.vless_id("tg_900007").unwrap();

    let paid = h.pay(user, &month).await;
    h.publish(&completed(&paid)).await;
    h.publish(&completed(&paid)).await;
    let activated = h.activated().await.subscription;
    assert_eq!(activated.expires_at, before + days(30));
    h.settled(2).await;
    h.assert_no_more_events().await;
    let grants = h.grants().await;
    assert_eq!(grants.len(), 2, "{grants:?}");
    let opening = grants.iter().find(|g| g.kind == "opening_balance").unwrap();
    assert_eq!(
        (
            opening.payment_id,
            opening.days_granted,
            opening.expires_at_after
        ),
        (None, 5, before)
    );
    let purchase = grants.iter().find(|g| g.kind == "purchase").unwrap();
    assert_eq!(purchase.expires_at_after, before + days(30), "restated");

    h.publish(&refunded(&paid, 19_900, 19_900)).await;
    let revoked: SubscriptionRevoked = h.next_event().await.decode().unwrap();
    assert_eq!(revoked.subscription.expires_at, before, "the 5 days stay");
    let panel = h.panel_user(900_007);
    assert_eq!(panel.expire, Some(before.timestamp()));
    assert_eq!(panel.status, UserStatus::Active, "time left, still active");
    assert_eq!(panel.vless_id(), Some(key.as_str()));

    // A new payment stacks on what is left, and no second opening balance appears.
    let again = h.pay(user, &month).await;
    h.publish(&completed(&again)).await;
    let extended = h.activated().await.subscription;
    assert_eq!(extended.expires_at, before + days(30));
    let grants = h.grants().await;
    assert_eq!(
        grants
            .iter()
            .filter(|g| g.kind == "opening_balance")
            .count(),
        1
    );
    h.finish().await;
}

/// Case 4: with a wrong `MARZBAN_PASSWORD` the panel refuses every call, so marzban-sync is
/// not ready (`"marzban": "down"`, and the gauge says 0); with the right one it is.
async fn a_wrong_panel_password_makes_marzban_sync_not_ready(mode: Mode) {
    for (password, status, state) in [("wrong", 503, "down"), ("admin-password", 200, "ok")] {
        let h = Harness::start_with(mode, "ms-ready", emulator::Config::default(), password).await;
        let addr = h.service.as_ref().unwrap().server.addr.unwrap().to_string();
        let deadline = tokio::time::Instant::now() + WAIT;
        let last = loop {
            let (got, body) = service_kit::testing::http_get(&addr, "/health/ready")
                .await
                .unwrap();
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            if got == status && json["checks"]["marzban"] == state {
                break body;
            }
            assert!(tokio::time::Instant::now() < deadline, "{got} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            last.contains(r#""database":"ok""#) && !last.contains("password"),
            "{last}"
        );
        let (_, metrics) = service_kit::testing::http_get(&addr, "/metrics")
            .await
            .unwrap();
        assert!(
            metrics.contains("service_readiness_check_up{check=\"marzban\"}"),
            "{metrics}"
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_panel_password_makes_marzban_sync_not_ready_on_rabbitmq() {
    a_wrong_panel_password_makes_marzban_sync_not_ready(Mode::Rabbit).await;
}

async fn with_usernames(usernames: emulator::Usernames, tag: &str) -> Harness {
    let config = emulator::Config {
        usernames,
        ..emulator::Config::default()
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        Harness::start_with(Mode::Rabbit, tag, config, "admin-password"),
    )
    .await
    .expect("the service did not start within 60 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_user_differing_in_case_is_adopted_not_duplicated_on_sqlite() {
    let h = with_usernames(emulator::Usernames::CaseSensitive, "ms-case-sqlite").await;
    a_panel_user_differing_in_case_is_adopted_not_duplicated(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_user_differing_in_case_is_adopted_not_duplicated_on_mysql() {
    let h = with_usernames(emulator::Usernames::CaseInsensitive, "ms-case-mysql").await;
    a_panel_user_differing_in_case_is_adopted_not_duplicated(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_for_a_user_the_panel_already_has_is_refused_once_on_mysql() {
    let h = with_usernames(emulator::Usernames::CaseInsensitive, "ms-trial-mysql").await;
    a_trial_for_a_user_the_panel_already_has_is_refused_once(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_created_after_the_look_up_is_adopted_on_409_on_mysql() {
    let h = with_usernames(emulator::Usernames::CaseInsensitive, "ms-409").await;
    a_user_created_after_the_look_up_is_adopted_on_409(h).await;
}

/// Every scenario on RabbitMQ (as deployed) and on the in-process bus (single-process mode).
macro_rules! on_both_buses {
    ($($scenario:ident => $tag:literal),* $(,)?) => {
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Harness::start_within(super::Mode::Rabbit, $tag).await).await;
                }
            )*
        }
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Harness::start_within(super::Mode::InProcess, $tag).await).await;
                }
            )*
        }
    };
}

on_both_buses! {
    payment_completed_five_times_extends_once_and_announces_an_absolute_url => "ms-once",
    two_payments_stack_and_keep_the_customers_key => "ms-stack",
    renewals_keep_the_customers_link_until_the_panel_revokes_it => "ms-link",
    concurrent_payments_of_one_user_serialise_and_stack => "ms-concurrent",
    panel_down_for_several_retries_then_activated_once => "ms-down",
    panel_that_applies_but_answers_500_is_not_applied_twice => "ms-500",
    refund_removes_the_granted_days_and_disables_when_nothing_is_left => "ms-refund",
    partial_refund_revokes_days_in_proportion => "ms-partial",
    existing_panel_user_is_adopted_not_duplicated => "ms-adopt",
    limited_user_that_pays_is_reset_and_active_again => "ms-limited",
    drift_check_repairs_a_panel_user_edited_by_hand => "ms-drift",
    slow_panel_holds_no_transaction_and_no_row_lock => "ms-slow",
    concurrent_payments_answered_out_of_order_converge_on_the_ledger => "ms-order",
    panel_failure_after_the_grant_resends_the_same_expiry_and_counts_the_days_once => "ms-resend",
    refund_before_its_grant_waits_for_it => "ms-early-refund",
    an_adopted_vmess_user_gets_vless_and_keeps_its_vmess_id => "ms-vmess",
    adoption_keeps_the_panel_remaining_days_and_a_refund_does_not_take_them => "ms-remaining",
    a_manual_grant_counts_once_stacks_with_payments_and_outlives_their_refund => "ms-manual",
    a_trial_is_a_ledger_entry_of_kind_trial_with_its_data_limit => "ms-trial",
    a_trial_for_a_user_the_panel_already_has_is_refused_once => "ms-trial-refused",
    a_trial_waits_for_the_panel_and_is_never_granted_blind => "ms-trial-down",
    a_promo_codes_extra_days_are_part_of_the_payments_grant => "ms-promo",
    a_referral_bonus_is_a_ledger_entry_of_kind_referral_on_top_of_the_paid_time => "ms-referral",
}

async fn slow_panel_holds_no_transaction_and_no_row_lock(mut h: Harness) {
    let user = h.user(100_011).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let paid = h.pay(user, &month).await;

    // Every panel request takes 1.2 s (the service's timeout is 2 s).
    h.emu.set_latency(Duration::from_millis(1_200));
    h.publish(&completed(&paid)).await;
    wait_until(|| async { h.emu.count(route::CREATE_USER) == 1 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The panel is answering now: the grant is already committed, no transaction of
    // marzban-sync is open, and the subscription row is not locked.
    let grants = h.grants().await;
    assert_eq!(grants.len(), 1, "the grant is committed before the call");
    for _ in 0..5 {
        let open = h.open_transactions().await;
        assert!(
            open.is_empty(),
            "transactions open during the panel call: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tx = h.db.conn.begin().await.unwrap();
    let locked = tx
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM subscriptions WHERE user_id = $1 FOR UPDATE NOWAIT",
            [user.into()],
        ))
        .await;
    assert!(
        matches!(locked, Ok(Some(_))),
        "the subscription row is free during the panel call: {locked:?}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        h.emu.count(route::CREATE_USER),
        1,
        "still the first, slow request"
    );

    let activated = h.activated().await.subscription;
    h.emu.set_latency(Duration::ZERO);
    h.assert_no_more_events().await;
    let grants = h.grants().await;
    assert_eq!(grants.len(), 1, "granted once");
    assert_eq!(activated.expires_at, grants[0].expires_at_after);
    assert_eq!(h.emu.count(route::CREATE_USER), 1);
    assert_eq!(
        h.panel_user(100_011).expire,
        Some(grants[0].expires_at_after.timestamp())
    );
    assert_eq!(h.stats().retried(), 0);
    h.finish().await;
}

async fn concurrent_payments_answered_out_of_order_converge_on_the_ledger(mut h: Harness) {
    let user = h.user(100_012).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let first = h.pay(user, &month).await;
    h.publish(&completed(&first)).await;
    let start = h.activated().await.subscription.expires_at;

    // Two payments of the same user, handled by two processes at once. A's panel call
    // arrives first but the panel applies it last.
    let (a, b) = (h.pay(user, &month).await, h.pay(user, &month).await);
    let (a_env, b_env) = (completed(&a), completed(&b));
    let a_sync = h.other_process().await;
    let b_sync = h.other_process().await;
    h.emu.clear_requests();
    h.emu
        .push_fault(Fault::slow_work(Duration::from_millis(800)), 1);
    let a_prepare = {
        let (sync, envelope) = (a_sync.clone(), a_env.clone());
        tokio::spawn(async move { sync.prepare(&envelope).await })
    };
    wait_until(|| async { h.emu.count(route::MODIFY_USER) == 1 }).await;
    let b_prepared = b_sync.prepare(&b_env).await.unwrap();
    assert_eq!(
        h.panel_user(100_012).expire,
        Some((start + days(60)).timestamp()),
        "B's call, with both grants, landed first"
    );
    let a_prepared = a_prepare.await.unwrap().unwrap();
    assert_eq!(
        h.panel_user(100_012).expire,
        Some((start + days(30)).timestamp()),
        "A's stale call landed last"
    );

    h.handle(&b_sync, &b_env, b_prepared).await.unwrap();
    let error = h.handle(&a_sync, &a_env, a_prepared).await.unwrap_err();
    assert!(!error.is_permanent(), "{error}");
    // The runner retries A: it sends the ledger's state again.
    let a_prepared = a_sync.prepare(&a_env).await.unwrap();
    h.handle(&a_sync, &a_env, a_prepared).await.unwrap();

    let grants = h.grants().await;
    assert_eq!(grants.len(), 3, "each payment granted once");
    let expires: Vec<i64> = h
        .emu
        .requests_to(route::MODIFY_USER)
        .iter()
        .map(|r| r.body.clone().unwrap()["expire"].as_i64().unwrap())
        .collect();
    let (after_a, after_b) = (start + days(30), start + days(60));
    assert_eq!(
        expires,
        [
            after_a.timestamp(),
            after_b.timestamp(),
            after_b.timestamp()
        ]
    );
    assert_eq!(h.panel_user(100_012).expire, Some(after_b.timestamp()));
    assert_eq!(h.subscription(user).await.expires_at, after_b);

    let mut announced = Vec::new();
    for _ in 0..2 {
        let activated = h.activated().await.subscription;
        announced.push((activated.payment_id, activated.expires_at));
    }
    h.assert_no_more_events().await;
    announced.sort();
    let mut expected = vec![(a.id, after_b), (b.id, after_b)];
    expected.sort();
    assert_eq!(announced, expected, "each payment announced once");
    h.finish().await;
}

async fn panel_failure_after_the_grant_resends_the_same_expiry_and_counts_the_days_once(
    mut h: Harness,
) {
    let user = h.user(100_013).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let first = h.pay(user, &month).await;
    h.publish(&completed(&first)).await;
    let start = h.activated().await.subscription.expires_at;

    // The extension fails twice without the panel doing anything.
    let second = h.pay(user, &month).await;
    h.emu.push_fault(Fault::InternalError, 2);
    h.publish(&completed(&second)).await;
    wait_until(|| async { h.emu.count(route::MODIFY_USER) >= 1 }).await;
    wait_until(|| async { h.grants().await.len() == 2 }).await;
    assert_eq!(
        h.subscription(user).await.expires_at,
        start + days(30),
        "the intent is committed while the panel is behind"
    );

    let extended = h.activated().await.subscription;
    h.assert_no_more_events().await;
    assert_eq!(extended.payment_id, second.id);
    assert_eq!(extended.expires_at, start + days(30));
    assert_eq!(h.stats().retried(), 2);
    let modifies = h.emu.requests_to(route::MODIFY_USER);
    assert_eq!(modifies.len(), 3);
    for modify in &modifies {
        assert_eq!(
            modify.body.clone().unwrap()["expire"],
            (start + days(30)).timestamp(),
            "every attempt sends the same absolute expiry"
        );
    }
    let grants = h.grants().await;
    assert_eq!(grants.len(), 2);
    assert!(grants.iter().all(|g| g.days_granted == 30));
    assert_eq!(
        h.panel_user(100_013).expire,
        Some((start + days(30)).timestamp()),
        "30 days added once"
    );

    // The same payment once more under a new event id: nothing is sent or announced.
    h.publish(&completed(&second)).await;
    h.settled(3).await;
    h.assert_no_more_events().await;
    assert_eq!(h.emu.count(route::MODIFY_USER), 3);
    h.finish().await;
}

async fn refund_before_its_grant_waits_for_it(mut h: Harness) {
    let user = h.user(100_014).await;
    let month = h.tariff("month_1", 30, Some(100 * GIB)).await;
    let paid = h.pay(user, &month).await;

    h.publish(&refunded(&paid, 19_900, 19_900)).await;
    wait_until(|| async { h.stats().retried() >= 2 }).await;
    assert!(h.grants().await.is_empty());
    assert!(h.emu.users().is_empty(), "nothing sent to the panel");

    h.publish(&completed(&paid)).await;
    let activated = h.activated().await.subscription;
    let revoked: SubscriptionRevoked = h.next_event().await.decode().unwrap();
    h.assert_no_more_events().await;
    assert_eq!(revoked.subscription.payment_id, paid.id);
    assert_eq!(
        revoked.subscription.expires_at,
        activated.expires_at - days(30)
    );
    let grants = h.grants().await;
    assert_eq!((grants.len(), grants[0].days_revoked), (1, 30));
    assert_eq!(h.panel_user(100_014).status, UserStatus::Disabled);
    h.finish().await;
}
