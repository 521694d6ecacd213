//! The real `standalone` binary: all four services in one process on a fresh SQLite file and
//! the in-process bus become ready and stop cleanly on SIGTERM.

#[tokio::test]
async fn embedded_mode_becomes_ready_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(testkit::unique_prefix("standalone"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/acp.db?mode=rwc", dir.display());
    let logs = dir.join("logs");
    let envs = [
        ("DATABASE_URL", url.as_str()),
        ("LOG_DIR", logs.to_str().unwrap()),
        ("WORKER_BIND", "127.0.0.1:0"),
        ("MARZBAN_SYNC_BIND", "127.0.0.1:0"),
        ("BOT_BIND", "127.0.0.1:0"),
    ];
    service_kit::testing::check_binary_lifecycle(
        env!("CARGO_BIN_EXE_standalone"),
        "GATEWAY_BIND",
        &envs,
    )
    .await
    .unwrap();
    assert!(dir.join("acp.db").exists(), "the SQLite file is created");
    std::fs::remove_dir_all(&dir).ok();
}
