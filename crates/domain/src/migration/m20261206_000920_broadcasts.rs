//! Broadcasts (issue 23): `broadcasts` holds an admin's message to a segment of customers
//! from draft to final report; `send_queue.broadcast_id` ties each queued copy to it (the
//! progress and the report count the copies by status); `bot_chats.broadcasts_off` is a
//! customer's "no news" choice, honoured when the copies are queued and again when sent.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Broadcasts::Table)
                    .col(big_pk_auto(Broadcasts::Id))
                    .col(text(Broadcasts::IdempotencyKey).unique_key())
                    .col(text(Broadcasts::Segment))
                    .col(text(Broadcasts::Text))
                    .col(text(Broadcasts::Status))
                    .col(big_integer_null(Broadcasts::CreatedBy))
                    .col(text_null(Broadcasts::Lang))
                    .col(integer_null(Broadcasts::Recipients))
                    .col(integer_null(Broadcasts::OptedOut))
                    .col(integer_null(Broadcasts::Sent))
                    .col(integer_null(Broadcasts::Blocked))
                    .col(integer_null(Broadcasts::Failed))
                    .col(timestamp_with_time_zone(Broadcasts::CreatedAt))
                    .col(timestamp_with_time_zone_null(Broadcasts::ConfirmedAt))
                    .col(timestamp_with_time_zone_null(Broadcasts::FinishedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("broadcasts_status")
                    .table(Broadcasts::Table)
                    .col(Broadcasts::Status)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(SendQueue::Table)
                    .add_column(big_integer_null(SendQueue::BroadcastId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("send_queue_broadcast")
                    .table(SendQueue::Table)
                    .col(SendQueue::BroadcastId)
                    .col(SendQueue::Status)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(BotChats::Table)
                    .add_column(boolean(BotChats::BroadcastsOff).default(false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(BotChats::Table)
                    .drop_column(BotChats::BroadcastsOff)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("send_queue_broadcast")
                    .table(SendQueue::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(SendQueue::Table)
                    .drop_column(SendQueue::BroadcastId)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Broadcasts::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Broadcasts {
    Table,
    Id,
    IdempotencyKey,
    Segment,
    Text,
    Status,
    CreatedBy,
    Lang,
    Recipients,
    OptedOut,
    Sent,
    Blocked,
    Failed,
    CreatedAt,
    ConfirmedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum SendQueue {
    Table,
    BroadcastId,
    Status,
}

#[derive(DeriveIden)]
enum BotChats {
    Table,
    BroadcastsOff,
}
