//! `bot_chats`: what the bot knows about a private chat (= its user's Telegram id) beyond
//! `users`: whether the user blocked the bot, whether they want expiry reminders, and the
//! `file_id` of their subscription link's QR code.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "bot_chats")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub chat_id: i64,
    /// When Telegram answered 403 (blocked by the user); cleared when the user writes again.
    pub blocked_at: Option<DateTimeUtc>,
    /// The user turned expiry reminders off ("My subscription").
    pub reminders_off: bool,
    pub updated_at: DateTimeUtc,
    /// The subscription link whose QR code Telegram holds as `qr_file_id`.
    #[sea_orm(column_type = "Text", nullable)]
    pub qr_link: Option<String>,
    /// Telegram's `file_id` of that QR code's photo, sent again instead of a new upload.
    #[sea_orm(column_type = "Text", nullable)]
    pub qr_file_id: Option<String>,
    /// The customer turned news (broadcasts) off.
    pub broadcasts_off: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
