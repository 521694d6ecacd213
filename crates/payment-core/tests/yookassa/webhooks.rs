//! Notification parsing and the source-address checks, offline and for real over loopback.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use payment_core::providers::yookassa::transformers::{
    Notification, NotificationEvent, NotificationObject,
};
use payment_core::providers::yookassa::{
    YooKassaProvider, YooKassaWebhookVerifier, published_networks,
};
use payment_core::{
    IpAllowList, PaymentProvider, PaymentService, WebhookError, WebhookHeaders,
    WebhookNotification, WebhookRequest, WebhookSubject,
};
use sandbox::yookassa::{Config, DeliveryOutcome, NotificationMode};

use crate::helpers::{request, rub, settings, spawn_with};

const RECORDED: &[u8] = include_bytes!("../fixtures/yookassa_payment_succeeded.json");

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn no_headers() -> WebhookHeaders {
    WebhookHeaders::new()
}

#[test]
fn the_recorded_notification_parses() {
    let typed = Notification::parse(RECORDED).expect("typed");
    assert_eq!(typed.event, NotificationEvent::PaymentSucceeded);
    let NotificationObject::Payment(payment) = &typed.object else {
        panic!("expected a payment object");
    };
    assert_eq!(payment.id, "2e8dd95a-000f-5000-a000-1e3515f51c18");
    assert!(payment.paid && payment.test && payment.refundable);
    assert_eq!(
        domain::money::Money::parse(&payment.amount.value, domain::money::Currency::Rub),
        Ok(rub(999))
    );
    assert_eq!(
        payment.income_amount.as_ref().map(|a| a.value.as_str()),
        Some("9.64")
    );
    assert_eq!(
        payment
            .payment_method
            .as_ref()
            .and_then(|m| m.title.as_deref()),
        Some("Bank card *4477")
    );
    assert_eq!(payment.metadata_str("userId"), Some("273117742"));
    assert_eq!(
        payment.captured_at.map(|t| t.to_rfc3339()),
        Some("2024-10-01T09:50:44.086+00:00".to_owned())
    );

    let parsed = YooKassaWebhookVerifier::parse(RECORDED).expect("neutral");
    assert_eq!(parsed.provider, payment_core::providers::yookassa::ID);
    assert_eq!(parsed.event, "payment.succeeded");
    assert_eq!(parsed.claimed_status.as_deref(), Some("succeeded"));
    assert_eq!(
        parsed.dedupe_key,
        "payment.succeeded:2e8dd95a-000f-5000-a000-1e3515f51c18"
    );
    assert_eq!(
        parsed.subject,
        WebhookSubject::Payment {
            provider_payment_id: "2e8dd95a-000f-5000-a000-1e3515f51c18".into(),
            payment_id: None, // not one of ours: no payment_id in the metadata
        }
    );
    assert_eq!(
        parsed.provider_payment_id(),
        Some("2e8dd95a-000f-5000-a000-1e3515f51c18")
    );
}

#[test]
fn refund_and_unknown_events() {
    let refund = br#"{"type":"notification","event":"refund.succeeded","object":{
        "id":"216749f7-0016-50be-b000-078d43a63ae4","payment_id":"216749da-000f-50be-b000-096747fad91e",
        "status":"succeeded","amount":{"value":"1.00","currency":"RUB"},"created_at":"2017-10-04T19:27:51.407Z"}}"#;
    let parsed = YooKassaWebhookVerifier::parse(refund).expect("refund");
    assert_eq!(
        parsed.subject,
        WebhookSubject::Refund {
            provider_refund_id: "216749f7-0016-50be-b000-078d43a63ae4".into(),
            provider_payment_id: "216749da-000f-50be-b000-096747fad91e".into(),
        }
    );
    assert_eq!(
        parsed.provider_payment_id(),
        Some("216749da-000f-50be-b000-096747fad91e")
    );

    let unknown =
        br#"{"type":"notification","event":"payment.something_new","object":{"id":"x1"}}"#;
    let parsed = YooKassaWebhookVerifier::parse(unknown).expect("unknown parses");
    assert_eq!(
        parsed.subject,
        WebhookSubject::Other {
            object_id: Some("x1".into())
        }
    );
    assert_eq!(parsed.dedupe_key, "payment.something_new:x1");

    let malformed = YooKassaWebhookVerifier::parse(b"{}");
    assert!(matches!(malformed, Err(WebhookError::MalformedBody(_))));
}

#[test]
fn allow_list_inside_and_outside() {
    let verifier = YooKassaWebhookVerifier::new(published_networks(), IpAllowList::default());
    for inside in [
        "185.71.76.1",
        "185.71.77.30",
        "77.75.153.100",
        "77.75.156.11",
        "77.75.156.35",
        "77.75.154.200",
    ] {
        assert_eq!(
            verifier.verify_source(ip(inside), &no_headers()),
            Ok(ip(inside)),
            "{inside}"
        );
    }
    for outside in [
        "185.71.76.32",
        "77.75.156.12",
        "8.8.8.8",
        "127.0.0.1",
        "10.0.0.1",
    ] {
        assert_eq!(
            verifier.verify_source(ip(outside), &no_headers()),
            Err(WebhookError::ForbiddenSource(ip(outside))),
            "{outside}"
        );
    }
}

#[test]
fn allow_list_ipv6() {
    let verifier = YooKassaWebhookVerifier::new(published_networks(), IpAllowList::default());
    for inside in ["2a02:5180::1", "2a02:5180:0:1509::42", "2a02:5180:ffff::1"] {
        assert!(
            verifier.verify_source(ip(inside), &no_headers()).is_ok(),
            "{inside}"
        );
    }
    for outside in ["2a02:5181::1", "2001:db8::1", "::1"] {
        assert!(
            matches!(
                verifier.verify_source(ip(outside), &no_headers()),
                Err(WebhookError::ForbiddenSource(_))
            ),
            "{outside}"
        );
    }
    // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6.
    assert_eq!(
        verifier.verify_source(ip("::ffff:185.71.76.5"), &no_headers()),
        Ok(ip("185.71.76.5"))
    );
    assert!(
        verifier
            .verify_source(ip("::ffff:8.8.8.8"), &no_headers())
            .is_err()
    );
}

#[test]
fn forwarding_headers_from_untrusted_peers_are_ignored() {
    let verifier = YooKassaWebhookVerifier::new(
        published_networks(),
        IpAllowList::parse_list("10.0.0.0/24").expect("list"),
    );
    let spoofed = WebhookHeaders::from_pairs([
        ("X-Forwarded-For", "185.71.76.5"),
        ("X-Real-IP", "185.71.76.5"),
    ]);
    assert_eq!(
        verifier.verify_source(ip("203.0.113.7"), &spoofed),
        Err(WebhookError::ForbiddenSource(ip("203.0.113.7")))
    );
    // No proxies configured at all: headers are never read.
    let plain = YooKassaWebhookVerifier::new(published_networks(), IpAllowList::default());
    assert!(plain.verify_source(ip("10.0.0.5"), &spoofed).is_err());
}

#[test]
fn forwarding_headers_from_trusted_proxies_are_honoured() {
    let verifier = YooKassaWebhookVerifier::new(
        published_networks(),
        IpAllowList::parse_list("10.0.0.0/24, fd00::/8").expect("list"),
    );
    let proxy = ip("10.0.0.5");
    let xff = |v: &str| WebhookHeaders::from_pairs([("X-Forwarded-For", v)]);

    assert_eq!(
        verifier.verify_source(proxy, &xff("185.71.76.5")),
        Ok(ip("185.71.76.5"))
    );
    // Two of our proxies in a row.
    assert_eq!(
        verifier.verify_source(proxy, &xff("185.71.76.5, 10.0.0.9")),
        Ok(ip("185.71.76.5"))
    );
    // The right-most untrusted hop counts, whatever the client wrote to its left.
    assert_eq!(
        verifier.verify_source(proxy, &xff("185.71.76.5, 203.0.113.7")),
        Err(WebhookError::ForbiddenSource(ip("203.0.113.7")))
    );
    assert_eq!(
        verifier.verify_source(proxy, &xff("203.0.113.7, 185.71.76.5")),
        Ok(ip("185.71.76.5"))
    );
    // IPv6 proxies too.
    assert_eq!(
        verifier.verify_source(ip("fd00::1"), &xff("2a02:5180::9")),
        Ok(ip("2a02:5180::9"))
    );
    // X-Real-IP is never believed: a trusted proxy that does not overwrite it forwards the
    // client's own, so without X-Forwarded-For the request is the proxy's.
    let real = WebhookHeaders::from_pairs([("x-real-ip", "2a02:5180::9")]);
    assert_eq!(
        verifier.verify_source(ip("fd00::1"), &real),
        Err(WebhookError::ForbiddenSource(ip("fd00::1")))
    );
    // A trusted proxy talking for itself is not YooKassa.
    assert_eq!(
        verifier.verify_source(proxy, &no_headers()),
        Err(WebhookError::ForbiddenSource(proxy))
    );
    assert!(matches!(
        verifier.verify_source(proxy, &xff("185.71.76.5, garbage")),
        Err(WebhookError::MalformedForwardingHeader(_))
    ));
}

type Received = Arc<Mutex<Vec<Result<WebhookNotification, WebhookError>>>>;

/// What the gateway will do: hand peer, headers and body to the provider, answer 200 / 403.
async fn receiver(
    provider: Arc<YooKassaProvider>,
) -> (String, Received, actix_web::dev::ServerHandle) {
    let received: Received = Arc::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://{}/webhook/payment/yookassa",
        listener.local_addr().expect("addr")
    );
    let sink = received.clone();
    let server = HttpServer::new(move || {
        let (provider, sink) = (provider.clone(), sink.clone());
        App::new().route(
            "/webhook/payment/yookassa",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let (provider, sink) = (provider.clone(), sink.clone());
                async move {
                    let headers = WebhookHeaders::from_pairs(req.headers().iter().filter_map(
                        |(name, value)| value.to_str().ok().map(|v| (name.as_str(), v)),
                    ));
                    let peer = req.peer_addr().expect("peer").ip();
                    let result = provider
                        .receive_webhook(&WebhookRequest {
                            peer,
                            headers: &headers,
                            body: &body,
                        })
                        .await;
                    let response = match &result {
                        Ok(_) => HttpResponse::Ok().finish(),
                        Err(WebhookError::ForbiddenSource(_)) => HttpResponse::Forbidden().finish(),
                        Err(_) => HttpResponse::BadRequest().finish(),
                    };
                    sink.lock().expect("lock").push(result);
                    response
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
    (url, received, handle)
}

#[tokio::test]
async fn emulator_notifications_over_loopback() {
    // Our side trusts only 127.0.0.2 as "YooKassa".
    let shop = spawn_with(
        Config {
            notify_from: Some(ip("127.0.0.2")),
            redelivery: vec![],
            ..Config::default()
        },
        |s| s.allowed_ips = IpAllowList::parse_list("127.0.0.2").expect("list"),
    )
    .await;
    let provider =
        Arc::new(YooKassaProvider::new(shop.provider.settings().clone()).expect("provider"));
    let (url, received, _server) = receiver(provider.clone()).await;
    shop.emulator.set_webhook_url(Some(url.clone()));

    let req = request(19_900);
    let created = provider.create_payment(&req).await.expect("created");
    shop.emulator
        .push_notification_mode(NotificationMode::Duplicate, 1);
    shop.emulator
        .pay(&created.provider_payment_id)
        .expect("pay");
    let deliveries = shop
        .emulator
        .wait_for_deliveries(2, Duration::from_secs(5))
        .await;
    assert_eq!(deliveries.len(), 2);
    assert!(
        deliveries
            .iter()
            .all(|d| d.outcome == DeliveryOutcome::Delivered { status: 200 })
    );
    let got = received.lock().expect("lock").clone();
    let notification = got[0].clone().expect("accepted");
    // A duplicate is the same inbox row.
    assert_eq!(
        got[1].as_ref().map(|n| n.dedupe_key.clone()),
        Ok(notification.dedupe_key.clone())
    );
    assert_eq!(notification.event, "payment.succeeded");
    assert_eq!(
        notification.subject,
        WebhookSubject::Payment {
            provider_payment_id: created.provider_payment_id.clone(),
            payment_id: Some(req.payment_id),
        }
    );

    // The same YooKassa, but sending from an address outside the list: refused with 403.
    let stranger = sandbox::yookassa::spawn(Config {
        notify_from: Some(ip("127.0.0.3")),
        webhook_url: Some(url),
        redelivery: vec![],
        ..Config::default()
    })
    .await
    .expect("emulator");
    let mut s = settings(&stranger);
    s.allowed_ips = IpAllowList::parse_list("127.0.0.2").expect("list");
    let other = YooKassaProvider::new(s).expect("provider");
    let id = other
        .create_payment(&request(1_000))
        .await
        .expect("created")
        .provider_payment_id;
    stranger.pay(&id).expect("pay");
    let deliveries = stranger
        .wait_for_deliveries(1, Duration::from_secs(5))
        .await;
    assert_eq!(
        deliveries[0].outcome,
        DeliveryOutcome::Rejected { status: 403 }
    );
    let got = received.lock().expect("lock").clone();
    assert_eq!(got[2], Err(WebhookError::ForbiddenSource(ip("127.0.0.3"))));
}

#[tokio::test]
async fn the_service_routes_webhooks_to_enabled_providers() {
    let mut s = payment_core::providers::yookassa::YooKassaSettings::new("1", "s");
    s.allowed_ips = published_networks();
    let settings = payment_core::PaymentSettings {
        yookassa: Some(s),
        ..Default::default()
    };
    let service = PaymentService::from_settings(&settings).expect("service");
    let headers = WebhookHeaders::new();
    let ok = service
        .receive_webhook(
            payment_core::providers::yookassa::ID,
            &WebhookRequest {
                peer: ip("185.71.76.10"),
                headers: &headers,
                body: RECORDED,
            },
        )
        .await
        .expect("accepted");
    assert!(ok.is_some());
    let denied = service
        .receive_webhook(
            payment_core::providers::yookassa::ID,
            &WebhookRequest {
                peer: ip("8.8.8.8"),
                headers: &headers,
                body: RECORDED,
            },
        )
        .await;
    assert_eq!(denied, Err(WebhookError::ForbiddenSource(ip("8.8.8.8"))));

    let disabled =
        PaymentService::from_settings(&payment_core::PaymentSettings::default()).expect("service");
    let none = disabled
        .receive_webhook(
            payment_core::providers::yookassa::ID,
            &WebhookRequest {
                peer: ip("185.71.76.10"),
                headers: &headers,
                body: RECORDED,
            },
        )
        .await;
    assert_eq!(none, Ok(None));
}
