use std::time::Duration;

use domain::PaymentId;
use domain::money::{Currency, Money};
use payment_core::providers::yookassa::{YooKassaProvider, YooKassaSettings};
use payment_core::{CreatePaymentRequest, HttpRetry, PaymentRef};
use sandbox::yookassa::{self, Config, Handle};

pub const SHOP_ID: &str = "100500";
pub const SECRET: &str = "test_sandbox_secret";

pub fn rub(minor: i64) -> Money {
    Money::new(minor, Currency::Rub)
}

/// Fast retries so fault tests take milliseconds.
pub fn fast_retry() -> HttpRetry {
    HttpRetry {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        request_timeout: Duration::from_secs(2),
    }
}

pub fn settings(emulator: &Handle) -> YooKassaSettings {
    let mut s = YooKassaSettings::new(SHOP_ID, SECRET);
    s.api_url = emulator.api_url();
    s.test_mode = true;
    s.return_url = "https://t.me/acp_test_bot".into();
    s.retry = fast_retry();
    s
}

pub struct TestShop {
    pub emulator: Handle,
    pub provider: YooKassaProvider,
}

pub async fn spawn_with(config: Config, tweak: impl FnOnce(&mut YooKassaSettings)) -> TestShop {
    let emulator = yookassa::spawn(config).await.expect("emulator starts");
    let mut s = settings(&emulator);
    tweak(&mut s);
    let provider = YooKassaProvider::new(s).expect("provider");
    TestShop { emulator, provider }
}

pub async fn spawn() -> TestShop {
    spawn_with(Config::default(), |_| {}).await
}

pub fn request(minor: i64) -> CreatePaymentRequest {
    CreatePaymentRequest {
        payment_id: PaymentId::new(),
        amount: rub(minor),
        description: "VPN 30 days".into(),
        metadata: [("tg_user_id".to_owned(), "123456".to_owned())].into(),
        return_url: None,
        receipt_email: None,
        recurring: Default::default(),
    }
}

pub fn payment_ref(request: &CreatePaymentRequest, provider_payment_id: &str) -> PaymentRef {
    PaymentRef {
        payment_id: request.payment_id,
        provider_payment_id: provider_payment_id.to_owned(),
        amount: request.amount,
    }
}

/// POSTs the emulator received, in order.
pub fn posts(emulator: &Handle, path: &str) -> Vec<sandbox::yookassa::RequestRecord> {
    emulator
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .collect()
}
