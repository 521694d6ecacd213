//! `make demo`: the product on the embedded default. Starts the sandbox emulators in this
//! process and the `standalone` binary (gateway, worker, marzban-sync and bot in one process on
//! SQLite and the in-process bus) as a child, then plays five customers through the Telegram
//! emulator — they pay with YooKassa, Telegram Stars, USDT, a card inside Telegram and
//! CryptoBot, and one is renewed automatically with a saved card — and an admin refunds the
//! Stars payment. Prints a timeline (time since each customer's click) and the
//! final state, and exits 0 when every step happened. `KEEP=1` keeps everything running until
//! Ctrl-C. `PANEL=pasarguard` or `PANEL=remnawave` provisions that panel's emulator instead of
//! Marzban's (`PANEL_KIND`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::cluster::{
    ADMIN_ID, NOTIFY_FROM, PROVIDER_TOKEN, PanelKind, SandboxUrls, WALLET, bin_dir,
};
use e2e::customers::Script;
use e2e::sandbox_client::SandboxClient;
use sandbox::{cryptobot, marzban, pasarguard, remnawave, telegram, tron, yookassa};
use service_kit::testing::free_addr;
use tokio::process::Command;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let work = std::env::temp_dir().join(format!("acp-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let gateway = free_addr()?;
    // Health and metrics of the whole process, off the public port.
    let ops = free_addr()?;

    let tg = telegram::spawn(telegram::Config::default()).await?;
    let kassa = yookassa::spawn(yookassa::Config {
        webhook_url: Some(format!("http://{gateway}/webhook/payment/yookassa")),
        notify_from: NOTIFY_FROM.parse().ok(),
        ..yookassa::Config::default()
    })
    .await?;
    let chain = tron::spawn(tron::Config::default()).await?;
    let crypto_pay = cryptobot::spawn(cryptobot::Config {
        webhook_url: Some(format!("http://{gateway}/webhook/payment/cryptobot")),
        ..cryptobot::Config::default()
    })
    .await?;
    let panel = DemoPanel::spawn(PanelKind::from_env()?).await?;
    let shop = kassa.shop().context("the emulator has a shop")?.clone();
    println!(
        "emulators: YooKassa {}, Telegram {}, TronGrid {}, Crypto Pay {}, {} {}",
        kassa.base_url(),
        tg.api_url(),
        chain.base_url,
        crypto_pay.base_url(),
        panel.name(),
        panel.base_url()
    );

    let mut env: Vec<(&str, String)> = vec![
        (
            "DATABASE_URL",
            format!("sqlite://{}/acp.db?mode=rwc", work.display()),
        ),
        ("LOG_DIR", work.join("logs").display().to_string()),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ),
        ("GATEWAY_BIND", gateway.clone()),
        ("GATEWAY_URL", format!("http://{gateway}")),
        ("OPS_BIND", ops.clone()),
        (
            "API_SERVICE_TOKEN",
            "demo-service-token-0123456789abcdef".into(),
        ),
        (
            "API_ADMIN_TOKEN",
            "demo-admin-token-0123456789abcdef".into(),
        ),
        ("YOOKASSA_SHOP_ID", shop.shop_id.clone()),
        ("YOOKASSA_SECRET_KEY", shop.secret_key.clone()),
        ("YOOKASSA_TEST_MODE", "true".into()),
        ("YOOKASSA_API_URL", kassa.api_url()),
        ("YOOKASSA_ALLOWED_IPS", format!("{NOTIFY_FROM}/32")),
        ("TELEGRAM_BOT_TOKEN", tg.token().to_owned()),
        ("TELEGRAM_API_URL", tg.api_url()),
        // Card payments inside Telegram: a provider's test token as @BotFather issues them.
        ("TELEGRAM_PAYMENT_PROVIDER_TOKEN", PROVIDER_TOKEN.into()),
        ("TELEGRAM_POLL_TIMEOUT_SECS", "1".into()),
        ("ADMIN_TELEGRAM_IDS", ADMIN_ID.to_string()),
        ("CRYPTO_WALLET_ADDRESS", WALLET.into()),
        ("CRYPTO_NETWORK", "TRC20".into()),
        ("TRONGRID_API_URL", chain.base_url.clone()),
        ("CRYPTO_POLL_INTERVAL_SECONDS", "1".into()),
        ("RECONCILE_POLL_MS", "1000".into()),
        ("CRYPTOBOT_API_TOKEN", crypto_pay.token().to_owned()),
        ("CRYPTOBOT_API_URL", crypto_pay.api_url()),
        ("CRYPTOBOT_ACCEPTED_ASSETS", "USDT,TON".into()),
        // The demo cannot wait a month for a renewal: a saved card is charged within 30 days
        // of the expiry (production: AUTOPAY_LEAD_HOURS=24, a day before), so Fedor's 30-day
        // subscription is renewed at once, and once only.
        ("AUTOPAY_LEAD_HOURS", "720".into()),
        ("AUTOPAY_POLL_SECS", "1".into()),
        // Likewise a reminder 30 days before the expiry (production: 3 days, 1 day, at it,
        // 3 days after), so Greta's comes at once.
        ("REMINDER_OFFSETS", "-30d".into()),
        ("REMINDER_SCAN_SECS", "1".into()),
    ];
    env.extend(panel.env());
    let mut standalone = Command::new(bin_dir().join("standalone"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .spawn()
        .context("starting target/debug/standalone (build it: cargo build --workspace --bins)")?;
    let mut ready = false;
    for _ in 0..300 {
        if let Ok((200, _)) = service_kit::testing::http_get(&ops, "/health/ready").await {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        bail!("the standalone service did not become ready");
    }
    println!(
        "[{:>7.3}s] standalone ready on http://{gateway} (SQLite {}, in-process bus)",
        started.elapsed().as_secs_f64(),
        work.display()
    );
    let urls = SandboxUrls {
        yookassa: kassa.base_url(),
        telegram: tg.base_url(),
        tron: chain.base_url.clone(),
        marzban: panel.base_url(),
        panel: panel.kind(),
    };
    let mut script = Script::new(SandboxClient::new(urls), true);
    script.started = started;
    // Anna pays with YooKassa, Boris with Stars, Chen with USDT, Dasha by card inside
    // Telegram; the admin refunds Boris.
    script.four_purchases_and_a_refund().await?;
    // Erik pays through CryptoBot, in TON.
    let erik = telegram::TestUser::new(700_005, "Erik", "en");
    script
        .pay_cryptobot(&erik, "month_1", |url| {
            let invoice = crypto_pay
                .invoices()
                .into_iter()
                .find(|i| i["bot_invoice_url"] == url)
                .context("the invoice behind the Pay button")?;
            let id = invoice["invoice_id"].as_i64().context("an invoice id")?;
            let paid = crypto_pay
                .pay(id, Some("TON"))
                .with_context(|| format!("paying invoice {id}"))?;
            Ok(format!(
                "{} {}",
                paid["paid_amount"].as_str().unwrap_or_default(),
                paid["paid_asset"].as_str().unwrap_or_default()
            ))
        })
        .await?;
    // Fedor pays by card with "renew automatically": the worker renews him with the saved
    // card without a click.
    let fedor = telegram::TestUser::new(700_006, "Fedor", "ru");
    script.pay_yookassa_with_autopay(&fedor, "month_1").await?;
    // Greta pays once; her expiry reminder's Renew button renews her in one tap.
    let greta = telegram::TestUser::new(700_007, "Greta", "ru");
    script.pay_yookassa(&greta, "month_1").await?;
    script.renew_from_reminder(&greta, 0).await?;
    println!("\nadmin's /stats:\n{}", script.admin_stats().await?);
    println!("\n{} users:", panel.name());
    panel.print_users();
    println!(
        "YooKassa payments: {}, Telegram charges: {} ({} in Stars, {} by card)",
        kassa.payments().len(),
        tg.charges().len(),
        tg.charges().iter().filter(|c| c.currency == "XTR").count(),
        tg.charges().iter().filter(|c| c.currency != "XTR").count(),
    );
    println!("CryptoBot invoices: {}", crypto_pay.invoices().len());

    if std::env::var("KEEP").is_ok_and(|v| v == "1") {
        println!(
            "\nKEEP=1: gateway http://{gateway}, YooKassa checkout {}/checkout/<id>; Ctrl-C stops",
            kassa.base_url()
        );
        tokio::signal::ctrl_c().await?;
    }
    if let Some(pid) = standalone.id() {
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await?;
    }
    let status = standalone.wait().await?;
    println!(
        "\nstandalone stopped ({status}); demo finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_dir_all(&work).ok();
    if !status.success() {
        bail!("standalone did not stop cleanly");
    }
    Ok(())
}

/// The panel emulator the demo provisions (`PANEL`).
enum DemoPanel {
    Marzban(marzban::Handle),
    Pasarguard(pasarguard::Handle),
    Remnawave(remnawave::Handle),
}

impl DemoPanel {
    async fn spawn(kind: PanelKind) -> anyhow::Result<Self> {
        Ok(match kind {
            PanelKind::Marzban => Self::Marzban(marzban::spawn(marzban::Config::default()).await?),
            PanelKind::Pasarguard => {
                Self::Pasarguard(pasarguard::spawn(pasarguard::Config::default()).await?)
            }
            PanelKind::Remnawave => {
                Self::Remnawave(remnawave::spawn(remnawave::Config::default()).await?)
            }
        })
    }

    fn kind(&self) -> PanelKind {
        match self {
            Self::Marzban(_) => PanelKind::Marzban,
            Self::Pasarguard(_) => PanelKind::Pasarguard,
            Self::Remnawave(_) => PanelKind::Remnawave,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Marzban(_) => "Marzban",
            Self::Pasarguard(_) => "PasarGuard",
            Self::Remnawave(_) => "Remnawave",
        }
    }

    fn base_url(&self) -> String {
        match self {
            Self::Marzban(p) => p.base_url.clone(),
            Self::Pasarguard(p) => p.base_url.clone(),
            Self::Remnawave(p) => p.base_url.clone(),
        }
    }

    /// The standalone binary's panel settings.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.kind().env(&self.base_url());
        env.push(("PANEL_KIND", self.kind().name().into()));
        env
    }

    fn print_users(&self) {
        match self {
            Self::Marzban(p) => {
                for u in p.users() {
                    println!(
                        "  {} status={:?} expire={:?}",
                        u.username, u.status, u.expire
                    );
                }
            }
            Self::Pasarguard(p) => {
                for u in p.users() {
                    println!(
                        "  {} status={:?} expire={:?}",
                        u.username, u.status, u.expire
                    );
                }
            }
            Self::Remnawave(p) => {
                for u in p.users() {
                    println!(
                        "  {} status={:?} expireAt={} squads={}",
                        u.username,
                        u.status,
                        u.expire_at,
                        u.active_internal_squads.len()
                    );
                }
            }
        }
    }
}
