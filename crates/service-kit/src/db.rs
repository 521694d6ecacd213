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

/// A pooled connection idle for this long is pinged before it is handed out; one in use more
/// recently is handed out as it is. See [`options`].
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(30);

/// The pool's options for `url`. SQLx pings a connection on every acquire by default: a round
/// trip of its own before each transaction or lone statement — about a third of a payment's
/// round trips to PostgreSQL. Only a connection idle for [`PING_IDLE_AFTER`] is pinged now,
/// the one a server, proxy or firewall may have dropped meanwhile. A busy connection the
/// server dropped (a database restart) fails its next statement instead, which every caller
/// already treats as a failure to retry (a consumer redelivers, an API call is answered 500
/// and a provider sends its webhook again), and SQLx discards it when it comes back to the
/// pool (it still pings every connection on release).
pub fn options(url: &str) -> ConnectOptions {
    let mut options = ConnectOptions::new(url);
    options
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire_if_idle_for(PING_IDLE_AFTER)
        .sqlx_logging(false);
    if url.starts_with("sqlite:") {
        // One writer at a time is SQLite's model; a small pool avoids "database is locked" storms.
        options.max_connections(4);
    }
    options
}

/// Connects and, unless `RUN_MIGRATIONS=false`, applies pending migrations.
pub async fn connect(settings: &CommonSettings) -> Result<DatabaseConnection, DbErr> {
    let url = settings.database_url.as_str();
    ensure_sqlite_dir(url);
    let mut conn = Database::connect(options(url)).await?;
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

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};
    use testkit::TestDb;

    use super::*;

    #[test]
    fn only_a_connection_idle_for_a_while_is_pinged_before_use() {
        for url in ["postgres://postgres@127.0.0.1:5432/acp", "sqlite::memory:"] {
            let options = options(url);
            assert!(
                !options.get_test_before_acquire(),
                "{url}: a ping per acquire"
            );
            assert_eq!(
                options.get_test_before_acquire_if_idle_for(),
                Some(PING_IDLE_AFTER),
                "{url}"
            );
        }
    }

    async fn backend_pid(conn: &DatabaseConnection) -> Result<i32, DbErr> {
        let row = conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_backend_pid() AS pid",
            ))
            .await?
            .ok_or_else(|| DbErr::Custom("no row".into()))?;
        row.try_get("", "pid")
    }

    /// Without the ping, a busy connection the server dropped fails one statement; it is not
    /// handed out again, and the next statement gets a new connection.
    #[tokio::test]
    async fn a_connection_the_server_dropped_fails_once_and_is_replaced() {
        let db = TestDb::new().await;
        let mut options = options(&db.url);
        options.max_connections(1).min_connections(0);
        let conn = Database::connect(options).await.unwrap();
        let pid = backend_pid(&conn).await.unwrap();
        db.conn
            .execute_raw(Statement::from_string(
                DbBackend::Postgres,
                // Waits (up to 5 s) until the backend has exited.
                format!("SELECT pg_terminate_backend({pid}, 5000)"),
            ))
            .await
            .unwrap();
        assert!(
            backend_pid(&conn).await.is_err(),
            "the dropped connection was handed out unpinged"
        );
        let again = backend_pid(&conn).await.unwrap();
        assert_ne!(again, pid, "a new connection");
        conn.close().await.unwrap();
    }
}
