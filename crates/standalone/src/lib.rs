//! All four services in one process on SQLite and the in-process bus (see `main.rs`).

use domain::env::{EnvVar, Vars};
use service_kit::ops;
use service_kit::runtime::Infra;
use service_kit::settings::{Source, load_common_with_defaults};
use service_kit::{CommonSettings, SettingsError, Shutdown};

/// The embedded default database: a file under `data/`.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/acp.db?mode=rwc";
/// Default `OPS_BIND`: health and metrics of all four services, on one address.
pub const DEFAULT_OPS_BIND: &str = "0.0.0.0:9080";

/// The services' own ops addresses (and their older names): the standalone binary serves one
/// `OPS_BIND` instead and ignores these (its settings code still passes over them), and it
/// runs on the in-process bus, so `AMQP_URL` is ignored too.
pub const IGNORED_VARS: &[&str] = &[
    "AMQP_URL",
    "GATEWAY_OPS_BIND",
    "WORKER_OPS_BIND",
    "WORKER_BIND",
    "MARZBAN_SYNC_OPS_BIND",
    "MARZBAN_SYNC_BIND",
    "BOT_OPS_BIND",
    "BOT_BIND",
];

/// Every variable the standalone binary reads: those of the four services (none required:
/// a service without its settings stays off), SQLite by default, one `OPS_BIND`.
pub fn env_vars() -> Vec<EnvVar> {
    domain::env::join(&[
        &api_gateway::settings::env_vars(),
        payment_worker::settings::VARS,
        marzban_sync::settings::VARS,
        bot::settings::VARS,
        &[
            EnvVar::default("DATABASE_URL", DEFAULT_DATABASE_URL),
            EnvVar::default("OPS_BIND", DEFAULT_OPS_BIND),
        ],
    ])
    .into_iter()
    .filter(|var| !IGNORED_VARS.contains(&var.name))
    .collect()
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    /// `OPS_BIND` (default `0.0.0.0:9080`): `/health/*` and `/metrics` of the whole process;
    /// the services' own `*_OPS_BIND` are not read here.
    pub ops_bind: String,
    pub gateway: api_gateway::GatewaySettings,
    pub worker: payment_worker::ServiceSettings,
    pub marzban_sync: marzban_sync::ServiceSettings,
    pub bot: bot::ServiceSettings,
}

impl Settings {
    pub fn load(source: &Source) -> Result<Self, SettingsError> {
        let vars: Vars = source.load()?;
        let mut settings = Self {
            common: load_common_with_defaults(source, &[("DATABASE_URL", DEFAULT_DATABASE_URL)])?,
            ops_bind: vars.get("OPS_BIND").unwrap_or(DEFAULT_OPS_BIND).to_owned(),
            gateway: source.load()?,
            worker: source.load()?,
            marzban_sync: source.load()?,
            bot: source.load()?,
        };
        // One ops server for the process, serving the shared readiness and metrics.
        settings.gateway.ops_bind = None;
        settings.worker.ops_bind = None;
        settings.marzban_sync.ops_bind = None;
        settings.bot.ops_bind = None;
        if settings.ops_bind == settings.gateway.gateway_bind && !settings.ops_bind.ends_with(":0")
        {
            return Err(SettingsError::invalid(
                "OPS_BIND",
                "must differ from GATEWAY_BIND (health and metrics stay off the public port)",
            ));
        }
        Ok(settings)
    }
}

/// Starts the four services on one embedded infrastructure and runs until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    settings.common.outbound().apply();
    let infra = Infra::embedded("standalone", &settings.common).await?;
    let ops = ops::serve_ops(&settings.ops_bind, infra.readiness(), shutdown.clone())?;
    let servers = [
        ops,
        api_gateway::start(&settings.gateway, &infra, shutdown.clone())
            .await?
            .server,
        payment_worker::start(&settings.worker, &infra, shutdown.clone())?,
        marzban_sync::start(&settings.marzban_sync, &infra, shutdown.clone())
            .await?
            .server,
        bot::start(&settings.bot, &infra, shutdown.clone())
            .await?
            .server,
    ];
    tracing::info!(
        database = %service_kit::Redacted(&settings.common.database_url),
        "standalone: gateway, worker, marzban-sync and bot running in one process"
    );
    for server in servers {
        server.task.await??;
    }
    infra.stop().await;
    Ok(())
}
