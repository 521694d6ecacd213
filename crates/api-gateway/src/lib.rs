#![doc = include_str!("../README.md")]

pub mod auth;
pub mod body;
pub mod broadcasts;
pub mod checkout;
pub mod error;
pub mod grants;
pub mod idempotency;
pub mod limits;
pub mod observability;
pub mod payments;
pub mod promos;
pub mod settings;
pub mod state;
pub mod stats;
pub mod tariffs;
pub mod trials;
pub mod users;
pub mod webhooks;

use std::net::SocketAddr;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, web};
use payment_core::{ClientIpResolver, PaymentService};
use service_kit::ops::{self, RunningServer};
use service_kit::runtime::{self, Infra};
use service_kit::settings::{Source, load_common};
use service_kit::{CommonSettings, SettingsError, Shutdown};

pub use settings::GatewaySettings;

use crate::auth::Tokens;
use crate::state::AppState;

pub const SERVICE: &str = "api-gateway";

/// The OpenAPI 3.1 description of every route, served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub gateway: GatewaySettings,
}

impl Settings {
    pub fn load(source: &Source) -> Result<Self, SettingsError> {
        Ok(Self {
            common: load_common(source)?,
            gateway: source.load()?,
        })
    }
}

/// A started gateway: where it listens and the server task.
pub struct Gateway {
    /// The public address: webhooks and the API.
    pub addr: SocketAddr,
    /// The ops address (`/health/*`, `/metrics`); `None` when the process serves ops
    /// elsewhere (the standalone binary).
    pub ops_addr: Option<SocketAddr>,
    /// Both servers; its task ends when both have stopped.
    pub server: RunningServer,
}

/// Starts the gateway's HTTP server on the given infrastructure: enables the configured
/// providers, upserts the tariffs, then binds.
pub async fn start(
    settings: &GatewaySettings,
    infra: &Infra,
    shutdown: Shutdown,
) -> std::io::Result<Gateway> {
    let payments =
        PaymentService::from_settings(&settings.payments.clone().with_database(&infra.db))
            .map_err(std::io::Error::other)?;
    let tariffs = tariffs::load(settings.tariffs_file.as_deref()).map_err(std::io::Error::other)?;
    tariffs::upsert(&infra.db, &tariffs)
        .await
        .map_err(std::io::Error::other)?;
    let enabled: Vec<&str> = payments
        .descriptors()
        .iter()
        .map(|d| d.id.as_str())
        .collect();
    tracing::info!(
        providers = ?enabled,
        tariffs = tariffs.len(),
        crypto_webhook = settings.crypto_webhook_secret.is_some(),
        webhook_limit = ?settings.webhook_limit.map(|r| r.to_string()),
        api_limit = ?settings.api_limit.map(|r| r.to_string()),
        api_token_limit = ?settings.api_token_limit.map(|r| r.to_string()),
        "api-gateway configured"
    );
    let state = web::Data::new(AppState {
        db: infra.db.clone(),
        payments,
        outbox_nudge: infra.outbox_nudge.clone(),
        inbox: service_kit::inbox::Inbox::start(infra.db.clone(), infra.outbox_nudge.clone()),
        tokens: Tokens {
            service: settings.api_service_token.clone(),
            admin: settings.api_admin_token.clone(),
        },
        resolver: ClientIpResolver::new(settings.trusted_proxies.clone()),
        max_body_bytes: settings.max_body_bytes,
        limits: limits::Limits::new(settings),
        checkout: settings.checkout,
        trial: settings.trial,
    });
    let workers = match settings.gateway_workers {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    };
    // Health and metrics on their own address, never on the public port (issue 18).
    let ops = ops::serve_ops_on(
        settings.ops_bind.as_deref(),
        infra.readiness(),
        shutdown.clone(),
    )?;
    let ops_addr = ops.as_ref().and_then(|ops| ops.addr);
    let webhook_providers: Vec<payment_core::ProviderId> = state
        .payments
        .providers()
        .filter(|p| p.accepts_webhooks())
        .map(|p| p.id())
        .collect();
    let (addr, public) = ops::serve(&settings.gateway_bind, workers, shutdown, move || {
        App::new()
            // Outermost first: observe (ids, logs, metrics) sees every answer, 429s included.
            .wrap(from_fn(limits::limit))
            .wrap(from_fn(observability::observe))
            .app_data(state.clone())
            .configure(|cfg| webhooks::configure(cfg, &webhook_providers))
            .configure(payments::configure)
            .configure(stats::configure)
            .configure(grants::configure)
            .configure(broadcasts::configure)
            .configure(promos::configure)
            .configure(trials::configure)
            .configure(users::configure)
            .route("/api/openapi.json", web::get().to(openapi))
            .default_service(web::to(not_found))
    })?;
    tracing::info!(%addr, ops = ?ops_addr, "api-gateway listening");
    let server = ops::beside_ops(ops, async move {
        public.task.await.map_err(std::io::Error::other)?
    });
    Ok(Gateway {
        addr,
        ops_addr,
        server,
    })
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// A route's resource whose other methods answer 405 with `Allow` (JSON, like every error)
/// instead of falling through to "no such route".
pub(crate) fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        HttpResponse::MethodNotAllowed()
            .insert_header((actix_web::http::header::ALLOW, allow))
            .json(serde_json::json!({
                "error": "method_not_allowed",
                "message": format!("this route only takes {allow}"),
            }))
    }))
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "error": "not_found",
        "message": "no such route",
    }))
}

/// Runs the gateway as its own process: connects to PostgreSQL and RabbitMQ, serves until
/// `shutdown`, then drains.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    runtime::run_service(
        SERVICE,
        &settings.common,
        shutdown,
        async |infra, shutdown| Ok(start(&settings.gateway, infra, shutdown).await?.server),
    )
    .await
}
