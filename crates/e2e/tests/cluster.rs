//! The four service binaries and the sandbox as separate processes on PostgreSQL and
//! RabbitMQ: with two workers and two marzban-syncs, every process becomes ready on the shared
//! environment, a payment created through the gateway is stored pending, and every service
//! stops cleanly on SIGTERM.

use e2e::cluster::{Cluster, ClusterConfig, SERVICE_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_run_as_separate_processes_and_stop_cleanly() {
    let cluster = Cluster::start(ClusterConfig {
        workers: 2,
        syncs: 2,
        ..ClusterConfig::default()
    })
    .await
    .expect("every process becomes ready");

    let created = reqwest::Client::new()
        .post(format!("http://{}/api/payments", cluster.gateway.addr))
        .bearer_auth(SERVICE_TOKEN)
        .header("Idempotency-Key", "e2e-smoke-1")
        .json(&serde_json::json!({
            "telegram_id": 800_001,
            "tariff_code": "month_1",
            "provider": "yookassa",
        }))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(created.status(), 201);
    let payment: serde_json::Value = created.json().await.unwrap();
    assert_eq!(payment["status"], "pending");
    assert_eq!(payment["amount"]["value"], "199.00");
    assert!(
        payment["confirmation_url"]
            .as_str()
            .is_some_and(|u| u.contains("/checkout/"))
    );

    cluster
        .stop()
        .await
        .expect("every service exits 0 on SIGTERM");
}
