//! The same worker on the in-process bus (the standalone mode's transport), with PostgreSQL:
//! two instances compete on one queue, and a provider 500 goes through the retry delays.

use std::sync::Arc;
use std::time::Duration;

use domain::PaymentStatus;
use messaging::{Bus, ConsumerSpec, InProcessBus, OutboxRelay, RelayConfig};
use payment_worker::{ServiceSettings, Worker, WorkerTasks};
use sandbox::yookassa::Fault;
use sea_orm::Database;
use service_kit::Shutdown;
use tokio::sync::Notify;

use crate::helpers::*;

pub(crate) struct Bench {
    pub(crate) nudge: Arc<Notify>,
    workers: Vec<WorkerTasks>,
    relay: tokio::task::JoinHandle<()>,
    shutdown: Shutdown,
}

/// `instances` workers, each with its own connection pool, on one in-process bus, plus one
/// outbox relay (one per database, as on SQLite).
pub(crate) async fn bench(env: &Env, settings: &ServiceSettings, instances: usize) -> Bench {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    bus.declare(&payment_worker::consumer_spec(settings))
        .await
        .unwrap();
    bus.declare(&ConsumerSpec::new("sink", ["payment.#"]))
        .await
        .unwrap();
    let shutdown = Shutdown::new();
    let relay = OutboxRelay::new(env.db.conn.clone(), bus.clone(), RelayConfig::default());
    let nudge = relay.nudge();
    let relay = relay.spawn(shutdown.clone());
    let mut workers = Vec::new();
    for _ in 0..instances {
        let db = Database::connect(env.db.url.as_str()).await.unwrap();
        let worker = Worker::from_settings(settings, db, bus.clone(), nudge.clone()).unwrap();
        workers.push(worker.spawn(shutdown.clone()));
    }
    Bench {
        nudge,
        workers,
        relay,
        shutdown,
    }
}

impl Bench {
    pub(crate) async fn stop(self) -> Vec<u64> {
        self.shutdown.cancel();
        let mut handled = Vec::new();
        for worker in self.workers {
            handled.push(worker.stats.handled());
            tokio::time::timeout(Duration::from_secs(30), worker.join())
                .await
                .expect("worker stops");
        }
        self.relay.await.unwrap();
        handled
    }
}

#[tokio::test]
async fn two_in_process_workers_complete_every_payment_exactly_once() {
    let env = env().await;
    let db = &env.db.conn;
    let settings = worker_settings(
        &env.shop,
        &[
            ("WORKER_PREFETCH", "4"),
            ("RECONCILE_ENABLED", "true"),
            ("RECONCILE_POLL_MS", "50"),
            ("RECONCILE_FIRST_CHECK_SECS", "0"),
        ],
    );
    let bench = bench(&env, &settings, 2).await;
    let mut payments = Vec::new();
    let mut envelopes = Vec::new();
    for _ in 0..20 {
        let p = payment(&env).await;
        env.shop.pay(ppid(&p)).unwrap();
        for i in 0..3 {
            envelopes.push(notify(db, &p, "succeeded", &format!(":{i}")).await);
        }
        payments.push(p);
    }
    bench.nudge.notify_one();
    let all_done = eventually(Duration::from_secs(60), || async {
        let mut done = true;
        for envelope in &envelopes {
            done &= inbox_row(db, envelope).await.processed_at.is_some();
        }
        done
    })
    .await;
    assert!(all_done, "every notification processed");
    for p in &payments {
        assert_eq!(reload(db, p.id).await.status, PaymentStatus::Succeeded);
        assert_eq!(events(db, "payment.completed", p.id).await.len(), 1);
        assert_eq!(logs(db, "payment.completed", p.id).await.len(), 1);
    }
    let handled = bench.stop().await;
    assert_eq!(handled.iter().sum::<u64>(), envelopes.len() as u64);
}

#[tokio::test]
async fn a_500_on_the_in_process_bus_is_retried_and_completes_once() {
    let env = env().await;
    let db = &env.db.conn;
    let settings = worker_settings(&env.shop, &[]);
    let bench = bench(&env, &settings, 1).await;
    let payment = payment(&env).await;
    env.shop.pay(ppid(&payment)).unwrap();
    env.shop.push_fault(Fault::InternalError, 4);
    let envelope = notify(db, &payment, "succeeded", "").await;
    bench.nudge.notify_one();

    let done = eventually(Duration::from_secs(20), || async {
        reload(db, payment.id).await.status == PaymentStatus::Succeeded
    })
    .await;
    assert!(done, "completed after the retries");
    assert_eq!(fetches(&env.shop, &payment), [500, 500, 500, 500, 200]);
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
    assert_eq!(
        inbox_row(db, &envelope).await.outcome.as_deref(),
        Some("applied")
    );
    let retried = bench.workers[0].stats.retried();
    assert_eq!(
        retried, 2,
        "two failed deliveries went through the delay queue"
    );
    bench.stop().await;
}
