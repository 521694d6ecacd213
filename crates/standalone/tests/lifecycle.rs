//! The real `standalone` binary: all four services in one process on a fresh SQLite file and
//! the in-process bus become ready (on the one ops address, `OPS_BIND`) and stop cleanly on
//! SIGTERM.

#[tokio::test]
async fn embedded_mode_becomes_ready_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(testkit::unique_prefix("standalone"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/acp.db?mode=rwc", dir.display());
    let logs = dir.join("logs");
    let envs = [
        ("DATABASE_URL", url.as_str()),
        ("LOG_DIR", logs.to_str().unwrap()),
        ("GATEWAY_BIND", "127.0.0.1:0"),
    ];
    service_kit::testing::check_binary_lifecycle(
        env!("CARGO_BIN_EXE_standalone"),
        "OPS_BIND",
        &envs,
    )
    .await
    .unwrap();
    assert!(dir.join("acp.db").exists(), "the SQLite file is created");
    std::fs::remove_dir_all(&dir).ok();
}

/// The start-up log names the database without its password (the single-process mode on
/// PostgreSQL: the test server trusts the connection, so the password in the URL is ignored).
#[tokio::test]
async fn the_start_up_log_masks_the_database_password() {
    let db = testkit::TestDb::new().await;
    let url = db
        .url
        .replacen("://postgres@", "://postgres:pg-password-in-url@", 1);
    assert!(
        url.contains("pg-password-in-url"),
        "unexpected test URL {}",
        db.url
    );
    let dir = std::env::temp_dir().join(testkit::unique_prefix("standalone-logs"));
    let logs = dir.join("logs");
    let envs = [
        ("DATABASE_URL", url.as_str()),
        ("RUN_MIGRATIONS", "false"),
        ("LOG_DIR", logs.to_str().unwrap()),
        ("GATEWAY_BIND", "127.0.0.1:0"),
    ];
    service_kit::testing::check_binary_lifecycle(
        env!("CARGO_BIN_EXE_standalone"),
        "OPS_BIND",
        &envs,
    )
    .await
    .unwrap();
    let mut text = String::new();
    for entry in std::fs::read_dir(&logs).unwrap() {
        text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let line = text
        .lines()
        .find(|l| l.contains("running in one process"))
        .unwrap_or_else(|| panic!("no start-up line in {text}"));
    assert!(line.contains("postgres:***@"), "{line}");
    assert!(
        !text.contains("pg-password-in-url"),
        "the password leaked: {text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
