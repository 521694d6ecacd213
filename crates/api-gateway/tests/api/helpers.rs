//! `spawn_app`: a real gateway on a random port, on a fresh PostgreSQL database, a real
//! RabbitMQ connection (unique prefix) and an in-process YooKassa emulator.

use std::collections::HashMap;
use std::net::SocketAddr;

use api_gateway::{Settings, start};
use domain::entities::{outbox, payments, provider_notifications};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use service_kit::Shutdown;
use service_kit::runtime::Infra;
use service_kit::settings::Source;
use testkit::TestDb;

pub const SERVICE_TOKEN: &str = "svc-token-for-tests-0123456789abcdef";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789abcdef";
pub const CRYPTO_SECRET: &str = "whsec_test_0123456789abcdef0123456789";

pub struct TestApp {
    /// The public port: webhooks and the API.
    pub addr: SocketAddr,
    /// The ops port: `/health/*` and `/metrics`.
    pub ops_addr: SocketAddr,
    pub db: TestDb,
    pub http: reqwest::Client,
    pub yookassa: sandbox::yookassa::Handle,
    /// The unique prefix of this gateway's RabbitMQ names.
    pub amqp_prefix: String,
    /// On RabbitMQ (not the in-process bus): its queues are deleted when the app drops.
    on_rabbitmq: bool,
    shutdown: Shutdown,
    infra: Infra,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if self.on_rabbitmq {
            // So test runs do not pile up queues on the broker.
            service_kit::testing::delete_system_topology_blocking(
                &testkit::amqp_url(),
                &self.amqp_prefix,
            );
        }
    }
}

/// A gateway with every feature on; `overrides` replace or add environment variables (an
/// empty value unsets one).
pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    spawn_on(TestDb::new().await, false, overrides).await
}

/// The single-process mode: SQLite and the in-process bus.
pub async fn spawn_embedded_app() -> TestApp {
    spawn_on(TestDb::sqlite().await, true, &[]).await
}

async fn spawn_on(db: TestDb, embedded: bool, overrides: &[(&str, &str)]) -> TestApp {
    let yookassa = sandbox::yookassa::spawn(sandbox::yookassa::Config::default())
        .await
        .expect("emulator starts");
    let amqp_prefix = testkit::unique_prefix("gw");
    let mut vars: HashMap<String, String> = [
        ("DATABASE_URL", db.url.clone()),
        ("AMQP_URL", testkit::amqp_url()),
        ("AMQP_PREFIX", amqp_prefix.clone()),
        ("RUN_MIGRATIONS", "false".into()),
        ("GATEWAY_BIND", "127.0.0.1:0".into()),
        ("GATEWAY_OPS_BIND", "127.0.0.1:0".into()),
        ("GATEWAY_WORKERS", "2".into()),
        ("API_SERVICE_TOKEN", SERVICE_TOKEN.into()),
        ("API_ADMIN_TOKEN", ADMIN_TOKEN.into()),
        // The crypto provider verifies its own notices: on, with its notice secret.
        (
            "CRYPTO_WALLET_ADDRESS",
            "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE".into(),
        ),
        ("CRYPTO_WEBHOOK_SECRET", CRYPTO_SECRET.into()),
        ("YOOKASSA_SHOP_ID", "100500".into()),
        ("YOOKASSA_SECRET_KEY", "test_sandbox_secret".into()),
        ("YOOKASSA_TEST_MODE", "true".into()),
        ("YOOKASSA_API_URL", yookassa.api_url()),
        ("YOOKASSA_ALLOWED_IPS", "127.0.0.1".into()),
        ("YOOKASSA_MAX_ATTEMPTS", "2".into()),
        ("YOOKASSA_RETRY_INITIAL_MS", "10".into()),
        ("YOOKASSA_RETRY_MAX_MS", "20".into()),
        // The rate limits are off here: the battery sends hundreds of hostile requests from
        // one address and checks each one's own answer. `rate_limits.rs` turns them on.
        ("GATEWAY_WEBHOOK_LIMIT", "off".into()),
        ("GATEWAY_API_LIMIT", "off".into()),
        ("GATEWAY_API_TOKEN_LIMIT", "off".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (name, value) in overrides {
        vars.insert((*name).to_owned(), (*value).to_owned());
    }
    let settings = Settings::load(&Source::Map(vars)).expect("settings");
    let infra = if embedded {
        Infra::embedded(api_gateway::SERVICE, &settings.common).await
    } else {
        Infra::connect(api_gateway::SERVICE, &settings.common).await
    }
    .expect("infra connects");
    let shutdown = Shutdown::new();
    let gateway = start(&settings.gateway, &infra, shutdown.clone())
        .await
        .expect("gateway starts");
    TestApp {
        addr: gateway.addr,
        ops_addr: gateway.ops_addr.expect("the gateway serves ops"),
        db,
        // Idle connections are dropped before the gateway's 5 s keep-alive closes them: a
        // connection reused just as the server closes it fails the request (IncompleteMessage).
        http: reqwest::Client::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .build()
            .expect("client"),
        yookassa,
        amqp_prefix,
        on_rabbitmq: !embedded,
        shutdown,
        infra,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the ops port (`/health/*`, `/metrics`).
    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops_addr)
    }

    /// How many rounds of readiness checks (database, broker) have run.
    pub fn readiness_rounds(&self) -> u64 {
        self.infra.readiness().rounds()
    }

    pub async fn post_yookassa(&self, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url("/webhook/payment/yookassa"))
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request")
    }

    pub async fn create_payment(&self, key: &str, body: &str) -> reqwest::Response {
        self.http
            .post(self.url("/api/payments"))
            .bearer_auth(SERVICE_TOKEN)
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request")
    }

    pub async fn inbox_count(&self) -> u64 {
        provider_notifications::Entity::find()
            .count(&self.db.conn)
            .await
            .unwrap()
    }

    pub async fn inbox(&self) -> Vec<provider_notifications::Model> {
        provider_notifications::Entity::find()
            .all(&self.db.conn)
            .await
            .unwrap()
    }

    pub async fn outbox_with_key(&self, routing_key: &str) -> Vec<outbox::Model> {
        outbox::Entity::find()
            .filter(outbox::Column::RoutingKey.eq(routing_key))
            .all(&self.db.conn)
            .await
            .unwrap()
    }

    pub async fn outbox_count(&self) -> u64 {
        outbox::Entity::find().count(&self.db.conn).await.unwrap()
    }

    pub async fn payments(&self) -> Vec<payments::Model> {
        payments::Entity::find().all(&self.db.conn).await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.ops_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The value of one Prometheus sample whose line contains every fragment (0 if absent).
pub fn sample(metrics: &str, name: &str, fragments: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && fragments.iter().all(|f| line.contains(f)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal but valid YooKassa `payment.*` notification.
pub fn payment_notification(event: &str, provider_payment_id: &str, status: &str) -> String {
    serde_json::json!({
        "type": "notification",
        "event": event,
        "object": {
            "id": provider_payment_id,
            "status": status,
            "paid": status == "succeeded",
            "amount": {"value": "199.00", "currency": "RUB"},
            "created_at": "2026-11-29T10:00:00.000Z",
            "test": true,
            "metadata": {}
        }
    })
    .to_string()
}

pub fn random_provider_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub const CREATE_BODY: &str = r#"{"telegram_id": 123456, "tariff_code": "month_1", "provider": "yookassa", "username": "alice"}"#;

/// Creates a payment through the API; returns the JSON answer.
pub async fn created_payment(app: &TestApp, key: &str) -> serde_json::Value {
    let response = app.create_payment(key, CREATE_BODY).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

/// Another process's connections (e.g. a worker's) to this app's database and broker, under
/// its AMQP prefix: the system queues it declares are deleted with the app.
pub async fn connect_beside(app: &TestApp, name: &'static str) -> Infra {
    let common = service_kit::settings::load_common(&Source::map([
        ("DATABASE_URL", app.db.url.as_str()),
        ("AMQP_URL", testkit::amqp_url().as_str()),
        ("AMQP_PREFIX", app.amqp_prefix.as_str()),
        ("RUN_MIGRATIONS", "false"),
    ]))
    .expect("settings");
    Infra::connect(name, &common).await.expect("infra connects")
}

/// Runs the ignored test `name` of this binary in a process of its own, with `flag` set so it
/// does its work (a measurement of memory is only meaningful without the other tests running
/// beside it), and fails when it fails.
pub fn run_alone(name: &str, flag: &str) {
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(flag, "1")
        .output()
        .expect("child test runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} failed:\n{stdout}\n{stderr}"
    );
}

/// Resident set size of this process, from `/proc/self/status` (`VmRSS`, in KiB).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}
