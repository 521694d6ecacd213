#![doc = include_str!("../README.md")]

pub mod db;
pub mod inbox;
pub mod ops;
pub mod proxy;
pub mod runtime;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod testing;

pub use messaging::redact::{Redacted, redact_url};
pub use settings::{CommonSettings, SettingsError};
pub use shutdown::Shutdown;
