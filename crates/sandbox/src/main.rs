use std::net::{IpAddr, SocketAddr};

use clap::Parser;
use sandbox::{cryptobot, marzban, pasarguard, remnawave, telegram, tron, yookassa};

/// The same allocator as the services (see `service_kit`): the emulators share the machine
/// with them in the benchmarks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Local emulators for the payment system's outside services.
#[derive(Debug, Parser)]
#[command(name = "sandbox", version)]
struct Cli {
    /// Where the YooKassa emulator listens.
    #[arg(long, env = "SANDBOX_YOOKASSA_BIND", default_value = "127.0.0.1:9101")]
    yookassa_bind: SocketAddr,
    /// Base URL the payer's browser uses to reach the emulator (for confirmation_url).
    #[arg(long, env = "SANDBOX_YOOKASSA_PUBLIC_URL")]
    yookassa_public_url: Option<String>,
    /// Where YooKassa notifications are POSTed, e.g. http://127.0.0.1:8080/webhook/payment/yookassa
    /// (empty: nowhere — the load generator sends them itself).
    #[arg(long, env = "SANDBOX_YOOKASSA_WEBHOOK_URL")]
    yookassa_webhook_url: Option<String>,
    /// Local address notifications are sent from (e.g. 127.0.0.2).
    #[arg(long, env = "SANDBOX_YOOKASSA_NOTIFY_FROM")]
    yookassa_notify_from: Option<IpAddr>,
    #[arg(long, env = "YOOKASSA_SHOP_ID", default_value = "100500")]
    yookassa_shop_id: String,
    #[arg(
        long,
        env = "YOOKASSA_SECRET_KEY",
        default_value = "test_sandbox_secret",
        hide_env_values = true
    )]
    yookassa_secret_key: String,
    /// Emulate a live shop (objects carry "test": false).
    #[arg(long)]
    yookassa_live_shop: bool,
    /// The panel to emulate: `marzban` (default), `pasarguard` or `remnawave`, each with its
    /// emulator's default credentials, groups and squads.
    #[arg(long, env = "PANEL_KIND", default_value = "marzban")]
    panel_kind: String,
    /// Where the panel emulator (whichever `PANEL_KIND` names) listens.
    #[arg(long, env = "SANDBOX_MARZBAN_BIND", default_value = "127.0.0.1:9104")]
    marzban_bind: SocketAddr,
    /// Admin account of the Marzban emulator.
    #[arg(long, env = "MARZBAN_USERNAME", default_value = "admin")]
    marzban_username: String,
    #[arg(
        long,
        env = "MARZBAN_PASSWORD",
        default_value = "admin-password",
        hide_env_values = true
    )]
    marzban_password: String,
    /// Where the TronGrid emulator listens.
    #[arg(long, env = "SANDBOX_TRON_BIND", default_value = "127.0.0.1:9103")]
    tron_bind: SocketAddr,
    /// Where the Telegram Bot API emulator listens (`TELEGRAM_API_URL`).
    #[arg(long, env = "SANDBOX_TELEGRAM_BIND", default_value = "127.0.0.1:9102")]
    telegram_bind: SocketAddr,
    /// Whether the Telegram emulator enforces Telegram's sending limits (30 messages/s, about
    /// 1/s per chat). On by default; the load generator turns them off to measure the pipeline.
    #[arg(long, env = "SANDBOX_TELEGRAM_SEND_LIMITS", default_value_t = true, action = clap::ArgAction::Set)]
    telegram_send_limits: bool,
    /// The bot token the Telegram emulator accepts.
    #[arg(
        long,
        env = "TELEGRAM_BOT_TOKEN",
        default_value = "123456:TEST-sandbox-token",
        hide_env_values = true
    )]
    telegram_bot_token: String,
    /// Where the Crypto Pay (CryptoBot) emulator listens (`CRYPTOBOT_API_URL` = this + `/api`);
    /// by default a free port (printed), so clusters started side by side never collide.
    #[arg(long, env = "SANDBOX_CRYPTOBOT_BIND", default_value = "127.0.0.1:0")]
    cryptobot_bind: SocketAddr,
    /// The app token the Crypto Pay emulator accepts and signs its webhooks with.
    #[arg(
        long,
        env = "CRYPTOBOT_API_TOKEN",
        default_value = cryptobot::SANDBOX_TOKEN,
        hide_env_values = true
    )]
    cryptobot_api_token: String,
    /// Where `invoice_paid` updates are POSTed, e.g. http://127.0.0.1:8080/webhook/payment/cryptobot
    #[arg(long, env = "SANDBOX_CRYPTOBOT_WEBHOOK_URL")]
    cryptobot_webhook_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let config = yookassa::Config {
        bind: cli.yookassa_bind,
        public_url: cli.yookassa_public_url,
        shops: vec![yookassa::Shop::new(
            cli.yookassa_shop_id,
            cli.yookassa_secret_key,
            !cli.yookassa_live_shop,
        )],
        webhook_url: cli.yookassa_webhook_url.filter(|url| !url.is_empty()),
        notify_from: cli.yookassa_notify_from,
        ..yookassa::Config::default()
    };
    let handle = yookassa::spawn(config).await?;
    println!("YooKassa emulator: {}", handle.api_url());
    let panel = Panel::spawn(
        &cli.panel_kind,
        cli.marzban_bind,
        cli.marzban_username,
        cli.marzban_password,
    )
    .await?;
    let chain = tron::spawn(tron::Config {
        bind: cli.tron_bind,
        ..tron::Config::default()
    })
    .await?;
    println!("TronGrid emulator: {}", chain.base_url);
    let telegram = telegram::spawn(telegram::Config {
        bind: cli.telegram_bind,
        token: cli.telegram_bot_token,
        send_limits: cli.telegram_send_limits.then(telegram::SendLimits::default),
        ..telegram::Config::default()
    })
    .await?;
    println!("Telegram Bot API emulator: {}", telegram.api_url());
    let cryptobot = cryptobot::spawn(cryptobot::Config {
        bind: cli.cryptobot_bind,
        token: cli.cryptobot_api_token,
        webhook_url: cli.cryptobot_webhook_url.filter(|url| !url.is_empty()),
        ..cryptobot::Config::default()
    })
    .await?;
    println!("Crypto Pay emulator: {}", cryptobot.api_url());
    tokio::signal::ctrl_c().await?;
    telegram.stop().await;
    handle.stop().await;
    panel.stop().await;
    chain.stop().await;
    cryptobot.stop().await;
    Ok(())
}

/// The one panel emulator the sandbox runs (`PANEL_KIND`).
enum Panel {
    Marzban(marzban::Handle),
    Pasarguard(pasarguard::Handle),
    Remnawave(remnawave::Handle),
}

impl Panel {
    async fn spawn(
        kind: &str,
        bind: SocketAddr,
        admin_username: String,
        admin_password: String,
    ) -> anyhow::Result<Self> {
        // The three emulators take the same settings through three `Config` types.
        macro_rules! spawn {
            ($module:ident, $variant:ident) => {{
                let handle = $module::spawn($module::Config {
                    bind,
                    admin_username,
                    admin_password,
                    ..$module::Config::default()
                })
                .await?;
                let url = handle.base_url.clone();
                (Self::$variant(handle), url)
            }};
        }
        let (panel, url) = match kind {
            "marzban" => spawn!(marzban, Marzban),
            "pasarguard" => spawn!(pasarguard, Pasarguard),
            "remnawave" => spawn!(remnawave, Remnawave),
            other => anyhow::bail!("PANEL_KIND={other}: use marzban, pasarguard or remnawave"),
        };
        println!("{kind} panel emulator: {url}");
        Ok(panel)
    }

    async fn stop(self) {
        match self {
            Self::Marzban(handle) => handle.stop().await,
            Self::Pasarguard(handle) => handle.stop().await,
            Self::Remnawave(handle) => handle.stop().await,
        }
    }
}
