//! Every route of the gateway, driven through the real server on a random port against
//! PostgreSQL, RabbitMQ and the YooKassa emulator.

mod abuse;
mod adversarial;
mod broadcasts;
mod checkout_abuse;
mod crypto;
mod embedded;
mod grants;
mod helpers;
mod idempotency;
mod ops;
mod payments;
mod promos;
mod rate_limits;
mod refunds;
mod slow_provider;
mod stats;
mod telegram_refunds;
mod trials;
mod users;
mod yookassa;
