#![doc = include_str!("../README.md")]

pub mod parked;
pub mod provision;
pub mod show;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sea_orm::DatabaseConnection;
use serde_json::Value;
use service_kit::settings::{Source, load_common};
use service_kit::{CommonSettings, SettingsError, redact_url};

/// How long acpctl waits for the database or the broker to answer before it gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The operator's command for Anomaly Connect Payments. Settings come from the environment
/// and `.env`, the same variables the services read (`DATABASE_URL`, `AMQP_URL`,
/// `AMQP_PREFIX`, `PANEL_*`, `MARZBAN_*`, `YOOKASSA_*`, …). Exit status: 0 success, 1 failure, 2 bad
/// usage or settings.
#[derive(Debug, Parser)]
#[command(name = "acpctl", version)]
pub struct Cli {
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Messages that failed every attempt, in the RabbitMQ parking queues.
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// Payments.
    #[command(subcommand)]
    Payment(PaymentCommand),
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// The ledger against the panel (`PANEL_KIND`: Marzban, PasarGuard or Remnawave).
    #[command(subcommand)]
    Drift(DriftCommand),
    /// The panel itself: its settings, and moving the ledger onto a new one.
    #[command(subcommand)]
    Panel(PanelCommand),
    /// Re-fetch a payment from its provider now and apply the answer.
    Reconcile {
        /// Our payment id (UUID) or the provider's payment id.
        payment: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ParkedCommand {
    /// Counts and the first messages of each parking queue.
    List {
        #[command(flatten)]
        queue: QueueArg,
        /// Messages shown per queue.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One parked message with its error and body.
    Show {
        /// The message id (the event id).
        id: String,
        #[command(flatten)]
        queue: QueueArg,
    },
    /// Move parked messages back to their consumer's queue, with their original message id.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct QueueArg {
    /// Only this consumer's queue: `payment-worker`, `marzban-sync`, `bot` (or its full
    /// queue name, `<prefix>.<consumer>[.parking]`).
    #[arg(long = "queue", value_name = "Q")]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
pub struct ReplayArgs {
    /// The message id to replay.
    pub id: Option<String>,
    /// Replay every parked message (of `--queue`, or of every queue).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub queue: QueueArg,
}

#[derive(Debug, Subcommand)]
pub enum PaymentCommand {
    /// The payment's timeline: log rows, outbox events, provider notices, ledger, panel.
    Show {
        /// Our payment id (UUID) or the provider's payment id.
        payment: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Subscription, ledger and panel state side by side.
    Show {
        /// The user's Telegram id.
        telegram_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// Compare every subscription with the panel and change nothing (exit 1 if they differ).
    Check,
    /// Repair the panel to the ledger (exit 1 if a subscription could not be repaired).
    Repair,
}

#[derive(Debug, Subcommand)]
pub enum PanelCommand {
    /// The panel answers and accepts the settings (credentials, token scope, squads or
    /// groups): the service's readiness check, once (exit 1 with the setting to fix).
    Check,
    /// After switching `PANEL_KIND`/`PANEL_URL` to a new panel: make every subscription with
    /// paid time exist there with the ledger's expiry (adopting a user the panel already has
    /// under its name, creating the others) and record the new subscription links. Safe to
    /// run again; nothing is extended twice.
    Migrate,
}

/// Why a command did not succeed; the message is one line for stderr.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad usage or settings: exit status 2.
    #[error("{0}")]
    Usage(String),
    /// The command failed (unknown id, broker or database down, …): exit status 1.
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => 2,
            Self::Failed(_) => 1,
        }
    }
}

impl From<SettingsError> for CtlError {
    fn from(error: SettingsError) -> Self {
        Self::Usage(error.to_string())
    }
}

/// What a command has to say: the JSON document, the text for people, and whether it found
/// what it was run for (`false` → exit status 1, e.g. drift found).
#[derive(Debug, Clone)]
pub struct Output {
    pub json: Value,
    pub text: String,
    pub ok: bool,
}

impl Output {
    pub fn new(json: Value, text: String) -> Self {
        Self {
            json,
            text,
            ok: true,
        }
    }

    pub fn exit_code(&self) -> i32 {
        if self.ok { 0 } else { 1 }
    }
}

/// Runs one command with settings from `source`.
pub async fn run(cli: &Cli, source: &Source) -> Result<Output, CtlError> {
    match &cli.command {
        Command::Parked(command) => parked::run(command, source).await,
        Command::Payment(PaymentCommand::Show { payment }) => show::payment(source, payment).await,
        Command::User(UserCommand::Show { telegram_id }) => show::user(source, telegram_id).await,
        Command::Drift(command) => provision::drift(source, command).await,
        Command::Panel(command) => provision::panel(source, command).await,
        Command::Reconcile { payment } => provision::reconcile(source, payment).await,
    }
}

/// Connects to `DATABASE_URL` without migrating anything (acpctl never changes the schema).
pub async fn connect_db(source: &Source) -> Result<DatabaseConnection, CtlError> {
    let mut common: CommonSettings = load_common(source)?;
    common.run_migrations = false;
    let url = common.database_url.clone();
    if let Some(path) = sqlite_path(&url)
        && !std::path::Path::new(path).exists()
    {
        return Err(CtlError::Failed(format!(
            "the SQLite database {path} does not exist (check DATABASE_URL)"
        )));
    }
    let unreachable = |error: String| {
        CtlError::Failed(format!(
            "cannot reach the database at {}: {error}",
            redact_url(&url)
        ))
    };
    // A server that refuses connections is said at once, not after the pool's timeout.
    if let Some(address) = server_address(&url) {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address)).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(unreachable(error.to_string())),
            Err(_) => return Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
    }
    let db = tokio::time::timeout(CONNECT_TIMEOUT, service_kit::db::connect(&common))
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|error| unreachable(error.to_string()))?;
    Ok(db)
}

/// `host:port` of a `postgres://` URL (5432 when it names none); `None` for other URLs and
/// for Unix sockets.
fn server_address(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.contains(',') {
        return None;
    }
    if host.ends_with(']') || !host.contains(':') {
        Some(format!("{host}:5432"))
    } else {
        Some(host.to_owned())
    }
}

/// The file of a `sqlite://` URL (none for `:memory:`).
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// A database error while a command runs, as one line.
pub fn db_failed(error: sea_orm::DbErr) -> CtlError {
    CtlError::Failed(format!("database: {error}"))
}

/// RFC 3339 in UTC, seconds precision unless there is more.
pub fn time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from(["acpctl", "parked", "replay", "--all", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Parked(ParkedCommand::Replay(ReplayArgs { all: true, .. }))
        ));
        assert!(Cli::try_parse_from(["acpctl", "parked", "replay"]).is_err());
        assert!(Cli::try_parse_from(["acpctl", "parked", "replay", "x", "--all"]).is_err());
        assert!(Cli::try_parse_from(["acpctl", "drift", "fix"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["acpctl", "panel", "migrate"])
                .unwrap()
                .command,
            Command::Panel(PanelCommand::Migrate)
        ));
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://data/acp.db?mode=rwc"),
            Some("data/acp.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://x/y"), None);
    }

    #[test]
    fn server_addresses() {
        let addr = |url| server_address(url);
        assert_eq!(
            addr("postgres://u:p@db:6432/acp").as_deref(),
            Some("db:6432")
        );
        assert_eq!(addr("postgresql://db/acp").as_deref(), Some("db:5432"));
        assert_eq!(addr("sqlite://x.db"), None);
    }
}
