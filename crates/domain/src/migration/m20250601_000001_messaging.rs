//! `outbox` (events written in the same transaction as the change they announce) and
//! `processed_messages` (consumer idempotency).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .col(big_pk_auto(Outbox::Id))
                    .col(uuid_uniq(Outbox::EventId))
                    .col(text(Outbox::RoutingKey))
                    .col(text(Outbox::Envelope))
                    .col(timestamp_with_time_zone(Outbox::CreatedAt))
                    .col(timestamp_with_time_zone_null(Outbox::PublishedAt))
                    .col(integer(Outbox::Attempts).default(0))
                    .col(text_null(Outbox::LastError))
                    .to_owned(),
            )
            .await?;
        // The relay scans unpublished rows in id order.
        manager
            .create_index(
                Index::create()
                    .name("idx_outbox_published_at_id")
                    .table(Outbox::Table)
                    .col(Outbox::PublishedAt)
                    .col(Outbox::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ProcessedMessages::Table)
                    .col(text(ProcessedMessages::Consumer))
                    .col(text(ProcessedMessages::MessageId))
                    .col(timestamp_with_time_zone(ProcessedMessages::ProcessedAt))
                    .primary_key(
                        Index::create()
                            .col(ProcessedMessages::Consumer)
                            .col(ProcessedMessages::MessageId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ProcessedMessages::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Outbox::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    EventId,
    RoutingKey,
    Envelope,
    CreatedAt,
    PublishedAt,
    Attempts,
    LastError,
}

#[derive(DeriveIden)]
enum ProcessedMessages {
    Table,
    Consumer,
    MessageId,
    ProcessedAt,
}
