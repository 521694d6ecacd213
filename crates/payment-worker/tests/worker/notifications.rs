//! Notifications: the worker re-fetches, applies only the provider's answer, and records
//! what it did on the inbox row.

use std::time::Duration;

use domain::PaymentStatus;
use domain::money::{Currency, Money};
use messaging::events::{PaymentCompleted, PaymentFailed};
use payment_worker::NotificationHandler;
use sandbox::yookassa::Fault;

use crate::helpers::*;

#[tokio::test]
async fn a_notification_completes_the_payment_after_a_re_fetch() {
    let env = env().await;
    let db = &env.db.conn;
    let handler = handler_for(&env);
    let payment = payment(&env).await;
    env.shop.pay(ppid(&payment)).unwrap();

    let envelope = notify(db, &payment, "succeeded", "").await;
    deliver(&handler, db, &envelope).await.unwrap();

    assert_eq!(fetches(&env.shop, &payment), [200], "re-fetched once");
    let after = reload(db, payment.id).await;
    assert_eq!(after.status, PaymentStatus::Succeeded);
    assert!(after.completed_at.is_some());
    assert_eq!(after.next_check_at, None);

    let completed = events(db, "payment.completed", payment.id).await;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].causation_id, Some(envelope.event_id));
    let event: PaymentCompleted = completed[0].decode().unwrap();
    assert_eq!(event.payment.payment_id, payment.id);
    assert_eq!(event.payment.user_id, payment.user_id);
    assert_eq!(event.payment.provider, "yookassa");
    assert_eq!(
        (event.payment.amount_minor, event.payment.currency.as_str()),
        (PRICE, "RUB")
    );
    assert!(event.payment.telegram_id > 0);
    assert!(event.payment.tariff_code.starts_with("month_1_"));
    assert!(event.processing_ms >= 0);
    assert_eq!(
        event.processing_ms,
        (event.paid_at - payment.created_at)
            .num_milliseconds()
            .max(0)
    );

    let log = logs(db, "payment.completed", payment.id).await;
    assert_eq!(log.len(), 1);
    let log = &log[0];
    assert_eq!(log.user_id, Some(payment.user_id));
    assert_eq!(
        log.provider,
        Some(domain::ProviderId::from_static("yookassa"))
    );
    assert_eq!(log.amount_minor, Some(PRICE));
    assert_eq!(log.currency.as_deref(), Some("RUB"));
    assert_eq!(log.status.as_deref(), Some("succeeded"));
    let meta = log.metadata.as_ref().unwrap();
    assert_eq!(meta["from"], "pending");
    assert_eq!(meta["trigger"], "notification");
    assert_eq!(meta["event_id"], completed[0].event_id.to_string());
    assert_eq!(meta["processing_ms"], event.processing_ms);

    let inbox = inbox_row(db, &envelope).await;
    assert!(inbox.processed_at.is_some());
    assert_eq!(inbox.outcome.as_deref(), Some("applied"));
}

#[tokio::test]
async fn a_forged_success_while_the_provider_says_pending_stays_pending() {
    let env = env().await;
    let db = &env.db.conn;
    let handler = handler_for(&env);
    let payment = payment(&env).await;

    let envelope = notify(db, &payment, "succeeded", "").await;
    deliver(&handler, db, &envelope).await.unwrap();

    assert_eq!(fetches(&env.shop, &payment), [200]);
    assert_eq!(reload(db, payment.id).await.status, PaymentStatus::Pending);
    assert!(events(db, "payment.completed", payment.id).await.is_empty());
    assert!(logs(db, "payment.completed", payment.id).await.is_empty());
    assert_eq!(
        inbox_row(db, &envelope).await.outcome.as_deref(),
        Some("pending")
    );
}

#[tokio::test]
async fn duplicates_apply_once_and_are_recorded() {
    let env = env().await;
    let db = &env.db.conn;
    let handler = handler_for(&env);
    let payment = payment(&env).await;
    env.shop.pay(ppid(&payment)).unwrap();

    let first = notify(db, &payment, "succeeded", "").await;
    let second = notify(db, &payment, "succeeded", ":again").await;
    deliver(&handler, db, &first).await.unwrap();
    deliver(&handler, db, &second).await.unwrap();
    // The same message again: its inbox row is processed already.
    deliver(&handler, db, &second).await.unwrap();

    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
    assert_eq!(logs(db, "payment.completed", payment.id).await.len(), 1);
    assert_eq!(
        inbox_row(db, &first).await.outcome.as_deref(),
        Some("applied")
    );
    assert_eq!(
        inbox_row(db, &second).await.outcome.as_deref(),
        Some("duplicate")
    );
    assert_eq!(
        fetches(&env.shop, &payment).len(),
        2,
        "no fetch for a processed row"
    );
}

#[tokio::test]
async fn cancellations_map_to_failed_expired_and_canceled() {
    let env = env().await;
    let db = &env.db.conn;
    let handler = handler_for(&env);
    let cases = [
        ("insufficient_funds", PaymentStatus::Failed),
        ("expired_on_confirmation", PaymentStatus::Expired),
        ("canceled_by_merchant", PaymentStatus::Canceled),
    ];
    for (reason, expected) in cases {
        let payment = payment(&env).await;
        if reason == "expired_on_confirmation" {
            env.shop.expire(ppid(&payment)).unwrap();
        } else {
            env.shop.decline(ppid(&payment), reason).unwrap();
        }
        let envelope = notify(db, &payment, "canceled", "").await;
        deliver(&handler, db, &envelope).await.unwrap();

        let after = reload(db, payment.id).await;
        assert_eq!(after.status, expected, "{reason}");
        assert_eq!(after.failure_reason.as_deref(), Some(reason));
        let failed = events(db, "payment.failed", payment.id).await;
        assert_eq!(failed.len(), 1, "{reason}");
        let event: PaymentFailed = failed[0].decode().unwrap();
        assert_eq!(event.failure_reason, reason);
        let log = logs(db, "payment.failed", payment.id).await;
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].status.as_deref(), Some(expected.as_str()));
        assert!(events(db, "payment.completed", payment.id).await.is_empty());
    }
}

#[tokio::test]
async fn a_mismatch_flags_the_payment_instead_of_completing_it() {
    let env = env().await;
    let db = &env.db.conn;
    let handler = handler_for(&env);
    // Ours says 150.00 RUB, the provider 199.00 RUB; then a currency mismatch.
    let cheaper = payment_with(&env, Money::new(15_000, Currency::Rub), |_| {}).await;
    let stars = payment_with(&env, Money::new(PRICE, Currency::Xtr), |_| {}).await;
    for (payment, what) in [(&cheaper, "amount"), (&stars, "currency")] {
        env.shop.pay(ppid(payment)).unwrap();
        let envelope = notify(db, payment, "succeeded", "").await;
        deliver(&handler, db, &envelope).await.unwrap();
        // A second notification does not log again.
        let again = notify(db, payment, "succeeded", ":again").await;
        deliver(&handler, db, &again).await.unwrap();

        let after = reload(db, payment.id).await;
        assert_eq!(after.status, PaymentStatus::Pending, "{what}");
        assert!(after.flagged, "{what}");
        let reason = after.flag_reason.unwrap();
        assert!(reason.contains(what), "{what}: {reason}");
        assert!(events(db, "payment.completed", payment.id).await.is_empty());
        let flagged = logs(db, "payment.flagged", payment.id).await;
        assert_eq!(flagged.len(), 1, "{what}");
        assert_eq!(
            inbox_row(db, &envelope).await.outcome.as_deref(),
            Some("flagged")
        );
    }
}

#[tokio::test]
async fn a_provider_500_is_a_transient_failure_that_changes_nothing() {
    let env = env().await;
    let db = &env.db.conn;
    let handler = handler_for(&env);
    let payment = payment(&env).await;
    env.shop.pay(ppid(&payment)).unwrap();
    let envelope = notify(db, &payment, "succeeded", "").await;

    env.shop.push_fault(Fault::InternalError, 2);
    let err = deliver(&handler, db, &envelope).await.unwrap_err();
    assert!(!err.is_permanent(), "retried, not parked: {err}");
    assert_eq!(reload(db, payment.id).await.status, PaymentStatus::Pending);
    assert!(inbox_row(db, &envelope).await.processed_at.is_none());
    assert!(events(db, "payment.failed", payment.id).await.is_empty());

    deliver(&handler, db, &envelope).await.unwrap();
    assert_eq!(
        reload(db, payment.id).await.status,
        PaymentStatus::Succeeded
    );
    assert_eq!(fetches(&env.shop, &payment), [500, 500, 200]);
}

#[tokio::test]
async fn a_500_through_the_queue_is_retried_and_completes_once() {
    let env = env().await;
    let db = &env.db.conn;
    let prefix = testkit::unique_prefix("pw500");
    let settings = worker_settings(&env.shop, &[]);
    let worker = start_worker(&env.db.url, &prefix, &settings).await;
    let payment = payment(&env).await;
    env.shop.pay(ppid(&payment)).unwrap();
    // Two look-ups of two attempts each fail; the third delivery succeeds.
    env.shop.push_fault(Fault::InternalError, 4);
    let envelope = notify(db, &payment, "succeeded", "").await;
    worker.nudge();

    let done = eventually(Duration::from_secs(20), || async {
        reload(db, payment.id).await.status == PaymentStatus::Succeeded
    })
    .await;
    assert!(done, "completed after the retries");
    assert_eq!(fetches(&env.shop, &payment), [500, 500, 500, 500, 200]);
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
    assert_eq!(logs(db, "payment.completed", payment.id).await.len(), 1);
    assert_eq!(
        inbox_row(db, &envelope).await.outcome.as_deref(),
        Some("applied")
    );
    worker.stop().await;
    delete_topology(&prefix).await;
}

#[tokio::test]
async fn the_same_notification_ten_times_at_once_completes_once() {
    let env = env().await;
    let db = &env.db.conn;
    let prefix = testkit::unique_prefix("pw10x");
    let settings = worker_settings(&env.shop, &[("WORKER_PREFETCH", "16")]);
    let worker = start_worker(&env.db.url, &prefix, &settings).await;
    let payment = payment(&env).await;
    env.shop.pay(ppid(&payment)).unwrap();

    // Ten notifications about the payment (as a redelivering provider sends them, each with
    // its own inbox row), plus the first message published a second time by hand.
    let mut envelopes = Vec::new();
    for i in 0..10 {
        envelopes.push(notify(db, &payment, "succeeded", &format!(":{i}")).await);
    }
    worker.nudge();
    worker
        .infra
        .bus
        .publish_envelope(&envelopes[0])
        .await
        .unwrap();

    let all_processed = eventually(Duration::from_secs(20), || async {
        let mut done = true;
        for envelope in &envelopes {
            done &= inbox_row(db, envelope).await.processed_at.is_some();
        }
        done
    })
    .await;
    assert!(all_processed);
    assert_eq!(
        reload(db, payment.id).await.status,
        PaymentStatus::Succeeded
    );
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
    assert_eq!(logs(db, "payment.completed", payment.id).await.len(), 1);
    let mut outcomes = Vec::new();
    for envelope in &envelopes {
        outcomes.push(inbox_row(db, envelope).await.outcome.unwrap());
    }
    assert_eq!(
        outcomes.iter().filter(|o| *o == "applied").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| *o == "duplicate").count(),
        9,
        "{outcomes:?}"
    );
    worker.stop().await;
    delete_topology(&prefix).await;
}

#[tokio::test]
async fn notifications_about_unknown_payments_are_recorded() {
    let env = env().await;
    let db = &env.db.conn;
    let handler = handler_for(&env);
    let envelope = store_notification(
        db,
        &payment_core::providers::yookassa::ID,
        "payment.succeeded:nobody",
        Some("2e8dd95a-000f-5000-a000-1e3515f51c18".into()),
        None,
        "{}".into(),
    )
    .await;
    deliver(&handler, db, &envelope).await.unwrap();
    let row = inbox_row(db, &envelope).await;
    assert!(row.processed_at.is_some());
    assert_eq!(row.outcome.as_deref(), Some("unknown_payment"));
    assert!(
        env.shop.requests().is_empty(),
        "nothing to ask the provider"
    );
}

#[tokio::test]
async fn a_provider_without_a_status_source_is_parked_not_lost() {
    let env = env().await;
    let db = &env.db.conn;
    let payment = insert_payment(
        db,
        domain::PaymentId::new(),
        Money::new(150, Currency::Xtr),
        Some("tg-charge-1".into()),
        |p| {
            p.provider = sea_orm::ActiveValue::Set(domain::ProviderId::from_static("telegram"));
        },
    )
    .await;
    let envelope = notify(db, &payment, "succeeded", "").await;
    let handler: NotificationHandler = handler_for(&env);
    let err = deliver(&handler, db, &envelope).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(inbox_row(db, &envelope).await.processed_at.is_none());
    assert_eq!(reload(db, payment.id).await.status, PaymentStatus::Pending);
}

#[tokio::test]
async fn a_late_answer_never_moves_a_completed_payment_back() {
    let env = env().await;
    let db = &env.db.conn;
    let script = Scripted::default();
    let handler = scripted_handler(&script, db);
    let payment = pending_payment(db, "pp-1").await;

    for (i, (status, refunded)) in [
        (PaymentStatus::Succeeded, 0),
        (PaymentStatus::Pending, 0),
        (PaymentStatus::Failed, 0),
        (PaymentStatus::PartiallyRefunded, 5_000),
        (PaymentStatus::Succeeded, 0),
        (PaymentStatus::PartiallyRefunded, 2_000),
        (PaymentStatus::Refunded, PRICE),
        (PaymentStatus::PartiallyRefunded, 5_000),
    ]
    .into_iter()
    .enumerate()
    {
        script.push(Ok(answer(&payment, status, refunded)));
        let envelope = notify(db, &payment, status.as_str(), &format!(":{i}")).await;
        deliver(&handler, db, &envelope).await.unwrap();
        let now = reload(db, payment.id).await;
        let expected = match i {
            0..=2 => PaymentStatus::Succeeded,
            3..=5 => PaymentStatus::PartiallyRefunded,
            _ => PaymentStatus::Refunded,
        };
        assert_eq!(now.status, expected, "after answer {i} ({status})");
    }
    let after = reload(db, payment.id).await;
    assert_eq!(after.refunded_minor, PRICE);
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
    assert!(events(db, "payment.failed", payment.id).await.is_empty());
    let refunds: Vec<messaging::events::PaymentRefunded> =
        events(db, "payment.refunded", payment.id)
            .await
            .iter()
            .map(|e| e.decode().unwrap())
            .collect();
    assert_eq!(
        refunds
            .iter()
            .map(|r| (r.refunded_minor, r.total_refunded_minor))
            .collect::<Vec<_>>(),
        [(5_000, 5_000), (PRICE - 5_000, PRICE)]
    );
}

#[tokio::test]
async fn a_payment_refunded_before_we_saw_it_paid_completes_then_refunds() {
    let env = env().await;
    let db = &env.db.conn;
    let script = Scripted::default();
    let handler = scripted_handler(&script, db);
    let payment = pending_payment(db, "pp-2").await;
    script.push(Ok(answer(&payment, PaymentStatus::Refunded, PRICE)));
    let envelope = notify(db, &payment, "succeeded", "").await;
    deliver(&handler, db, &envelope).await.unwrap();
    assert_eq!(reload(db, payment.id).await.status, PaymentStatus::Refunded);
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
    assert_eq!(events(db, "payment.refunded", payment.id).await.len(), 1);
    assert_eq!(logs(db, "payment.refunded", payment.id).await.len(), 1);
}

#[tokio::test]
async fn notifications_and_reconciliation_work_on_sqlite() {
    let env = sqlite_env().await;
    let db = &env.db.conn;
    let handler = handler_for(&env);
    let paid = payment(&env).await;
    env.shop.pay(ppid(&paid)).unwrap();
    let envelope = notify(db, &paid, "succeeded", "").await;
    deliver(&handler, db, &envelope).await.unwrap();
    deliver(
        &handler,
        db,
        &notify(db, &paid, "succeeded", ":again").await,
    )
    .await
    .unwrap();
    assert_eq!(reload(db, paid.id).await.status, PaymentStatus::Succeeded);
    assert_eq!(events(db, "payment.completed", paid.id).await.len(), 1);
    assert_eq!(logs(db, "payment.completed", paid.id).await.len(), 1);

    let declined = payment_with(&env, Money::new(PRICE, Currency::Rub), |p| {
        let created = chrono::Utc::now() - chrono::Duration::minutes(2);
        p.created_at = sea_orm::ActiveValue::Set(created);
    })
    .await;
    env.shop
        .decline(ppid(&declined), "insufficient_funds")
        .unwrap();
    let reconciler = payment_worker::Reconciler::new(
        db.clone(),
        std::sync::Arc::new(env.service.clone()),
        payment_worker::ReconcileSettings::default(),
        std::sync::Arc::new(tokio::sync::Notify::new()),
    );
    assert_eq!(reconciler.run_once().await.unwrap().checked, 1);
    assert_eq!(reload(db, declined.id).await.status, PaymentStatus::Failed);
    assert_eq!(events(db, "payment.failed", declined.id).await.len(), 1);
}
