//! `broadcasts`: an admin's message to a segment of customers (issue 23), from draft to the
//! final report. See [`crate::broadcast`] for the life of a row.

use sea_orm::entity::prelude::*;

/// Previewed in the bot, waiting for the admin's "Send".
pub const DRAFT: &str = "draft";
/// Confirmed (in the bot or by the admin API): the bot queues its copies next.
pub const CONFIRMED: &str = "confirmed";
/// The copies are queued and being sent.
pub const SENDING: &str = "sending";
/// Every copy is sent, skipped or failed; the counts are final.
pub const DONE: &str = "done";
/// The admin pressed "Cancel" on the preview.
pub const CANCELED: &str = "canceled";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "broadcasts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// A repeated request (the same bot command, the same API `Idempotency-Key`) finds its row.
    #[sea_orm(unique, column_type = "Text")]
    pub idempotency_key: String,
    #[sea_orm(column_type = "Text")]
    pub segment: String,
    #[sea_orm(column_type = "Text")]
    pub text: String,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    /// The admin's Telegram id: the final report goes there.
    pub created_by: Option<i64>,
    /// The language of the admin's report (`ru`, `en`); Russian when not known.
    #[sea_orm(column_type = "Text", nullable)]
    pub lang: Option<String>,
    /// Copies queued (set when queued).
    pub recipients: Option<i32>,
    /// Customers of the segment left out because they turned news off.
    pub opted_out: Option<i32>,
    /// The final counts (set when done).
    pub sent: Option<i32>,
    pub blocked: Option<i32>,
    pub failed: Option<i32>,
    pub created_at: DateTimeUtc,
    pub confirmed_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
