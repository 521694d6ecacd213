//! Typed payloads of every event on the bus. Each has a JSON Schema in `proto-schemas/`
//! (`<event_type>.v<version>.json`); `tests/schemas.rs` keeps the two in step.
//!
//! Payloads are wire types: plain ids, integers and strings. Services convert them to and from
//! their domain types at the edge. Money is `amount_minor` (an `i64` count of minor units) plus
//! an ISO-like currency code (`RUB`, `XTR`, `USDT`), never a float.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::{Event, rfc3339};

/// What every payment event says about the payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSnapshot {
    /// The payment (also the envelope's `correlation_id`).
    pub payment_id: domain::PaymentId,
    /// `users.id` of the payer.
    pub user_id: i64,
    /// The payer's Telegram user id.
    pub telegram_id: i64,
    /// The tariff bought, e.g. `month_1`.
    pub tariff_code: String,
    /// The provider's id (`yookassa`, `telegram`, `crypto`, `cryptobot`, …).
    pub provider: domain::ProviderId,
    /// Price in minor units of `currency`.
    pub amount_minor: i64,
    /// `RUB`, `XTR` or `USDT`.
    pub currency: String,
}

/// `payment.created`: a payment was stored as pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCreated {
    /// The payment.
    #[serde(flatten)]
    pub payment: PaymentSnapshot,
}

impl Event for PaymentCreated {
    const EVENT_TYPE: &'static str = "payment.created";
    const SCHEMA_VERSION: u32 = 1;
}

/// `payment.completed`: the provider confirmed the money; the subscription is to be granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCompleted {
    /// The payment.
    #[serde(flatten)]
    pub payment: PaymentSnapshot,
    /// When the provider says it was paid.
    #[serde(with = "rfc3339")]
    pub paid_at: DateTime<Utc>,
    /// Milliseconds from creation to success.
    pub processing_ms: i64,
}

impl Event for PaymentCompleted {
    const EVENT_TYPE: &'static str = "payment.completed";
    const SCHEMA_VERSION: u32 = 1;
}

/// `payment.failed`: the payment ended without money (failed, canceled or expired).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    /// The payment.
    #[serde(flatten)]
    pub payment: PaymentSnapshot,
    /// The provider's reason, or `expired` / `canceled`.
    pub failure_reason: String,
}

impl Event for PaymentFailed {
    const EVENT_TYPE: &'static str = "payment.failed";
    const SCHEMA_VERSION: u32 = 1;
}

/// `payment.refunded`: money went back to the payer, in part or in full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    /// The payment (`amount_minor` is the original price).
    #[serde(flatten)]
    pub payment: PaymentSnapshot,
    /// This refund, in minor units of `currency`.
    pub refunded_minor: i64,
    /// All refunds of the payment so far, this one included.
    pub total_refunded_minor: i64,
}

impl PaymentRefunded {
    /// `true` once everything paid has been returned.
    pub fn is_full(&self) -> bool {
        self.total_refunded_minor >= self.payment.amount_minor
    }
}

impl Event for PaymentRefunded {
    const EVENT_TYPE: &'static str = "payment.refunded";
    const SCHEMA_VERSION: u32 = 1;
}

/// `payment.underpaid`: a crypto transfer paid only part of the invoice. The payment stays
/// pending until the invoice expires; the bot tells the payer what arrived and what is still
/// missing. Written once per transfer, in the transaction that records the transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentUnderpaid {
    /// The payment (`amount_minor` is the invoice amount).
    #[serde(flatten)]
    pub payment: PaymentSnapshot,
    /// Everything received for the invoice so far, in minor units of `currency`.
    pub received_minor: i64,
    /// What is still missing: `amount_minor - received_minor`.
    pub shortfall_minor: i64,
    /// The chain transaction of the short transfer.
    pub tx_id: String,
    /// Until when the rest can be sent (the invoice's expiry).
    #[serde(with = "rfc3339")]
    pub pay_before: DateTime<Utc>,
}

impl Event for PaymentUnderpaid {
    const EVENT_TYPE: &'static str = "payment.underpaid";
    const SCHEMA_VERSION: u32 = 1;
}

/// What both subscription events say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionChange {
    /// Whose subscription.
    pub telegram_id: i64,
    /// The payment that caused the change.
    pub payment_id: domain::PaymentId,
    /// The user on the Marzban panel.
    pub marzban_username: String,
    /// The new absolute expiry.
    #[serde(with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
    /// The link the user imports into their VPN client.
    pub subscription_url: String,
}

/// `subscription.activated`: days were granted for a payment and the panel is in sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionActivated {
    /// The change.
    #[serde(flatten)]
    pub subscription: SubscriptionChange,
}

impl Event for SubscriptionActivated {
    const EVENT_TYPE: &'static str = "subscription.activated";
    const SCHEMA_VERSION: u32 = 1;
}

/// `subscription.revoked`: days granted for a refunded payment were taken back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRevoked {
    /// The change.
    #[serde(flatten)]
    pub subscription: SubscriptionChange,
}

impl Event for SubscriptionRevoked {
    const EVENT_TYPE: &'static str = "subscription.revoked";
    const SCHEMA_VERSION: u32 = 1;
}

/// `grant.created`: days were given without a payment (an admin's grant, a trial); the row
/// `manual_grants.id` = `grant_id` holds what and why. marzban-sync puts it in the ledger and
/// on the panel, once per grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantCreated {
    /// `manual_grants.id`.
    pub grant_id: i64,
    /// `users.id` of the receiver.
    pub user_id: i64,
    /// The receiver's Telegram user id.
    pub telegram_id: i64,
    /// `admin`, `trial` or `referral`.
    pub kind: String,
    /// Days given.
    pub days: i32,
}

impl Event for GrantCreated {
    const EVENT_TYPE: &'static str = "grant.created";
    const SCHEMA_VERSION: u32 = 1;
}

/// `grant.activated`: a manual grant (`grant.created`) is in the ledger and the panel is in
/// sync; the bot tells the user about a trial. Once per grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantActivated {
    /// `manual_grants.id`.
    pub grant_id: i64,
    /// The receiver's Telegram user id.
    pub telegram_id: i64,
    /// `admin`, `trial` or `referral`.
    pub kind: String,
    /// Days given.
    pub days: i32,
    /// The user on the panel.
    pub marzban_username: String,
    /// The new absolute expiry.
    #[serde(with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
    /// The link the user imports into their VPN client.
    pub subscription_url: String,
}

impl Event for GrantActivated {
    const EVENT_TYPE: &'static str = "grant.activated";
    const SCHEMA_VERSION: u32 = 1;
}

/// `grant.refused`: marzban-sync refused a manual grant instead of putting it in the ledger —
/// today only a free trial of a user the panel already has (a customer from before this bot,
/// `reason` `panel_user_exists`); nothing was written and the panel user was not touched. The
/// bot tells the user. Once per grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRefused {
    /// `manual_grants.id`.
    pub grant_id: i64,
    /// `users.id` of the receiver.
    pub user_id: i64,
    /// The receiver's Telegram user id.
    pub telegram_id: i64,
    /// The grant's kind (`trial`).
    pub kind: String,
    /// Why, e.g. `panel_user_exists`.
    pub reason: String,
}

impl Event for GrantRefused {
    const EVENT_TYPE: &'static str = "grant.refused";
    const SCHEMA_VERSION: u32 = 1;
}

/// `provider.notification` (routed as `provider.notification.<provider>`): a verified webhook
/// or update was stored in the inbox and waits for the worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderNotificationReceived {
    /// The provider's id; also the last routing-key segment.
    pub provider: domain::ProviderId,
    /// `provider_notifications.id` of the stored notification.
    pub notification_id: i64,
    /// The inbox's `(provider, dedupe_key)` key.
    pub dedupe_key: String,
    /// The payment, when the notification names one we know.
    pub payment_id: Option<domain::PaymentId>,
}

impl Event for ProviderNotificationReceived {
    const EVENT_TYPE: &'static str = "provider.notification";
    const SCHEMA_VERSION: u32 = 1;

    fn routing_key(&self) -> Cow<'static, str> {
        Cow::Owned(format!("{}.{}", Self::EVENT_TYPE, self.provider))
    }
}

/// `(event_type, schema_version)` of every event this crate defines.
pub const ALL: &[(&str, u32)] = &[
    (PaymentCreated::EVENT_TYPE, PaymentCreated::SCHEMA_VERSION),
    (
        PaymentCompleted::EVENT_TYPE,
        PaymentCompleted::SCHEMA_VERSION,
    ),
    (PaymentFailed::EVENT_TYPE, PaymentFailed::SCHEMA_VERSION),
    (PaymentRefunded::EVENT_TYPE, PaymentRefunded::SCHEMA_VERSION),
    (
        PaymentUnderpaid::EVENT_TYPE,
        PaymentUnderpaid::SCHEMA_VERSION,
    ),
    (
        SubscriptionActivated::EVENT_TYPE,
        SubscriptionActivated::SCHEMA_VERSION,
    ),
    (
        SubscriptionRevoked::EVENT_TYPE,
        SubscriptionRevoked::SCHEMA_VERSION,
    ),
    (GrantCreated::EVENT_TYPE, GrantCreated::SCHEMA_VERSION),
    (GrantActivated::EVENT_TYPE, GrantActivated::SCHEMA_VERSION),
    (GrantRefused::EVENT_TYPE, GrantRefused::SCHEMA_VERSION),
    (
        ProviderNotificationReceived::EVENT_TYPE,
        ProviderNotificationReceived::SCHEMA_VERSION,
    ),
];
