//! `system_logs`: an append-only business log used for analytics and audits. No foreign
//! keys: a log row must never be refused.

use crate::PaymentId;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "system_logs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `payment.created`, `payment.completed`, …
    #[sea_orm(column_type = "Text")]
    pub event_type: String,
    pub user_id: Option<i64>,
    pub payment_id: Option<PaymentId>,
    #[sea_orm(column_type = "Text", nullable)]
    pub provider: Option<crate::ProviderId>,
    pub amount_minor: Option<i64>,
    /// Kept as text: a log may record a currency we do not support (a provider mismatch).
    #[sea_orm(column_type = "Text", nullable)]
    pub currency: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub status: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub message: Option<String>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub metadata: Option<Json>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
