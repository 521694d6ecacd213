//! The one `Idempotency-Key` scheme ([`api_gateway::idempotency`]) against PostgreSQL: an
//! unfinished payment is held in the database, not in the process, so a repeat of its key —
//! from this replica or another — gets 409 while it is held and continues it once given back.

use api_gateway::idempotency::{Lease, Taken};
use domain::PaymentStatus;
use sandbox::yookassa::Fault;

use crate::helpers::{CREATE_BODY, spawn_app};

#[tokio::test]
async fn an_unfinished_payment_is_held_in_the_database() {
    let app = spawn_app(&[]).await;
    // No definite answer: the intent stays unfinished and its request gives it back.
    app.yookassa.push_fault(Fault::InternalError, 2);
    assert_eq!(
        app.create_payment("held-1", CREATE_BODY).await.status(),
        504
    );
    let intent = app.payments().await.remove(0);
    assert!(intent.is_half_made());
    assert!(
        intent.metadata["gateway_idempotency"]
            .get("held_by")
            .is_none(),
        "given back: {}",
        intent.metadata
    );

    // Another replica (here: the test) takes it; a second taker and the API are refused.
    let Taken::Held(held) = Lease::take(&app.db.conn, intent.id).await.unwrap() else {
        panic!("the given-back payment can be taken");
    };
    assert!(matches!(
        Lease::take(&app.db.conn, intent.id).await.unwrap(),
        Taken::Busy
    ));
    let busy = app.create_payment("held-1", CREATE_BODY).await;
    assert_eq!(busy.status(), 409);
    let body: serde_json::Value = busy.json().await.unwrap();
    assert_eq!(body["error"], "request_in_flight");
    // The fingerprint is checked before the lease: another body is 422 even while held.
    let other = r#"{"telegram_id":123456,"tariff_code":"month_3","provider":"yookassa"}"#;
    assert_eq!(app.create_payment("held-1", other).await.status(), 422);

    // Given back: the repeat finishes the same row, and the next one replays its answer.
    held.release().await;
    let finished = app.create_payment("held-1", CREATE_BODY).await;
    assert_eq!(finished.status(), 201);
    assert!(finished.headers().get("idempotent-replayed").is_none());
    let finished = finished.bytes().await.unwrap();
    let again = app.create_payment("held-1", CREATE_BODY).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.bytes().await.unwrap(), finished);
    let rows = app.payments().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, intent.id);
    assert_eq!(rows[0].status, PaymentStatus::Pending);
    assert!(rows[0].provider_payment_id.is_some());
    // A finished payment is not taken again.
    assert!(matches!(
        Lease::take(&app.db.conn, intent.id).await.unwrap(),
        Taken::Finished
    ));
}
