//! `promo_codes`: a code's benefit and limits (issue 23; see [`crate::promo`]).

use sea_orm::entity::prelude::*;

use crate::money::Currency;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "promo_codes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Upper case, `A-Z 0-9 _ -` ([`crate::promo::normalize`]).
    #[sea_orm(unique, column_type = "Text")]
    pub code: String,
    /// `percent`, `fixed` or `days` ([`crate::promo::Kind`]).
    #[sea_orm(column_type = "Text")]
    pub kind: String,
    /// Percent off (1–99), minor units off (in `currency`), or extra days.
    pub value: i64,
    /// The currency of a `fixed` discount.
    pub currency: Option<Currency>,
    /// Uses allowed in all; `None`: no limit.
    pub max_uses: Option<i32>,
    pub once_per_user: bool,
    pub starts_at: Option<DateTimeUtc>,
    /// Exclusive: the code works before this instant.
    pub ends_at: Option<DateTimeUtc>,
    /// Comma-separated tariff codes; empty: every tariff.
    #[sea_orm(column_type = "Text")]
    pub tariffs: String,
    /// Comma-separated provider ids; empty: every provider.
    #[sea_orm(column_type = "Text")]
    pub providers: String,
    pub active: bool,
    /// The admin's Telegram id, if made from the bot or named in the API call.
    pub created_by: Option<i64>,
    pub created_at: DateTimeUtc,
    pub disabled_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::payment_promos::Entity")]
    PaymentPromos,
}

impl Related<super::payment_promos::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::PaymentPromos.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
