use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::CryptoInvoiceStatus;
use domain::money::{Currency, Money};
use payment_core::providers::crypto::{CryptoProvider, InvoiceError, MAX_TAG, invoice};
use payment_core::{
    Confirmation, CreatePaymentRequest, PaymentProvider, PaymentRef, PaymentService, PaymentStatus,
    ProviderError, ProviderId,
};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

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
    assert!((1..=MAX_TAG).contains(&tag), "tag {tag}");
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
    assert!((1..=MAX_TAG).contains(&tag), "tag {tag}");
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
        assert!((5_000_001..=5_000_000 + MAX_TAG).contains(&amount));
        assert!(amounts.insert(amount), "amount {amount} reserved twice");
    }
    assert_eq!(amounts.len(), 40);
}

/// Takes every tag of `price` with open invoices at `expires_at`, in one statement per table
/// (9,999 reservations one by one would take the test most of a minute). The rows are what
/// `reserve_invoice` writes: a pending crypto payment and an open invoice at `price + tag`.
async fn fill_all_tags(env: &crate::helpers::Env, price: i64, expires_at: DateTime<Utc>) {
    let user = payment(&env.db.conn, env.tariff_id, usdt(price)).await;
    let db = &env.db.conn;
    let user_id: i64 = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT user_id FROM payments WHERE id = $1",
            [user.into_inner().into()],
        ))
        .await
        .expect("query")
        .expect("row")
        .try_get("", "user_id")
        .expect("user");
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO payments (id, user_id, tariff_id, provider, amount_minor, currency, status, \
         idempotency_key, metadata, created_at, updated_at, refunded_minor, flagged, \
         check_attempts) \
         SELECT gen_random_uuid(), $1, $2, 'crypto', $3 + tag, 'USDT', 'pending', \
         'fill-' || tag, '{}', now(), now(), 0, false, 0 FROM generate_series(1, $4) AS tag",
        [
            user_id.into(),
            env.tariff_id.into(),
            price.into(),
            MAX_TAG.into(),
        ],
    ))
    .await
    .expect("payments");
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO crypto_invoices (payment_id, network, address, expected_minor, currency, \
         status, confirmations, expires_at, created_at, updated_at) \
         SELECT id, 'TRC20', $1, amount_minor, 'USDT', 'open', 0, $2, now(), now() \
         FROM payments WHERE idempotency_key LIKE 'fill-%' AND amount_minor - $3 BETWEEN 1 AND $4",
        [
            WALLET.into(),
            expires_at.into(),
            price.into(),
            MAX_TAG.into(),
        ],
    ))
    .await
    .expect("invoices");
}

#[tokio::test]
async fn all_tags_taken_is_a_clear_error() {
    let env = env().await;
    let price = 1_000_000;
    let now = Utc::now();
    fill_all_tags(&env, price, now + chrono::Duration::minutes(30)).await;
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
    // Another price a cent away still has room.
    env.invoice_at(price + 10_000, now).await;
}

/// Every tag of a price taken; the watcher ends the invoices whose late window has passed and
/// a tag is free at once; closing an unpaid invoice with its payment frees its tag too.
#[tokio::test]
async fn tags_are_free_again_when_invoices_close() {
    let env = env().await;
    let price = 1_000_000;
    let now = Utc::now();
    // Expired, and past the late window (60 min) and the cursor skew.
    fill_all_tags(&env, price, now - chrono::Duration::hours(3)).await;
    let id = payment(&env.db.conn, env.tariff_id, usdt(price)).await;
    let full = env
        .provider
        .reserve_invoice(&env.db.conn, id, usdt(price), now)
        .await;
    assert!(matches!(full, Err(InvoiceError::NoFreeTag(_))), "{full:?}");

    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(
        out.invoices.len(),
        MAX_TAG as usize,
        "every invoice expired"
    );
    let inv = env
        .provider
        .reserve_invoice(&env.db.conn, id, usdt(price), now)
        .await
        .expect("a tag is free once the invoices expired");
    assert!((1..=MAX_TAG).contains(&(inv.amount.minor() - price)));

    // An invoice closed with its payment (creation refused) frees its tag at once.
    assert!(
        invoice::close_unpaid(&env.db.conn, id, CryptoInvoiceStatus::Canceled, now)
            .await
            .expect("close")
    );
    assert_eq!(env.row(&inv).await.status, CryptoInvoiceStatus::Canceled);
    let other = payment(&env.db.conn, env.tariff_id, usdt(price)).await;
    env.provider
        .reserve_invoice(&env.db.conn, other, usdt(price), now)
        .await
        .expect("reserved");
    // Closing again changes nothing.
    assert!(
        !invoice::close_unpaid(&env.db.conn, id, CryptoInvoiceStatus::Canceled, now)
            .await
            .expect("close")
    );
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
        .get_payment_status(payment_core::providers::crypto::ID, &reference)
        .await
        .expect("status");
    assert_eq!(now.status, PaymentStatus::Pending);
    assert_eq!(now.amount, inv.amount);
    let wrong = PaymentRef {
        amount: usdt(3_000_000),
        ..reference.clone()
    };
    assert!(matches!(
        service
            .get_payment_status(payment_core::providers::crypto::ID, &wrong)
            .await,
        Err(ProviderError::Mismatch(_))
    ));

    // The trait's create_payment only describes the transfer of the reserved amount.
    let created = service
        .create_payment(
            payment_core::providers::crypto::ID,
            &CreatePaymentRequest {
                payment_id: inv.payment_id,
                amount: inv.amount,
                description: "VPN".into(),
                metadata: Default::default(),
                return_url: None,
                receipt_email: None,
                recurring: Default::default(),
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
        recurring: Default::default(),
    };
    assert!(matches!(
        service
            .create_payment(payment_core::providers::crypto::ID, &rub)
            .await,
        Err(ProviderError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn the_registry_enables_crypto_from_the_environment() {
    let vars = [
        ("CRYPTO_WALLET_ADDRESS", WALLET),
        ("CRYPTO_NETWORK", "TRC20"),
    ];
    let settings =
        payment_core::PaymentSettings::from_vars(&vars.into_iter().collect()).expect("settings");
    let service = PaymentService::from_settings(&settings).expect("service");
    assert!(service.is_enabled(payment_core::providers::crypto::ID));
    let d = service
        .provider(payment_core::providers::crypto::ID)
        .expect("crypto")
        .descriptor();
    assert_eq!(d.currencies, &[Currency::Usdt]);
    assert!(!d.supports_refunds);
    assert_eq!(
        "crypto".parse::<ProviderId>(),
        Ok(payment_core::providers::crypto::ID)
    );
}
