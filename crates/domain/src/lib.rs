#![doc = include_str!("../README.md")]

pub mod analytics;
pub mod broadcast;
pub mod customer;
pub mod entities;
pub mod env;
pub mod ids;
pub mod migration;
pub mod money;
pub mod payment_log;
pub mod promo;
pub mod referral;
pub mod status;
pub mod trial;

pub use ids::{IdError, IdempotencyKey, MarzbanUsername, PaymentId, ProviderId, TelegramUserId};
pub use money::{Currency, Money, MoneyError};
pub use status::{CryptoInvoiceStatus, PaymentStatus, RefundStatus, UnknownStatus};
