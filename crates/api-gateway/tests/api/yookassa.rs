//! `POST /webhook/payment/yookassa`: source checks, the inbox, dedupe, body limits.

use futures::future::join_all;
use messaging::Envelope;
use messaging::events::ProviderNotificationReceived;

use crate::helpers::{
    created_payment, payment_notification, random_provider_id, sample, spawn_app,
};

const ROUTING_KEY: &str = "provider.notification.yookassa";

async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status(), status);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    body["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn forged_peer_gets_403_nothing_stored_and_is_counted() {
    let app = spawn_app(&[("YOOKASSA_ALLOWED_IPS", "10.9.9.9")]).await;
    let before = sample(
        &app.metrics().await,
        "gateway_webhook_verdicts_total",
        &["provider=\"yookassa\"", "verdict=\"forbidden\""],
    );
    let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    let message = assert_error(app.post_yookassa(&body, &[]).await, 403, "forbidden").await;
    assert!(message.contains("127.0.0.1"), "{message}");
    assert_eq!(app.inbox_count().await, 0);
    assert_eq!(app.outbox_count().await, 0);
    let after = sample(
        &app.metrics().await,
        "gateway_webhook_verdicts_total",
        &["provider=\"yookassa\"", "verdict=\"forbidden\""],
    );
    assert!(
        after >= before + 1.0,
        "forbidden verdicts {before} -> {after}"
    );
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // YooKassa's real networks are allowed; 127.0.0.1 is not a trusted proxy.
    let app = spawn_app(&[("YOOKASSA_ALLOWED_IPS", "185.71.76.0/27")]).await;
    let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    for header in ["X-Forwarded-For", "X-Real-IP"] {
        let response = app.post_yookassa(&body, &[(header, "185.71.76.5")]).await;
        assert_error(response, 403, "forbidden").await;
    }
    assert_eq!(app.inbox_count().await, 0);
    assert_eq!(app.outbox_count().await, 0);
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_is_honoured() {
    let app = spawn_app(&[
        ("YOOKASSA_ALLOWED_IPS", "185.71.76.0/27"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    // Through our proxy, from YooKassa: accepted, and the inbox records the real client.
    let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    let response = app
        .post_yookassa(&body, &[("X-Forwarded-For", "185.71.76.5")])
        .await;
    assert_eq!(response.status(), 200);
    let inbox = app.inbox().await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].peer.as_deref(), Some("185.71.76.5"));

    // A client that writes YooKassa's address in front of its own is still itself: the
    // right-most hop our proxy appended wins.
    let other = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    let response = app
        .post_yookassa(&other, &[("X-Forwarded-For", "185.71.76.5, 203.0.113.9")])
        .await;
    assert_error(response, 403, "forbidden").await;
    assert_eq!(app.inbox_count().await, 1);

    let response = app
        .post_yookassa(&other, &[("X-Forwarded-For", "not-an-address")])
        .await;
    assert_error(response, 400, "bad_request").await;
}

#[tokio::test]
async fn duplicate_sent_ten_times_concurrently_is_stored_once() {
    let app = spawn_app(&[]).await;
    let payment = created_payment(&app, "dup-1").await;
    let provider_payment_id = payment["provider_payment_id"].as_str().unwrap().to_owned();
    let body = payment_notification("payment.succeeded", &provider_payment_id, "succeeded");
    let before = app.outbox_with_key(ROUTING_KEY).await.len();
    assert_eq!(before, 0);

    let responses = join_all((0..10).map(|_| app.post_yookassa(&body, &[]))).await;
    let mut duplicates = 0;
    for response in responses {
        assert_eq!(response.status(), 200);
        let ack: serde_json::Value = response.json().await.unwrap();
        if ack["duplicate"] == true {
            duplicates += 1;
        }
    }
    assert_eq!(duplicates, 9);

    let inbox = app.inbox().await;
    assert_eq!(inbox.len(), 1, "one inbox row");
    let row = &inbox[0];
    assert_eq!(row.provider, "yookassa");
    assert_eq!(
        row.dedupe_key,
        format!("payment.succeeded:{provider_payment_id}")
    );
    assert_eq!(row.source, "webhook");
    assert_eq!(row.body, body, "the raw body is kept exactly");
    let payment_id: domain::PaymentId = payment["payment_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(row.payment_id, Some(payment_id), "matched to our payment");

    let outbox = app.outbox_with_key(ROUTING_KEY).await;
    assert_eq!(outbox.len(), 1, "one outbox row");
    let envelope = Envelope::from_json(outbox[0].envelope.as_bytes()).unwrap();
    let event: ProviderNotificationReceived = envelope.decode().unwrap();
    assert_eq!(event.notification_id, row.id);
    assert_eq!(event.payment_id, Some(payment_id));
    assert_eq!(envelope.correlation_id, uuid::Uuid::from(payment_id));

    // The same object with another event is another notification.
    let canceled = payment_notification("payment.canceled", &provider_payment_id, "canceled");
    assert_eq!(app.post_yookassa(&canceled, &[]).await.status(), 200);
    assert_eq!(app.inbox_count().await, 2);
}

#[tokio::test]
async fn unknown_payment_is_acknowledged_and_recorded() {
    let app = spawn_app(&[]).await;
    let unknown = random_provider_id();
    let body = payment_notification("payment.succeeded", &unknown, "succeeded");
    let response = app.post_yookassa(&body, &[]).await;
    assert_eq!(response.status(), 200);
    let inbox = app.inbox().await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(
        inbox[0].provider_payment_id.as_deref(),
        Some(unknown.as_str())
    );
    assert_eq!(inbox[0].payment_id, None);
    let outbox = app.outbox_with_key(ROUTING_KEY).await;
    assert_eq!(outbox.len(), 1);
    let envelope = Envelope::from_json(outbox[0].envelope.as_bytes()).unwrap();
    let event: ProviderNotificationReceived = envelope.decode().unwrap();
    assert_eq!(event.payment_id, None);
    assert!(envelope.correlation_id.is_nil());
}

#[tokio::test]
async fn oversized_body_gets_413_and_nothing_is_stored() {
    let app = spawn_app(&[]).await;
    let padding = "x".repeat(64 * 1024);
    let body = format!(
        r#"{{"type":"notification","event":"payment.succeeded","pad":"{padding}","object":{{}}}}"#
    );
    let response = app.post_yookassa(&body, &[]).await;
    let message = assert_error(response, 413, "payload_too_large").await;
    assert!(message.contains("65536"), "{message}");
    assert_eq!(app.inbox_count().await, 0);
    let metrics = app.metrics().await;
    assert!(
        sample(
            &metrics,
            "gateway_webhook_verdicts_total",
            &["verdict=\"too_large\""]
        ) >= 1.0
    );

    // Exactly at the limit is read (and then refused as malformed, not as too large).
    let exact = "x".repeat(64 * 1024);
    let response = app.post_yookassa(&exact, &[]).await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_clear_message() {
    let app = spawn_app(&[]).await;
    let message = assert_error(
        app.post_yookassa("{not json", &[]).await,
        400,
        "invalid_json",
    )
    .await;
    assert!(message.contains("line 1"), "{message}");

    let no_id =
        r#"{"type":"notification","event":"payment.succeeded","object":{"status":"succeeded"}}"#;
    let message = assert_error(app.post_yookassa(no_id, &[]).await, 400, "invalid_json").await;
    assert!(message.contains("id"), "{message}");

    let wrong_type = r#"{"type":"payment","event":"payment.succeeded","object":{}}"#;
    let message = assert_error(
        app.post_yookassa(wrong_type, &[]).await,
        400,
        "invalid_json",
    )
    .await;
    assert!(message.contains("notification"), "{message}");

    assert_eq!(app.inbox_count().await, 0);
}

#[tokio::test]
async fn disabled_provider_webhook_is_404() {
    let app = spawn_app(&[("YOOKASSA_SHOP_ID", ""), ("YOOKASSA_SECRET_KEY", "")]).await;
    let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    assert_error(app.post_yookassa(&body, &[]).await, 404, "not_found").await;
}

#[tokio::test]
async fn the_notice_reaches_the_worker_through_rabbitmq() {
    use futures::StreamExt;
    use messaging::{ConsumerSpec, DeliverySource, RabbitBus, RabbitConfig};

    let app = spawn_app(&[]).await;
    let consumer = ConsumerSpec::new("gw-test", ["provider.notification.*"]);
    let (bus, mut deliveries) = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let config = RabbitConfig::new(testkit::amqp_url(), app.amqp_prefix.clone());
        let bus = RabbitBus::connect(config).await.unwrap();
        let deliveries = bus.subscribe(&consumer, 4).await.unwrap();
        (bus, deliveries)
    })
    .await
    .expect("RabbitMQ answers within 20 s");

    let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    assert_eq!(app.post_yookassa(&body, &[]).await.status(), 200);

    let delivery = tokio::time::timeout(std::time::Duration::from_secs(10), deliveries.next())
        .await
        .expect("published within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.message.routing_key, ROUTING_KEY);
    let envelope = Envelope::from_json(&delivery.message.body).unwrap();
    let event: ProviderNotificationReceived = envelope.decode().unwrap();
    assert_eq!(event.notification_id, app.inbox().await[0].id);
    delivery.ack().await.unwrap();
    bus.delete_consumer(&consumer).await.ok();
    bus.close().await;
}
