//! Which providers are enabled, and how: a provider is on exactly when its settings exist.

use domain::env::{EnvVar, Vars};

use crate::error::SettingsError;
use crate::providers::crypto::CryptoSettings;
use crate::providers::cryptobot::CryptoBotSettings;
use crate::providers::telegram::TelegramSettings;
use crate::providers::yookassa::YooKassaSettings;

/// Settings of every provider; `None` = disabled.
#[derive(Debug, Clone, Default)]
pub struct PaymentSettings {
    pub yookassa: Option<YooKassaSettings>,
    pub crypto: Option<CryptoSettings>,
    pub telegram: Option<TelegramSettings>,
    pub cryptobot: Option<CryptoBotSettings>,
}

impl PaymentSettings {
    /// Reads the process environment (load `.env` into it first).
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(&Vars::from_env())
    }

    /// Reads the providers' variables from `vars`. Empty values count as unset, so a
    /// provider is disabled by deleting or blanking its variables.
    pub fn from_vars(vars: &Vars) -> Result<Self, SettingsError> {
        Ok(Self {
            yookassa: YooKassaSettings::from_vars(vars)?,
            crypto: CryptoSettings::from_vars(vars)?,
            telegram: TelegramSettings::from_vars(vars)?,
            cryptobot: CryptoBotSettings::from_vars(vars)?,
        })
    }

    /// Lets the providers that keep state of their own use `db`: the crypto provider answers
    /// from its invoice rows, the Telegram provider records the Star transactions it read.
    #[must_use]
    pub fn with_database(mut self, db: &sea_orm::DatabaseConnection) -> Self {
        self.crypto = self.crypto.map(|c| c.with_database(db.clone()));
        self.telegram = self.telegram.map(|t| t.with_database(db.clone()));
        self
    }
}

/// Every variable of the providers, read by each binary that loads [`PaymentSettings`]. A
/// provider is on when its first variable here is set (YooKassa: shop id and secret key).
pub const VARS: &[EnvVar] = &[
    EnvVar::optional("YOOKASSA_SHOP_ID"),
    EnvVar::optional("YOOKASSA_SECRET_KEY"),
    EnvVar::default("YOOKASSA_TEST_MODE", "false"),
    EnvVar::default("YOOKASSA_API_URL", "https://api.yookassa.ru/v3"),
    EnvVar::default("YOOKASSA_RETURN_URL", "https://t.me/"),
    EnvVar::default(
        "YOOKASSA_ALLOWED_IPS",
        "185.71.76.0/27,185.71.77.0/27,77.75.153.0/25,77.75.156.11,77.75.156.35,77.75.154.128/25,2a02:5180::/32",
    ),
    EnvVar::optional("TRUSTED_PROXIES"),
    EnvVar::default("YOOKASSA_MAX_ATTEMPTS", "4"),
    EnvVar::default("YOOKASSA_RETRY_INITIAL_MS", "500"),
    EnvVar::default("YOOKASSA_RETRY_MAX_MS", "8000"),
    EnvVar::default("YOOKASSA_TIMEOUT_MS", "35000"),
    EnvVar::optional("YOOKASSA_RECEIPT_EMAIL"),
    EnvVar::optional("YOOKASSA_RECEIPT_PHONE"),
    EnvVar::default("YOOKASSA_RECEIPT_VAT_CODE", "1"),
    EnvVar::optional("YOOKASSA_RECEIPT_TAX_SYSTEM_CODE"),
    EnvVar::default("YOOKASSA_RECEIPT_PAYMENT_SUBJECT", "service"),
    EnvVar::default("YOOKASSA_RECEIPT_PAYMENT_MODE", "full_payment"),
    EnvVar::optional("CRYPTO_WALLET_ADDRESS"),
    EnvVar::default("CRYPTO_NETWORK", "TRC20"),
    EnvVar::default("TRONGRID_API_URL", "https://api.trongrid.io"),
    EnvVar::optional("TRONGRID_API_KEY"),
    EnvVar::default("CRYPTO_USDT_CONTRACT", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"),
    EnvVar::default("CRYPTO_INVOICE_TTL_MINUTES", "30"),
    EnvVar::default("CRYPTO_LATE_WINDOW_MINUTES", "60"),
    EnvVar::default("CRYPTO_LATE_POLICY", "complete"),
    EnvVar::optional("CRYPTO_RUB_PER_USDT"),
    EnvVar::default("CRYPTO_POLL_INTERVAL_SECONDS", "15"),
    EnvVar::default("CRYPTO_POLL_PAGE_SIZE", "200"),
    EnvVar::default("CRYPTO_POLL_MAX_PAGES", "25"),
    EnvVar::default("CRYPTO_CURSOR_SKEW_SECONDS", "300"),
    EnvVar::default("TRONGRID_MAX_ATTEMPTS", "3"),
    EnvVar::default("TRONGRID_RETRY_INITIAL_MS", "1000"),
    EnvVar::default("TRONGRID_RETRY_MAX_MS", "10000"),
    EnvVar::default("TRONGRID_TIMEOUT_MS", "15000"),
    EnvVar::optional("TELEGRAM_BOT_TOKEN"),
    EnvVar::default("TELEGRAM_PAYMENTS_ENABLED", "true"),
    EnvVar::default("TELEGRAM_API_URL", "https://api.telegram.org"),
    EnvVar::optional("TELEGRAM_PAYMENT_PROVIDER_TOKEN"),
    EnvVar::default("TELEGRAM_TIMEOUT_MS", "10000"),
    EnvVar::default("TELEGRAM_STAR_SCAN_PAGES", "50"),
    EnvVar::default("TELEGRAM_INVOICE_TTL_MINUTES", "60"),
    EnvVar::optional("CRYPTOBOT_API_TOKEN"),
    EnvVar::default("CRYPTOBOT_API_URL", "https://pay.crypt.bot/api"),
    EnvVar::default("CRYPTOBOT_ACCEPTED_ASSETS", "USDT,TON,BTC"),
    EnvVar::default("CRYPTOBOT_INVOICE_TTL_MINUTES", "60"),
    EnvVar::default("CRYPTOBOT_MAX_ATTEMPTS", "3"),
    EnvVar::default("CRYPTOBOT_TIMEOUT_MS", "10000"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<PaymentSettings, SettingsError> {
        PaymentSettings::from_vars(&vars.iter().copied().collect())
    }

    #[test]
    fn a_provider_is_enabled_by_its_settings() {
        assert!(settings(&[]).expect("ok").yookassa.is_none());
        assert!(
            settings(&[("YOOKASSA_SHOP_ID", ""), ("YOOKASSA_SECRET_KEY", " ")])
                .expect("ok")
                .yookassa
                .is_none()
        );
        let on =
            settings(&[("YOOKASSA_SHOP_ID", "100500"), ("YOOKASSA_SECRET_KEY", "s")]).expect("ok");
        let yk = on.yookassa.expect("enabled");
        assert_eq!(yk.shop_id, "100500");
        assert!(!yk.test_mode);
        assert_eq!(yk.api_url, "https://api.yookassa.ru/v3");
        assert!(yk.receipt.is_none());
        assert!(yk.allowed_ips.contains("185.71.76.1".parse().expect("ip")));
        assert!(
            !format!("{yk:?}").contains("\"s\""),
            "the secret is not printed"
        );
    }

    #[test]
    fn half_configured_is_an_error() {
        assert_eq!(
            settings(&[("YOOKASSA_SHOP_ID", "100500")]).err(),
            Some(SettingsError::Missing("YOOKASSA_SECRET_KEY"))
        );
        assert!(matches!(
            settings(&[
                ("YOOKASSA_SHOP_ID", "1"),
                ("YOOKASSA_SECRET_KEY", "s"),
                ("YOOKASSA_TEST_MODE", "maybe")
            ]),
            Err(SettingsError::Invalid {
                var: "YOOKASSA_TEST_MODE",
                ..
            })
        ));
        assert!(matches!(
            settings(&[
                ("YOOKASSA_SHOP_ID", "1"),
                ("YOOKASSA_SECRET_KEY", "s"),
                ("TRUSTED_PROXIES", "10.0.0.0/99")
            ]),
            Err(SettingsError::Invalid {
                var: "TRUSTED_PROXIES",
                ..
            })
        ));
    }

    #[test]
    fn all_yookassa_variables() {
        let s = settings(&[
            ("YOOKASSA_SHOP_ID", "1"),
            ("YOOKASSA_SECRET_KEY", "s"),
            ("YOOKASSA_TEST_MODE", "true"),
            ("YOOKASSA_API_URL", "http://127.0.0.1:8081/v3/"),
            ("YOOKASSA_RETURN_URL", "https://t.me/acp_bot"),
            ("YOOKASSA_ALLOWED_IPS", "127.0.0.2"),
            ("TRUSTED_PROXIES", "10.0.0.1, 10.0.1.0/24"),
            ("YOOKASSA_MAX_ATTEMPTS", "6"),
            ("YOOKASSA_RETRY_INITIAL_MS", "10"),
            ("YOOKASSA_RETRY_MAX_MS", "100"),
            ("YOOKASSA_TIMEOUT_MS", "2000"),
            ("YOOKASSA_RECEIPT_EMAIL", "shop@example.com"),
            ("YOOKASSA_RECEIPT_VAT_CODE", "4"),
            ("YOOKASSA_RECEIPT_TAX_SYSTEM_CODE", "2"),
        ])
        .expect("ok")
        .yookassa
        .expect("enabled");
        assert!(s.test_mode);
        assert_eq!(s.api_url, "http://127.0.0.1:8081/v3");
        assert_eq!(s.return_url, "https://t.me/acp_bot");
        assert!(s.allowed_ips.contains("127.0.0.2".parse().expect("ip")));
        assert!(!s.allowed_ips.contains("185.71.76.1".parse().expect("ip")));
        assert_eq!(s.trusted_proxies.nets().len(), 2);
        assert_eq!(s.retry.max_attempts, 6);
        assert_eq!(s.retry.request_timeout.as_millis(), 2000);
        let receipt = s.receipt.expect("receipt");
        assert_eq!(receipt.customer_email.as_deref(), Some("shop@example.com"));
        assert_eq!((receipt.vat_code, receipt.tax_system_code), (4, Some(2)));
        assert_eq!(receipt.payment_subject, "service");
        assert_eq!(receipt.payment_mode, "full_payment");
    }
}
