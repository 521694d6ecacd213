//! The gateway's internal API as the bot uses it: create a payment and start a free trial
//! (service token), list the enabled providers, refund a payment, grant days and manage promo
//! codes (admin token).

use domain::PaymentId;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Why a gateway call did not give an answer to use.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The same idempotency key is being handled right now (a double tap).
    #[error("a request with this idempotency key is in flight")]
    InFlight,
    /// A definite refusal (4xx) with the gateway's message.
    #[error("gateway refused ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// No usable answer (connection, 5xx, timeout, unreadable body).
    #[error("gateway unavailable: {0}")]
    Unavailable(String),
}

/// `POST /api/admin/grants` body.
#[derive(Debug, Clone, Serialize)]
pub struct GrantDays {
    pub telegram_id: i64,
    pub days: i64,
    pub reason: String,
    pub admin_telegram_id: i64,
}

/// The gateway's view of a grant (the fields the bot uses).
#[derive(Debug, Clone, Deserialize)]
pub struct GrantView {
    pub grant_id: i64,
    pub telegram_id: i64,
    pub days: i32,
}

/// `POST /api/trials` body: who asks for the free trial.
#[derive(Debug, Clone, Serialize)]
pub struct StartTrial {
    pub telegram_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language_code: Option<String>,
}

/// `POST /api/payments` body.
#[derive(Debug, Clone, Serialize)]
pub struct CreatePayment {
    pub telegram_id: i64,
    pub tariff_code: String,
    pub provider: String,
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language_code: Option<String>,
    /// The payer agreed to automatic renewal (the provider saves the card).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub autopay: bool,
    /// A promo code the customer entered (issue 23).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promo_code: Option<String>,
}

/// A promo code as the gateway's admin API shows it (the fields the bot reads).
#[derive(Debug, Clone, Deserialize)]
pub struct PromoView {
    pub code: String,
    pub kind: String,
    pub value: i64,
    pub amount: Option<MoneyView>,
    pub max_uses: Option<i32>,
    pub once_per_user: bool,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub tariffs: Vec<String>,
    pub providers: Vec<String>,
    pub active: bool,
    pub stats: PromoStatsView,
}

/// A code's numbers.
#[derive(Debug, Clone, Deserialize)]
pub struct PromoStatsView {
    pub uses: u64,
    pub payments: u64,
    pub paid: u64,
    pub conversion_pct: f64,
    pub revenue: Vec<MoneyView>,
}

#[derive(Debug, Deserialize)]
struct Promos {
    promos: Vec<PromoView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MoneyView {
    pub minor: i64,
    pub currency: String,
    pub value: String,
}

/// The gateway's payment answer (the fields the bot reads).
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentView {
    pub payment_id: PaymentId,
    pub status: String,
    pub provider: String,
    pub amount: MoneyView,
    /// `{"type":"redirect","url"}`, `{"type":"transfer",…}` or `{"type":"invoice","payload"}`.
    pub confirmation: Option<Value>,
    pub confirmation_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProviderView {
    pub id: String,
    pub title: String,
    pub currencies: Vec<String>,
    /// `payments`, `webhooks`, `refunds`, `autopay` (saves cards for automatic renewal).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RefundView {
    pub refund_id: Uuid,
    pub status: String,
    pub failure_reason: Option<String>,
    pub amount: Option<MoneyView>,
    /// Made outside the provider (a card payment inside Telegram): the money is returned in
    /// the payment provider's cabinet.
    #[serde(default)]
    pub outside_provider: bool,
}

#[derive(Debug, Deserialize)]
struct Providers {
    providers: Vec<ProviderView>,
}

/// A client of the gateway.
#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    base: String,
    service_token: SecretString,
    admin_token: Option<SecretString>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(
        base: &str,
        service_token: SecretString,
        admin_token: Option<SecretString>,
        timeout: Duration,
    ) -> Result<Self, GatewayError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            service_token,
            admin_token,
        })
    }

    pub fn can_refund(&self) -> bool {
        self.admin_token.is_some()
    }

    /// Creates (or, for a key seen before, replays) a payment.
    pub async fn create_payment(
        &self,
        body: &CreatePayment,
        idempotency_key: &str,
    ) -> Result<PaymentView, GatewayError> {
        let request = self
            .http
            .post(format!("{}/api/payments", self.base))
            .bearer_auth(self.service_token.expose_secret())
            .header("Idempotency-Key", idempotency_key)
            .json(body);
        decode(request.send().await).await
    }

    /// The customer's free trial (`POST /api/trials`): 201 with the grant, 409 when they may
    /// not have one (the message names why), 404 when the trial is off.
    pub async fn start_trial(&self, body: &StartTrial) -> Result<GrantView, GatewayError> {
        let request = self
            .http
            .post(format!("{}/api/trials", self.base))
            .bearer_auth(self.service_token.expose_secret())
            .json(body);
        decode(request.send().await).await
    }

    pub async fn providers(&self) -> Result<Vec<ProviderView>, GatewayError> {
        let request = self
            .http
            .get(format!("{}/api/payment/providers", self.base))
            .bearer_auth(self.service_token.expose_secret());
        decode::<Providers>(request.send().await)
            .await
            .map(|p| p.providers)
    }

    /// Gives `days` to the customer `telegram_id`, by the admin `admin` (`POST
    /// /api/admin/grants`). Also says whether the key's grant was made before (a replay).
    pub async fn grant(
        &self,
        body: &GrantDays,
        idempotency_key: &str,
    ) -> Result<(GrantView, bool), GatewayError> {
        let token = self.admin_token()?;
        let sent = self
            .http
            .post(format!("{}/api/admin/grants", self.base))
            .bearer_auth(token.expose_secret())
            .header("Idempotency-Key", idempotency_key)
            .json(body)
            .send()
            .await;
        let replayed = sent.as_ref().is_ok_and(|response| {
            response
                .headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true")
        });
        Ok((decode(sent).await?, replayed))
    }

    /// Makes a promo code (`POST /api/admin/promos`, admin token): `body` as the API takes it.
    pub async fn create_promo(&self, body: &Value) -> Result<PromoView, GatewayError> {
        let token = self.admin_token()?;
        let request = self
            .http
            .post(format!("{}/api/admin/promos", self.base))
            .bearer_auth(token.expose_secret())
            .json(body);
        decode(request.send().await).await
    }

    /// Every promo code with its numbers (`GET /api/admin/promos`).
    pub async fn promos(&self) -> Result<Vec<PromoView>, GatewayError> {
        let token = self.admin_token()?;
        let request = self
            .http
            .get(format!("{}/api/admin/promos", self.base))
            .bearer_auth(token.expose_secret());
        decode::<Promos>(request.send().await)
            .await
            .map(|p| p.promos)
    }

    /// Disables a promo code (`POST /api/admin/promos/{code}/disable`); 404 if unknown.
    pub async fn disable_promo(&self, code: &str) -> Result<PromoView, GatewayError> {
        let token = self.admin_token()?;
        let request = self
            .http
            .post(format!("{}/api/admin/promos/{code}/disable", self.base))
            .bearer_auth(token.expose_secret());
        decode(request.send().await).await
    }

    fn admin_token(&self) -> Result<&SecretString, GatewayError> {
        self.admin_token
            .as_ref()
            .ok_or_else(|| GatewayError::Rejected {
                status: 403,
                message: "API_ADMIN_TOKEN is not set".to_owned(),
            })
    }

    /// A full refund, asked by `requested_by` (an admin's Telegram id).
    pub async fn refund(
        &self,
        payment_id: PaymentId,
        requested_by: i64,
        idempotency_key: &str,
    ) -> Result<RefundView, GatewayError> {
        let token = self.admin_token()?;
        let request = self
            .http
            .post(format!("{}/api/payments/{payment_id}/refund", self.base))
            .bearer_auth(token.expose_secret())
            .header("Idempotency-Key", idempotency_key)
            .json(&serde_json::json!({
                "requested_by": requested_by.to_string(),
                "reason": "refund by an admin in the bot",
            }));
        match decode::<RefundView>(request.send().await).await {
            // 422 carries the failed refund.
            Err(GatewayError::Rejected {
                status: 422,
                message,
            }) => match serde_json::from_str::<RefundView>(&message) {
                Ok(view) => Ok(view),
                Err(_) => Err(GatewayError::Rejected {
                    status: 422,
                    message,
                }),
            },
            other => other,
        }
    }
}

async fn decode<T: serde::de::DeserializeOwned>(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, GatewayError> {
    let response = sent.map_err(|e| GatewayError::Unavailable(e.to_string()))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
    match status {
        200..=299 => serde_json::from_str(&text)
            .map_err(|e| GatewayError::Unavailable(format!("unreadable answer: {e}"))),
        409 if text.contains("in flight") || text.contains("in_flight") => {
            Err(GatewayError::InFlight)
        }
        400..=499 => Err(GatewayError::Rejected {
            status,
            message: text,
        }),
        _ => Err(GatewayError::Unavailable(format!("HTTP {status}: {text}"))),
    }
}
