//! Telegram Bot API wire types used by the provider: the answer envelope, Star transactions,
//! and the payment service messages the bot stores in the inbox.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `{"ok":true,"result":…}` or `{"ok":false,"error_code":…,"description":…}`.
#[derive(Debug, Deserialize)]
pub struct ApiAnswer {
    pub ok: bool,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error_code: Option<u16>,
    #[serde(default)]
    pub description: Option<String>,
}

/// `getStarTransactions` result.
#[derive(Debug, Deserialize)]
pub struct StarTransactions {
    pub transactions: Vec<StarTransaction>,
}

/// One Star transaction. A refund is an outgoing transaction (`receiver`) whose `id` equals
/// the original payment's `telegram_payment_charge_id`.
#[derive(Debug, Deserialize)]
pub struct StarTransaction {
    pub id: String,
    pub amount: i64,
    pub date: i64,
    #[serde(default)]
    pub source: Option<TransactionPartner>,
    #[serde(default)]
    pub receiver: Option<TransactionPartner>,
}

/// The other side of a transaction; only users matter here.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TransactionPartner {
    User {
        user: PartnerUser,
        #[serde(default)]
        invoice_payload: Option<String>,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
pub struct PartnerUser {
    pub id: i64,
}

/// `successful_payment` of a service message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccessfulPayment {
    pub currency: String,
    pub total_amount: i64,
    pub invoice_payload: String,
    pub telegram_payment_charge_id: String,
    #[serde(default)]
    pub provider_payment_charge_id: Option<String>,
    /// A Star subscription's payment: the first (`is_first_recurring`) or a later charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_recurring: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_first_recurring: Option<bool>,
    /// Unix time until which a subscription's charge pays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_expiration_date: Option<i64>,
}

impl SuccessfulPayment {
    /// A subscription's later charge: recurring but not the first payment.
    pub fn is_renewal(&self) -> bool {
        self.is_recurring == Some(true) && self.is_first_recurring != Some(true)
    }
}

/// `refunded_payment` of a service message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundedPayment {
    pub currency: String,
    pub total_amount: i64,
    pub invoice_payload: String,
    pub telegram_payment_charge_id: String,
    #[serde(default)]
    pub provider_payment_charge_id: Option<String>,
}

/// The payment part of a stored update or message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentMessage {
    Successful(SuccessfulPayment),
    Refunded(RefundedPayment),
}

/// Reads a whole update (`{"update_id":…,"message":{…}}`) or just its message.
pub fn payment_message(body: &[u8]) -> Result<PaymentMessage, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let message = value.get("message").unwrap_or(&value);
    if let Some(paid) = message.get("successful_payment") {
        return serde_json::from_value(paid.clone())
            .map(PaymentMessage::Successful)
            .map_err(|e| format!("successful_payment: {e}"));
    }
    if let Some(refunded) = message.get("refunded_payment") {
        return serde_json::from_value(refunded.clone())
            .map(PaymentMessage::Refunded)
            .map_err(|e| format!("refunded_payment: {e}"));
    }
    Err("neither successful_payment nor refunded_payment".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_updates_and_messages() {
        let update = br#"{"update_id":7,"message":{"message_id":5,"successful_payment":{"currency":"XTR","total_amount":150,"invoice_payload":"p","telegram_payment_charge_id":"stx1","provider_payment_charge_id":""}}}"#;
        let PaymentMessage::Successful(paid) = payment_message(update).expect("parses") else {
            panic!("successful")
        };
        assert_eq!(paid.total_amount, 150);
        let refunded = br#"{"refunded_payment":{"currency":"XTR","total_amount":150,"invoice_payload":"p","telegram_payment_charge_id":"stx1"}}"#;
        assert!(matches!(
            payment_message(refunded),
            Ok(PaymentMessage::Refunded(_))
        ));
        assert!(payment_message(br#"{"message":{"text":"hi"}}"#).is_err());
    }

    #[test]
    fn a_subscriptions_later_charges_are_renewals() {
        let paid = |extra: &str| {
            let body = format!(
                r#"{{"successful_payment":{{"currency":"XTR","total_amount":150,"invoice_payload":"p","telegram_payment_charge_id":"stx2"{extra}}}}}"#
            );
            let Ok(PaymentMessage::Successful(paid)) = payment_message(body.as_bytes()) else {
                panic!("successful")
            };
            paid
        };
        assert!(!paid("").is_renewal(), "a one-time payment");
        assert!(
            !paid(
                r#","is_recurring":true,"is_first_recurring":true,"subscription_expiration_date":1"#
            )
            .is_renewal(),
            "a subscription's first payment"
        );
        let renewal = paid(r#","is_recurring":true,"subscription_expiration_date":2592001"#);
        assert!(renewal.is_renewal());
        assert_eq!(renewal.subscription_expiration_date, Some(2_592_001));
    }

    #[test]
    fn star_transactions_skip_unknown_partners() {
        let page: StarTransactions = serde_json::from_str(
            r#"{"transactions":[
              {"id":"a","amount":5,"date":1,"source":{"type":"fragment"}},
              {"id":"b","amount":150,"date":2,"source":{"type":"user","transaction_type":"invoice_payment","user":{"id":42,"is_bot":false,"first_name":"A"},"invoice_payload":"p"}},
              {"id":"b","amount":150,"date":3,"receiver":{"type":"user","user":{"id":42,"is_bot":false,"first_name":"A"},"invoice_payload":"p"}}
            ]}"#,
        )
        .expect("parses");
        assert!(matches!(
            page.transactions[0].source,
            Some(TransactionPartner::Unknown)
        ));
        assert!(page.transactions[2].receiver.is_some());
    }
}
