//! `payment_promos`: the promo code a payment was made with, one row per payment (issue 23;
//! see [`crate::promo`]). A use is a row with `used_at` and no `returned_at`.

use sea_orm::entity::prelude::*;

use crate::PaymentId;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payment_promos")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub payment_id: PaymentId,
    pub promo_code_id: i64,
    pub user_id: i64,
    #[sea_orm(column_type = "Text")]
    pub code: String,
    /// The tariff's price before the code, in the payment's currency.
    pub list_price_minor: i64,
    /// What the code took off (`list_price_minor - payments.amount_minor` before a crypto tag).
    pub discount_minor: i64,
    /// Days the grant gets on top of the tariff's.
    pub extra_days: i32,
    pub created_at: DateTimeUtc,
    /// When the payment succeeded (the use was counted).
    pub used_at: Option<DateTimeUtc>,
    /// When the payment was refunded in full (the use was given back).
    pub returned_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::payments::Entity",
        from = "Column::PaymentId",
        to = "super::payments::Column::Id"
    )]
    Payment,
    #[sea_orm(
        belongs_to = "super::promo_codes::Entity",
        from = "Column::PromoCodeId",
        to = "super::promo_codes::Column::Id"
    )]
    PromoCode,
}

impl Related<super::payments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Payment.def()
    }
}

impl Related<super::promo_codes::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::PromoCode.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
