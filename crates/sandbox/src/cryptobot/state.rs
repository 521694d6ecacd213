//! The app's invoices, transfers and balances, and the API's parameter rules.
//!
//! Every API method is a function from the request's parameters to a `result` or an
//! [`ApiError`]; the parameter rules are those of §5 of the reference, strict where it is silent.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Duration as Span, SecondsFormat, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{ControlError, Fault, NotificationMode, RequestRecord};

/// Crypto assets an invoice or a transfer can be in, with the decimals the emulator keeps.
pub const ASSETS: [(&str, u32); 8] = [
    ("USDT", 6),
    ("TON", 9),
    ("BTC", 8),
    ("ETH", 8),
    ("LTC", 8),
    ("BNB", 8),
    ("TRX", 6),
    ("USDC", 6),
];

/// Fiat currencies a `currency_type: "fiat"` invoice can be in.
pub const FIATS: [&str; 20] = [
    "USD", "EUR", "RUB", "BYN", "UAH", "GBP", "CNY", "KZT", "UZS", "GEL", "TRY", "AMD", "THB",
    "INR", "BRL", "IDR", "AZN", "AED", "PLN", "ILS",
];

/// `expires_in` bounds (seconds).
const EXPIRES_IN: std::ops::RangeInclusive<i64> = 1..=2_678_400;
const MAX_DESCRIPTION: usize = 1024;
const MAX_HIDDEN_MESSAGE: usize = 2048;
const MAX_PAYLOAD_BYTES: usize = 4096;
const MAX_SPEND_ID: usize = 64;
const MAX_COMMENT: usize = 1024;
const MAX_COUNT: i64 = 1000;
const PAID_BUTTONS: [&str; 4] = ["viewItem", "openChannel", "openBot", "callback"];

pub fn asset_decimals(asset: &str) -> Option<u32> {
    ASSETS.iter().find(|(a, _)| *a == asset).map(|(_, d)| *d)
}

/// `{"ok":false,"error":{"code":…,"name":…}}` with the same HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub name: String,
}

impl ApiError {
    pub fn new(code: u16, name: impl Into<String>) -> Self {
        Self {
            code,
            name: name.into(),
        }
    }

    /// A parameter the API refuses: `ASSET_INVALID`, `AMOUNT_INVALID`, …
    pub fn invalid(param: &str) -> Self {
        Self::new(400, format!("{}_INVALID", param.to_ascii_uppercase()))
    }

    pub fn body(&self) -> Value {
        json!({"ok": false, "error": {"code": self.code, "name": self.name}})
    }
}

/// The request's parameters: a query string's pairs or a JSON object, one map.
pub type Params = Map<String, Value>;

fn text<'a>(params: &'a Params, name: &str) -> Result<Option<&'a str>, ApiError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(ApiError::invalid(name)),
    }
}

/// A text of at most `max` characters.
fn short_text(params: &Params, name: &str, max: usize) -> Result<Option<String>, ApiError> {
    match text(params, name)? {
        Some(t) if t.chars().count() > max => Err(ApiError::invalid(name)),
        t => Ok(t.map(str::to_owned)),
    }
}

/// Integers come as JSON numbers or, in query strings, as digits.
fn int(params: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| ApiError::invalid(name)),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| ApiError::invalid(name)),
        Some(_) => Err(ApiError::invalid(name)),
    }
}

fn flag(params: &Params, name: &str) -> Result<Option<bool>, ApiError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" => Ok(Some(false)),
        Some(_) => Err(ApiError::invalid(name)),
    }
}

/// A positive decimal **string** with at most `decimals` fraction digits (a JSON number is
/// refused: §5 says the amount is a string, and floats are how money gets lost).
fn amount(params: &Params, decimals: u32) -> Result<Decimal, ApiError> {
    let raw = text(params, "amount")?.ok_or_else(|| ApiError::invalid("amount"))?;
    parse_amount(raw, decimals).ok_or_else(|| ApiError::invalid("amount"))
}

pub fn parse_amount(raw: &str, decimals: u32) -> Option<Decimal> {
    let plain = !raw.is_empty()
        && raw.chars().all(|c| c.is_ascii_digit() || c == '.')
        && raw.matches('.').count() <= 1
        && !raw.starts_with('.')
        && !raw.ends_with('.');
    let value: Decimal = raw.parse().ok().filter(|_| plain)?;
    (value > Decimal::ZERO && value.scale() <= decimals).then_some(value)
}

/// A decimal as the API writes it: no exponent, no trailing zeros beyond the first fraction
/// digit ("12.5", "3", "0.000001").
pub fn decimal_text(value: Decimal) -> String {
    value.normalize().to_string()
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An invoice as the API shows it (§5's field list).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invoice {
    pub invoice_id: i64,
    pub hash: String,
    pub currency_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fiat: Option<String>,
    pub amount: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_asset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_fiat_rate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_usd_rate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_assets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fee_asset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fee_amount: Option<String>,
    pub bot_invoice_url: String,
    pub mini_app_invoice_url: String,
    pub web_app_invoice_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub status: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_anonymously: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_btn_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_btn_url: Option<String>,
    pub allow_comments: bool,
    pub allow_anonymous: bool,
}

struct Stored {
    invoice: Invoice,
    expires_at: Option<DateTime<Utc>>,
}

/// A transfer as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transfer {
    pub transfer_id: i64,
    pub spend_id: String,
    /// A string in the answer (the request's `user_id` is a number).
    pub user_id: String,
    pub asset: String,
    pub amount: String,
    pub status: String,
    pub completed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// An `invoice_paid` update waiting to be delivered.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub update_id: i64,
    pub invoice_id: i64,
    /// The exact body, signed as sent.
    pub body: Vec<u8>,
}

/// How the emulator prices what it does not know: RUB per unit of each asset.
#[derive(Debug, Clone)]
pub struct Prices {
    pub rub_per_unit: BTreeMap<String, Decimal>,
    /// The app's fee on a paid invoice, in basis points of the paid amount (Crypto Pay: 3 %).
    pub fee_bps: u32,
}

#[derive(Default)]
pub struct State {
    invoices: BTreeMap<i64, Stored>,
    transfers: Vec<Transfer>,
    by_spend_id: HashMap<String, usize>,
    /// Available balance per asset.
    pub balances: BTreeMap<String, Decimal>,
    next_invoice: i64,
    next_update: i64,
    pub faults: VecDeque<Fault>,
    pub notification_modes: VecDeque<NotificationMode>,
    pub requests: Vec<RequestRecord>,
}

impl State {
    pub fn new(balances: BTreeMap<String, Decimal>) -> Self {
        Self {
            balances,
            next_invoice: 1000,
            next_update: 1,
            ..Self::default()
        }
    }

    pub fn create_invoice(
        &mut self,
        params: &Params,
        now: DateTime<Utc>,
    ) -> Result<Value, ApiError> {
        let currency_type = text(params, "currency_type")?.unwrap_or("crypto");
        let (asset, fiat, accepted, decimals) = match currency_type {
            "crypto" => {
                let asset = text(params, "asset")?.ok_or_else(|| ApiError::invalid("asset"))?;
                let decimals = asset_decimals(asset).ok_or_else(|| ApiError::invalid("asset"))?;
                (Some(asset.to_owned()), None, None, decimals)
            }
            "fiat" => {
                let fiat = text(params, "fiat")?
                    .filter(|f| FIATS.contains(f))
                    .ok_or_else(|| ApiError::invalid("fiat"))?;
                let accepted = text(params, "accepted_assets")?
                    .map(|list| {
                        list.split(',')
                            .map(|a| {
                                let a = a.trim();
                                asset_decimals(a)
                                    .map(|_| a.to_owned())
                                    .ok_or_else(|| ApiError::invalid("accepted_assets"))
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()?;
                (None, Some(fiat.to_owned()), accepted, 2)
            }
            _ => return Err(ApiError::invalid("currency_type")),
        };
        let amount = amount(params, decimals)?;
        let description = short_text(params, "description", MAX_DESCRIPTION)?;
        let hidden_message = short_text(params, "hidden_message", MAX_HIDDEN_MESSAGE)?;
        let payload = text(params, "payload")?.map(str::to_owned);
        if payload
            .as_ref()
            .is_some_and(|p| p.len() > MAX_PAYLOAD_BYTES)
        {
            return Err(ApiError::invalid("payload"));
        }
        let paid_btn_name = text(params, "paid_btn_name")?.map(str::to_owned);
        let paid_btn_url = text(params, "paid_btn_url")?.map(str::to_owned);
        if let Some(name) = &paid_btn_name {
            if !PAID_BUTTONS.contains(&name.as_str()) {
                return Err(ApiError::invalid("paid_btn_name"));
            }
            if !paid_btn_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://") || u.starts_with("http://"))
            {
                return Err(ApiError::invalid("paid_btn_url"));
            }
        }
        let expires_in = int(params, "expires_in")?;
        if expires_in.is_some_and(|s| !EXPIRES_IN.contains(&s)) {
            return Err(ApiError::invalid("expires_in"));
        }
        let allow_comments = flag(params, "allow_comments")?.unwrap_or(true);
        let allow_anonymous = flag(params, "allow_anonymous")?.unwrap_or(true);

        let invoice_id = self.next_invoice;
        self.next_invoice += 1;
        let hash = format!("IV{}", uuid::Uuid::new_v4().simple())[..14].to_owned();
        let expires_at = expires_in.map(|s| now + Span::seconds(s));
        let invoice = Invoice {
            invoice_id,
            bot_invoice_url: format!("https://t.me/CryptoBot?start={hash}"),
            mini_app_invoice_url: format!("https://t.me/CryptoBot/app?startapp=invoice-{hash}"),
            web_app_invoice_url: format!("https://app.cr.bot/invoices/{hash}"),
            hash,
            currency_type: currency_type.to_owned(),
            asset,
            fiat,
            amount: decimal_text(amount),
            paid_asset: None,
            paid_amount: None,
            paid_fiat_rate: None,
            paid_usd_rate: None,
            accepted_assets: accepted,
            fee_asset: None,
            fee_amount: None,
            description,
            status: "active".to_owned(),
            created_at: iso(now),
            expiration_date: expires_at.map(iso),
            paid_at: None,
            paid_anonymously: None,
            comment: None,
            hidden_message,
            payload,
            paid_btn_name,
            paid_btn_url,
            allow_comments,
            allow_anonymous,
        };
        let answer = to_json(&invoice);
        self.invoices.insert(
            invoice_id,
            Stored {
                invoice,
                expires_at,
            },
        );
        Ok(answer)
    }

    pub fn get_invoices(&self, params: &Params) -> Result<Value, ApiError> {
        let asset = text(params, "asset")?;
        if asset.is_some_and(|a| asset_decimals(a).is_none()) {
            return Err(ApiError::invalid("asset"));
        }
        let fiat = text(params, "fiat")?;
        if fiat.is_some_and(|f| !FIATS.contains(&f)) {
            return Err(ApiError::invalid("fiat"));
        }
        let ids = text(params, "invoice_ids")?
            .map(|list| {
                list.split(',')
                    .map(|id| id.trim().parse::<i64>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| ApiError::invalid("invoice_ids"))
            })
            .transpose()?;
        let status = text(params, "status")?;
        if status.is_some_and(|s| s != "active" && s != "paid") {
            return Err(ApiError::invalid("status"));
        }
        let offset = int(params, "offset")?.unwrap_or(0);
        let count = int(params, "count")?.unwrap_or(100);
        if offset < 0 {
            return Err(ApiError::invalid("offset"));
        }
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(ApiError::invalid("count"));
        }
        let items: Vec<Value> = self
            .invoices
            .values()
            .rev()
            .map(|s| &s.invoice)
            .filter(|i| asset.is_none() || i.asset.as_deref() == asset)
            .filter(|i| fiat.is_none() || i.fiat.as_deref() == fiat)
            .filter(|i| ids.as_ref().is_none_or(|ids| ids.contains(&i.invoice_id)))
            .filter(|i| status.is_none_or(|s| i.status == s))
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(count).unwrap_or(0))
            .map(to_json)
            .collect();
        Ok(json!({"items": items}))
    }

    pub fn delete_invoice(&mut self, params: &Params) -> Result<Value, ApiError> {
        let id = int(params, "invoice_id")?.ok_or_else(|| ApiError::invalid("invoice_id"))?;
        match self.invoices.remove(&id) {
            Some(_) => Ok(Value::Bool(true)),
            None => Err(ApiError::new(400, "INVOICE_NOT_FOUND")),
        }
    }

    /// Sends `amount` of `asset` to `user_id` once per `spend_id`: a repeated `spend_id`
    /// answers the transfer it made (§5: "idempotent by spend_id") without moving money again.
    pub fn transfer(&mut self, params: &Params, now: DateTime<Utc>) -> Result<Value, ApiError> {
        let user_id = int(params, "user_id")?
            .filter(|id| *id > 0)
            .ok_or_else(|| ApiError::invalid("user_id"))?;
        let asset = text(params, "asset")?.ok_or_else(|| ApiError::invalid("asset"))?;
        let decimals = asset_decimals(asset).ok_or_else(|| ApiError::invalid("asset"))?;
        let amount = amount(params, decimals)?;
        let spend_id = text(params, "spend_id")?
            .filter(|s| !s.is_empty() && s.chars().count() <= MAX_SPEND_ID)
            .ok_or_else(|| ApiError::invalid("spend_id"))?;
        let comment = short_text(params, "comment", MAX_COMMENT)?;
        flag(params, "disable_send_notification")?;
        if let Some(&index) = self.by_spend_id.get(spend_id) {
            return Ok(to_json(&self.transfers[index]));
        }
        let available = self.balances.get(asset).copied().unwrap_or_default();
        if available < amount {
            return Err(ApiError::new(400, "INSUFFICIENT_FUNDS"));
        }
        self.balances.insert(asset.to_owned(), available - amount);
        let transfer = Transfer {
            transfer_id: i64::try_from(self.transfers.len()).unwrap_or(i64::MAX) + 1,
            spend_id: spend_id.to_owned(),
            user_id: user_id.to_string(),
            asset: asset.to_owned(),
            amount: decimal_text(amount),
            status: "completed".to_owned(),
            completed_at: iso(now),
            comment,
        };
        self.by_spend_id
            .insert(transfer.spend_id.clone(), self.transfers.len());
        let answer = to_json(&transfer);
        self.transfers.push(transfer);
        Ok(answer)
    }

    pub fn balance(&self) -> Value {
        Value::Array(
            ASSETS
                .iter()
                .map(|(asset, _)| {
                    let available = self.balances.get(*asset).copied().unwrap_or_default();
                    json!({"currency_code": asset, "available": decimal_text(available), "onhold": "0"})
                })
                .collect(),
        )
    }

    /// The payer pays invoice `id` (a fiat invoice in `asset`, by default its first accepted
    /// asset); the app's balance gets the paid amount less the fee, and an `invoice_paid`
    /// update is queued.
    pub fn pay(
        &mut self,
        id: i64,
        asset: Option<&str>,
        prices: &Prices,
        now: DateTime<Utc>,
    ) -> Result<(Value, Outgoing), ControlError> {
        let stored = self
            .invoices
            .get_mut(&id)
            .ok_or(ControlError::NotFound(id))?;
        if stored.invoice.status != "active" {
            return Err(ControlError::NotActive {
                id,
                status: stored.invoice.status.clone(),
            });
        }
        if stored.expires_at.is_some_and(|at| at <= now) {
            stored.invoice.status = "expired".to_owned();
            return Err(ControlError::NotActive {
                id,
                status: "expired".to_owned(),
            });
        }
        let invoice = &mut stored.invoice;
        let amount: Decimal = invoice.amount.parse().map_err(|_| ControlError::NoRate)?;
        let (paid_asset, paid_amount, fiat_rate) = match (&invoice.asset, &invoice.fiat) {
            (Some(asset), _) => (asset.clone(), amount, None),
            (None, Some(fiat)) => {
                let paid_asset = match (asset, &invoice.accepted_assets) {
                    (Some(a), Some(accepted)) if !accepted.iter().any(|x| x == a) => {
                        return Err(ControlError::NotAccepted(a.to_owned()));
                    }
                    (Some(a), _) => a.to_owned(),
                    (None, Some(accepted)) if !accepted.is_empty() => accepted[0].clone(),
                    (None, _) => "USDT".to_owned(),
                };
                let rate = fiat_rate(prices, fiat, &paid_asset).ok_or(ControlError::NoRate)?;
                let decimals = asset_decimals(&paid_asset)
                    .ok_or_else(|| ControlError::NotAccepted(paid_asset.clone()))?;
                let paid = (amount / rate)
                    .round_dp_with_strategy(decimals, RoundingStrategy::AwayFromZero);
                (paid_asset, paid, Some(rate))
            }
            (None, None) => return Err(ControlError::NoRate),
        };
        let decimals = asset_decimals(&paid_asset).unwrap_or(8);
        let fee = (paid_amount * Decimal::from(prices.fee_bps) / Decimal::from(10_000))
            .round_dp_with_strategy(decimals, RoundingStrategy::ToZero);
        let usd_rate = usd_rate(prices, &paid_asset);
        invoice.status = "paid".to_owned();
        invoice.paid_asset = Some(paid_asset.clone());
        invoice.paid_amount = Some(decimal_text(paid_amount));
        invoice.paid_fiat_rate = fiat_rate.map(decimal_text);
        invoice.paid_usd_rate = usd_rate.map(decimal_text);
        invoice.fee_asset = Some(paid_asset.clone());
        invoice.fee_amount = Some(decimal_text(fee));
        invoice.paid_at = Some(iso(now));
        invoice.paid_anonymously = Some(false);
        let answer = to_json(invoice);
        *self.balances.entry(paid_asset).or_default() += paid_amount - fee;
        let update_id = self.next_update;
        self.next_update += 1;
        let body = json!({
            "update_id": update_id,
            "update_type": "invoice_paid",
            "request_date": iso(now),
            "payload": answer,
        });
        let note = Outgoing {
            update_id,
            invoice_id: id,
            body: serde_json::to_vec(&body).unwrap_or_default(),
        };
        Ok((answer, note))
    }

    /// The invoice can no longer be paid (Crypto Pay sends no update for this).
    pub fn expire(&mut self, id: i64) -> Result<Value, ControlError> {
        let stored = self
            .invoices
            .get_mut(&id)
            .ok_or(ControlError::NotFound(id))?;
        if stored.invoice.status != "active" {
            return Err(ControlError::NotActive {
                id,
                status: stored.invoice.status.clone(),
            });
        }
        stored.invoice.status = "expired".to_owned();
        Ok(to_json(&stored.invoice))
    }

    /// Expires every active invoice whose `expiration_date` has passed; returns their ids.
    pub fn expire_due(&mut self, now: DateTime<Utc>) -> Vec<i64> {
        let due: Vec<i64> = self
            .invoices
            .values()
            .filter(|s| s.invoice.status == "active" && s.expires_at.is_some_and(|at| at <= now))
            .map(|s| s.invoice.invoice_id)
            .collect();
        for id in &due {
            let _ = self.expire(*id);
        }
        due
    }

    pub fn invoice(&self, id: i64) -> Option<Value> {
        self.invoices.get(&id).map(|s| to_json(&s.invoice))
    }

    pub fn invoices(&self) -> Vec<Value> {
        self.invoices
            .values()
            .map(|s| to_json(&s.invoice))
            .collect()
    }

    pub fn transfers(&self) -> Vec<Value> {
        self.transfers.iter().map(to_json).collect()
    }
}

/// `fiat` per unit of `asset`: RUB from the price list, USD through USDT's RUB price.
fn fiat_rate(prices: &Prices, fiat: &str, asset: &str) -> Option<Decimal> {
    let rub = *prices.rub_per_unit.get(asset)?;
    match fiat {
        "RUB" => Some(rub),
        "USD" => usd_rate(prices, asset),
        _ => None,
    }
}

fn usd_rate(prices: &Prices, asset: &str) -> Option<Decimal> {
    let rub = *prices.rub_per_unit.get(asset)?;
    let usdt = *prices.rub_per_unit.get("USDT")?;
    (!usdt.is_zero()).then(|| (rub / usdt).round_dp(8))
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_plain_positive_decimals_within_the_precision() {
        assert_eq!(parse_amount("199.00", 2), Some(Decimal::new(199, 0)));
        assert_eq!(parse_amount("0.000001", 6), Some(Decimal::new(1, 6)));
        for bad in [
            "", "0", "0.00", "-1", "1e3", "1.", ".5", "1.234", "1,5", " 1", "NaN",
        ] {
            assert_eq!(parse_amount(bad, 2), None, "{bad:?}");
        }
        assert_eq!(decimal_text(Decimal::new(12_500, 3)), "12.5");
        assert_eq!(decimal_text(Decimal::new(300, 2)), "3");
    }
}
