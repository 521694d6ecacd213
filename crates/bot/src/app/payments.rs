//! Payment ingestion: a `successful_payment` or `refunded_payment` message is stored in the
//! shared inbox (with its outbox row, one transaction) before the update is confirmed; the
//! worker applies it.

use domain::PaymentId;
use payment_core::providers::telegram::notification_from_body;
use payment_core::providers::telegram::transformers::{PaymentMessage, payment_message};
use serde_json::Value;
use service_kit::inbox::{Notice, Stored};

use super::ui::send_message;
use super::{App, HandleError};
use crate::texts::Lang;

/// A `successful_payment` or `refunded_payment` message: the only updates that must be stored
/// before Telegram is told they were handled.
pub fn is_payment_message(raw: &Value) -> bool {
    raw.get("message").is_some_and(|m| {
        m.get("successful_payment").is_some() || m.get("refunded_payment").is_some()
    })
}

impl App {
    pub(super) async fn on_payment_message(&self, raw: &Value) -> Result<(), HandleError> {
        let body = raw.to_string();
        let notification = match notification_from_body(body.as_bytes()) {
            Ok(notification) => notification,
            Err(error) => {
                tracing::error!(%error, update_id = ?raw.get("update_id"), "unreadable payment message");
                return Ok(());
            }
        };
        let notice = Notice {
            provider: payment_core::providers::telegram::ID,
            dedupe_key: notification.dedupe_key.clone(),
            source: "bot",
            peer: None,
            body: body.clone(),
            // The invoice payload: our payment id, also the payment's provider payment id.
            provider_payment_id: notification.provider_payment_id().map(str::to_owned),
            claimed_payment_id: notification
                .provider_payment_id()
                .and_then(|payload| PaymentId::parse(payload).ok()),
        };
        match self.inbox.store(notice).await? {
            Stored::New {
                notification_id, ..
            } => {
                tracing::info!(notification_id, dedupe_key = %notification.dedupe_key, event = %notification.event, "telegram payment message stored");
            }
            Stored::Duplicate => {
                tracing::info!(dedupe_key = %notification.dedupe_key, "telegram payment message seen before");
            }
        }
        self.record_star_subscription(raw, &body).await?;
        if notification.event == "successful_payment"
            && let Some(chat) = raw.pointer("/message/chat/id").and_then(Value::as_i64)
        {
            let language = raw
                .pointer("/message/from/language_code")
                .and_then(Value::as_str);
            let t = Lang::from_code(language).texts();
            // On its own task: the batch (and with it the next `getUpdates`) waits only for
            // the payment to be stored, not for this courtesy message.
            let (api, text) = (self.api.clone(), t.payment_received.to_owned());
            tokio::spawn(async move { send_message(&api, chat, text, None).await });
        }
        Ok(())
    }

    /// A Stars subscription's payment message starts the subscription or moves its expiry on
    /// ([`crate::stars`]). After the message is stored; a failure is retried with it (the
    /// inbox makes the copy a no-op).
    async fn record_star_subscription(&self, raw: &Value, body: &str) -> Result<(), HandleError> {
        let Ok(PaymentMessage::Successful(paid)) = payment_message(body.as_bytes()) else {
            return Ok(());
        };
        let Some(payer) = raw.pointer("/message/from/id").and_then(Value::as_i64) else {
            return Ok(());
        };
        crate::stars::record(&self.db, payer, &paid).await?;
        Ok(())
    }
}
