//! USDT on TRON (TRC20), verified on chain by our own watcher — no intermediary.
//!
//! One shared wallet receives every payment, so each invoice asks for a unique amount: the
//! price plus a tag of 1..=[`MAX_TAG`] micro-USDT, reserved among the wallet's open invoices by a
//! partial unique index (see [`CryptoProvider::reserve_invoice`]). The chain watcher
//! ([`watcher::ChainWatcher`]) reads TronGrid's confirmed TRC20 history of the wallet and
//! matches transfers to invoices ([`matcher`]: an exact amount completes its own invoice; a
//! transfer is otherwise credited only as the exact shortfall of a partly paid invoice, or as
//! a partial payment less than a tag short of one fresh invoice that no other invoice is as
//! near; dust, top-ups and other amounts are recorded unmatched for an admin);
//! [`PaymentProvider::get_payment_status`] answers from the invoice row, so the worker's
//! re-fetch path is the same as for the other providers.

pub mod address;
pub mod chain_loop;
pub mod client;
pub mod invoice;
pub mod matcher;
pub mod notice;
pub mod rate;
pub mod signature;
pub mod transformers;
pub mod watcher;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use domain::PaymentStatus;
use domain::entities::tariffs;
use domain::env::Vars;
use domain::money::{Currency, Money};
use sea_orm::DatabaseConnection;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub use self::address::{AddressError, TronAddress};
pub use self::chain_loop::{ChainLoop, OVERPAID_EVENT};
pub use self::client::{TronGridClient, TronGridError};
pub use self::invoice::{InvoiceError, ReservedInvoice};
pub use self::notice::NoticeKey;
pub use self::rate::{ConversionError, RubPerUsdt};
pub use self::watcher::{
    ChainWatcher, InvoiceOutcome, NoticeCheck, OutcomeKind, OutcomeSink, PollOutcome, WatchError,
};
use crate::ProviderId;
use crate::background::{BackgroundTask, ProviderHost};
use crate::error::{ProviderError, SettingsError, WebhookError};
use crate::provider::{
    CheckoutError, Confirmation, CreatePaymentRequest, CreatedPayment, PaymentProvider, PaymentRef,
    ProviderDescriptor, ProviderPayment,
};
use crate::webhook::{WebhookNotification, WebhookRequest};
use outbound::HttpRetry;

pub const DEFAULT_API_URL: &str = "https://api.trongrid.io";
/// Tether USD on TRON mainnet (6 decimals).
pub const USDT_MAINNET: &str = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t";
/// The only network supported so far.
pub const NETWORK_TRC20: &str = "TRC20";
/// Tags are 1..=MAX_TAG micro-USDT: at most 0.009999 USDT above the price, so tariffs priced
/// in whole cents never share an amount, and 9,999 invoices of one price can be open at once
/// (with the gateway's cap of open payments per customer, `CHECKOUT_MAX_OPEN_PAYMENTS`, no
/// customer can hold more than that many of them). The matcher's tolerance for a dropped
/// tag is the same `MAX_TAG`.
pub const MAX_TAG: i64 = 9_999;

/// This provider's id: USDT on TRON (TRC20), verified on chain by our own watcher.
pub const ID: ProviderId = ProviderId::from_static("crypto");

static DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: ID,
    title: "USDT (TRC20)",
    currencies: &[Currency::Usdt],
    supports_refunds: false,
};

/// What happens to a transfer that completes an invoice after it expired but inside the
/// late window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    /// Complete the payment as usual (the invoice is marked `late`).
    Complete,
    /// Do not complete; flag the payment for an admin.
    Flag,
}

impl FromStr for LatePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "complete" => Ok(Self::Complete),
            "flag" => Ok(Self::Flag),
            _ => Err(format!("expected complete or flag, got {s:?}")),
        }
    }
}

/// A database handle the provider reads invoice rows through (see
/// [`CryptoSettings::with_database`]); opaque so settings stay printable.
#[derive(Clone)]
pub struct AttachedDatabase(pub DatabaseConnection);

impl fmt::Debug for AttachedDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttachedDatabase")
    }
}

/// The crypto provider is enabled exactly when `CRYPTO_WALLET_ADDRESS` is set.
#[derive(Debug, Clone)]
pub struct CryptoSettings {
    /// `CRYPTO_WALLET_ADDRESS`: the receiving wallet (base58check `T…`).
    pub wallet_address: TronAddress,
    /// `CRYPTO_NETWORK`: only `TRC20` (the default) is supported.
    pub network: String,
    /// `TRONGRID_API_URL` (default [`DEFAULT_API_URL`]), without a trailing slash.
    pub api_url: String,
    /// `TRONGRID_API_KEY`, sent as `TRON-PRO-API-KEY`.
    pub api_key: Option<SecretString>,
    /// `CRYPTO_USDT_CONTRACT` (default [`USDT_MAINNET`]); transfers of any other contract
    /// are ignored, whatever they call themselves.
    pub usdt_contract: TronAddress,
    /// `CRYPTO_INVOICE_TTL_MINUTES` (default 30).
    pub invoice_ttl: Duration,
    /// `CRYPTO_LATE_WINDOW_MINUTES` (default 60): how long after expiry a transfer is still
    /// matched (and the amount stays reserved).
    pub late_window: Duration,
    /// `CRYPTO_LATE_POLICY`: `complete` (default) or `flag`.
    pub late_policy: LatePolicy,
    /// `CRYPTO_RUB_PER_USDT`: fixed rate for RUB-priced tariffs without a USDT price.
    pub rub_per_usdt: Option<RubPerUsdt>,
    /// `CRYPTO_POLL_INTERVAL_SECONDS` (default 15): for the worker's loop.
    pub poll_interval: Duration,
    /// `CRYPTO_POLL_PAGE_SIZE` (default 200, TronGrid's maximum).
    pub page_size: u32,
    /// `CRYPTO_POLL_MAX_PAGES` (default 25) per poll.
    pub max_pages: u32,
    /// `CRYPTO_CURSOR_SKEW_SECONDS` (default 300): each poll starts this far before the
    /// newest time already seen, so transfers confirmed late (~1 min on TRON) are not missed.
    pub cursor_skew: Duration,
    /// `TRONGRID_MAX_ATTEMPTS` (3), `TRONGRID_RETRY_INITIAL_MS` (1000),
    /// `TRONGRID_RETRY_MAX_MS` (10000), `TRONGRID_TIMEOUT_MS` (15000).
    pub retry: HttpRetry,
    /// Where [`PaymentProvider::get_payment_status`] reads invoices; not from the
    /// environment — the worker attaches its pool with [`CryptoSettings::with_database`].
    pub database: Option<AttachedDatabase>,
    /// The key of signed notices (`POST /webhook/payment/crypto`); `None` closes that route.
    /// The gateway reads `CRYPTO_WEBHOOK_SECRET` (a strong secret) and attaches it with
    /// [`CryptoSettings::with_notice_key`].
    pub notice_key: Option<NoticeKey>,
}

impl CryptoSettings {
    /// Settings with every default for `wallet`.
    pub fn new(wallet: TronAddress) -> Self {
        Self {
            wallet_address: wallet,
            network: NETWORK_TRC20.to_owned(),
            api_url: DEFAULT_API_URL.to_owned(),
            api_key: None,
            usdt_contract: TronAddress::usdt_mainnet(),
            invoice_ttl: Duration::from_secs(30 * 60),
            late_window: Duration::from_secs(60 * 60),
            late_policy: LatePolicy::Complete,
            rub_per_usdt: None,
            poll_interval: Duration::from_secs(15),
            page_size: client::MAX_PAGE_SIZE,
            max_pages: 25,
            cursor_skew: Duration::from_secs(300),
            retry: HttpRetry {
                max_attempts: 3,
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(10),
                request_timeout: Duration::from_secs(15),
            },
            database: None,
            notice_key: None,
        }
    }

    /// Opens the notice route, verified with `key`.
    #[must_use]
    pub fn with_notice_key(mut self, key: NoticeKey) -> Self {
        self.notice_key = Some(key);
        self
    }

    /// Lets `get_payment_status` read invoice rows through `db`.
    pub fn with_database(mut self, db: DatabaseConnection) -> Self {
        self.database = Some(AttachedDatabase(db));
        self
    }

    pub(crate) fn from_vars(vars: &Vars) -> Result<Option<Self>, SettingsError> {
        let Some(wallet) = vars.get("CRYPTO_WALLET_ADDRESS") else {
            return Ok(None);
        };
        let network = vars.get("CRYPTO_NETWORK").unwrap_or(NETWORK_TRC20);
        if !network.eq_ignore_ascii_case(NETWORK_TRC20) {
            return Err(SettingsError::Invalid {
                var: "CRYPTO_NETWORK",
                reason: format!(
                    "{network:?} is not supported; only {NETWORK_TRC20} (USDT on TRON) is"
                ),
            });
        }
        let wallet = TronAddress::parse(wallet).map_err(|e| SettingsError::Invalid {
            var: "CRYPTO_WALLET_ADDRESS",
            reason: e.to_string(),
        })?;
        let mut s = Self::new(wallet);
        if let Some(url) = vars.url("TRONGRID_API_URL")? {
            s.api_url = url.to_owned();
        }
        s.api_key = vars.secret("TRONGRID_API_KEY");
        if let Some(contract) = vars.get("CRYPTO_USDT_CONTRACT") {
            s.usdt_contract = TronAddress::parse(contract).map_err(|e| SettingsError::Invalid {
                var: "CRYPTO_USDT_CONTRACT",
                reason: e.to_string(),
            })?;
        }
        let minutes = |var: &'static str| -> Result<Option<Duration>, SettingsError> {
            Ok(vars
                .parse::<u64>(var)?
                .map(|m| Duration::from_secs(m.saturating_mul(60))))
        };
        if let Some(ttl) = minutes("CRYPTO_INVOICE_TTL_MINUTES")? {
            if ttl.is_zero() {
                return Err(SettingsError::Invalid {
                    var: "CRYPTO_INVOICE_TTL_MINUTES",
                    reason: "must be at least 1".into(),
                });
            }
            s.invoice_ttl = ttl;
        }
        if let Some(window) = minutes("CRYPTO_LATE_WINDOW_MINUTES")? {
            s.late_window = window;
        }
        if let Some(policy) = vars.parse::<LatePolicy>("CRYPTO_LATE_POLICY")? {
            s.late_policy = policy;
        }
        s.rub_per_usdt = vars.parse::<RubPerUsdt>("CRYPTO_RUB_PER_USDT")?;
        if let Some(secs) = vars.parse::<u64>("CRYPTO_POLL_INTERVAL_SECONDS")? {
            s.poll_interval = Duration::from_secs(secs.max(1));
        }
        if let Some(size) = vars.parse::<u32>("CRYPTO_POLL_PAGE_SIZE")? {
            if !(1..=client::MAX_PAGE_SIZE).contains(&size) {
                return Err(SettingsError::Invalid {
                    var: "CRYPTO_POLL_PAGE_SIZE",
                    reason: format!("must be 1..={}", client::MAX_PAGE_SIZE),
                });
            }
            s.page_size = size;
        }
        if let Some(pages) = vars.parse::<u32>("CRYPTO_POLL_MAX_PAGES")? {
            s.max_pages = pages.max(1);
        }
        if let Some(secs) = vars.parse::<u64>("CRYPTO_CURSOR_SKEW_SECONDS")? {
            s.cursor_skew = Duration::from_secs(secs);
        }
        if let Some(n) = vars.parse::<u32>("TRONGRID_MAX_ATTEMPTS")? {
            s.retry.max_attempts = n.max(1);
        }
        let millis = |var| vars.parse::<u64>(var).map(|v| v.map(Duration::from_millis));
        if let Some(d) = millis("TRONGRID_RETRY_INITIAL_MS")? {
            s.retry.initial_backoff = d;
        }
        if let Some(d) = millis("TRONGRID_RETRY_MAX_MS")? {
            s.retry.max_backoff = d;
        }
        if let Some(d) = millis("TRONGRID_TIMEOUT_MS")? {
            s.retry.request_timeout = d;
        }
        Ok(Some(s))
    }

    /// The network name as stored and shown (`TRC20`).
    pub fn network(&self) -> &'static str {
        NETWORK_TRC20
    }
}

/// Why a price cannot be quoted in USDT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("tariff {0} has neither a USDT price nor a RUB price")]
    NoPrice(String),
    #[error("a RUB price needs CRYPTO_RUB_PER_USDT")]
    NoRate,
    #[error("{0} prices cannot be converted to USDT")]
    Unsupported(Currency),
    #[error(transparent)]
    Conversion(#[from] ConversionError),
}

/// The crypto provider: quotes, invoices, the invoice-backed status and the chain watcher
/// that runs as its background loop.
#[derive(Debug)]
pub struct CryptoProvider {
    settings: CryptoSettings,
    watcher: ChainWatcher,
}

impl CryptoProvider {
    pub fn new(settings: CryptoSettings) -> Result<Self, SettingsError> {
        let watcher = ChainWatcher::new(settings.clone()).map_err(|e| SettingsError::Invalid {
            var: "TRONGRID_API_URL",
            reason: e.to_string(),
        })?;
        Ok(Self { settings, watcher })
    }

    pub fn settings(&self) -> &CryptoSettings {
        &self.settings
    }

    /// The USDT price of a tariff: its own USDT price when it has one, else its RUB price at
    /// the configured rate (rounded up to the micro-USDT).
    pub fn quote(&self, tariff: &tariffs::Model) -> Result<Money, QuoteError> {
        if let Some(usdt) = tariff.price(Currency::Usdt) {
            return Ok(usdt);
        }
        match tariff.price(Currency::Rub) {
            Some(rub) => self.to_usdt(rub),
            None => Err(QuoteError::NoPrice(tariff.code.clone())),
        }
    }

    /// `price` in USDT: USDT as is, RUB at the configured rate.
    pub fn to_usdt(&self, price: Money) -> Result<Money, QuoteError> {
        match price.currency() {
            Currency::Usdt => Ok(price),
            Currency::Rub => {
                let rate = self.settings.rub_per_usdt.ok_or(QuoteError::NoRate)?;
                Ok(rate.rub_to_usdt(price)?)
            }
            other => Err(QuoteError::Unsupported(other)),
        }
    }

    /// What the payer must do for `invoice`.
    pub fn confirmation(invoice: &ReservedInvoice) -> Confirmation {
        Confirmation::Transfer {
            network: invoice.network.clone(),
            address: invoice.address.clone(),
            amount: invoice.amount,
            expires_at: Some(invoice.expires_at),
        }
    }

    fn transfer_confirmation(&self, amount: Money, expires_at: DateTime<Utc>) -> Confirmation {
        Confirmation::Transfer {
            network: self.settings.network().to_owned(),
            address: self.settings.wallet_address.to_string(),
            amount,
            expires_at: Some(expires_at),
        }
    }

    fn database(&self) -> Result<&DatabaseConnection, ProviderError> {
        self.settings
            .database
            .as_ref()
            .map(|d| &d.0)
            .ok_or(ProviderError::Unsupported(
                "crypto payment status without a database (CryptoSettings::with_database)",
            ))
    }
}

#[async_trait]
impl PaymentProvider for CryptoProvider {
    fn descriptor(&self) -> &ProviderDescriptor {
        &DESCRIPTOR
    }

    fn accepts_webhooks(&self) -> bool {
        self.settings.notice_key.is_some()
    }

    /// USDT price, or the RUB price at the configured rate; the tag comes with the invoice.
    fn quote(&self, tariff: &tariffs::Model, _currencies: &[Currency]) -> Result<Money, String> {
        CryptoProvider::quote(self, tariff).map_err(|e| e.to_string())
    }

    /// Reserves the invoice (the payment row is already written: the invoice refers to it);
    /// the payer is asked for its unique amount (price + tag).
    async fn reserve_checkout(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        payment_id: domain::PaymentId,
        price: Money,
    ) -> Result<Money, CheckoutError> {
        let now = Utc::now().trunc_subsecs(6);
        self.reserve_invoice(txn, payment_id, price, now)
            .await
            .map(|invoice| invoice.amount)
            .map_err(checkout_error)
    }

    /// The invoice asks the price plus a tag of 1..=[`MAX_TAG`].
    fn asks_at_price(&self, price: &Money, asked: &Money) -> bool {
        price.currency() == asked.currency()
            && (1..=MAX_TAG).contains(&(asked.minor() - price.minor()))
    }

    /// An open invoice holds its tag (see [`invoice::open_invoice_exists`]).
    fn holds_reservation(&self) -> Option<sea_orm::sea_query::SimpleExpr> {
        Some(invoice::open_invoice_exists())
    }

    /// Nobody can pay an ended checkout: its USDT tag is free at once (the invoice is
    /// `expired` with an expired payment, else `canceled`).
    async fn release_checkout(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        payment_id: domain::PaymentId,
        ended: PaymentStatus,
        now: DateTime<Utc>,
    ) -> Result<(), CheckoutError> {
        let status = match ended {
            PaymentStatus::Expired => domain::CryptoInvoiceStatus::Expired,
            _ => domain::CryptoInvoiceStatus::Canceled,
        };
        invoice::close_unpaid(txn, payment_id, status, now)
            .await
            .map(|_| ())
            .map_err(|e| CheckoutError::Database(e.to_string()))
    }

    /// Nothing is sent anywhere: `request.amount` must already be the reserved invoice amount
    /// (USDT, price + tag) from [`PaymentProvider::reserve_checkout`], which the caller does
    /// in its payment-creation transaction. With a database attached the confirmation is the
    /// reserved invoice's (its address, amount and expiry).
    async fn create_payment(
        &self,
        request: &CreatePaymentRequest,
    ) -> Result<CreatedPayment, ProviderError> {
        if request.amount.currency() != Currency::Usdt || request.amount.minor() <= 0 {
            return Err(ProviderError::InvalidRequest(format!(
                "a crypto payment is a positive USDT amount (the reserved invoice amount), got {}",
                request.amount
            )));
        }
        if let Some(AttachedDatabase(db)) = &self.settings.database {
            // The invoice reserved with the intent (found again for the same payment).
            let now = Utc::now().trunc_subsecs(6);
            let invoice = self
                .reserve_invoice(db, request.payment_id, request.amount, now)
                .await
                .map_err(|e| match e {
                    InvoiceError::Db(e) => ProviderError::ResultUnknown {
                        attempts: 1,
                        last: crate::error::TransientFailure::Connection(format!("database: {e}")),
                    },
                    other => ProviderError::InvalidRequest(other.to_string()),
                })?;
            let mut created = invoice.created_payment();
            created.amount = request.amount;
            return Ok(created);
        }
        let ttl = chrono::Duration::from_std(self.settings.invoice_ttl)
            .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
        let expires_at = Utc::now() + ttl;
        Ok(CreatedPayment {
            provider_payment_id: request.payment_id.to_string(),
            status: PaymentStatus::Pending,
            amount: request.amount,
            confirmation: Some(self.transfer_confirmation(request.amount, expires_at)),
            expires_at: Some(expires_at),
            test: false,
        })
    }

    /// The state of the payment's invoice row (see [`invoice::payment_status`]).
    async fn get_payment_status(
        &self,
        payment: &PaymentRef,
    ) -> Result<ProviderPayment, ProviderError> {
        invoice::payment_status(self.database()?, &self.settings, payment).await
    }

    /// A notice's `X-Signature` (HMAC-SHA256 over `"{t}.{raw body}"`, `CRYPTO_WEBHOOK_SECRET`).
    async fn verify_webhook(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
        let key =
            self.settings.notice_key.as_ref().ok_or_else(|| {
                WebhookError::BadSignature("crypto notices are not enabled".into())
            })?;
        notice::verify(key, request)
    }

    /// A notice only makes the worker look at the chain ([`ChainWatcher::check_transaction`]).
    async fn process_webhook(&self, body: &[u8]) -> Result<WebhookNotification, WebhookError> {
        notice::parse(body)
    }

    fn checks_own_notices(&self) -> bool {
        true
    }

    /// The chain watcher ([`ChainLoop`]): polls the wallet's history and checks notices.
    fn background_task(
        &self,
        host: Arc<dyn ProviderHost>,
        shutdown: CancellationToken,
    ) -> Option<BackgroundTask> {
        let chain = ChainLoop::new(self.watcher.clone(), host);
        Some(Box::pin(chain.run(shutdown)))
    }
}

fn checkout_error(error: InvoiceError) -> CheckoutError {
    match error {
        InvoiceError::Db(e) => CheckoutError::Database(e.to_string()),
        InvoiceError::Contended(_) => CheckoutError::Contended(error.to_string()),
        other => CheckoutError::Refused(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::PaymentSettings;

    const WALLET: &str = "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE";

    fn settings(vars: &[(&str, &str)]) -> Result<Option<CryptoSettings>, SettingsError> {
        PaymentSettings::from_vars(&vars.iter().copied().collect()).map(|s| s.crypto)
    }

    #[test]
    fn enabled_by_the_wallet_address() {
        assert!(settings(&[]).expect("ok").is_none());
        assert!(
            settings(&[("CRYPTO_WALLET_ADDRESS", " "), ("CRYPTO_NETWORK", "TRC20")])
                .expect("ok")
                .is_none()
        );
        let s = settings(&[("CRYPTO_WALLET_ADDRESS", WALLET)])
            .expect("ok")
            .expect("enabled");
        assert_eq!(s.wallet_address.as_str(), WALLET);
        assert_eq!(s.network(), "TRC20");
        assert_eq!(s.api_url, DEFAULT_API_URL);
        assert_eq!(s.usdt_contract.as_str(), USDT_MAINNET);
        assert_eq!(s.invoice_ttl, Duration::from_secs(1800));
        assert_eq!(s.late_policy, LatePolicy::Complete);
        assert!(s.rub_per_usdt.is_none() && s.api_key.is_none());
        let on = settings(&[
            ("CRYPTO_WALLET_ADDRESS", WALLET),
            ("CRYPTO_NETWORK", "trc20"),
        ])
        .expect("ok");
        assert!(on.is_some());
    }

    #[test]
    fn other_networks_are_refused_at_start_up() {
        for network in ["ERC20", "TON", "BEP20"] {
            let err = settings(&[
                ("CRYPTO_WALLET_ADDRESS", WALLET),
                ("CRYPTO_NETWORK", network),
            ])
            .expect_err("refused");
            assert!(
                matches!(
                    err,
                    SettingsError::Invalid {
                        var: "CRYPTO_NETWORK",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("CRYPTO_NETWORK"));
        }
    }

    #[test]
    fn bad_addresses_are_refused() {
        for (var, vars) in [
            (
                "CRYPTO_WALLET_ADDRESS",
                vec![(
                    "CRYPTO_WALLET_ADDRESS",
                    "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSF",
                )],
            ),
            (
                "CRYPTO_WALLET_ADDRESS",
                vec![(
                    "CRYPTO_WALLET_ADDRESS",
                    "0x6B175474E89094C44Da98b954EedeAC495271d0F",
                )],
            ),
            (
                "CRYPTO_USDT_CONTRACT",
                vec![
                    ("CRYPTO_WALLET_ADDRESS", WALLET),
                    ("CRYPTO_USDT_CONTRACT", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6u"),
                ],
            ),
        ] {
            let err = settings(&vars).expect_err("refused");
            assert!(
                matches!(&err, SettingsError::Invalid { var: v, .. } if *v == var),
                "{err}"
            );
        }
    }

    #[test]
    fn all_crypto_variables() {
        let s = settings(&[
            ("CRYPTO_WALLET_ADDRESS", WALLET),
            ("CRYPTO_NETWORK", "TRC20"),
            ("TRONGRID_API_URL", "http://127.0.0.1:9103/"),
            ("TRONGRID_API_KEY", "0f3c-secret-key"),
            ("CRYPTO_USDT_CONTRACT", "TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf"),
            ("CRYPTO_INVOICE_TTL_MINUTES", "15"),
            ("CRYPTO_LATE_WINDOW_MINUTES", "120"),
            ("CRYPTO_LATE_POLICY", "flag"),
            ("CRYPTO_RUB_PER_USDT", "95.50"),
            ("CRYPTO_POLL_PAGE_SIZE", "50"),
            ("TRONGRID_MAX_ATTEMPTS", "5"),
        ])
        .expect("ok")
        .expect("enabled");
        assert_eq!(s.api_url, "http://127.0.0.1:9103");
        assert_eq!(s.invoice_ttl, Duration::from_secs(900));
        assert_eq!(s.late_window, Duration::from_secs(7200));
        assert_eq!(s.late_policy, LatePolicy::Flag);
        assert_eq!(
            s.rub_per_usdt.map(|r| r.to_string()).as_deref(),
            Some("95.50")
        );
        assert_eq!(s.page_size, 50);
        assert_eq!(s.retry.max_attempts, 5);
        assert!(
            !format!("{s:?}").contains("0f3c-secret-key"),
            "the key is not printed"
        );
        for (var, value) in [
            ("CRYPTO_RUB_PER_USDT", "95.5.0"),
            ("CRYPTO_LATE_POLICY", "maybe"),
            ("CRYPTO_INVOICE_TTL_MINUTES", "0"),
            ("CRYPTO_POLL_PAGE_SIZE", "201"),
            ("TRONGRID_API_URL", "ftp://x"),
        ] {
            let err = settings(&[("CRYPTO_WALLET_ADDRESS", WALLET), (var, value)]).expect_err(var);
            assert!(
                matches!(&err, SettingsError::Invalid { var: v, .. } if *v == var),
                "{err}"
            );
        }
    }

    #[test]
    fn quotes_prefer_the_usdt_price() {
        let mut s = CryptoSettings::new(TronAddress::parse(WALLET).expect("wallet"));
        let mut tariff = tariffs::Model {
            id: 1,
            code: "m1".into(),
            title: "1 month".into(),
            duration_days: 30,
            data_limit_bytes: None,
            price_rub_minor: Some(19_900),
            price_xtr: None,
            price_usdt_minor: None,
            active: true,
            sort_order: 1,
        };
        let p = CryptoProvider::new(s.clone()).expect("provider");
        assert_eq!(p.quote(&tariff), Err(QuoteError::NoRate));
        s.rub_per_usdt = Some("95.50".parse().expect("rate"));
        let p = CryptoProvider::new(s).expect("provider");
        assert_eq!(p.quote(&tariff).expect("rub").minor(), 2_083_770);
        tariff.price_usdt_minor = Some(2_500_000);
        assert_eq!(
            p.quote(&tariff).expect("usdt"),
            Money::new(2_500_000, Currency::Usdt)
        );
        tariff.price_usdt_minor = None;
        tariff.price_rub_minor = None;
        assert_eq!(p.quote(&tariff), Err(QuoteError::NoPrice("m1".into())));
    }
}
