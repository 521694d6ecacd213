//! The bot's sending queue (issue 22) and what the bot knows about each chat.
//!
//! `send_queue`: every message the bot sends on its own initiative (notifications, expiry
//! reminders, broadcasts) is a row first, written in the same transaction as the change it
//! announces; `dedupe_key` is UNIQUE, so one event or one reminder is queued at most once. A
//! sender drains the due rows (`status = 'pending' AND not_before <= now`, index below) at
//! Telegram's pace, notifications first (`priority`); `not_before` doubles as the claim's lease, so a row taken by a sender
//! that died is due again after the lease. `bot_chats`: a chat that blocked the bot (403) is
//! marked and skipped until its user writes again; a user can turn reminders off.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SendQueue::Table)
                    .col(big_pk_auto(SendQueue::Id))
                    .col(big_integer(SendQueue::ChatId))
                    .col(text(SendQueue::Kind))
                    .col(integer(SendQueue::Priority))
                    .col(text_uniq(SendQueue::DedupeKey))
                    .col(text(SendQueue::Payload))
                    .col(text(SendQueue::Status))
                    .col(integer(SendQueue::Attempts).default(0))
                    .col(timestamp_with_time_zone(SendQueue::NotBefore))
                    .col(text_null(SendQueue::LastError))
                    .col(timestamp_with_time_zone(SendQueue::CreatedAt))
                    .col(timestamp_with_time_zone_null(SendQueue::SentAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_send_queue_due")
                    .table(SendQueue::Table)
                    .col(SendQueue::Status)
                    .col(SendQueue::Priority)
                    .col(SendQueue::NotBefore)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(BotChats::Table)
                    .col(big_integer(BotChats::ChatId).primary_key())
                    .col(timestamp_with_time_zone_null(BotChats::BlockedAt))
                    .col(boolean(BotChats::RemindersOff).default(false))
                    .col(timestamp_with_time_zone(BotChats::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(BotChats::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(SendQueue::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum SendQueue {
    Table,
    Id,
    ChatId,
    Kind,
    Priority,
    DedupeKey,
    Payload,
    Status,
    Attempts,
    NotBefore,
    LastError,
    CreatedAt,
    SentAt,
}

#[derive(DeriveIden)]
enum BotChats {
    Table,
    ChatId,
    BlockedAt,
    RemindersOff,
    UpdatedAt,
}
