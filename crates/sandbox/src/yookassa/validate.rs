//! Request validation with YooKassa's error shape (`invalid_request` + `parameter`).

use serde_json::{Map, Value};

use super::model::{ApiError, parse_minor};

pub const MAX_DESCRIPTION: usize = 128;
pub const MAX_REFUND_DESCRIPTION: usize = 250;
pub const MAX_METADATA_KEYS: usize = 16;
pub const MAX_METADATA_KEY: usize = 32;
pub const MAX_METADATA_VALUE: usize = 512;
pub const MAX_RETURN_URL: usize = 2048;
pub const MAX_IDEMPOTENCE_KEY: usize = 64;
/// The emulated shop takes roubles only, like a default YooKassa shop.
pub const SUPPORTED_CURRENCIES: &[&str] = &["RUB"];

fn bad(description: impl Into<String>, parameter: &str) -> ApiError {
    ApiError::invalid_request(description, Some(parameter))
}

/// A validated `amount` object: kopecks and an ISO-4217 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub minor: i64,
    pub currency: &'static str,
}

pub fn amount(value: Option<&Value>, parameter: &str) -> Result<Money, ApiError> {
    let Some(object) = value.and_then(Value::as_object) else {
        return Err(bad(
            "Required parameter amount is missing or invalid",
            parameter,
        ));
    };
    let value_param = format!("{parameter}.value");
    let minor = match object.get("value") {
        Some(Value::String(s)) => parse_minor(s).ok_or_else(|| {
            bad(
                format!("Invalid amount value: {s:?}. Use a positive decimal with a dot and at most two decimals"),
                &value_param,
            )
        })?,
        _ => return Err(bad("amount.value must be a string like \"199.00\"", &value_param)),
    };
    if minor <= 0 {
        return Err(bad("Amount value must be greater than zero", &value_param));
    }
    let currency_param = format!("{parameter}.currency");
    let code = object
        .get("currency")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("Required parameter currency is missing", &currency_param))?;
    let currency = SUPPORTED_CURRENCIES
        .iter()
        .find(|c| **c == code)
        .ok_or_else(|| bad(format!("Invalid currency: {code:?}"), &currency_param))?;
    Ok(Money { minor, currency })
}

fn optional_text(
    body: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(bad(
            format!("Invalid {field}: the value is longer than {max} characters"),
            field,
        )),
        Some(_) => Err(bad(format!("Invalid {field}: must be a string"), field)),
    }
}

pub fn metadata(value: Option<&Value>) -> Result<Map<String, Value>, ApiError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(bad("metadata must be an object", "metadata")),
    };
    if map.len() > MAX_METADATA_KEYS {
        return Err(bad(
            format!("Too many metadata keys: at most {MAX_METADATA_KEYS} are allowed"),
            "metadata",
        ));
    }
    for (key, value) in map {
        if key.chars().count() > MAX_METADATA_KEY {
            return Err(bad(
                format!("Metadata key is longer than {MAX_METADATA_KEY} characters"),
                "metadata",
            ));
        }
        match value {
            Value::String(s) if s.chars().count() <= MAX_METADATA_VALUE => {}
            Value::String(_) => {
                return Err(bad(
                    format!("Metadata value is longer than {MAX_METADATA_VALUE} characters"),
                    "metadata",
                ));
            }
            _ => return Err(bad("Metadata values must be strings", "metadata")),
        }
    }
    Ok(map.clone())
}

/// A validated POST /v3/payments body.
#[derive(Debug, Clone)]
pub struct CreatePayment {
    pub amount: Money,
    pub description: Option<String>,
    pub capture: bool,
    /// `None` when a saved method is charged (no confirmation).
    pub return_url: Option<String>,
    pub metadata: Map<String, Value>,
    pub receipt: bool,
    /// `save_payment_method: true`: the method the payer confirms is saved for recurring
    /// charges.
    pub save_method: bool,
    /// `payment_method_id`: a merchant-initiated charge of a saved method.
    pub method_id: Option<String>,
}

pub fn create_payment(body: &Value) -> Result<CreatePayment, ApiError> {
    let Some(body) = body.as_object() else {
        return Err(ApiError::invalid_request(
            "Request body must be a JSON object",
            None,
        ));
    };
    let amount = amount(body.get("amount"), "amount")?;
    let description = optional_text(body, "description", MAX_DESCRIPTION)?;
    let capture = match body.get("capture") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("capture must be a boolean", "capture")),
    };
    let metadata = metadata(body.get("metadata"))?;

    let sources = ["payment_method_data", "payment_method_id", "payment_token"]
        .iter()
        .filter(|f| body.get(**f).is_some_and(|v| !v.is_null()))
        .count();
    if sources > 1 {
        return Err(bad(
            "Only one of payment_method_data, payment_method_id, payment_token may be sent",
            "payment_method_data",
        ));
    }
    // The emulator has no wallet tokens: token payments are refused the way a shop without
    // that right is refused. Saved methods are the shop's (`Shop::can_save_methods`).
    if body.get("payment_token").is_some_and(|v| !v.is_null()) {
        return Err(ApiError {
            status: 403,
            code: "forbidden",
            description: "The emulated shop is not allowed to use payment_token".into(),
            parameter: Some("payment_token".into()),
        });
    }
    let save_method = match body.get("save_payment_method") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                "save_payment_method must be a boolean",
                "save_payment_method",
            ));
        }
    };
    let method_id = match body.get("payment_method_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.trim().is_empty() => Some(id.clone()),
        Some(_) => {
            return Err(bad(
                "payment_method_id must be a non-empty string",
                "payment_method_id",
            ));
        }
    };
    if let Some(data) = body.get("payment_method_data").filter(|v| !v.is_null())
        && data.get("type").and_then(Value::as_str).is_none()
    {
        return Err(bad(
            "payment_method_data.type is required",
            "payment_method_data.type",
        ));
    }

    let confirmation = body.get("confirmation").filter(|v| !v.is_null());
    if method_id.is_some() {
        // A saved method is charged without the payer: nothing to confirm.
        if confirmation.is_some() {
            return Err(bad(
                "Confirmation must be null when using payment_method_id",
                "confirmation",
            ));
        }
        let receipt = match body.get("receipt") {
            None | Some(Value::Null) => false,
            Some(receipt) => {
                self::receipt(receipt, amount)?;
                true
            }
        };
        return Ok(CreatePayment {
            amount,
            description,
            capture,
            return_url: None,
            metadata,
            receipt,
            save_method,
            method_id,
        });
    }
    let confirmation = confirmation
        .and_then(Value::as_object)
        .ok_or_else(|| bad("Required parameter confirmation is missing", "confirmation"))?;
    match confirmation.get("type").and_then(Value::as_str) {
        Some("redirect") => {}
        Some(other) => {
            return Err(bad(
                format!("Confirmation type {other:?} is not supported by this shop"),
                "confirmation.type",
            ));
        }
        None => return Err(bad("confirmation.type is required", "confirmation.type")),
    }
    let return_url = match confirmation.get("return_url") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_RETURN_URL => {
            s.clone()
        }
        _ => {
            return Err(bad(
                "confirmation.return_url is required for the redirect scenario (at most 2048 characters)",
                "confirmation.return_url",
            ));
        }
    };

    let receipt = match body.get("receipt") {
        None | Some(Value::Null) => false,
        Some(receipt) => {
            self::receipt(receipt, amount)?;
            true
        }
    };

    Ok(CreatePayment {
        amount,
        description,
        capture,
        return_url: Some(return_url),
        metadata,
        receipt,
        save_method,
        method_id: None,
    })
}

/// 54-FZ receipt: a customer contact, items whose sum equals the payment, VAT codes.
pub fn receipt(value: &Value, total: Money) -> Result<(), ApiError> {
    let receipt = value
        .as_object()
        .ok_or_else(|| bad("receipt must be an object", "receipt"))?;
    let customer = receipt.get("customer").and_then(Value::as_object);
    let has_contact = customer.is_some_and(|c| {
        ["email", "phone"].iter().any(|f| {
            c.get(*f)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        })
    });
    if !has_contact {
        return Err(bad(
            "Receipt requires customer.email or customer.phone",
            "receipt.customer",
        ));
    }
    let tax_system = match receipt.get("tax_system_code") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(code @ 1..=6) => Some(code),
            _ => {
                return Err(bad(
                    "tax_system_code must be 1..6",
                    "receipt.tax_system_code",
                ));
            }
        },
    };
    let items = receipt
        .get("items")
        .and_then(Value::as_array)
        .filter(|items| !items.is_empty() && items.len() <= 100)
        .ok_or_else(|| bad("Receipt must contain 1..100 items", "receipt.items"))?;
    let mut sum: i64 = 0;
    for item in items {
        let item = item
            .as_object()
            .ok_or_else(|| bad("Receipt item must be an object", "receipt.items"))?;
        match item.get("description").and_then(Value::as_str) {
            Some(d) if !d.is_empty() && d.chars().count() <= MAX_DESCRIPTION => {}
            _ => {
                return Err(bad(
                    "Receipt item description is required (at most 128 characters)",
                    "receipt.items.description",
                ));
            }
        }
        let milli = item
            .get("quantity")
            .and_then(|q| match q {
                Value::String(s) => parse_quantity_milli(s),
                Value::Number(n) => parse_quantity_milli(&n.to_string()),
                _ => None,
            })
            .filter(|q| *q > 0)
            .ok_or_else(|| bad("Invalid receipt item quantity", "receipt.items.quantity"))?;
        let price = self::amount(item.get("amount"), "receipt.items.amount")?;
        if price.currency != total.currency {
            return Err(bad(
                "Receipt item currency differs from the payment currency",
                "receipt.items.amount.currency",
            ));
        }
        match item.get("vat_code") {
            Some(v) if v.as_u64().is_some_and(|c| (1..=12).contains(&c)) => {}
            None | Some(Value::Null) if tax_system.is_some() => {}
            _ => {
                return Err(bad(
                    "Receipt item vat_code is required (1..12) when tax_system_code is not set",
                    "receipt.items.vat_code",
                ));
            }
        }
        let line = (i128::from(price.minor) * i128::from(milli)) / 1000;
        sum = i64::try_from(line)
            .ok()
            .and_then(|l| sum.checked_add(l))
            .ok_or_else(|| bad("Receipt sum overflows", "receipt.items"))?;
    }
    if sum != total.minor {
        return Err(bad(
            "The sum of receipt items does not match the payment amount",
            "receipt.items.amount",
        ));
    }
    Ok(())
}

/// `"1"`, `"1.00"`, `"0.5"` → thousandths (receipt quantities allow three decimals).
fn parse_quantity_milli(s: &str) -> Option<i64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || int.len() > 9 || frac.len() > 3 {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut frac_val: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..3 {
        frac_val *= 10;
    }
    int.parse::<i64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(frac_val)
}

/// A validated POST /v3/refunds body.
#[derive(Debug, Clone)]
pub struct CreateRefund {
    pub payment_id: String,
    pub amount: Money,
    pub description: Option<String>,
}

pub fn create_refund(body: &Value) -> Result<CreateRefund, ApiError> {
    let Some(body) = body.as_object() else {
        return Err(ApiError::invalid_request(
            "Request body must be a JSON object",
            None,
        ));
    };
    let payment_id = match body.get("payment_id").and_then(Value::as_str) {
        Some(id) if id.len() == 36 => id.to_owned(),
        _ => {
            return Err(bad(
                "payment_id is required and must be 36 characters long",
                "payment_id",
            ));
        }
    };
    let amount = amount(body.get("amount"), "amount")?;
    let description = optional_text(body, "description", MAX_REFUND_DESCRIPTION)?;
    Ok(CreateRefund {
        payment_id,
        amount,
        description,
    })
}

/// The optional `{"amount":{…}}` body of POST /payments/{id}/capture.
pub fn capture(body: &Value) -> Result<Option<Money>, ApiError> {
    match body.get("amount") {
        None | Some(Value::Null) => Ok(None),
        some => amount(some, "amount").map(Some),
    }
}

pub fn idempotence_key(value: Option<&str>) -> Result<String, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Err(bad(
            "Idempotence key is empty. Specify the Idempotence-Key header",
            "Idempotence-Key",
        )),
        Some(key) if key.chars().count() > MAX_IDEMPOTENCE_KEY => Err(bad(
            "Idempotence key is too long. Send the value in accordance with the documentation",
            "Idempotence-Key",
        )),
        Some(key) => Ok(key.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn base() -> Value {
        json!({"amount":{"value":"199.00","currency":"RUB"},"capture":true,
               "confirmation":{"type":"redirect","return_url":"https://t.me/bot"},
               "description":"VPN 30 days"})
    }

    fn param(body: Value) -> Option<String> {
        create_payment(&body).err().and_then(|e| e.parameter)
    }

    #[test]
    fn accepts_the_reference_request() {
        let ok = create_payment(&base()).expect("valid");
        assert_eq!(ok.amount.minor, 19900);
        assert!(ok.capture);
        let mut with_receipt = base();
        with_receipt["receipt"] = json!({"customer":{"email":"user@example.com"},
            "items":[{"description":"VPN 30 days","quantity":"1.00",
                      "amount":{"value":"199.00","currency":"RUB"},"vat_code":1,
                      "payment_mode":"full_payment","payment_subject":"service"}]});
        assert!(create_payment(&with_receipt).expect("valid").receipt);
    }

    #[test]
    fn refuses_bad_fields_with_the_parameter_named() {
        let mut b = base();
        b["amount"]["value"] = json!("1.999");
        assert_eq!(param(b).as_deref(), Some("amount.value"));
        let mut b = base();
        b["amount"]["value"] = json!(199.0);
        assert_eq!(param(b).as_deref(), Some("amount.value"));
        let mut b = base();
        b["amount"]["currency"] = json!("USD");
        assert_eq!(param(b).as_deref(), Some("amount.currency"));
        let mut b = base();
        b["description"] = json!("x".repeat(129));
        assert_eq!(param(b).as_deref(), Some("description"));
        let mut b = base();
        b["metadata"] = json!({"k": 1});
        assert_eq!(param(b).as_deref(), Some("metadata"));
        let mut b = base();
        b["confirmation"] = json!({"type":"redirect"});
        assert_eq!(param(b).as_deref(), Some("confirmation.return_url"));
        let mut b = base();
        b["receipt"] = json!({"customer":{},"items":[]});
        assert_eq!(param(b).as_deref(), Some("receipt.customer"));
        // 128 Cyrillic characters are fine: the limit is in characters, not bytes.
        let mut b = base();
        b["description"] = json!("ж".repeat(128));
        assert!(create_payment(&b).is_ok());
    }

    #[test]
    fn metadata_limits() {
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(metadata(Some(&Value::Object(many))).is_err());
        assert!(metadata(Some(&json!({"k".repeat(33): "v"}))).is_err());
        assert!(metadata(Some(&json!({"k": "v".repeat(513)}))).is_err());
        assert!(metadata(Some(&json!({"k": "v".repeat(512)}))).is_ok());
    }

    #[test]
    fn idempotence_key_rules() {
        assert!(idempotence_key(None).is_err());
        assert!(idempotence_key(Some("")).is_err());
        assert_eq!(
            idempotence_key(Some(&"k".repeat(65)))
                .err()
                .and_then(|e| e.parameter)
                .as_deref(),
            Some("Idempotence-Key")
        );
        assert!(idempotence_key(Some(&"k".repeat(64))).is_ok());
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity_milli("1.00"), Some(1000));
        assert_eq!(parse_quantity_milli("0.5"), Some(500));
        assert_eq!(parse_quantity_milli("2"), Some(2000));
        assert_eq!(parse_quantity_milli("1.0001"), None);
    }
}
