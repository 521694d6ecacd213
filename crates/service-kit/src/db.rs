//! Database connection for every service: PostgreSQL in production, SQLite for the embedded mode.

use std::time::Duration;

use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait, TryInsertResult,
};
use sea_orm_migration::MigratorTrait;

use crate::settings::CommonSettings;

/// Counter `{kind}`: SQL statements this process sent (`kind`: select, insert, update,
/// delete, other; `BEGIN`/`COMMIT` are not counted — PostgreSQL counts commits). The load
/// generator reads it to report statements per payment.
pub const METRIC_STATEMENTS: &str = "db_statements_total";

/// Connects and, unless `RUN_MIGRATIONS=false`, applies pending migrations.
pub async fn connect(settings: &CommonSettings) -> Result<DatabaseConnection, DbErr> {
    let url = settings.database_url.as_str();
    ensure_sqlite_dir(url);
    let mut options = ConnectOptions::new(url);
    options
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if url.starts_with("sqlite:") {
        // One writer at a time is SQLite's model; a small pool avoids "database is locked" storms.
        options.max_connections(4);
    }
    let mut conn = Database::connect(options).await?;
    conn.set_metric_callback(|info| {
        metrics::counter!(METRIC_STATEMENTS, "kind" => statement_kind(&info.statement.sql))
            .increment(1);
    });
    if settings.run_migrations {
        domain::migration::Migrator::up(&conn, None).await?;
    }
    Ok(conn)
}

/// Applies pending migrations whatever `RUN_MIGRATIONS` says, then closes the connection: the
/// one-shot step (`api-gateway --migrate-only`) the services wait for in docker-compose.yml.
pub async fn migrate_only(settings: &CommonSettings) -> Result<(), DbErr> {
    let mut settings = settings.clone();
    settings.run_migrations = true;
    let conn = connect(&settings).await?;
    tracing::info!("migrations applied");
    conn.close().await
}

/// The first keyword of `sql`, for [`METRIC_STATEMENTS`] (`WITH …` counts as `other`).
fn statement_kind(sql: &str) -> &'static str {
    let verb = sql
        .trim_start()
        .split_ascii_whitespace()
        .next()
        .unwrap_or("");
    ["select", "insert", "update", "delete"]
        .into_iter()
        .find(|kind| verb.eq_ignore_ascii_case(kind))
        .unwrap_or("other")
}

/// `sqlite://data/acp.db?mode=rwc` needs `data/` to exist.
fn ensure_sqlite_dir(url: &str) {
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return;
    };
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return;
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        let _ = std::fs::create_dir_all(parent);
    }
}

/// The row an `INSERT … ON CONFLICT DO NOTHING` with `exec_with_returning` inserted, or `None`
/// when it met the conflict. sea-orm 2.0 reports that conflict as
/// `RecordNotFound("Failed to find inserted item")` (the `RETURNING` row is missing) rather
/// than `TryInsertResult::Conflicted`; both mean "not inserted".
pub fn inserted<M>(result: Result<TryInsertResult<M>, DbErr>) -> Result<Option<M>, DbErr> {
    match result {
        Ok(TryInsertResult::Inserted(row)) => Ok(Some(row)),
        Ok(TryInsertResult::Conflicted | TryInsertResult::Empty) => Ok(None),
        Err(DbErr::RecordNotFound(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Begins a transaction that will write. On SQLite it takes the write lock at `BEGIN`
/// (`IMMEDIATE`): a deferred transaction that reads first and writes later fails with "database
/// is locked" when another writer committed in between, instead of waiting its turn.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    if db.get_database_backend() == DbBackend::Sqlite {
        db.begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await
    } else {
        db.begin().await
    }
}
