//! `subscription_grants`: the subscription ledger. `payment_id` is unique, so a redelivered
//! `payment.completed` can never grant twice.

use crate::PaymentId;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "subscription_grants")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub subscription_id: i64,
    /// The paying payment; `None` for grants without one (e.g. granted by an admin).
    #[sea_orm(unique)]
    pub payment_id: Option<PaymentId>,
    /// `purchase`, `manual`, …
    #[sea_orm(column_type = "Text")]
    pub kind: String,
    pub days_granted: i32,
    /// Days taken back by a refund (at most `days_granted`).
    pub days_revoked: i32,
    /// The absolute expiry this grant produced; re-applied as is on retry.
    pub expires_at_after: DateTimeUtc,
    pub created_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::subscriptions::Entity",
        from = "Column::SubscriptionId",
        to = "super::subscriptions::Column::Id"
    )]
    Subscription,
    #[sea_orm(
        belongs_to = "super::payments::Entity",
        from = "Column::PaymentId",
        to = "super::payments::Column::Id"
    )]
    Payment,
}

impl Related<super::subscriptions::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Subscription.def()
    }
}

impl Related<super::payments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Payment.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
