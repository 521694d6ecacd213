//! Crypto Pay's wire types (shared/reference/external-apis.md §5) and their conversions to
//! ours: invoice status, amounts as exact decimals, our payload, and a refund's transfer amount.

use chrono::{DateTime, Utc};
use domain::PaymentId;
use domain::money::{Currency, Money};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::PaymentStatus;
use crate::error::{Mismatch, ProviderError};

/// `{"ok":true,"result":…}` or `{"ok":false,"error":{"code":…,"name":…}}`.
#[derive(Debug, Deserialize)]
pub struct Envelope<T> {
    pub ok: bool,
    pub result: Option<T>,
    pub error: Option<ApiError>,
}

/// The API's error: an HTTP-like code and a name such as `INSUFFICIENT_FUNDS`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    pub code: u16,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Active,
    Paid,
    Expired,
    #[serde(other)]
    Unknown,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Active => "active",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Expired => "expired",
            InvoiceStatus::Unknown => "unknown",
        }
    }

    /// Ours. An unknown status decides nothing: the payment stays pending.
    pub fn to_payment_status(self) -> PaymentStatus {
        match self {
            InvoiceStatus::Active | InvoiceStatus::Unknown => PaymentStatus::Pending,
            InvoiceStatus::Paid => PaymentStatus::Succeeded,
            InvoiceStatus::Expired => PaymentStatus::Expired,
        }
    }
}

/// The invoice fields we read (the API sends more).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Invoice {
    pub invoice_id: i64,
    #[serde(default)]
    pub currency_type: Option<String>,
    #[serde(default)]
    pub asset: Option<String>,
    #[serde(default)]
    pub fiat: Option<String>,
    /// A decimal string in `asset` or `fiat`.
    pub amount: String,
    #[serde(default)]
    pub paid_asset: Option<String>,
    #[serde(default)]
    pub paid_amount: Option<String>,
    pub status: InvoiceStatus,
    pub bot_invoice_url: String,
    #[serde(default)]
    pub expiration_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub paid_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub payload: Option<String>,
}

impl Invoice {
    /// The amount in our money: a fiat RUB invoice in kopecks, a USDT one in micro-USDT.
    /// Other fiats and assets are not ours.
    pub fn money(&self) -> Result<Money, ProviderError> {
        let (code, currency) = match (self.fiat.as_deref(), self.asset.as_deref()) {
            (Some(code), _) | (None, Some(code)) => (code, currency_of(code)),
            (None, None) => {
                return Err(ProviderError::MalformedResponse(format!(
                    "invoice {} has neither fiat nor asset",
                    self.invoice_id
                )));
            }
        };
        let currency = currency.ok_or_else(|| {
            ProviderError::Mismatch(Mismatch::Currency {
                expected: Currency::Rub,
                actual: code.to_owned(),
            })
        })?;
        parse_money(&self.amount, currency)
    }

    /// Our payload, if the invoice carries one we wrote.
    pub fn our_payload(&self) -> Option<InvoicePayload> {
        self.payload.as_deref().and_then(InvoicePayload::parse)
    }

    /// Checks the invoice against our payment: same invoice, our payment id in the payload,
    /// same amount and currency.
    pub fn check(
        &self,
        provider_payment_id: &str,
        payment_id: PaymentId,
        amount: Money,
    ) -> Result<(), Mismatch> {
        if self.invoice_id.to_string() != provider_payment_id {
            return Err(Mismatch::ObjectId {
                expected: provider_payment_id.to_owned(),
                actual: self.invoice_id.to_string(),
            });
        }
        let carried = self.our_payload().map(|p| p.payment_id);
        if carried != Some(payment_id) {
            return Err(Mismatch::PaymentId {
                expected: payment_id,
                actual: self.payload.clone(),
            });
        }
        match self.money() {
            Ok(actual) if actual == amount => Ok(()),
            Ok(actual) => Err(Mismatch::Amount {
                expected: amount,
                actual,
            }),
            Err(_) => Err(Mismatch::Currency {
                expected: amount.currency(),
                actual: self
                    .fiat
                    .clone()
                    .or_else(|| self.asset.clone())
                    .unwrap_or_default(),
            }),
        }
    }
}

/// Our currency for a Crypto Pay fiat or asset code.
pub fn currency_of(code: &str) -> Option<Currency> {
    match code {
        "RUB" => Some(Currency::Rub),
        "USDT" => Some(Currency::Usdt),
        _ => None,
    }
}

/// A decimal string into our money, exactly (never through a float).
pub fn parse_money(amount: &str, currency: Currency) -> Result<Money, ProviderError> {
    Money::parse(amount, currency)
        .map_err(|e| ProviderError::MalformedResponse(format!("amount {amount:?}: {e}")))
}

/// `getInvoices` answers `{"items":[…]}`; versions before 1.x answered the array itself.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum InvoiceList {
    Items { items: Vec<Invoice> },
    Bare(Vec<Invoice>),
}

impl InvoiceList {
    pub fn into_items(self) -> Vec<Invoice> {
        match self {
            InvoiceList::Items { items } | InvoiceList::Bare(items) => items,
        }
    }
}

/// A webhook call's body.
#[derive(Debug, Clone, Deserialize)]
pub struct Update {
    pub update_id: i64,
    pub update_type: String,
    pub payload: Invoice,
}

/// What `transfer` answers (its `user_id` is a string in the answer; numbers are accepted too).
#[derive(Debug, Clone, Deserialize)]
pub struct Transfer {
    pub transfer_id: i64,
    #[serde(default)]
    pub spend_id: Option<String>,
    pub asset: String,
    pub amount: String,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Balance {
    pub currency_code: String,
    pub available: String,
}

/// The `createInvoice` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateInvoice {
    pub currency_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fiat: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_assets: Option<String>,
    pub amount: String,
    pub description: String,
    pub payload: String,
    pub expires_in: u64,
    pub allow_comments: bool,
    pub allow_anonymous: bool,
}

/// What we write into an invoice's `payload` (≤ 4 KB): our payment id, and the payer's
/// Telegram id, the one refunds are transferred to (the Invoice object does not name its payer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoicePayload {
    #[serde(rename = "p")]
    pub payment_id: PaymentId,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub telegram_id: Option<i64>,
}

impl InvoicePayload {
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    pub fn to_text(self) -> String {
        serde_json::to_string(&self).unwrap_or_default()
    }
}

/// Decimal places a transfer of `asset` is rounded to (Crypto Pay's precision per asset;
/// an asset not listed gets 6, which every listed one allows).
pub fn asset_decimals(asset: &str) -> u32 {
    match asset {
        "TON" => 9,
        "BTC" | "ETH" | "LTC" | "BNB" => 8,
        _ => 6,
    }
}

/// A plain non-negative decimal string (`"0.72"`, `"3"`) exactly; exponents, signs and
/// spaces are refused (`rust_decimal` alone would read `"1e2"`).
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(whole) && digits(fraction))
        .then(|| text.parse().ok())
        .flatten()
}

/// A decimal string as the API takes it.
pub fn decimal_text(value: Decimal) -> String {
    value.normalize().to_string()
}

/// How much of the paid asset returns `refund` of a payment of `amount`: the paid amount in
/// proportion, rounded down to the asset's precision (a full refund is the paid amount).
pub fn transfer_amount(
    paid_asset: &str,
    paid_amount: &str,
    refund: Money,
    amount: Money,
) -> Result<Decimal, ProviderError> {
    let paid = parse_decimal(paid_amount).ok_or_else(|| {
        ProviderError::MalformedResponse(format!("paid_amount {paid_amount:?} is not a decimal"))
    })?;
    if amount.minor() <= 0 || refund.minor() <= 0 || refund.minor() > amount.minor() {
        return Err(ProviderError::InvalidRequest(format!(
            "a refund of {refund} out of {amount}"
        )));
    }
    if refund == amount {
        return Ok(paid);
    }
    let share = paid
        .checked_mul(Decimal::from(refund.minor()))
        .and_then(|v| v.checked_div(Decimal::from(amount.minor())))
        .ok_or_else(|| ProviderError::InvalidRequest(format!("a refund of {refund} overflows")))?;
    Ok(share.round_dp_with_strategy(asset_decimals(paid_asset), RoundingStrategy::ToZero))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rub(minor: i64) -> Money {
        Money::new(minor, Currency::Rub)
    }

    fn invoice(json: serde_json::Value) -> Invoice {
        serde_json::from_value(json).expect("invoice")
    }

    #[test]
    fn statuses_map_exhaustively_and_unknown_ones_decide_nothing() {
        let status = |s: &str| -> InvoiceStatus {
            serde_json::from_value(serde_json::json!(s)).expect("status")
        };
        assert_eq!(status("active").to_payment_status(), PaymentStatus::Pending);
        assert_eq!(status("paid").to_payment_status(), PaymentStatus::Succeeded);
        assert_eq!(
            status("expired").to_payment_status(),
            PaymentStatus::Expired
        );
        assert_eq!(status("refunded"), InvoiceStatus::Unknown);
        assert_eq!(
            status("refunded").to_payment_status(),
            PaymentStatus::Pending
        );
    }

    #[test]
    fn amounts_are_read_exactly_in_our_currency() {
        let rub_invoice = invoice(serde_json::json!({
            "invoice_id": 7, "currency_type": "fiat", "fiat": "RUB", "amount": "199.9",
            "status": "active", "bot_invoice_url": "https://t.me/CryptoBot?start=IVx"}));
        assert_eq!(rub_invoice.money().expect("money"), rub(19_990));
        let usdt = invoice(serde_json::json!({
            "invoice_id": 8, "asset": "USDT", "amount": "2.000001",
            "status": "paid", "bot_invoice_url": "u"}));
        assert_eq!(
            usdt.money().expect("money"),
            Money::new(2_000_001, Currency::Usdt)
        );
        let ton = invoice(serde_json::json!({
            "invoice_id": 9, "asset": "TON", "amount": "1", "status": "paid",
            "bot_invoice_url": "u"}));
        assert!(matches!(ton.money(), Err(ProviderError::Mismatch(_))));
        let too_precise = invoice(serde_json::json!({
            "invoice_id": 10, "fiat": "RUB", "amount": "1.001", "status": "paid",
            "bot_invoice_url": "u"}));
        assert!(matches!(
            too_precise.money(),
            Err(ProviderError::MalformedResponse(_))
        ));
    }

    #[test]
    fn an_invoice_is_checked_against_our_payment() {
        let ours = PaymentId::from_uuid(uuid::Uuid::from_u128(5));
        let payload = InvoicePayload {
            payment_id: ours,
            telegram_id: Some(42),
        };
        let text = payload.to_text();
        assert!(text.len() < 100, "{text}");
        assert_eq!(InvoicePayload::parse(&text), Some(payload));
        let paid = invoice(serde_json::json!({
            "invoice_id": 7, "fiat": "RUB", "amount": "100", "status": "paid",
            "bot_invoice_url": "u", "payload": text}));
        assert_eq!(paid.check("7", ours, rub(10_000)), Ok(()));
        assert!(matches!(
            paid.check("8", ours, rub(10_000)),
            Err(Mismatch::ObjectId { .. })
        ));
        assert!(matches!(
            paid.check("7", ours, rub(10_001)),
            Err(Mismatch::Amount { .. })
        ));
        let other = PaymentId::from_uuid(uuid::Uuid::from_u128(6));
        assert!(matches!(
            paid.check("7", other, rub(10_000)),
            Err(Mismatch::PaymentId { .. })
        ));
    }

    #[test]
    fn refunds_return_the_paid_asset_in_proportion_rounded_down() {
        let full = transfer_amount("TON", "0.72", rub(18_000), rub(18_000)).expect("full");
        assert_eq!(decimal_text(full), "0.72");
        let half = transfer_amount("USDT", "1.000001", rub(5_000), rub(10_000)).expect("half");
        assert_eq!(decimal_text(half), "0.5");
        let third = transfer_amount("TON", "1", rub(3_333), rub(10_000)).expect("third");
        assert_eq!(decimal_text(third), "0.3333");
        assert!(transfer_amount("TON", "1", rub(10_001), rub(10_000)).is_err());
        assert!(transfer_amount("TON", "1", rub(0), rub(10_000)).is_err());
        assert!(transfer_amount("TON", "1e2", rub(1), rub(10_000)).is_err());
    }
}
