//! Expiry reminders (issue 22): one row per subscription period and offset.
//!
//! `reminders`: `(subscription_id, period_end, offset_secs)` is UNIQUE — `period_end` is the
//! expiry the reminder is about, so a renewal (a new expiry) gets its own rows and a period
//! is reminded of at most once per offset, however often it is scheduled, by however many
//! bot processes. `status`: `scheduled` → `queued` (a `send_queue` row was written in the
//! same transaction) or `skipped` (renewed, turned off, too late). `reminder_cursors`: how
//! far the scheduler has read `subscriptions` (keyset on `(updated_at, id)`), so a restart
//! resumes where it stopped.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Reminders::Table)
                    .col(big_pk_auto(Reminders::Id))
                    .col(big_integer(Reminders::SubscriptionId))
                    .col(timestamp_with_time_zone(Reminders::PeriodEnd))
                    .col(big_integer(Reminders::OffsetSecs))
                    .col(timestamp_with_time_zone(Reminders::DueAt))
                    .col(text(Reminders::Status))
                    .col(text_null(Reminders::Reason))
                    .col(timestamp_with_time_zone(Reminders::CreatedAt))
                    .col(timestamp_with_time_zone_null(Reminders::DoneAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_reminders_period_offset")
                    .table(Reminders::Table)
                    .col(Reminders::SubscriptionId)
                    .col(Reminders::PeriodEnd)
                    .col(Reminders::OffsetSecs)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_reminders_due")
                    .table(Reminders::Table)
                    .col(Reminders::Status)
                    .col(Reminders::DueAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_subscriptions_updated_at_id")
                    .table(Subscriptions::Table)
                    .col(Subscriptions::UpdatedAt)
                    .col(Subscriptions::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ReminderCursors::Table)
                    .col(text(ReminderCursors::Name).primary_key())
                    .col(timestamp_with_time_zone(ReminderCursors::UpdatedAt))
                    .col(big_integer(ReminderCursors::LastId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ReminderCursors::Table).to_owned())
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_subscriptions_updated_at_id")
                    .table(Subscriptions::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Reminders::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Reminders {
    Table,
    Id,
    SubscriptionId,
    PeriodEnd,
    OffsetSecs,
    DueAt,
    Status,
    Reason,
    CreatedAt,
    DoneAt,
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    Id,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ReminderCursors {
    Table,
    Name,
    UpdatedAt,
    LastId,
}
