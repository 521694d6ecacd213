use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::Utc;
use domain::CryptoInvoiceStatus;
use domain::money::{Currency, Money};
use payment_core::providers::crypto::{CryptoProvider, InvoiceError};
use payment_core::{
    Confirmation, CreatePaymentRequest, PaymentProvider, PaymentRef, PaymentService, PaymentStatus,
    ProviderError, ProviderId,
};
use sea_orm::TransactionTrait;

use crate::helpers::{WALLET, env, payment, usdt};

#[tokio::test]
async fn an_invoice_asks_price_plus_a_tag_and_is_idempotent() {
    let env = env().await;
    let now = Utc::now();
    let id = payment(&env.db.conn, env.tariff_id, usdt(2_000_000)).await;
    let inv = env
        .provider
        .reserve_invoice(&env.db.conn, id, usdt(2_000_000), now)
        .await
        .expect("reserved");
    let tag = inv.amount.minor() - 2_000_000;
    assert!((1..=999).contains(&tag), "tag {tag}");
    assert_eq!(inv.address, WALLET);
    assert_eq!(inv.network, "TRC20");
    assert_eq!(inv.expires_at, now + chrono::Duration::minutes(30));
    assert_eq!(
        inv.confirmation(),
        Confirmation::Transfer {
            network: "TRC20".into(),
            address: WALLET.into(),
            amount: inv.amount,
            expires_at: Some(inv.expires_at),
        }
    );
    let again = env
        .provider
        .reserve_invoice(&env.db.conn, id, usdt(2_000_000), Utc::now())
        .await
        .expect("same");
    assert_eq!(again.invoice_id, inv.invoice_id);
    assert_eq!(again.amount, inv.amount);
    let row = env.row(&inv).await;
    assert_eq!(row.status, CryptoInvoiceStatus::Open);
    assert_eq!(row.expected_minor, inv.amount.minor());
    assert_eq!(row.currency, Currency::Usdt);
}

#[tokio::test]
async fn a_rub_price_is_converted_at_the_fixed_rate() {
    let env = env().await;
    let id = payment(&env.db.conn, env.tariff_id, usdt(1)).await;
    let rub = Money::parse("199.00", Currency::Rub).expect("rub");
    let inv = env
        .provider
        .reserve_invoice(&env.db.conn, id, rub, Utc::now())
        .await
        .expect("reserved");
    // 199.00 / 95.50 = 2.083769… → 2.083770 USDT, plus the tag.
    let tag = inv.amount.minor() - 2_083_770;
    assert!((1..=999).contains(&tag), "tag {tag}");
    let stars = env
        .provider
        .reserve_invoice(&env.db.conn, id, Money::new(100, Currency::Xtr), Utc::now())
        .await;
    assert!(matches!(stars, Err(InvoiceError::Quote(_))), "{stars:?}");
}

/// Many checkouts at once, each in its own transaction: every open invoice gets its own
/// amount.
#[tokio::test]
async fn concurrent_reservations_get_distinct_amounts() {
    let env = env().await;
    let provider = Arc::new(env.provider);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let db = env.db.conn.clone();
        let provider = Arc::clone(&provider);
        let tariff_id = env.tariff_id;
        tasks.push(tokio::spawn(async move {
            let txn = db.begin().await.expect("begin");
            let id = payment(&txn, tariff_id, usdt(5_000_000)).await;
            let inv = provider
                .reserve_invoice(&txn, id, usdt(5_000_000), Utc::now())
                .await
                .expect("reserved");
            // Hold the transaction a moment so the reservations really overlap.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            txn.commit().await.expect("commit");
            inv.amount.minor()
        }));
    }
    let mut amounts = BTreeSet::new();
    for t in tasks {
        let amount = t.await.expect("task");
        assert!((5_000_001..=5_000_999).contains(&amount));
        assert!(amounts.insert(amount), "amount {amount} reserved twice");
    }
    assert_eq!(amounts.len(), 40);
}

#[tokio::test]
async fn all_tags_taken_is_a_clear_error() {
    let env = env().await;
    let price = 1_000_000;
    let now = Utc::now();
    for _ in 0..999 {
        env.invoice_at(price, now).await;
    }
    let id = payment(&env.db.conn, env.tariff_id, usdt(price)).await;
    let err = env
        .provider
        .reserve_invoice(&env.db.conn, id, usdt(price), now)
        .await
        .expect_err("full");
    assert!(
        matches!(err, InvoiceError::NoFreeTag(p) if p == usdt(price)),
        "{err}"
    );
    // Another price still has room.
    env.invoice_at(price + 10_000, now).await;
}

#[tokio::test]
async fn status_is_read_from_the_invoice_row() {
    let env = env().await;
    let inv = env.invoice(3_000_000).await;
    let service = PaymentService::from_providers([Arc::new(
        CryptoProvider::new(env.provider.settings().clone()).expect("provider"),
    ) as Arc<dyn PaymentProvider>]);
    let reference = PaymentRef {
        payment_id: inv.payment_id,
        provider_payment_id: inv.payment_id.to_string(),
        amount: inv.amount,
    };
    let now = service
        .get_payment_status(ProviderId::Crypto, &reference)
        .await
        .expect("status");
    assert_eq!(now.status, PaymentStatus::Pending);
    assert_eq!(now.amount, inv.amount);
    let wrong = PaymentRef {
        amount: usdt(3_000_000),
        ..reference.clone()
    };
    assert!(matches!(
        service.get_payment_status(ProviderId::Crypto, &wrong).await,
        Err(ProviderError::Mismatch(_))
    ));

    // The trait's create_payment only describes the transfer of the reserved amount.
    let created = service
        .create_payment(
            ProviderId::Crypto,
            &CreatePaymentRequest {
                payment_id: inv.payment_id,
                amount: inv.amount,
                description: "VPN".into(),
                metadata: Default::default(),
                return_url: None,
                receipt_email: None,
            },
        )
        .await
        .expect("created");
    assert_eq!(created.amount, inv.amount);
    assert!(matches!(
        created.confirmation,
        Some(Confirmation::Transfer { .. })
    ));
    let rub = CreatePaymentRequest {
        payment_id: inv.payment_id,
        amount: Money::new(19_900, Currency::Rub),
        description: "VPN".into(),
        metadata: Default::default(),
        return_url: None,
        receipt_email: None,
    };
    assert!(matches!(
        service.create_payment(ProviderId::Crypto, &rub).await,
        Err(ProviderError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn the_registry_enables_crypto_from_the_environment() {
    let vars = [
        ("CRYPTO_WALLET_ADDRESS", WALLET),
        ("CRYPTO_NETWORK", "TRC20"),
    ];
    let settings = payment_core::PaymentSettings::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    })
    .expect("settings");
    let service = PaymentService::from_settings(&settings).expect("service");
    assert!(service.is_enabled(ProviderId::Crypto));
    let d = service
        .provider(ProviderId::Crypto)
        .expect("crypto")
        .descriptor();
    assert_eq!(d.currencies, &[Currency::Usdt]);
    assert!(!d.supports_refunds);
    assert_eq!("crypto".parse::<ProviderId>(), Ok(ProviderId::Crypto));
}
