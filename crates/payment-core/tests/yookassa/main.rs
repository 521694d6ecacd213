//! The YooKassa client against the in-process emulator (`sandbox::yookassa`), and webhook
//! verification.

mod autopay;
mod client;
mod faults;
mod helpers;
mod refunds;
mod service;
mod webhooks;
