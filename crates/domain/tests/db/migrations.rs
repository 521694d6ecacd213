use domain::migration::Migrator;
use sea_orm::DatabaseConnection;
use sea_orm_migration::{MigratorTrait, SchemaManager};

use crate::on_both_backends;

const TABLES: &[&str] = &[
    "users",
    "tariffs",
    "payments",
    "provider_notifications",
    "refunds",
    "crypto_invoices",
    "subscriptions",
    "subscription_grants",
    "system_logs",
    "outbox",
    "processed_messages",
];

async fn assert_tables(conn: &DatabaseConnection, present: bool) {
    let manager = SchemaManager::new(conn);
    for table in TABLES {
        assert_eq!(
            manager.has_table(*table).await.unwrap(),
            present,
            "table {table}"
        );
    }
}

async fn every_migration_is_applied(conn: &DatabaseConnection) {
    assert_tables(conn, true).await;
    assert!(
        Migrator::get_pending_migrations(conn)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        Migrator::get_applied_migrations(conn).await.unwrap().len(),
        Migrator::migrations().len()
    );
    // Applying again is a no-op.
    Migrator::up(conn, None).await.unwrap();
}

async fn migrations_roll_back_and_reapply(conn: &DatabaseConnection) {
    Migrator::down(conn, None).await.unwrap();
    assert_tables(conn, false).await;
    Migrator::up(conn, None).await.unwrap();
    assert_tables(conn, true).await;
}

on_both_backends!(every_migration_is_applied, migrations_roll_back_and_reapply);
