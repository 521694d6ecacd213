#![doc = include_str!("../README.md")]

pub mod fixtures;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use domain::migration::{MIGRATION_SOURCES, Migrator};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use sea_orm_migration::MigratorTrait;
use tokio::sync::OnceCell;
use uuid::Uuid;

/// Admin connection used to create databases; `TEST_DATABASE_ADMIN_URL` overrides it.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Broker used by integration tests; `TEST_AMQP_URL` overrides it.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Prefix of every per-test PostgreSQL database (`acp_t_<uuid v7 simple>`).
const TEST_DB_PREFIX: &str = "acp_t_";
/// Prefix of the migrated template databases (`acp_tpl_<hash>`).
const TEMPLATE_PREFIX: &str = "acp_tpl_";
/// Session advisory lock key that serialises template creation across processes.
const TEMPLATE_LOCK_KEY: i64 = 0x0ac9_7e57_0000_0001;
/// Test databases and SQLite files older than this are left over from earlier runs and are
/// dropped; no single test runs this long.
const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// The template is checked (and built if missing) once per test process.
static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// A fresh, fully migrated database for one test.
#[derive(Debug)]
pub struct TestDb {
    /// Connection pool to the test database.
    pub conn: DatabaseConnection,
    /// URL of the test database, for code under test that opens its own connections.
    pub url: String,
}

impl TestDb {
    /// A new PostgreSQL database cloned from the migrated template.
    ///
    /// Panics when PostgreSQL is unreachable: a test cannot run without it.
    pub async fn new() -> TestDb {
        match Self::try_new().await {
            Ok(db) => db,
            Err(err) => panic!("testkit: cannot create a PostgreSQL test database: {err}"),
        }
    }

    /// Like [`TestDb::new`], returning the error instead of panicking.
    pub async fn try_new() -> Result<TestDb, DbErr> {
        let admin_url = admin_url();
        let template = TEMPLATE
            .get_or_try_init(|| prepare_template(&admin_url))
            .await?
            .clone();

        let name = format!("{TEST_DB_PREFIX}{}", Uuid::now_v7().simple());
        let admin = connect(&admin_url, 1).await?;
        let created = clone_template(&admin, &template, &name).await;
        admin.close().await?;
        created?;

        let url = database_url(&admin_url, &name);
        let conn = connect(&url, 5).await?;
        Ok(TestDb { conn, url })
    }

    /// A migrated SQLite database in a temporary file (the embedded mode's backend).
    ///
    /// A file rather than `:memory:` so that `url` can be opened again by the code under test.
    pub async fn sqlite() -> TestDb {
        match Self::try_sqlite().await {
            Ok(db) => db,
            Err(err) => panic!("testkit: cannot create a SQLite test database: {err}"),
        }
    }

    /// Like [`TestDb::sqlite`], returning the error instead of panicking.
    pub async fn try_sqlite() -> Result<TestDb, DbErr> {
        let dir = std::env::temp_dir().join("acp-testkit");
        std::fs::create_dir_all(&dir)
            .map_err(|e| DbErr::Custom(format!("create {}: {e}", dir.display())))?;
        remove_stale_sqlite_files(&dir);

        let path: PathBuf = dir.join(format!("{TEST_DB_PREFIX}{}.db", Uuid::now_v7().simple()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let conn = connect(&url, 1).await?;
        Migrator::up(&conn, None).await?;
        Ok(TestDb { conn, url })
    }
}

/// Sessions on this PostgreSQL test database (other than the caller's) that have sat in an
/// open transaction for `longer_than` or more, as `"<pid> <state>: <last query>"`: how a test
/// shows that nothing holds a transaction across an outside call. A short `longer_than`
/// (a few hundred milliseconds) leaves out the brief transactions of background loops.
pub async fn open_transactions(db: &DatabaseConnection, longer_than: Duration) -> Vec<String> {
    let sql = format!(
        "SELECT pid::text || ' ' || state || ': ' || query AS session FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND state LIKE 'idle in transaction%' \
         AND state_change < now() - interval '{} milliseconds'",
        longer_than.as_millis()
    );
    db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|row| row.try_get::<String>("", "session").expect("session"))
        .collect()
}

/// `TEST_AMQP_URL`, or the local broker.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

/// A unique name prefix (`t.<tag>.<8 hex>`) so RabbitMQ exchanges and queues of concurrent
/// tests never collide.
pub fn unique_prefix(tag: &str) -> String {
    let id = Uuid::new_v4().simple().to_string();
    format!("t.{tag}.{}", &id[..8])
}

/// Name of the template database for the current set of migrations.
///
/// Hashes the migration names and their source text, so adding or editing a migration
/// yields a new template instead of silently reusing a stale one.
pub fn template_name() -> String {
    let mut hasher = Fnv1a::new();
    for migration in Migrator::migrations() {
        hasher.write(migration.name().as_bytes());
        hasher.write(b"\n");
    }
    for source in MIGRATION_SOURCES {
        hasher.write(source.as_bytes());
        hasher.write(b"\0");
    }
    format!("{TEMPLATE_PREFIX}{:016x}", hasher.finish())
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// Replaces the database name in a `postgres://…/<db>[?query]` URL.
fn database_url(admin_url: &str, database: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    Database::connect(options).await
}

/// Builds the template if it does not exist yet, under a session advisory lock so parallel
/// test binaries and threads never race; also drops databases left over by earlier runs.
async fn prepare_template(admin_url: &str) -> Result<String, DbErr> {
    let name = template_name();
    // One connection: a session-level advisory lock belongs to the connection that took it.
    let admin = connect(admin_url, 1).await?;
    admin
        .execute_unprepared(&format!("SELECT pg_advisory_lock({TEMPLATE_LOCK_KEY})"))
        .await?;
    let result = build_template_locked(&admin, admin_url, &name).await;
    let swept = drop_stale_test_databases(&admin).await;
    let unlocked = admin
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK_KEY})"))
        .await;
    admin.close().await?;
    result?;
    swept?;
    unlocked?;
    Ok(name)
}

async fn build_template_locked(
    admin: &DatabaseConnection,
    admin_url: &str,
    name: &str,
) -> Result<(), DbErr> {
    if database_exists(admin, name).await? {
        return Ok(());
    }
    // Migrate under a temporary name and rename at the end, so a crash mid-migration never
    // leaves a half-built template behind under the real name.
    let building = format!("{name}_build");
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
        .await?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE {building}"))
        .await?;
    let conn = connect(&database_url(admin_url, &building), 1).await?;
    let migrated = Migrator::up(&conn, None).await;
    conn.close().await?;
    migrated?;
    admin
        .execute_unprepared(&format!("ALTER DATABASE {building} RENAME TO {name}"))
        .await?;
    Ok(())
}

async fn database_exists(admin: &DatabaseConnection, name: &str) -> Result<bool, DbErr> {
    let row = admin
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 AS one FROM pg_database WHERE datname = $1",
            [name.into()],
        ))
        .await?;
    Ok(row.is_some())
}

async fn clone_template(
    admin: &DatabaseConnection,
    template: &str,
    name: &str,
) -> Result<(), DbErr> {
    let sql = format!("CREATE DATABASE {name} TEMPLATE {template}");
    // PostgreSQL refuses to copy a template while another session is connected to it; that
    // window is short (a concurrent clone's bookkeeping), so retry briefly.
    let mut attempt = 0;
    loop {
        match admin.execute_unprepared(&sql).await {
            Ok(_) => return Ok(()),
            Err(err) if attempt < 50 && err.to_string().contains("being accessed by other") => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Drops `acp_t_*` databases whose UUIDv7 timestamp is older than [`STALE_AFTER`].
async fn drop_stale_test_databases(admin: &DatabaseConnection) -> Result<(), DbErr> {
    let rows = admin
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT datname FROM pg_database WHERE datname LIKE '{TEST_DB_PREFIX}%'"),
        ))
        .await?;
    let now_ms = unix_millis(SystemTime::now());
    for row in rows {
        let name: String = row.try_get_by_index(0)?;
        let Some(created_ms) = name
            .strip_prefix(TEST_DB_PREFIX)
            .and_then(|id| Uuid::parse_str(id).ok())
            .and_then(|id| id.get_timestamp())
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                secs.saturating_mul(1000) + u64::from(nanos / 1_000_000)
            })
        else {
            continue;
        };
        if now_ms.saturating_sub(created_ms) > STALE_AFTER.as_millis() as u64 {
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await?;
        }
    }
    Ok(())
}

fn remove_stale_sqlite_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if stale
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with(TEST_DB_PREFIX)
        {
            // Best effort: another process may have removed it already.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 64-bit FNV-1a: tiny, and stable across Rust versions (unlike `DefaultHasher`).
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_the_database_name() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }

    #[test]
    fn template_name_is_stable_and_short() {
        let name = template_name();
        assert_eq!(name, template_name());
        assert!(name.starts_with(TEMPLATE_PREFIX));
        // Leaves room for the `_build` suffix within PostgreSQL's 63-byte identifiers.
        assert!(name.len() + "_build".len() <= 63);
    }

    #[test]
    fn unique_prefix_has_the_expected_shape() {
        let a = unique_prefix("relay");
        let b = unique_prefix("relay");
        assert_ne!(a, b);
        assert!(a.starts_with("t.relay."));
        assert_eq!(a.len(), "t.relay.".len() + 8);
    }

    #[tokio::test]
    async fn postgres_databases_are_fresh_and_migrated() {
        let a = TestDb::new().await;
        let b = TestDb::new().await;
        assert_ne!(a.url, b.url);
        for db in [&a, &b] {
            let row = db
                .conn
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT count(*) AS n FROM outbox",
                ))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.try_get_by_index::<i64>(0).unwrap(), 0);
        }
    }

    #[tokio::test]
    async fn sqlite_database_is_migrated() {
        let db = TestDb::sqlite().await;
        assert!(db.url.starts_with("sqlite://"));
        let row = db
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT count(*) AS n FROM outbox",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get_by_index::<i64>(0).unwrap(), 0);
    }
}
