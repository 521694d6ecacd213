//! What the system recorded, read back after a run: payments, the subscription ledger, and
//! each subscription's expiry — to check that every paid payment extended exactly once.

use anyhow::Context;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::json;

use crate::cluster::SERVICE_TOKEN;

/// One subscription and its ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionAudit {
    pub telegram_id: i64,
    pub marzban_username: String,
    /// `subscriptions.expires_at`, Unix seconds.
    pub expires_at: f64,
    /// Where the first grant started from (its `expires_at_after` minus its days).
    pub first_base: f64,
    pub grants: i64,
    pub days_granted: i64,
}

impl SubscriptionAudit {
    /// Days between the first grant's start and the expiry (exact when no day lapsed).
    pub fn days_covered(&self) -> f64 {
        (self.expires_at - self.first_base) / 86_400.0
    }
}

/// Counts over the whole database.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    pub payments: i64,
    pub succeeded: i64,
    /// Ledger rows that belong to a payment.
    pub grants: i64,
    /// Payments with more than one grant (the UNIQUE constraint should make this impossible).
    pub payments_granted_twice: i64,
    pub subscriptions: Vec<SubscriptionAudit>,
}

async fn scalar(conn: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = conn
        .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await?
        .context("no row")?;
    Ok(row.try_get::<i64>("", "n")?)
}

pub async fn audit(conn: &DatabaseConnection) -> anyhow::Result<Audit> {
    let payments = scalar(conn, "SELECT count(*) AS n FROM payments").await?;
    let succeeded = scalar(
        conn,
        "SELECT count(*) AS n FROM payments WHERE status = 'succeeded'",
    )
    .await?;
    let grants = scalar(
        conn,
        "SELECT count(*) AS n FROM subscription_grants WHERE payment_id IS NOT NULL",
    )
    .await?;
    let payments_granted_twice = scalar(
        conn,
        "SELECT count(*) AS n FROM (SELECT payment_id FROM subscription_grants \
         WHERE payment_id IS NOT NULL GROUP BY payment_id HAVING count(*) > 1) AS d",
    )
    .await?;
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT u.telegram_id, s.marzban_username,
                    EXTRACT(EPOCH FROM s.expires_at)::float8 AS expires_at,
                    (SELECT EXTRACT(EPOCH FROM g.expires_at_after)::float8 - g.days_granted * 86400.0
                       FROM subscription_grants g WHERE g.subscription_id = s.id
                      ORDER BY g.id LIMIT 1) AS first_base,
                    (SELECT count(*) FROM subscription_grants g
                      WHERE g.subscription_id = s.id) AS grants,
                    (SELECT coalesce(sum(g.days_granted), 0)::bigint FROM subscription_grants g
                      WHERE g.subscription_id = s.id) AS days_granted
               FROM subscriptions s JOIN users u ON u.id = s.user_id
              ORDER BY u.telegram_id",
        ))
        .await?;
    let subscriptions = rows
        .iter()
        .map(|row| {
            Ok(SubscriptionAudit {
                telegram_id: row.try_get("", "telegram_id")?,
                marzban_username: row.try_get("", "marzban_username")?,
                expires_at: row.try_get("", "expires_at")?,
                first_base: row
                    .try_get::<Option<f64>>("", "first_base")?
                    .unwrap_or_default(),
                grants: row.try_get("", "grants")?,
                days_granted: row.try_get("", "days_granted")?,
            })
        })
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()?;
    Ok(Audit {
        payments,
        succeeded,
        grants,
        payments_granted_twice,
        subscriptions,
    })
}

/// A payment created through the gateway's API.
#[derive(Debug, Clone)]
pub struct Created {
    pub payment_id: String,
    /// The YooKassa payment id.
    pub provider_payment_id: String,
}

/// `POST /api/payments` as the bot does it (service token, idempotency key).
pub async fn create_payment(
    http: &reqwest::Client,
    gateway: &str,
    telegram_id: i64,
    tariff: &str,
    key: &str,
) -> anyhow::Result<Created> {
    let response = http
        .post(format!("http://{gateway}/api/payments"))
        .bearer_auth(SERVICE_TOKEN)
        .header("Idempotency-Key", key)
        .json(&json!({
            "telegram_id": telegram_id,
            "tariff_code": tariff,
            "provider": "yookassa",
            "language_code": "en",
        }))
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    anyhow::ensure!(status.is_success(), "create payment: {status} {body}");
    Ok(Created {
        payment_id: body["payment_id"].as_str().unwrap_or_default().to_owned(),
        provider_payment_id: body["provider_payment_id"]
            .as_str()
            .context("no provider_payment_id")?
            .to_owned(),
    })
}
