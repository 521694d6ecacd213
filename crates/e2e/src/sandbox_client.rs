//! The user side of the emulators over their HTTP control APIs (`/sandbox/…`), so a script
//! drives them the same way whether they run in this process (the demo) or in the `sandbox`
//! process (the cross-process tests, the load generator).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use sandbox::telegram::{PayOutcome, SentMessage, TestUser};
use sandbox::tron::NewTransfer;
use sea_orm::prelude::ChronoDateTimeUtc;
use serde_json::{Value, json};

use crate::cluster::SandboxUrls;

/// How often the message lists are polled while waiting.
const POLL: Duration = Duration::from_millis(20);

/// An HTTP client of the four emulators' control APIs.
#[derive(Debug, Clone)]
pub struct SandboxClient {
    pub http: reqwest::Client,
    pub urls: SandboxUrls,
}

impl SandboxClient {
    pub fn new(urls: SandboxUrls) -> Self {
        Self {
            http: reqwest::Client::new(),
            urls,
        }
    }

    async fn post(&self, url: String, body: &Value) -> anyhow::Result<Value> {
        let response = self.http.post(&url).json(body).send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("POST {url}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn user_body(user: &TestUser, mut body: Value) -> Value {
        body["first_name"] = json!(user.first_name);
        if let Some(language) = &user.language_code {
            body["language_code"] = json!(language);
        }
        body
    }

    /// The user sends a text message; returns its message id.
    pub async fn send_text(&self, user: &TestUser, text: &str) -> anyhow::Result<i64> {
        let url = format!(
            "{}/sandbox/telegram/users/{}/messages",
            self.urls.telegram, user.id
        );
        let answer = self
            .post(url, &Self::user_body(user, json!({"text": text})))
            .await?;
        answer["message_id"]
            .as_i64()
            .context("the emulator returned no message id")
    }

    /// The user presses the inline button with `data` under the bot's message.
    pub async fn press(&self, user: &TestUser, message_id: i64, data: &str) -> anyhow::Result<()> {
        let url = format!(
            "{}/sandbox/telegram/users/{}/press",
            self.urls.telegram, user.id
        );
        let body = json!({"message_id": message_id, "data": data});
        self.post(url, &Self::user_body(user, body)).await?;
        Ok(())
    }

    /// The user pays the invoice in the bot's message: `pre_checkout_query`, the bot's
    /// answer, then `successful_payment`.
    pub async fn pay_invoice(
        &self,
        user: &TestUser,
        message_id: i64,
    ) -> anyhow::Result<PayOutcome> {
        let url = format!(
            "{}/sandbox/telegram/users/{}/pay",
            self.urls.telegram, user.id
        );
        let answer = self
            .post(
                url,
                &Self::user_body(user, json!({"message_id": message_id})),
            )
            .await?;
        Ok(serde_json::from_value(answer)?)
    }

    /// Everything the bot sent to `chat`, oldest first.
    pub async fn messages(&self, chat: i64) -> anyhow::Result<Vec<SentMessage>> {
        let url = format!(
            "{}/sandbox/telegram/chats/{chat}/messages",
            self.urls.telegram
        );
        Ok(self.http.get(url).send().await?.json().await?)
    }

    /// Waits until the bot has sent `chat` a message matching `pred`.
    pub async fn wait_for_message(
        &self,
        chat: i64,
        timeout: Duration,
        pred: impl Fn(&SentMessage) -> bool,
    ) -> anyhow::Result<Option<SentMessage>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.messages(chat).await?.into_iter().find(|m| pred(m)) {
                return Ok(Some(found));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The payer completes YooKassa payment `id` on the emulator's checkout; the emulator
    /// then notifies its webhook URL (if it has one).
    pub async fn yookassa_pay(&self, id: &str) -> anyhow::Result<Value> {
        let url = format!("{}/sandbox/yookassa/payments/{id}/pay", self.urls.yookassa);
        self.post(url, &json!({})).await
    }

    /// Puts a transfer on the emulated TRON chain; returns its transaction id.
    pub async fn tron_transfer(&self, transfer: &NewTransfer) -> anyhow::Result<String> {
        let url = format!("{}/sandbox/tron/transfers", self.urls.tron);
        let answer = self.post(url, &serde_json::to_value(transfer)?).await?;
        Ok(answer["transaction_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The panel's users (its emulator's `UserState` JSON), in creation order.
    pub async fn panel_users(&self) -> anyhow::Result<Vec<Value>> {
        let url = self.urls.panel_control("users");
        Ok(self.http.get(url).send().await?.json().await?)
    }

    /// Username → expiry (Unix seconds; 0 = never) of every panel user, whichever panel:
    /// Marzban stores `expire` as seconds, PasarGuard as ISO, Remnawave `expire_at` as ISO.
    pub async fn panel_expiries(&self) -> anyhow::Result<HashMap<String, i64>> {
        self.panel_users()
            .await?
            .into_iter()
            .map(|user| {
                let username = user["username"]
                    .as_str()
                    .context("a user without username")?;
                let expire = match user.get("expire").or_else(|| user.get("expire_at")) {
                    None | Some(Value::Null) => 0,
                    Some(Value::String(iso)) => iso
                        .parse::<ChronoDateTimeUtc>()
                        .with_context(|| format!("{username}: expiry {iso:?}"))?
                        .timestamp(),
                    Some(seconds) => seconds
                        .as_i64()
                        .with_context(|| format!("{username}: expiry {seconds}"))?,
                };
                Ok((username.to_owned(), expire))
            })
            .collect()
    }

    /// YooKassa payments the emulator holds (API JSON).
    pub async fn yookassa_payments(&self) -> anyhow::Result<Vec<Value>> {
        let url = format!("{}/sandbox/yookassa/payments", self.urls.yookassa);
        Ok(self.http.get(url).send().await?.json().await?)
    }
}

/// "Send exactly 2.500123 USDT to …" → 2500123 micro-USDT.
pub fn transfer_amount(text: &str) -> anyhow::Result<i64> {
    let amount = text
        .split_whitespace()
        .find(|w| w.contains('.') && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .context("no amount in the transfer message")?;
    let (whole, fraction) = amount.split_once('.').context("amount without decimals")?;
    let fraction = format!("{fraction:0<6}");
    Ok(whole.parse::<i64>()? * 1_000_000 + fraction[..6].parse::<i64>()?)
}
