//! `processed_messages`: one row per (consumer, message) handled, written in the consumer's
//! transaction so a redelivered message is recognised and skipped.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "processed_messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub consumer: String,
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub message_id: String,
    pub processed_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
