//! The chain-watch loop: a confirmed USDT transfer on the TronGrid emulator completes the
//! crypto payment through the worker's transition code; a short transfer (the price without
//! the tag) is announced once;
//! a crypto notice only makes the worker ask the chain.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::entities::{crypto_invoices, payments};
use domain::money::{Currency, Money};
use domain::{CryptoInvoiceStatus, PaymentId, PaymentStatus};
use messaging::Event;
use messaging::events::PaymentUnderpaid;
use payment_core::providers::crypto::{
    CryptoProvider, CryptoSettings, LatePolicy, ReservedInvoice, TronAddress,
};
use payment_core::{HttpRetry, PaymentService, PaymentSettings};
use payment_worker::{ReconcileSettings, Reconciler};
use sandbox::tron;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait, IntoActiveModel,
};
use tokio::sync::Notify;

use crate::helpers::*;
use crate::in_process::{Bench, bench};

/// Our wallet.
const WALLET: &str = "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE";
/// A payer.
const PAYER: &str = "TNtbiqvanUnm4YHK9SYzRGR8ktiHRduDbM";
/// The price of every crypto payment here (micro-USDT); invoices ask it plus a tag.
const PRICE: i64 = 2_500_000;

fn crypto_settings(chain: &tron::Handle) -> CryptoSettings {
    let mut s = CryptoSettings::new(TronAddress::parse(WALLET).expect("wallet"));
    s.api_url = chain.base_url.clone();
    s.poll_interval = Duration::from_millis(100);
    s.retry = HttpRetry {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
    };
    s
}

/// The gateway's creation of a crypto payment as of `created`: the payment row, its invoice,
/// the invoice amount on the payment.
async fn crypto_payment_at(
    db: &DatabaseConnection,
    crypto: &CryptoSettings,
    created: DateTime<Utc>,
) -> (payments::Model, ReservedInvoice) {
    let price = Money::new(PRICE, Currency::Usdt);
    let payment = insert_payment(db, PaymentId::new(), price, None, |p| {
        p.provider = Set(payment_core::providers::crypto::ID);
    })
    .await;
    let provider = CryptoProvider::new(crypto.clone()).expect("provider");
    let invoice = provider
        .reserve_invoice(db, payment.id, price, created)
        .await
        .expect("reserved");
    let mut row: payments::ActiveModel = payment.clone().into_active_model();
    row.amount_minor = Set(invoice.amount.minor());
    row.provider_payment_id = Set(Some(payment.id.to_string()));
    row.expires_at = Set(Some(invoice.expires_at));
    let payment = row.update(db).await.expect("invoice amount stored");
    (payment, invoice)
}

/// The TronGrid emulator, a crypto payment (created at `created`) and a worker watching the
/// chain, with `tweak`ed crypto settings.
struct Watching {
    chain: tron::Handle,
    payment: payments::Model,
    invoice: ReservedInvoice,
    worker: Running,
}

/// Where the worker runs.
enum Running {
    /// Its own process's infrastructure on RabbitMQ (declared under the prefix).
    Rabbit(RunningWorker, String),
    /// The in-process bus (the standalone mode's transport).
    InProcess(Bench),
}

/// A worker on PostgreSQL and RabbitMQ.
async fn watching(
    env: &Env,
    created: DateTime<Utc>,
    tweak: impl FnOnce(&mut CryptoSettings),
) -> Watching {
    watching_on(env, created, tweak, false).await
}

async fn watching_on(
    env: &Env,
    created: DateTime<Utc>,
    tweak: impl FnOnce(&mut CryptoSettings),
    in_process: bool,
) -> Watching {
    let chain = tron::spawn(tron::Config::default())
        .await
        .expect("emulator");
    let mut crypto = crypto_settings(&chain);
    tweak(&mut crypto);
    let (payment, invoice) = crypto_payment_at(&env.db.conn, &crypto, created).await;
    let mut settings = worker_settings(&env.shop, &[]);
    settings.payments.crypto = Some(crypto);
    let worker = if in_process {
        Running::InProcess(bench(env, &settings, 1).await)
    } else {
        let prefix = testkit::unique_prefix("pwcrypto");
        Running::Rabbit(start_worker(&env.db.url, &prefix, &settings).await, prefix)
    };
    Watching {
        chain,
        payment,
        invoice,
        worker,
    }
}

impl Watching {
    /// `value` micro-USDT from the payer, confirmed, `ago` before now.
    fn pay(&self, value: i64, ago: chrono::Duration) -> String {
        self.chain.add_transfer(
            tron::NewTransfer::usdt(PAYER, WALLET, value).at((Utc::now() - ago).timestamp_millis()),
        )
    }

    async fn reaches(&self, db: &DatabaseConnection, status: PaymentStatus) -> bool {
        eventually(Duration::from_secs(15), || async {
            reload(db, self.payment.id).await.status == status
        })
        .await
    }

    /// Wakes the outbox relay (a notice was stored).
    fn nudge(&self) {
        match &self.worker {
            Running::Rabbit(worker, _) => worker.nudge(),
            Running::InProcess(bench) => bench.nudge.notify_one(),
        }
    }

    async fn stop(self) {
        match self.worker {
            Running::Rabbit(worker, prefix) => {
                worker.stop().await;
                delete_topology(&prefix).await;
            }
            Running::InProcess(bench) => {
                bench.stop().await;
            }
        }
        self.chain.stop().await;
    }
}

#[tokio::test]
async fn a_chain_transfer_completes_the_crypto_payment_once() {
    let env = env().await;
    let db = &env.db.conn;
    let w = watching(&env, Utc::now(), |_| {}).await;
    w.pay(w.invoice.amount.minor(), chrono::Duration::zero());
    assert!(
        w.reaches(db, PaymentStatus::Succeeded).await,
        "the payment is completed by the chain watcher"
    );
    // More polls see the same transfer again and change nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (payment, invoice) = (w.payment.clone(), w.invoice.clone());
    w.stop().await;

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
}

/// A crypto notice as the gateway stores it (inbox row + `provider.notification.crypto`).
async fn crypto_notice(
    db: &DatabaseConnection,
    payment: &payments::Model,
    tx_id: &str,
) -> messaging::Envelope {
    let body = serde_json::json!({
        "event": "transfer.detected",
        "tx_id": tx_id,
        "payment_id": payment.id,
        "network": "TRC20",
        "address": WALLET,
    });
    store_notification(
        db,
        &payment_core::providers::crypto::ID,
        &format!("transfer.detected:{tx_id}"),
        None,
        Some(payment.id),
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn a_forged_notice_changes_nothing_and_a_real_one_is_checked_on_chain() {
    notices(env().await, false).await;
}

/// The standalone mode's database and bus: the consumer's transaction holds SQLite's write
/// lock, so the chain check must (and does) run outside it.
#[tokio::test]
async fn crypto_notices_are_checked_on_chain_on_sqlite_and_the_in_process_bus() {
    notices(sqlite_env().await, true).await;
}

async fn notices(env: Env, in_process: bool) {
    let db = &env.db.conn;
    // The loop polls once at start, then waits an hour: only a notice can wake it.
    let tweak = |c: &mut CryptoSettings| c.poll_interval = Duration::from_secs(3600);
    let w = watching_on(&env, Utc::now(), tweak, in_process).await;
    let first_poll = eventually(Duration::from_secs(15), || async {
        w.chain.request_count(tron::route::TRC20_HISTORY) >= 1
    })
    .await;
    assert!(first_poll, "the loop polled at start");

    // Forged: signed (the gateway checked that), but the chain does not know the transaction.
    let forged = crypto_notice(db, &w.payment, &"ab".repeat(32)).await;
    w.nudge();
    let checked = eventually(Duration::from_secs(15), || async {
        inbox_row(db, &forged).await.processed_at.is_some()
    })
    .await;
    assert!(checked, "the forged notice is checked");
    assert_eq!(
        inbox_row(db, &forged).await.outcome.as_deref(),
        Some("not_on_chain")
    );
    assert_eq!(
        w.chain.request_count(tron::route::TX_INFO),
        1,
        "asked the chain"
    );
    assert_eq!(
        w.chain.request_count(tron::route::TRC20_HISTORY),
        1,
        "an unknown transaction does not even start a poll"
    );
    let unchanged = reload(db, w.payment.id).await;
    assert_eq!(unchanged.status, PaymentStatus::Pending);
    assert!(!unchanged.flagged);
    assert!(
        events(db, "payment.completed", w.payment.id)
            .await
            .is_empty()
    );

    // Real: the payer's transfer is confirmed and a notice names it.
    let tx = w.pay(w.invoice.amount.minor(), chrono::Duration::zero());
    let real = crypto_notice(db, &w.payment, &tx).await;
    w.nudge();
    assert!(
        w.reaches(db, PaymentStatus::Succeeded).await,
        "the notice made the worker look, and the chain pays the invoice"
    );
    let closed = eventually(Duration::from_secs(5), || async {
        inbox_row(db, &real).await.processed_at.is_some()
    })
    .await;
    assert!(closed);
    assert_eq!(
        inbox_row(db, &real).await.outcome.as_deref(),
        Some("chain_checked")
    );
    let payment = w.payment.clone();
    w.stop().await;
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
    let log = logs(db, "payment.completed", payment.id).await;
    assert_eq!(
        log[0].metadata.clone().expect("metadata")["trigger"],
        "chain_watch"
    );
}

/// Whether the payer was told a shortfall (`payment.underpaid`) within 15 s.
async fn announced(db: &DatabaseConnection, payment_id: PaymentId) -> bool {
    eventually(Duration::from_secs(15), || async {
        !events(db, PaymentUnderpaid::EVENT_TYPE, payment_id)
            .await
            .is_empty()
    })
    .await
}

/// The payer sends the price without the tag: told the shortfall once; the tag completes it.
#[tokio::test]
async fn a_short_transfer_is_announced_once_and_a_top_up_completes() {
    let env = env().await;
    let db = &env.db.conn;
    let w = watching(&env, Utc::now(), |_| {}).await;
    let (payment, due) = (w.payment.clone(), w.invoice.amount.minor());

    let tx = w.pay(PRICE, chrono::Duration::zero());
    assert!(
        announced(db, payment.id).await,
        "the payer is told the shortfall"
    );
    // Every poll reads the same transfer again (the cursor keeps a skew): no second notice.
    let polls = w.chain.request_count(tron::route::TRC20_HISTORY);
    let more = eventually(Duration::from_secs(15), || async {
        w.chain.request_count(tron::route::TRC20_HISTORY) >= polls + 5
    })
    .await;
    assert!(more);
    let short = events(db, PaymentUnderpaid::EVENT_TYPE, payment.id).await;
    assert_eq!(short.len(), 1, "once per transfer");
    let event: PaymentUnderpaid = short[0].decode().expect("payment.underpaid");
    assert_eq!(event.received_minor, PRICE);
    assert_eq!(event.shortfall_minor, due - PRICE);
    assert_eq!(event.payment.amount_minor, due);
    assert_eq!(event.payment.currency, "USDT");
    assert_eq!(event.tx_id, tx);
    assert!(
        (event.pay_before - w.invoice.expires_at)
            .num_milliseconds()
            .abs()
            < 1
    );
    assert_eq!(reload(db, payment.id).await.status, PaymentStatus::Pending);
    assert_eq!(
        logs(db, PaymentUnderpaid::EVENT_TYPE, payment.id)
            .await
            .len(),
        1
    );

    w.pay(due - PRICE, chrono::Duration::zero());
    assert!(
        w.reaches(db, PaymentStatus::Succeeded).await,
        "the missing tag completes the payment"
    );
    w.stop().await;
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
    assert_eq!(
        events(db, PaymentUnderpaid::EVENT_TYPE, payment.id)
            .await
            .len(),
        1
    );
}

/// The price without the tag, then the whole amount: the exact amount completes the payment
/// and the first transfer is the surplus.
#[tokio::test]
async fn an_overpayment_completes_and_the_surplus_is_recorded() {
    let env = env().await;
    let db = &env.db.conn;
    let w = watching(&env, Utc::now(), |_| {}).await;
    let (payment, due) = (w.payment.clone(), w.invoice.amount.minor());
    w.pay(PRICE, chrono::Duration::zero());
    assert!(
        announced(db, payment.id).await,
        "the first transfer is a partial payment"
    );
    w.pay(due, chrono::Duration::zero());
    let sent = PRICE + due;
    assert!(
        w.reaches(db, PaymentStatus::Succeeded).await,
        "the exact amount completes the payment"
    );
    w.stop().await;
    let paid = reload(db, payment.id).await;
    assert!(!paid.flagged, "{:?}", paid.flag_reason);
    assert_eq!(paid.amount_minor, due, "the price stays the price");
    let surplus = logs(
        db,
        payment_core::providers::crypto::OVERPAID_EVENT,
        payment.id,
    )
    .await;
    assert_eq!(surplus.len(), 1);
    let metadata = surplus[0].metadata.clone().expect("metadata");
    assert_eq!(metadata["surplus_minor"], PRICE);
    assert_eq!(metadata["received_minor"], sent);
    assert_eq!(events(db, "payment.completed", payment.id).await.len(), 1);
}

/// Invoice expired ten minutes ago; the full amount arrives five minutes ago, inside the
/// late window: completed under `complete`, flagged for an admin (not completed) under `flag`.
async fn late_transfer(policy: LatePolicy) -> (payments::Model, Vec<messaging::Envelope>) {
    let env = env().await;
    let db = &env.db.conn;
    let created = Utc::now() - chrono::Duration::minutes(40);
    let w = watching(&env, created, |c| c.late_policy = policy).await;
    w.pay(w.invoice.amount.minor(), chrono::Duration::minutes(5));
    let settled = eventually(Duration::from_secs(15), || async {
        reload(db, w.payment.id).await.status != PaymentStatus::Pending
    })
    .await;
    assert!(settled, "the late transfer is settled");
    let payment = w.payment.clone();
    w.stop().await;
    let completed = events(db, "payment.completed", payment.id).await;
    (reload(db, payment.id).await, completed)
}

#[tokio::test]
async fn a_late_transfer_completes_under_the_complete_policy() {
    let (payment, completed) = late_transfer(LatePolicy::Complete).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    assert!(!payment.flagged);
    assert_eq!(completed.len(), 1);
}

#[tokio::test]
async fn a_late_transfer_is_flagged_not_completed_under_the_flag_policy() {
    let (payment, completed) = late_transfer(LatePolicy::Flag).await;
    assert_ne!(payment.status, PaymentStatus::Succeeded);
    assert!(payment.flagged);
    assert!(
        payment
            .flag_reason
            .as_deref()
            .is_some_and(|r| r.contains("late crypto transfer")),
        "{:?}",
        payment.flag_reason
    );
    assert!(completed.is_empty());
}

/// A crypto checkout that never finished creating (the gateway stopped after reserving the
/// invoice): reconciliation expires the payment and, through the provider's
/// `release_checkout`, expires its invoice at once, so its tag is free for other customers.
#[tokio::test]
async fn a_half_made_crypto_checkout_expires_and_frees_its_tag() {
    let env = env().await;
    let db = &env.db.conn;
    let chain = tron::spawn(tron::Config::default())
        .await
        .expect("emulator");
    let crypto = crypto_settings(&chain);
    let long_ago = Utc::now() - chrono::Duration::hours(1);
    let price = Money::new(PRICE, Currency::Usdt);
    let payment = insert_payment(db, PaymentId::new(), price, None, |p| {
        p.provider = Set(payment_core::providers::crypto::ID);
        p.created_at = Set(long_ago);
        p.next_check_at = Set(Some(Utc::now() - chrono::Duration::seconds(1)));
    })
    .await;
    assert!(
        payment.is_half_made(),
        "no provider id: creation never finished"
    );
    let provider = CryptoProvider::new(crypto.clone()).expect("provider");
    let invoice = provider
        .reserve_invoice(db, payment.id, price, long_ago)
        .await
        .expect("reserved");
    let open = |id| async move {
        crypto_invoices::Entity::find_by_id(id)
            .one(db)
            .await
            .expect("read")
            .expect("invoice")
            .status
    };
    assert_eq!(open(invoice.invoice_id).await, CryptoInvoiceStatus::Open);

    let payments = PaymentSettings {
        crypto: Some(crypto.with_database(db.clone())),
        ..PaymentSettings::default()
    };
    Reconciler::new(
        db.clone(),
        Arc::new(PaymentService::from_settings(&payments).expect("service")),
        ReconcileSettings::default(),
        Arc::new(Notify::new()),
    )
    .run_once()
    .await
    .expect("reconcile");

    assert_eq!(reload(db, payment.id).await.status, PaymentStatus::Expired);
    assert_eq!(open(invoice.invoice_id).await, CryptoInvoiceStatus::Expired);
    chain.stop().await;
}
