//! Happy path, status mapping, typed errors and answer checks.

use domain::PaymentId;
use domain::money::{Currency, Money};
use payment_core::providers::yookassa::YooKassaProvider;
use payment_core::{
    Confirmation, Mismatch, PaymentProvider, PaymentStatus, ProviderError, RejectionCode,
};
use sandbox::yookassa::{Config, Shop};

use crate::helpers::{SECRET, payment_ref, posts, request, rub, spawn, spawn_with};

#[tokio::test]
async fn create_pay_and_fetch_succeeded() {
    let shop = spawn().await;
    let req = request(19_900);
    let created = shop.provider.create_payment(&req).await.expect("created");
    assert_eq!(created.status, PaymentStatus::Pending);
    assert_eq!(created.amount, rub(19_900));
    assert!(created.test);
    let Some(Confirmation::Redirect { url }) = &created.confirmation else {
        panic!(
            "expected a redirect confirmation, got {:?}",
            created.confirmation
        );
    };
    assert_eq!(
        url,
        &format!(
            "{}/checkout/{}",
            shop.emulator.base_url(),
            created.provider_payment_id
        )
    );

    // What YooKassa received: one-stage capture, our return URL, our id in the metadata,
    // and the key derived from our payment id.
    let stored = shop
        .emulator
        .payment(&created.provider_payment_id)
        .expect("stored");
    assert_eq!(stored["amount"]["value"], "199.00");
    assert_eq!(stored["metadata"]["payment_id"], req.payment_id.to_string());
    assert_eq!(stored["metadata"]["tg_user_id"], "123456");
    assert_eq!(
        stored["confirmation"]["return_url"],
        "https://t.me/acp_test_bot"
    );
    assert_eq!(stored["description"], "VPN 30 days");
    let sent = posts(&shop.emulator, "/v3/payments");
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].idempotence_key.as_deref(),
        Some(YooKassaProvider::payment_idempotence_key(req.payment_id).as_str())
    );

    let reference = payment_ref(&req, &created.provider_payment_id);
    let pending = shop
        .provider
        .get_payment_status(&reference)
        .await
        .expect("pending");
    assert_eq!(pending.status, PaymentStatus::Pending);
    assert!(pending.paid_at.is_none());

    shop.emulator
        .pay(&created.provider_payment_id)
        .expect("pay");
    let paid = shop
        .provider
        .get_payment_status(&reference)
        .await
        .expect("paid");
    assert_eq!(paid.status, PaymentStatus::Succeeded);
    assert_eq!(paid.amount, rub(19_900));
    assert_eq!(paid.refunded, rub(0));
    assert!(paid.paid_at.is_some());
    assert!(paid.confirmation.is_none());
    // Autocapture: YooKassa itself never asks us to capture.
    let stored = shop
        .emulator
        .payment(&created.provider_payment_id)
        .expect("stored");
    assert_eq!(stored["status"], "succeeded");
}

#[tokio::test]
async fn creating_twice_is_one_payment() {
    let shop = spawn().await;
    let req = request(5_000);
    let first = shop.provider.create_payment(&req).await.expect("first");
    let second = shop.provider.create_payment(&req).await.expect("second");
    assert_eq!(first, second);
    assert_eq!(shop.emulator.payments().len(), 1);
}

#[tokio::test]
async fn declines_and_expiry_map_to_our_statuses() {
    let shop = spawn().await;
    let (a, b) = (request(1_000), request(1_000));
    let pa = shop
        .provider
        .create_payment(&a)
        .await
        .expect("a")
        .provider_payment_id;
    let pb = shop
        .provider
        .create_payment(&b)
        .await
        .expect("b")
        .provider_payment_id;
    shop.emulator
        .decline(&pa, "insufficient_funds")
        .expect("decline");
    shop.emulator.expire(&pb).expect("expire");
    let failed = shop
        .provider
        .get_payment_status(&payment_ref(&a, &pa))
        .await
        .expect("a");
    assert_eq!(failed.status, PaymentStatus::Failed);
    assert_eq!(failed.failure_reason.as_deref(), Some("insufficient_funds"));
    let expired = shop
        .provider
        .get_payment_status(&payment_ref(&b, &pb))
        .await
        .expect("b");
    assert_eq!(expired.status, PaymentStatus::Expired);
    assert_eq!(
        expired.failure_reason.as_deref(),
        Some("expired_on_confirmation")
    );
}

#[tokio::test]
async fn test_objects_are_refused_when_test_mode_is_off() {
    // A test shop's answers while we think we talk to a live shop.
    let shop = spawn_with(Config::default(), |s| s.test_mode = false).await;
    let err = shop
        .provider
        .create_payment(&request(1_000))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ProviderError::TestObjectRefused { .. }),
        "{err}"
    );

    // A live shop with test mode off is fine.
    let live = spawn_with(
        Config {
            shops: vec![Shop::new("100500", SECRET, false)],
            ..Config::default()
        },
        |s| s.test_mode = false,
    )
    .await;
    let created = live
        .provider
        .create_payment(&request(1_000))
        .await
        .expect("live");
    assert!(!created.test);
}

#[tokio::test]
async fn answers_are_checked_against_our_payment() {
    let shop = spawn().await;
    let req = request(19_900);
    let created = shop.provider.create_payment(&req).await.expect("created");
    let good = payment_ref(&req, &created.provider_payment_id);

    let mut cheaper = good.clone();
    cheaper.amount = rub(100);
    let err = shop
        .provider
        .get_payment_status(&cheaper)
        .await
        .expect_err("amount");
    assert!(
        matches!(err, ProviderError::Mismatch(Mismatch::Amount { expected, actual })
            if expected == rub(100) && actual == rub(19_900)),
        "{err}"
    );

    let mut stars = good.clone();
    stars.amount = Money::new(199, Currency::Xtr);
    let err = shop
        .provider
        .get_payment_status(&stars)
        .await
        .expect_err("currency");
    assert!(
        matches!(err, ProviderError::Mismatch(Mismatch::Currency { .. })),
        "{err}"
    );

    let mut foreign = good.clone();
    foreign.payment_id = PaymentId::new();
    let err = shop
        .provider
        .get_payment_status(&foreign)
        .await
        .expect_err("payment id");
    assert!(
        matches!(err, ProviderError::Mismatch(Mismatch::PaymentId { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn provider_errors_are_typed() {
    let shop = spawn_with(Config::default(), |s| {
        s.secret_key = "wrong".to_owned().into()
    })
    .await;
    let err = shop
        .provider
        .create_payment(&request(1_000))
        .await
        .expect_err("401");
    let ProviderError::Rejected(rejection) = err else {
        panic!("expected a rejection, got {err}");
    };
    assert_eq!(rejection.http_status, 401);
    assert_eq!(rejection.code, RejectionCode::InvalidCredentials);
    assert!(rejection.error_id.is_some());
    assert_eq!(
        posts(&shop.emulator, "/v3/payments").len(),
        1,
        "a 4xx is not retried"
    );

    let shop = spawn().await;
    let req = request(1_000);
    let err = shop
        .provider
        .get_payment_status(&payment_ref(&req, "22e12f66-000f-5000-8000-18db351245c7"))
        .await
        .expect_err("404");
    assert!(
        matches!(&err, ProviderError::Rejected(r) if r.http_status == 404 && r.code == RejectionCode::NotFound),
        "{err}"
    );

    // Our own limits are enforced before anything is sent.
    let mut crowded = request(1_000);
    crowded.metadata = (0..16).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let err = shop
        .provider
        .create_payment(&crowded)
        .await
        .expect_err("metadata");
    assert!(matches!(err, ProviderError::InvalidRequest(_)), "{err}");
    let err = shop
        .provider
        .create_payment(&payment_core::CreatePaymentRequest {
            amount: Money::new(100, Currency::Xtr),
            ..request(1)
        })
        .await
        .expect_err("currency");
    assert!(matches!(err, ProviderError::InvalidRequest(_)), "{err}");
    assert!(posts(&shop.emulator, "/v3/payments").is_empty());
}

#[tokio::test]
async fn long_descriptions_are_cut_and_receipts_sent() {
    let shop = spawn_with(Config::default(), |s| {
        s.receipt = Some(payment_core::providers::yookassa::ReceiptSettings {
            customer_email: Some("shop@example.com".into()),
            customer_phone: None,
            vat_code: 1,
            tax_system_code: None,
            payment_subject: "service".into(),
            payment_mode: "full_payment".into(),
        });
    })
    .await;
    let mut req = request(29_900);
    req.description = "Подписка ".repeat(30);
    let created = shop.provider.create_payment(&req).await.expect("created");
    let stored = shop
        .emulator
        .payment(&created.provider_payment_id)
        .expect("stored");
    assert_eq!(
        stored["description"].as_str().expect("d").chars().count(),
        128
    );
    // The emulator validates the receipt (contact, VAT code, item sum) and marks it pending.
    assert_eq!(stored["receipt_registration"], "pending");
}
