//! The payment log end to end: `domain::payment_log::record` writes the `system_logs` row in
//! the caller's transaction and the same event as a JSON line in the service's file under
//! `LOG_DIR` (set up by `telemetry::init`).

use domain::entities::{payments, system_logs};
use domain::payment_log::{self, Entry};
use domain::{Currency, PaymentStatus};
use sea_orm::prelude::ChronoUtc;
use sea_orm::{EntityTrait, TransactionTrait};
use service_kit::CommonSettings;
use service_kit::settings::LogFormat;

#[tokio::test]
async fn a_payment_event_is_a_row_and_a_json_line_under_log_dir() {
    let dir = std::env::temp_dir().join(format!("acp-payment-log-{}", uuid::Uuid::now_v7()));
    let settings = CommonSettings {
        database_url: "sqlite::memory:".into(),
        amqp_url: None,
        amqp_prefix: "acp".into(),
        amqp_queue_type: None,
        log_dir: dir.display().to_string(),
        log_format: LogFormat::Json,
        rust_log: "info".into(),
        run_migrations: false,
        telegram_api_limit: None,
        yookassa_api_limit: None,
        trongrid_api_limit: None,
    };
    let guard = service_kit::telemetry::init("payment-log-test", &settings);

    let db = testkit::TestDb::sqlite().await;
    let now = ChronoUtc::now();
    let payment = payments::Model {
        id: domain::PaymentId::new(),
        user_id: 7,
        tariff_id: 1,
        provider: domain::ProviderId::from_static("yookassa"),
        amount_minor: 19_900,
        currency: Currency::Rub,
        status: PaymentStatus::Succeeded,
        provider_payment_id: Some("2d9e".into()),
        idempotency_key: "k".into(),
        confirmation_url: None,
        failure_reason: None,
        metadata: serde_json::json!({}),
        created_at: now,
        updated_at: now,
        completed_at: Some(now),
        expires_at: None,
        refunded_minor: 0,
        flagged: false,
        flag_reason: None,
        next_check_at: None,
        check_attempts: 0,
    };
    let tx = db.conn.begin().await.unwrap();
    payment_log::record(
        &tx,
        Entry {
            event_type: "payment.completed",
            payment: &payment,
            status: "succeeded",
            message: "payment completed in 1500 ms".into(),
            metadata: serde_json::json!({"processing_ms": 1500}),
            at: now,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let rows = system_logs::Entity::find().all(&db.conn).await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.event_type, "payment.completed");
    assert_eq!(
        (row.user_id, row.payment_id, row.amount_minor),
        (Some(7), Some(payment.id), Some(19_900))
    );
    assert_eq!(
        (
            row.provider.as_ref().map(domain::ProviderId::as_str),
            row.currency.as_deref(),
            row.status.as_deref()
        ),
        (Some("yookassa"), Some("RUB"), Some("succeeded"))
    );
    assert_eq!(
        row.metadata,
        Some(serde_json::json!({"processing_ms": 1500}))
    );

    // Dropping the guard flushes the file writer.
    drop(guard);
    let mut files = std::fs::read_dir(&dir).unwrap().flatten();
    let file = files.next().expect("a log file").path();
    assert!(
        file.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("payment-log-test.log"),
        "{file:?}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let line: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["target"] == payment_log::TARGET)
        .unwrap_or_else(|| panic!("no payment_log line in {text}"));
    let fields = &line["fields"];
    assert_eq!(fields["event_type"], "payment.completed");
    assert_eq!(fields["payment_id"], payment.id.to_string());
    assert_eq!(fields["user_id"], 7);
    assert_eq!(fields["amount_minor"], 19_900);
    assert_eq!(fields["currency"], "RUB");
    assert_eq!(fields["provider"], "yookassa");
    assert_eq!(fields["status"], "succeeded");
    assert_eq!(fields["metadata"], r#"{"processing_ms":1500}"#);
    assert_eq!(fields["message"], "payment completed in 1500 ms");
    let _ = std::fs::remove_dir_all(&dir);
}
