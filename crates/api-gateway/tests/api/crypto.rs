//! `POST /webhook/payment/crypto`: HMAC-SHA256 over `"{t}.{raw body}"`, 5-minute tolerance.

use messaging::Envelope;
use messaging::events::ProviderNotificationReceived;
use payment_core::providers::crypto::signature;

use crate::helpers::{CRYPTO_SECRET, TestApp, sample, spawn_app};

const NOTICE: &str = r#"{"event":"transfer.detected","tx_id":"a1b2c3","network":"TRC20"}"#;

async fn post(app: &TestApp, body: &str, signature: Option<String>) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/webhook/payment/crypto"))
        .header("Content-Type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("X-Signature", signature);
    }
    request.send().await.unwrap()
}

fn signed(body: &str, offset_secs: i64) -> String {
    let t = chrono::Utc::now().timestamp() + offset_secs;
    signature::sign(CRYPTO_SECRET.as_bytes(), t, body.as_bytes()).unwrap()
}

async fn error_code(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status);
    let body: serde_json::Value = response.json().await.unwrap();
    format!(
        "{}: {}",
        body["error"].as_str().unwrap(),
        body["message"].as_str().unwrap()
    )
}

#[tokio::test]
async fn signed_notice_is_stored_once() {
    let app = spawn_app(&[]).await;
    let response = post(&app, NOTICE, Some(signed(NOTICE, 0))).await;
    assert_eq!(response.status(), 200);
    let ack: serde_json::Value = response.json().await.unwrap();
    assert_eq!(ack["duplicate"], false);

    // Re-sent later with a fresh signature: the same notice.
    let response = post(&app, NOTICE, Some(signed(NOTICE, -60))).await;
    let ack: serde_json::Value = response.json().await.unwrap();
    assert_eq!(ack["duplicate"], true);

    let inbox = app.inbox().await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].provider, "crypto");
    assert_eq!(inbox[0].dedupe_key, "transfer.detected:a1b2c3");
    assert_eq!(inbox[0].body, NOTICE);
    let outbox = app.outbox_with_key("provider.notification.crypto").await;
    assert_eq!(outbox.len(), 1);
    let event: ProviderNotificationReceived = Envelope::from_json(outbox[0].envelope.as_bytes())
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(event.provider, "crypto");
}

#[tokio::test]
async fn bad_signatures_are_refused_and_nothing_is_stored() {
    let app = spawn_app(&[]).await;
    let message = error_code(post(&app, NOTICE, None).await, 401).await;
    assert!(message.starts_with("bad_signature"), "{message}");

    // Signed with another secret.
    let t = chrono::Utc::now().timestamp();
    let forged = signature::sign(b"not-the-secret", t, NOTICE.as_bytes()).unwrap();
    let message = error_code(post(&app, NOTICE, Some(forged)).await, 401).await;
    assert!(message.contains("does not match"), "{message}");

    // A valid signature over another body.
    let other = r#"{"event":"transfer.detected","tx_id":"zzz"}"#;
    let message = error_code(post(&app, NOTICE, Some(signed(other, 0))).await, 401).await;
    assert!(message.contains("does not match"), "{message}");

    let message = error_code(post(&app, NOTICE, Some("v1=abcd".into())).await, 401).await;
    assert!(message.contains("malformed"), "{message}");

    assert_eq!(app.inbox_count().await, 0);
    assert_eq!(app.outbox_count().await, 0);
}

#[tokio::test]
async fn expired_signature_is_refused() {
    let app = spawn_app(&[]).await;
    for offset in [-301, 301] {
        let message = error_code(post(&app, NOTICE, Some(signed(NOTICE, offset))).await, 401).await;
        assert!(message.contains("more than 300 s"), "{message}");
    }
    assert!(
        post(&app, NOTICE, Some(signed(NOTICE, -290)))
            .await
            .status()
            .is_success()
    );
    let metrics = app.metrics().await;
    assert!(
        sample(
            &metrics,
            "gateway_webhook_verdicts_total",
            &["provider=\"crypto\"", "verdict=\"expired_signature\""]
        ) >= 2.0
    );
}

#[tokio::test]
async fn malformed_and_oversized_notices() {
    let app = spawn_app(&[]).await;
    let unknown_field = r#"{"event":"transfer.detected","amount":5}"#;
    let message = error_code(
        post(&app, unknown_field, Some(signed(unknown_field, 0))).await,
        400,
    )
    .await;
    assert!(
        message.starts_with("invalid_json") && message.contains("unknown field"),
        "{message}"
    );

    let huge = format!(r#"{{"event":"x","tx_id":"{}"}}"#, "a".repeat(70_000));
    let message = error_code(post(&app, &huge, Some(signed(&huge, 0))).await, 413).await;
    assert!(message.starts_with("payload_too_large"), "{message}");
    assert_eq!(app.inbox_count().await, 0);
}

#[tokio::test]
async fn without_a_secret_the_route_is_404() {
    let app = spawn_app(&[("CRYPTO_WEBHOOK_SECRET", "")]).await;
    let response = post(&app, NOTICE, Some(signed(NOTICE, 0))).await;
    assert_eq!(response.status(), 404);
}
