//! Which provider a payment goes through.

/// A provider's id: one typed name (see [`domain::ProviderId`]); each provider declares its
/// own (`providers::<name>::ID`) and the registry refuses two providers with one id.
pub use domain::ProviderId;

/// The specification's name for the same thing: the method a payment is made with is the
/// provider it goes through (`payments.provider`).
pub type PaymentMethod = ProviderId;
