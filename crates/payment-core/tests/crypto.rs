//! The crypto provider against PostgreSQL (testkit) and the TronGrid emulator
//! (`sandbox::tron`): invoices, the matching rules (property-tested), the chain watcher, the
//! invoice-backed status.

#[path = "crypto/helpers.rs"]
mod helpers;
#[path = "crypto/invoices.rs"]
mod invoices;
#[path = "crypto/matcher.rs"]
mod matcher;
#[path = "crypto/watcher.rs"]
mod watcher;
