//! `saved_methods`: a payment method a provider saved for automatic renewal, one per user and
//! provider (see the migration `m20261206_000800_saved_methods`).

use sea_orm::entity::prelude::*;

use crate::ProviderId;

/// Declines in a row after which autopay turns itself off.
pub const MAX_DECLINES: i32 = 3;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "saved_methods")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub provider: ProviderId,
    /// The provider's id of the method (YooKassa: `payment_method.id`).
    #[sea_orm(column_type = "Text")]
    pub method_id: String,
    /// What the user recognises it by, e.g. "Bank card *4477".
    #[sea_orm(column_type = "Text")]
    pub title: String,
    /// The tariff renewed automatically (the one bought when the method was saved).
    pub tariff_id: i64,
    /// Whether renewals charge it (the user can turn it off; three declines do).
    pub autopay: bool,
    /// Declined renewal charges in a row (a success resets it).
    pub declines: i32,
    /// The provider's reason for the last decline (e.g. `insufficient_funds`).
    #[sea_orm(column_type = "Text", nullable)]
    pub last_decline: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
