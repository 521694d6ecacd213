//! YooKassa's JSON, field for field, and the conversions to and from our types.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::money::Money;
use domain::{PaymentStatus as OurPaymentStatus, RefundStatus as OurRefundStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{RejectionCode, WebhookError};

/// `{"value":"199.00","currency":"RUB"}`; the value is a decimal string, never a float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub value: String,
    pub currency: String,
}

impl From<Money> for Amount {
    fn from(money: Money) -> Self {
        Self {
            value: money.to_decimal_string(),
            currency: money.currency().code().to_owned(),
        }
    }
}

// ---- requests ------------------------------------------------------------------------------

/// POST /v3/payments.
#[derive(Debug, Clone, Serialize)]
pub struct CreatePaymentBody {
    pub amount: Amount,
    /// Always true: one-stage payments, no `waiting_for_capture`.
    pub capture: bool,
    /// `None` for a charge of a saved method (YooKassa: "Confirmation must be null when
    /// using payment_method_id").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<ConfirmationRequest>,
    /// The payer agreed to automatic renewal: save the method they pay with.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub save_payment_method: bool,
    /// A merchant-initiated charge of a saved method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_method_id: Option<String>,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfirmationRequest {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub return_url: String,
}

/// 54-FZ receipt.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    pub customer: Customer,
    pub items: Vec<ReceiptItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tax_system_code: Option<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Customer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReceiptItem {
    pub description: String,
    pub quantity: String,
    pub amount: Amount,
    pub vat_code: u8,
    pub payment_mode: String,
    pub payment_subject: String,
}

/// POST /v3/refunds.
#[derive(Debug, Clone, Serialize)]
pub struct CreateRefundBody {
    pub payment_id: String,
    pub amount: Amount,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

// ---- responses -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    WaitingForCapture,
    Succeeded,
    Canceled,
    #[serde(other)]
    Unknown,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::WaitingForCapture => "waiting_for_capture",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Canceled => "canceled",
            PaymentStatus::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "type")]
    pub kind: String,
    pub confirmation_url: Option<String>,
    pub return_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CancellationDetails {
    /// `merchant`, `yoo_money` or `payment_network` (an open set).
    pub party: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PaymentMethod {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
    pub saved: Option<bool>,
    pub title: Option<String>,
}

/// The payment object (create, GET, capture, cancel, and `payment.*` notifications).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Payment {
    pub id: String,
    pub status: PaymentStatus,
    #[serde(default)]
    pub paid: bool,
    pub amount: Amount,
    pub income_amount: Option<Amount>,
    pub refunded_amount: Option<Amount>,
    #[serde(default)]
    pub refundable: bool,
    pub description: Option<String>,
    pub confirmation: Option<Confirmation>,
    #[serde(default)]
    pub test: bool,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    pub cancellation_details: Option<CancellationDetails>,
    pub payment_method: Option<PaymentMethod>,
    pub created_at: Option<DateTime<Utc>>,
    pub captured_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Payment {
    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }
}

/// Our status for a YooKassa payment. `refunded` is what YooKassa says was returned.
///
/// `waiting_for_capture` (never expected: we send `capture: true`) and unknown statuses stay
/// pending, so nothing is concluded from a status we do not understand. A cancellation is
/// `expired` when the payer ran out of time, `canceled` when we canceled, `failed` otherwise.
pub fn map_payment_status(payment: &Payment, amount: Money, refunded: Money) -> OurPaymentStatus {
    match payment.status {
        PaymentStatus::Pending | PaymentStatus::WaitingForCapture | PaymentStatus::Unknown => {
            OurPaymentStatus::Pending
        }
        PaymentStatus::Succeeded => {
            OurPaymentStatus::paid_and_refunded(refunded.minor(), amount.minor())
        }
        PaymentStatus::Canceled => match payment
            .cancellation_details
            .as_ref()
            .map(|d| d.reason.as_str())
        {
            Some("expired_on_confirmation" | "expired_on_capture") => OurPaymentStatus::Expired,
            Some("canceled_by_merchant") => OurPaymentStatus::Canceled,
            _ => OurPaymentStatus::Failed,
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Canceled,
    #[serde(other)]
    Unknown,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Canceled => "canceled",
            RefundStatus::Unknown => "unknown",
        }
    }
}

impl From<RefundStatus> for OurRefundStatus {
    fn from(status: RefundStatus) -> Self {
        match status {
            RefundStatus::Succeeded => OurRefundStatus::Succeeded,
            RefundStatus::Canceled => OurRefundStatus::Failed,
            // Not final yet, or a status we do not know: keep asking.
            RefundStatus::Pending | RefundStatus::Unknown => OurRefundStatus::Pending,
        }
    }
}

/// The refund object (POST/GET /v3/refunds, `refund.succeeded` notifications).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Refund {
    pub id: String,
    pub payment_id: String,
    pub status: RefundStatus,
    pub amount: Amount,
    pub created_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
    pub cancellation_details: Option<CancellationDetails>,
}

/// `{"type":"error","id":…,"code":…,"description":…,"parameter":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub id: Option<String>,
    pub code: RejectionCode,
    pub description: Option<String>,
    pub parameter: Option<String>,
}

// ---- notifications -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum NotificationEvent {
    #[serde(rename = "payment.waiting_for_capture")]
    PaymentWaitingForCapture,
    #[serde(rename = "payment.succeeded")]
    PaymentSucceeded,
    #[serde(rename = "payment.canceled")]
    PaymentCanceled,
    #[serde(rename = "refund.succeeded")]
    RefundSucceeded,
    #[serde(rename = "payment_method.active")]
    PaymentMethodActive,
    #[serde(rename = "deal.closed")]
    DealClosed,
    #[serde(rename = "payout.succeeded")]
    PayoutSucceeded,
    #[serde(rename = "payout.canceled")]
    PayoutCanceled,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NotificationObject {
    Payment(Box<Payment>),
    Refund(Refund),
    /// Objects of events we do not act on, kept as sent.
    Other(Value),
}

/// `{"type":"notification","event":"payment.succeeded","object":{…}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub event: NotificationEvent,
    /// The event name as sent (kept for unknown events).
    pub event_name: String,
    pub object: NotificationObject,
}

#[derive(Deserialize)]
struct RawNotification {
    #[serde(rename = "type")]
    kind: String,
    event: String,
    object: Map<String, Value>,
}

impl Notification {
    /// Strict parse: the envelope must be exact; payment and refund objects must be complete.
    /// Unknown events parse to [`NotificationEvent::Unknown`] with the object kept as JSON.
    pub fn parse(body: &[u8]) -> Result<Self, WebhookError> {
        let malformed = |e: serde_json::Error| WebhookError::MalformedBody(e.to_string());
        let raw: RawNotification = serde_json::from_slice(body).map_err(malformed)?;
        if raw.kind != "notification" {
            return Err(WebhookError::MalformedBody(format!(
                "type must be \"notification\", got {:?}",
                raw.kind
            )));
        }
        let event: NotificationEvent =
            serde_json::from_value(Value::String(raw.event.clone())).map_err(malformed)?;
        let object = Value::Object(raw.object);
        let object = match event {
            NotificationEvent::PaymentWaitingForCapture
            | NotificationEvent::PaymentSucceeded
            | NotificationEvent::PaymentCanceled => NotificationObject::Payment(Box::new(
                serde_json::from_value(object).map_err(malformed)?,
            )),
            NotificationEvent::RefundSucceeded => {
                NotificationObject::Refund(serde_json::from_value(object).map_err(malformed)?)
            }
            _ => NotificationObject::Other(object),
        };
        Ok(Self {
            event,
            event_name: raw.event,
            object,
        })
    }

    pub fn object_id(&self) -> Option<&str> {
        match &self.object {
            NotificationObject::Payment(p) => Some(&p.id),
            NotificationObject::Refund(r) => Some(&r.id),
            NotificationObject::Other(v) => v.get("id").and_then(Value::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use domain::money::Currency;
    use serde_json::json;

    use super::*;

    fn payment(v: Value) -> Payment {
        serde_json::from_value(v).expect("payment")
    }

    fn rub(minor: i64) -> Money {
        Money::new(minor, Currency::Rub)
    }

    #[test]
    fn status_mapping_is_exhaustive() {
        let base = json!({"id": "x", "amount": {"value": "10.00", "currency": "RUB"}});
        let with = |status: &str, reason: Option<&str>| {
            let mut v = base.clone();
            v["status"] = json!(status);
            if let Some(reason) = reason {
                v["cancellation_details"] = json!({"party": "yoo_money", "reason": reason});
            }
            payment(v)
        };
        let map = |p: &Payment, refunded: i64| map_payment_status(p, rub(1000), rub(refunded));
        assert_eq!(map(&with("pending", None), 0), OurPaymentStatus::Pending);
        assert_eq!(
            map(&with("waiting_for_capture", None), 0),
            OurPaymentStatus::Pending
        );
        assert_eq!(
            map(&with("brand_new_status", None), 0),
            OurPaymentStatus::Pending
        );
        assert_eq!(
            map(&with("succeeded", None), 0),
            OurPaymentStatus::Succeeded
        );
        assert_eq!(
            map(&with("succeeded", None), 300),
            OurPaymentStatus::PartiallyRefunded
        );
        assert_eq!(
            map(&with("succeeded", None), 1000),
            OurPaymentStatus::Refunded
        );
        assert_eq!(
            map(&with("canceled", Some("expired_on_confirmation")), 0),
            OurPaymentStatus::Expired
        );
        assert_eq!(
            map(&with("canceled", Some("expired_on_capture")), 0),
            OurPaymentStatus::Expired
        );
        assert_eq!(
            map(&with("canceled", Some("canceled_by_merchant")), 0),
            OurPaymentStatus::Canceled
        );
        assert_eq!(
            map(&with("canceled", Some("insufficient_funds")), 0),
            OurPaymentStatus::Failed
        );
        assert_eq!(map(&with("canceled", None), 0), OurPaymentStatus::Failed);
    }

    #[test]
    fn request_bodies_match_the_wire_format() {
        let body = CreatePaymentBody {
            amount: rub(19900).into(),
            capture: true,
            confirmation: Some(ConfirmationRequest {
                kind: "redirect",
                return_url: "https://t.me/YourBot".into(),
            }),
            save_payment_method: false,
            payment_method_id: None,
            description: "VPN 30 days".into(),
            metadata: BTreeMap::from([("payment_id".into(), "p".into())]),
            receipt: None,
        };
        assert_eq!(
            serde_json::to_value(&body).expect("json"),
            json!({"amount": {"value": "199.00", "currency": "RUB"}, "capture": true,
                   "confirmation": {"type": "redirect", "return_url": "https://t.me/YourBot"},
                   "description": "VPN 30 days", "metadata": {"payment_id": "p"}})
        );
    }

    #[test]
    fn error_bodies_are_typed() {
        let body: ErrorBody = serde_json::from_value(json!({"type": "error", "id": "e65a8f85",
            "code": "invalid_request", "description": "Idempotence key is too long",
            "parameter": "Idempotence-Key"}))
        .expect("error body");
        assert_eq!(body.code, RejectionCode::InvalidRequest);
        assert_eq!(body.parameter.as_deref(), Some("Idempotence-Key"));
        let odd: ErrorBody =
            serde_json::from_value(json!({"type": "error", "code": "brand_new"})).expect("odd");
        assert_eq!(odd.code, RejectionCode::Unknown);
    }

    #[test]
    fn unknown_events_and_envelopes() {
        let unknown = Notification::parse(
            br#"{"type":"notification","event":"deal.opened","object":{"id":"d1"}}"#,
        )
        .expect("unknown event parses");
        assert_eq!(unknown.event, NotificationEvent::Unknown);
        assert_eq!(unknown.event_name, "deal.opened");
        assert_eq!(unknown.object_id(), Some("d1"));
        for bad in [
            &br#"{"type":"other","event":"payment.succeeded","object":{}}"#[..],
            br#"{"event":"payment.succeeded","object":{}}"#,
            br#"{"type":"notification","event":"payment.succeeded","object":{"id":"x"}}"#,
            br#"{"type":"notification","event":"payment.succeeded","object":[]}"#,
            b"not json",
        ] {
            assert!(
                Notification::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
