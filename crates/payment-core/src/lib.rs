#![doc = include_str!("../README.md")]

pub mod background;
pub mod error;
mod ids;
pub mod provider;
pub mod providers;
pub mod service;
pub mod settings;
pub mod webhook;

pub use domain::{PaymentStatus, RefundStatus};
pub use error::{
    Mismatch, ProviderError, RefundRefusal, Rejection, RejectionCode, SettingsError,
    TransientFailure, WebhookError,
};
pub use ids::{PaymentMethod, ProviderId};
pub use outbound::HttpRetry;
pub use provider::{
    CheckoutError, Confirmation, CreatePaymentRequest, CreatedPayment, PaymentProvider, PaymentRef,
    ProviderDescriptor, ProviderPayment, ProviderRefund, Recurring, RecurringCharge, RefundNotice,
    RefundRequest, RefundRoute, SavedMethod, StatusQuery,
};
pub use service::PaymentService;
pub use settings::PaymentSettings;
pub use webhook::{
    ClientIpResolver, IpAllowList, WebhookHeaders, WebhookNotification, WebhookRequest,
    WebhookSubject,
};
