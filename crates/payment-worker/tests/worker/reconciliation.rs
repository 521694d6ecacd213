//! Reconciliation: pending payments are asked about on a schedule, claimed by one worker at
//! a time, and never expired without the provider saying so.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::PaymentStatus;
use payment_core::{PaymentService, PaymentSettings};
use payment_worker::{ReconcileSettings, Reconciler};
use sandbox::yookassa::Fault;
use sea_orm::ActiveValue::Set;
use tokio::sync::Notify;

use crate::helpers::*;

fn reconciler(env: &Env, tweak: impl FnOnce(&mut ReconcileSettings)) -> Reconciler {
    let service = PaymentService::from_settings(&PaymentSettings {
        yookassa: Some(yookassa_settings(&env.shop)),
        ..PaymentSettings::default()
    })
    .unwrap();
    let mut settings = ReconcileSettings::default();
    tweak(&mut settings);
    Reconciler::new(
        env.db.conn.clone(),
        Arc::new(service),
        settings,
        Arc::new(Notify::new()),
    )
}

/// Due now: created more than a minute ago, never checked.
fn due(p: &mut domain::entities::payments::ActiveModel) {
    let created = Utc::now() - chrono::Duration::minutes(2);
    p.created_at = Set(created);
    p.updated_at = Set(created);
}

#[tokio::test]
async fn reconciliation_completes_a_payment_whose_webhook_was_dropped() {
    let env = env().await;
    let db = &env.db.conn;
    let prefix = testkit::unique_prefix("pwrec");
    let settings = worker_settings(
        &env.shop,
        &[
            ("RECONCILE_ENABLED", "true"),
            ("RECONCILE_POLL_MS", "100"),
            ("RECONCILE_FIRST_CHECK_SECS", "0"),
        ],
    );
    let payment = payment(&env).await;
    // The payer pays; the emulator has no webhook URL, so the notification is lost.
    env.shop.pay(ppid(&payment)).unwrap();
    let worker = start_worker(&env.db.url, &prefix, &settings).await;

    let done = eventually(Duration::from_secs(20), || async {
        reload(db, payment.id).await.status == PaymentStatus::Succeeded
    })
    .await;
    assert!(done, "reconciliation completed the payment");
    let completed = events(db, "payment.completed", payment.id).await;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].causation_id, None);
    let log = logs(db, "payment.completed", payment.id).await;
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].metadata.as_ref().unwrap()["trigger"],
        "reconciliation"
    );
    let after = reload(db, payment.id).await;
    assert_eq!(after.check_attempts, 1);
    assert_eq!(after.next_check_at, None);
    worker.stop().await;
    delete_topology(&prefix).await;
}

#[tokio::test]
async fn a_pending_payment_is_rescheduled_on_the_backoff_schedule() {
    let env = env().await;
    let db = &env.db.conn;
    let reconciler = reconciler(&env, |_| {});
    let young = payment(&env).await;
    let due_one = payment_with(
        &env,
        domain::money::Money::new(PRICE, domain::Currency::Rub),
        due,
    )
    .await;

    let report = reconciler.run_once().await.unwrap();
    assert_eq!(
        report.checked, 1,
        "only the payment older than a minute is due"
    );
    assert!(fetches(&env.shop, &young).is_empty());

    let after = reload(db, due_one.id).await;
    assert_eq!(after.status, PaymentStatus::Pending);
    assert_eq!(after.check_attempts, 1);
    let next = after.next_check_at.expect("scheduled");
    let in_secs = (next - Utc::now()).num_seconds();
    assert!(
        (290..=300).contains(&in_secs),
        "next check in {in_secs} s, expected ~5 min"
    );

    // Not due again until then.
    assert_eq!(reconciler.run_once().await.unwrap().checked, 0);
    assert_eq!(fetches(&env.shop, &due_one).len(), 1);
}

#[tokio::test]
async fn the_provider_decides_expiry_and_a_late_success_still_counts() {
    let env = env().await;
    let db = &env.db.conn;
    let reconciler = reconciler(&env, |s| s.grace = Duration::ZERO);

    // The provider expired this one: reconciliation applies it.
    let expired = payment_with(
        &env,
        domain::money::Money::new(PRICE, domain::Currency::Rub),
        due,
    )
    .await;
    env.shop.expire(ppid(&expired)).unwrap();
    // This one is past its expiry on our side, but the provider still says pending.
    let overdue = payment_with(
        &env,
        domain::money::Money::new(PRICE, domain::Currency::Rub),
        |p| {
            due(p);
            p.expires_at = Set(Some(Utc::now() - chrono::Duration::seconds(30)));
        },
    )
    .await;

    let report = reconciler.run_once().await.unwrap();
    assert_eq!((report.checked, report.moved), (2, 1));
    let after = reload(db, expired.id).await;
    assert_eq!(after.status, PaymentStatus::Expired);
    assert_eq!(events(db, "payment.failed", expired.id).await.len(), 1);

    let after = reload(db, overdue.id).await;
    assert_eq!(
        after.status,
        PaymentStatus::Pending,
        "never expired locally"
    );
    assert_eq!(after.next_check_at, None, "no longer polled");
    assert_eq!(
        logs(db, "payment.reconcile_exhausted", overdue.id)
            .await
            .len(),
        1
    );
    assert!(events(db, "payment.failed", overdue.id).await.is_empty());
    assert_eq!(reconciler.run_once().await.unwrap().checked, 0);

    // The payer pays late after all: the notification still completes the payment.
    env.shop.pay(ppid(&overdue)).unwrap();
    let envelope = notify(db, &overdue, "succeeded", "").await;
    deliver(&handler_for(&env), db, &envelope).await.unwrap();
    assert_eq!(
        reload(db, overdue.id).await.status,
        PaymentStatus::Succeeded
    );
    assert_eq!(events(db, "payment.completed", overdue.id).await.len(), 1);
}

#[tokio::test]
async fn no_answer_from_the_provider_keeps_the_payment_pending() {
    let env = env().await;
    let db = &env.db.conn;
    let reconciler = reconciler(&env, |_| {});
    let payment = payment_with(
        &env,
        domain::money::Money::new(PRICE, domain::Currency::Rub),
        due,
    )
    .await;
    env.shop.pay(ppid(&payment)).unwrap();
    env.shop.push_fault(Fault::InternalError, 2);

    assert_eq!(reconciler.run_once().await.unwrap().checked, 1);
    let after = reload(db, payment.id).await;
    assert_eq!(after.status, PaymentStatus::Pending);
    assert!(after.next_check_at.is_some(), "asked again later");
    assert!(events(db, "payment.failed", payment.id).await.is_empty());
    assert_eq!(fetches(&env.shop, &payment), [500, 500]);
}

#[tokio::test]
async fn a_mismatch_found_by_reconciliation_is_flagged_and_no_longer_polled() {
    let env = env().await;
    let db = &env.db.conn;
    let reconciler = reconciler(&env, |_| {});
    let payment = payment_with(
        &env,
        domain::money::Money::new(100, domain::Currency::Rub),
        due,
    )
    .await;
    env.shop.pay(ppid(&payment)).unwrap();
    reconciler.run_once().await.unwrap();
    let after = reload(db, payment.id).await;
    assert_eq!(after.status, PaymentStatus::Pending);
    assert!(after.flagged);
    assert_eq!(after.next_check_at, None);
    assert_eq!(logs(db, "payment.flagged", payment.id).await.len(), 1);
    assert!(events(db, "payment.completed", payment.id).await.is_empty());
}

#[tokio::test]
async fn two_reconcilers_check_each_due_payment_once() {
    let env = env().await;
    let db = &env.db.conn;
    let mut payments = Vec::new();
    for _ in 0..20 {
        let p = payment_with(
            &env,
            domain::money::Money::new(PRICE, domain::Currency::Rub),
            due,
        )
        .await;
        env.shop.pay(ppid(&p)).unwrap();
        payments.push(p);
    }
    let a = reconciler(&env, |s| s.batch_size = 3);
    let b = reconciler(&env, |s| s.batch_size = 3);
    let drain = |r: Reconciler| async move {
        let mut checked = 0;
        loop {
            let report = r.run_once().await.unwrap();
            if report.checked == 0 {
                return checked;
            }
            checked += report.checked;
        }
    };
    let (checked_a, checked_b) = tokio::join!(drain(a), drain(b));
    assert_eq!(checked_a + checked_b, 20);
    for p in &payments {
        assert_eq!(fetches(&env.shop, p).len(), 1, "checked exactly once");
        assert_eq!(reload(db, p.id).await.status, PaymentStatus::Succeeded);
        assert_eq!(events(db, "payment.completed", p.id).await.len(), 1);
        assert_eq!(logs(db, "payment.completed", p.id).await.len(), 1);
    }
}
