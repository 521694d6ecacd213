//! `users`: Telegram users known to the bot.

use sea_orm::entity::prelude::*;

use crate::ids::{IdError, TelegramUserId};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub telegram_id: i64,
    #[sea_orm(column_type = "Text", nullable)]
    pub username: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub first_name: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub language_code: Option<String>,
    pub created_at: DateTimeUtc,
}

impl Model {
    pub fn telegram_user_id(&self) -> Result<TelegramUserId, IdError> {
        TelegramUserId::parse(self.telegram_id)
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::payments::Entity")]
    Payments,
    #[sea_orm(has_one = "super::subscriptions::Entity")]
    Subscription,
}

impl Related<super::payments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Payments.def()
    }
}

impl Related<super::subscriptions::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Subscription.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
