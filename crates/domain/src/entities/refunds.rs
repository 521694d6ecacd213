//! `refunds`: refund requests and their outcome at the provider.

use crate::PaymentId;
use sea_orm::entity::prelude::*;

use crate::money::{Currency, Money};
use crate::status::RefundStatus;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "refunds")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub payment_id: PaymentId,
    #[sea_orm(column_type = "Text")]
    pub provider: crate::ProviderId,
    /// The provider's id of the refund; unique together with `provider`.
    #[sea_orm(column_type = "Text", nullable)]
    pub provider_refund_id: Option<String>,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: RefundStatus,
    #[sea_orm(column_type = "Text", nullable)]
    pub reason: Option<String>,
    /// Who asked (`admin:<telegram id>`, `api`).
    #[sea_orm(column_type = "Text")]
    pub requested_by: String,
    #[sea_orm(unique, column_type = "Text")]
    pub idempotency_key: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub failure_reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,
    /// Made outside the provider's API (fiat Telegram payments: the admin returns the money
    /// in the payment provider's cabinet; Telegram was not asked).
    pub outside_provider: bool,
}

impl Model {
    pub fn amount(&self) -> Money {
        Money::new(self.amount_minor, self.currency)
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::payments::Entity",
        from = "Column::PaymentId",
        to = "super::payments::Column::Id"
    )]
    Payment,
}

impl Related<super::payments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Payment.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
