//! `star_subscriptions`: the Telegram Stars subscriptions users started (issue 22), as the bot
//! learns of them from `successful_payment` messages: named by the first payment's invoice
//! payload and charge id (which `editUserStarSubscription` takes), paid until `expires_at`
//! (unix seconds, moved on by every recurring charge), and whether the user canceled it. The
//! money itself is in the inbox and `payments`; this is what "My subscription" shows. Same
//! syntax on PostgreSQL and SQLite.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE star_subscriptions (
                invoice_payload TEXT PRIMARY KEY,
                telegram_payment_charge_id TEXT NOT NULL UNIQUE,
                telegram_id BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                canceled BOOLEAN NOT NULL DEFAULT FALSE
            )",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX idx_star_subscriptions_user ON star_subscriptions (telegram_id)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS star_subscriptions")
            .await?;
        Ok(())
    }
}
