//! `manual_grants`: days given without a payment (issue 23) — an admin's `/grant` (kind
//! `admin`), later a free trial (kind `trial`).
//!
//! `idempotency_key` is UNIQUE: a repeated command or API call finds its row and grants
//! nothing more. The row is written with its `system_logs` row and its `grant.created` outbox
//! event in one transaction; marzban-sync turns it into one ledger entry
//! (`subscription_grants.kind` = the row's kind, keyed in `processed_messages`) and provisions
//! the panel the way it does for a paid grant.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ManualGrants::Table)
                    .col(big_pk_auto(ManualGrants::Id))
                    .col(text(ManualGrants::IdempotencyKey).unique_key())
                    .col(big_integer(ManualGrants::UserId))
                    .col(text(ManualGrants::Kind))
                    .col(integer(ManualGrants::Days))
                    .col(big_integer_null(ManualGrants::DataLimitBytes))
                    .col(text(ManualGrants::Reason))
                    .col(big_integer_null(ManualGrants::GrantedBy))
                    .col(timestamp_with_time_zone(ManualGrants::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ManualGrants::Table, ManualGrants::UserId)
                            .to(Users::Table, Users::Id),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ManualGrants::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ManualGrants {
    Table,
    Id,
    IdempotencyKey,
    UserId,
    Kind,
    Days,
    DataLimitBytes,
    Reason,
    GrantedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}
