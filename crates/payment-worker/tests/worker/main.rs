//! Integration tests of the payment worker against PostgreSQL, RabbitMQ, the YooKassa
//! emulator (`sandbox::yookassa`) and the TronGrid emulator (`sandbox::tron`).

mod autopay;
mod competing;
mod crypto;
mod helpers;
mod in_process;
mod notifications;
mod outside_calls;
mod promos;
mod properties;
mod reconciliation;
mod referrals;
mod telegram;
