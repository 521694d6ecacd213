//! Outages of PostgreSQL and RabbitMQ as a service sees them: its connections go through
//! [`TcpProxy`]s that the test cuts and restores (the shared servers themselves keep running
//! for everyone else). `/health/ready` reports the outage and the recovery (directly and, from
//! its cache, on the ops server, with component names and states but no driver error text);
//! the consumer and the outbox relay carry on by themselves, and every message is applied
//! exactly once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use messaging::events::ProviderNotificationReceived;
use messaging::{
    ConsumerRunner, Envelope, Handler, HandlerError, Publisher, QueueType, RabbitBus, RabbitConfig,
    RunnerConfig,
};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement};
use service_kit::Shutdown;
use service_kit::proxy::TcpProxy;
use service_kit::runtime::Infra;
use service_kit::settings::{Source, load_common};
use testkit::TestDb;

const CONSUMER: &str = "reconnect-probe";

/// Records the event ids it handles, taking `pause` over each.
struct Recorder {
    seen: Arc<Mutex<Vec<uuid::Uuid>>>,
    pause: Duration,
}

impl Recorder {
    fn bindings_of() -> Vec<String> {
        vec!["provider.notification.reconnect".into()]
    }
}

#[async_trait]
impl Handler for Recorder {
    fn consumer(&self) -> &str {
        CONSUMER
    }

    fn bindings(&self) -> Vec<String> {
        Self::bindings_of()
    }

    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        _prepared: messaging::Prepared,
    ) -> Result<(), HandlerError> {
        // Touch the database inside the transaction, like every real handler.
        tx.execute_unprepared("SELECT 1").await?;
        tokio::time::sleep(self.pause).await;
        self.seen.lock().unwrap().push(envelope.event_id);
        Ok(())
    }
}

fn event(n: i64) -> Envelope {
    let event = ProviderNotificationReceived {
        provider: domain::ProviderId::from_static("reconnect"),
        notification_id: n,
        dedupe_key: format!("probe-{n}"),
        payment_id: None,
    };
    Envelope::new(&event, uuid::Uuid::now_v7(), None).unwrap()
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['/', '?']).next().unwrap();
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 60 s: {what}");
}

/// A test's database and broker, each behind a proxy.
struct Outage {
    db: TestDb,
    pg: TcpProxy,
    rabbit: TcpProxy,
    prefix: String,
}

impl Outage {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let pg = TcpProxy::start(host_port(&db.url)).await.unwrap();
        let rabbit = TcpProxy::start(host_port(&testkit::amqp_url()))
            .await
            .unwrap();
        Self {
            db,
            pg,
            rabbit,
            prefix: testkit::unique_prefix("reconnect"),
        }
    }

    fn common(&self) -> service_kit::CommonSettings {
        load_common(&Source::map([
            ("DATABASE_URL", self.pg.rewrite_url(&self.db.url).as_str()),
            (
                "AMQP_URL",
                self.rabbit.rewrite_url(&testkit::amqp_url()).as_str(),
            ),
            ("AMQP_PREFIX", self.prefix.as_str()),
            ("AMQP_QUEUE_TYPE", "classic"),
            ("RUN_MIGRATIONS", "false"),
        ]))
        .unwrap()
    }

    fn cut(&self) {
        self.pg.cut();
        self.rabbit.cut();
    }

    fn restore(&self) {
        self.pg.restore();
        self.rabbit.restore();
    }

    /// A publisher straight to the broker, not through the proxy.
    async fn direct_bus(&self) -> RabbitBus {
        RabbitBus::connect(
            RabbitConfig::new(testkit::amqp_url(), self.prefix.clone())
                .with_queue_type(QueueType::Classic),
        )
        .await
        .unwrap()
    }

    /// Deletes the queues and exchange the test declared on the shared broker.
    async fn clean_up(&self) {
        let bus = self.direct_bus().await;
        bus.delete_consumer(&messaging::ConsumerSpec::new(
            CONSUMER,
            Recorder::bindings_of(),
        ))
        .await
        .unwrap();
        bus.close().await;
        service_kit::testing::delete_system_topology(&testkit::amqp_url(), &self.prefix)
            .await
            .unwrap();
    }

    async fn processed(&self) -> i64 {
        self.db
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                format!("SELECT count(*)::bigint AS n FROM processed_messages WHERE consumer = '{CONSUMER}'"),
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get("", "n")
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_both_servers_is_reported_and_survived() {
    let outage = Outage::new().await;
    let infra = Infra::connect("reconnect-test", &outage.common())
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let runner = ConsumerRunner::new(
        Recorder {
            seen: seen.clone(),
            pause: Duration::ZERO,
        },
        infra.db.clone(),
        infra.bus.clone(),
        RunnerConfig {
            resubscribe_delay: Duration::from_millis(200),
            ..RunnerConfig::default()
        },
    );
    infra.bus.declare(runner.spec()).await.unwrap();
    let shutdown = Shutdown::new();
    let consuming = runner.spawn(shutdown.clone());
    let readiness = infra.readiness();
    let ops =
        service_kit::ops::serve_ops("127.0.0.1:0", readiness.clone(), shutdown.clone()).unwrap();
    let ops_addr = ops.addr.unwrap().to_string();
    let ops_ready = |status: u16, states: &'static str| {
        let ops_addr = ops_addr.clone();
        async move {
            let Ok((got, body)) = service_kit::testing::http_get(&ops_addr, "/health/ready").await
            else {
                return false;
            };
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            got == status
                && body["checks"]["database"] == states
                && body["checks"]["broker"] == states
        }
    };
    let direct = outage.direct_bus().await;
    let count = || seen.lock().unwrap().len();
    eventually("the ops server reports both servers up", || {
        ops_ready(200, "ok")
    })
    .await;

    let first = event(1);
    direct.publish_envelope(&first).await.unwrap();
    eventually("the first message is handled", || async { count() == 1 }).await;
    assert!(readiness.report().await.0);

    outage.cut();
    eventually("readiness reports both servers down", || async {
        let (ready, report) = readiness.report().await;
        !ready && report["database"] == "down" && report["broker"] == "down"
    })
    .await;
    eventually("the ops server reports both servers down", || {
        ops_ready(503, "down")
    })
    .await;
    // During the outage: one message waits in the queue, one event waits in the outbox
    // (written by someone who can still reach the database).
    direct.publish_envelope(&event(2)).await.unwrap();
    messaging::outbox::enqueue(&outage.db.conn, &event(3))
        .await
        .unwrap();
    eventually("the service keeps trying to reconnect", || async {
        outage.pg.refused() >= 2 && outage.rabbit.refused() >= 2
    })
    .await;

    outage.restore();
    eventually("readiness reports both servers back", || async {
        readiness.report().await.0
    })
    .await;
    eventually("the ops server reports both servers back", || {
        ops_ready(200, "ok")
    })
    .await;
    eventually(
        "the queued message and the outbox event are handled",
        || async { count() == 3 },
    )
    .await;
    direct.publish_envelope(&event(4)).await.unwrap();
    eventually("a later message is handled", || async { count() == 4 }).await;

    // Exactly once: four messages, four committed handlings, four idempotency rows.
    let mut ids = seen.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        4,
        "every message once: {:?}",
        seen.lock().unwrap()
    );
    assert_eq!(outage.processed().await, 4);

    shutdown.cancel();
    consuming.await.unwrap();
    ops.task.await.unwrap().unwrap();
    infra.stop().await;
    direct.close().await;
    outage.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_during_an_outage_waits_for_the_servers() {
    let outage = Outage::new().await;
    outage.cut();
    let common = outage.common();
    let shutdown = Shutdown::new();
    let connecting = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { Infra::connect_patiently("reconnect-test", &common, &shutdown).await }
    });
    eventually("start-up tried and was refused", || async {
        outage.pg.refused() >= 1
    })
    .await;
    assert!(!connecting.is_finished());
    outage.restore();
    let infra = connecting
        .await
        .unwrap()
        .expect("connected once the servers are back");
    assert!(infra.readiness().report().await.0);
    infra.stop().await;

    // Shut down while still waiting: gives up cleanly.
    outage.cut();
    let common = outage.common();
    let waiting = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { Infra::connect_patiently("reconnect-test", &common, &shutdown).await }
    });
    eventually("the second start-up was refused", || async {
        outage.pg.refused() >= 2
    })
    .await;
    shutdown.cancel();
    assert!(waiting.await.unwrap().is_none());
    outage.clean_up().await;
}

/// SIGTERM while messages are in hand: those are finished and acknowledged, the prefetched rest
/// go back to the queue; the next process handles them; nothing is applied twice or half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_messages_in_hand_and_returns_the_rest() {
    let outage = Outage::new().await;
    let direct = outage.direct_bus().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let start_runner = |infra: &Infra| {
        ConsumerRunner::new(
            Recorder {
                seen: seen.clone(),
                pause: Duration::from_millis(200),
            },
            infra.db.clone(),
            infra.bus.clone(),
            RunnerConfig {
                prefetch: 3,
                ..RunnerConfig::default()
            },
        )
    };
    let infra = Infra::connect("shutdown-test", &outage.common())
        .await
        .unwrap();
    let runner = start_runner(&infra);
    infra.bus.declare(runner.spec()).await.unwrap();
    let stats = runner.stats();
    for n in 0..12 {
        direct.publish_envelope(&event(n)).await.unwrap();
    }
    let shutdown = Shutdown::new();
    let consuming = runner.spawn(shutdown.clone());
    eventually("the first messages are handled", || async {
        stats.handled() >= 2
    })
    .await;
    shutdown.cancel();
    consuming.await.unwrap();
    infra.stop().await;
    let first_process = stats.handled();
    // Whatever the handler ran, it committed: no half-applied message.
    assert_eq!(outage.processed().await, first_process as i64);
    assert_eq!(seen.lock().unwrap().len() as u64, first_process);
    assert!(first_process < 12, "shut down before the queue was empty");

    // The next process takes the rest; nothing twice.
    let infra = Infra::connect("shutdown-test", &outage.common())
        .await
        .unwrap();
    let runner = start_runner(&infra);
    let shutdown = Shutdown::new();
    let consuming = runner.spawn(shutdown.clone());
    eventually("the rest is handled", || async {
        seen.lock().unwrap().len() == 12
    })
    .await;
    shutdown.cancel();
    consuming.await.unwrap();
    infra.stop().await;
    let mut ids = seen.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12);
    assert_eq!(outage.processed().await, 12);
    direct.close().await;
    outage.clean_up().await;
}
