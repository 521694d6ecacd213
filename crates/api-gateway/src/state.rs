//! What every handler shares.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

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
    pub in_flight: InFlight,
    /// The per-address rate limits ([`crate::limits`]).
    pub limits: crate::limits::Limits,
    /// One open checkout per customer, tariff, provider and currency; the cap on open ones.
    pub checkout: CheckoutPolicy,
}

/// Idempotency keys being processed by this process: a second request with a key in hand
/// here gets 409 at once. Across replicas the UNIQUE key column and the provider's
/// idempotence make a second request safe (it finishes or replays the same payment).
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    /// Claims `key`, or `None` when a request with it is already running here.
    pub fn claim(&self, key: &str) -> Option<InFlightGuard> {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        set.insert(key.to_owned()).then(|| InFlightGuard {
            set: self.clone(),
            key: key.to_owned(),
        })
    }
}

/// Releases its key when dropped, however the request ends.
#[derive(Debug)]
pub struct InFlightGuard {
    set: InFlight,
    key: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}
