//! No outside call inside a database transaction: while YooKassa is slow to answer the
//! worker's status `GET`, the worker holds no transaction and no lock on the inbox row or the
//! payment row; the answer is still applied exactly once, and an answer overtaken between the
//! look-up and the transaction is refused.

use std::time::Duration;

use domain::PaymentStatus;
use messaging::Handler;
use messaging::events::ProviderNotificationReceived;
use sandbox::yookassa::Fault;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};

use crate::helpers::*;

/// How long the emulator holds the status answer back.
const SLOW: Duration = Duration::from_secs(3);
/// A transaction open longer than this during the slow call is held across it (background
/// loops' own transactions last milliseconds).
const BRIEF: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_slow_status_look_up_holds_no_transaction_and_no_lock() {
    let env = env().await;
    let db = &env.db.conn;
    let prefix = testkit::unique_prefix("pwslow");
    let settings = worker_settings(&env.shop, &[]);
    let worker = start_worker(&env.db.url, &prefix, &settings).await;
    let payment = payment(&env).await;
    env.shop.pay(ppid(&payment)).unwrap();
    env.shop.push_fault(Fault::slow(SLOW), 1);
    let envelope = notify(db, &payment, "succeeded", "").await;
    let event: ProviderNotificationReceived = envelope.decode().unwrap();
    worker.nudge();

    // The emulator records the GET when it starts holding the answer back.
    let asked = eventually(Duration::from_secs(10), || async {
        !fetches(&env.shop, &payment).is_empty()
    })
    .await;
    assert!(asked, "the worker asked YooKassa");
    // Probe until the answer is applied; the verdict comes after the worker stopped, so a
    // failure still removes the test's queues.
    let mut probes = 0;
    let mut problems = Vec::new();
    while reload(db, payment.id).await.status == PaymentStatus::Pending {
        let inbox = format!(
            "SELECT id FROM provider_notifications WHERE id = {} FOR UPDATE NOWAIT",
            event.notification_id
        );
        let payment_row = format!(
            "SELECT id FROM payments WHERE id = '{}' FOR UPDATE NOWAIT",
            payment.id
        );
        let inbox_free = lockable(db, &inbox).await;
        let payment_free = lockable(db, &payment_row).await;
        let open = testkit::open_transactions(db, BRIEF).await;
        // The answer may have been applied between the probes: only a pending payment counts.
        // A lock seen may be the applying transaction's, which commits within a second even
        // on a loaded machine; one held across the look-up leaves the payment pending after it.
        if !(inbox_free && payment_free) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if reload(db, payment.id).await.status != PaymentStatus::Pending {
            break;
        }
        if !inbox_free {
            problems.push("the inbox row is locked during the look-up".to_owned());
        }
        if !payment_free {
            problems.push("the payment row is locked during the look-up".to_owned());
        }
        if !open.is_empty() {
            problems.push(format!("transactions open during the look-up: {open:?}"));
        }
        probes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let applied = eventually(Duration::from_secs(20), || async {
        inbox_row(db, &envelope).await.processed_at.is_some()
    })
    .await;
    worker.stop().await;
    delete_topology(&prefix).await;

    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        probes >= 5,
        "probed {probes} times during the {SLOW:?} look-up"
    );
    assert!(applied, "the notification is processed");
    assert_eq!(
        reload(db, payment.id).await.status,
        PaymentStatus::Succeeded
    );
    assert_eq!(
        inbox_row(db, &envelope).await.outcome.as_deref(),
        Some("applied")
    );
    assert_eq!(fetches(&env.shop, &payment), [200], "asked once");
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
    assert_eq!(logs(db, "payment.completed", payment.id).await.len(), 1);
}

/// Whether `select_for_update_nowait` gets its row lock at once (in a transaction of its own,
/// rolled back).
async fn lockable(db: &DatabaseConnection, select_for_update_nowait: &str) -> bool {
    let tx = db.begin().await.unwrap();
    let got = tx
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            select_for_update_nowait,
        ))
        .await;
    tx.rollback().await.unwrap();
    match got {
        Ok(row) => {
            assert!(row.is_some(), "the row exists");
            true
        }
        Err(error) if error.to_string().contains("could not obtain lock") => false,
        Err(error) => panic!("lock probe failed: {error}"),
    }
}

/// The look-up runs before the transaction, so another notification can apply a newer answer
/// in between: the older answer is then refused under the payment's lock (`stale`).
#[tokio::test]
async fn an_answer_overtaken_before_the_transaction_is_stale() {
    let env = env().await;
    let db = &env.db.conn;
    let script = Scripted::default();
    let handler = scripted_handler(&script, db);
    let payment = pending_payment(db, "pp-overtaken").await;
    let slow = notify(db, &payment, "pending", ":slow").await;
    let fast = notify(db, &payment, "succeeded", ":fast").await;

    script.push(Ok(answer(&payment, PaymentStatus::Pending, 0)));
    let looked_up = handler.prepare(&slow).await.unwrap();
    script.push(Ok(answer(&payment, PaymentStatus::Succeeded, 0)));
    deliver(&handler, db, &fast).await.unwrap();

    let tx = db.begin().await.unwrap();
    handler.handle(&tx, &slow, looked_up).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        reload(db, payment.id).await.status,
        PaymentStatus::Succeeded
    );
    assert_eq!(
        inbox_row(db, &fast).await.outcome.as_deref(),
        Some("applied")
    );
    assert_eq!(inbox_row(db, &slow).await.outcome.as_deref(), Some("stale"));
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
}
