//! A slow YooKassa (every answer after 10 s) with 50 checkouts in flight: no transaction is open
//! across the provider call, so webhooks for other payments and the rest of the API are still
//! stored and answered at once, with no 5xx; every checkout finishes with exactly one provider
//! payment.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::helpers::{SERVICE_TOKEN, payment_notification, random_provider_id, spawn_app};

const CHECKOUTS: usize = 50;
const LATENCY: Duration = Duration::from_secs(10);

#[tokio::test]
async fn webhooks_are_acknowledged_while_fifty_checkouts_wait_for_a_slow_yookassa() {
    let app = spawn_app(&[]).await;
    // Payments made while YooKassa is quick (one per customer: a customer's second press
    // would get the first payment again): their webhooks arrive during the slow phase.
    let mut others = Vec::new();
    for i in 0..10 {
        let body = format!(
            r#"{{"telegram_id": {}, "tariff_code": "month_1", "provider": "yookassa"}}"#,
            600_000 + i
        );
        let response = app.create_payment(&format!("other-{i}"), &body).await;
        assert_eq!(response.status(), 201);
        let payment: serde_json::Value = response.json().await.unwrap();
        others.push((
            payment["payment_id"].as_str().unwrap().to_owned(),
            payment["provider_payment_id"].as_str().unwrap().to_owned(),
        ));
    }

    app.yookassa.set_latency(LATENCY);
    let started = Instant::now();
    let checkouts = join_all((0..CHECKOUTS).map(|i| {
        let body = format!(
            r#"{{"telegram_id": {}, "tariff_code": "month_1", "provider": "yookassa"}}"#,
            700_000 + i
        );
        let app = &app;
        async move {
            let response = app.create_payment(&format!("slow-{i}"), &body).await;
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.ok())
        }
    }));
    let during = async {
        // Every checkout has reached YooKassa (it records a request before holding the answer).
        while app
            .yookassa
            .requests()
            .iter()
            .filter(|r| r.path == "/v3/payments")
            .count()
            < CHECKOUTS + others.len()
        {
            assert!(
                started.elapsed() < LATENCY,
                "the checkouts did not all start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let in_flight_from = started.elapsed();
        // Webhooks for the other payments, and for payments we do not know, 100 in all.
        let mut bodies: Vec<String> = others
            .iter()
            .map(|(_, provider_id)| {
                payment_notification("payment.succeeded", provider_id, "succeeded")
            })
            .collect();
        bodies.extend((others.len()..100).map(|_| {
            payment_notification("payment.succeeded", &random_provider_id(), "succeeded")
        }));
        let acks = join_all(bodies.iter().map(|body| async {
            let sent = Instant::now();
            let status = app.post_yookassa(body, &[]).await.status().as_u16();
            (status, sent.elapsed())
        }))
        .await;
        // The API reads as well.
        let reads = join_all(others.iter().map(|(id, _)| {
            app.http
                .get(app.url(&format!("/api/payments/{id}")))
                .bearer_auth(SERVICE_TOKEN)
                .send()
        }))
        .await;
        (in_flight_from, started.elapsed(), acks, reads)
    };
    let (results, (in_flight_from, acked_by, acks, reads)) = tokio::join!(checkouts, during);

    assert!(
        acked_by < LATENCY,
        "every webhook was answered while the checkouts waited (done after {acked_by:?}, \
         checkouts in flight from {in_flight_from:?})"
    );
    for (status, took) in &acks {
        assert_eq!(*status, 200);
        assert!(*took < Duration::from_secs(3), "an ack took {took:?}");
    }
    assert_eq!(app.inbox_count().await, 100, "every webhook stored");
    assert_eq!(
        app.outbox_with_key("provider.notification.yookassa")
            .await
            .len(),
        100
    );
    for read in reads {
        assert_eq!(read.unwrap().status(), 200);
    }

    // Every checkout finished, each with its own single provider payment.
    let mut provider_ids = HashSet::new();
    for (status, body) in &results {
        assert_eq!(*status, 201, "{body:?}");
        let body = body.as_ref().unwrap();
        provider_ids.insert(body["provider_payment_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(provider_ids.len(), CHECKOUTS);
    assert_eq!(app.yookassa.payments().len(), CHECKOUTS + others.len());
    let rows = app.payments().await;
    assert_eq!(rows.len(), CHECKOUTS + others.len());
    assert!(rows.iter().all(|r| r.provider_payment_id.is_some()));
    assert_eq!(
        app.outbox_with_key("payment.created").await.len(),
        CHECKOUTS + others.len()
    );
}
