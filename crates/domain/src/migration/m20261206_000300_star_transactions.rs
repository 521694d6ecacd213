//! What the Telegram provider has read of the bot's Star transactions (issue 18).
//!
//! `getStarTransactions` lists a bot's transactions oldest first and has no search, so a
//! status check used to page through up to 50 pages from the newest end, every time.
//! `star_transactions` records each transaction once (payments by their invoice payload,
//! refunds as a flag on the payment they return) and `star_scan_cursors` how far the list has
//! been read, so a check reads only the transactions added since the last one. Same syntax on
//! PostgreSQL and SQLite.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE star_transactions (
                id TEXT PRIMARY KEY,
                invoice_payload TEXT,
                user_id BIGINT,
                amount BIGINT NOT NULL,
                paid_at BIGINT,
                refunded BOOLEAN NOT NULL DEFAULT FALSE
            )",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX idx_star_transactions_payload ON star_transactions (invoice_payload)",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TABLE star_scan_cursors (bot TEXT PRIMARY KEY, scanned BIGINT NOT NULL)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE IF EXISTS star_scan_cursors")
            .await?;
        db.execute_unprepared("DROP TABLE IF EXISTS star_transactions")
            .await?;
        Ok(())
    }
}
