//! At most one opening balance per subscription.
//!
//! `uq_subscription_grants_opening_balance`: a partial unique index on
//! `subscription_grants (subscription_id) WHERE kind = 'opening_balance'`. When marzban-sync
//! adopts a panel user that already had time left, it writes that time into the ledger as an
//! `opening_balance` grant (no payment) — once per subscription, whatever retries and
//! concurrent copies of the message do. Same syntax on PostgreSQL and SQLite.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "uq_subscription_grants_opening_balance";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "CREATE UNIQUE INDEX {INDEX} ON subscription_grants (subscription_id) \
                 WHERE kind = 'opening_balance'"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&format!("DROP INDEX IF EXISTS {INDEX}"))
            .await?;
        Ok(())
    }
}
