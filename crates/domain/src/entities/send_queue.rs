//! `send_queue`: messages the bot sends on its own initiative, drained at Telegram's pace
//! (see the migration `m20261206_000400_send_queue`).

use sea_orm::entity::prelude::*;

/// Waiting to be sent (`not_before` says when; a claimed row's lease is its `not_before`).
pub const PENDING: &str = "pending";
/// Telegram accepted it.
pub const SENT: &str = "sent";
/// Not sent on purpose: the chat blocked the bot, or what it announced no longer holds
/// (a reminder for a period that was renewed meanwhile).
pub const SKIPPED: &str = "skipped";
/// Telegram refused it for good (400), or it failed too often.
pub const FAILED: &str = "failed";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "send_queue")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub chat_id: i64,
    /// `notification`, `reminder`, `broadcast`.
    #[sea_orm(column_type = "Text")]
    pub kind: String,
    /// Lower goes first: notifications 0, reminders 1, broadcasts 2.
    pub priority: i32,
    /// One row per event or reminder: `event:<event id>`, `reminder:<reminder id>`, ….
    #[sea_orm(unique, column_type = "Text")]
    pub dedupe_key: String,
    /// What to send, as JSON (the bot's `sender::Outgoing`).
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    pub attempts: i32,
    pub not_before: DateTimeUtc,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
    pub sent_at: Option<DateTimeUtc>,
    /// The broadcast this row is a copy of (`broadcasts.id`).
    pub broadcast_id: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
