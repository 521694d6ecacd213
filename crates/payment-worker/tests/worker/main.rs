//! Integration tests of the payment worker against PostgreSQL, RabbitMQ and the YooKassa
//! emulator (`sandbox::yookassa`).

mod competing;
mod helpers;
mod in_process;
mod notifications;
mod properties;
mod reconciliation;
