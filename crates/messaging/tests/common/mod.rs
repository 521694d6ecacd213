//! Fixtures and scenarios shared by the RabbitMQ and the in-process bus tests: each scenario
//! runs unchanged on both, through the same relay and consumer runner.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use messaging::events::{PaymentCompleted, PaymentSnapshot};
use messaging::{
    Bus, ConsumerRunner, ConsumerSpec, ConsumerStats, DeliverySource, Envelope, Handler,
    HandlerError, InProcessBus, OutboxRelay, OutgoingMessage, Prepared, PublishError, Publisher,
    RabbitBus, RabbitConfig, RelayConfig, RetryPolicy, RunnerConfig,
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, Statement, TransactionTrait,
};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(20);

/// A database, a bus, and the topology to remove afterwards.
pub struct Fixture {
    pub db: DatabaseConnection,
    pub bus: Arc<dyn Bus>,
    rabbit: Option<RabbitBus>,
    specs: Mutex<Vec<ConsumerSpec>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub shutdown: CancellationToken,
    _test_db: TestDb,
}

impl Fixture {
    pub async fn rabbit_pg(tag: &str) -> Self {
        let rabbit = rabbit(tag).await;
        Self::new(TestDb::new().await, Arc::new(rabbit.clone()), Some(rabbit)).await
    }

    /// On quorum work and parking queues whatever `AMQP_QUEUE_TYPE` says (the suite may run
    /// on classic queues).
    pub async fn rabbit_quorum_pg(tag: &str) -> Self {
        let config = RabbitConfig::new(testkit::amqp_url(), testkit::unique_prefix(tag))
            .with_queue_type(messaging::QueueType::Quorum);
        let rabbit = RabbitBus::connect(config).await.unwrap();
        Self::new(TestDb::new().await, Arc::new(rabbit.clone()), Some(rabbit)).await
    }

    pub async fn memory_sqlite() -> Self {
        Self::new(TestDb::sqlite().await, Arc::new(InProcessBus::new()), None).await
    }

    pub async fn memory_pg() -> Self {
        Self::new(TestDb::new().await, Arc::new(InProcessBus::new()), None).await
    }

    async fn new(test_db: TestDb, bus: Arc<dyn Bus>, rabbit: Option<RabbitBus>) -> Self {
        let db = test_db.conn.clone();
        db.execute_unprepared(
            "CREATE TABLE test_effects (consumer TEXT NOT NULL, event_id TEXT NOT NULL)",
        )
        .await
        .unwrap();
        Self {
            db,
            bus,
            rabbit,
            specs: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
            _test_db: test_db,
        }
    }

    /// Remembers a runner or relay task so `finish` waits for it to stop.
    pub fn track(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks.lock().unwrap().push(task);
    }

    pub fn rabbit(&self) -> Option<&RabbitBus> {
        self.rabbit.as_ref()
    }

    pub fn publisher(&self) -> Arc<dyn Publisher> {
        self.bus.clone()
    }

    pub fn source(&self) -> Arc<dyn DeliverySource> {
        self.bus.clone()
    }

    /// A runner for `handler` with short retry delays; its topology is declared at once so
    /// publishing can route to it.
    pub async fn runner(&self, handler: impl Handler, retry: RetryPolicy) -> ConsumerRunner {
        let runner = ConsumerRunner::new(
            handler,
            self.db.clone(),
            self.source(),
            RunnerConfig {
                prefetch: 8,
                batch: 8,
                retry,
                resubscribe_delay: Duration::from_millis(100),
                parking_poll_interval: Duration::from_millis(500),
            },
        );
        self.bus.declare(runner.spec()).await.unwrap();
        self.specs.lock().unwrap().push(runner.spec().clone());
        runner
    }

    pub fn relay(&self, publisher: Arc<dyn Publisher>) -> OutboxRelay {
        OutboxRelay::new(
            self.db.clone(),
            publisher,
            RelayConfig {
                batch_size: 10,
                poll_interval: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
            },
        )
    }

    /// Commits one outbox row and returns its envelope.
    pub async fn enqueue_committed(&self) -> Envelope {
        let envelope = payment_completed();
        let tx = self.db.begin().await.unwrap();
        messaging::outbox::enqueue(&tx, &envelope).await.unwrap();
        tx.commit().await.unwrap();
        envelope
    }

    pub async fn effects(&self, consumer: &str, event: &Envelope) -> u64 {
        self.count(
            "SELECT COUNT(*) AS n FROM test_effects WHERE consumer = $1 AND event_id = $2",
            vec![consumer.into(), event.message_id().into()],
        )
        .await
    }

    pub async fn all_effects(&self, consumer: &str) -> u64 {
        self.count(
            "SELECT COUNT(*) AS n FROM test_effects WHERE consumer = $1",
            vec![consumer.into()],
        )
        .await
    }

    pub async fn distinct_effects(&self, consumer: &str) -> u64 {
        self.count(
            "SELECT COUNT(DISTINCT event_id) AS n FROM test_effects WHERE consumer = $1",
            vec![consumer.into()],
        )
        .await
    }

    pub async fn pending(&self) -> u64 {
        messaging::outbox::pending_count(&self.db).await.unwrap()
    }

    pub async fn outbox_rows(&self) -> u64 {
        self.count("SELECT COUNT(*) AS n FROM outbox", vec![]).await
    }

    async fn count(&self, sql: &str, values: Vec<sea_orm::Value>) -> u64 {
        let backend = self.db.get_database_backend();
        // SQLite takes `?` placeholders.
        let sql = if backend == sea_orm::DbBackend::Sqlite {
            sql.replace("$1", "?").replace("$2", "?")
        } else {
            sql.to_owned()
        };
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(backend, sql, values))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap() as u64
    }

    /// Stops everything and removes the test's queues and exchange.
    pub async fn finish(mut self) {
        self.shutdown.cancel();
        // Deleting a queue under a live consumer races its cancellation.
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for task in tasks {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("tasks stop on shutdown")
                .unwrap();
        }
        if let Some(rabbit) = self.rabbit.take() {
            let specs = self.specs.lock().unwrap().clone();
            for spec in &specs {
                rabbit.delete_consumer(spec).await.unwrap();
            }
            rabbit.delete_exchange().await.unwrap();
            rabbit.close().await;
        }
    }
}

impl Drop for Fixture {
    /// A test that failed before `finish` still removes its queues, from a runtime of its own
    /// since the test's runtime is unwinding.
    fn drop(&mut self) {
        let Some(rabbit) = self.rabbit.take() else {
            return;
        };
        self.shutdown.cancel();
        let prefix = rabbit.names().prefix().to_owned();
        let specs = std::mem::take(&mut *self.specs.lock().unwrap_or_else(|e| e.into_inner()));
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                // Give the runners a moment to stop consuming.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let config = RabbitConfig::new(testkit::amqp_url(), prefix);
                if let Ok(bus) = RabbitBus::connect(config).await {
                    for spec in &specs {
                        let _ = bus.delete_consumer(spec).await;
                    }
                    let _ = bus.delete_exchange().await;
                    bus.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

pub async fn rabbit(tag: &str) -> RabbitBus {
    RabbitBus::connect(RabbitConfig::new(
        testkit::amqp_url(),
        testkit::unique_prefix(tag),
    ))
    .await
    .unwrap()
}

pub fn payment_completed() -> Envelope {
    let payment_id = domain::PaymentId::new();
    let event = PaymentCompleted {
        payment: PaymentSnapshot {
            payment_id,
            user_id: 1,
            telegram_id: 1_000_001,
            tariff_code: "month_1".into(),
            provider: domain::ProviderId::from_static("yookassa"),
            amount_minor: 19_900,
            currency: "RUB".into(),
        },
        paid_at: Utc::now(),
        processing_ms: 1_200,
    };
    Envelope::new(&event, payment_id, None).unwrap()
}

/// What a [`TestHandler`] does and did.
#[derive(Default)]
pub struct HandlerState {
    /// Every call, including failed ones.
    pub calls: AtomicU32,
    /// Fail this many first attempts of each event.
    pub fail_first: AtomicU32,
    /// Fail every attempt.
    pub always_fail: AtomicBool,
    /// `Handler::committed` calls: one per committed `handle`, none for failed attempts.
    pub committed: AtomicU32,
    /// Events that fail every attempt, permanently (parked at once).
    pub poison: Mutex<HashSet<Uuid>>,
    attempts: Mutex<HashMap<Uuid, u32>>,
}

/// Writes one `test_effects` row per call through the transaction, then fails as told — so an
/// effect that is not rolled back on failure, or applied twice, shows up as an extra row.
pub struct TestHandler {
    pub name: String,
    pub bindings: Vec<String>,
    pub state: Arc<HandlerState>,
}

impl TestHandler {
    pub fn new(name: &str, bindings: &[&str]) -> (Self, Arc<HandlerState>) {
        let state = Arc::new(HandlerState::default());
        (
            Self {
                name: name.into(),
                bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
                state: state.clone(),
            },
            state,
        )
    }
}

#[async_trait]
impl Handler for TestHandler {
    fn consumer(&self) -> &str {
        &self.name
    }

    fn bindings(&self) -> Vec<String> {
        self.bindings.clone()
    }

    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        _prepared: Prepared,
    ) -> Result<(), HandlerError> {
        self.state.calls.fetch_add(1, Ordering::SeqCst);
        envelope.decode::<PaymentCompleted>()?;
        record_effect(tx, &self.name, envelope).await?;
        let attempt = {
            let mut attempts = self.state.attempts.lock().unwrap();
            let n = attempts.entry(envelope.event_id).or_default();
            *n += 1;
            *n
        };
        if self
            .state
            .poison
            .lock()
            .unwrap()
            .contains(&envelope.event_id)
        {
            return Err(HandlerError::permanent(format!(
                "poison (attempt {attempt})"
            )));
        }
        if self.state.always_fail.load(Ordering::SeqCst)
            || attempt <= self.state.fail_first.load(Ordering::SeqCst)
        {
            return Err(HandlerError::transient(format!("boom (attempt {attempt})")));
        }
        Ok(())
    }

    fn committed(&self, _envelope: &Envelope) {
        self.state.committed.fetch_add(1, Ordering::SeqCst);
    }
}

/// One `test_effects` row for `envelope`, written through `tx`.
async fn record_effect(
    tx: &DatabaseTransaction,
    consumer: &str,
    envelope: &Envelope,
) -> Result<(), HandlerError> {
    let backend = tx.get_database_backend();
    let sql = if backend == sea_orm::DbBackend::Sqlite {
        "INSERT INTO test_effects (consumer, event_id) VALUES (?, ?)"
    } else {
        "INSERT INTO test_effects (consumer, event_id) VALUES ($1, $2)"
    };
    tx.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        vec![consumer.into(), envelope.message_id().into()],
    ))
    .await?;
    Ok(())
}

/// Polls `check` until it holds or `WAIT` passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes for real, then never returns: a relay that dies between the broker's confirm and
/// its commit.
pub struct PublishThenHang {
    pub inner: Arc<dyn Publisher>,
    pub published: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Publisher for PublishThenHang {
    async fn publish(&self, message: &OutgoingMessage) -> Result<(), PublishError> {
        self.inner.publish(message).await?;
        self.published.notify_one();
        std::future::pending().await
    }
}

/// Slows every batch a little so that concurrent relays interleave.
pub struct Slow {
    pub inner: Arc<dyn Publisher>,
}

#[async_trait]
impl Publisher for Slow {
    async fn publish(&self, message: &OutgoingMessage) -> Result<(), PublishError> {
        self.inner.publish(message).await
    }

    async fn publish_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.inner.publish_batch(messages).await
    }
}

fn short_retries() -> RetryPolicy {
    RetryPolicy::from_millis([50, 100, 150])
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// An outbox row written in a rolled-back transaction is never published; the committed one
/// next to it is.
pub async fn rolled_back_row_is_never_published(fx: Fixture) {
    let (handler, _state) = TestHandler::new("effects", &["payment.completed"]);
    let runner = fx.runner(handler, short_retries()).await;
    let stats = runner.stats();
    fx.track(runner.spawn(fx.shutdown.clone()));

    let rolled_back = payment_completed();
    let tx = fx.db.begin().await.unwrap();
    messaging::outbox::enqueue(&tx, &rolled_back).await.unwrap();
    tx.rollback().await.unwrap();
    let committed = fx.enqueue_committed().await;

    fx.track(fx.relay(fx.publisher()).spawn(fx.shutdown.clone()));
    eventually("the committed event is handled", || async {
        fx.effects("effects", &committed).await == 1
    })
    .await;
    // Several more polls: nothing else may show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fx.effects("effects", &rolled_back).await, 0);
    assert_eq!(fx.all_effects("effects").await, 1);
    assert_eq!(fx.outbox_rows().await, 1);
    assert_eq!(fx.pending().await, 0);
    assert_eq!(stats.handled(), 1);
    fx.finish().await;
}

/// A relay killed after the confirm but before its commit leaves the row unpublished; the next
/// relay publishes it again and the consumer skips the duplicate: the effect happens once.
pub async fn relay_death_duplicate_is_skipped(fx: Fixture) {
    let (handler, state) = TestHandler::new("effects", &["payment.completed"]);
    let runner = fx.runner(handler, short_retries()).await;
    let stats = runner.stats();
    fx.track(runner.spawn(fx.shutdown.clone()));
    let event = fx.enqueue_committed().await;

    let published = Arc::new(tokio::sync::Notify::new());
    let dying = fx
        .relay(Arc::new(PublishThenHang {
            inner: fx.publisher(),
            published: published.clone(),
        }))
        .spawn(CancellationToken::new());
    tokio::time::timeout(WAIT, published.notified())
        .await
        .expect("the first relay published");
    dying.abort();
    let _ = dying.await;
    assert_eq!(
        fx.pending().await,
        1,
        "the dead relay must not have marked the row"
    );

    fx.track(fx.relay(fx.publisher()).spawn(fx.shutdown.clone()));
    eventually("both copies reached the consumer", || async {
        stats.handled() + stats.duplicates() == 2
    })
    .await;
    assert_eq!(stats.handled(), 1);
    assert_eq!(stats.duplicates(), 1);
    assert_eq!(fx.effects("effects", &event).await, 1);
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
    eventually("the row is marked", || async { fx.pending().await == 0 }).await;
    fx.finish().await;
}

/// A handler that always fails: tried `max_attempts` times with the delays, then parked with
/// its error; replaying the parking queue after a fix applies it once.
pub async fn always_failing_handler_is_parked_then_replayed(fx: Fixture) {
    let (handler, state) = TestHandler::new("fragile", &["payment.completed"]);
    state.always_fail.store(true, Ordering::SeqCst);
    let retry = RetryPolicy::from_millis([50, 100]);
    let runner = fx.runner(handler, retry.clone()).await;
    let stats = runner.stats();
    fx.track(runner.spawn(fx.shutdown.clone()));

    let event = payment_completed();
    fx.bus.publish_envelope(&event).await.unwrap();
    // The runner counts a parked message after the broker confirmed it in the parking queue,
    // so wait for both.
    eventually("the message is parked", || async {
        fx.bus.parking_count("fragile").await.unwrap() == 1 && stats.parked() == 1
    })
    .await;
    assert_eq!(state.calls.load(Ordering::SeqCst), retry.max_attempts());
    assert_eq!(stats.retried(), 2);
    assert_eq!(stats.parked(), 1);
    assert_eq!(stats.handled(), 0);
    assert_eq!(
        fx.effects("fragile", &event).await,
        0,
        "failed attempts rolled back"
    );

    let parked = fx.bus.peek_parked("fragile", 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].attempts, 3);
    assert_eq!(parked[0].error.as_deref(), Some("boom (attempt 3)"));
    assert_eq!(parked[0].message.routing_key, "payment.completed");
    assert_eq!(parked[0].message.message_id, Some(event.message_id()));
    assert!(parked[0].parked_at.is_some());
    // Peeking leaves it in place (RabbitMQ puts it back asynchronously).
    eventually("the peeked message is back", || async {
        fx.bus.parking_count("fragile").await.unwrap() == 1
    })
    .await;

    // Replayed before the fix: a fresh attempt count, so all attempts again, then parked again.
    assert_eq!(fx.bus.replay_parked("fragile", None).await.unwrap(), 1);
    eventually("parked again after a full set of attempts", || async {
        stats.parked() == 2 && fx.bus.parking_count("fragile").await.unwrap() == 1
    })
    .await;
    assert_eq!(state.calls.load(Ordering::SeqCst), 2 * retry.max_attempts());

    state.always_fail.store(false, Ordering::SeqCst);
    assert_eq!(fx.bus.replay_parked("fragile", None).await.unwrap(), 1);
    eventually("the replayed message is handled", || async {
        stats.handled() == 1
    })
    .await;
    assert_eq!(fx.effects("fragile", &event).await, 1);
    assert_eq!(fx.bus.parking_count("fragile").await.unwrap(), 0);
    fx.finish().await;
}

/// Fails twice, then succeeds: two retries with growing delays, one effect.
pub async fn fails_twice_then_succeeds_once(fx: Fixture) {
    let (handler, state) = TestHandler::new("flaky", &["payment.completed"]);
    state.fail_first.store(2, Ordering::SeqCst);
    let runner = fx.runner(handler, short_retries()).await;
    let stats = runner.stats();
    fx.track(runner.spawn(fx.shutdown.clone()));

    let started = Instant::now();
    let event = fx.enqueue_committed().await;
    fx.track(fx.relay(fx.publisher()).spawn(fx.shutdown.clone()));
    eventually("handled", || async { stats.handled() == 1 }).await;
    let elapsed = started.elapsed();

    assert_eq!(state.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        state.committed.load(Ordering::SeqCst),
        1,
        "the commit hook runs for the attempt that committed only"
    );
    assert_eq!(stats.retried(), 2);
    assert_eq!(stats.parked(), 0);
    assert_eq!(fx.effects("flaky", &event).await, 1);
    assert_eq!(fx.bus.parking_count("flaky").await.unwrap(), 0);
    assert!(
        elapsed >= Duration::from_millis(150),
        "retries waited 50 + 100 ms, took {elapsed:?}"
    );
    fx.finish().await;
}

/// A message that cannot be decoded is parked at its first delivery, without calling the
/// handler.
pub async fn undecodable_message_is_parked_at_once(fx: Fixture) {
    let (handler, state) = TestHandler::new("strict", &["payment.completed"]);
    let runner = fx.runner(handler, short_retries()).await;
    let stats = runner.stats();
    fx.track(runner.spawn(fx.shutdown.clone()));

    fx.bus
        .publish(&OutgoingMessage {
            routing_key: "payment.completed".into(),
            message_id: "garbage-1".into(),
            body: b"{not json".to_vec(),
        })
        .await
        .unwrap();
    eventually("parked", || async {
        fx.bus.parking_count("strict").await.unwrap() == 1
    })
    .await;
    assert_eq!(state.calls.load(Ordering::SeqCst), 0);
    assert_eq!(stats.retried(), 0);
    let parked = fx.bus.peek_parked("strict", 1).await.unwrap();
    assert_eq!(parked[0].attempts, 1);
    assert!(
        parked[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .starts_with("not a valid event envelope"),
        "{parked:?}"
    );
    fx.finish().await;
}

/// A retry goes back to the consumer that failed only: another consumer bound to the same
/// key sees the event once.
pub async fn retry_reaches_only_the_failing_consumer(fx: Fixture) {
    let (failing, failing_state) = TestHandler::new("first", &["payment.*"]);
    failing_state.fail_first.store(1, Ordering::SeqCst);
    let (steady, steady_state) = TestHandler::new("second", &["payment.completed"]);
    let failing = fx.runner(failing, short_retries()).await;
    let steady = fx.runner(steady, short_retries()).await;
    let (failing_stats, steady_stats) = (failing.stats(), steady.stats());
    fx.track(failing.spawn(fx.shutdown.clone()));
    fx.track(steady.spawn(fx.shutdown.clone()));

    let event = payment_completed();
    fx.bus.publish_envelope(&event).await.unwrap();
    eventually("both handled", || async {
        failing_stats.handled() == 1 && steady_stats.handled() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(failing_state.calls.load(Ordering::SeqCst), 2);
    assert_eq!(steady_state.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        steady_stats.duplicates(),
        0,
        "the retry must not reach `second`"
    );
    assert_eq!(fx.effects("first", &event).await, 1);
    assert_eq!(fx.effects("second", &event).await, 1);
    fx.finish().await;
}

/// Two relays drain one outbox concurrently while two competing runners consume: every event
/// is published exactly once (no crash here) and applied exactly once.
pub async fn concurrent_relays_lose_nothing(fx: Fixture) {
    const EVENTS: u64 = 200;
    let (handler, _) = TestHandler::new("bulk", &["payment.completed"]);
    let (handler2, _) = TestHandler::new("bulk", &["payment.completed"]);
    let runner = fx.runner(handler, short_retries()).await;
    let runner2 = fx.runner(handler2, short_retries()).await;
    let stats: [Arc<ConsumerStats>; 2] = [runner.stats(), runner2.stats()];
    fx.track(runner.spawn(fx.shutdown.clone()));
    fx.track(runner2.spawn(fx.shutdown.clone()));

    for _ in 0..EVENTS {
        fx.enqueue_committed().await;
    }
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let relay = fx.relay(Arc::new(Slow {
                inner: fx.publisher(),
            }));
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let mut published = 0;
                loop {
                    let batch = relay.run_once().await.unwrap();
                    assert_eq!(batch.failed, 0);
                    published += batch.published;
                    if batch.claimed == 0 {
                        return published;
                    }
                }
            })
        })
        .collect();
    let mut per_relay = Vec::new();
    for relay in relays {
        per_relay.push(relay.await.unwrap() as u64);
    }
    assert_eq!(
        per_relay.iter().sum::<u64>(),
        EVENTS,
        "published exactly once: {per_relay:?}"
    );
    assert!(
        per_relay.iter().all(|n| *n > 0),
        "both relays took part: {per_relay:?}"
    );
    assert_eq!(fx.pending().await, 0);

    eventually("every event applied", || async {
        fx.distinct_effects("bulk").await == EVENTS
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fx.all_effects("bulk").await,
        EVENTS,
        "no event applied twice"
    );
    let handled: u64 = stats.iter().map(|s| s.handled()).sum();
    let duplicates: u64 = stats.iter().map(|s| s.duplicates()).sum();
    assert_eq!(handled, EVENTS);
    assert_eq!(duplicates, 0);
    fx.finish().await;
}

/// An event no queue is bound to is closed as unroutable (with the reason) instead of being
/// retried forever, and does not hold back the events behind it.
pub async fn unroutable_event_is_closed_and_does_not_block(fx: Fixture) {
    use domain::entities::outbox;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

    let (handler, _state) = TestHandler::new("effects", &["payment.completed"]);
    let runner = fx.runner(handler, short_retries()).await;
    fx.track(runner.spawn(fx.shutdown.clone()));

    let nobody = payment_completed().with_routing_key("nobody.listens");
    let tx = fx.db.begin().await.unwrap();
    messaging::outbox::enqueue(&tx, &nobody).await.unwrap();
    tx.commit().await.unwrap();
    let routed = fx.enqueue_committed().await;

    fx.track(fx.relay(fx.publisher()).spawn(fx.shutdown.clone()));
    eventually("the routed event is handled", || async {
        fx.effects("effects", &routed).await == 1
    })
    .await;
    eventually("the outbox drains", || async { fx.pending().await == 0 }).await;
    let row = outbox::Entity::find()
        .filter(outbox::Column::EventId.eq(nobody.event_id))
        .one(&fx.db)
        .await
        .unwrap()
        .unwrap();
    assert!(row.published_at.is_some());
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or_default()
            .starts_with("unroutable"),
        "{:?}",
        row.last_error
    );
    assert_eq!(fx.all_effects("effects").await, 1);
    fx.finish().await;
}

/// Forwards every event it did not write itself as a new outbox row written in the handling
/// transaction, and records every event like [`TestHandler`]. A handling that is rolled back
/// and tried again forwards again: only a committed forward counts.
struct Forwarder {
    inner: TestHandler,
    /// The ids of the events it wrote.
    written: Mutex<HashSet<Uuid>>,
}

#[async_trait]
impl Handler for Forwarder {
    fn consumer(&self) -> &str {
        self.inner.consumer()
    }

    fn bindings(&self) -> Vec<String> {
        self.inner.bindings()
    }

    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        prepared: Prepared,
    ) -> Result<(), HandlerError> {
        self.inner.handle(tx, envelope, prepared).await?;
        if !self.written.lock().unwrap().contains(&envelope.event_id) {
            let forward = payment_completed();
            self.written.lock().unwrap().insert(forward.event_id);
            messaging::outbox::enqueue(tx, &forward)
                .await
                .map_err(HandlerError::transient)?;
        }
        Ok(())
    }
}

/// An event a handler writes is published as soon as the handler commits: the runner wakes
/// the relay, which otherwise would not poll again for an hour.
pub async fn handler_commit_wakes_the_relay(fx: Fixture) {
    let (inner, _state) = TestHandler::new("forwarder", &["payment.completed"]);
    let relay = OutboxRelay::new(
        fx.db.clone(),
        fx.publisher(),
        RelayConfig {
            batch_size: 10,
            poll_interval: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(3600),
        },
    );
    let runner = ConsumerRunner::new(
        Forwarder {
            inner,
            written: Mutex::default(),
        },
        fx.db.clone(),
        fx.source(),
        RunnerConfig {
            prefetch: 8,
            batch: 8,
            retry: short_retries(),
            resubscribe_delay: Duration::from_millis(100),
            parking_poll_interval: Duration::from_millis(500),
        },
    )
    .with_outbox_nudge(relay.nudge());
    fx.bus.declare(runner.spec()).await.unwrap();
    fx.specs.lock().unwrap().push(runner.spec().clone());
    fx.track(runner.spawn(fx.shutdown.clone()));

    let first = fx.enqueue_committed().await;
    // The relay's first pass at start-up publishes `first`; after that only a nudge wakes it.
    fx.track(relay.spawn(fx.shutdown.clone()));
    eventually("the forwarded event is published and handled", || async {
        fx.all_effects("forwarder").await == 2
    })
    .await;
    assert_eq!(fx.effects("forwarder", &first).await, 1);
    assert_eq!(fx.distinct_effects("forwarder").await, 2);
    assert_eq!(fx.pending().await, 0);
    fx.finish().await;
}

/// Writers nudge the relay after their commit, so a nudge is often waiting when the relay
/// claims the very row it announces. The claim answers it: no second, empty claim follows,
/// and a row committed later still wakes the relay.
pub async fn a_claim_answers_the_nudges_before_it(fx: Fixture) {
    let claims = Arc::new(AtomicU32::new(0));
    let mut db = fx.db.clone();
    let counter = claims.clone();
    db.set_metric_callback(move |info| {
        let sql = &info.statement.sql;
        if sql.starts_with("SELECT") && sql.contains(r#"FROM "outbox""#) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let relay = OutboxRelay::new(
        db,
        fx.publisher(),
        RelayConfig {
            batch_size: 10,
            poll_interval: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(3600),
        },
    );
    let nudge = relay.nudge();
    for _ in 0..2 {
        fx.enqueue_committed().await;
        nudge.notify_one();
    }
    fx.track(relay.spawn(fx.shutdown.clone()));
    eventually("both rows are published", || async {
        fx.pending().await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        claims.load(Ordering::SeqCst),
        1,
        "one claim took both rows and answered both nudges"
    );

    fx.enqueue_committed().await;
    nudge.notify_one();
    eventually("the later row is published", || async {
        fx.pending().await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(claims.load(Ordering::SeqCst), 2);
    fx.finish().await;
}

/// What a [`Preparing`] handler did.
#[derive(Default)]
pub struct PreparingState {
    /// Every call of `prepare`, including failed ones.
    pub prepares: AtomicU32,
    /// Every call of `handle`.
    pub handles: AtomicU32,
    /// Fail this many first `prepare` calls.
    pub fail_first_prepares: AtomicU32,
    /// What `handle` received from `prepare`, in order.
    pub received: Mutex<Vec<String>>,
    /// What `prepare` saw that it must not have: an open transaction, the marker already written.
    pub violations: Mutex<Vec<String>>,
}

impl PreparingState {
    /// `(prepare calls, handle calls)`.
    pub fn calls(&self) -> (u32, u32) {
        (
            self.prepares.load(Ordering::SeqCst),
            self.handles.load(Ordering::SeqCst),
        )
    }
}

/// A handler with an outside step: `prepare` checks on its own connection that no
/// transaction of the runner is open and that the message's marker is not written yet, then
/// hands `"<event id>#<prepare call>"` to `handle`, which records it and one effect row.
pub struct Preparing {
    pub name: String,
    pub db: DatabaseConnection,
    pub state: Arc<PreparingState>,
    /// [`Handler::prepare_spots_done_work`]: the runner leaves the look-up to `prepare`.
    pub spots_done_work: bool,
}

impl Preparing {
    pub fn new(name: &str, db: DatabaseConnection) -> (Self, Arc<PreparingState>) {
        let state = Arc::new(PreparingState::default());
        (
            Self {
                name: name.into(),
                db,
                state: state.clone(),
                spots_done_work: false,
            },
            state,
        )
    }

    /// Whether a transaction other than this query's is open on the test's database. On
    /// PostgreSQL, from `pg_stat_activity`; on SQLite the test pool has one connection, so a
    /// transaction holding it would make this query wait until the timeout.
    async fn transaction_open(&self) -> Result<bool, String> {
        let backend = self.db.get_database_backend();
        let sql = if backend == sea_orm::DbBackend::Postgres {
            "SELECT COUNT(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND xact_start IS NOT NULL"
        } else {
            "SELECT 0 AS n"
        };
        let query = self
            .db
            .query_one_raw(Statement::from_string(backend, sql.to_owned()));
        match tokio::time::timeout(Duration::from_secs(5), query).await {
            Err(_) => Ok(true),
            Ok(Err(err)) => Err(err.to_string()),
            Ok(Ok(row)) => {
                let n: i64 = row.unwrap().try_get("", "n").map_err(|e| e.to_string())?;
                Ok(n > 0)
            }
        }
    }

    async fn marker_written(&self, envelope: &Envelope) -> Result<bool, String> {
        use domain::entities::processed_messages;
        use sea_orm::EntityTrait;
        processed_messages::Entity::find_by_id((self.name.clone(), envelope.message_id()))
            .one(&self.db)
            .await
            .map(|row| row.is_some())
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Handler for Preparing {
    fn consumer(&self) -> &str {
        &self.name
    }

    fn bindings(&self) -> Vec<String> {
        vec!["payment.completed".into()]
    }

    fn prepares(&self) -> bool {
        true
    }

    fn prepare_spots_done_work(&self) -> bool {
        self.spots_done_work
    }

    async fn prepare(&self, envelope: &Envelope) -> Result<Prepared, HandlerError> {
        let call = self.state.prepares.fetch_add(1, Ordering::SeqCst) + 1;
        let mut violations = Vec::new();
        match self.transaction_open().await {
            Ok(false) => {}
            Ok(true) => violations.push(format!("prepare #{call}: a transaction is open")),
            Err(err) => violations.push(format!("prepare #{call}: {err}")),
        }
        match self.marker_written(envelope).await {
            Ok(false) => {}
            // Done work it spots itself: told so by handing `handle` nothing.
            Ok(true) if self.spots_done_work => {
                self.state.violations.lock().unwrap().extend(violations);
                return Ok(Prepared::none());
            }
            Ok(true) => violations.push(format!("prepare #{call}: the marker is written")),
            Err(err) => violations.push(format!("prepare #{call}: {err}")),
        }
        self.state.violations.lock().unwrap().extend(violations);
        if call <= self.state.fail_first_prepares.load(Ordering::SeqCst) {
            return Err(HandlerError::transient(format!(
                "prepare failed (call {call})"
            )));
        }
        Ok(Prepared::new(format!("{}#{call}", envelope.event_id)))
    }

    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        prepared: Prepared,
    ) -> Result<(), HandlerError> {
        self.state.handles.fetch_add(1, Ordering::SeqCst);
        let Some(value) = prepared.take::<String>() else {
            return Err(HandlerError::permanent("handle got nothing from prepare"));
        };
        self.state.received.lock().unwrap().push(value);
        record_effect(tx, &self.name, envelope).await
    }
}

/// A handler's `prepare` runs before and outside the transaction (no transaction open, the
/// marker not written) and its value reaches `handle`; a failing `prepare` is retried like a
/// failing `handle`; a redelivered processed message is skipped without calling `prepare`.
pub async fn prepare_runs_outside_the_transaction(fx: Fixture) {
    let (handler, state) = Preparing::new("preparing", fx.db.clone());
    state.fail_first_prepares.store(2, Ordering::SeqCst);
    let runner = fx.runner(handler, short_retries()).await;
    let stats = runner.stats();
    fx.track(runner.spawn(fx.shutdown.clone()));

    let event = payment_completed();
    fx.bus.publish_envelope(&event).await.unwrap();
    eventually("handled after two failed prepares", || async {
        stats.handled() == 1
    })
    .await;
    assert_eq!(state.calls(), (3, 1), "(prepare, handle) calls");
    assert_eq!(stats.retried(), 2);
    assert_eq!(stats.parked(), 0);
    assert_eq!(
        *state.received.lock().unwrap(),
        vec![format!("{}#3", event.event_id)],
        "handle got what the successful prepare returned"
    );
    assert_eq!(fx.effects("preparing", &event).await, 1);

    // The same message again: skipped before `prepare`.
    fx.bus.publish_envelope(&event).await.unwrap();
    eventually("the redelivery is skipped", || async {
        stats.duplicates() == 1
    })
    .await;
    assert_eq!(state.calls(), (3, 1), "no more calls for the duplicate");
    assert_eq!(fx.effects("preparing", &event).await, 1);
    assert!(
        state.violations.lock().unwrap().is_empty(),
        "{:?}",
        state.violations.lock().unwrap()
    );
    fx.finish().await;
}

/// A handler whose `prepare` spots done work itself is asked about a processed message
/// instead of the runner's look-up of the idempotency row; the copy is still a duplicate,
/// handled once.
pub async fn prepare_that_spots_done_work_replaces_the_runners_look_up(fx: Fixture) {
    let (mut handler, state) = Preparing::new("spotting", fx.db.clone());
    handler.spots_done_work = true;
    let runner = fx.runner(handler, short_retries()).await;
    let stats = runner.stats();
    fx.track(runner.spawn(fx.shutdown.clone()));

    let event = payment_completed();
    fx.bus.publish_envelope(&event).await.unwrap();
    eventually("handled", || async { stats.handled() == 1 }).await;
    fx.bus.publish_envelope(&event).await.unwrap();
    eventually("the copy is a duplicate", || async {
        stats.duplicates() == 1
    })
    .await;
    assert_eq!(
        state.calls(),
        (2, 1),
        "(prepare, handle): prepare saw the copy, handle did not"
    );
    assert_eq!(fx.effects("spotting", &event).await, 1);
    assert!(
        state.violations.lock().unwrap().is_empty(),
        "{:?}",
        state.violations.lock().unwrap()
    );
    fx.finish().await;
}

/// A backlog is handled in batches — fewer transactions than messages — and every message
/// once. A message that came twice (two copies under one id, next to each other in the
/// queue) is applied once: within a batch its second copy is a duplicate too.
pub async fn backlog_is_handled_in_batches(fx: Fixture) {
    const EVENTS: usize = 40;
    let (handler, state) = TestHandler::new("batched", &["payment.completed"]);
    let runner = fx.runner(handler, short_retries()).await;
    let stats = runner.stats();
    let mut events = Vec::new();
    for _ in 0..EVENTS {
        let event = payment_completed();
        fx.bus.publish_envelope(&event).await.unwrap();
        events.push(event);
    }
    fx.bus.publish_envelope(&events[7]).await.unwrap();
    fx.track(runner.spawn(fx.shutdown.clone()));

    eventually("all handled", || async {
        stats.handled() + stats.duplicates() == EVENTS as u64 + 1
    })
    .await;
    assert_eq!(stats.handled(), EVENTS as u64);
    assert_eq!(stats.duplicates(), 1);
    assert_eq!(fx.all_effects("batched").await, EVENTS as u64);
    assert_eq!(fx.distinct_effects("batched").await, EVENTS as u64);
    assert_eq!(state.committed.load(Ordering::SeqCst), EVENTS as u32);
    assert!(
        stats.transactions() <= EVENTS as u64 / 2,
        "{} messages took {} transactions",
        EVENTS,
        stats.transactions()
    );
    assert_eq!(stats.batches_split(), 0);
    fx.finish().await;
}

/// A message that fails inside a batch fails alone: the batch is rolled back, its messages
/// go back to the queue and come back (redelivered) one per transaction, so the others commit
/// once and the failing one is parked with nothing of it kept.
pub async fn a_failure_in_a_batch_fails_only_its_message(fx: Fixture) {
    const EVENTS: usize = 24;
    let (handler, state) = TestHandler::new("picky", &["payment.completed"]);
    let runner = fx.runner(handler, short_retries()).await;
    let stats = runner.stats();
    let mut events = Vec::new();
    for i in 0..EVENTS {
        let event = payment_completed();
        if i % 6 == 3 {
            state.poison.lock().unwrap().insert(event.event_id);
        }
        fx.bus.publish_envelope(&event).await.unwrap();
        events.push(event);
    }
    fx.track(runner.spawn(fx.shutdown.clone()));

    let poisoned = EVENTS / 6;
    eventually("all settled", || async {
        stats.handled() == (EVENTS - poisoned) as u64 && stats.parked() == poisoned as u64
    })
    .await;
    for (i, event) in events.iter().enumerate() {
        let expected = u64::from(i % 6 != 3);
        assert_eq!(fx.effects("picky", event).await, expected, "event {i}");
    }
    assert_eq!(stats.retried(), 0, "a permanent failure is not retried");
    if fx.db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        assert_eq!(
            stats.batches_split(),
            0,
            "SQLite's transactions hold one message"
        );
        assert_eq!(stats.transactions(), (EVENTS - poisoned) as u64);
    } else {
        assert!(stats.batches_split() >= 1, "no batch met a failure");
    }
    assert_eq!(
        state.committed.load(Ordering::SeqCst),
        (EVENTS - poisoned) as u32
    );
    eventually("parked", || async {
        fx.bus.parking_count("picky").await.unwrap() == poisoned as u64
    })
    .await;
    fx.finish().await;
}

/// Refuses the first `failures` publishes (a nack), then publishes for real.
pub struct FailFirst {
    pub inner: Arc<dyn Publisher>,
    pub failures: AtomicU32,
}

#[async_trait]
impl Publisher for FailFirst {
    async fn publish(&self, message: &OutgoingMessage) -> Result<(), PublishError> {
        let refuse = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return Err(PublishError::Nacked {
                routing_key: message.routing_key.clone(),
            });
        }
        self.inner.publish(message).await
    }
}

/// A publish that fails leaves its row open, with the attempt and the error recorded, while
/// the row published next to it is closed; the next pass publishes it.
pub async fn a_failed_publish_leaves_its_row_open(fx: Fixture) {
    use domain::entities::outbox;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

    let (handler, _state) = TestHandler::new("effects", &["payment.completed"]);
    let runner = fx.runner(handler, short_retries()).await;
    fx.track(runner.spawn(fx.shutdown.clone()));
    let refused = fx.enqueue_committed().await;
    let taken = fx.enqueue_committed().await;
    let relay = fx.relay(Arc::new(FailFirst {
        inner: fx.publisher(),
        failures: AtomicU32::new(1),
    }));

    let first = relay.run_once().await.unwrap();
    assert_eq!((first.claimed, first.published, first.failed), (2, 1, 1));
    assert_eq!(fx.pending().await, 1);
    let row = |event: Envelope| {
        let db = fx.db.clone();
        async move {
            outbox::Entity::find()
                .filter(outbox::Column::EventId.eq(event.event_id))
                .one(&db)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let open = row(refused.clone()).await;
    assert!(open.published_at.is_none(), "{open:?}");
    assert_eq!(open.attempts, 1);
    assert!(
        open.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("nacked")
    );
    let closed = row(taken.clone()).await;
    assert!(
        closed.published_at.is_some() && closed.attempts == 0,
        "{closed:?}"
    );

    let second = relay.run_once().await.unwrap();
    assert_eq!((second.claimed, second.published, second.failed), (1, 1, 0));
    assert_eq!(fx.pending().await, 0);
    eventually("both handled", || async {
        fx.effects("effects", &refused).await == 1 && fx.effects("effects", &taken).await == 1
    })
    .await;
    fx.finish().await;
}
