//! The worker's Prometheus metrics (served on `/metrics` of `WORKER_BIND`). The consumer
//! runner adds `messaging_consumer_*` (handled / retried / parked counts and handler latency).

use domain::PaymentStatus;

/// Counter `{provider, from, to}`: payment transitions made.
pub const TRANSITIONS: &str = "payment_worker_transitions_total";
/// Counter `{provider, outcome}`: notifications processed (`applied`, `pending`, `duplicate`,
/// `stale`, `flagged`, `unknown_payment`, …).
pub const NOTIFICATIONS: &str = "payment_worker_notifications_total";
/// Histogram `{provider}`: seconds between a notification's event and its processing (queue lag).
pub const NOTIFICATION_LAG: &str = "payment_worker_notification_lag_seconds";
/// Counter `{provider, outcome}`: reconciliation checks (`applied`, `pending`, `unknown`,
/// `flagged`, `exhausted`, `error`, …).
pub const RECONCILE_CHECKS: &str = "payment_worker_reconcile_checks_total";
/// Counter `{provider}`: provider answers whose amount or currency differ from the payment.
pub const MISMATCHES: &str = "payment_worker_mismatches_total";
/// Counter `{provider}`: status look-ups without a definite answer (HTTP 5xx, timeouts).
pub const RESULT_UNKNOWN: &str = "payment_worker_result_unknown_total";
/// Histogram `{provider}`: seconds a status look-up took.
pub const LOOKUP_SECONDS: &str = "payment_worker_status_lookup_seconds";
/// Histogram `{provider}`: milliseconds from creation to success of completed payments.
pub const PROCESSING_MS: &str = "payment_worker_processing_ms";
/// Counter `{provider, currency}`: minor units of completed payments.
pub const REVENUE_MINOR: &str = "payment_worker_revenue_minor_total";
/// Counter `{provider, currency}`: minor units refunded.
pub const REFUNDED_MINOR: &str = "payment_worker_refunded_minor_total";

use domain::ProviderId;

pub(crate) fn transition(provider: &ProviderId, from: PaymentStatus, to: PaymentStatus) {
    metrics::counter!(TRANSITIONS, "provider" => provider.to_string(), "from" => from.as_str(), "to" => to.as_str()).increment(1);
}

pub(crate) fn notification(provider: &ProviderId, outcome: &'static str) {
    metrics::counter!(NOTIFICATIONS, "provider" => provider.to_string(), "outcome" => outcome)
        .increment(1);
}

pub(crate) fn notification_lag(provider: &ProviderId, seconds: f64) {
    metrics::histogram!(NOTIFICATION_LAG, "provider" => provider.to_string()).record(seconds);
}

pub(crate) fn reconcile_check(provider: &ProviderId, outcome: &'static str) {
    metrics::counter!(RECONCILE_CHECKS, "provider" => provider.to_string(), "outcome" => outcome)
        .increment(1);
}

pub(crate) fn mismatch(provider: &ProviderId) {
    metrics::counter!(MISMATCHES, "provider" => provider.to_string()).increment(1);
}

pub(crate) fn result_unknown(provider: &ProviderId) {
    metrics::counter!(RESULT_UNKNOWN, "provider" => provider.to_string()).increment(1);
}

pub(crate) fn lookup(provider: &ProviderId, seconds: f64) {
    metrics::histogram!(LOOKUP_SECONDS, "provider" => provider.to_string()).record(seconds);
}

pub(crate) fn processing_time(provider: &ProviderId, millis: i64) {
    metrics::histogram!(PROCESSING_MS, "provider" => provider.to_string()).record(millis as f64);
}

pub(crate) fn revenue(provider: &ProviderId, currency: &'static str, minor: i64) {
    metrics::counter!(REVENUE_MINOR, "provider" => provider.to_string(), "currency" => currency)
        .increment(u64::try_from(minor).unwrap_or_default());
}

pub(crate) fn refunded(provider: &ProviderId, currency: &'static str, minor: i64) {
    metrics::counter!(REFUNDED_MINOR, "provider" => provider.to_string(), "currency" => currency)
        .increment(u64::try_from(minor).unwrap_or_default());
}
