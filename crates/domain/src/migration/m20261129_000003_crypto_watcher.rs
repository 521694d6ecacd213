//! The crypto chain watcher's own tables.
//!
//! `crypto_transfers`: every incoming transfer of the configured token that the watcher has
//! looked at, matched or not. `(network, tx_id, event_index)` is UNIQUE, so a transfer is
//! applied at most once however often it is fetched, and the unmatched ones stay visible to
//! an admin. `crypto_watch_cursors`: where the next poll starts, plus a lease so that only
//! one of several workers polls a wallet at a time.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(CryptoTransfers::Table)
                    .col(big_pk_auto(CryptoTransfers::Id))
                    .col(text(CryptoTransfers::Network))
                    .col(text(CryptoTransfers::TxId))
                    .col(integer(CryptoTransfers::EventIndex))
                    .col(text(CryptoTransfers::TokenContract))
                    .col(text(CryptoTransfers::FromAddress))
                    .col(text(CryptoTransfers::ToAddress))
                    .col(text(CryptoTransfers::Value))
                    .col(big_integer_null(CryptoTransfers::AmountMinor))
                    .col(timestamp_with_time_zone(CryptoTransfers::BlockTimestamp))
                    .col(big_integer_null(CryptoTransfers::InvoiceId))
                    .col(uuid_null(CryptoTransfers::PaymentId))
                    .col(text(CryptoTransfers::Outcome))
                    .col(timestamp_with_time_zone(CryptoTransfers::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_crypto_transfers_invoice")
                            .from(CryptoTransfers::Table, CryptoTransfers::InvoiceId)
                            .to(CryptoInvoices::Table, CryptoInvoices::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_crypto_transfers_event")
                    .table(CryptoTransfers::Table)
                    .col(CryptoTransfers::Network)
                    .col(CryptoTransfers::TxId)
                    .col(CryptoTransfers::EventIndex)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_crypto_transfers_outcome_created_at")
                    .table(CryptoTransfers::Table)
                    .col(CryptoTransfers::Outcome)
                    .col(CryptoTransfers::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CryptoWatchCursors::Table)
                    .col(text(CryptoWatchCursors::Key).primary_key())
                    .col(big_integer(CryptoWatchCursors::CursorMs))
                    .col(uuid_null(CryptoWatchCursors::LeaseOwner))
                    .col(timestamp_with_time_zone_null(
                        CryptoWatchCursors::LeaseUntil,
                    ))
                    .col(timestamp_with_time_zone(CryptoWatchCursors::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(CryptoWatchCursors::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(CryptoTransfers::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum CryptoInvoices {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum CryptoTransfers {
    Table,
    Id,
    Network,
    TxId,
    EventIndex,
    TokenContract,
    FromAddress,
    ToAddress,
    Value,
    AmountMinor,
    BlockTimestamp,
    InvoiceId,
    PaymentId,
    Outcome,
    CreatedAt,
}

#[derive(DeriveIden)]
enum CryptoWatchCursors {
    Table,
    Key,
    CursorMs,
    LeaseOwner,
    LeaseUntil,
    UpdatedAt,
}
