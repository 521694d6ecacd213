//! An index for the gateway's look-up of a customer's open checkouts (issue 18).
//!
//! Before it stores a new payment, the gateway reads the customer's `pending` payments (to
//! answer a second press with the open checkout, and to count them against
//! `CHECKOUT_MAX_OPEN_PAYMENTS`). `idx_payments_user_id` would walk the customer's whole
//! history, which a script pressing buttons makes long; this partial index holds only the
//! pending rows, so the read stays as short as the cap. Same syntax on PostgreSQL and SQLite.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_payments_user_pending";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "CREATE INDEX {INDEX} ON payments (user_id, created_at) WHERE status = 'pending'"
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
