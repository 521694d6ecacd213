//! The real `api-gateway` binary starts against PostgreSQL and RabbitMQ, answers
//! `/health/ready` on its ops address, and stops cleanly on SIGTERM.

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
        ("GATEWAY_BIND", "127.0.0.1:0"),
    ];
    service_kit::testing::check_binary_lifecycle(
        env!("CARGO_BIN_EXE_api-gateway"),
        "GATEWAY_OPS_BIND",
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

#[tokio::test]
async fn weak_or_equal_tokens_stop_start_up_with_their_name() {
    let long = "a".repeat(32);
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("API_SERVICE_TOKEN", "short")],
            "setting API_SERVICE_TOKEN is invalid",
        ),
        (
            &[("API_ADMIN_TOKEN", "short")],
            "setting API_ADMIN_TOKEN is invalid",
        ),
        (
            &[("CRYPTO_WEBHOOK_SECRET", "short")],
            "setting CRYPTO_WEBHOOK_SECRET is invalid",
        ),
        (
            &[("API_SERVICE_TOKEN", &long), ("API_ADMIN_TOKEN", &long)],
            "setting API_ADMIN_TOKEN is invalid: must differ from API_SERVICE_TOKEN",
        ),
    ];
    for (envs, expected) in cases {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_api-gateway"))
            .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
            .env_remove("API_SERVICE_TOKEN")
            .env_remove("API_ADMIN_TOKEN")
            .env_remove("CRYPTO_WEBHOOK_SECRET")
            .envs(envs.iter().copied())
            .current_dir(std::env::temp_dir())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains(&long), "the value is not echoed: {stderr}");
    }
}
