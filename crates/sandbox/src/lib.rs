//! Local emulators of the outside services the payment system talks to.
//!
//! Each emulator is a library module that tests start in-process (bind port 0, get the base
//! URL back) and that the `sandbox` binary serves for demos.

pub mod cryptobot;
pub mod form;
pub mod marzban;
pub mod panel_kit;
pub mod pasarguard;
pub mod remnawave;
pub mod server;
pub mod telegram;
pub mod tron;
pub mod yookassa;
