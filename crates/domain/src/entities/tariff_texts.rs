//! `tariff_texts`: a tariff's title and description in one language (`ru`, `en`), from the
//! tariffs file. A language without a row falls back to `tariffs.title`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tariff_texts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tariff_id: i64,
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub lang: String,
    #[sea_orm(column_type = "Text")]
    pub title: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub description: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::tariffs::Entity",
        from = "Column::TariffId",
        to = "super::tariffs::Column::Id"
    )]
    Tariff,
}

impl Related<super::tariffs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Tariff.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
