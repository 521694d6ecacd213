//! The real `bot` binary starts against PostgreSQL, RabbitMQ and the Telegram emulator,
//! answers `/health/ready`, and stops cleanly on SIGTERM.

#[tokio::test]
async fn binary_becomes_ready_and_stops_on_sigterm() {
    let db = testkit::TestDb::new().await;
    let telegram = sandbox::telegram::spawn(sandbox::telegram::Config::default())
        .await
        .unwrap();
    let (amqp, prefix) = (testkit::amqp_url(), testkit::unique_prefix("bot"));
    let logs = std::env::temp_dir().join(&prefix);
    let api_url = telegram.api_url();
    let envs = [
        ("DATABASE_URL", db.url.as_str()),
        ("AMQP_URL", amqp.as_str()),
        ("AMQP_PREFIX", prefix.as_str()),
        ("LOG_DIR", logs.to_str().unwrap()),
        ("TELEGRAM_BOT_TOKEN", telegram.token()),
        ("TELEGRAM_API_URL", api_url.as_str()),
        ("TELEGRAM_POLL_TIMEOUT_SECS", "1"),
        ("API_SERVICE_TOKEN", "svc"),
    ];
    service_kit::testing::check_binary_lifecycle(env!("CARGO_BIN_EXE_bot"), "BOT_OPS_BIND", &envs)
        .await
        .unwrap();
}
