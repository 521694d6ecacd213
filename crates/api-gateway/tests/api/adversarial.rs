//! The adversarial battery: every hostile request the public endpoints can meet — from outside
//! the allow-list, with spoofed `X-Forwarded-For`, forged, replayed and expired crypto
//! signatures, oversized, truncated, non-UTF-8 and deeply nested bodies, wrong content types,
//! unknown routes and methods, missing and wrong tokens — gets a 4xx with a JSON
//! `{"error", "message"}` (never a 5xx, never a dropped connection), and the database is the
//! same afterwards, table by table, row by row.
//!
//! The one thing the gateway does record is a notification from an allowed source: a body that
//! claims success for a payment the provider still has pending is stored in the inbox (that is
//! the record of the refusal), and the worker, which re-fetches the status, leaves the payment
//! pending.

use std::collections::BTreeMap;
use std::time::Duration;

use domain::entities::provider_notifications;
use payment_core::providers::crypto::signature;
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Statement};
use service_kit::Shutdown;
use service_kit::settings::Source;

use crate::helpers::{
    ADMIN_TOKEN, CREATE_BODY, CRYPTO_SECRET, SERVICE_TOKEN, TestApp, connect_beside,
    created_payment, payment_notification, random_provider_id, spawn_app,
};

/// YooKassa's own network in these tests; the test client (127.0.0.1) is a trusted proxy.
const YOOKASSA_NET: &str = "185.71.76.0/27";
const YOOKASSA_HOST: &str = "185.71.76.5";

/// Every table's row count and a digest of its rows, so "nothing changed" is checked on
/// content, not only on counts.
async fn snapshot(app: &TestApp) -> BTreeMap<String, (i64, String)> {
    let conn = &app.db.conn;
    let tables = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT table_name::text AS name FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        ))
        .await
        .unwrap();
    let mut snapshot = BTreeMap::new();
    for row in tables {
        let name: String = row.try_get("", "name").unwrap();
        let digest = conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                format!(
                    "SELECT count(*)::bigint AS n, \
                     coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') AS h \
                     FROM \"{name}\" t"
                ),
            ))
            .await
            .unwrap()
            .unwrap();
        snapshot.insert(
            name,
            (
                digest.try_get("", "n").unwrap(),
                digest.try_get("", "h").unwrap(),
            ),
        );
    }
    snapshot
}

/// Waits until the outbox relay has published every row, so the snapshot is stable.
async fn outbox_settled(app: &TestApp) {
    for _ in 0..200 {
        let pending = app
            .db
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*)::bigint AS n FROM outbox WHERE published_at IS NULL",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap();
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox relay did not publish within 10 s");
}

/// One hostile request and the refusal it must get.
struct Probe {
    name: String,
    method: Method,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    status: u16,
    /// The `error` code of the JSON answer.
    code: &'static str,
}

impl Probe {
    fn new(name: impl Into<String>, method: Method, path: &str) -> Self {
        Self {
            name: name.into(),
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            status: 0,
            code: "",
        }
    }

    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    fn json(self) -> Self {
        self.header("Content-Type", "application/json")
    }

    fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        self
    }

    fn signed(self, offset_secs: i64) -> Self {
        let t = chrono::Utc::now().timestamp() + offset_secs;
        let header = signature::sign(CRYPTO_SECRET.as_bytes(), t, &self.body).unwrap();
        self.header("X-Signature", header)
    }

    fn expect(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }
}

/// Sends every probe; each must get its status with a JSON error body and a message.
/// Returns how many were sent.
async fn run(app: &TestApp, probes: Vec<Probe>) -> usize {
    let count = probes.len();
    let mut failures = Vec::new();
    for probe in probes {
        let mut request = app
            .http
            .request(probe.method.clone(), app.url(&probe.path))
            .body(probe.body.clone());
        for (name, value) in &probe.headers {
            request = request.header(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                failures.push(format!("{}: no answer: {error}", probe.name));
                continue;
            }
        };
        let status = response.status().as_u16();
        if status == 405 && !response.headers().contains_key("allow") {
            failures.push(format!("{}: 405 without Allow", probe.name));
        }
        let text = response.text().await.unwrap_or_default();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let message = body["message"].as_str().unwrap_or_default();
        if status != probe.status
            || !(400..500).contains(&status)
            || body["error"] != probe.code
            || message.is_empty()
        {
            failures.push(format!(
                "{} {} {}: expected {} {}, got {status} {text}",
                probe.name, probe.method, probe.path, probe.status, probe.code
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} probes answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    count
}

fn deeply_nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn nested_notification(depth: usize) -> String {
    format!(
        r#"{{"type":"notification","event":"payment.succeeded","object":{{"id":"x","status":"succeeded","metadata":{}}}}}"#,
        deeply_nested(depth)
    )
}

/// Bodies no parser may accept, each with the code it earns.
fn broken_bodies(valid: &str) -> Vec<(String, Vec<u8>)> {
    let mut non_utf8 = valid.as_bytes().to_vec();
    let at = non_utf8.len() / 2;
    non_utf8.splice(at..at, [0xff, 0xfe, 0xc3]);
    vec![
        ("empty".into(), Vec::new()),
        (
            "truncated".into(),
            valid.as_bytes()[..valid.len() / 2].to_vec(),
        ),
        (
            "one byte short".into(),
            valid.as_bytes()[..valid.len() - 1].to_vec(),
        ),
        ("non-UTF-8".into(), non_utf8),
        (
            "latin-1 in a string".into(),
            b"{\"event\":\"caf\xe9\"}".to_vec(),
        ),
        ("NUL bytes".into(), b"\0\0\0\0".to_vec()),
        ("nested 10k deep".into(), deeply_nested(10_000).into_bytes()),
        (
            "nested object 200 deep".into(),
            nested_notification(200).into_bytes(),
        ),
        ("JSON null".into(), b"null".to_vec()),
        ("JSON array".into(), format!("[{valid}]").into_bytes()),
        ("JSON number".into(), b"1e999999".to_vec()),
        (
            "two documents".into(),
            format!("{valid}{valid}").into_bytes(),
        ),
        (
            "UTF-16".into(),
            valid.encode_utf16().flat_map(u16::to_le_bytes).collect(),
        ),
        (
            "form".into(),
            b"type=notification&event=payment.succeeded".to_vec(),
        ),
    ]
}

fn unknown_routes_and_methods() -> Vec<Probe> {
    let mut probes = Vec::new();
    for path in [
        "/",
        "/admin",
        "/.env",
        "/webhook/payment/stripe",
        "/webhook/payment/yookassa/extra",
        "/webhook/payment/",
        "/api/payments/00000000-0000-0000-0000-000000000000/refund/extra",
        "/api/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/payments%00",
        &format!("/{}", "a".repeat(4000)),
    ] {
        probes.push(Probe::new("unknown route", Method::GET, path).expect(404, "not_found"));
        probes.push(
            Probe::new("unknown route", Method::POST, path)
                .json()
                .body("{}")
                .expect(404, "not_found"),
        );
    }
    for (method, path) in [
        (Method::GET, "/webhook/payment/yookassa"),
        (Method::PUT, "/webhook/payment/yookassa"),
        (Method::DELETE, "/webhook/payment/yookassa"),
        (Method::PATCH, "/webhook/payment/crypto"),
        (Method::GET, "/webhook/payment/crypto"),
        (Method::OPTIONS, "/webhook/payment/crypto"),
        (Method::DELETE, "/api/payments"),
        (Method::GET, "/api/payments"),
        (
            Method::PUT,
            "/api/payments/00000000-0000-0000-0000-000000000000",
        ),
        (
            Method::DELETE,
            "/api/payments/00000000-0000-0000-0000-000000000000",
        ),
        (
            Method::GET,
            "/api/payments/00000000-0000-0000-0000-000000000000/refund",
        ),
        (Method::POST, "/api/payment/providers"),
        (Method::TRACE, "/api/payments"),
        (
            Method::from_bytes(b"BREW").unwrap(),
            "/webhook/payment/yookassa",
        ),
    ] {
        probes.push(Probe::new("wrong method", method, path).expect(405, "method_not_allowed"));
    }
    // Health and metrics live on the ops port only: here they are unknown routes.
    for (method, path) in [
        (Method::POST, "/health/ready"),
        (Method::GET, "/health/ready"),
        (Method::GET, "/health/live"),
        (Method::GET, "/metrics"),
    ] {
        probes.push(
            Probe::new("ops route on the public port", method, path).expect(404, "not_found"),
        );
    }
    probes
}

#[tokio::test]
async fn hostile_webhooks_are_refused_and_change_nothing() {
    let app = spawn_app(&[
        ("YOOKASSA_ALLOWED_IPS", YOOKASSA_NET),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    // Something to attack: a pending payment and one notice already in the inbox.
    let payment = created_payment(&app, "adv-1").await;
    let provider_payment_id = payment["provider_payment_id"].as_str().unwrap().to_owned();
    let valid = payment_notification("payment.succeeded", &provider_payment_id, "succeeded");
    let crypto_notice = r#"{"event":"transfer.detected","tx_id":"adv-tx-1","network":"TRC20"}"#;
    let captured = Probe::new("first", Method::POST, "/webhook/payment/crypto")
        .json()
        .body(crypto_notice)
        .signed(0);
    let mut first = app
        .http
        .post(app.url("/webhook/payment/crypto"))
        .body(crypto_notice);
    for (name, value) in &captured.headers {
        first = first.header(name.as_str(), value.as_slice());
    }
    assert_eq!(first.send().await.unwrap().status(), 200);
    outbox_settled(&app).await;
    let before = snapshot(&app).await;

    let yookassa = "/webhook/payment/yookassa";
    let crypto = "/webhook/payment/crypto";
    let mut probes = Vec::new();

    // --- where the request comes from ---------------------------------------------------
    let from = |name: &str| Probe::new(name, Method::POST, yookassa).json().body(&valid);
    probes.push(
        from("no X-Forwarded-For: the proxy itself is not YooKassa").expect(403, "forbidden"),
    );
    for (hops, status, code) in [
        ("185.71.76.5, 203.0.113.9", 403, "forbidden"),
        ("185.71.76.5,203.0.113.9, 127.0.0.1", 403, "forbidden"),
        ("8.8.8.8", 403, "forbidden"),
        ("185.71.77.5", 403, "forbidden"),
        ("::ffff:203.0.113.9", 403, "forbidden"),
        ("[2001:db8::1]:443", 403, "forbidden"),
        ("not-an-address", 400, "bad_request"),
        ("185.71.76.5, <script>", 400, "bad_request"),
        ("999.1.1.1", 400, "bad_request"),
        ("185.71.76.5:99999", 400, "bad_request"),
    ] {
        probes.push(
            from(&format!("X-Forwarded-For {hops}"))
                .header("X-Forwarded-For", hops)
                .expect(status, code),
        );
    }
    probes.push(
        from("two X-Forwarded-For headers, attacker last")
            .header("X-Forwarded-For", YOOKASSA_HOST)
            .header("X-Forwarded-For", "203.0.113.9")
            .expect(403, "forbidden"),
    );
    probes.push(
        from("X-Real-IP is not believed over X-Forwarded-For")
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Real-IP", YOOKASSA_HOST)
            .expect(403, "forbidden"),
    );
    for header in [
        "Forwarded",
        "X-Client-IP",
        "True-Client-IP",
        "CF-Connecting-IP",
    ] {
        let value = if header == "Forwarded" {
            format!("for={YOOKASSA_HOST}")
        } else {
            YOOKASSA_HOST.to_owned()
        };
        probes.push(
            from(&format!("{header} is not a source of truth"))
                .header(header, value)
                .expect(403, "forbidden"),
        );
    }
    probes.push(
        from("X-Real-IP is never read, even malformed")
            .header("X-Real-IP", "localhost")
            .expect(403, "forbidden"),
    );

    // --- what the allowed source sends ------------------------------------------------------
    let allowed = |name: &str, body: &[u8]| {
        Probe::new(name, Method::POST, yookassa)
            .header("X-Forwarded-For", YOOKASSA_HOST)
            .body(body)
    };
    for (name, body) in broken_bodies(&valid) {
        probes.push(allowed(&name, &body).json().expect(400, "invalid_json"));
    }
    for (name, body) in [
        (
            "not a notification",
            r#"{"type":"payment","event":"payment.succeeded","object":{}}"#,
        ),
        (
            "no object id",
            r#"{"type":"notification","event":"payment.succeeded","object":{"status":"succeeded"}}"#,
        ),
        (
            "object is a string",
            r#"{"type":"notification","event":"payment.succeeded","object":"pay"}"#,
        ),
        (
            "event is a number",
            r#"{"type":"notification","event":7,"object":{"id":"x"}}"#,
        ),
    ] {
        probes.push(
            allowed(name, body.as_bytes())
                .json()
                .expect(400, "invalid_json"),
        );
    }
    let huge = format!(
        r#"{{"type":"notification","pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    probes.push(
        allowed("oversized", huge.as_bytes())
            .json()
            .expect(413, "payload_too_large"),
    );
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
    ] {
        probes.push(
            allowed(&format!("Content-Type {content_type}"), valid.as_bytes())
                .header("Content-Type", content_type)
                .expect(415, "unsupported_media_type"),
        );
    }

    // --- crypto signatures ------------------------------------------------------------------
    let notice = |name: &str, body: &str| Probe::new(name, Method::POST, crypto).json().body(body);
    let fresh = r#"{"event":"transfer.detected","tx_id":"adv-tx-2"}"#;
    probes.push(notice("unsigned", fresh).expect(401, "bad_signature"));
    for offset in [-301, 360, -86_400, 10 * 365 * 86_400] {
        probes.push(
            notice(&format!("timestamp {offset:+} s"), fresh)
                .signed(offset)
                .expect(401, "bad_signature"),
        );
    }
    let now = chrono::Utc::now().timestamp();
    let forged = signature::sign(b"guessed-secret", now, fresh.as_bytes()).unwrap();
    probes.push(
        notice("forged with another key", fresh)
            .header("X-Signature", &forged)
            .expect(401, "bad_signature"),
    );
    let other_body = signature::sign(CRYPTO_SECRET.as_bytes(), now, b"{}").unwrap();
    probes.push(
        notice("signature of another body", fresh)
            .header("X-Signature", &other_body)
            .expect(401, "bad_signature"),
    );
    // The captured request's signature with its timestamp moved forward: the timestamp is signed.
    let captured_sig = String::from_utf8(captured.headers[1].1.clone()).unwrap();
    let v1 = captured_sig.split_once("v1=").unwrap().1;
    probes.push(
        notice("replayed signature with a fresh timestamp", crypto_notice)
            .header("X-Signature", format!("t={},v1={v1}", now + 1))
            .expect(401, "bad_signature"),
    );
    probes.push(
        notice("replayed signature on another body", fresh)
            .header("X-Signature", &captured_sig)
            .expect(401, "bad_signature"),
    );
    for header in [
        "",
        "t=,v1=",
        "v1=00",
        &format!("t={now}"),
        &format!("t={now},v1=zz"),
        &format!("t={now},t={now},v1={v1}"),
        "t=99999999999999999999999,v1=00",
        "t=-9223372036854775808,v1=00",
        &format!("t={now},v1={}", &v1[..10]),
        &format!("t={now},v1={}", "0".repeat(10_000)),
        &format!("t={now};v1={v1}"),
        "garbage",
    ] {
        probes.push(
            notice(&format!("X-Signature {:.40}", header), fresh)
                .header("X-Signature", header)
                .expect(401, "bad_signature"),
        );
    }
    probes.push(
        notice("non-ASCII X-Signature", fresh)
            .header("X-Signature", b"t=1,v1=\xff\xfe")
            .expect(401, "bad_signature"),
    );
    // Correctly signed, but not something we take.
    for (name, body) in broken_bodies(fresh) {
        if body.is_empty() {
            continue; // an empty body is tested below with a signature over nothing
        }
        probes.push(
            Probe::new(name, Method::POST, crypto)
                .json()
                .body(body)
                .signed(0)
                .expect(400, "invalid_json"),
        );
    }
    for (name, body) in [
        ("signed empty body", String::new()),
        (
            "unknown field",
            r#"{"event":"transfer.detected","amount":"1000000"}"#.into(),
        ),
        (
            "status claim",
            r#"{"event":"transfer.detected","status":"paid"}"#.into(),
        ),
        ("empty event", r#"{"event":"  "}"#.into()),
        ("long event", format!(r#"{{"event":"{}"}}"#, "e".repeat(65))),
        (
            "payment id not a uuid",
            r#"{"event":"x","payment_id":"1 OR 1=1"}"#.into(),
        ),
    ] {
        probes.push(
            Probe::new(name, Method::POST, crypto)
                .json()
                .body(body)
                .signed(0)
                .expect(400, "invalid_json"),
        );
    }
    let huge = format!(r#"{{"event":"x","tx_id":"{}"}}"#, "a".repeat(70_000));
    probes.push(
        Probe::new("signed oversized", Method::POST, crypto)
            .json()
            .body(&huge)
            .signed(0)
            .expect(413, "payload_too_large"),
    );
    probes.push(
        Probe::new("signed text/plain", Method::POST, crypto)
            .header("Content-Type", "text/plain")
            .body(fresh)
            .signed(0)
            .expect(415, "unsupported_media_type"),
    );

    probes.extend(unknown_routes_and_methods());
    let sent = run(&app, probes).await;

    // The captured request replayed as is: the same notice, acknowledged, nothing new.
    let mut replay = app.http.post(app.url(crypto)).body(crypto_notice);
    for (name, value) in &captured.headers {
        replay = replay.header(name.as_str(), value.as_slice());
    }
    let response = replay.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let ack: serde_json::Value = response.json().await.unwrap();
    assert_eq!(ack["duplicate"], true, "a replay is a duplicate: {ack}");

    let after = snapshot(&app).await;
    assert_eq!(before, after, "the database changed");
    let payments = app.payments().await;
    assert_eq!(payments[0].status.to_string(), "pending");
    println!(
        "adversarial webhooks: {} hostile requests refused, 1 replay deduplicated",
        sent
    );
}

#[tokio::test]
async fn hostile_api_calls_are_refused_and_change_nothing() {
    let app = spawn_app(&[]).await;
    let payment = created_payment(&app, "adv-api-1").await;
    let id = payment["payment_id"].as_str().unwrap().to_owned();
    outbox_settled(&app).await;
    let before = snapshot(&app).await;

    let create = |name: &str| Probe::new(name, Method::POST, "/api/payments");
    let authed = |name: &str| {
        create(name)
            .header("Authorization", format!("Bearer {SERVICE_TOKEN}"))
            .header("Idempotency-Key", format!("adv-{}", random_provider_id()))
    };
    let refund = |name: &str, token: &str| {
        Probe::new(name, Method::POST, &format!("/api/payments/{id}/refund"))
            .json()
            .header("Authorization", format!("Bearer {token}"))
            .header("Idempotency-Key", format!("adv-{}", random_provider_id()))
            .body("{}")
    };
    let mut probes = vec![
        create("no token")
            .json()
            .body(CREATE_BODY)
            .expect(401, "unauthorized"),
        create("wrong token")
            .json()
            .header("Authorization", "Bearer guess")
            .body(CREATE_BODY)
            .expect(401, "unauthorized"),
        create("token without scheme")
            .json()
            .header("Authorization", SERVICE_TOKEN)
            .body(CREATE_BODY)
            .expect(401, "unauthorized"),
        create("basic auth")
            .json()
            .header("Authorization", "Basic c3ZjOnRva2Vu")
            .body(CREATE_BODY)
            .expect(401, "unauthorized"),
        create("empty bearer")
            .json()
            .header("Authorization", "Bearer ")
            .body(CREATE_BODY)
            .expect(401, "unauthorized"),
        create("token prefix")
            .json()
            .header("Authorization", format!("Bearer {}", &SERVICE_TOKEN[..5]))
            .body(CREATE_BODY)
            .expect(401, "unauthorized"),
        refund("refund with the service token", SERVICE_TOKEN).expect(401, "unauthorized"),
        Probe::new(
            "read without a token",
            Method::GET,
            &format!("/api/payments/{id}"),
        )
        .expect(401, "unauthorized"),
    ];
    for (name, body) in broken_bodies(CREATE_BODY) {
        probes.push(authed(&name).json().body(body).expect(400, "invalid_json"));
    }
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        probes.push(
            authed(content_type)
                .header("Content-Type", content_type)
                .body(CREATE_BODY)
                .expect(415, "unsupported_media_type"),
        );
    }
    probes.push(
        authed("no content type")
            .body(CREATE_BODY)
            .expect(415, "unsupported_media_type"),
    );
    let huge = format!(r#"{{"telegram_id":1,"username":"{}"}}"#, "u".repeat(70_000));
    probes.push(
        authed("oversized")
            .json()
            .body(huge)
            .expect(413, "payload_too_large"),
    );
    probes.push(
        authed("unknown field")
            .json()
            .body(r#"{"telegram_id":1,"tariff_code":"month_1","provider":"yookassa","status":"succeeded"}"#)
            .expect(400, "invalid_json"),
    );
    probes.push(
        authed("amount override")
            .json()
            .body(r#"{"telegram_id":1,"tariff_code":"month_1","provider":"yookassa","amount":1}"#)
            .expect(400, "invalid_json"),
    );
    probes.push(
        create("no idempotency key")
            .json()
            .header("Authorization", format!("Bearer {SERVICE_TOKEN}"))
            .body(CREATE_BODY)
            .expect(400, "bad_request"),
    );
    probes.push(
        Probe::new("id not a uuid", Method::GET, "/api/payments/1%20OR%201=1")
            .header("Authorization", format!("Bearer {SERVICE_TOKEN}"))
            .expect(404, "not_found"),
    );
    probes.push(
        Probe::new(
            "unknown payment",
            Method::GET,
            &format!("/api/payments/{}", random_provider_id()),
        )
        .header("Authorization", format!("Bearer {SERVICE_TOKEN}"))
        .expect(404, "not_found"),
    );
    probes.push(refund("refund of a pending payment", ADMIN_TOKEN).expect(409, "conflict"));
    probes.extend(unknown_routes_and_methods());
    let sent = run(&app, probes).await;

    let after = snapshot(&app).await;
    assert_eq!(before, after, "the database changed");
    println!("adversarial API calls: {sent} hostile requests refused");
}

/// A body from YooKassa's network claiming `succeeded` for a payment YooKassa still has
/// pending: the gateway records it (the inbox row is the record), the worker re-fetches the
/// status and leaves the payment pending; the row's outcome says so.
#[tokio::test]
async fn success_claims_for_pending_payments_change_only_the_inbox() {
    let app = spawn_app(&[]).await;
    let worker_settings = payment_worker::ServiceSettings::load(&Source::map([
        ("WORKER_BIND", "127.0.0.1:0"),
        ("YOOKASSA_SHOP_ID", "100500"),
        ("YOOKASSA_SECRET_KEY", "test_sandbox_secret"),
        ("YOOKASSA_TEST_MODE", "true"),
        ("YOOKASSA_API_URL", app.yookassa.api_url().as_str()),
        ("RECONCILE_ENABLED", "off"),
    ]))
    .unwrap();
    let infra = connect_beside(&app, "adversarial-worker").await;
    let shutdown = Shutdown::new();
    let worker = payment_worker::start(&worker_settings, &infra, shutdown.clone()).unwrap();

    let payment = created_payment(&app, "adv-claim-1").await;
    let provider_payment_id = payment["provider_payment_id"].as_str().unwrap().to_owned();
    let payments_before = app.payments().await;
    for (event, status) in [
        ("payment.succeeded", "succeeded"),
        ("payment.waiting_for_capture", "waiting_for_capture"),
    ] {
        let body = payment_notification(event, &provider_payment_id, status);
        assert_eq!(app.post_yookassa(&body, &[]).await.status(), 200);
    }
    // Both notices processed by the worker.
    let mut rows = Vec::new();
    for _ in 0..400 {
        rows = provider_notifications::Entity::find()
            .all(&app.db.conn)
            .await
            .unwrap();
        if rows.len() == 2 && rows.iter().all(|r| r.processed_at.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rows.iter().all(|r| r.processed_at.is_some()),
        "the worker processed both notices: {rows:?}"
    );
    let payments_after = app.payments().await;
    assert_eq!(payments_after.len(), 1);
    assert_eq!(payments_after[0].status.to_string(), "pending");
    assert_eq!(payments_after[0].completed_at, None);
    assert_eq!(payments_before[0].updated_at, payments_after[0].updated_at);
    for row in &rows {
        assert_eq!(
            row.payment_id.map(|p| p.to_string()),
            payment["payment_id"].as_str().map(str::to_owned)
        );
        assert!(row.outcome.is_some(), "{row:?}");
    }
    shutdown.cancel();
    worker.task.await.unwrap().unwrap();
}

/// Sends raw bytes (then closes the writing half) and reads the whole answer: for requests no
/// HTTP client library would send.
async fn raw(app: &TestApp, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // The server may answer and close before reading everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// What only a hand-written request can do: lie about the length, break the chunking, send
/// oversized headers or a path that is not UTF-8.
#[tokio::test]
async fn malformed_http_is_refused_and_changes_nothing() {
    let app = spawn_app(&[]).await;
    created_payment(&app, "adv-raw-1").await;
    outbox_settled(&app).await;
    let before = snapshot(&app).await;
    let head = |path: &str, extra: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {SERVICE_TOKEN}\r\nIdempotency-Key: raw-1\r\n{extra}\r\n"
        )
    };
    let valid = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        (
            "body shorter than Content-Length",
            format!(
                "{}{}",
                head("/webhook/payment/yookassa", &format!("Content-Length: {}\r\n", valid.len() + 50)),
                valid
            )
            .into_bytes(),
            400,
            Some("bad_request"),
        ),
        (
            "Content-Length of 10 GB",
            format!("{}{{}}", head("/webhook/payment/yookassa", "Content-Length: 10000000000\r\n"))
                .into_bytes(),
            413,
            Some("payload_too_large"),
        ),
        (
            "chunked body past the limit",
            {
                let mut request = head("/api/payments", "Transfer-Encoding: chunked\r\n").into_bytes();
                for _ in 0..20 {
                    request.extend_from_slice(format!("1000\r\n{}\r\n", "x".repeat(4096)).as_bytes());
                }
                request.extend_from_slice(b"0\r\n\r\n");
                request
            },
            413,
            Some("payload_too_large"),
        ),
        (
            "broken chunk size",
            format!("{}zz\r\n{{}}\r\n0\r\n\r\n", head("/webhook/payment/yookassa", "Transfer-Encoding: chunked\r\n"))
                .into_bytes(),
            400,
            None,
        ),
        (
            "1 MiB header",
            format!(
                "{}{{}}",
                head("/webhook/payment/yookassa", &format!("Content-Length: 2\r\nX-Pad: {}\r\n", "p".repeat(1 << 20)))
            )
            .into_bytes(),
            431,
            None,
        ),
        (
            "path that is not UTF-8",
            b"GET /api/payments/%FF%FE HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer svc-token-for-tests-0123456789abcdef\r\n\r\n".to_vec(),
            404,
            Some("not_found"),
        ),
    ];
    let mut failures = Vec::new();
    for (name, request, expected, code) in &cases {
        let (status, body) = raw(&app, request).await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let code_ok = code.is_none_or(|code| json["error"] == code && json["message"].is_string());
        if status != *expected || !code_ok {
            failures.push(format!(
                "{name}: expected {expected} {code:?}, got {status} {body:.200}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(before, snapshot(&app).await, "the database changed");
    println!("malformed HTTP: {} requests refused", cases.len());
}
