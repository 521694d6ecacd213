//! YooKassa's JSON objects as the emulator serves them, plus exact amount arithmetic.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `{"value":"199.00","currency":"RUB"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub value: String,
    pub currency: String,
}

impl Amount {
    pub fn from_minor(minor: i64, currency: &str) -> Self {
        Self {
            value: format_minor(minor),
            currency: currency.to_owned(),
        }
    }
}

/// Kopecks → `"199.00"`.
pub fn format_minor(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// `"199"`, `"199.5"`, `"199.00"` → kopecks. Refuses signs, exponents, more than two decimals,
/// and values that do not fit.
pub fn parse_minor(value: &str) -> Option<i64> {
    let (int, frac) = match value.split_once('.') {
        Some((i, f)) => (i, f),
        None => (value, ""),
    };
    if int.is_empty() || int.len() > 15 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if value.contains('.') && frac.is_empty() {
        return None;
    }
    let int: i64 = int.parse().ok()?;
    let mut frac_minor: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    if frac.len() == 1 {
        frac_minor *= 10;
    }
    int.checked_mul(100)?.checked_add(frac_minor)
}

pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    WaitingForCapture,
    Succeeded,
    Canceled,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::WaitingForCapture => "waiting_for_capture",
            Self::Succeeded => "succeeded",
            Self::Canceled => "canceled",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "type")]
    pub kind: String,
    pub return_url: String,
    pub confirmation_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    pub account_id: String,
    pub gateway_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancellationDetails {
    pub party: String,
    pub reason: String,
}

/// The payment object exactly as GET /v3/payments/{id} returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payment {
    pub id: String,
    pub status: PaymentStatus,
    pub paid: bool,
    pub amount: Amount,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub income_amount: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub recipient: Recipient,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<Confirmation>,
    pub test: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refunded_amount: Option<Amount>,
    pub refundable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_registration: Option<String>,
    pub metadata: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancellation_details: Option<CancellationDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Canceled,
}

/// The refund object as GET /v3/refunds/{id} returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub payment_id: String,
    pub status: RefundStatus,
    pub amount: Amount,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_registration: Option<String>,
}

/// YooKassa's error body: `type`, `id` and `code` always, `description`/`parameter` optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub description: String,
    pub parameter: Option<String>,
}

impl ApiError {
    pub fn invalid_request(description: impl Into<String>, parameter: Option<&str>) -> Self {
        Self {
            status: 400,
            code: "invalid_request",
            description: description.into(),
            parameter: parameter.map(str::to_owned),
        }
    }

    pub fn not_found(description: impl Into<String>) -> Self {
        Self {
            status: 404,
            code: "not_found",
            description: description.into(),
            parameter: None,
        }
    }

    pub fn invalid_credentials() -> Self {
        Self {
            status: 401,
            code: "invalid_credentials",
            description: "Basic authentication failed. Check the shopId and the secret key".into(),
            parameter: None,
        }
    }

    pub fn too_many_requests() -> Self {
        Self {
            status: 429,
            code: "too_many_requests",
            description: "The limit of requests per unit of time is exceeded".into(),
            parameter: None,
        }
    }

    pub fn internal() -> Self {
        Self {
            status: 500,
            code: "internal_server_error",
            description: "Internal server error. The result of the request is unknown: \
                          repeat it with the same Idempotence-Key"
                .into(),
            parameter: None,
        }
    }

    pub fn body(&self) -> Value {
        let mut body = serde_json::json!({
            "type": "error",
            "id": uuid::Uuid::new_v4().to_string(),
            "code": self.code,
            "description": self.description,
        });
        if let (Some(parameter), Some(map)) = (&self.parameter, body.as_object_mut()) {
            map.insert("parameter".into(), Value::String(parameter.clone()));
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly() {
        assert_eq!(parse_minor("199.00"), Some(19900));
        assert_eq!(parse_minor("199.5"), Some(19950));
        assert_eq!(parse_minor("199"), Some(19900));
        assert_eq!(parse_minor("0.01"), Some(1));
        for bad in [
            "",
            "1.",
            ".5",
            "1.999",
            "-1.00",
            "+1",
            "1e3",
            "1,00",
            " 1",
            "9999999999999999",
        ] {
            assert_eq!(parse_minor(bad), None, "{bad:?}");
        }
        assert_eq!(format_minor(19900), "199.00");
        assert_eq!(format_minor(5), "0.05");
    }
}
