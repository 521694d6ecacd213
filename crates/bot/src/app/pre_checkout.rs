//! The pre-checkout check: a `pre_checkout_query` is answered from one indexed statement (the
//! payload names a pending Telegram payment of this user, same amount and currency, not
//! expired, price unchanged), well inside Telegram's 10 s.

use std::time::Instant;

use frankenstein::AsyncTelegramApi;
use frankenstein::methods::AnswerPreCheckoutQueryParams;
use frankenstein::payments::PreCheckoutQuery;

use super::App;
use super::ui::{lang_of, user_id};
use crate::store::{self, PreCheckout};

impl App {
    pub(super) async fn on_pre_checkout(&self, query: &PreCheckoutQuery) {
        let started = Instant::now();
        let t = lang_of(&query.from).texts();
        let verdict = store::check_pre_checkout(
            &self.db,
            &query.invoice_payload,
            user_id(&query.from),
            &query.currency,
            i64::from(query.total_amount),
            chrono::Utc::now(),
        )
        .await;
        let refusal = match verdict {
            Ok(PreCheckout::Ok) => None,
            Ok(PreCheckout::Unknown) => Some(t.precheckout_unknown),
            Ok(PreCheckout::NotPending) => Some(t.precheckout_not_pending),
            Ok(PreCheckout::Mismatch) => Some(t.precheckout_mismatch),
            Ok(PreCheckout::Expired) => Some(t.precheckout_expired),
            Ok(PreCheckout::PriceChanged) => Some(t.precheckout_price_changed),
            Err(error) => {
                tracing::error!(%error, "pre-checkout check failed");
                Some(t.precheckout_unavailable)
            }
        };
        let params = AnswerPreCheckoutQueryParams::builder()
            .pre_checkout_query_id(query.id.clone())
            .ok(refusal.is_none())
            .maybe_error_message(refusal.map(str::to_owned))
            .build();
        if let Err(error) = self.api.answer_pre_checkout_query(&params).await {
            tracing::warn!(%error, "answerPreCheckoutQuery failed");
        }
        tracing::info!(
            payload = %query.invoice_payload,
            ok = refusal.is_none(),
            elapsed_ms = started.elapsed().as_millis(),
            "pre-checkout answered"
        );
    }
}
