//! Rate limits of the public port (issue 18): per client address on unverified webhook traffic
//! and on the API, 429 with `Retry-After` and the JSON error, counted in metrics — and the
//! flood: 10,000 unverified requests a second while allow-listed YooKassa notifications keep
//! arriving, every one of them stored.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use payment_core::providers::crypto::signature;

use crate::helpers::{
    CRYPTO_SECRET, SERVICE_TOKEN, TestApp, payment_notification, random_provider_id, sample,
    spawn_app,
};

/// YooKassa's address in these tests; the junk comes from 127.0.0.1.
const YOOKASSA_FROM: &str = "127.0.0.2";
const NOTICE: &str = r#"{"event":"transfer.detected","tx_id":"TX","network":"TRC20"}"#;

/// A client whose requests leave from `ip` (any 127/8 address is this host's loopback).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

fn signed(body: &str) -> String {
    signature::sign(
        CRYPTO_SECRET.as_bytes(),
        chrono::Utc::now().timestamp(),
        body.as_bytes(),
    )
    .unwrap()
}

async fn post_yookassa(app: &TestApp, http: &reqwest::Client, body: &str) -> reqwest::Response {
    http.post(app.url("/webhook/payment/yookassa"))
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn post_crypto(
    app: &TestApp,
    http: &reqwest::Client,
    body: &str,
    signature: &str,
) -> reqwest::Response {
    http.post(app.url("/webhook/payment/crypto"))
        .header("Content-Type", "application/json")
        .header("X-Signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// Asserts a 429 with `Retry-After` (whole seconds, ≥ 1) and the gateway's JSON error;
/// returns the seconds.
async fn assert_limited(response: reqwest::Response) -> u64 {
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&format!("retry in {retry_after} s")),
        "{body}"
    );
    retry_after
}

fn webhook_limits(rate: &'static str) -> [(&'static str, &'static str); 3] {
    [
        ("GATEWAY_WEBHOOK_LIMIT", rate),
        ("YOOKASSA_ALLOWED_IPS", YOOKASSA_FROM),
        ("GATEWAY_API_LIMIT", "off"),
    ]
}

/// Junk from one address gets its 403s and 401s up to the budget, then 429s (on every webhook
/// route, before the body is looked at); YooKassa's own notifications and validly signed
/// crypto notices from other addresses go through untouched.
#[tokio::test]
async fn unverified_webhooks_over_the_budget_get_429_and_others_pass() {
    let app = spawn_app(&webhook_limits("1/min,burst=3")).await;
    let junk = &app.http; // 127.0.0.1: not on the allow-list
    let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    for _ in 0..2 {
        assert_eq!(post_yookassa(&app, junk, &body).await.status(), 403);
    }
    let forged = signature::sign(b"not-the-secret", chrono::Utc::now().timestamp(), b"{}").unwrap();
    assert_eq!(post_crypto(&app, junk, "{}", &forged).await.status(), 401);
    // The fourth failure is over the budget: 429, and the address is penalized.
    let retry = assert_limited(post_yookassa(&app, junk, &body).await).await;
    assert!(
        retry > 30 && retry <= 60,
        "about a minute at 1/min: {retry}"
    );
    assert_limited(post_yookassa(&app, junk, &body).await).await;
    assert_limited(post_crypto(&app, junk, "{}", &forged).await).await;
    assert_limited(
        junk.get(app.url("/webhook/no/such/hook"))
            .send()
            .await
            .unwrap(),
    )
    .await;

    // Another address is not affected: YooKassa's notifications, and signed notices.
    let yookassa = client_from(YOOKASSA_FROM);
    for _ in 0..10 {
        let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
        assert_eq!(post_yookassa(&app, &yookassa, &body).await.status(), 200);
    }
    for i in 0..10 {
        let notice = NOTICE.replace("TX", &format!("tx-{i}"));
        let response = post_crypto(&app, &yookassa, &notice, &signed(&notice)).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        app.inbox_count().await,
        20,
        "every legitimate notice stored"
    );

    // The metrics are the process's, shared with the tests running beside this one: lower
    // bounds only.
    let metrics = app.metrics().await;
    let limited = sample(
        &metrics,
        "rate_limit_decisions_total",
        &["limiter=\"gateway_webhook\"", "outcome=\"limited\""],
    );
    assert!(limited >= 4.0, "{limited}");
    assert!(
        sample(&metrics, "gateway_http_requests_total", &["status=\"429\""]) >= 4.0,
        "the request metrics see the 429s too"
    );
}

/// Sends one raw HTTP/1.1 POST on `stream` and reads its whole answer; returns the head.
async fn raw_post(stream: &mut tokio::net::TcpStream, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before a whole answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return head;
            }
        }
    }
}

/// A penalized address's 429 reads and drops a small body and keeps the connection open, so
/// a flood from one address does not become a new connection per request (the `flood`
/// scenario's accept-and-close churn); every answer is still a 429 with `Retry-After`.
#[tokio::test]
async fn a_penalized_address_keeps_its_connection() {
    let app = spawn_app(&webhook_limits("1/min,burst=1")).await;
    let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    assert_eq!(post_yookassa(&app, &app.http, &body).await.status(), 403);
    assert_limited(post_yookassa(&app, &app.http, &body).await).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    for path in [
        "/webhook/payment/yookassa",
        "/webhook/payment/crypto",
        "/webhook/payment/yookassa",
    ] {
        let head = raw_post(&mut stream, path, &body)
            .await
            .to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 429"), "{head}");
        assert!(head.contains("retry-after:"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
}

/// What passes verification never spends the budget: allow-listed YooKassa notifications
/// (also a malformed one: the source is YooKassa's) and validly signed crypto notices.
#[tokio::test]
async fn verified_webhooks_never_count() {
    let app = spawn_app(&webhook_limits("1/min,burst=1")).await;
    let yookassa = client_from(YOOKASSA_FROM);
    for _ in 0..30 {
        let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
        assert_eq!(post_yookassa(&app, &yookassa, &body).await.status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(post_yookassa(&app, &yookassa, "{").await.status(), 400);
    }
    // Signed notices from 127.0.0.1, which is not YooKassa's: the signature is what counts.
    for i in 0..30 {
        let notice = NOTICE.replace("TX", &format!("tx-{i}"));
        let response = post_crypto(&app, &app.http, &notice, &signed(&notice)).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(app.inbox_count().await, 60);
    // 127.0.0.1's budget (1) is whole: its first failure is a 403, the second over it.
    let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    assert_eq!(post_yookassa(&app, &app.http, &body).await.status(), 403);
    assert_limited(post_yookassa(&app, &app.http, &body).await).await;
    // YooKassa's budget is whole too (it never had one in use): still accepted.
    let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    assert_eq!(post_yookassa(&app, &yookassa, &body).await.status(), 200);
}

/// The API: every request counts, per address; a valid token has its own, higher budget (it
/// raises the limit, it does not lift it); a wrong token is no token.
#[tokio::test]
async fn the_api_is_limited_per_address_and_a_token_has_its_own_budget() {
    let app = spawn_app(&[
        ("GATEWAY_API_LIMIT", "1/min,burst=2"),
        ("GATEWAY_API_TOKEN_LIMIT", "1/min,burst=4"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let anonymous = |from: &str| {
        app.http
            .get(app.url("/api/payment/providers"))
            .header("X-Forwarded-For", from)
    };
    for _ in 0..2 {
        assert_eq!(anonymous("203.0.113.1").send().await.unwrap().status(), 200);
    }
    assert_limited(anonymous("203.0.113.1").send().await.unwrap()).await;
    // Unknown routes and wrong tokens spend the same budget.
    assert_limited(
        app.http
            .get(app.url("/no/such/route"))
            .header("X-Forwarded-For", "203.0.113.1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_limited(
        anonymous("203.0.113.1")
            .bearer_auth("wrong-token-0123456789abcdef0123456789")
            .send()
            .await
            .unwrap(),
    )
    .await;
    // Another address, its own budget (the client address behind our trusted proxy).
    assert_eq!(anonymous("203.0.113.2").send().await.unwrap().status(), 200);

    // The service token from the limited address: its own budget of 4.
    let with_token = || {
        app.http
            .get(app.url("/api/payments/00000000-0000-0000-0000-000000000000"))
            .bearer_auth(SERVICE_TOKEN)
            .header("X-Forwarded-For", "203.0.113.1")
    };
    for _ in 0..4 {
        assert_eq!(with_token().send().await.unwrap().status(), 404);
    }
    assert_limited(with_token().send().await.unwrap()).await;

    let metrics = app.metrics().await;
    for (limiter, outcome, at_least) in [
        ("gateway_api", "allowed", 3.0),
        ("gateway_api", "limited", 3.0),
        ("gateway_api_token", "allowed", 4.0),
        ("gateway_api_token", "limited", 1.0),
    ] {
        let value = sample(
            &metrics,
            "rate_limit_decisions_total",
            &[
                &format!("limiter=\"{limiter}\""),
                &format!("outcome=\"{outcome}\""),
            ],
        );
        assert!(value >= at_least, "{limiter} {outcome}: {value}");
    }
}

/// Addresses cannot grow the tables: with room for 50, a thousand new addresses share one
/// overflow budget (and are limited together), while an address already known keeps its own.
#[tokio::test]
async fn new_addresses_beyond_the_table_share_one_budget() {
    let app = spawn_app(&[
        ("GATEWAY_API_LIMIT", "1/min,burst=5"),
        ("GATEWAY_LIMIT_KEYS", "50"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let from = |ip: String| {
        app.http
            .get(app.url("/api/payment/providers"))
            .header("X-Forwarded-For", ip)
    };
    assert_eq!(
        from("198.51.100.1".into()).send().await.unwrap().status(),
        200
    );
    let mut limited = 0;
    for i in 0..1000u32 {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        if from(ip).send().await.unwrap().status() == 429 {
            limited += 1;
        }
    }
    // 49 addresses got a place in the table, 5 more the overflow's burst, the rest were
    // limited together.
    assert!(limited >= 1000 - 49 - 5 - 2, "{limited} of 1000 limited");
    assert_eq!(
        from("198.51.100.1".into()).send().await.unwrap().status(),
        200,
        "a known address keeps its own budget"
    );
    let metrics = app.metrics().await;
    assert!(
        sample(
            &metrics,
            "rate_limit_overflow_total",
            &["limiter=\"gateway_api\""]
        ) >= 900.0
    );
}

// ---- the flood ------------------------------------------------------------------------------

/// Set in the child process that runs [`flood_probe`] alone.
const FLOOD_ENV: &str = "ACP_FLOOD_PROBE";

/// Runs [`flood_probe`] in a child process of this test binary, alone (resident memory is a
/// per-process figure; the other tests of this binary run in parallel in this one).
#[test]
fn a_flood_of_junk_leaves_every_legitimate_webhook_stored_and_memory_bounded() {
    crate::helpers::run_alone("rate_limits::flood_probe", FLOOD_ENV);
}

/// Junk at 10,000/s for 2.5 s from loopback — forbidden YooKassa notifications and forged
/// crypto notices from one address, and every tenth from a fresh address behind our
/// "proxy" — while YooKassa's notifications arrive at 50/s from its allow-listed address.
/// Asserts correctness only: every legitimate notification acknowledged 200 and stored, every
/// junk request answered 403, 401 or 429, RSS growth bounded (under 10 MiB, the test's own 64
/// client connections included). The load generator's `flood` scenario measures the
/// acknowledgement times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_flood_of_junk_leaves_every_legitimate_webhook_stored_and_memory_bounded"]
async fn flood_probe() {
    if std::env::var_os(FLOOD_ENV).is_none() {
        return;
    }
    const JUNK_RATE: u64 = 10_000;
    const LEGIT_RATE: u64 = 50;
    const FLOOD: Duration = Duration::from_millis(2500);
    const MAX_FLOOD: Duration = Duration::from_secs(10);
    const IN_FLIGHT: usize = 64;
    let app = Arc::new(
        spawn_app(&[
            ("GATEWAY_WEBHOOK_LIMIT", "5/s,burst=20"),
            ("GATEWAY_API_LIMIT", "10/s,burst=20"),
            ("YOOKASSA_ALLOWED_IPS", YOOKASSA_FROM),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ])
        .await,
    );
    let junk_client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .unwrap();
    let yookassa = client_from(YOOKASSA_FROM);
    let forbidden = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    let forged = signature::sign(b"not-the-secret", chrono::Utc::now().timestamp(), b"{}").unwrap();
    let (yookassa_url, crypto_url) = (
        app.url("/webhook/payment/yookassa"),
        app.url("/webhook/payment/crypto"),
    );
    let junk = move |i: u64| {
        let request = if i.is_multiple_of(2) {
            junk_client.post(&yookassa_url).body(forbidden.clone())
        } else {
            junk_client
                .post(&crypto_url)
                .header("X-Signature", forged.clone())
                .body("{}")
        };
        let request = request.header("Content-Type", "application/json");
        if i.is_multiple_of(10) {
            // A fresh address each time, as our trusted proxy would forward it.
            let fresh = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
            request.header("X-Forwarded-For", fresh)
        } else {
            request
        }
    };

    // Warm-up at full concurrency: connections, pools, allocator arenas, every path.
    futures::stream::iter(0..4000u64)
        .map(|i| {
            let request = junk(i + 1_000_000);
            async move {
                if let Ok(response) = request.send().await {
                    let _ = response.bytes().await;
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<()>()
        .await;
    let body = payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
    assert_eq!(post_yookassa(&app, &yookassa, &body).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = crate::helpers::rss_kib();

    let statuses: Arc<[AtomicU64; 600]> = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
    let started = Instant::now();
    let flood = {
        let statuses = statuses.clone();
        tokio::spawn(async move {
            let total = JUNK_RATE * FLOOD.as_millis() as u64 / 1000;
            futures::stream::iter(0..total)
                .map(|i| {
                    let request = junk(i);
                    let statuses = statuses.clone();
                    async move {
                        // Open loop: request i leaves at i / rate, or as soon as a slot is free.
                        let due = started + Duration::from_micros(i * 1_000_000 / JUNK_RATE);
                        tokio::time::sleep_until(due.into()).await;
                        // Bounded in time too: what a slow machine has not sent by then, it
                        // does not send.
                        if started.elapsed() > MAX_FLOOD {
                            return;
                        }
                        let status = match request.send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let _ = response.bytes().await;
                                status
                            }
                            Err(_) => 599,
                        };
                        statuses[usize::from(status).min(599)].fetch_add(1, Ordering::Relaxed);
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<()>()
                .await;
        })
    };
    // YooKassa at 50/s for as long as the flood is planned, each notification different.
    let mut legit = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(1000 / LEGIT_RATE));
    while started.elapsed() < FLOOD {
        ticker.tick().await;
        let (app, yookassa) = (app.clone(), yookassa.clone());
        legit.push(tokio::spawn(async move {
            let body =
                payment_notification("payment.succeeded", &random_provider_id(), "succeeded");
            post_yookassa(&app, &yookassa, &body)
                .await
                .status()
                .as_u16()
        }));
    }
    let mut legit_statuses = Vec::new();
    for task in legit {
        legit_statuses.push(task.await.unwrap());
    }
    flood.await.unwrap();
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = crate::helpers::rss_kib();

    let count = |status: usize| statuses[status].load(Ordering::Relaxed);
    let junk_sent: u64 = statuses.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    let growth = after.saturating_sub(before);
    println!(
        "flood: {junk_sent} junk requests in {:.2} s ({:.0}/s): 403 {}, 401 {}, 429 {}, other {}; \
         {} legitimate notifications; RSS {before} KiB -> {after} KiB (+{growth} KiB)",
        elapsed.as_secs_f64(),
        junk_sent as f64 / elapsed.as_secs_f64(),
        count(403),
        count(401),
        count(429),
        junk_sent - count(403) - count(401) - count(429),
        legit_statuses.len(),
    );
    assert_eq!(
        junk_sent,
        count(403) + count(401) + count(429),
        "every junk request answered 403, 401 or 429"
    );
    assert!(count(429) > junk_sent / 2, "most of the flood was limited");
    assert!(legit_statuses.len() as u64 >= LEGIT_RATE * 2);
    assert!(
        legit_statuses.iter().all(|s| *s == 200),
        "every legitimate notification acknowledged: {legit_statuses:?}"
    );
    assert_eq!(
        app.inbox_count().await,
        legit_statuses.len() as u64 + 1,
        "every legitimate notification stored (and the warm-up's)"
    );
    assert!(growth < 10 * 1024, "RSS grew by {growth} KiB");
}
