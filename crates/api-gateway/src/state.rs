//! What every handler shares.

use std::sync::Arc;

use payment_core::{ClientIpResolver, PaymentService};
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;

use crate::auth::Tokens;
use crate::checkout::CheckoutPolicy;
use service_kit::inbox::Inbox;

pub struct AppState {
    pub db: DatabaseConnection,
    pub payments: PaymentService,
    /// Wakes the outbox relay after a commit that wrote outbox rows.
    pub outbox_nudge: Arc<Notify>,
    /// Writes webhook notices, committing them in groups.
    pub inbox: Inbox,
    pub tokens: Tokens,
    /// Finds the client behind our trusted proxies (for logs and the inbox's `peer`).
    pub resolver: ClientIpResolver,
    pub max_body_bytes: usize,
    /// The per-address rate limits ([`crate::limits`]).
    pub limits: crate::limits::Limits,
    /// One open checkout per customer, tariff, provider and currency; the cap on open ones.
    pub checkout: CheckoutPolicy,
    /// The free trial's days and data limit (`TRIAL_DAYS` 0: off).
    pub trial: domain::trial::TrialPolicy,
}
