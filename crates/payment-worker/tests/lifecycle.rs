//! The real `payment-worker` binary starts against PostgreSQL and RabbitMQ, answers
//! `/health/ready`, and stops cleanly on SIGTERM.

#[tokio::test]
async fn binary_becomes_ready_and_stops_on_sigterm() {
    let db = testkit::TestDb::new().await;
    let (amqp, prefix) = (testkit::amqp_url(), testkit::unique_prefix("wk"));
    let logs = std::env::temp_dir().join(&prefix);
    let envs = [
        ("DATABASE_URL", db.url.as_str()),
        ("AMQP_URL", amqp.as_str()),
        ("AMQP_PREFIX", prefix.as_str()),
        ("LOG_DIR", logs.to_str().unwrap()),
    ];
    service_kit::testing::check_binary_lifecycle(
        env!("CARGO_BIN_EXE_payment-worker"),
        "WORKER_OPS_BIND",
        &envs,
    )
    .await
    .unwrap();
}
