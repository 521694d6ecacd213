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

/// Every binary that links service-kit — the four services, the single-process mode, acpctl
/// and their tests — allocates with mimalloc. Under load glibc's malloc and free took about a
/// seventh of the services' CPU (`perf` during steady-200, issue 24); mimalloc's thread-local
/// free lists cost a fraction of that. One declaration here rather than one per `main.rs`: a
/// binary may have only one, and every service already links this crate.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub use settings::{CommonSettings, SettingsError};
pub use shutdown::Shutdown;
