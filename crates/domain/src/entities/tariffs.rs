//! `tariffs`: what can be bought, upserted at start-up from the tariffs file.

use sea_orm::entity::prelude::*;

use crate::money::{Currency, Money};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tariffs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique, column_type = "Text")]
    pub code: String,
    #[sea_orm(column_type = "Text")]
    pub title: String,
    pub duration_days: i32,
    /// `None` = unlimited traffic.
    pub data_limit_bytes: Option<i64>,
    /// Kopecks; `None` = not sold for RUB.
    pub price_rub_minor: Option<i64>,
    /// Telegram Stars; `None` = not sold for Stars.
    pub price_xtr: Option<i64>,
    /// Micro-USDT; `None` = not sold for USDT.
    pub price_usdt_minor: Option<i64>,
    pub active: bool,
    pub sort_order: i32,
}

impl Model {
    /// The price in `currency`, if the tariff is sold for it.
    pub fn price(&self, currency: Currency) -> Option<Money> {
        price_minor(
            currency,
            [self.price_rub_minor, self.price_xtr, self.price_usdt_minor],
        )
        .map(|minor| Money::new(minor, currency))
    }
}

/// Which of a tariff's price columns — `[price_rub_minor, price_xtr, price_usdt_minor]`, read
/// by a query of its own — holds the price in `currency`.
pub fn price_minor(currency: Currency, [rub, xtr, usdt]: [Option<i64>; 3]) -> Option<i64> {
    match currency {
        Currency::Rub => rub,
        Currency::Xtr => xtr,
        Currency::Usdt => usdt,
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::payments::Entity")]
    Payments,
}

impl Related<super::payments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Payments.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
