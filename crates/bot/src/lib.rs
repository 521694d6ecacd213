#![doc = include_str!("../README.md")]

pub mod admin;
pub mod app;
pub mod broadcasts;
pub mod chart;
pub mod gateway;
pub mod limits;
pub mod notify;
pub mod png;
pub mod poller;
pub mod qr;
pub mod reminders;
pub mod sender;
pub mod settings;
pub mod stars;
pub mod store;
pub mod texts;
pub mod webhook;

use std::sync::Arc;

use frankenstein::client_reqwest::Bot as Api;
use messaging::{ConsumerRunner, ConsumerStats, RunnerConfig};
use secrecy::ExposeSecret;
use service_kit::ops::{self, RunningServer};
use service_kit::runtime::{self, Infra};
use service_kit::settings::{Source, load_common};
use service_kit::{CommonSettings, SettingsError, Shutdown};
use tokio::task::AbortHandle;

pub use app::App;
pub use notify::{CONSUMER, Notifier};
pub use settings::{BotSettings, ServiceSettings};

pub const SERVICE: &str = "bot";

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub service: ServiceSettings,
}

impl Settings {
    /// Loads and validates everything; the separate binary exists to run the bot, so
    /// `TELEGRAM_BOT_TOKEN` (with `API_SERVICE_TOKEN`) is required here.
    pub fn load(source: &Source) -> Result<Self, SettingsError> {
        let service: ServiceSettings = source.load()?;
        if service.telegram.is_none() {
            return Err(SettingsError::Missing {
                name: "TELEGRAM_BOT_TOKEN".to_owned(),
            });
        }
        Ok(Self {
            common: load_common(source)?,
            service,
        })
    }
}

/// The running service.
pub struct Service {
    /// The ops server's address (none in the standalone binary, which serves ops once) and a
    /// task that ends once the ops server, the poller and the consumer have stopped.
    pub server: RunningServer,
    /// Aborts the poller at once, as a crash would (tests); `None` without a bot token or in
    /// webhook mode.
    pub poller: Option<AbortHandle>,
    /// The webhook endpoint's address in webhook mode.
    pub webhook_addr: Option<std::net::SocketAddr>,
    /// The notifications consumer's counters; `None` without a bot token.
    pub consumer_stats: Option<Arc<ConsumerStats>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("addr", &self.server.addr)
            .finish_non_exhaustive()
    }
}

/// The Bot API client for `settings` (the token is part of its URL).
pub fn telegram_client(settings: &BotSettings) -> Api {
    Api::new_url(format!(
        "{}/bot{}",
        settings.api_url,
        settings.token.expose_secret()
    ))
}

/// Starts the service on the given infrastructure: its ops server (unless the process serves
/// ops once), the long-polling loop and the notifications consumer. Without
/// `TELEGRAM_BOT_TOKEN` (possible only in the single-process mode) nothing runs.
pub async fn start(
    settings: &ServiceSettings,
    infra: &Infra,
    shutdown: Shutdown,
) -> anyhow::Result<Service> {
    let readiness = match &settings.telegram {
        Some(bot) => with_telegram_check(infra.readiness(), telegram_client(bot)),
        None => infra.readiness(),
    };
    let ops = ops::serve_ops_on(settings.ops_bind.as_deref(), readiness, shutdown.clone())?;
    let Some(bot) = &settings.telegram else {
        tracing::warn!("{SERVICE}: TELEGRAM_BOT_TOKEN is not set; the bot is off");
        let stopped = shutdown.clone();
        return Ok(Service {
            server: ops::beside_ops(ops, async move {
                stopped.cancelled().await;
                Ok(())
            }),
            poller: None,
            webhook_addr: None,
            consumer_stats: None,
        });
    };
    let api = telegram_client(bot);
    let gateway = gateway::Gateway::new(
        &bot.gateway_url,
        bot.service_token.clone(),
        bot.admin_token.clone(),
        bot.gateway_timeout,
    )?;
    let app = Arc::new(
        App::new(
            api.clone(),
            infra.db.clone(),
            gateway,
            bot.admin_ids.clone(),
            bot.provider_token.clone(),
            infra.outbox_nudge.clone(),
        )
        .with_limits(limits::Limits::new(&bot.limits))
        .with_trial(bot.trial)
        .with_referrals(bot.referrals),
    );

    let sender = Arc::new(sender::Sender::new(
        api.clone(),
        infra.db.clone(),
        sender::SenderConfig::default(),
    ));
    let runner = ConsumerRunner::new(
        Notifier::new(sender.nudge()),
        infra.db.clone(),
        infra.bus.clone(),
        RunnerConfig::default(),
    );
    // No outbox nudge: the notifier writes the send queue (and wakes the sender), never the
    // outbox, so a nudge would only buy the relay an empty claim per event.
    infra.bus.declare(runner.spec()).await?;
    let consumer_stats = runner.stats();
    let consumer = runner.spawn(shutdown.clone());
    let reminders = reminders::Reminders::new(
        infra.db.clone(),
        bot.reminder_offsets.clone(),
        sender.nudge(),
    );
    let reminding = tokio::spawn(reminders.run(bot.reminder_every, shutdown.clone()));
    let broadcasting = tokio::spawn(
        broadcasts::Broadcasts::new(infra.db.clone(), sender.nudge())
            .run(broadcasts::POLL, shutdown.clone()),
    );
    let sending = tokio::spawn(sender.run(shutdown.clone()));
    let (receiver, poller_abort, webhook_addr) = match &bot.webhook {
        Some(hook) => {
            let (addr, task) = webhook::start(app, hook, shutdown.clone()).await?;
            (task, None, Some(addr))
        }
        None => {
            let task = tokio::spawn(poller::run(app, bot.poll_timeout_secs, shutdown.clone()));
            let abort = task.abort_handle();
            (task, Some(abort), None)
        }
    };

    let server = ops::beside_ops(ops, async move {
        if let Err(error) = consumer.await {
            tracing::error!(%error, "consumer task failed");
        }
        if let Err(error) = sending.await {
            tracing::error!(%error, "send queue task failed");
        }
        if let Err(error) = reminding.await {
            tracing::error!(%error, "reminders task failed");
        }
        if let Err(error) = broadcasting.await {
            tracing::error!(%error, "broadcasts task failed");
        }
        if let Err(error) = receiver.await
            && !error.is_cancelled()
        {
            tracing::error!(%error, "update receiver task failed");
        }
        Ok(())
    });
    tracing::info!(ops = ?server.addr, admins = bot.admin_ids.len(), "{SERVICE} ready");
    Ok(Service {
        server,
        poller: poller_abort,
        webhook_addr,
        consumer_stats: Some(consumer_stats),
    })
}

/// `readiness` plus the check `telegram`: the Bot API answers `getMe` for our token (a revoked
/// or wrong `TELEGRAM_BOT_TOKEN` is not ready), run at most every
/// [`ops::OUTSIDE_CHECK_INTERVAL`]; its state is also the gauge
/// `service_readiness_check_up{check="telegram"}`. The logged error never carries the token
/// (it is part of the request URL).
pub fn with_telegram_check(readiness: ops::Readiness, api: Api) -> ops::Readiness {
    use frankenstein::AsyncTelegramApi;
    readiness.with_every("telegram", ops::OUTSIDE_CHECK_INTERVAL, move || {
        let api = api.clone();
        Box::pin(async move {
            match api.get_me().await {
                Ok(_) => Ok(()),
                Err(frankenstein::Error::Api(error)) => Err(format!(
                    "getMe answered {}: {}",
                    error.error_code, error.description
                )),
                Err(_) => Err("cannot reach the Bot API".to_owned()),
            }
        })
    })
}

/// Runs the service as its own process until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    runtime::run_service(
        SERVICE,
        &settings.common,
        shutdown,
        async |infra, shutdown| Ok(start(&settings.service, infra, shutdown).await?.server),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_requires_the_bot_token() {
        let error =
            Settings::load(&Source::map([("DATABASE_URL", "sqlite::memory:")])).unwrap_err();
        assert_eq!(error.to_string(), "setting TELEGRAM_BOT_TOKEN is missing");
    }
}
