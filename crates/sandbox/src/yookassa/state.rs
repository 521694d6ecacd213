//! The emulator's mutable world: payments, refunds, idempotence records, scripted faults.
//! Every operation runs synchronously under one mutex, so check-and-store is atomic.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::{Value, json};

use super::model::{
    Amount, ApiError, CancellationDetails, Confirmation, Payment, PaymentStatus, Recipient, Refund,
    RefundStatus, timestamp,
};
use super::validate::{self, CreatePayment, CreateRefund};
use super::{ControlError, Fault, NotificationMode, RequestRecord, Shop};

/// YooKassa keeps waiting_for_capture payments this long before canceling them.
const CAPTURE_WINDOW_DAYS: i64 = 7;
/// A partial refund must leave more than this many kopecks on the payment.
const MIN_REMAINDER_AFTER_PARTIAL_REFUND: i64 = 100;

/// A notification waiting to be POSTed to the shop's webhook URL.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub seq: u64,
    pub event: String,
    pub object: Value,
}

#[derive(Debug, Clone)]
pub(crate) struct PaymentRecord {
    pub object: Payment,
    pub shop_id: String,
    pub capture: bool,
    pub amount_minor: i64,
    pub refunded_minor: i64,
    pub confirmation_deadline: DateTime<Utc>,
    pub receipt: bool,
    /// Where the checkout page sends the payer back; kept after `confirmation` is gone
    /// (empty for a charge of a saved method).
    pub return_url: String,
    /// `save_payment_method: true`: the method confirmed is saved.
    pub save_method: bool,
}

/// A payment method saved for recurring charges (`payment_method.saved = true`).
#[derive(Debug, Clone)]
pub(crate) struct SavedMethod {
    pub shop_id: String,
    /// The `payment_method` object a charge of it carries.
    pub object: Value,
    /// A scripted decline: the method's charges are canceled with this reason (`None` = they
    /// succeed).
    pub decline: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct RefundRecord {
    pub object: Refund,
    pub shop_id: String,
}

#[derive(Debug, Clone)]
pub(crate) struct IdempotenceEntry {
    pub fingerprint: Value,
    pub status: u16,
    pub body: Value,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub payments: HashMap<String, PaymentRecord>,
    pub payment_order: Vec<String>,
    pub refunds: HashMap<String, RefundRecord>,
    pub refund_order: Vec<String>,
    pub idempotence: HashMap<(String, String), IdempotenceEntry>,
    pub faults: VecDeque<Fault>,
    pub notification_modes: VecDeque<NotificationMode>,
    pub requests: Vec<RequestRecord>,
    pub next_seq: u64,
    pub saved_methods: HashMap<String, SavedMethod>,
}

impl State {
    fn notification(&mut self, event: &str, object: Value) -> Outgoing {
        self.next_seq += 1;
        Outgoing {
            seq: self.next_seq,
            event: event.to_owned(),
            object,
        }
    }

    fn payment_json(record: &PaymentRecord) -> Value {
        serde_json::to_value(&record.object).unwrap_or(Value::Null)
    }

    pub fn payment_for_shop(&self, shop_id: &str, id: &str) -> Result<&PaymentRecord, ApiError> {
        self.payments
            .get(id)
            .filter(|p| p.shop_id == shop_id)
            .ok_or_else(|| ApiError::not_found("Payment not found or forbidden"))
    }

    pub fn create_payment(
        &mut self,
        shop: &Shop,
        req: CreatePayment,
        public_url: &str,
        confirmation_ttl: ChronoDuration,
        now: DateTime<Utc>,
    ) -> Result<(Value, Vec<Outgoing>), ApiError> {
        if (req.save_method || req.method_id.is_some()) && !shop.can_save_methods {
            return Err(ApiError {
                status: 403,
                code: "forbidden",
                description: "Forbidden to save payment method".into(),
                parameter: Some(
                    if req.method_id.is_some() {
                        "payment_method_id"
                    } else {
                        "save_payment_method"
                    }
                    .into(),
                ),
            });
        }
        let charged = match &req.method_id {
            Some(method_id) => Some(
                self.saved_methods
                    .get(method_id)
                    .filter(|m| m.shop_id == shop.shop_id)
                    .cloned()
                    .ok_or_else(|| {
                        ApiError::invalid_request(
                            "Payment method with this payment_method_id is not saved",
                            Some("payment_method_id"),
                        )
                    })?,
            ),
            None => None,
        };
        let id = uuid::Uuid::new_v4().to_string();
        let currency = req.amount.currency;
        let return_url = req.return_url.clone().unwrap_or_default();
        let record = PaymentRecord {
            object: Payment {
                id: id.clone(),
                status: PaymentStatus::Pending,
                paid: false,
                amount: Amount::from_minor(req.amount.minor, currency),
                income_amount: None,
                description: req.description,
                recipient: Recipient {
                    account_id: shop.shop_id.clone(),
                    gateway_id: "100700".into(),
                },
                payment_method: None,
                captured_at: None,
                created_at: timestamp(now),
                expires_at: None,
                confirmation: req.return_url.map(|return_url| Confirmation {
                    kind: "redirect".into(),
                    return_url,
                    confirmation_url: format!("{public_url}/checkout/{id}"),
                }),
                test: shop.test,
                refunded_amount: None,
                refundable: false,
                receipt_registration: req.receipt.then(|| "pending".into()),
                metadata: req.metadata,
                cancellation_details: None,
                authorization_details: None,
            },
            shop_id: shop.shop_id.clone(),
            capture: req.capture,
            amount_minor: req.amount.minor,
            refunded_minor: 0,
            confirmation_deadline: now + confirmation_ttl,
            receipt: req.receipt,
            return_url,
            save_method: req.save_method,
        };
        let mut record = record;
        let mut notes = Vec::new();
        if let Some(method) = charged {
            // A merchant-initiated charge: decided at once, by the method's scripted answer.
            record.object.payment_method = Some(method.object.clone());
            let event = match &method.decline {
                Some(reason) => {
                    cancel(&mut record, party_for(reason), reason);
                    "payment.canceled"
                }
                None if record.capture => {
                    succeed(&mut record, now);
                    "payment.succeeded"
                }
                None => {
                    record.object.paid = true;
                    record.object.status = PaymentStatus::WaitingForCapture;
                    record.object.expires_at =
                        Some(timestamp(now + ChronoDuration::days(CAPTURE_WINDOW_DAYS)));
                    "payment.waiting_for_capture"
                }
            };
            let body = Self::payment_json(&record);
            notes.push(self.notification(event, body));
        }
        let body = Self::payment_json(&record);
        self.payments.insert(id.clone(), record);
        self.payment_order.push(id);
        Ok((body, notes))
    }

    /// Scripts the answer to charges of saved method `method_id`: declined with `reason`,
    /// or (`None`) succeeding again.
    pub fn script_method(
        &mut self,
        method_id: &str,
        decline: Option<String>,
    ) -> Result<(), ControlError> {
        let method = self
            .saved_methods
            .get_mut(method_id)
            .ok_or_else(|| ControlError::NotFound(method_id.to_owned()))?;
        method.decline = decline;
        Ok(())
    }

    /// The payer confirmed: one-stage payments succeed, two-stage ones wait for capture.
    pub fn pay(&mut self, id: &str, now: DateTime<Utc>) -> Result<(Value, Outgoing), ControlError> {
        let record = self
            .payments
            .get_mut(id)
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
        if record.object.status != PaymentStatus::Pending {
            return Err(ControlError::InvalidState {
                id: id.to_owned(),
                status: record.object.status.as_str(),
            });
        }
        let p = &mut record.object;
        p.paid = true;
        p.confirmation = None;
        let method = json!({
            "type": "bank_card", "id": p.id, "saved": record.save_method,
            "title": "Bank card *4477",
            "card": {"first6": "555555", "last4": "4477", "expiry_year": "2030",
                     "expiry_month": "12", "card_type": "MasterCard", "issuer_country": "RU"}
        });
        if record.save_method {
            // The method's id is the payment's (as in YooKassa's own examples): charges of it
            // name that id.
            self.saved_methods.insert(
                p.id.clone(),
                SavedMethod {
                    shop_id: record.shop_id.clone(),
                    object: method.clone(),
                    decline: None,
                },
            );
        }
        p.payment_method = Some(method);
        p.authorization_details = Some(json!({
            "rrn": "603668680243", "auth_code": "000000", "three_d_secure": {"applied": true}
        }));
        let event = if record.capture {
            succeed(record, now);
            "payment.succeeded"
        } else {
            record.object.status = PaymentStatus::WaitingForCapture;
            record.object.expires_at =
                Some(timestamp(now + ChronoDuration::days(CAPTURE_WINDOW_DAYS)));
            "payment.waiting_for_capture"
        };
        let body = Self::payment_json(record);
        let note = self.notification(event, body.clone());
        Ok((body, note))
    }

    /// The payment was declined (by the payer's bank, by fraud checks, or by the payer).
    pub fn decline(&mut self, id: &str, reason: &str) -> Result<(Value, Outgoing), ControlError> {
        let record = self
            .payments
            .get_mut(id)
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
        if !matches!(
            record.object.status,
            PaymentStatus::Pending | PaymentStatus::WaitingForCapture
        ) {
            return Err(ControlError::InvalidState {
                id: id.to_owned(),
                status: record.object.status.as_str(),
            });
        }
        cancel(record, party_for(reason), reason);
        let body = Self::payment_json(record);
        let note = self.notification("payment.canceled", body.clone());
        Ok((body, note))
    }

    /// Ends an unpaid payment (or an uncaptured one) the way YooKassa's timers do.
    pub fn expire(&mut self, id: &str) -> Result<(Value, Outgoing), ControlError> {
        let reason = match self.payments.get(id).map(|p| p.object.status) {
            Some(PaymentStatus::WaitingForCapture) => "expired_on_capture",
            _ => "expired_on_confirmation",
        };
        self.decline(id, reason)
    }

    /// Pending payments whose confirmation deadline is before `cutoff`.
    pub fn overdue(&self, cutoff: DateTime<Utc>) -> Vec<String> {
        self.payment_order
            .iter()
            .filter(|id| {
                self.payments.get(*id).is_some_and(|p| {
                    p.object.status == PaymentStatus::Pending && p.confirmation_deadline <= cutoff
                })
            })
            .cloned()
            .collect()
    }

    pub fn capture(
        &mut self,
        shop: &Shop,
        id: &str,
        amount: Option<validate::Money>,
        now: DateTime<Utc>,
    ) -> Result<(Value, Vec<Outgoing>), ApiError> {
        self.payment_for_shop(&shop.shop_id, id)?;
        let Some(record) = self.payments.get_mut(id) else {
            return Err(ApiError::not_found("Payment not found or forbidden"));
        };
        if record.capture {
            return Err(ApiError::invalid_request(
                "You can not capture payment with autocapture",
                None,
            ));
        }
        if record.object.status != PaymentStatus::WaitingForCapture {
            return Err(ApiError::invalid_request(
                "Payment can not be captured in current status",
                None,
            ));
        }
        if let Some(amount) = amount {
            if amount.currency != record.object.amount.currency {
                return Err(ApiError::invalid_request(
                    "Capture currency differs from the payment currency",
                    Some("amount.currency"),
                ));
            }
            if amount.minor > record.amount_minor {
                return Err(ApiError::invalid_request(
                    "Capture amount exceeds the payment amount",
                    Some("amount.value"),
                ));
            }
            record.amount_minor = amount.minor;
            record.object.amount = Amount::from_minor(amount.minor, amount.currency);
        }
        succeed(record, now);
        let body = Self::payment_json(record);
        let note = self.notification("payment.succeeded", body.clone());
        Ok((body, vec![note]))
    }

    pub fn cancel_by_merchant(
        &mut self,
        shop: &Shop,
        id: &str,
    ) -> Result<(Value, Vec<Outgoing>), ApiError> {
        self.payment_for_shop(&shop.shop_id, id)?;
        let Some(record) = self.payments.get_mut(id) else {
            return Err(ApiError::not_found("Payment not found or forbidden"));
        };
        if record.object.status != PaymentStatus::WaitingForCapture {
            return Err(ApiError::invalid_request(
                "Payment can not be canceled in current status",
                None,
            ));
        }
        cancel(record, "merchant", "canceled_by_merchant");
        let body = Self::payment_json(record);
        let note = self.notification("payment.canceled", body.clone());
        Ok((body, vec![note]))
    }

    pub fn refund(
        &mut self,
        shop: &Shop,
        req: CreateRefund,
        now: DateTime<Utc>,
    ) -> Result<(Value, Vec<Outgoing>), ApiError> {
        self.payment_for_shop(&shop.shop_id, &req.payment_id)?;
        let Some(payment) = self.payments.get_mut(&req.payment_id) else {
            return Err(ApiError::not_found("Payment not found or forbidden"));
        };
        if payment.object.status != PaymentStatus::Succeeded {
            return Err(ApiError::invalid_request(
                "Payment can not be refunded in current status: only succeeded payments can be refunded",
                Some("payment_id"),
            ));
        }
        if req.amount.currency != payment.object.amount.currency {
            return Err(ApiError::invalid_request(
                "Refund currency differs from the payment currency",
                Some("amount.currency"),
            ));
        }
        let remaining = payment.amount_minor - payment.refunded_minor;
        if req.amount.minor > remaining {
            return Err(ApiError::invalid_request(
                "Refund amount exceeds the amount available for refund",
                Some("amount.value"),
            ));
        }
        let left = remaining - req.amount.minor;
        if left > 0 && left <= MIN_REMAINDER_AFTER_PARTIAL_REFUND {
            return Err(ApiError::invalid_request(
                "Remaining payment amount after refund must be greater than 1.00 RUB",
                Some("amount.value"),
            ));
        }
        payment.refunded_minor += req.amount.minor;
        payment.object.refunded_amount = Some(Amount::from_minor(
            payment.refunded_minor,
            req.amount.currency,
        ));
        payment.object.refundable = payment.refunded_minor < payment.amount_minor;
        let receipt = payment.receipt;

        let refund = Refund {
            id: uuid::Uuid::new_v4().to_string(),
            payment_id: req.payment_id,
            status: RefundStatus::Succeeded,
            amount: Amount::from_minor(req.amount.minor, req.amount.currency),
            created_at: timestamp(now),
            description: req.description,
            receipt_registration: receipt.then(|| "succeeded".into()),
        };
        let body = serde_json::to_value(&refund).unwrap_or(Value::Null);
        self.refund_order.push(refund.id.clone());
        self.refunds.insert(
            refund.id.clone(),
            RefundRecord {
                object: refund,
                shop_id: shop.shop_id.clone(),
            },
        );
        let note = self.notification("refund.succeeded", body.clone());
        Ok((body, vec![note]))
    }

    pub fn get_refund(&self, shop: &Shop, id: &str) -> Result<Value, ApiError> {
        self.refunds
            .get(id)
            .filter(|r| r.shop_id == shop.shop_id)
            .and_then(|r| serde_json::to_value(&r.object).ok())
            .ok_or_else(|| ApiError::not_found("Refund not found or forbidden"))
    }

    pub fn get_payment(&self, shop: &Shop, id: &str) -> Result<Value, ApiError> {
        self.payment_for_shop(&shop.shop_id, id)
            .map(Self::payment_json)
    }

    pub fn payments_json(&self) -> Vec<Value> {
        self.payment_order
            .iter()
            .filter_map(|id| self.payments.get(id))
            .map(Self::payment_json)
            .collect()
    }

    pub fn refunds_json(&self) -> Vec<Value> {
        self.refund_order
            .iter()
            .filter_map(|id| self.refunds.get(id))
            .filter_map(|r| serde_json::to_value(&r.object).ok())
            .collect()
    }
}

fn succeed(record: &mut PaymentRecord, now: DateTime<Utc>) {
    let p = &mut record.object;
    p.status = PaymentStatus::Succeeded;
    p.paid = true;
    p.captured_at = Some(timestamp(now));
    p.expires_at = None;
    // A 3.5 % commission, rounded half up, like the reference capture (9.99 → 9.64).
    let fee = (record.amount_minor * 35 + 500) / 1000;
    p.income_amount = Some(Amount::from_minor(
        record.amount_minor - fee,
        &p.amount.currency,
    ));
    p.refunded_amount = Some(Amount::from_minor(0, &p.amount.currency));
    p.refundable = true;
    if record.receipt {
        p.receipt_registration = Some("succeeded".into());
    }
}

fn cancel(record: &mut PaymentRecord, party: &str, reason: &str) {
    let p = &mut record.object;
    p.status = PaymentStatus::Canceled;
    p.paid = false;
    p.confirmation = None;
    p.expires_at = None;
    p.refundable = false;
    p.cancellation_details = Some(CancellationDetails {
        party: party.into(),
        reason: reason.into(),
    });
    if record.receipt {
        p.receipt_registration = Some("canceled".into());
    }
}

/// Who YooKassa names as the canceling party for a given reason.
fn party_for(reason: &str) -> &'static str {
    match reason {
        "canceled_by_merchant" => "merchant",
        "expired_on_confirmation"
        | "expired_on_capture"
        | "fraud_suspected"
        | "internal_timeout"
        | "country_forbidden"
        | "permission_revoked" => "yoo_money",
        _ => "payment_network",
    }
}
