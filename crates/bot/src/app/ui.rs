//! The pieces every use case shares: keyboards, sending, the ids and keys read from updates.

use frankenstein::AsyncTelegramApi;
use frankenstein::client_reqwest::Bot as Api;
use frankenstein::methods::AnswerCallbackQueryParams;
use frankenstein::types::{InlineKeyboardButton, InlineKeyboardMarkup, User};
use sha2::{Digest, Sha256};

use super::App;
use crate::texts::{Lang, Texts, fill};

/// Where a callback's message is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Click {
    pub(super) chat: i64,
    pub(super) message_id: i32,
}

/// A Telegram user id as ours (`u64` on the wire, positive `i64` in the database).
pub(super) fn user_id(user: &User) -> i64 {
    i64::try_from(user.id).unwrap_or(i64::MAX)
}

pub(super) fn lang_of(user: &User) -> Lang {
    Lang::from_code(user.language_code.as_deref())
}

pub(crate) fn button(text: impl Into<String>, data: impl Into<String>) -> InlineKeyboardButton {
    InlineKeyboardButton::builder()
        .text(text)
        .callback_data(data)
        .build()
}

pub(super) fn url_button(text: impl Into<String>, url: impl Into<String>) -> InlineKeyboardButton {
    InlineKeyboardButton::builder().text(text).url(url).build()
}

pub(crate) fn keyboard(rows: Vec<Vec<InlineKeyboardButton>>) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::builder()
        .inline_keyboard(rows)
        .build()
}

/// The idempotency key of a click: the same button under the same message always gives the
/// same key, so a double tap creates one payment.
pub fn click_key(user: i64, message_id: i32, data: &str) -> String {
    let digest = hex::encode(Sha256::digest(data.as_bytes()));
    format!("tg:{user}:{message_id}:{}", &digest[..16])
}

pub(super) async fn send_message(
    api: &Api,
    chat: i64,
    text: String,
    markup: Option<InlineKeyboardMarkup>,
) {
    // Waits for a slot of the process-wide Telegram budget (TELEGRAM_API_LIMIT).
    if let Err(error) = crate::sender::send_text(api, chat, text, markup).await {
        tracing::warn!(chat, %error, "sendMessage failed");
    }
}

impl App {
    pub(super) async fn send(&self, chat: i64, text: String, markup: Option<InlineKeyboardMarkup>) {
        send_message(&self.api, chat, text, markup).await;
    }

    /// A QR code of `data` with `caption`, after the message that explains it; the text is
    /// enough on its own, so a failure is only logged.
    pub(super) async fn send_qr(&self, chat: i64, data: &str, caption: &str) {
        let sent = match crate::qr::png(data) {
            Ok(image) => {
                crate::qr::send_photo(&self.api, chat, &image.bytes, "qr.png", Some(caption), None)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = sent {
            tracing::warn!(chat, %error, "QR code not sent");
        }
    }

    pub(super) async fn answer_callback(&self, id: &str, text: Option<&str>) {
        let params = AnswerCallbackQueryParams::builder()
            .callback_query_id(id)
            .maybe_text(text.map(str::to_owned))
            .build();
        if let Err(error) = self.api.answer_callback_query(&params).await {
            tracing::debug!(%error, "answerCallbackQuery failed");
        }
    }

    /// The main menu; `trial`: the days of the free trial this user may take.
    pub(crate) fn main_menu_keyboard(t: &Texts, trial: Option<i32>) -> InlineKeyboardMarkup {
        let mut rows = vec![vec![button(t.btn_buy, "buy")]];
        if let Some(days) = trial {
            let days = crate::texts::days(t.lang, i64::from(days));
            rows.push(vec![button(fill(t.btn_trial, &[("days", &days)]), "trial")]);
        }
        rows.push(vec![button(t.btn_subscription, "sub")]);
        rows.push(vec![button(t.btn_help, "help")]);
        keyboard(rows)
    }

    pub(super) fn back(t: &Texts) -> InlineKeyboardMarkup {
        keyboard(vec![vec![button(t.btn_menu, "menu")]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn click_keys_are_stable_and_valid() {
        let a = click_key(123_456_789, 42, "p:month_1:telegram:XTR");
        assert_eq!(a, click_key(123_456_789, 42, "p:month_1:telegram:XTR"));
        assert_ne!(a, click_key(123_456_789, 43, "p:month_1:telegram:XTR"));
        assert_ne!(a, click_key(123_456_789, 42, "p:month_3:telegram:XTR"));
        assert!(domain::IdempotencyKey::parse(a.as_str()).is_ok(), "{a}");
        let long = click_key(i64::MAX, i32::MAX, "p:month_1:telegram:XTR");
        assert!(long.len() <= 64, "{long}");
    }
}
