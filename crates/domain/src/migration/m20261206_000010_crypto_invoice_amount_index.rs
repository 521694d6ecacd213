//! An index for the chain watcher's check of competing invoices.
//!
//! A transfer a tag below one open invoice's amount is credited to it only when no other
//! invoice of the wallet, in any status, that its payer may still have meant (expiring at most
//! a day before the transfer) asks within a tag of the same amount. That read filters on
//! `network, address`, a range of `expires_at` and a range of `expected_minor`; the existing
//! indexes cover open invoices only (`uq_crypto_invoices_open_amount`) or lead with the status.
//! Leading with `expires_at` bounds the scan by the recent invoices, however long the history
//! of one price grows; the amount is checked inside the index.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_crypto_invoices_wallet_expires_amount \
                 ON crypto_invoices (network, address, expires_at, expected_minor)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS idx_crypto_invoices_wallet_expires_amount")
            .await?;
        Ok(())
    }
}
