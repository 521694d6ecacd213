//! Full and partial refunds, YooKassa's rules checked before the call, idempotent retries.

use payment_core::providers::yookassa::YooKassaProvider;
use payment_core::{
    CreatePaymentRequest, PaymentProvider, PaymentStatus, ProviderError, RefundRefusal,
    RefundRequest, RefundStatus,
};
use sandbox::yookassa::Fault;
use uuid::Uuid;

use crate::helpers::{TestShop, payment_ref, posts, request, rub, spawn};

async fn paid(shop: &TestShop, minor: i64) -> (CreatePaymentRequest, String) {
    let req = request(minor);
    let id = shop
        .provider
        .create_payment(&req)
        .await
        .expect("created")
        .provider_payment_id;
    shop.emulator.pay(&id).expect("pay");
    (req, id)
}

fn refund(
    req: &CreatePaymentRequest,
    id: &str,
    status: PaymentStatus,
    refunded: i64,
    amount: i64,
) -> RefundRequest {
    RefundRequest {
        refund_id: Uuid::new_v4(),
        payment: payment_ref(req, id),
        payment_status: status,
        already_refunded: rub(refunded),
        amount: rub(amount),
        reason: Some("admin request".into()),
    }
}

#[tokio::test]
async fn partial_then_full_refund() {
    let shop = spawn().await;
    let (req, id) = paid(&shop, 10_000).await;

    let partial = shop
        .provider
        .refund(&refund(&req, &id, PaymentStatus::Succeeded, 0, 3_000))
        .await
        .expect("partial");
    assert_eq!(partial.status, RefundStatus::Succeeded);
    assert_eq!(partial.amount, rub(3_000));
    let status = shop
        .provider
        .get_payment_status(&payment_ref(&req, &id))
        .await
        .expect("status");
    assert_eq!(status.status, PaymentStatus::PartiallyRefunded);
    assert_eq!(status.refunded, rub(3_000));

    let rest = shop
        .provider
        .refund(&refund(
            &req,
            &id,
            PaymentStatus::PartiallyRefunded,
            3_000,
            7_000,
        ))
        .await
        .expect("rest");
    assert_eq!(rest.status, RefundStatus::Succeeded);
    let status = shop
        .provider
        .get_payment_status(&payment_ref(&req, &id))
        .await
        .expect("status");
    assert_eq!(status.status, PaymentStatus::Refunded);
    assert_eq!(status.refunded, rub(10_000));

    let fetched = shop
        .provider
        .fetch_refund(&rest.provider_refund_id)
        .await
        .expect("refund");
    assert_eq!(fetched.payment_id, id);
    assert_eq!(shop.emulator.refunds().len(), 2);
}

#[tokio::test]
async fn rules_are_enforced_before_the_call() {
    let shop = spawn().await;
    let (req, id) = paid(&shop, 10_000).await;
    let cases = [
        (
            refund(&req, &id, PaymentStatus::Pending, 0, 1_000),
            "pending",
        ),
        (
            refund(&req, &id, PaymentStatus::Succeeded, 0, 10_001),
            "more than paid",
        ),
        (
            refund(&req, &id, PaymentStatus::PartiallyRefunded, 5_000, 5_001),
            "more than left",
        ),
        (
            refund(&req, &id, PaymentStatus::Succeeded, 0, 9_950),
            "leaves 0.50 RUB",
        ),
        (
            refund(&req, &id, PaymentStatus::Succeeded, 0, 9_900),
            "leaves exactly 1.00 RUB",
        ),
        (refund(&req, &id, PaymentStatus::Succeeded, 0, 0), "zero"),
    ];
    for (case, why) in cases {
        let err = shop.provider.refund(&case).await.expect_err(why);
        assert!(
            matches!(err, ProviderError::RefundRefused(_)),
            "{why}: {err}"
        );
    }
    let mut stars = refund(&req, &id, PaymentStatus::Succeeded, 0, 100);
    stars.amount = domain::money::Money::new(100, domain::money::Currency::Xtr);
    assert!(matches!(
        shop.provider.refund(&stars).await,
        Err(ProviderError::RefundRefused(
            RefundRefusal::CurrencyMismatch { .. }
        ))
    ));
    assert!(
        posts(&shop.emulator, "/v3/refunds").is_empty(),
        "nothing was sent"
    );

    // Leaving 1.01 RUB is allowed.
    shop.provider
        .refund(&refund(&req, &id, PaymentStatus::Succeeded, 0, 9_899))
        .await
        .expect("leaves 1.01");
}

#[tokio::test]
async fn the_provider_has_the_last_word() {
    // Our records say succeeded, YooKassa knows it is still pending: its typed 400 comes back.
    let shop = spawn().await;
    let req = request(10_000);
    let id = shop
        .provider
        .create_payment(&req)
        .await
        .expect("created")
        .provider_payment_id;
    let err = shop
        .provider
        .refund(&refund(&req, &id, PaymentStatus::Succeeded, 0, 1_000))
        .await
        .expect_err("rejected");
    assert!(
        matches!(&err, ProviderError::Rejected(r) if r.http_status == 400),
        "{err}"
    );
}

#[tokio::test]
async fn a_retried_refund_returns_money_once() {
    let shop = spawn().await;
    let (req, id) = paid(&shop, 10_000).await;
    shop.emulator
        .push_fault(Fault::InternalErrorAfterProcessing, 1);
    let request = refund(&req, &id, PaymentStatus::Succeeded, 0, 10_000);
    let done = shop
        .provider
        .refund(&request)
        .await
        .expect("refund after retry");
    assert_eq!(done.amount, rub(10_000));
    assert_eq!(shop.emulator.refunds().len(), 1);
    let sent = posts(&shop.emulator, "/v3/refunds");
    assert_eq!(sent.len(), 2);
    let key = YooKassaProvider::refund_idempotence_key(request.refund_id);
    assert!(
        sent.iter()
            .all(|r| r.idempotence_key.as_deref() == Some(key.as_str()))
    );

    // The caller retrying the whole refund later (e.g. after ResultUnknown) also gets the
    // original refund back, even though our records still say nothing was refunded.
    let again = shop.provider.refund(&request).await.expect("same refund");
    assert_eq!(again.provider_refund_id, done.provider_refund_id);
    assert_eq!(shop.emulator.refunds().len(), 1);
}
