//! Every scripted emulator fault and what the client does with it.

use std::time::{Duration, Instant};

use payment_core::providers::yookassa::YooKassaProvider;
use payment_core::{Mismatch, PaymentProvider, ProviderError, TransientFailure};
use sandbox::yookassa::{Amount, Config, Fault};

use crate::helpers::{posts, request, spawn, spawn_with};

#[tokio::test]
async fn a_500_is_retried_with_the_same_key() {
    let shop = spawn().await;
    shop.emulator.push_fault(Fault::InternalError, 1);
    let req = request(10_000);
    shop.provider
        .create_payment(&req)
        .await
        .expect("created after a retry");
    let sent = posts(&shop.emulator, "/v3/payments");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].status, 500);
    assert_eq!(sent[0].idempotence_key, sent[1].idempotence_key);
    assert_eq!(shop.emulator.payments().len(), 1);
}

#[tokio::test]
async fn a_500_after_the_work_never_charges_twice() {
    let shop = spawn().await;
    shop.emulator
        .push_fault(Fault::InternalErrorAfterProcessing, 2);
    let created = shop
        .provider
        .create_payment(&request(10_000))
        .await
        .expect("created");
    assert_eq!(posts(&shop.emulator, "/v3/payments").len(), 3);
    let payments = shop.emulator.payments();
    assert_eq!(payments.len(), 1, "exactly one payment on the emulator");
    assert_eq!(payments[0]["id"], created.provider_payment_id.as_str());
}

#[tokio::test]
async fn persistent_500s_leave_the_result_unknown_and_a_later_retry_finds_it() {
    let shop = spawn().await;
    shop.emulator
        .push_fault(Fault::InternalErrorAfterProcessing, 4);
    let req = request(10_000);
    let err = shop
        .provider
        .create_payment(&req)
        .await
        .expect_err("unknown");
    assert!(err.is_result_unknown(), "{err}");
    assert!(matches!(
        err,
        ProviderError::ResultUnknown {
            attempts: 4,
            last: TransientFailure::ServerError(500)
        }
    ));
    // The caller keeps the payment pending and tries again later: same key, same payment.
    let created = shop.provider.create_payment(&req).await.expect("found");
    assert_eq!(shop.emulator.payments().len(), 1);
    assert_eq!(
        shop.emulator.payments()[0]["id"],
        created.provider_payment_id.as_str()
    );
    let keys: Vec<_> = posts(&shop.emulator, "/v3/payments")
        .into_iter()
        .map(|r| r.idempotence_key)
        .collect();
    assert_eq!(keys.len(), 5);
    assert!(keys.iter().all(|k| k == &keys[0]));
}

#[tokio::test]
async fn a_429_backs_off_then_succeeds() {
    let shop = spawn().await;
    shop.emulator.push_fault(Fault::TooManyRequests, 2);
    let started = Instant::now();
    shop.provider
        .create_payment(&request(10_000))
        .await
        .expect("created");
    // Rate limiting doubles the pause: 2×10 ms then 2×10 ms (Fibonacci 1, 1).
    assert!(
        started.elapsed() >= Duration::from_millis(40),
        "{:?}",
        started.elapsed()
    );
    let sent = posts(&shop.emulator, "/v3/payments");
    assert_eq!(
        sent.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 429, 200]
    );
    assert_eq!(shop.emulator.payments().len(), 1);

    // Reads are retried too.
    shop.emulator.push_fault(Fault::TooManyRequests, 4);
    let err = shop
        .provider
        .fetch_payment(shop.emulator.payments()[0]["id"].as_str().expect("id"))
        .await;
    assert!(matches!(
        err,
        Err(ProviderError::ResultUnknown {
            last: TransientFailure::RateLimited,
            ..
        })
    ));
}

#[tokio::test]
async fn a_timeout_is_retried_and_leads_to_one_payment() {
    let shop = spawn_with(Config::default(), |s| {
        s.retry.request_timeout = Duration::from_millis(300)
    })
    .await;
    shop.emulator
        .push_fault(Fault::slow(Duration::from_millis(1_000)), 1);
    let req = request(10_000);
    let created = shop
        .provider
        .create_payment(&req)
        .await
        .expect("created after the timeout");
    let sent = posts(&shop.emulator, "/v3/payments");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].idempotence_key, sent[1].idempotence_key);
    assert_eq!(
        sent[0].idempotence_key.as_deref(),
        Some(YooKassaProvider::payment_idempotence_key(req.payment_id).as_str())
    );
    let payments = shop.emulator.payments();
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["id"], created.provider_payment_id.as_str());
}

#[tokio::test]
async fn timeouts_until_the_end_are_result_unknown() {
    let shop = spawn_with(Config::default(), |s| {
        s.retry.request_timeout = Duration::from_millis(100);
        s.retry.max_attempts = 2;
    })
    .await;
    shop.emulator
        .push_fault(Fault::slow(Duration::from_millis(400)), 2);
    let err = shop
        .provider
        .create_payment(&request(10_000))
        .await
        .expect_err("timeout");
    assert!(matches!(
        err,
        ProviderError::ResultUnknown {
            attempts: 2,
            last: TransientFailure::Timeout
        }
    ));
    assert!(err.is_result_unknown());
}

#[tokio::test]
async fn an_unreachable_api_is_result_unknown() {
    let shop = spawn().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v3", closed.local_addr().expect("addr"));
    drop(closed);
    let mut settings = shop.provider.settings().clone();
    settings.api_url = url;
    settings.retry.max_attempts = 2;
    let provider = YooKassaProvider::new(settings).expect("provider");
    let err = provider
        .create_payment(&request(1_000))
        .await
        .expect_err("unreachable");
    assert!(
        matches!(
            err,
            ProviderError::ResultUnknown {
                last: TransientFailure::Connection(_),
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_tampered_amount_is_a_mismatch() {
    let shop = spawn().await;
    shop.emulator.push_fault(
        Fault::WrongAmount {
            amount: Amount {
                value: "1.00".into(),
                currency: "RUB".into(),
            },
        },
        1,
    );
    let err = shop
        .provider
        .create_payment(&request(19_900))
        .await
        .expect_err("mismatch");
    assert!(
        matches!(err, ProviderError::Mismatch(Mismatch::Amount { .. })),
        "{err}"
    );
    assert!(!err.is_result_unknown());
}
