//! CryptoBot (the Crypto Pay API, shared/reference/external-apis.md §5): the payer pays an
//! invoice inside @CryptoBot in any accepted crypto asset.
//!
//! - **Checkout.** A RUB payment becomes a fiat invoice (`fiat: "RUB"`, `accepted_assets` from
//!   `CRYPTOBOT_ACCEPTED_ASSETS`), a USDT payment an invoice in the asset; both expire after
//!   `CRYPTOBOT_INVOICE_TTL_MINUTES`. The payer gets `bot_invoice_url` (a redirect). The
//!   invoice's `payload` carries our payment id and the payer's Telegram id.
//!   `createInvoice` is retried like every call although the API has no idempotence key for
//!   it: an invoice whose answer was lost has a URL nobody was given, so nobody can pay it, and
//!   it expires by itself.
//! - **Webhook.** `crypto-pay-api-signature` is checked on the raw body ([`webhook`]); a
//!   verified `invoice_paid` names the invoice, whose status is then re-read.
//! - **Status.** `getInvoices{invoice_ids}` is the worker's and reconciliation's source:
//!   `active` → pending, `paid` → succeeded, `expired` → expired (an expired invoice cannot be
//!   paid any more); the invoice is checked against our payment (its id, our payload, amount).
//! - **Refunds.** Crypto Pay cannot refund an invoice; the money goes back by `transfer` of the
//!   paid asset (in proportion for a partial refund) to the Telegram id in the payload, with
//!   `spend_id` derived from our refund id, so a repeated refund moves the money once. When the
//!   app balance cannot cover it the refund is refused with the balance and the need named.

pub mod client;
pub mod transformers;
pub mod webhook;

use std::time::Duration;

use async_trait::async_trait;
use domain::PaymentStatus;
use domain::env::Vars;
use domain::money::{Currency, Money};
use outbound::HttpRetry;
use rust_decimal::Decimal;
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use crate::ProviderId;
use crate::error::{
    ProviderError, RefundRefusal, Rejection, RejectionCode, SettingsError, WebhookError,
};
use crate::provider::{
    Confirmation, CreatePaymentRequest, CreatedPayment, PaymentProvider, PaymentRef,
    ProviderDescriptor, ProviderPayment, ProviderRefund, RefundRequest, StatusQuery,
    read_generic_refund_notice,
};
use crate::webhook::{WebhookNotification, WebhookRequest, WebhookSubject};
pub use client::CryptoPayClient;
use transformers::{
    Balance, CreateInvoice, Invoice, InvoiceList, InvoicePayload, Transfer, decimal_text,
    parse_decimal, transfer_amount,
};
pub use webhook::{SIGNATURE_HEADER, SignatureError, SignatureKey};

/// Crypto Pay's mainnet API (testnet: `https://testnet-pay.crypt.bot/api`).
pub const DEFAULT_API_URL: &str = "https://pay.crypt.bot/api";
/// The assets a RUB invoice can be paid in by default.
pub const DEFAULT_ACCEPTED_ASSETS: &str = "USDT,TON,BTC";
/// How long an invoice is payable by default.
pub const DEFAULT_INVOICE_TTL: Duration = Duration::from_secs(60 * 60);
/// Crypto Pay's longest `expires_in` (31 days).
const MAX_EXPIRES_IN: u64 = 2_678_400;
const MAX_DESCRIPTION: usize = 1024;
/// The metadata key the gateway puts the payer's Telegram id under.
pub const TELEGRAM_ID_METADATA: &str = "telegram_id";

/// This provider's id: CryptoBot (Crypto Pay API).
pub const ID: ProviderId = ProviderId::from_static("cryptobot");

/// Enabled exactly when `CRYPTOBOT_API_TOKEN` is set (its variables are listed in
/// [`crate::settings::VARS`]).
#[derive(Debug, Clone)]
pub struct CryptoBotSettings {
    /// `CRYPTOBOT_API_TOKEN`: the app token from @CryptoBot → Crypto Pay; also the webhook key.
    pub api_token: SecretString,
    /// `CRYPTOBOT_API_URL` (default [`DEFAULT_API_URL`]), without a trailing slash.
    pub api_url: String,
    /// `CRYPTOBOT_ACCEPTED_ASSETS` (default [`DEFAULT_ACCEPTED_ASSETS`]): what a RUB invoice
    /// can be paid in.
    pub accepted_assets: Vec<String>,
    /// `CRYPTOBOT_INVOICE_TTL_MINUTES` (default 60): the invoices' `expires_in`.
    pub invoice_ttl: Duration,
    /// `CRYPTOBOT_MAX_ATTEMPTS` (default 3) and `CRYPTOBOT_TIMEOUT_MS` (default 10 000).
    pub retry: HttpRetry,
}

impl CryptoBotSettings {
    pub fn new(api_token: impl Into<String>) -> Self {
        Self {
            api_token: SecretString::from(api_token.into()),
            api_url: DEFAULT_API_URL.to_owned(),
            accepted_assets: split_assets(DEFAULT_ACCEPTED_ASSETS),
            invoice_ttl: DEFAULT_INVOICE_TTL,
            retry: HttpRetry {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(300),
                max_backoff: Duration::from_secs(5),
                request_timeout: Duration::from_secs(10),
            },
        }
    }

    /// Reads the `CRYPTOBOT_*` variables. Every variable is read and checked even while the
    /// token is unset, so a typo shows at start-up, not when the provider is switched on.
    pub fn from_vars(vars: &Vars) -> Result<Option<Self>, SettingsError> {
        let token = vars.get("CRYPTOBOT_API_TOKEN");
        let api_url = vars.url("CRYPTOBOT_API_URL")?;
        let accepted = vars.get("CRYPTOBOT_ACCEPTED_ASSETS").map(split_assets);
        if let Some(list) = &accepted
            && (list.is_empty()
                || list.iter().any(|a| {
                    !a.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                }))
        {
            return Err(SettingsError::Invalid {
                var: "CRYPTOBOT_ACCEPTED_ASSETS",
                reason: "a comma-separated list of asset codes such as USDT,TON,BTC".into(),
            });
        }
        let ttl = vars.parse::<u64>("CRYPTOBOT_INVOICE_TTL_MINUTES")?;
        if ttl.is_some_and(|m| m == 0 || m.saturating_mul(60) > MAX_EXPIRES_IN) {
            return Err(SettingsError::Invalid {
                var: "CRYPTOBOT_INVOICE_TTL_MINUTES",
                reason: "1 to 44640 minutes (Crypto Pay's expires_in is at most 31 days)".into(),
            });
        }
        let attempts = vars.parse::<u64>("CRYPTOBOT_MAX_ATTEMPTS")?;
        let timeout = vars.parse::<u64>("CRYPTOBOT_TIMEOUT_MS")?;
        let Some(token) = token else {
            return Ok(None);
        };
        let mut s = Self::new(token);
        if let Some(url) = api_url {
            s.api_url = url.to_owned();
        }
        if let Some(list) = accepted {
            s.accepted_assets = list;
        }
        if let Some(minutes) = ttl {
            s.invoice_ttl = Duration::from_secs(minutes * 60);
        }
        if let Some(n) = attempts {
            s.retry.max_attempts = u32::try_from(n).unwrap_or(u32::MAX).max(1);
        }
        if let Some(ms) = timeout {
            s.retry.request_timeout = Duration::from_millis(ms);
        }
        Ok(Some(s))
    }
}

fn split_assets(list: &str) -> Vec<String> {
    list.split(',')
        .map(|a| a.trim().to_ascii_uppercase())
        .filter(|a| !a.is_empty())
        .collect()
}

/// The provider: a Crypto Pay client plus the webhook key.
#[derive(Debug, Clone)]
pub struct CryptoBotProvider {
    settings: CryptoBotSettings,
    client: CryptoPayClient,
    key: SignatureKey,
}

impl CryptoBotProvider {
    pub fn new(settings: CryptoBotSettings) -> Result<Self, SettingsError> {
        use secrecy::ExposeSecret;
        let client = CryptoPayClient::new(
            &settings.api_url,
            settings.api_token.clone(),
            settings.retry,
        )
        .map_err(|e| SettingsError::Invalid {
            var: "CRYPTOBOT_API_URL",
            reason: e.to_string(),
        })?;
        let key = SignatureKey::from_token(settings.api_token.expose_secret());
        Ok(Self {
            settings,
            client,
            key,
        })
    }

    pub fn settings(&self) -> &CryptoBotSettings {
        &self.settings
    }

    /// The webhook's signature check (on the raw body).
    pub fn signature_key(&self) -> &SignatureKey {
        &self.key
    }

    /// The `spend_id` of a refund's transfer: the same refund, the same transfer.
    pub fn spend_id(refund_id: Uuid) -> String {
        format!("refund-{}", refund_id.simple())
    }

    /// `createInvoice` for our payment.
    pub async fn create_invoice(
        &self,
        request: &CreatePaymentRequest,
    ) -> Result<CreatedPayment, ProviderError> {
        let telegram_id = request
            .metadata
            .get(TELEGRAM_ID_METADATA)
            .map(|t| {
                t.parse::<i64>().map_err(|_| {
                    ProviderError::InvalidRequest(format!("telegram_id {t:?} is not a number"))
                })
            })
            .transpose()?;
        let payload = InvoicePayload {
            payment_id: request.payment_id,
            telegram_id,
        };
        let amount = request.amount.to_decimal_string();
        let (currency_type, asset, fiat, accepted_assets) = match request.amount.currency() {
            Currency::Rub => (
                "fiat",
                None,
                Some("RUB".to_owned()),
                Some(self.settings.accepted_assets.join(",")),
            ),
            Currency::Usdt => ("crypto", Some("USDT".to_owned()), None, None),
            other => {
                return Err(ProviderError::InvalidRequest(format!(
                    "CryptoBot invoices are in RUB or USDT, not {other}"
                )));
            }
        };
        let params = CreateInvoice {
            currency_type,
            asset,
            fiat,
            accepted_assets,
            amount,
            description: request.description.chars().take(MAX_DESCRIPTION).collect(),
            payload: payload.to_text(),
            expires_in: self.settings.invoice_ttl.as_secs().clamp(1, MAX_EXPIRES_IN),
            allow_comments: false,
            allow_anonymous: false,
        };
        let invoice: Invoice = self.client.call("createInvoice", &params).await?;
        let actual = invoice.money()?;
        if actual != request.amount {
            return Err(crate::error::Mismatch::Amount {
                expected: request.amount,
                actual,
            }
            .into());
        }
        Ok(CreatedPayment {
            provider_payment_id: invoice.invoice_id.to_string(),
            status: invoice.status.to_payment_status(),
            amount: actual,
            confirmation: Some(Confirmation::Redirect {
                url: invoice.bot_invoice_url.clone(),
            }),
            expires_at: invoice.expiration_date,
            test: false,
        })
    }

    /// The invoice `provider_payment_id`, from `getInvoices`.
    pub async fn fetch_invoice(&self, provider_payment_id: &str) -> Result<Invoice, ProviderError> {
        let id: i64 = provider_payment_id.parse().map_err(|_| {
            ProviderError::InvalidRequest(format!(
                "{provider_payment_id:?} is not a Crypto Pay invoice id"
            ))
        })?;
        let list: InvoiceList = self
            .client
            .call("getInvoices", &json!({"invoice_ids": id.to_string()}))
            .await?;
        list.into_items()
            .into_iter()
            .find(|i| i.invoice_id == id)
            .ok_or_else(|| {
                ProviderError::Rejected(Rejection {
                    http_status: 404,
                    code: RejectionCode::NotFound,
                    description: Some(format!("getInvoices does not list invoice {id}")),
                    parameter: Some("invoice_ids".into()),
                    error_id: None,
                })
            })
    }

    /// The worker's and reconciliation's view of our payment.
    pub async fn invoice_status(
        &self,
        payment: &PaymentRef,
    ) -> Result<ProviderPayment, ProviderError> {
        let invoice = self.fetch_invoice(&payment.provider_payment_id).await?;
        invoice.check(
            &payment.provider_payment_id,
            payment.payment_id,
            payment.amount,
        )?;
        Ok(ProviderPayment {
            provider_payment_id: invoice.invoice_id.to_string(),
            status: invoice.status.to_payment_status(),
            amount: payment.amount,
            // Transfers are not tied to invoices: our own refund records are the truth.
            refunded: Money::new(0, payment.amount.currency()),
            paid_at: invoice.paid_at,
            failure_reason: (invoice.status == transformers::InvoiceStatus::Expired)
                .then(|| "expired".to_owned()),
            confirmation: Some(Confirmation::Redirect {
                url: invoice.bot_invoice_url,
            }),
            test: false,
            saved_method: None,
        })
    }

    /// Returns `request.amount` as a `transfer` of the paid asset to the payer.
    pub async fn refund_by_transfer(
        &self,
        request: &RefundRequest,
    ) -> Result<ProviderRefund, ProviderError> {
        check_refund(request)?;
        let payment = &request.payment;
        let invoice = self.fetch_invoice(&payment.provider_payment_id).await?;
        invoice.check(
            &payment.provider_payment_id,
            payment.payment_id,
            payment.amount,
        )?;
        let (Some(asset), Some(paid_amount)) = (&invoice.paid_asset, &invoice.paid_amount) else {
            return Err(refused(format!(
                "invoice {} is {:?}: nothing was paid",
                invoice.invoice_id, invoice.status
            )));
        };
        let Some(user_id) = invoice.our_payload().and_then(|p| p.telegram_id) else {
            return Err(refused(format!(
                "invoice {} does not name the payer's Telegram id",
                invoice.invoice_id
            )));
        };
        let amount = transfer_amount(asset, paid_amount, request.amount, payment.amount)?;
        if amount <= Decimal::ZERO {
            return Err(refused(format!(
                "{} is less than the smallest {asset} transfer",
                request.amount
            )));
        }
        // No balance check first: a transfer made by an earlier attempt whose answer was lost
        // has spent the balance, and the API answers its spend_id with that transfer.
        let sent: Result<Transfer, ProviderError> = self
            .client
            .call(
                "transfer",
                &json!({
                    "user_id": user_id,
                    "asset": asset,
                    "amount": decimal_text(amount),
                    "spend_id": Self::spend_id(request.refund_id),
                    "comment": format!("Refund of payment {}", payment.payment_id),
                }),
            )
            .await;
        let transfer = match sent {
            Err(ProviderError::Rejected(r)) if is_insufficient(&r) => {
                let available = self.available(asset).await.ok();
                return Err(insufficient(asset, available, amount));
            }
            other => other?,
        };
        Ok(ProviderRefund {
            provider_refund_id: transfer.transfer_id.to_string(),
            status: domain::RefundStatus::Succeeded,
            amount: request.amount,
        })
    }

    async fn available(&self, asset: &str) -> Result<Decimal, ProviderError> {
        let balances: Vec<Balance> = self.client.call("getBalance", &json!({})).await?;
        balances
            .iter()
            .find(|b| b.currency_code == asset)
            .map_or(Ok(Decimal::ZERO), |b| {
                parse_decimal(&b.available).ok_or_else(|| {
                    ProviderError::MalformedResponse(format!(
                        "getBalance: {asset} available {:?}",
                        b.available
                    ))
                })
            })
    }
}

static DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: ID,
    title: "CryptoBot",
    currencies: &[Currency::Rub, Currency::Usdt],
    supports_refunds: true,
};

#[async_trait]
impl PaymentProvider for CryptoBotProvider {
    fn descriptor(&self) -> &ProviderDescriptor {
        &DESCRIPTOR
    }

    /// Crypto Pay posts `invoice_paid` to `POST /webhook/payment/cryptobot`.
    fn accepts_webhooks(&self) -> bool {
        true
    }

    async fn create_payment(
        &self,
        request: &CreatePaymentRequest,
    ) -> Result<CreatedPayment, ProviderError> {
        self.create_invoice(request).await
    }

    async fn get_payment_status(
        &self,
        payment: &PaymentRef,
    ) -> Result<ProviderPayment, ProviderError> {
        self.invoice_status(payment).await
    }

    async fn verify_webhook(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
        self.key
            .verify(request.headers.get(SIGNATURE_HEADER), request.body)
            .map_err(|e| WebhookError::BadSignature(e.to_string()))
    }

    async fn process_webhook(&self, body: &[u8]) -> Result<WebhookNotification, WebhookError> {
        let update = webhook::parse(body).map_err(WebhookError::MalformedBody)?;
        let invoice = update.invoice_id.to_string();
        let subject = if update.update_type == webhook::INVOICE_PAID {
            WebhookSubject::Payment {
                provider_payment_id: invoice,
                payment_id: update.payment_id,
            }
        } else {
            WebhookSubject::Other {
                object_id: Some(invoice),
            }
        };
        Ok(WebhookNotification {
            provider: self.id(),
            event: update.update_type,
            subject,
            claimed_status: Some(update.claimed_status.as_str().to_owned()),
            dedupe_key: update.dedupe_key,
        })
    }

    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        self.refund_by_transfer(request).await
    }

    /// The invoice's status, and as refunded what our refunds say: a transfer is tied to no
    /// invoice, so the gateway's notice of a refund it made (a [`crate::provider::generic_refund_notice`] with
    /// everything refunded so far) is the only record of it.
    async fn current_status(
        &self,
        query: StatusQuery<'_>,
    ) -> Result<ProviderPayment, ProviderError> {
        let mut answer = self.invoice_status(&query.reference()?).await?;
        let refunded = query
            .notification
            .and_then(|n| read_generic_refund_notice(n.body.as_bytes()))
            .filter(|r| r.status == domain::RefundStatus::Succeeded)
            .map_or(query.payment.refunded_minor, |r| {
                r.total_refunded_minor.max(query.payment.refunded_minor)
            });
        if answer.status == PaymentStatus::Succeeded && refunded > 0 {
            answer.refunded = Money::new(refunded, answer.amount.currency());
            answer.status = PaymentStatus::paid_and_refunded(refunded, answer.amount.minor());
        }
        Ok(answer)
    }
}

fn refused(description: String) -> ProviderError {
    ProviderError::Rejected(Rejection {
        http_status: 400,
        code: RejectionCode::InvalidRequest,
        description: Some(description),
        parameter: None,
        error_id: None,
    })
}

fn is_insufficient(r: &Rejection) -> bool {
    r.description.as_deref() == Some("INSUFFICIENT_FUNDS")
}

/// The refusal when the app balance cannot cover a refund: nothing was sent.
fn insufficient(asset: &str, available: Option<Decimal>, needed: Decimal) -> ProviderError {
    let has = available.map_or_else(
        || "too little".to_owned(),
        |a| format!("{} {asset}", decimal_text(a)),
    );
    refused(format!(
        "INSUFFICIENT_FUNDS: the CryptoBot app balance has {has}, the refund needs {} {asset}; \
         top the app up in @CryptoBot and refund again",
        decimal_text(needed)
    ))
}

/// Only money received can go back, at most what is left, in the payment's currency.
fn check_refund(request: &RefundRequest) -> Result<(), RefundRefusal> {
    let paid = request.payment.amount;
    if !matches!(
        request.payment_status,
        PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
    ) {
        return Err(RefundRefusal::NotSucceeded(request.payment_status));
    }
    if request.amount.currency() != paid.currency() {
        return Err(RefundRefusal::CurrencyMismatch {
            payment: paid.currency(),
            refund: request.amount.currency(),
        });
    }
    if request.amount.minor() <= 0 {
        return Err(RefundRefusal::NotPositive);
    }
    let remaining = Money::new(
        paid.minor() - request.already_refunded.minor(),
        paid.currency(),
    );
    if request.amount.minor() > remaining.minor() {
        return Err(RefundRefusal::ExceedsRemaining {
            requested: request.amount,
            remaining,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Option<CryptoBotSettings>, SettingsError> {
        CryptoBotSettings::from_vars(&vars.iter().copied().collect())
    }

    #[test]
    fn settings_switch_the_provider_on_with_the_token_and_check_every_variable() {
        assert!(read(&[]).expect("ok").is_none());
        let s = read(&[("CRYPTOBOT_API_TOKEN", "7777:AAtoken")])
            .expect("ok")
            .expect("on");
        assert_eq!(s.api_url, DEFAULT_API_URL);
        assert_eq!(s.accepted_assets, vec!["USDT", "TON", "BTC"]);
        assert_eq!(s.invoice_ttl, Duration::from_secs(3600));
        assert!(
            !format!("{s:?}").contains("AAtoken"),
            "the token is not printed"
        );
        let s = read(&[
            ("CRYPTOBOT_API_TOKEN", "t"),
            ("CRYPTOBOT_API_URL", "http://127.0.0.1:9105/api/"),
            ("CRYPTOBOT_ACCEPTED_ASSETS", "usdt, ton"),
            ("CRYPTOBOT_INVOICE_TTL_MINUTES", "15"),
            ("CRYPTOBOT_MAX_ATTEMPTS", "5"),
            ("CRYPTOBOT_TIMEOUT_MS", "2000"),
        ])
        .expect("ok")
        .expect("on");
        assert_eq!(s.api_url, "http://127.0.0.1:9105/api");
        assert_eq!(s.accepted_assets, vec!["USDT", "TON"]);
        assert_eq!(s.invoice_ttl, Duration::from_secs(900));
        assert_eq!(s.retry.max_attempts, 5);
        assert_eq!(s.retry.request_timeout, Duration::from_secs(2));
        for (var, value) in [
            ("CRYPTOBOT_API_URL", "pay.crypt.bot"),
            ("CRYPTOBOT_ACCEPTED_ASSETS", ","),
            ("CRYPTOBOT_ACCEPTED_ASSETS", "USDT;TON"),
            ("CRYPTOBOT_INVOICE_TTL_MINUTES", "0"),
            ("CRYPTOBOT_INVOICE_TTL_MINUTES", "44641"),
            ("CRYPTOBOT_MAX_ATTEMPTS", "many"),
        ] {
            assert!(
                matches!(read(&[(var, value)]), Err(SettingsError::Invalid { var: v, .. }) if v == var),
                "{var}={value}, even with the provider off"
            );
        }
    }

    #[test]
    fn refunds_are_checked_before_anything_is_asked() {
        let rub = |minor| Money::new(minor, Currency::Rub);
        let request = |status, refunded, amount| RefundRequest {
            refund_id: Uuid::from_u128(1),
            payment: PaymentRef {
                payment_id: domain::PaymentId::from_uuid(Uuid::from_u128(2)),
                provider_payment_id: "1001".into(),
                amount: rub(10_000),
            },
            payment_status: status,
            already_refunded: rub(refunded),
            amount,
            reason: None,
        };
        assert_eq!(
            check_refund(&request(PaymentStatus::Succeeded, 0, rub(10_000))),
            Ok(())
        );
        assert_eq!(
            check_refund(&request(
                PaymentStatus::PartiallyRefunded,
                4_000,
                rub(6_000)
            )),
            Ok(())
        );
        assert!(matches!(
            check_refund(&request(PaymentStatus::Pending, 0, rub(1))),
            Err(RefundRefusal::NotSucceeded(_))
        ));
        assert!(matches!(
            check_refund(&request(
                PaymentStatus::PartiallyRefunded,
                4_000,
                rub(6_001)
            )),
            Err(RefundRefusal::ExceedsRemaining { .. })
        ));
        assert!(matches!(
            check_refund(&request(
                PaymentStatus::Succeeded,
                0,
                Money::new(1, Currency::Usdt)
            )),
            Err(RefundRefusal::CurrencyMismatch { .. })
        ));
        assert_eq!(
            check_refund(&request(PaymentStatus::Succeeded, 0, rub(0))),
            Err(RefundRefusal::NotPositive)
        );
        let spend = CryptoBotProvider::spend_id(Uuid::from_u128(1));
        assert_eq!(spend, CryptoBotProvider::spend_id(Uuid::from_u128(1)));
        assert!(spend.len() <= 64);
    }
}
