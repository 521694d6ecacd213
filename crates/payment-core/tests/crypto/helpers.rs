use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::entities::{crypto_invoices, payments, tariffs, users};
use domain::money::{Currency, Money};
use domain::{PaymentId, PaymentStatus};
use payment_core::HttpRetry;
use payment_core::providers::crypto::{
    ChainWatcher, CryptoProvider, CryptoSettings, LatePolicy, ReservedInvoice, TronAddress,
};
use sandbox::tron;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait, NotSet};
use testkit::TestDb;

/// Our wallet.
pub const WALLET: &str = "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE";
/// A payer.
pub const PAYER: &str = "TNtbiqvanUnm4YHK9SYzRGR8ktiHRduDbM";
/// Another payer.
pub const PAYER2: &str = "TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf";
/// The wallet owner's other wallet (tops the receiving wallet up).
pub const WALLET_OWNER: &str = "TLa2f6VPqDgRE67v1736s7bJ8Ray5wYjU7";
/// A contract that calls its token "USDT" too.
pub const FAKE_USDT: &str = "TG3XXyExBkPp9nzdajDZsozEu4BkaSJozs";

pub struct Env {
    pub db: TestDb,
    pub chain: tron::Handle,
    pub provider: CryptoProvider,
    pub watcher: ChainWatcher,
    pub tariff_id: i64,
}

pub fn settings(api_url: &str) -> CryptoSettings {
    let mut s = CryptoSettings::new(TronAddress::parse(WALLET).expect("wallet"));
    s.api_url = api_url.to_owned();
    s.rub_per_usdt = Some("95.50".parse().expect("rate"));
    s.retry = HttpRetry {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
    };
    s
}

pub async fn env() -> Env {
    env_with(|_| {}).await
}

pub async fn env_with(tweak: impl FnOnce(&mut CryptoSettings)) -> Env {
    env_on(TestDb::new().await, tweak).await
}

pub async fn env_on(db: TestDb, tweak: impl FnOnce(&mut CryptoSettings)) -> Env {
    let chain = tron::spawn(tron::Config::default())
        .await
        .expect("emulator");
    let mut s = settings(&chain.base_url);
    tweak(&mut s);
    let s = s.with_database(db.conn.clone());
    let tariff_id = tariff(&db.conn).await;
    Env {
        provider: CryptoProvider::new(s.clone()).expect("provider"),
        watcher: ChainWatcher::new(s).expect("watcher"),
        db,
        chain,
        tariff_id,
    }
}

async fn tariff(db: &DatabaseConnection) -> i64 {
    tariffs::ActiveModel {
        id: NotSet,
        code: Set("m1".into()),
        title: Set("1 month".into()),
        duration_days: Set(30),
        data_limit_bytes: Set(None),
        price_rub_minor: Set(Some(19_900)),
        price_xtr: Set(None),
        price_usdt_minor: Set(Some(2_000_000)),
        active: Set(true),
        sort_order: Set(1),
    }
    .insert(db)
    .await
    .expect("tariff")
    .id
}

/// A pending crypto payment row (the invoice's foreign key).
pub async fn payment<C: sea_orm::ConnectionTrait>(
    conn: &C,
    tariff_id: i64,
    amount: Money,
) -> PaymentId {
    let now = Utc::now();
    let telegram_id = i64::from(rand_u32()) + 1;
    let user = users::ActiveModel {
        id: NotSet,
        telegram_id: Set(telegram_id),
        username: Set(None),
        first_name: Set(None),
        language_code: Set(None),
        created_at: Set(now),
    }
    .insert(conn)
    .await
    .expect("user");
    let id = PaymentId::new();
    payments::ActiveModel {
        id: Set(id),
        user_id: Set(user.id),
        tariff_id: Set(tariff_id),
        provider: Set(payment_core::providers::crypto::ID),
        amount_minor: Set(amount.minor()),
        currency: Set(amount.currency()),
        status: Set(PaymentStatus::Pending),
        provider_payment_id: Set(Some(id.to_string())),
        idempotency_key: Set(format!("t:{id}")),
        confirmation_url: Set(None),
        failure_reason: Set(None),
        metadata: Set(serde_json::json!({})),
        created_at: Set(now),
        updated_at: Set(now),
        completed_at: Set(None),
        expires_at: Set(None),
        refunded_minor: Set(0),
        flagged: Set(false),
        flag_reason: Set(None),
        next_check_at: Set(None),
        check_attempts: Set(0),
    }
    .insert(conn)
    .await
    .expect("payment");
    id
}

fn rand_u32() -> u32 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(u32::MAX - 1)) as u32
}

pub fn usdt(minor: i64) -> Money {
    Money::new(minor, Currency::Usdt)
}

impl Env {
    /// A payment with its invoice for `price` USDT, created at `now`.
    pub async fn invoice_at(&self, price: i64, now: DateTime<Utc>) -> ReservedInvoice {
        let id = payment(&self.db.conn, self.tariff_id, usdt(price)).await;
        self.provider
            .reserve_invoice(&self.db.conn, id, usdt(price), now)
            .await
            .expect("reserved")
    }

    pub async fn invoice(&self, price: i64) -> ReservedInvoice {
        self.invoice_at(price, Utc::now()).await
    }

    pub async fn row(&self, invoice: &ReservedInvoice) -> crypto_invoices::Model {
        crypto_invoices::Entity::find_by_id(invoice.invoice_id)
            .one(&self.db.conn)
            .await
            .expect("query")
            .expect("row")
    }

    /// A confirmed USDT transfer from `from` to our wallet at `at`.
    pub fn pay(&self, from: &str, value: i64, at: DateTime<Utc>) -> String {
        self.chain
            .add_transfer(tron::NewTransfer::usdt(from, WALLET, value).at(at.timestamp_millis()))
    }
}

pub fn late_policy(policy: LatePolicy) -> impl FnOnce(&mut CryptoSettings) {
    move |s| s.late_policy = policy
}
