//! `subscriptions.panel_key`: the panel user's key (its VLESS UUID) when `subscription_url` was
//! stored. Marzban and PasarGuard hand out a new subscription URL on every answer (the token
//! embeds a timestamp) and every one stays valid until the subscription is revoked, which also
//! gives the user new keys; so while the panel user's key is the stored one, the stored link
//! still works and is kept. The customer sees one link across renewals, and the bot sends the
//! QR code of it by Telegram's `file_id` instead of rendering and uploading it each time.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Subscriptions::Table)
                    .add_column(text_null(Subscriptions::PanelKey))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Subscriptions::Table)
                    .drop_column(Subscriptions::PanelKey)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Subscriptions {
    Table,
    PanelKey,
}
