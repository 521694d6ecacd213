//! The chain-watch loop: a confirmed USDT transfer on the TronGrid emulator completes the
//! crypto payment through the worker's transition code.

use std::time::Duration;

use chrono::Utc;
use domain::PaymentStatus;
use domain::entities::payments;
use domain::money::{Currency, Money};
use payment_core::RetryPolicy;
use payment_core::providers::crypto::{CryptoProvider, CryptoSettings, TronAddress};
use sandbox::tron;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, IntoActiveModel};
use uuid::Uuid;

use crate::helpers::*;

/// Our wallet.
const WALLET: &str = "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE";
/// A payer.
const PAYER: &str = "TNtbiqvanUnm4YHK9SYzRGR8ktiHRduDbM";

fn crypto_settings(chain: &tron::Handle) -> CryptoSettings {
    let mut s = CryptoSettings::new(TronAddress::parse(WALLET).expect("wallet"));
    s.api_url = chain.base_url.clone();
    s.poll_interval = Duration::from_millis(100);
    s.retry = RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
    };
    s
}

#[tokio::test]
async fn a_chain_transfer_completes_the_crypto_payment_once() {
    let env = env().await;
    let db = &env.db.conn;
    let chain = tron::spawn(tron::Config::default())
        .await
        .expect("emulator");
    let crypto = crypto_settings(&chain);

    // The gateway's creation: the payment row, its invoice, the invoice amount on the payment.
    let price = Money::new(2_500_000, Currency::Usdt);
    let payment = insert_payment(db, Uuid::now_v7(), price, None, |p| {
        p.provider = Set("crypto".into());
    })
    .await;
    let provider = CryptoProvider::new(crypto.clone()).expect("provider");
    let invoice = provider
        .reserve_invoice(db, payment.payment_id(), price, Utc::now())
        .await
        .expect("reserved");
    let mut row: payments::ActiveModel = payment.clone().into_active_model();
    row.amount_minor = Set(invoice.amount.minor());
    row.provider_payment_id = Set(Some(payment.id.to_string()));
    row.expires_at = Set(Some(invoice.expires_at));
    row.update(db).await.expect("invoice amount stored");

    chain.add_transfer(
        tron::NewTransfer::usdt(PAYER, WALLET, invoice.amount.minor())
            .at(Utc::now().timestamp_millis()),
    );

    let mut settings = worker_settings(&env.shop, &[]);
    settings.payments.crypto = Some(crypto);
    let prefix = testkit::unique_prefix("pwcrypto");
    let worker = start_worker(&env.db.url, &prefix, &settings).await;

    let done = eventually(Duration::from_secs(15), || async {
        reload(db, payment.id).await.status == PaymentStatus::Succeeded
    })
    .await;
    assert!(done, "the payment is completed by the chain watcher");
    // More polls see the same transfer again and change nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await;

    let completed = events(db, "payment.completed", payment.id).await;
    assert_eq!(completed.len(), 1, "exactly one payment.completed");
    assert!(completed[0].payload["processing_ms"].is_i64());
    let log = logs(db, "payment.completed", payment.id).await;
    assert_eq!(log.len(), 1);
    let metadata = log[0].metadata.clone().expect("metadata");
    assert_eq!(metadata["trigger"], "chain_watch");
    assert_eq!(metadata["invoice_id"], invoice.invoice_id);
    let paid = reload(db, payment.id).await;
    assert!(paid.completed_at.is_some());
    assert!(!paid.flagged);
    chain.stop().await;
}
