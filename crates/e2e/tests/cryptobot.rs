//! CryptoBot end to end, the services as separate processes with the Crypto Pay emulator: a
//! paid invoice's signed webhook makes the payment succeed and the subscription active once
//! (a duplicate delivery changes nothing), a forged webhook is refused, an expired invoice
//! expires the payment, and a refund is a `transfer` to the payer — refused with a clear
//! message while the app balance cannot cover it.

use std::time::{Duration, Instant};

use e2e::audit::audit;
use e2e::cluster::{ADMIN_TOKEN, Cluster, ClusterConfig, Proc, SERVICE_TOKEN};
use sandbox::cryptobot::{SANDBOX_TOKEN, SIGNATURE_HEADER};
use serde_json::{Value, json};
use service_kit::testing::free_addr;

const WAIT: Duration = Duration::from_secs(30);

struct World {
    cluster: Cluster,
    http: reqwest::Client,
    /// `http://<emulator>/sandbox/cryptobot`.
    control: String,
}

impl World {
    async fn start() -> Self {
        let bind = free_addr().expect("a free port");
        let env = [
            ("SANDBOX_CRYPTOBOT_BIND", bind.clone()),
            ("CRYPTOBOT_API_TOKEN", SANDBOX_TOKEN.to_owned()),
            ("CRYPTOBOT_API_URL", format!("http://{bind}/api")),
            ("CRYPTOBOT_ACCEPTED_ASSETS", "USDT,TON".to_owned()),
            // Reconciliation looks at a pending payment a second after its creation.
            ("RECONCILE_POLL_MS", "300".to_owned()),
            ("RECONCILE_FIRST_CHECK_SECS", "1".to_owned()),
            ("RECONCILE_FAST_INTERVAL_SECS", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let cluster = Cluster::start(ClusterConfig {
            env,
            ..ClusterConfig::default()
        })
        .await
        .expect("every process becomes ready");
        Proc::wait_listening(&bind, WAIT)
            .await
            .expect("the Crypto Pay emulator listens");
        let world = Self {
            http: reqwest::Client::new(),
            control: format!("http://{bind}/sandbox/cryptobot"),
            cluster,
        };
        let hook = format!(
            "http://{}/webhook/payment/cryptobot",
            world.cluster.gateway.addr
        );
        world
            .control_call(reqwest::Method::PUT, "/webhook", json!({"url": hook}))
            .await;
        world
    }

    async fn control_call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}{path}", self.control))
            .json(&body)
            .send()
            .await
            .expect("the emulator answers");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    async fn control_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.control))
            .send()
            .await
            .expect("the emulator answers")
            .json()
            .await
            .expect("json")
    }

    fn gateway(&self, path: &str) -> String {
        format!("http://{}{path}", self.cluster.gateway.addr)
    }

    /// `POST /api/payments` with CryptoBot, as the bot does it.
    async fn checkout(&self, telegram_id: i64) -> Value {
        let response = self
            .http
            .post(self.gateway("/api/payments"))
            .bearer_auth(SERVICE_TOKEN)
            .header("Idempotency-Key", format!("cryptobot-{telegram_id}"))
            .json(&json!({
                "telegram_id": telegram_id,
                "tariff_code": "month_1",
                "provider": "cryptobot",
                "language_code": "en",
            }))
            .send()
            .await
            .expect("the gateway answers");
        assert_eq!(response.status(), 201);
        response.json().await.expect("json")
    }

    async fn payment(&self, payment_id: &str) -> Value {
        self.http
            .get(self.gateway(&format!("/api/payments/{payment_id}")))
            .bearer_auth(SERVICE_TOKEN)
            .send()
            .await
            .expect("the gateway answers")
            .json()
            .await
            .expect("json")
    }

    async fn wait_status(&self, payment_id: &str, status: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let payment = self.payment(payment_id).await;
            if payment["status"] == status {
                return payment;
            }
            assert!(
                Instant::now() < deadline,
                "payment {payment_id} never became {status}: {payment}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn refund(&self, payment_id: &str, key: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.gateway(&format!("/api/payments/{payment_id}/refund")))
            .bearer_auth(ADMIN_TOKEN)
            .header("Idempotency-Key", key)
            .send()
            .await
            .expect("the gateway answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn invoice_id(payment: &Value) -> String {
    payment["provider_payment_id"]
        .as_str()
        .expect("an invoice id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cryptobot_pays_once_refuses_forgeries_expires_and_refunds_by_transfer() {
    let world = World::start().await;

    // A paid invoice, its update delivered twice: succeeded, one grant, one subscription.
    let paid = world.checkout(800_101).await;
    let payment_id = paid["payment_id"].as_str().expect("id").to_owned();
    assert!(
        paid["confirmation_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://t.me/CryptoBot?start=")),
        "the bot shows bot_invoice_url: {paid}"
    );
    world
        .control_call(
            reqwest::Method::POST,
            "/notification-modes",
            json!({"kind": "duplicate"}),
        )
        .await;
    let invoice = invoice_id(&paid);
    world
        .control_call(
            reqwest::Method::POST,
            &format!("/invoices/{invoice}/pay"),
            json!({"asset": "TON"}),
        )
        .await;
    world.wait_status(&payment_id, "succeeded").await;
    let deadline = Instant::now() + WAIT;
    let granted = loop {
        let found = audit(&world.cluster.db.conn)
            .await
            .expect("audit")
            .subscriptions
            .into_iter()
            .find(|s| s.telegram_id == 800_101);
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no subscription for 800101");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let deliveries = world.control_get("/deliveries").await;
    let delivered: Vec<&Value> = deliveries
        .as_array()
        .expect("list")
        .iter()
        .filter(|d| d["outcome"]["kind"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 2, "the duplicate reached the gateway too");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = audit(&world.cluster.db.conn).await.expect("audit");
    assert_eq!(after.payments_granted_twice, 0);
    let again = after
        .subscriptions
        .iter()
        .find(|s| s.telegram_id == 800_101)
        .expect("subscription");
    assert_eq!((again.grants, again.days_granted), (granted.grants, 30));
    assert_eq!(again.grants, 1);

    // A forged update (the amount changed under the genuine signature) and an unsigned one.
    let genuine = delivered[0]["body"].as_str().expect("body").to_owned();
    let signature = delivered[0]["signature"].as_str().expect("signature");
    for (body, header) in [
        (genuine.replace("\"paid\"", "\"active\""), Some(signature)),
        (genuine.clone(), None),
    ] {
        let mut request = world
            .http
            .post(world.gateway("/webhook/payment/cryptobot"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(header) = header {
            request = request.header(SIGNATURE_HEADER, header);
        }
        let response = request.send().await.expect("the gateway answers");
        assert_eq!(response.status(), 401, "a forged update is refused");
    }

    // The app holds 97 % of what was paid: a full refund is refused, nothing is sent.
    let (status, refused) = world.refund(&payment_id, "refund-short").await;
    assert!(status >= 400, "{status} {refused}");
    assert!(
        refused.to_string().contains("INSUFFICIENT_FUNDS"),
        "a clear refusal: {refused}"
    );
    assert_eq!(world.control_get("/transfers").await, json!([]));
    world.wait_status(&payment_id, "succeeded").await;

    // Topped up, the refund is a transfer of the paid TON to the payer.
    world
        .control_call(
            reqwest::Method::PUT,
            "/balance",
            json!({"asset": "TON", "available": "10"}),
        )
        .await;
    let (status, refund) = world.refund(&payment_id, "refund-topped-up").await;
    assert!(status < 300, "{status} {refund}");
    world.wait_status(&payment_id, "refunded").await;
    let transfers = world.control_get("/transfers").await;
    let transfers = transfers.as_array().expect("list");
    assert_eq!(transfers.len(), 1, "{transfers:?}");
    assert_eq!(transfers[0]["user_id"], "800101");
    assert_eq!(transfers[0]["asset"], "TON");

    // An invoice that expires unpaid expires the payment.
    let lapsed = world.checkout(800_102).await;
    let lapsed_id = lapsed["payment_id"].as_str().expect("id").to_owned();
    world
        .control_call(
            reqwest::Method::POST,
            &format!("/invoices/{}/expire", invoice_id(&lapsed)),
            json!({}),
        )
        .await;
    world.wait_status(&lapsed_id, "expired").await;

    world
        .cluster
        .stop()
        .await
        .expect("every service exits 0 on SIGTERM");
}
