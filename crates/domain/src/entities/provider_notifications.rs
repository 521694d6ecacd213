//! `provider_notifications`: the inbox. Every verified webhook or update is stored here
//! before it is acknowledged; `(provider, dedupe_key)` makes redelivery a no-op.

use crate::PaymentId;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "provider_notifications")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(column_type = "Text")]
    pub provider: crate::ProviderId,
    /// Provider-specific identity of the notification (e.g. event + object id).
    #[sea_orm(column_type = "Text")]
    pub dedupe_key: String,
    /// Where it came from (`webhook`, `bot_update`, `chain`, …).
    #[sea_orm(column_type = "Text")]
    pub source: String,
    /// The sender's address as seen after proxy handling, when there is one.
    #[sea_orm(column_type = "Text", nullable)]
    pub peer: Option<String>,
    /// The raw body, exactly as received.
    #[sea_orm(column_type = "Text")]
    pub body: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub provider_payment_id: Option<String>,
    /// Our payment, once matched; `None` for notifications about unknown payments.
    pub payment_id: Option<PaymentId>,
    pub received_at: DateTimeUtc,
    pub processed_at: Option<DateTimeUtc>,
    /// What processing did (`applied`, `duplicate`, `stale`, `unknown_payment`, …).
    #[sea_orm(column_type = "Text", nullable)]
    pub outcome: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::payments::Entity",
        from = "Column::PaymentId",
        to = "super::payments::Column::Id",
        on_delete = "SetNull"
    )]
    Payment,
}

impl Related<super::payments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Payment.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
