//! The CryptoBot provider against the Crypto Pay emulator over loopback HTTP: invoices,
//! `getInvoices` as the status source, the webhook signature, refunds by `transfer`, and the
//! transport's retries.

use std::collections::BTreeMap;
use std::time::Duration;

use domain::PaymentId;
use domain::money::{Currency, Money};
use payment_core::providers::cryptobot::transformers::InvoicePayload;
use payment_core::providers::cryptobot::{CryptoBotProvider, CryptoBotSettings, SignatureError};
use payment_core::{
    Confirmation, CreatePaymentRequest, CreatedPayment, Mismatch, PaymentRef, PaymentStatus,
    ProviderError, RefundRequest, RejectionCode,
};
use rust_decimal::Decimal;
use sandbox::cryptobot::{self, Fault, Handle};
use serde_json::Value;
use uuid::Uuid;

const PAYER: i64 = 555_000_111;

async fn emulator() -> Handle {
    cryptobot::spawn(cryptobot::Config::default())
        .await
        .expect("emulator")
}

fn provider(api: &Handle) -> CryptoBotProvider {
    let mut settings = CryptoBotSettings::new(api.token());
    settings.api_url = api.api_url();
    settings.accepted_assets = vec!["USDT".into(), "TON".into()];
    settings.retry.initial_backoff = Duration::from_millis(10);
    settings.retry.max_backoff = Duration::from_millis(20);
    CryptoBotProvider::new(settings).expect("provider")
}

fn rub(minor: i64) -> Money {
    Money::new(minor, Currency::Rub)
}

fn request(amount: Money) -> CreatePaymentRequest {
    CreatePaymentRequest {
        payment_id: PaymentId::new(),
        amount,
        description: "VPN subscription: 1 month".into(),
        metadata: BTreeMap::from([("telegram_id".to_owned(), PAYER.to_string())]),
        return_url: None,
        receipt_email: None,
        recurring: Default::default(),
    }
}

fn reference(request: &CreatePaymentRequest, created: &CreatedPayment) -> PaymentRef {
    PaymentRef {
        payment_id: request.payment_id,
        provider_payment_id: created.provider_payment_id.clone(),
        amount: request.amount,
    }
}

fn invoice_id(created: &CreatedPayment) -> i64 {
    created.provider_payment_id.parse().expect("invoice id")
}

fn refund(payment: &PaymentRef, refund_id: Uuid, amount: Money) -> RefundRequest {
    RefundRequest {
        refund_id,
        payment: payment.clone(),
        payment_status: PaymentStatus::Succeeded,
        already_refunded: Money::new(0, amount.currency()),
        amount,
        reason: None,
    }
}

fn decimal(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

#[tokio::test]
async fn a_rub_payment_becomes_a_fiat_invoice_paid_through_the_bot_link() {
    let api = emulator().await;
    let provider = provider(&api);
    let ask = request(rub(19_900));
    let created = provider.create_invoice(&ask).await.expect("created");
    assert_eq!(created.status, PaymentStatus::Pending);
    assert_eq!(created.amount, rub(19_900));
    let invoice = api.invoice(invoice_id(&created)).expect("stored");
    assert_eq!(invoice["currency_type"], "fiat");
    assert_eq!(invoice["fiat"], "RUB");
    assert_eq!(invoice["amount"], "199");
    assert_eq!(
        invoice["accepted_assets"],
        serde_json::json!(["USDT", "TON"])
    );
    let payload =
        InvoicePayload::parse(invoice["payload"].as_str().expect("payload")).expect("ours");
    assert_eq!(payload.payment_id, ask.payment_id);
    assert_eq!(payload.telegram_id, Some(PAYER));
    assert_eq!(
        created.confirmation,
        Some(Confirmation::Redirect {
            url: invoice["bot_invoice_url"].as_str().expect("url").to_owned()
        })
    );
    let expires = created.expires_at.expect("expires");
    let ttl = expires - chrono::Utc::now();
    assert!(ttl > chrono::Duration::minutes(59) && ttl <= chrono::Duration::minutes(60));

    let usdt = provider
        .create_invoice(&request(Money::new(2_500_000, Currency::Usdt)))
        .await
        .expect("asset invoice");
    let invoice = api.invoice(invoice_id(&usdt)).expect("stored");
    assert_eq!(
        (
            &invoice["currency_type"],
            &invoice["asset"],
            &invoice["amount"]
        ),
        (
            &Value::from("crypto"),
            &Value::from("USDT"),
            &Value::from("2.5")
        )
    );
    assert!(matches!(
        provider
            .create_invoice(&request(Money::new(100, Currency::Xtr)))
            .await,
        Err(ProviderError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn get_invoices_tells_paid_expired_and_foreign_invoices_apart() {
    let api = emulator().await;
    let provider = provider(&api);
    let ask = request(rub(10_000));
    let created = provider.create_invoice(&ask).await.expect("created");
    let ours = reference(&ask, &created);
    let pending = provider.invoice_status(&ours).await.expect("status");
    assert_eq!(pending.status, PaymentStatus::Pending);
    api.pay(invoice_id(&created), Some("TON")).expect("paid");
    let paid = provider.invoice_status(&ours).await.expect("status");
    assert_eq!(paid.status, PaymentStatus::Succeeded);
    assert!(paid.paid_at.is_some());

    let late_ask = request(rub(10_000));
    let late = provider.create_invoice(&late_ask).await.expect("created");
    api.expire(invoice_id(&late)).expect("expired");
    let expired = provider
        .invoice_status(&reference(&late_ask, &late))
        .await
        .expect("status");
    assert_eq!(expired.status, PaymentStatus::Expired);
    assert!(
        api.pay(invoice_id(&late), None).is_err(),
        "an expired invoice cannot be paid"
    );

    // Our payment pointed at someone else's invoice, or a tampered amount: never a success.
    let other = PaymentRef {
        payment_id: PaymentId::new(),
        ..ours.clone()
    };
    assert!(matches!(
        provider.invoice_status(&other).await,
        Err(ProviderError::Mismatch(Mismatch::PaymentId { .. }))
    ));
    let cheaper = PaymentRef {
        amount: rub(100),
        ..ours.clone()
    };
    assert!(matches!(
        provider.invoice_status(&cheaper).await,
        Err(ProviderError::Mismatch(Mismatch::Amount { .. }))
    ));
    let missing = PaymentRef {
        provider_payment_id: "999999".into(),
        ..ours
    };
    assert!(matches!(
        provider.invoice_status(&missing).await,
        Err(ProviderError::Rejected(r)) if r.code == RejectionCode::NotFound
    ));
}

#[tokio::test]
async fn the_emulators_signed_update_verifies_and_a_forged_one_does_not() {
    let api = emulator().await;
    let provider = provider(&api);
    let ask = request(rub(10_000));
    let created = provider.create_invoice(&ask).await.expect("created");
    api.pay(invoice_id(&created), None).expect("paid");
    let delivery = api
        .wait_for_deliveries(1, Duration::from_secs(5))
        .await
        .pop()
        .expect("an update");
    let key = provider.signature_key();
    let body = delivery.body.as_bytes();
    assert_eq!(key.verify(Some(&delivery.signature), body), Ok(()));
    let parsed = payment_core::providers::cryptobot::webhook::parse(body).expect("parsed");
    assert_eq!(parsed.payment_id, Some(ask.payment_id));
    assert_eq!(parsed.invoice_id, invoice_id(&created));

    let forged = delivery.body.replace("\"100\"", "\"1\"");
    assert_ne!(forged, delivery.body);
    assert_eq!(
        key.verify(Some(&delivery.signature), forged.as_bytes()),
        Err(SignatureError::Mismatch)
    );
    let stranger =
        CryptoBotProvider::new(CryptoBotSettings::new("7777:someone-else")).expect("provider");
    assert_eq!(
        stranger
            .signature_key()
            .verify(Some(&delivery.signature), body),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(key.verify(None, body), Err(SignatureError::Missing));
}

#[tokio::test]
async fn a_refund_transfers_the_paid_asset_to_the_payer_once() {
    let api = emulator().await;
    let provider = provider(&api);
    let ask = request(rub(18_000));
    let created = provider.create_invoice(&ask).await.expect("created");
    api.pay(invoice_id(&created), Some("TON")).expect("paid");
    api.set_balance("TON", decimal("5")).expect("balance");
    let payment = reference(&ask, &created);
    let refund_id = Uuid::now_v7();
    let made = provider
        .refund_by_transfer(&refund(&payment, refund_id, rub(18_000)))
        .await
        .expect("refunded");
    assert_eq!(made.amount, rub(18_000));
    let again = provider
        .refund_by_transfer(&refund(&payment, refund_id, rub(18_000)))
        .await
        .expect("the same refund again");
    assert_eq!(again.provider_refund_id, made.provider_refund_id);
    let transfers = api.transfers();
    assert_eq!(transfers.len(), 1, "money moved once: {transfers:?}");
    // 180 RUB at 250 RUB/TON was 0.72 TON.
    assert_eq!(transfers[0]["amount"], "0.72");
    assert_eq!(transfers[0]["asset"], "TON");
    assert_eq!(transfers[0]["user_id"], PAYER.to_string());
    assert_eq!(
        transfers[0]["spend_id"],
        CryptoBotProvider::spend_id(refund_id)
    );
    assert_eq!(api.balance("TON"), decimal("4.28"));

    // A partial refund of a quarter returns a quarter of what was paid.
    let ask = request(rub(18_000));
    let created = provider.create_invoice(&ask).await.expect("created");
    api.pay(invoice_id(&created), Some("TON")).expect("paid");
    provider
        .refund_by_transfer(&refund(
            &reference(&ask, &created),
            Uuid::now_v7(),
            rub(4_500),
        ))
        .await
        .expect("partial");
    assert_eq!(api.transfers()[1]["amount"], "0.18");
}

#[tokio::test]
async fn a_refund_the_app_balance_cannot_cover_is_refused_and_sends_nothing() {
    let api = emulator().await;
    let provider = provider(&api);
    let ask = request(rub(9_000));
    let created = provider.create_invoice(&ask).await.expect("created");
    api.pay(invoice_id(&created), Some("USDT")).expect("paid");
    // 1 USDT paid, 3 % fee kept: the app holds 0.97 USDT.
    assert_eq!(api.balance("USDT"), decimal("0.97"));
    let refused = provider
        .refund_by_transfer(&refund(
            &reference(&ask, &created),
            Uuid::now_v7(),
            rub(9_000),
        ))
        .await
        .expect_err("refused");
    let ProviderError::Rejected(rejection) = &refused else {
        panic!("{refused:?}");
    };
    let text = rejection.description.clone().unwrap_or_default();
    assert!(text.starts_with("INSUFFICIENT_FUNDS"), "{text}");
    assert!(
        text.contains("0.97 USDT") && text.contains("needs 1 USDT"),
        "{text}"
    );
    assert!(api.transfers().is_empty());
    assert_eq!(api.balance("USDT"), decimal("0.97"));

    let unpaid_ask = request(rub(9_000));
    let unpaid = provider.create_invoice(&unpaid_ask).await.expect("created");
    let mut not_paid = refund(&reference(&unpaid_ask, &unpaid), Uuid::now_v7(), rub(9_000));
    not_paid.payment_status = PaymentStatus::Pending;
    assert!(matches!(
        provider.refund_by_transfer(&not_paid).await,
        Err(ProviderError::RefundRefused(_))
    ));
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_as_unknown_and_a_wrong_token_is_refused() {
    let api = emulator().await;
    let provider = provider(&api);
    api.push_fault(Fault::InternalError, 2);
    provider
        .create_invoice(&request(rub(10_000)))
        .await
        .expect("the third attempt");
    assert_eq!(api.invoices().len(), 1);
    api.push_fault(Fault::InternalErrorAfterProcessing, 3);
    let lost = provider.create_invoice(&request(rub(10_000))).await;
    assert!(matches!(&lost, Err(e) if e.is_result_unknown()), "{lost:?}");
    let mut settings = CryptoBotSettings::new("7777:wrong");
    settings.api_url = api.api_url();
    let stranger = CryptoBotProvider::new(settings).expect("provider");
    assert!(matches!(
        stranger.create_invoice(&request(rub(10_000))).await,
        Err(ProviderError::Rejected(r)) if r.code == RejectionCode::InvalidCredentials
    ));
}
