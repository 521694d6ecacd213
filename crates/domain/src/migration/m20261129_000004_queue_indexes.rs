//! Partial indexes for the two tables read as queues.
//!
//! The outbox relay asks for `published_at IS NULL ORDER BY attempts, id`, and the chain
//! watcher for a provider's `processed_at IS NULL` notices. The first indexes covered every
//! row, published or not: each published row left a dead `NULL` entry behind until vacuum, and
//! every poll walked through all of them — under steady load the relay's claim cost milliseconds
//! and most of PostgreSQL's CPU. A partial index holds only the open rows, in the order they
//! are taken, so a claim reads the first entries and stops.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `(name, table, columns, predicate)` of each queue index, and the full index it replaces.
const QUEUES: [(&str, &str, &str, &str, &str, &str); 2] = [
    (
        "idx_outbox_unpublished",
        "outbox",
        "attempts, id",
        "published_at IS NULL",
        "idx_outbox_published_at_id",
        "published_at, id",
    ),
    (
        "idx_provider_notifications_open",
        "provider_notifications",
        "provider, id",
        "processed_at IS NULL",
        "idx_provider_notifications_unprocessed",
        "processed_at, id",
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, columns, predicate, replaced, _) in QUEUES {
            let create = format!("CREATE INDEX {name} ON {table} ({columns}) WHERE {predicate}");
            swap(manager, replaced, &create).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, _, _, replaced, replaced_columns) in QUEUES {
            let create = format!("CREATE INDEX {replaced} ON {table} ({replaced_columns})");
            swap(manager, name, &create).await?;
        }
        Ok(())
    }
}

/// Drops index `old` (if there) and runs `create`.
async fn swap(manager: &SchemaManager<'_>, old: &str, create: &str) -> Result<(), DbErr> {
    let db = manager.get_connection();
    db.execute_unprepared(&format!("DROP INDEX IF EXISTS {old}"))
        .await?;
    db.execute_unprepared(create).await?;
    Ok(())
}
