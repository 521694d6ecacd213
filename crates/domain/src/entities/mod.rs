//! SeaORM entities, one module per table. Amounts are `i64` minor units next to a currency.
//!
//! Status and currency columns are TEXT in the database and typed here
//! ([`PaymentStatus`](crate::status::PaymentStatus), [`Currency`](crate::money::Currency), …).

pub mod bot_chats;
pub mod broadcasts;
pub mod crypto_invoices;
pub mod manual_grants;
pub mod outbox;
pub mod payment_promos;
pub mod payments;
pub mod processed_messages;
pub mod promo_codes;
pub mod provider_notifications;
pub mod referral_codes;
pub mod referrals;
pub mod refunds;
pub mod reminder_cursors;
pub mod reminders;
pub mod saved_methods;
pub mod send_queue;
pub mod subscription_grants;
pub mod subscriptions;
pub mod system_logs;
pub mod tariff_texts;
pub mod tariffs;
pub mod users;

/// Entity types under table-like names, for `use domain::entities::prelude::*`.
pub mod prelude {
    pub use super::bot_chats::Entity as BotChats;
    pub use super::broadcasts::Entity as Broadcasts;
    pub use super::crypto_invoices::Entity as CryptoInvoices;
    pub use super::manual_grants::Entity as ManualGrants;
    pub use super::outbox::Entity as Outbox;
    pub use super::payment_promos::Entity as PaymentPromos;
    pub use super::payments::Entity as Payments;
    pub use super::processed_messages::Entity as ProcessedMessages;
    pub use super::promo_codes::Entity as PromoCodes;
    pub use super::provider_notifications::Entity as ProviderNotifications;
    pub use super::referral_codes::Entity as ReferralCodes;
    pub use super::referrals::Entity as Referrals;
    pub use super::refunds::Entity as Refunds;
    pub use super::reminder_cursors::Entity as ReminderCursors;
    pub use super::reminders::Entity as Reminders;
    pub use super::saved_methods::Entity as SavedMethods;
    pub use super::send_queue::Entity as SendQueue;
    pub use super::subscription_grants::Entity as SubscriptionGrants;
    pub use super::subscriptions::Entity as Subscriptions;
    pub use super::system_logs::Entity as SystemLogs;
    pub use super::tariff_texts::Entity as TariffTexts;
    pub use super::tariffs::Entity as Tariffs;
    pub use super::users::Entity as Users;
}
