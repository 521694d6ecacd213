//! Schema migrations (sea-orm-migration), written to run unchanged on PostgreSQL and SQLite.
//!
//! Apply with `Migrator::up(&conn, None)`. Add a migration by creating its file here and
//! naming it in the `migrations!` list below: the list drives both the migrator and
//! [`MIGRATION_SOURCES`], so test tooling notices new *and* edited migrations.

use sea_orm_migration::prelude::*;

/// Declares the migration modules, the migrator's ordered list and their source text.
macro_rules! migrations {
    ($($module:ident),* $(,)?) => {
        $(mod $module;)*

        /// Runs every migration of this crate in order.
        #[derive(Debug, Clone, Copy, Default)]
        pub struct Migrator;

        #[async_trait::async_trait]
        impl MigratorTrait for Migrator {
            fn migrations() -> Vec<Box<dyn MigrationTrait>> {
                vec![$(Box::new($module::Migration)),*]
            }
        }

        /// Source text of every migration, in order. `testkit` hashes it together with the
        /// migration names so a cached template database is rebuilt when a migration changes.
        pub const MIGRATION_SOURCES: &[&str] = &[$(include_str!(concat!(stringify!($module), ".rs"))),*];
    };
}

migrations![
    m20250601_000001_messaging,
    m20250601_000002_payments,
    m20261129_000003_crypto_watcher,
    m20261129_000004_queue_indexes,
    m20261206_000010_crypto_invoice_amount_index,
    m20261206_000020_one_pending_refund,
    m20261206_000120_open_checkouts,
    m20261206_000200_opening_balance_grant,
    m20261206_000300_star_transactions,
    m20261206_000400_send_queue,
    m20261206_000410_reminders,
    m20261206_000420_bot_chat_qr,
    m20261206_000500_tariff_texts,
    m20261206_000510_manual_grants,
    m20261206_000700_star_subscriptions,
    m20261206_000800_saved_methods,
    m20261206_000900_promo_codes,
    m20261206_000910_referrals,
    m20261206_000920_broadcasts,
    m20261207_000100_subscription_panel_key,
];
