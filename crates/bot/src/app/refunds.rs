//! Refunds for admins: `/refund <payment id>` asks for confirmation; *Yes, refund* asks the
//! gateway, keyed by the confirmation message, so pressing twice refunds once.

use domain::PaymentId;

use super::App;
use super::ui::{Click, button, click_key, keyboard};
use crate::gateway::GatewayError;
use crate::store;
use crate::texts::{self, Texts, fill};

impl App {
    pub(super) async fn refund_prompt(&self, chat: i64, t: &Texts, arg: &str) {
        let Ok(id) = PaymentId::parse(arg) else {
            return self.send(chat, t.refund_usage.to_owned(), None).await;
        };
        if !self.gateway.can_refund() {
            return self.send(chat, t.refund_disabled.to_owned(), None).await;
        }
        match store::payment_with_payer(&self.db, id).await {
            Ok(Some((payment, payer))) => {
                let text = fill(
                    t.refund_confirm,
                    &[
                        ("id", &id.to_string()),
                        ("amount", &texts::money(payment.amount())),
                        ("provider", payment.provider.as_str()),
                        ("status", payment.status.as_str()),
                        (
                            "user",
                            &payer.map_or_else(|| "—".to_owned(), |p| p.to_string()),
                        ),
                    ],
                );
                let markup = keyboard(vec![vec![
                    button(t.btn_refund_yes, format!("rf:{id}")),
                    button(t.btn_refund_no, "rfno"),
                ]]);
                self.send(chat, text, Some(markup)).await;
            }
            Ok(None) => {
                self.send(chat, fill(t.refund_not_found, &[("id", arg)]), None)
                    .await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the payment");
                self.send(chat, t.payment_unavailable.to_owned(), None)
                    .await;
            }
        }
    }

    pub(super) async fn refund(
        &self,
        chat: i64,
        admin: i64,
        t: &'static Texts,
        click: Click,
        id: &str,
    ) -> Option<&'static str> {
        let Ok(id) = PaymentId::parse(id) else {
            return Some(t.refund_usage);
        };
        // One refund per confirmation message, however often the button is pressed.
        let key = click_key(admin, click.message_id, &format!("rf:{id}"));
        let text = match self.gateway.refund(id, admin, &key).await {
            Ok(refund) => {
                tracing::info!(payment_id = %id, refund_id = %refund.refund_id, status = %refund.status, admin, "refund requested in the bot");
                match refund.failure_reason {
                    Some(reason) if refund.status == "failed" => {
                        fill(t.refund_failed, &[("reason", &reason)])
                    }
                    _ if refund.outside_provider => {
                        let amount = refund
                            .amount
                            .map_or_else(String::new, |a| format!("{} {}", a.value, a.currency));
                        fill(
                            t.refund_outside,
                            &[("id", &id.to_string()), ("amount", &amount)],
                        )
                    }
                    _ => fill(
                        t.refund_done,
                        &[("id", &id.to_string()), ("status", &refund.status)],
                    ),
                }
            }
            Err(GatewayError::InFlight) => return Some(t.payment_busy),
            Err(error) => {
                tracing::warn!(payment_id = %id, %error, "refund failed");
                fill(t.refund_failed, &[("reason", &error.to_string())])
            }
        };
        self.send(chat, text, None).await;
        None
    }
}
