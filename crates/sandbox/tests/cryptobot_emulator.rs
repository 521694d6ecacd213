//! The Crypto Pay emulator over real HTTP on loopback: authentication, the error shape, the
//! parameter rules of createInvoice / getInvoices / transfer (§5), signed `invoice_paid`
//! updates with their delivery modes, expiry and the app balance.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use sandbox::cryptobot::{
    self, Config, DeliveryOutcome, Fault, Handle, NotificationMode, SIGNATURE_HEADER, TOKEN_HEADER,
};
use serde_json::{Value, json};

async fn spawn() -> Handle {
    cryptobot::spawn(Config::default()).await.unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// POSTs JSON params to `method` with the app token.
async fn post(api: &Handle, method: &str, params: Value) -> (StatusCode, Value) {
    let response = http()
        .post(format!("{}/{method}", api.api_url()))
        .header(TOKEN_HEADER, api.token())
        .json(&params)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn get(api: &Handle, method: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = http()
        .get(format!("{}/{method}", api.api_url()))
        .header(TOKEN_HEADER, api.token())
        .query(query)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

fn refused(code: u16, name: &str) -> Value {
    json!({"ok": false, "error": {"code": code, "name": name}})
}

async fn rub_invoice(api: &Handle, amount: &str) -> Value {
    let (status, body) = post(
        api,
        "createInvoice",
        json!({"currency_type": "fiat", "fiat": "RUB", "amount": amount,
               "accepted_assets": "USDT,TON", "payload": "pay-1", "expires_in": 3600}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], true);
    body["result"].clone()
}

fn id(invoice: &Value) -> i64 {
    invoice["invoice_id"].as_i64().unwrap()
}

/// Records every request a webhook receiver gets: (signature header, raw body).
type Seen = Arc<Mutex<Vec<(Option<String>, Vec<u8>)>>>;

async fn receiver(status: u16) -> (String, Seen, actix_web::dev::ServerHandle) {
    let seen: Seen = Arc::default();
    let data = web::Data::new(seen.clone());
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).route(
            "/hook",
            web::post().to(
                move |seen: web::Data<Seen>, req: HttpRequest, body: web::Bytes| async move {
                    let signature = req
                        .headers()
                        .get(SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    seen.lock().unwrap().push((signature, body.to_vec()));
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                        .finish()
                },
            ),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let url = format!("http://{}/hook", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, seen, handle)
}

#[tokio::test]
async fn calls_without_the_app_token_or_to_unknown_methods_are_refused() {
    let api = spawn().await;
    let response = http()
        .post(format!("{}/getMe", api.api_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        refused(401, "UNAUTHORIZED")
    );
    let response = http()
        .get(format!("{}/getMe", api.api_url()))
        .header(TOKEN_HEADER, "7777:wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = post(&api, "refundInvoice", json!({})).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            refused(405, "METHOD_NOT_FOUND")
        )
    );
    let (status, me) = get(&api, "getMe", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["result"]["app_id"], 7777);
    assert_eq!(me["result"]["payment_processing_bot_username"], "CryptoBot");
    assert!(api.requests().iter().any(|r| r.status == 401));
}

#[tokio::test]
async fn a_fiat_invoice_has_the_documented_shape() {
    let api = spawn().await;
    let invoice = rub_invoice(&api, "199.00").await;
    assert_eq!(invoice["currency_type"], "fiat");
    assert_eq!(invoice["fiat"], "RUB");
    assert_eq!(invoice["amount"], "199");
    assert_eq!(invoice["accepted_assets"], json!(["USDT", "TON"]));
    assert_eq!(invoice["status"], "active");
    assert_eq!(invoice["payload"], "pay-1");
    assert!(invoice["invoice_id"].is_i64());
    let hash = invoice["hash"].as_str().unwrap();
    assert_eq!(
        invoice["bot_invoice_url"],
        format!("https://t.me/CryptoBot?start={hash}")
    );
    assert!(invoice.get("asset").is_none());
    let created = chrono::DateTime::parse_from_rfc3339(invoice["created_at"].as_str().unwrap());
    let expires =
        chrono::DateTime::parse_from_rfc3339(invoice["expiration_date"].as_str().unwrap());
    assert_eq!((expires.unwrap() - created.unwrap()).num_seconds(), 3600);

    let (status, asset) = post(
        &api,
        "createInvoice",
        json!({"asset": "USDT", "amount": "2.5"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(asset["result"]["currency_type"], "crypto");
    assert_eq!(asset["result"]["asset"], "USDT");
    assert!(asset["result"].get("expiration_date").is_none());
}

#[tokio::test]
async fn create_invoice_refuses_what_the_api_refuses() {
    let api = spawn().await;
    let long = "x".repeat(4097);
    let cases = [
        (json!({"asset": "DOGE", "amount": "1"}), "ASSET_INVALID"),
        (json!({"amount": "1"}), "ASSET_INVALID"),
        (json!({"asset": "USDT", "amount": 1.5}), "AMOUNT_INVALID"),
        (json!({"asset": "USDT", "amount": "0"}), "AMOUNT_INVALID"),
        (json!({"asset": "USDT", "amount": "-1"}), "AMOUNT_INVALID"),
        (json!({"asset": "USDT", "amount": "1e2"}), "AMOUNT_INVALID"),
        (
            json!({"asset": "USDT", "amount": "0.0000001"}),
            "AMOUNT_INVALID",
        ),
        (
            json!({"currency_type": "fiat", "fiat": "RUB", "amount": "1.001"}),
            "AMOUNT_INVALID",
        ),
        (
            json!({"currency_type": "fiat", "fiat": "XYZ", "amount": "1"}),
            "FIAT_INVALID",
        ),
        (
            json!({"currency_type": "fiat", "fiat": "RUB", "amount": "1", "accepted_assets": "USDT,DOGE"}),
            "ACCEPTED_ASSETS_INVALID",
        ),
        (
            json!({"currency_type": "stars", "amount": "1"}),
            "CURRENCY_TYPE_INVALID",
        ),
        (
            json!({"asset": "TON", "amount": "1", "expires_in": 0}),
            "EXPIRES_IN_INVALID",
        ),
        (
            json!({"asset": "TON", "amount": "1", "expires_in": 2_678_401}),
            "EXPIRES_IN_INVALID",
        ),
        (
            json!({"asset": "TON", "amount": "1", "payload": long}),
            "PAYLOAD_INVALID",
        ),
        (
            json!({"asset": "TON", "amount": "1", "description": "d".repeat(1025)}),
            "DESCRIPTION_INVALID",
        ),
        (
            json!({"asset": "TON", "amount": "1", "paid_btn_name": "openBot"}),
            "PAID_BTN_URL_INVALID",
        ),
        (
            json!({"asset": "TON", "amount": "1", "paid_btn_name": "open", "paid_btn_url": "https://t.me/x"}),
            "PAID_BTN_NAME_INVALID",
        ),
    ];
    for (params, name) in cases {
        let (status, body) = post(&api, "createInvoice", params.clone()).await;
        assert_eq!(
            (status, body),
            (StatusCode::BAD_REQUEST, refused(400, name)),
            "{params}"
        );
    }
    assert!(api.invoices().is_empty(), "nothing refused was created");
    let response = http()
        .post(format!("{}/createInvoice", api.api_url()))
        .header(TOKEN_HEADER, api.token())
        .header("content-type", "application/json")
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        refused(400, "PARAMS_INVALID")
    );
}

#[tokio::test]
async fn get_invoices_filters_by_ids_and_status_and_checks_its_parameters() {
    let api = spawn().await;
    let a = rub_invoice(&api, "100").await;
    let b = rub_invoice(&api, "200").await;
    let _c = rub_invoice(&api, "300").await;
    api.pay(id(&b), None).unwrap();
    let ids = format!("{},{}", id(&a), id(&b));
    let (status, body) = get(&api, "getInvoices", &[("invoice_ids", &ids)]).await;
    assert_eq!(status, StatusCode::OK);
    let mut found: Vec<i64> = body["result"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect();
    found.sort_unstable();
    assert_eq!(found, vec![id(&a), id(&b)]);
    let (_, paid) = post(&api, "getInvoices", json!({"status": "paid"})).await;
    let paid = paid["result"]["items"].as_array().unwrap().clone();
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0]["invoice_id"], b["invoice_id"]);
    assert_eq!(paid[0]["status"], "paid");
    assert_eq!(paid[0]["paid_asset"], "USDT");
    for (params, name) in [
        (json!({"status": "expired"}), "STATUS_INVALID"),
        (json!({"count": 0}), "COUNT_INVALID"),
        (json!({"count": 1001}), "COUNT_INVALID"),
        (json!({"invoice_ids": "1,x"}), "INVOICE_IDS_INVALID"),
        (json!({"asset": "DOGE"}), "ASSET_INVALID"),
    ] {
        let (status, body) = post(&api, "getInvoices", params.clone()).await;
        assert_eq!(
            (status, body),
            (StatusCode::BAD_REQUEST, refused(400, name)),
            "{params}"
        );
    }
}

#[tokio::test]
async fn a_paid_invoice_is_announced_with_the_documented_signature() {
    let (url, seen, server) = receiver(200).await;
    let api = cryptobot::spawn(Config {
        webhook_url: Some(url),
        ..Config::default()
    })
    .await
    .unwrap();
    let invoice = rub_invoice(&api, "180").await;
    let paid = api.pay(id(&invoice), Some("TON")).unwrap();
    // 180 RUB at 250 RUB/TON is 0.72 TON; 3 % of it is the fee.
    assert_eq!(paid["paid_asset"], "TON");
    assert_eq!(paid["paid_amount"], "0.72");
    assert_eq!(paid["paid_fiat_rate"], "250");
    assert_eq!(paid["fee_amount"], "0.0216");
    assert_eq!(api.balance("TON"), "0.6984".parse::<Decimal>().unwrap());
    let deliveries = api.wait_for_deliveries(1, Duration::from_secs(5)).await;
    assert_eq!(
        deliveries[0].outcome,
        DeliveryOutcome::Delivered { status: 200 }
    );
    let (signature, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(
        signature.as_deref(),
        Some(cryptobot::sign(api.token(), &body).as_str())
    );
    assert_ne!(
        signature.as_deref(),
        Some(cryptobot::sign("7777:other-token", &body).as_str())
    );
    let update: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(update["update_type"], "invoice_paid");
    assert!(update["update_id"].is_i64());
    assert!(update["request_date"].is_string());
    assert_eq!(update["payload"], paid);
    assert!(api.pay(id(&invoice), None).is_err(), "paid once only");
    server.stop(false).await;
}

#[tokio::test]
async fn updates_can_be_duplicated_delayed_dropped_and_are_redelivered_after_a_refusal() {
    let (url, seen, server) = receiver(200).await;
    let api = cryptobot::spawn(Config {
        webhook_url: Some(url.clone()),
        ..Config::default()
    })
    .await
    .unwrap();
    api.push_notification_mode(NotificationMode::Duplicate, 1);
    api.push_notification_mode(NotificationMode::Dropped, 1);
    api.push_notification_mode(NotificationMode::Late { delay_ms: 300 }, 1);
    let one = rub_invoice(&api, "100").await;
    let two = rub_invoice(&api, "100").await;
    let three = rub_invoice(&api, "100").await;
    api.pay(id(&one), None).unwrap();
    api.wait_for_deliveries(2, Duration::from_secs(5)).await;
    api.pay(id(&two), None).unwrap();
    api.pay(id(&three), None).unwrap();
    let deliveries = api.wait_for_deliveries(4, Duration::from_secs(5)).await;
    let bodies: Vec<Vec<u8>> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
    assert_eq!(bodies.len(), 3, "the duplicate pair and the late one");
    assert_eq!(bodies[0], bodies[1], "a duplicate is the same update");
    assert!(
        deliveries
            .iter()
            .any(|d| d.invoice_id == id(&two) && d.outcome == DeliveryOutcome::Dropped)
    );
    let late: Value = serde_json::from_slice(&bodies[2]).unwrap();
    assert_eq!(late["payload"]["invoice_id"], three["invoice_id"]);
    server.stop(false).await;

    let (refusing, refused_seen, refusing_server) = receiver(500).await;
    api.set_webhook_url(Some(refusing));
    let four = rub_invoice(&api, "100").await;
    api.pay(id(&four), None).unwrap();
    let deliveries = api.wait_for_deliveries(6, Duration::from_secs(5)).await;
    let attempts: Vec<_> = deliveries
        .iter()
        .filter(|d| d.invoice_id == id(&four))
        .collect();
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert_eq!(attempts[1].attempt, 2);
    assert_eq!(attempts[0].body, attempts[1].body);
    assert!(refused_seen.lock().unwrap().len() >= 2);
    refusing_server.stop(false).await;
}

#[tokio::test]
async fn expired_invoices_cannot_be_paid() {
    let api = cryptobot::spawn(Config {
        sweep_interval: Duration::from_millis(20),
        ..Config::default()
    })
    .await
    .unwrap();
    let invoice = rub_invoice(&api, "100").await;
    let expired = api.expire(id(&invoice)).unwrap();
    assert_eq!(expired["status"], "expired");
    assert!(matches!(
        api.pay(id(&invoice), None),
        Err(cryptobot::ControlError::NotActive { .. })
    ));
    let (_, soon) = post(
        &api,
        "createInvoice",
        json!({"asset": "USDT", "amount": "1", "expires_in": 1}),
    )
    .await;
    let soon = id(&soon["result"]);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(api.invoice(soon).unwrap()["status"], "expired");
    let (_, active) = post(&api, "getInvoices", json!({"status": "active"})).await;
    assert_eq!(active["result"]["items"], json!([]));
}

#[tokio::test]
async fn transfers_need_the_balance_and_are_idempotent_by_spend_id() {
    let api = spawn().await;
    let params = json!({"user_id": 4242, "asset": "USDT", "amount": "2.5", "spend_id": "refund-1"});
    let (status, body) = post(&api, "transfer", params.clone()).await;
    assert_eq!(
        (status, body),
        (StatusCode::BAD_REQUEST, refused(400, "INSUFFICIENT_FUNDS"))
    );
    api.set_balance("USDT", "4".parse().unwrap()).unwrap();
    let (status, first) = post(&api, "transfer", params.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["result"]["status"], "completed");
    assert_eq!(first["result"]["amount"], "2.5");
    assert_eq!(first["result"]["user_id"], "4242");
    let (_, again) = post(&api, "transfer", params).await;
    assert_eq!(again["result"], first["result"], "the same transfer");
    assert_eq!(api.balance("USDT"), "1.5".parse::<Decimal>().unwrap());
    assert_eq!(api.transfers().len(), 1);
    let (_, balance) = get(&api, "getBalance", &[]).await;
    let usdt = balance["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["currency_code"] == "USDT")
        .unwrap()
        .clone();
    assert_eq!(
        usdt,
        json!({"currency_code": "USDT", "available": "1.5", "onhold": "0"})
    );
    for (params, name) in [
        (
            json!({"user_id": 1, "asset": "USDT", "amount": "1", "spend_id": "s".repeat(65)}),
            "SPEND_ID_INVALID",
        ),
        (
            json!({"user_id": 1, "asset": "USDT", "amount": "1"}),
            "SPEND_ID_INVALID",
        ),
        (
            json!({"user_id": 0, "asset": "USDT", "amount": "1", "spend_id": "a"}),
            "USER_ID_INVALID",
        ),
        (
            json!({"user_id": 1, "asset": "RUB", "amount": "1", "spend_id": "a"}),
            "ASSET_INVALID",
        ),
        (
            json!({"user_id": 1, "asset": "USDT", "amount": "1.0000001", "spend_id": "a"}),
            "AMOUNT_INVALID",
        ),
    ] {
        let (status, body) = post(&api, "transfer", params.clone()).await;
        assert_eq!(
            (status, body),
            (StatusCode::BAD_REQUEST, refused(400, name)),
            "{params}"
        );
    }
}

#[tokio::test]
async fn scripted_faults_answer_500_before_or_after_the_work() {
    let api = spawn().await;
    api.push_fault(Fault::InternalError, 1);
    api.push_fault(Fault::InternalErrorAfterProcessing, 1);
    let params = json!({"asset": "USDT", "amount": "1"});
    let (status, _) = post(&api, "createInvoice", params.clone()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(api.invoices().is_empty());
    let (status, _) = post(&api, "createInvoice", params.clone()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(api.invoices().len(), 1, "done, though the answer was lost");
    let (status, _) = post(&api, "createInvoice", params).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_control_api_pays_and_sets_the_balance_over_http() {
    let api = spawn().await;
    let invoice = rub_invoice(&api, "90").await;
    let control = format!("{}/sandbox/cryptobot", api.base_url());
    let response = http()
        .post(format!("{control}/invoices/{}/pay", id(&invoice)))
        .json(&json!({"asset": "BTC"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CONFLICT,
        "BTC is not accepted"
    );
    let response = http()
        .post(format!("{control}/invoices/{}/pay", id(&invoice)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let paid: Value = response.json().await.unwrap();
    assert_eq!(paid["paid_amount"], "1");
    let response = http()
        .put(format!("{control}/balance"))
        .json(&json!({"asset": "USDT", "available": "10"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(api.balance("USDT"), Decimal::from(10));
    let response = http()
        .post(format!("{control}/invoices/999999/expire"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
