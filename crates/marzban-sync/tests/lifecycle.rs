//! The real `marzban-sync` binary starts against PostgreSQL, RabbitMQ and the Marzban
//! emulator, answers `/health/ready`, and stops cleanly on SIGTERM; `--check-drift` runs one
//! pass and exits.

use sandbox::marzban as emulator;

#[tokio::test]
async fn binary_becomes_ready_and_stops_on_sigterm() {
    let db = testkit::TestDb::new().await;
    let emu = emulator::spawn(emulator::Config::default()).await.unwrap();
    let (amqp, prefix) = (testkit::amqp_url(), testkit::unique_prefix("ms"));
    let logs = std::env::temp_dir().join(&prefix);
    let envs = [
        ("DATABASE_URL", db.url.as_str()),
        ("AMQP_URL", amqp.as_str()),
        ("AMQP_PREFIX", prefix.as_str()),
        ("LOG_DIR", logs.to_str().unwrap()),
        ("MARZBAN_URL", emu.base_url.as_str()),
        ("MARZBAN_USERNAME", "admin"),
        ("MARZBAN_PASSWORD", "admin-password"),
    ];
    service_kit::testing::check_binary_lifecycle(
        env!("CARGO_BIN_EXE_marzban-sync"),
        "MARZBAN_SYNC_OPS_BIND",
        &envs,
    )
    .await
    .unwrap();
    assert_eq!(
        emu.count(emulator::route::TOKEN),
        1,
        "logged in at start-up"
    );
    // The binary declared its queues under the test's prefix; remove them.
    let rabbit = messaging::RabbitBus::connect(messaging::RabbitConfig::new(amqp, prefix))
        .await
        .unwrap();
    let spec = messaging::ConsumerSpec::new(
        marzban_sync::CONSUMER,
        vec![
            "payment.completed".to_owned(),
            "payment.refunded".to_owned(),
            "grant.created".to_owned(),
        ],
    );
    rabbit.delete_consumer(&spec).await.unwrap();
    rabbit.delete_exchange().await.unwrap();
    rabbit.close().await;
}

#[tokio::test]
async fn check_drift_runs_one_pass_and_exits() {
    let db = testkit::TestDb::new().await;
    let emu = emulator::spawn(emulator::Config::default()).await.unwrap();
    let logs = std::env::temp_dir().join(testkit::unique_prefix("ms-drift-cli"));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_marzban-sync"))
        .arg("--check-drift")
        .env("DATABASE_URL", &db.url)
        .env("LOG_DIR", &logs)
        .env("MARZBAN_URL", &emu.base_url)
        .env("MARZBAN_USERNAME", "admin")
        .env("MARZBAN_PASSWORD", "admin-password")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("checked=0 repaired=0 failed=0"), "{stdout}");
}

#[tokio::test]
async fn missing_panel_settings_are_named() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_marzban-sync"))
        .env_clear()
        .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PANEL_URL") && stderr.contains("MARZBAN_URL"),
        "{stderr}"
    );
}
