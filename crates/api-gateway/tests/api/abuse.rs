//! The public door under abuse (issue 18): junk of every shape must not grow memory or the
//! metrics, and forwarding headers are believed only as our own proxy set them.

use std::time::Instant;

use futures::StreamExt;
use reqwest::Method;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

/// Set in the child process that runs [`memory_probe`] alone.
const PROBE_ENV: &str = "ACP_ABUSE_MEMORY_PROBE";
/// Requests in flight at once.
const CONCURRENCY: usize = 16;

/// `n` random characters from `alphabet` (the randomness of v4 UUIDs: no extra dependency).
fn random(alphabet: &[u8], n: usize) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for byte in Uuid::new_v4().as_bytes() {
            if out.len() < n {
                out.push(alphabet[usize::from(*byte) % alphabet.len()] as char);
            }
        }
    }
    out
}

const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// An ordinary request: known methods on known routes, a few 404s and 405s.
fn ordinary(app: &TestApp, i: usize) -> reqwest::RequestBuilder {
    match i % 6 {
        0 => app.http.get(app.url("/api/payment/providers")),
        1 => app
            .http
            .get(app.url("/api/payments/00000000-0000-0000-0000-000000000000")),
        2 => app.http.get(app.url("/no/such/route")),
        3 => app.http.put(app.url("/webhook/payment/yookassa")),
        4 => app
            .http
            .post(app.url("/webhook/payment/crypto"))
            .header("Content-Type", "application/json")
            .body("{}"),
        _ => app.http.get(app.url("/api/openapi.json")),
    }
}

/// Junk of every shape: random methods, random paths, random query strings, random header
/// names — each request different.
fn junk(app: &TestApp, i: usize) -> reqwest::RequestBuilder {
    match i % 4 {
        0 => {
            let method = Method::from_bytes(random(UPPER, 60).as_bytes()).expect("token");
            let path = ["/api/payments", "/webhook/payment/yookassa", "/x"][i % 3];
            app.http.request(method, app.url(path))
        }
        1 => app
            .http
            .get(app.url(&format!("/{}/{}", random(LOWER, 40), random(LOWER, 20)))),
        2 => {
            let path = ["/health/live", "/api/payments", "/webhook/payment/yookassa"][i % 3];
            let query = format!("{}={}", random(LOWER, 30), random(LOWER, 30));
            app.http.post(app.url(&format!("{path}?{query}")))
        }
        _ => {
            let mut request = app.http.post(app.url("/webhook/payment/crypto"));
            for _ in 0..4 {
                request = request.header(format!("x-{}", random(LOWER, 30)), random(LOWER, 20));
            }
            request
        }
    }
}

async fn send_all(
    app: &TestApp,
    count: usize,
    build: fn(&TestApp, usize) -> reqwest::RequestBuilder,
) {
    futures::stream::iter(0..count)
        .map(|i| async move {
            let response = build(app, i).send().await.expect("request");
            let status = response.status();
            let _ = response.bytes().await;
            assert!(status.as_u16() < 500, "request {i}: {status}");
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<()>()
        .await;
}

/// Runs [`memory_probe`] in a child process of this test binary, alone: resident memory is
/// a per-process figure, and the other tests of this binary run in parallel in this one.
/// (A fork-per-test crate would do the same with more machinery; this is one `Command`.)
#[test]
fn junk_requests_leave_memory_and_metrics_bounded() {
    crate::helpers::run_alone("abuse::memory_probe", PROBE_ENV);
}

/// The measurement itself; only meaningful alone in its process (see above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by junk_requests_leave_memory_and_metrics_bounded in its own process"]
async fn memory_probe() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let app = spawn_app(&[]).await;
    // Warm-up: allocator arenas, connection pools and every route's first use.
    send_all(&app, 3000, ordinary).await;
    let _ = app.metrics().await;
    let before = crate::helpers::rss_kib();
    let started = Instant::now();
    send_all(&app, 20_000, junk).await;
    let metrics = app.metrics().await;
    let after = crate::helpers::rss_kib();
    let growth = after.saturating_sub(before);
    println!(
        "20,000 junk requests in {:.1} s: RSS {before} KiB -> {after} KiB (+{growth} KiB), \
         /metrics {} bytes",
        started.elapsed().as_secs_f64(),
        metrics.len()
    );
    assert!(
        metrics.len() < 64 * 1024,
        "/metrics is {} bytes",
        metrics.len()
    );
    assert!(growth < 5 * 1024, "RSS grew by {growth} KiB");
    assert!(
        metrics.contains("method=\"OTHER\"") && metrics.contains("route=\"unmatched\""),
        "junk is counted under the catch-all labels"
    );
}

/// YooKassa's published network, and one of its addresses.
const YOOKASSA_NET: &str = "185.71.76.0/27";
const YOOKASSA_HOST: &str = "185.71.76.5";

/// Forwarding headers are believed only as our own proxy sets them: the right-most
/// `X-Forwarded-For` hop that is not a trusted proxy; `X-Real-IP` never (a proxy that does not
/// overwrite it passes the client's own value through). The test client is the "proxy"
/// (127.0.0.1), so what it sends is what a trusted proxy would forward.
#[tokio::test]
async fn forwarding_headers_are_believed_only_as_our_proxy_sets_them() {
    let app = spawn_app(&[
        ("YOOKASSA_ALLOWED_IPS", YOOKASSA_NET),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let body = crate::helpers::payment_notification(
        "payment.succeeded",
        &crate::helpers::random_provider_id(),
        "succeeded",
    );
    let refused: [(&str, &[(&str, &str)]); 4] = [
        // A trusted proxy that forwards the client's own X-Real-IP unchanged.
        ("client's X-Real-IP", &[("X-Real-IP", YOOKASSA_HOST)]),
        // Our proxy appended the real client; the X-Real-IP is still the client's.
        (
            "X-Real-IP beside X-Forwarded-For",
            &[
                ("X-Real-IP", YOOKASSA_HOST),
                ("X-Forwarded-For", "203.0.113.9"),
            ],
        ),
        // The client wrote a YooKassa hop; our proxy appended what it saw.
        (
            "spoofed left-most hop",
            &[("X-Forwarded-For", "185.71.76.5, 203.0.113.9")],
        ),
        // No forwarding header at all: the request is the proxy's own.
        ("no header", &[]),
    ];
    for (name, headers) in refused {
        let response = app.post_yookassa(&body, headers).await;
        assert_eq!(response.status(), 403, "{name}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"], "forbidden", "{name}");
    }
    assert_eq!(app.inbox_count().await, 0, "nothing refused was stored");

    // Our proxy saw YooKassa: believed, and the inbox records YooKassa's address.
    let response = app
        .post_yookassa(
            &body,
            &[
                ("X-Forwarded-For", YOOKASSA_HOST),
                ("X-Real-IP", "203.0.113.9"),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    let inbox = app.inbox().await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].peer.as_deref(), Some(YOOKASSA_HOST));
}

/// A peer that is not a trusted proxy is itself the client, whatever it claims.
#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let app = spawn_app(&[("YOOKASSA_ALLOWED_IPS", YOOKASSA_NET)]).await;
    let body = crate::helpers::payment_notification(
        "payment.succeeded",
        &crate::helpers::random_provider_id(),
        "succeeded",
    );
    let response = app
        .post_yookassa(
            &body,
            &[
                ("X-Forwarded-For", YOOKASSA_HOST),
                ("X-Real-IP", YOOKASSA_HOST),
            ],
        )
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(app.inbox_count().await, 0);
}
