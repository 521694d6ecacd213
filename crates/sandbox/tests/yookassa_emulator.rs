//! The YooKassa emulator over real HTTP: auth, idempotence, validation, lifecycle, refunds,
//! faults and notification delivery (from a chosen source address).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use sandbox::yookassa::{self, Config, DeliveryOutcome, Fault, Handle, NotificationMode};
use serde_json::{Value, json};

const SHOP: &str = "100500";
const SECRET: &str = "test_sandbox_secret";

async fn start(config: Config) -> (Handle, reqwest::Client) {
    let handle = yookassa::spawn(config).await.expect("emulator starts");
    (handle, reqwest::Client::new())
}

fn payment_body(value: &str) -> Value {
    json!({
        "amount": {"value": value, "currency": "RUB"},
        "capture": true,
        "confirmation": {"type": "redirect", "return_url": "https://t.me/acp_bot"},
        "description": "VPN 30 days",
        "metadata": {"payment_id": "0190f3e4-0000-7000-8000-000000000001"}
    })
}

async fn post(
    client: &reqwest::Client,
    url: String,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut req = client.post(url).basic_auth(SHOP, Some(SECRET)).json(body);
    if let Some(key) = key {
        req = req.header("Idempotence-Key", key);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let resp = client
        .get(url)
        .basic_auth(SHOP, Some(SECRET))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn create(handle: &Handle, client: &reqwest::Client, key: &str, value: &str) -> Value {
    let (status, body) = post(
        client,
        format!("{}/payments", handle.api_url()),
        Some(key),
        &payment_body(value),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

/// A webhook receiver that records the peer address and body of each call.
struct Sink {
    url: String,
    calls: Arc<Mutex<Vec<(IpAddr, Value)>>>,
    _server: actix_web::dev::ServerHandle,
}

impl Sink {
    async fn start(statuses: Vec<u16>) -> Self {
        let calls: Arc<Mutex<Vec<(IpAddr, Value)>>> = Arc::default();
        let statuses = Arc::new(Mutex::new(statuses));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/webhook/payment/yookassa",
            listener.local_addr().expect("addr")
        );
        let (c, s) = (calls.clone(), statuses.clone());
        let server = HttpServer::new(move || {
            let (c, s) = (c.clone(), s.clone());
            App::new().route(
                "/webhook/payment/yookassa",
                web::post().to(move |req: HttpRequest, body: web::Bytes| {
                    let (c, s) = (c.clone(), s.clone());
                    async move {
                        let peer = req.peer_addr().expect("peer").ip();
                        let body: Value = serde_json::from_slice(&body).expect("json body");
                        c.lock().expect("lock").push((peer, body));
                        let mut statuses = s.lock().expect("lock");
                        let status = if statuses.is_empty() {
                            200
                        } else {
                            statuses.remove(0)
                        };
                        HttpResponse::build(
                            actix_web::http::StatusCode::from_u16(status).expect("status"),
                        )
                        .finish()
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url,
            calls,
            _server: handle,
        }
    }

    fn calls(&self) -> Vec<(IpAddr, Value)> {
        self.calls.lock().expect("lock").clone()
    }

    async fn wait(&self, n: usize) -> Vec<(IpAddr, Value)> {
        for _ in 0..300 {
            if self.calls().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.calls()
    }
}

#[tokio::test]
async fn basic_auth_is_checked() {
    let (h, client) = start(Config::default()).await;
    let url = format!("{}/payments", h.api_url());
    for auth in [None, Some((SHOP, "wrong")), Some(("999", SECRET))] {
        let mut req = client
            .post(&url)
            .header("Idempotence-Key", "k1")
            .json(&payment_body("1.00"));
        if let Some((user, pass)) = auth {
            req = req.basic_auth(user, Some(pass));
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status().as_u16(), 401);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["type"], "error");
        assert_eq!(body["code"], "invalid_credentials");
        assert!(body["id"].is_string());
    }
    let resp = client
        .get(format!("{}/me", h.api_url()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    assert!(h.payments().is_empty());
}

#[tokio::test]
async fn idempotence_key_rules() {
    let (h, client) = start(Config::default()).await;
    let url = format!("{}/payments", h.api_url());

    let (status, body) = post(&client, url.clone(), None, &payment_body("1.00")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(body["parameter"], "Idempotence-Key");

    let long = "k".repeat(65);
    let (status, body) = post(&client, url.clone(), Some(&long), &payment_body("1.00")).await;
    assert_eq!(status, 400);
    assert_eq!(body["parameter"], "Idempotence-Key");
    assert!(h.payments().is_empty());

    let first = create(&h, &client, "key-1", "199.00").await;
    let again = create(&h, &client, "key-1", "199.00").await;
    assert_eq!(
        first, again,
        "same key + same body returns the original result"
    );
    assert_eq!(h.payments().len(), 1);

    let (status, body) = post(&client, url.clone(), Some("key-1"), &payment_body("299.00")).await;
    assert_eq!(status, 400, "same key + other body is refused");
    assert_eq!(body["code"], "invalid_request");
    assert_eq!(h.payments().len(), 1);

    // Same body, new key: a new operation.
    create(&h, &client, "key-2", "199.00").await;
    assert_eq!(h.payments().len(), 2);
}

#[tokio::test]
async fn idempotence_records_expire() {
    let (h, client) = start(Config {
        idempotence_ttl: Duration::from_millis(50),
        ..Config::default()
    })
    .await;
    create(&h, &client, "key-ttl", "10.00").await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    create(&h, &client, "key-ttl", "10.00").await;
    assert_eq!(
        h.payments().len(),
        2,
        "after the TTL the key starts a new operation"
    );
}

#[tokio::test]
async fn validation_errors_use_yookassas_shape() {
    let (h, client) = start(Config::default()).await;
    let url = format!("{}/payments", h.api_url());
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"amount": {"value": "1.999", "currency": "RUB"}}),
            "amount.value",
        ),
        (
            json!({"amount": {"value": "-1.00", "currency": "RUB"}}),
            "amount.value",
        ),
        (
            json!({"amount": {"value": "0.00", "currency": "RUB"}}),
            "amount.value",
        ),
        (
            json!({"amount": {"value": "1.00", "currency": "EUR"}}),
            "amount.currency",
        ),
        (json!({"description": "x".repeat(129)}), "description"),
        (json!({"metadata": {"k": 5}}), "metadata"),
        (
            json!({"confirmation": {"type": "redirect"}}),
            "confirmation.return_url",
        ),
        (json!({"confirmation": {"type": "qr"}}), "confirmation.type"),
        (
            json!({"receipt": {"customer": {"email": "a@b.c"}, "items": [{"description": "VPN",
            "quantity": "1.00", "amount": {"value": "2.00", "currency": "RUB"}, "vat_code": 1}]}}),
            "receipt.items.amount",
        ),
    ];
    for (i, (patch, parameter)) in cases.into_iter().enumerate() {
        let mut body = payment_body("1.00");
        for (k, v) in patch.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (status, err) = post(&client, url.clone(), Some(&format!("v{i}")), &body).await;
        assert_eq!(status, 400, "{parameter}: {err}");
        assert_eq!(err["type"], "error");
        assert_eq!(err["code"], "invalid_request");
        assert_eq!(err["parameter"], parameter, "{err}");
    }
    let resp = client
        .post(&url)
        .basic_auth(SHOP, Some(SECRET))
        .header("Idempotence-Key", "bad-json")
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(h.payments().is_empty());

    let (status, err) = get(
        &client,
        format!("{}/payments/{}", h.api_url(), uuid::Uuid::new_v4()),
    )
    .await;
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn checkout_page_pays_and_redirects() {
    let (h, client) = start(Config::default()).await;
    let created = create(&h, &client, "k", "199.00").await;
    assert_eq!(created["status"], "pending");
    assert_eq!(created["paid"], false);
    assert_eq!(created["test"], true);
    assert_eq!(
        created["amount"],
        json!({"value": "199.00", "currency": "RUB"})
    );
    assert_eq!(
        created["metadata"]["payment_id"],
        "0190f3e4-0000-7000-8000-000000000001"
    );
    let id = id_of(&created);
    assert_eq!(id.len(), 36);
    let url = created["confirmation"]["confirmation_url"]
        .as_str()
        .expect("confirmation_url");
    assert_eq!(url, format!("{}/checkout/{id}", h.base_url()));

    let page = client
        .get(url)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(page.contains("Pay") && page.contains("Cancel") && page.contains("199.00"));

    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = no_redirect
        .post(format!("{url}/pay"))
        .send()
        .await
        .expect("pay");
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers()["location"], "https://t.me/acp_bot");

    let (_, paid) = get(&client, format!("{}/payments/{id}", h.api_url())).await;
    assert_eq!(paid["status"], "succeeded");
    assert_eq!(paid["paid"], true);
    assert_eq!(paid["refundable"], true);
    assert_eq!(paid["refunded_amount"]["value"], "0.00");
    assert_eq!(paid["income_amount"]["value"], "192.03");
    assert!(paid.get("confirmation").is_none());
    assert!(
        paid["captured_at"]
            .as_str()
            .expect("captured_at")
            .ends_with('Z')
    );

    // Paying twice is a conflict on the control surface.
    let resp = client
        .post(format!(
            "{}/sandbox/yookassa/payments/{id}/pay",
            h.base_url()
        ))
        .send()
        .await
        .expect("pay");
    assert_eq!(resp.status().as_u16(), 409);
}

#[tokio::test]
async fn two_stage_capture_and_cancel() {
    let (h, client) = start(Config::default()).await;
    let mut body = payment_body("500.00");
    body["capture"] = json!(false);
    let (_, a) = post(
        &client,
        format!("{}/payments", h.api_url()),
        Some("a"),
        &body,
    )
    .await;
    let (_, b) = post(
        &client,
        format!("{}/payments", h.api_url()),
        Some("b"),
        &body,
    )
    .await;
    let (a, b) = (id_of(&a), id_of(&b));

    let (status, err) = post(
        &client,
        format!("{}/payments/{a}/capture", h.api_url()),
        Some("c0"),
        &json!({}),
    )
    .await;
    assert_eq!(status, 400, "pending payments cannot be captured: {err}");

    h.pay(&a).expect("pay a");
    h.pay(&b).expect("pay b");
    assert_eq!(h.payment(&a).expect("a")["status"], "waiting_for_capture");

    let (status, captured) = post(
        &client,
        format!("{}/payments/{a}/capture", h.api_url()),
        Some("c1"),
        &json!({"amount": {"value": "400.00", "currency": "RUB"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(captured["status"], "succeeded");
    assert_eq!(captured["amount"]["value"], "400.00");

    let (status, canceled) = post(
        &client,
        format!("{}/payments/{b}/cancel", h.api_url()),
        Some("x1"),
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(
        canceled["cancellation_details"],
        json!({"party": "merchant", "reason": "canceled_by_merchant"})
    );

    let (status, _) = post(
        &client,
        format!("{}/payments/{b}/cancel", h.api_url()),
        Some("x2"),
        &Value::Null,
    )
    .await;
    assert_eq!(status, 400);

    // Autocapture payments refuse capture.
    let auto = id_of(&create(&h, &client, "auto", "10.00").await);
    let (status, err) = post(
        &client,
        format!("{}/payments/{auto}/capture", h.api_url()),
        Some("c2"),
        &json!({}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        err["description"]
            .as_str()
            .expect("description")
            .contains("autocapture")
    );
}

#[tokio::test]
async fn refund_rules() {
    let (h, client) = start(Config::default()).await;
    let id = id_of(&create(&h, &client, "p", "100.00").await);
    let refunds = format!("{}/refunds", h.api_url());
    let refund = |value: &str, currency: &str| json!({"payment_id": id, "amount": {"value": value, "currency": currency}});

    let (status, err) = post(
        &client,
        refunds.clone(),
        Some("r0"),
        &refund("10.00", "RUB"),
    )
    .await;
    assert_eq!(status, 400, "pending payments are not refundable: {err}");

    h.pay(&id).expect("pay");
    let (status, err) = post(
        &client,
        refunds.clone(),
        Some("r1"),
        &refund("100.01", "RUB"),
    )
    .await;
    assert_eq!(
        (status, err["parameter"].as_str()),
        (400, Some("amount.value"))
    );
    let (status, err) = post(
        &client,
        refunds.clone(),
        Some("r2"),
        &refund("99.00", "RUB"),
    )
    .await;
    assert_eq!(
        status, 400,
        "a partial refund must leave more than 1.00 RUB"
    );
    assert!(err["description"].as_str().expect("d").contains("1.00 RUB"));
    let (status, err) = post(
        &client,
        refunds.clone(),
        Some("r3"),
        &refund("10.00", "USD"),
    )
    .await;
    assert_eq!(
        (status, err["parameter"].as_str()),
        (400, Some("amount.currency"))
    );

    let (status, partial) = post(
        &client,
        refunds.clone(),
        Some("r4"),
        &refund("30.00", "RUB"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(partial["status"], "succeeded");
    assert_eq!(partial["payment_id"], id.as_str());
    let payment = h.payment(&id).expect("payment");
    assert_eq!(payment["refunded_amount"]["value"], "30.00");
    assert_eq!(payment["refundable"], true);

    let (status, full) = post(
        &client,
        refunds.clone(),
        Some("r5"),
        &refund("70.00", "RUB"),
    )
    .await;
    assert_eq!(status, 200);
    let payment = h.payment(&id).expect("payment");
    assert_eq!(payment["refunded_amount"]["value"], "100.00");
    assert_eq!(payment["refundable"], false);

    let (status, fetched) = get(&client, format!("{refunds}/{}", id_of(&full))).await;
    assert_eq!(status, 200);
    assert_eq!(fetched, full);
    let (status, _) = get(&client, format!("{refunds}/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(status, 404);
    assert_eq!(h.refunds().len(), 2);
}

#[tokio::test]
async fn faults_are_consumed_one_per_request() {
    let (h, client) = start(Config::default()).await;
    h.push_fault(Fault::InternalError, 1);
    h.push_fault(Fault::TooManyRequests, 1);
    let (status, body) = post(
        &client,
        format!("{}/payments", h.api_url()),
        Some("f"),
        &payment_body("5.00"),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("internal_server_error"))
    );
    let (status, body) = post(
        &client,
        format!("{}/payments", h.api_url()),
        Some("f"),
        &payment_body("5.00"),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_requests"))
    );
    assert!(h.payments().is_empty(), "neither fault did any work");

    // Processed but answered 500: a retry with the same key returns the payment made.
    h.push_fault(Fault::InternalErrorAfterProcessing, 1);
    let (status, _) = post(
        &client,
        format!("{}/payments", h.api_url()),
        Some("f"),
        &payment_body("5.00"),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(h.payments().len(), 1);
    let retried = create(&h, &client, "f", "5.00").await;
    assert_eq!(id_of(&retried), id_of(&h.payments()[0]));
    assert_eq!(h.payments().len(), 1);

    h.push_fault(Fault::slow(Duration::from_millis(150)), 1);
    let started = std::time::Instant::now();
    create(&h, &client, "slow", "5.00").await;
    assert!(started.elapsed() >= Duration::from_millis(150));

    h.push_fault(
        Fault::WrongAmount {
            amount: yookassa::Amount {
                value: "1.00".into(),
                currency: "RUB".into(),
            },
        },
        1,
    );
    let tampered = create(&h, &client, "tamper", "5.00").await;
    assert_eq!(tampered["amount"]["value"], "1.00");
    assert_eq!(
        h.payment(&id_of(&tampered)).expect("stored")["amount"]["value"],
        "5.00"
    );

    // Faults can also be scripted over HTTP.
    let resp = client
        .post(format!("{}/sandbox/yookassa/faults", h.base_url()))
        .json(&json!({"kind": "internal_error", "times": 2}))
        .send()
        .await
        .expect("control");
    assert_eq!(resp.status().as_u16(), 204);
    for _ in 0..2 {
        let (status, _) = get(&client, format!("{}/me", h.api_url())).await;
        assert_eq!(status, 500);
    }
    let (status, me) = get(&client, format!("{}/me", h.api_url())).await;
    assert_eq!((status, me["account_id"].as_str()), (200, Some(SHOP)));

    let log = h.requests();
    assert_eq!(log[0].fault, Some(Fault::InternalError));
    assert_eq!(log[0].idempotence_key.as_deref(), Some("f"));
}

#[tokio::test]
async fn notifications_come_from_the_chosen_address() {
    let sink = Sink::start(vec![]).await;
    let (h, client) = start(Config {
        webhook_url: Some(sink.url.clone()),
        notify_from: Some("127.0.0.2".parse().expect("ip")),
        ..Config::default()
    })
    .await;
    let id = id_of(&create(&h, &client, "n", "9.99").await);
    h.pay(&id).expect("pay");
    let calls = sink.wait(1).await;
    assert_eq!(calls.len(), 1);
    let (peer, body) = &calls[0];
    assert_eq!(peer.to_string(), "127.0.0.2");
    assert_eq!(body["type"], "notification");
    assert_eq!(body["event"], "payment.succeeded");
    assert_eq!(body["object"]["id"], id.as_str());
    assert_eq!(body["object"]["status"], "succeeded");
    let deliveries = h.wait_for_deliveries(1, Duration::from_secs(2)).await;
    assert_eq!(
        deliveries[0].outcome,
        DeliveryOutcome::Delivered { status: 200 }
    );
}

#[tokio::test]
async fn notification_modes() {
    let sink = Sink::start(vec![]).await;
    let (h, client) = start(Config {
        webhook_url: Some(sink.url.clone()),
        reorder_hold: Duration::from_secs(5),
        ..Config::default()
    })
    .await;
    let ids: Vec<String> = create_many(&h, &client, 5).await;

    h.push_notification_mode(NotificationMode::Duplicate, 1);
    h.pay(&ids[0]).expect("pay");
    assert_eq!(sink.wait(2).await.len(), 2);

    h.push_notification_mode(NotificationMode::Dropped, 1);
    h.pay(&ids[1]).expect("pay");
    let deliveries = h.wait_for_deliveries(3, Duration::from_secs(2)).await;
    assert_eq!(deliveries[2].outcome, DeliveryOutcome::Dropped);

    h.push_notification_mode(NotificationMode::Reordered, 1);
    h.pay(&ids[2]).expect("pay");
    h.pay(&ids[3]).expect("pay");
    let calls = sink.wait(4).await;
    let order: Vec<&str> = calls[2..]
        .iter()
        .map(|(_, b)| b["object"]["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        order,
        vec![ids[3].as_str(), ids[2].as_str()],
        "the held notification comes last"
    );

    h.push_notification_mode(NotificationMode::late(Duration::from_millis(200)), 1);
    h.expire(&ids[4]).expect("expire");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sink.calls().len(), 4, "late notification not yet sent");
    let calls = sink.wait(5).await;
    assert_eq!(calls[4].1["event"], "payment.canceled");
    assert_eq!(
        calls[4].1["object"]["cancellation_details"],
        json!({"party": "yoo_money", "reason": "expired_on_confirmation"})
    );
    // The dropped one never arrived.
    assert!(
        calls
            .iter()
            .all(|(_, b)| b["object"]["id"] != ids[1].as_str())
    );
}

async fn create_many(h: &Handle, client: &reqwest::Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(id_of(&create(h, client, &format!("m{i}"), "10.00").await));
    }
    ids
}

#[tokio::test]
async fn non_200_answers_are_redelivered() {
    let sink = Sink::start(vec![500, 404]).await;
    let (h, client) = start(Config {
        webhook_url: Some(sink.url.clone()),
        redelivery: vec![Duration::from_millis(20), Duration::from_millis(20)],
        ..Config::default()
    })
    .await;
    let id = id_of(&create(&h, &client, "r", "10.00").await);
    h.pay(&id).expect("pay");
    let calls = sink.wait(3).await;
    assert_eq!(calls.len(), 3);
    let deliveries = h.wait_for_deliveries(3, Duration::from_secs(2)).await;
    let outcomes: Vec<_> = deliveries
        .iter()
        .map(|d| (d.attempt, d.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (1, DeliveryOutcome::Rejected { status: 500 }),
            (2, DeliveryOutcome::Rejected { status: 404 }),
            (3, DeliveryOutcome::Delivered { status: 200 }),
        ]
    );
}

#[tokio::test]
async fn pending_payments_expire() {
    let (h, client) = start(Config {
        confirmation_ttl: Duration::from_millis(100),
        sweep_interval: Duration::from_millis(20),
        ..Config::default()
    })
    .await;
    let id = id_of(&create(&h, &client, "e", "10.00").await);
    for _ in 0..100 {
        if h.payment(&id).expect("payment")["status"] == "canceled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let p = h.payment(&id).expect("payment");
    assert_eq!(p["status"], "canceled");
    assert_eq!(
        p["cancellation_details"]["reason"],
        "expired_on_confirmation"
    );

    // Manual expiry through the control API, for long TTLs.
    let (h, client) = start(Config::default()).await;
    let id = id_of(&create(&h, &client, "e2", "10.00").await);
    let resp: Value = client
        .post(format!("{}/sandbox/yookassa/expire-pending", h.base_url()))
        .json(&json!({"older_than_ms": 0}))
        .send()
        .await
        .expect("control")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["expired"], json!([id]));
}

#[tokio::test]
async fn declines_carry_the_reason() {
    let (h, client) = start(Config::default()).await;
    let id = id_of(&create(&h, &client, "d", "10.00").await);
    let resp: Value = client
        .post(format!(
            "{}/sandbox/yookassa/payments/{id}/decline",
            h.base_url()
        ))
        .json(&json!({"reason": "insufficient_funds"}))
        .send()
        .await
        .expect("control")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["status"], "canceled");
    assert_eq!(
        resp["cancellation_details"],
        json!({"party": "payment_network", "reason": "insufficient_funds"})
    );
}

#[tokio::test]
async fn live_shop_objects_are_not_test() {
    let (h, client) = start(Config {
        shops: vec![yookassa::Shop::new(SHOP, SECRET, false)],
        ..Config::default()
    })
    .await;
    assert_eq!(create(&h, &client, "l", "10.00").await["test"], false);
}

/// The latency knob: every API answer waits, the work is done at once (a payment created by a
/// slow request is visible before its answer), and it is set over HTTP as well.
#[tokio::test]
async fn latency_holds_back_every_answer() {
    let (h, client) = start(Config {
        latency: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let started = std::time::Instant::now();
    let (status, _) = get(&client, format!("{}/me", h.api_url())).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let resp = client
        .put(format!("{}/sandbox/yookassa/latency", h.base_url()))
        .json(&json!({"delay_ms": 600}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(h.latency(), Duration::from_millis(600));
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), format!("{}/payments", h.api_url()));
        async move { post(&client, url, Some("lat-1"), &payment_body("5.00")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.payments().len(), 1, "the work is done before the answer");
    assert!(!slow.is_finished(), "the answer is held back");
    let (status, created) = slow.await.expect("task");
    assert_eq!((status, id_of(&created)), (200, id_of(&h.payments()[0])));

    h.set_latency(Duration::ZERO);
    let started = std::time::Instant::now();
    get(&client, format!("{}/me", h.api_url())).await;
    assert!(started.elapsed() < Duration::from_millis(200));
    let read: Value = client
        .get(format!("{}/sandbox/yookassa/latency", h.base_url()))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(read, json!({"delay_ms": 0}));
}

#[tokio::test]
async fn saved_methods_follow_yookassas_recurring_rules() {
    let (handle, client) = start(Config::default()).await;
    let url = format!("{}/payments", handle.api_url());
    let mut first = payment_body("199.00");
    first["save_payment_method"] = json!(true);
    let (status, created) = post(&client, url.clone(), Some("save-1"), &first).await;
    assert_eq!(status, 200, "{created}");
    let paid = handle.pay(&id_of(&created)).expect("paid");
    assert_eq!(paid["payment_method"]["saved"], true);
    let method_id = paid["payment_method"]["id"].as_str().unwrap().to_owned();

    // A charge of the saved method carries no confirmation.
    let mut with_confirmation = payment_body("199.00");
    with_confirmation["payment_method_id"] = json!(method_id);
    let (status, error) = post(&client, url.clone(), Some("charge-0"), &with_confirmation).await;
    assert_eq!(status, 400);
    assert_eq!(
        error["description"],
        "Confirmation must be null when using payment_method_id"
    );
    let charge = json!({
        "amount": {"value": "199.00", "currency": "RUB"},
        "capture": true,
        "payment_method_id": method_id,
        "description": "renewal",
    });
    let (status, charged) = post(&client, url.clone(), Some("charge-1"), &charge).await;
    assert_eq!(status, 200, "{charged}");
    assert_eq!(charged["status"], "succeeded", "decided at once");
    assert!(charged.get("confirmation").is_none());

    // Scripted decline: canceled with the issuer's reason.
    handle
        .script_method(&method_id, Some("card_expired"))
        .expect("scripted");
    let (_, declined) = post(&client, url.clone(), Some("charge-2"), &charge).await;
    assert_eq!(declined["status"], "canceled");
    assert_eq!(declined["cancellation_details"]["reason"], "card_expired");

    // An unknown method is refused.
    let mut unknown = charge.clone();
    unknown["payment_method_id"] = json!("00000000-000f-5000-9000-000000000000");
    let (status, error) = post(&client, url, Some("charge-3"), &unknown).await;
    assert_eq!(status, 400);
    assert_eq!(error["parameter"], "payment_method_id");
    handle.stop().await;
}

#[tokio::test]
async fn a_shop_without_the_right_cannot_save_methods() {
    let (handle, client) = start(Config {
        shops: vec![yookassa::Shop::default().without_saved_methods()],
        ..Config::default()
    })
    .await;
    let mut first = payment_body("199.00");
    first["save_payment_method"] = json!(true);
    let (status, error) = post(
        &client,
        format!("{}/payments", handle.api_url()),
        Some("save-1"),
        &first,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(error["description"], "Forbidden to save payment method");
    handle.stop().await;
}
