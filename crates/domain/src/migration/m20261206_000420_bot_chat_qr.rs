//! `bot_chats.qr_link` / `qr_file_id`: the QR code of a user's subscription link, once
//! uploaded, is sent again by Telegram's `file_id` (the link stays the same across renewals),
//! so a renewal's activation message costs no rendering and no upload.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column a statement: SQLite adds one at a time.
        for column in [BotChats::QrLink, BotChats::QrFileId] {
            manager
                .alter_table(
                    Table::alter()
                        .table(BotChats::Table)
                        .add_column(text_null(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [BotChats::QrFileId, BotChats::QrLink] {
            manager
                .alter_table(
                    Table::alter()
                        .table(BotChats::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum BotChats {
    Table,
    QrLink,
    QrFileId,
}
