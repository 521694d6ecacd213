//! YooKassa API v3: payments with a redirect checkout, refunds, and IP-checked notifications.
//!
//! Every POST carries an `Idempotence-Key` derived from our own id, so any retry — ours after
//! a 5xx or a timeout, or the caller's after [`ProviderError::ResultUnknown`] — can only
//! return the original result, never a second charge.

pub mod transformers;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use domain::env::Vars;
use domain::money::{Currency, Money};
use domain::{PaymentId, PaymentStatus, RefundStatus};
use ipnet::IpNet;
use outbound::{Classify, Exchange, HttpRetry, Transient, Transport, Verdict};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use self::transformers::{
    Amount, ConfirmationRequest, CreatePaymentBody, CreateRefundBody, Customer, ErrorBody,
    Notification, NotificationObject, Receipt, ReceiptItem,
};
use crate::ProviderId;
use crate::error::{
    Mismatch, ProviderError, RefundRefusal, Rejection, RejectionCode, SettingsError, WebhookError,
};
use crate::provider::{
    Confirmation, CreatePaymentRequest, CreatedPayment, PaymentProvider, PaymentRef,
    ProviderDescriptor, ProviderPayment, ProviderRefund, Recurring, RefundNotice, RefundRequest,
};
use crate::webhook::{
    ClientIpResolver, IpAllowList, WebhookHeaders, WebhookNotification, WebhookRequest,
    WebhookSubject,
};

pub const DEFAULT_API_URL: &str = "https://api.yookassa.ru/v3";
/// Where the payer lands after the checkout unless `YOOKASSA_RETURN_URL` says otherwise.
pub const DEFAULT_RETURN_URL: &str = "https://t.me/";
/// YooKassa's published notification sources (yookassa.ru/developers/using-api/webhooks#ip).
pub const PUBLISHED_NETWORKS: &[&str] = &[
    "185.71.76.0/27",
    "185.71.77.0/27",
    "77.75.153.0/25",
    "77.75.156.11",
    "77.75.156.35",
    "77.75.154.128/25",
    "2a02:5180::/32",
];
/// The metadata key that carries our payment id.
pub const METADATA_PAYMENT_ID: &str = "payment_id";

const MAX_DESCRIPTION: usize = 128;
const MAX_REFUND_DESCRIPTION: usize = 250;
const MAX_METADATA_KEYS: usize = 16;
const MAX_METADATA_KEY: usize = 32;
const MAX_METADATA_VALUE: usize = 512;
/// A partial refund must leave more than 1.00 RUB on the payment.
const MIN_REMAINDER_AFTER_PARTIAL_REFUND: i64 = 100;

/// This provider's id: YooKassa.
pub const ID: ProviderId = ProviderId::from_static("yookassa");

static DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    id: ID,
    title: "YooKassa",
    currencies: &[Currency::Rub],
    supports_refunds: true,
};

/// YooKassa's published ranges as an allow-list.
pub fn published_networks() -> IpAllowList {
    IpAllowList::new(PUBLISHED_NETWORKS.iter().filter_map(|n| {
        n.parse::<IpNet>()
            .ok()
            .or_else(|| n.parse::<IpAddr>().ok().map(IpNet::from))
    }))
}

/// 54-FZ receipt settings; receipts are sent only when these exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptSettings {
    /// Default customer contact (`YOOKASSA_RECEIPT_EMAIL`); a payment may override it.
    pub customer_email: Option<String>,
    /// `YOOKASSA_RECEIPT_PHONE`.
    pub customer_phone: Option<String>,
    /// `YOOKASSA_RECEIPT_VAT_CODE` (default 1 = no VAT).
    pub vat_code: u8,
    /// `YOOKASSA_RECEIPT_TAX_SYSTEM_CODE` (1..6, optional).
    pub tax_system_code: Option<u8>,
    /// `YOOKASSA_RECEIPT_PAYMENT_SUBJECT` (default `service`).
    pub payment_subject: String,
    /// `YOOKASSA_RECEIPT_PAYMENT_MODE` (default `full_payment`).
    pub payment_mode: String,
}

/// YooKassa is enabled exactly when `YOOKASSA_SHOP_ID` and `YOOKASSA_SECRET_KEY` are set.
#[derive(Debug, Clone)]
pub struct YooKassaSettings {
    /// `YOOKASSA_SHOP_ID`.
    pub shop_id: String,
    /// `YOOKASSA_SECRET_KEY`.
    pub secret_key: SecretString,
    /// `YOOKASSA_TEST_MODE`: accept objects with `test: true` (a test shop). Off = live shop,
    /// where a test object is refused.
    pub test_mode: bool,
    /// `YOOKASSA_API_URL` (default [`DEFAULT_API_URL`]), without a trailing slash.
    pub api_url: String,
    /// `YOOKASSA_RETURN_URL` (default [`DEFAULT_RETURN_URL`]).
    pub return_url: String,
    /// `YOOKASSA_ALLOWED_IPS`: notification sources (default [`PUBLISHED_NETWORKS`]).
    pub allowed_ips: IpAllowList,
    /// `TRUSTED_PROXIES`: our own proxies, whose forwarding headers are believed.
    pub trusted_proxies: IpAllowList,
    /// `YOOKASSA_MAX_ATTEMPTS`, `YOOKASSA_RETRY_INITIAL_MS`, `YOOKASSA_RETRY_MAX_MS`,
    /// `YOOKASSA_TIMEOUT_MS`.
    pub retry: HttpRetry,
    /// `YOOKASSA_RECEIPT_*`; present when an email or phone is configured.
    pub receipt: Option<ReceiptSettings>,
}

impl YooKassaSettings {
    /// Settings with every default, for the given shop.
    pub fn new(shop_id: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Self {
            shop_id: shop_id.into(),
            secret_key: SecretString::from(secret_key.into()),
            test_mode: false,
            api_url: DEFAULT_API_URL.to_owned(),
            return_url: DEFAULT_RETURN_URL.to_owned(),
            allowed_ips: published_networks(),
            trusted_proxies: IpAllowList::default(),
            retry: HttpRetry::default(),
            receipt: None,
        }
    }

    pub(crate) fn from_vars(vars: &Vars) -> Result<Option<Self>, SettingsError> {
        let (shop_id, secret) = match (
            vars.get("YOOKASSA_SHOP_ID"),
            vars.get("YOOKASSA_SECRET_KEY"),
        ) {
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(SettingsError::Missing("YOOKASSA_SECRET_KEY")),
            (None, Some(_)) => return Err(SettingsError::Missing("YOOKASSA_SHOP_ID")),
            (Some(shop), Some(secret)) => (shop, secret),
        };
        let mut s = Self::new(shop_id, secret);
        s.test_mode = vars.flag("YOOKASSA_TEST_MODE")?.unwrap_or(false);
        if let Some(url) = vars.url("YOOKASSA_API_URL")? {
            s.api_url = url.to_owned();
        }
        if let Some(url) = vars.get("YOOKASSA_RETURN_URL") {
            s.return_url = url.to_owned();
        }
        if let Some(list) = vars.parse::<IpAllowList>("YOOKASSA_ALLOWED_IPS")? {
            s.allowed_ips = list;
        }
        if let Some(list) = vars.parse::<IpAllowList>("TRUSTED_PROXIES")? {
            s.trusted_proxies = list;
        }
        if let Some(n) = vars.parse::<u32>("YOOKASSA_MAX_ATTEMPTS")? {
            s.retry.max_attempts = n.max(1);
        }
        let millis = |var| vars.parse::<u64>(var).map(|v| v.map(Duration::from_millis));
        if let Some(d) = millis("YOOKASSA_RETRY_INITIAL_MS")? {
            s.retry.initial_backoff = d;
        }
        if let Some(d) = millis("YOOKASSA_RETRY_MAX_MS")? {
            s.retry.max_backoff = d;
        }
        if let Some(d) = millis("YOOKASSA_TIMEOUT_MS")? {
            s.retry.request_timeout = d;
        }
        let email = vars.get("YOOKASSA_RECEIPT_EMAIL").map(str::to_owned);
        let phone = vars.get("YOOKASSA_RECEIPT_PHONE").map(str::to_owned);
        if email.is_some() || phone.is_some() {
            let tax_system_code = vars.parse::<u8>("YOOKASSA_RECEIPT_TAX_SYSTEM_CODE")?;
            if tax_system_code.is_some_and(|c| !(1..=6).contains(&c)) {
                return Err(SettingsError::Invalid {
                    var: "YOOKASSA_RECEIPT_TAX_SYSTEM_CODE",
                    reason: "must be 1..6".into(),
                });
            }
            s.receipt = Some(ReceiptSettings {
                customer_email: email,
                customer_phone: phone,
                vat_code: vars.parse::<u8>("YOOKASSA_RECEIPT_VAT_CODE")?.unwrap_or(1),
                tax_system_code,
                payment_subject: vars
                    .get("YOOKASSA_RECEIPT_PAYMENT_SUBJECT")
                    .unwrap_or("service")
                    .to_owned(),
                payment_mode: vars
                    .get("YOOKASSA_RECEIPT_PAYMENT_MODE")
                    .unwrap_or("full_payment")
                    .to_owned(),
            });
        }
        Ok(Some(s))
    }
}

/// Checks where a notification came from and parses it. Usable on its own by the gateway.
#[derive(Debug, Clone)]
pub struct YooKassaWebhookVerifier {
    allowed: IpAllowList,
    resolver: ClientIpResolver,
}

impl YooKassaWebhookVerifier {
    pub fn new(allowed: IpAllowList, trusted_proxies: IpAllowList) -> Self {
        Self {
            allowed,
            resolver: ClientIpResolver::new(trusted_proxies),
        }
    }

    pub fn from_settings(settings: &YooKassaSettings) -> Self {
        Self::new(
            settings.allowed_ips.clone(),
            settings.trusted_proxies.clone(),
        )
    }

    /// The client address (resolved through trusted proxies) if it is allowed.
    pub fn verify_source(
        &self,
        peer: IpAddr,
        headers: &WebhookHeaders,
    ) -> Result<IpAddr, WebhookError> {
        let client = self.resolver.client_ip(peer, headers)?;
        if self.allowed.contains(client) {
            Ok(client)
        } else {
            Err(WebhookError::ForbiddenSource(client))
        }
    }

    /// Parses a notification body into our provider-neutral form.
    pub fn parse(body: &[u8]) -> Result<WebhookNotification, WebhookError> {
        let notification = Notification::parse(body)?;
        let object_id = notification.object_id().map(str::to_owned);
        let (subject, claimed_status) = match notification.object {
            NotificationObject::Payment(p) => (
                WebhookSubject::Payment {
                    payment_id: p
                        .metadata_str(METADATA_PAYMENT_ID)
                        .and_then(|s| PaymentId::parse(s).ok()),
                    provider_payment_id: p.id,
                },
                Some(p.status.as_str().to_owned()),
            ),
            NotificationObject::Refund(r) => (
                WebhookSubject::Refund {
                    provider_refund_id: r.id,
                    provider_payment_id: r.payment_id,
                },
                Some(r.status.as_str().to_owned()),
            ),
            NotificationObject::Other(_) => (
                WebhookSubject::Other {
                    object_id: object_id.clone(),
                },
                None,
            ),
        };
        // YooKassa redelivers the same event about the same object: that pair is the identity.
        let dedupe_key = match object_id {
            Some(id) => format!("{}:{id}", notification.event_name),
            None => format!(
                "{}:sha256:{}",
                notification.event_name,
                hex::encode(Sha256::digest(body))
            ),
        };
        Ok(WebhookNotification {
            provider: ID,
            event: notification.event_name,
            subject,
            claimed_status,
            dedupe_key,
        })
    }

    /// Source check, then parse.
    pub fn verify(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<WebhookNotification, WebhookError> {
        self.verify_source(request.peer, request.headers)?;
        Self::parse(request.body)
    }
}

/// The YooKassa client.
pub struct YooKassaProvider {
    settings: YooKassaSettings,
    transport: Transport,
    verifier: YooKassaWebhookVerifier,
    /// Set once YooKassa answered 403 "Forbidden to save payment method": the shop has no
    /// right to recurring payments, so checkouts stop asking to save methods.
    saving_forbidden: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for YooKassaProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YooKassaProvider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl YooKassaProvider {
    pub fn new(settings: YooKassaSettings) -> Result<Self, SettingsError> {
        // Every YooKassa call of the process shares one budget (YOOKASSA_API_LIMIT): our own
        // reconciliation can never exceed it; a call waits for its slot.
        let transport = Transport::new("yookassa", settings.retry, Some(&ratelimit::YOOKASSA))
            .map_err(|e| SettingsError::Invalid {
                var: "YOOKASSA_API_URL",
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        let verifier = YooKassaWebhookVerifier::from_settings(&settings);
        Ok(Self {
            settings,
            transport,
            verifier,
            saving_forbidden: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn settings(&self) -> &YooKassaSettings {
        &self.settings
    }

    pub fn webhook_verifier(&self) -> &YooKassaWebhookVerifier {
        &self.verifier
    }

    /// The `Idempotence-Key` of a payment's creation: fixed by our payment id.
    pub fn payment_idempotence_key(payment_id: PaymentId) -> String {
        format!("payment-{payment_id}")
    }

    /// The `Idempotence-Key` of a refund: fixed by our refund id.
    pub fn refund_idempotence_key(refund_id: Uuid) -> String {
        format!("refund-{refund_id}")
    }

    /// GET /payments/{id}, with the test-mode check but no comparison against our records.
    pub async fn fetch_payment(
        &self,
        provider_payment_id: &str,
    ) -> Result<transformers::Payment, ProviderError> {
        let path = format!("/payments/{}", path_segment(provider_payment_id)?);
        let payment: transformers::Payment = self.call(Method::GET, &path, None, None).await?;
        self.check_test(payment.test, &payment.id)?;
        Ok(payment)
    }

    /// GET /refunds/{id}.
    pub async fn fetch_refund(
        &self,
        provider_refund_id: &str,
    ) -> Result<transformers::Refund, ProviderError> {
        let path = format!("/refunds/{}", path_segment(provider_refund_id)?);
        self.call(Method::GET, &path, None, None).await
    }

    fn check_test(&self, test: bool, object_id: &str) -> Result<(), ProviderError> {
        if test && !self.settings.test_mode {
            tracing::error!(
                object_id,
                "yookassa returned a test object while test mode is off"
            );
            return Err(ProviderError::TestObjectRefused {
                object_id: object_id.to_owned(),
            });
        }
        Ok(())
    }

    fn receipt(&self, description: &str, amount: Money, email: Option<&str>) -> Option<Receipt> {
        let settings = self.settings.receipt.as_ref()?;
        Some(Receipt {
            customer: Customer {
                email: email
                    .map(str::to_owned)
                    .or_else(|| settings.customer_email.clone()),
                phone: settings.customer_phone.clone(),
            },
            items: vec![ReceiptItem {
                description: truncate(description, MAX_DESCRIPTION),
                quantity: "1.00".into(),
                amount: amount.into(),
                vat_code: settings.vat_code,
                payment_mode: settings.payment_mode.clone(),
                payment_subject: settings.payment_subject.clone(),
            }],
            tax_system_code: settings.tax_system_code,
        })
    }

    /// Checks a payment object against our record and maps it.
    fn to_provider_payment(
        &self,
        payment: &transformers::Payment,
        expected: &PaymentRef,
    ) -> Result<ProviderPayment, ProviderError> {
        self.check_test(payment.test, &payment.id)?;
        if payment.id != expected.provider_payment_id {
            return Err(Mismatch::ObjectId {
                expected: expected.provider_payment_id.clone(),
                actual: payment.id.clone(),
            }
            .into());
        }
        let ours = payment.metadata_str(METADATA_PAYMENT_ID);
        if ours != Some(expected.payment_id.to_string().as_str()) {
            return Err(Mismatch::PaymentId {
                expected: expected.payment_id,
                actual: ours.map(str::to_owned),
            }
            .into());
        }
        let amount = checked_amount(&payment.amount, expected.amount)?;
        let refunded = match &payment.refunded_amount {
            Some(r) => parse_amount(r, amount.currency())?,
            None => Money::new(0, amount.currency()),
        };
        let status = transformers::map_payment_status(payment, amount, refunded);
        let confirmation = payment
            .confirmation
            .as_ref()
            .filter(|c| c.kind == "redirect")
            .and_then(|c| c.confirmation_url.clone())
            .map(|url| Confirmation::Redirect { url });
        Ok(ProviderPayment {
            provider_payment_id: payment.id.clone(),
            status,
            amount,
            refunded,
            paid_at: if payment.paid {
                payment.captured_at
            } else {
                None
            },
            failure_reason: payment
                .cancellation_details
                .as_ref()
                .map(|d| d.reason.clone()),
            confirmation,
            test: payment.test,
            saved_method: payment
                .payment_method
                .as_ref()
                .filter(|m| m.saved == Some(true))
                .and_then(|m| {
                    Some(crate::SavedMethod {
                        id: m.id.clone()?,
                        title: m.title.clone().unwrap_or_else(|| m.kind.clone()),
                    })
                }),
        })
    }

    /// Sends one request through the transport: 5xx/202/429/timeouts are retried with the
    /// same body and key ([`YooKassaAnswers`]).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        idempotence_key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<T, ProviderError> {
        let url = format!("{}{path}", self.settings.api_url);
        let bytes = self
            .transport
            .send(&YooKassaAnswers, |http| {
                let mut request = http.request(method.clone(), &url).basic_auth(
                    &self.settings.shop_id,
                    Some(self.settings.secret_key.expose_secret()),
                );
                if let Some(key) = idempotence_key {
                    request = request.header("Idempotence-Key", key);
                }
                if let Some(body) = &body {
                    request = request
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone());
                }
                request
            })
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::MalformedResponse(format!("{method} {path}: {e}")))
    }
}

/// YooKassa's answers for the transport: 2xx is done; 202 (processing), 429 (with its
/// `Retry-After`, capped), 5xx and no answer are retried with the same key; any other status
/// is a definite refusal with YooKassa's error body.
struct YooKassaAnswers;

impl Classify for YooKassaAnswers {
    type Output = Vec<u8>;
    type Error = ProviderError;

    fn classify(&self, exchange: Exchange) -> Verdict<Vec<u8>, ProviderError> {
        let answer = match exchange {
            Exchange::Failed(e) if e.is_builder() => {
                return Verdict::Fail(ProviderError::Client(e.to_string()));
            }
            Exchange::Failed(e) => return Verdict::Retry(Transient::from_wire(&e)),
            Exchange::Answered(answer) => answer,
        };
        match answer.status {
            202 | 429 | 500..=599 => {
                let asked = answer
                    .retry_after()
                    .map(|asked| outbound::cap_asked_pause("YooKassa", asked));
                Verdict::Retry(Transient::from_status(&answer).asking(asked))
            }
            200..=299 => Verdict::Done(answer.body),
            status => Verdict::Fail(rejection(status, &answer.body).into()),
        }
    }

    fn exhausted(&self, attempts: u32, last: Transient) -> ProviderError {
        ProviderError::ResultUnknown {
            attempts,
            last: last.failure,
        }
    }
}

fn rejection(status: u16, body: &[u8]) -> Rejection {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => Rejection {
            http_status: status,
            code: e.code,
            description: e.description,
            parameter: e.parameter,
            error_id: e.id,
        },
        // 405/415 come without an error body.
        Err(_) => Rejection {
            http_status: status,
            code: match status {
                401 => RejectionCode::InvalidCredentials,
                403 => RejectionCode::Forbidden,
                404 => RejectionCode::NotFound,
                _ => RejectionCode::Unknown,
            },
            description: Some(String::from_utf8_lossy(body).chars().take(200).collect()),
            parameter: None,
            error_id: None,
        },
    }
}

/// YooKassa's 403 "Forbidden to save payment method" (the shop has no right to recurring
/// payments).
fn is_saving_forbidden(rejection: &Rejection) -> bool {
    rejection.http_status == 403
        && rejection
            .description
            .as_deref()
            .is_some_and(|d| d.to_ascii_lowercase().contains("save payment method"))
}

/// Object ids go into the URL path; refuse anything but YooKassa's id alphabet.
fn path_segment(id: &str) -> Result<&str, ProviderError> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(id)
    } else {
        Err(ProviderError::InvalidRequest(format!(
            "not a YooKassa object id: {id:?}"
        )))
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

fn parse_amount(amount: &Amount, expected_currency: Currency) -> Result<Money, ProviderError> {
    let currency: Currency = amount.currency.parse().map_err(|_| Mismatch::Currency {
        expected: expected_currency,
        actual: amount.currency.clone(),
    })?;
    if currency != expected_currency {
        return Err(Mismatch::Currency {
            expected: expected_currency,
            actual: amount.currency.clone(),
        }
        .into());
    }
    Money::parse(&amount.value, currency)
        .map_err(|e| ProviderError::MalformedResponse(format!("amount {:?}: {e}", amount.value)))
}

/// The answer's amount, exactly parsed, if it equals ours.
fn checked_amount(amount: &Amount, expected: Money) -> Result<Money, ProviderError> {
    let actual = parse_amount(amount, expected.currency())?;
    if actual != expected {
        return Err(Mismatch::Amount { expected, actual }.into());
    }
    Ok(actual)
}

fn metadata(request: &CreatePaymentRequest) -> Result<BTreeMap<String, String>, ProviderError> {
    let mut metadata = request.metadata.clone();
    metadata.insert(METADATA_PAYMENT_ID.into(), request.payment_id.to_string());
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(ProviderError::InvalidRequest(format!(
            "at most {MAX_METADATA_KEYS} metadata keys"
        )));
    }
    for (key, value) in &metadata {
        if key.chars().count() > MAX_METADATA_KEY || value.chars().count() > MAX_METADATA_VALUE {
            return Err(ProviderError::InvalidRequest(format!(
                "metadata {key:?}: keys up to {MAX_METADATA_KEY} and values up to {MAX_METADATA_VALUE} characters"
            )));
        }
    }
    Ok(metadata)
}

/// YooKassa's refund rules, checked against our records before calling it.
pub fn check_refund(request: &RefundRequest) -> Result<(), RefundRefusal> {
    if !matches!(
        request.payment_status,
        PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
    ) {
        return Err(RefundRefusal::NotSucceeded(request.payment_status));
    }
    let paid = request.payment.amount;
    for other in [request.amount, request.already_refunded] {
        if other.currency() != paid.currency() {
            return Err(RefundRefusal::CurrencyMismatch {
                payment: paid.currency(),
                refund: other.currency(),
            });
        }
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
    let left = remaining.minor() - request.amount.minor();
    if paid.currency() == Currency::Rub && left > 0 && left <= MIN_REMAINDER_AFTER_PARTIAL_REFUND {
        return Err(RefundRefusal::RemainderTooSmall {
            remainder: Money::new(left, paid.currency()),
            minimum: Money::new(MIN_REMAINDER_AFTER_PARTIAL_REFUND, Currency::Rub),
        });
    }
    Ok(())
}

#[async_trait]
impl PaymentProvider for YooKassaProvider {
    /// Unless YooKassa answered that this shop may not save payment methods.
    fn saves_methods(&self) -> bool {
        !self
            .saving_forbidden
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn descriptor(&self) -> &ProviderDescriptor {
        &DESCRIPTOR
    }

    /// Notifications come from YooKassa's published networks (`YOOKASSA_ALLOWED_IPS`).
    fn accepts_webhooks(&self) -> bool {
        true
    }

    /// A `refund.<status>` notification, as YooKassa sends one for the refund.
    fn refund_notice(&self, notice: &RefundNotice<'_>) -> String {
        let (refund, at) = (notice.refund, notice.at);
        let status = match refund.status {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "canceled",
        };
        serde_json::json!({
            "type": "notification",
            "event": format!("refund.{status}"),
            "object": {
                "id": refund.provider_refund_id,
                "payment_id": notice.provider_payment_id,
                "status": status,
                "amount": {
                    "value": refund.amount.to_decimal_string(),
                    "currency": refund.amount.currency().code(),
                },
                "created_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }
        })
        .to_string()
    }

    async fn create_payment(
        &self,
        request: &CreatePaymentRequest,
    ) -> Result<CreatedPayment, ProviderError> {
        if !DESCRIPTOR.currencies.contains(&request.amount.currency()) {
            return Err(ProviderError::InvalidRequest(format!(
                "YooKassa charges in RUB, not {}",
                request.amount.currency()
            )));
        }
        if request.amount.minor() <= 0 {
            return Err(ProviderError::InvalidRequest(
                "amount must be positive".into(),
            ));
        }
        let description = truncate(&request.description, MAX_DESCRIPTION);
        let (save, method_id) = match &request.recurring {
            Recurring::No => (false, None),
            Recurring::SaveMethod => (self.saves_methods(), None),
            Recurring::Charge { method_id } => (false, Some(method_id.clone())),
        };
        let mut body = CreatePaymentBody {
            amount: request.amount.into(),
            capture: true,
            confirmation: method_id.is_none().then(|| ConfirmationRequest {
                kind: "redirect",
                return_url: request
                    .return_url
                    .clone()
                    .unwrap_or_else(|| self.settings.return_url.clone()),
            }),
            save_payment_method: save,
            payment_method_id: method_id,
            receipt: self.receipt(
                &description,
                request.amount,
                request.receipt_email.as_deref(),
            ),
            description,
            metadata: metadata(request)?,
        };
        let key = Self::payment_idempotence_key(request.payment_id);
        let encoded =
            serde_json::to_vec(&body).map_err(|e| ProviderError::Client(e.to_string()))?;
        let payment: transformers::Payment = match self
            .call(Method::POST, "/payments", Some(&key), Some(encoded))
            .await
        {
            Err(ProviderError::Rejected(r)) if save && is_saving_forbidden(&r) => {
                // The shop may not save methods: one line, then plain payments from now on
                // (under a key of their own: the refused request keeps its key).
                if !self
                    .saving_forbidden
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(description = ?r.description, "YooKassa refuses to save payment methods for this shop (403): automatic renewal with saved cards is off; ask YooKassa to enable autopayments");
                }
                body.save_payment_method = false;
                let encoded =
                    serde_json::to_vec(&body).map_err(|e| ProviderError::Client(e.to_string()))?;
                self.call(
                    Method::POST,
                    "/payments",
                    Some(&format!("{key}-plain")),
                    Some(encoded),
                )
                .await?
            }
            other => other?,
        };
        let expected = PaymentRef {
            payment_id: request.payment_id,
            provider_payment_id: payment.id.clone(),
            amount: request.amount,
        };
        let mapped = self.to_provider_payment(&payment, &expected)?;
        tracing::info!(payment_id = %request.payment_id, provider_payment_id = %payment.id, status = %mapped.status, "yookassa payment created");
        Ok(CreatedPayment {
            provider_payment_id: mapped.provider_payment_id,
            status: mapped.status,
            amount: mapped.amount,
            confirmation: mapped.confirmation,
            expires_at: payment.expires_at,
            test: mapped.test,
        })
    }

    async fn get_payment_status(
        &self,
        payment: &PaymentRef,
    ) -> Result<ProviderPayment, ProviderError> {
        let fetched = self.fetch_payment(&payment.provider_payment_id).await?;
        self.to_provider_payment(&fetched, payment)
    }

    async fn verify_webhook(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
        self.verifier
            .verify_source(request.peer, request.headers)
            .map(|_| ())
    }

    async fn process_webhook(&self, body: &[u8]) -> Result<WebhookNotification, WebhookError> {
        YooKassaWebhookVerifier::parse(body)
    }

    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        check_refund(request)?;
        let description = request
            .reason
            .as_deref()
            .map(|r| truncate(r, MAX_REFUND_DESCRIPTION));
        let body = CreateRefundBody {
            payment_id: path_segment(&request.payment.provider_payment_id)?.to_owned(),
            amount: request.amount.into(),
            receipt: self.receipt(
                description.as_deref().unwrap_or("Refund"),
                request.amount,
                None,
            ),
            description,
        };
        let body = serde_json::to_vec(&body).map_err(|e| ProviderError::Client(e.to_string()))?;
        let key = Self::refund_idempotence_key(request.refund_id);
        let refund: transformers::Refund = self
            .call(Method::POST, "/refunds", Some(&key), Some(body))
            .await?;
        if refund.payment_id != request.payment.provider_payment_id {
            return Err(Mismatch::ObjectId {
                expected: request.payment.provider_payment_id.clone(),
                actual: refund.payment_id,
            }
            .into());
        }
        let amount = checked_amount(&refund.amount, request.amount)?;
        tracing::info!(payment_id = %request.payment.payment_id, refund_id = %refund.id, status = ?refund.status, "yookassa refund created");
        Ok(ProviderRefund {
            provider_refund_id: refund.id,
            status: refund.status.into(),
            amount,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rub(minor: i64) -> Money {
        Money::new(minor, Currency::Rub)
    }

    fn refund(status: PaymentStatus, paid: i64, refunded: i64, amount: Money) -> RefundRequest {
        RefundRequest {
            refund_id: Uuid::nil(),
            payment: PaymentRef {
                payment_id: PaymentId::new(),
                provider_payment_id: "p".into(),
                amount: rub(paid),
            },
            payment_status: status,
            already_refunded: rub(refunded),
            amount,
            reason: None,
        }
    }

    #[test]
    fn refund_rules() {
        assert_eq!(
            check_refund(&refund(PaymentStatus::Succeeded, 10_000, 0, rub(10_000))),
            Ok(())
        );
        assert_eq!(
            check_refund(&refund(PaymentStatus::Succeeded, 10_000, 0, rub(9_899))),
            Ok(())
        );
        assert_eq!(
            check_refund(&refund(
                PaymentStatus::PartiallyRefunded,
                10_000,
                3_000,
                rub(7_000)
            )),
            Ok(())
        );
        assert_eq!(
            check_refund(&refund(PaymentStatus::Pending, 10_000, 0, rub(100))),
            Err(RefundRefusal::NotSucceeded(PaymentStatus::Pending))
        );
        assert!(matches!(
            check_refund(&refund(
                PaymentStatus::Succeeded,
                10_000,
                0,
                Money::new(100, Currency::Xtr)
            )),
            Err(RefundRefusal::CurrencyMismatch { .. })
        ));
        assert_eq!(
            check_refund(&refund(PaymentStatus::Succeeded, 10_000, 0, rub(0))),
            Err(RefundRefusal::NotPositive)
        );
        assert!(matches!(
            check_refund(&refund(
                PaymentStatus::PartiallyRefunded,
                10_000,
                3_000,
                rub(7_001)
            )),
            Err(RefundRefusal::ExceedsRemaining { .. })
        ));
        assert!(matches!(
            check_refund(&refund(PaymentStatus::Succeeded, 10_000, 0, rub(9_900))),
            Err(RefundRefusal::RemainderTooSmall { .. })
        ));
    }

    #[test]
    fn keys_are_deterministic_and_short() {
        let id = PaymentId::new();
        let key = YooKassaProvider::payment_idempotence_key(id);
        assert_eq!(key, YooKassaProvider::payment_idempotence_key(id));
        assert!(key.len() <= 64);
        assert!(YooKassaProvider::refund_idempotence_key(Uuid::new_v4()).len() <= 64);
    }

    #[test]
    fn published_networks_all_parse() {
        assert_eq!(published_networks().nets().len(), PUBLISHED_NETWORKS.len());
    }

    #[test]
    fn path_segments_are_checked() {
        assert!(path_segment("22e12f66-000f-5000-8000-18db351245c7").is_ok());
        assert!(path_segment("../me").is_err());
        assert!(path_segment("").is_err());
    }
}
