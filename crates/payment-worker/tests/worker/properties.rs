//! Random sequences of provider answers, delivered as notifications: the payment only ever
//! makes legal moves, and is announced completed (or failed) at most once.

use domain::PaymentStatus;
use domain::money::{Currency, Money};
use messaging::events::PaymentRefunded;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sea_orm::DatabaseConnection;
use testkit::TestDb;

use crate::helpers::*;

fn answers() -> impl Strategy<Value = Vec<(PaymentStatus, i64)>> {
    prop::collection::vec(
        (prop::sample::select(PaymentStatus::ALL.to_vec()), 1i64..4),
        1..12,
    )
}

/// The refunded total a provider would report with `status`.
fn refunded(status: PaymentStatus, quarter: i64) -> i64 {
    match status {
        PaymentStatus::PartiallyRefunded => PRICE / 4 * quarter,
        PaymentStatus::Refunded => PRICE,
        _ => 0,
    }
}

async fn check(
    db: &DatabaseConnection,
    seq: Vec<(PaymentStatus, i64)>,
) -> Result<(), TestCaseError> {
    let id = domain::PaymentId::new();
    let payment = insert_payment(
        db,
        id,
        Money::new(PRICE, Currency::Rub),
        Some(format!("pp-{id}")),
        |_| {},
    )
    .await;
    let script = Scripted::default();
    let handler = scripted_handler(&script, db);
    let mut previous = PaymentStatus::Pending;
    for (i, (status, quarter)) in seq.into_iter().enumerate() {
        script.push(Ok(answer(&payment, status, refunded(status, quarter))));
        let envelope = notify(db, &payment, status.as_str(), &format!(":{i}")).await;
        deliver(&handler, db, &envelope)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let now = reload(db, id).await.status;
        let legal = now == previous
            || previous.can_transition_to(now)
            // Paid and refunded before we saw the success: two legal steps at once.
            || (previous == PaymentStatus::Pending
                && matches!(now, PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded));
        prop_assert!(legal, "{previous} -> {now} on answer {status}");
        if previous.is_terminal() {
            prop_assert_eq!(now, previous);
        }
        previous = now;
    }
    let after = reload(db, id).await;
    let completed = events(db, "payment.completed", id).await.len();
    let failed = events(db, "payment.failed", id).await.len();
    let was_paid = matches!(
        after.status,
        PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
    );
    prop_assert_eq!(completed, usize::from(was_paid));
    prop_assert_eq!(
        failed,
        usize::from(matches!(
            after.status,
            PaymentStatus::Failed | PaymentStatus::Canceled | PaymentStatus::Expired
        ))
    );
    prop_assert_eq!(logs(db, "payment.completed", id).await.len(), completed);
    let refunds: i64 = events(db, "payment.refunded", id)
        .await
        .iter()
        .map(|e| {
            e.decode::<PaymentRefunded>()
                .map(|r| r.refunded_minor)
                .unwrap_or(-1)
        })
        .sum();
    prop_assert_eq!(refunds, after.refunded_minor);
    Ok(())
}

#[test]
fn random_answer_sequences_stay_legal_and_complete_at_most_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(TestDb::new());
    let mut runner = TestRunner::new(Config {
        cases: 40,
        ..Config::default()
    });
    runner
        .run(&answers(), |seq| rt.block_on(check(&db.conn, seq)))
        .unwrap();
}
