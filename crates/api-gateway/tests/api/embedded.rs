//! The same gateway on SQLite and the in-process bus (the standalone binary's set-up).

use std::time::Duration;

use futures::future::join_all;
use sandbox::yookassa::Fault;

use crate::helpers::{CREATE_BODY, payment_notification, spawn_embedded_app};

#[tokio::test]
async fn create_replay_in_flight_and_webhook_dedupe_on_sqlite() {
    let app = spawn_embedded_app().await;

    app.yookassa
        .push_fault(Fault::slow(Duration::from_millis(800)), 1);
    let first = app.create_payment("sqlite-1", CREATE_BODY);
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.create_payment("sqlite-1", CREATE_BODY).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(second.status(), 409);
    assert_eq!(first.status(), 201);
    let first = first.bytes().await.unwrap();
    let replay = app.create_payment("sqlite-1", CREATE_BODY).await;
    assert_eq!(replay.bytes().await.unwrap(), first);
    let other = r#"{"telegram_id":123456,"tariff_code":"month_6","provider":"yookassa"}"#;
    assert_eq!(app.create_payment("sqlite-1", other).await.status(), 422);
    assert_eq!(app.payments().await.len(), 1);
    assert_eq!(app.outbox_with_key("payment.created").await.len(), 1);

    let provider_payment_id = app.payments().await[0].provider_payment_id.clone().unwrap();
    let body = payment_notification("payment.succeeded", &provider_payment_id, "succeeded");
    let responses = join_all((0..10).map(|_| app.post_yookassa(&body, &[]))).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(app.inbox_count().await, 1);
    assert_eq!(
        app.outbox_with_key("provider.notification.yookassa")
            .await
            .len(),
        1
    );
}
