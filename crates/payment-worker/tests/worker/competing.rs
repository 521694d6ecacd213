//! Two worker instances on one queue and one database: every payment is completed exactly
//! once, however the notifications are shared out.

use std::time::Duration;

use domain::PaymentStatus;
use domain::entities::{outbox, system_logs};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

use crate::helpers::*;

const PAYMENTS: usize = 24;
const NOTIFICATIONS_EACH: usize = 3;

#[tokio::test]
async fn two_workers_complete_every_payment_exactly_once() {
    let env = env().await;
    let db = &env.db.conn;
    let prefix = testkit::unique_prefix("pw2x");
    let settings = worker_settings(
        &env.shop,
        &[
            ("WORKER_PREFETCH", "4"),
            // Both also reconcile, racing the notifications for the same payments.
            ("RECONCILE_ENABLED", "true"),
            ("RECONCILE_POLL_MS", "50"),
            ("RECONCILE_FIRST_CHECK_SECS", "0"),
        ],
    );
    let first = start_worker(&env.db.url, &prefix, &settings).await;
    let second = start_worker(&env.db.url, &prefix, &settings).await;

    let mut payments = Vec::new();
    let mut envelopes = Vec::new();
    for _ in 0..PAYMENTS {
        let p = payment(&env).await;
        env.shop.pay(ppid(&p)).unwrap();
        for i in 0..NOTIFICATIONS_EACH {
            envelopes.push(notify(db, &p, "succeeded", &format!(":{i}")).await);
        }
        payments.push(p);
    }
    first.nudge();
    second.nudge();

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
        assert_eq!(
            events(db, "payment.completed", p.id).await.len(),
            1,
            "payment {}",
            p.id
        );
        assert_eq!(
            logs(db, "payment.completed", p.id).await.len(),
            1,
            "payment {}",
            p.id
        );
    }
    let completed_rows = outbox::Entity::find()
        .filter(outbox::Column::RoutingKey.eq("payment.completed"))
        .count(db)
        .await
        .unwrap();
    assert_eq!(completed_rows, PAYMENTS as u64);
    let completed_logs = system_logs::Entity::find()
        .filter(system_logs::Column::EventType.eq("payment.completed"))
        .count(db)
        .await
        .unwrap();
    assert_eq!(completed_logs, PAYMENTS as u64);

    first.stop().await;
    second.stop().await;
    delete_topology(&prefix).await;
}
