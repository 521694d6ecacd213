//! One refund at a time per payment, and refunds made outside the provider.
//!
//! - `uq_refunds_one_pending`: a partial unique index on `refunds (payment_id) WHERE status =
//!   'pending'`. The gateway records a refund as `pending` before it asks the provider, so a
//!   second refund of the same payment cannot start while one is in progress (it gets 409
//!   naming the first); two refunds of one charge can never both be recorded. Same syntax on
//!   PostgreSQL and SQLite.
//! - `refunds.outside_provider`: the refund was made outside the provider's API — fiat
//!   Telegram payments have no Bot API refund, so the admin returns the money in the payment
//!   provider's cabinet; the row records that we revoked the access and did not ask Telegram.
//!
//! Creating the index fails if a payment already has two pending refunds (only the race this
//! closes could have made them): settle them first.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "uq_refunds_one_pending";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Refunds::Table)
                    .add_column(boolean(Refunds::OutsideProvider).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "CREATE UNIQUE INDEX {INDEX} ON refunds (payment_id) WHERE status = 'pending'"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&format!("DROP INDEX IF EXISTS {INDEX}"))
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Refunds::Table)
                    .drop_column(Refunds::OutsideProvider)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Refunds {
    Table,
    OutsideProvider,
}
