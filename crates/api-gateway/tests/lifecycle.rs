//! The real `api-gateway` binary starts against PostgreSQL and RabbitMQ, answers
//! `/health/ready`, and stops cleanly on SIGTERM.

#[tokio::test]
async fn binary_becomes_ready_and_stops_on_sigterm() {
    let db = testkit::TestDb::new().await;
    let (amqp, prefix) = (testkit::amqp_url(), testkit::unique_prefix("gw"));
    let logs = std::env::temp_dir().join(&prefix);
    let envs = [
        ("DATABASE_URL", db.url.as_str()),
        ("AMQP_URL", amqp.as_str()),
        ("AMQP_PREFIX", prefix.as_str()),
        ("LOG_DIR", logs.to_str().unwrap()),
    ];
    service_kit::testing::check_binary_lifecycle(
        env!("CARGO_BIN_EXE_api-gateway"),
        "GATEWAY_BIND",
        &envs,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn missing_setting_stops_start_up_with_its_name() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_api-gateway"))
        .env_remove("DATABASE_URL")
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("setting DATABASE_URL is missing"),
        "{stderr}"
    );
}
