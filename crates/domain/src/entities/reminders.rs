//! `reminders`: one row per subscription period (`period_end`) and offset before or after it
//! (see the migration `m20261206_000410_reminders`).

use sea_orm::entity::prelude::*;

/// Waiting for `due_at`.
pub const SCHEDULED: &str = "scheduled";
/// Its message is in `send_queue`.
pub const QUEUED: &str = "queued";
/// Not sent: the period was renewed, the user turned reminders off, or it came too late.
pub const SKIPPED: &str = "skipped";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "reminders")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub subscription_id: i64,
    /// The expiry this reminder is about.
    pub period_end: DateTimeUtc,
    /// Seconds from `period_end` (negative: before it).
    pub offset_secs: i64,
    pub due_at: DateTimeUtc,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    /// Why it was skipped.
    #[sea_orm(column_type = "Text", nullable)]
    pub reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub done_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
