//! `make demo`: the product on the embedded default. Starts the sandbox emulators in this
//! process and the `standalone` binary (gateway, worker, marzban-sync and bot in one process on
//! SQLite and the in-process bus) as a child, then plays three customers through the Telegram
//! emulator — one pays with YooKassa, one with Telegram Stars, one with USDT — and an admin
//! refunds the Stars payment. Prints a timeline (time since each customer's click) and the
//! final state, and exits 0 when every step happened. `KEEP=1` keeps everything running until
//! Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::cluster::{ADMIN_ID, NOTIFY_FROM, WALLET, bin_dir};
use sandbox::telegram::{self, PayOutcome, SentMessage, TestUser};
use sandbox::{marzban, tron, yookassa};
use service_kit::testing::free_addr;
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);

struct Demo {
    tg: telegram::Handle,
    started: Instant,
}

impl Demo {
    fn say(&self, clicked: Instant, what: &str) {
        println!(
            "[{:>7.3}s | +{:>6.3}s since the click] {what}",
            self.started.elapsed().as_secs_f64(),
            clicked.elapsed().as_secs_f64()
        );
    }

    /// Waits for a message to `user` newer than `after` that matches.
    async fn next(
        &self,
        user: &TestUser,
        after: i64,
        what: &str,
        pred: impl Fn(&SentMessage) -> bool,
    ) -> anyhow::Result<SentMessage> {
        self.tg
            .wait_for_message(user.id, WAIT, |m| m.message_id > after && pred(m))
            .await
            .with_context(|| format!("{} never got: {what}", user.first_name))
    }

    /// /start → Buy → tariff → payment method; returns the bot's answer and the click time.
    async fn checkout(
        &self,
        user: &TestUser,
        tariff: &str,
        provider: &str,
        currency: &str,
    ) -> anyhow::Result<(SentMessage, Instant)> {
        let start = self.tg.send_text(user, "/start");
        let menu = self
            .next(user, start, "the main menu", |m| {
                m.callback_data().contains(&"buy".to_owned())
            })
            .await?;
        self.tg.press(user, menu.message_id, "buy")?;
        let tariff_data = format!("t:{tariff}");
        let tariffs = self
            .next(user, menu.message_id, "the tariffs", |m| {
                m.callback_data().contains(&tariff_data)
            })
            .await?;
        self.tg.press(user, tariffs.message_id, &tariff_data)?;
        let pay_data = format!("p:{tariff}:{provider}:{currency}");
        let methods = self
            .next(user, tariffs.message_id, "the payment methods", |m| {
                m.callback_data().contains(&pay_data)
            })
            .await?;
        let clicked = Instant::now();
        self.tg.press(user, methods.message_id, &pay_data)?;
        let answer = self
            .next(user, methods.message_id, "how to pay", |m| {
                m.invoice.is_some() || m.text.is_some()
            })
            .await?;
        self.say(
            clicked,
            &format!("{}: bot answered the {provider} click", user.first_name),
        );
        Ok((answer, clicked))
    }

    async fn activation(
        &self,
        user: &TestUser,
        after: i64,
        clicked: Instant,
    ) -> anyhow::Result<String> {
        let message = self
            .next(user, after, "the activation message", |m| {
                m.text
                    .as_deref()
                    .is_some_and(|t| t.contains("subscription is active"))
            })
            .await?;
        let text = message.text.unwrap_or_default();
        let link = text
            .lines()
            .find(|l| l.starts_with("http"))
            .unwrap_or_default()
            .to_owned();
        self.say(
            clicked,
            &format!("{}: subscription active, link {link}", user.first_name),
        );
        Ok(link)
    }
}

/// "Send exactly 2.500123 USDT to …" → 2500123 micro-USDT.
fn transfer_amount(text: &str) -> anyhow::Result<i64> {
    let amount = text
        .split_whitespace()
        .find(|w| w.contains('.') && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .context("no amount in the transfer message")?;
    let (whole, fraction) = amount.split_once('.').context("amount without decimals")?;
    let fraction = format!("{fraction:0<6}");
    Ok(whole.parse::<i64>()? * 1_000_000 + fraction[..6].parse::<i64>()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let work = std::env::temp_dir().join(format!("acp-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let gateway = free_addr()?;

    let tg = telegram::spawn(telegram::Config::default()).await?;
    let kassa = yookassa::spawn(yookassa::Config {
        webhook_url: Some(format!("http://{gateway}/webhook/payment/yookassa")),
        notify_from: NOTIFY_FROM.parse().ok(),
        ..yookassa::Config::default()
    })
    .await?;
    let chain = tron::spawn(tron::Config::default()).await?;
    let panel = marzban::spawn(marzban::Config::default()).await?;
    let shop = kassa.shop().context("the emulator has a shop")?.clone();
    println!(
        "emulators: YooKassa {}, Telegram {}, TronGrid {}, Marzban {}",
        kassa.base_url(),
        tg.api_url(),
        chain.base_url,
        panel.base_url
    );

    let env: Vec<(&str, String)> = vec![
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
        ("WORKER_BIND", "127.0.0.1:0".into()),
        ("MARZBAN_SYNC_BIND", "127.0.0.1:0".into()),
        ("BOT_BIND", "127.0.0.1:0".into()),
        ("API_SERVICE_TOKEN", "demo-service-token".into()),
        ("API_ADMIN_TOKEN", "demo-admin-token".into()),
        ("YOOKASSA_SHOP_ID", shop.shop_id.clone()),
        ("YOOKASSA_SECRET_KEY", shop.secret_key.clone()),
        ("YOOKASSA_TEST_MODE", "true".into()),
        ("YOOKASSA_API_URL", kassa.api_url()),
        ("YOOKASSA_ALLOWED_IPS", format!("{NOTIFY_FROM}/32")),
        ("TELEGRAM_BOT_TOKEN", tg.token().to_owned()),
        ("TELEGRAM_API_URL", tg.api_url()),
        ("TELEGRAM_POLL_TIMEOUT_SECS", "1".into()),
        ("ADMIN_TELEGRAM_IDS", ADMIN_ID.to_string()),
        ("CRYPTO_WALLET_ADDRESS", WALLET.into()),
        ("CRYPTO_NETWORK", "TRC20".into()),
        ("TRONGRID_API_URL", chain.base_url.clone()),
        ("CRYPTO_POLL_INTERVAL_SECONDS", "1".into()),
        ("MARZBAN_URL", panel.base_url.clone()),
        ("MARZBAN_USERNAME", "admin".into()),
        ("MARZBAN_PASSWORD", "admin-password".into()),
        ("RECONCILE_POLL_MS", "1000".into()),
    ];
    let mut standalone = Command::new(bin_dir().join("standalone"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .spawn()
        .context("starting target/debug/standalone (build it: cargo build --workspace --bins)")?;
    let mut ready = false;
    for _ in 0..300 {
        if let Ok((200, _)) = service_kit::testing::http_get(&gateway, "/health/ready").await {
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
    let demo = Demo { tg, started };

    // 1. YooKassa: the Pay button opens the emulator's checkout; the customer pays there.
    let anna = TestUser::new(700_001, "Anna", "en");
    let (pay, clicked) = demo.checkout(&anna, "month_1", "yookassa", "RUB").await?;
    let url = pay
        .button_urls()
        .into_iter()
        .next()
        .context("a Pay URL button")?;
    let id = url.rsplit('/').next().unwrap_or_default().to_owned();
    kassa.pay(&id).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    demo.say(
        clicked,
        &format!("Anna paid 199.00 RUB on the YooKassa checkout ({url})"),
    );
    demo.activation(&anna, pay.message_id, clicked).await?;

    // 2. Telegram Stars: an invoice, pre-checkout, successful_payment.
    let boris = TestUser::new(700_002, "Boris", "en");
    let (invoice, clicked) = demo.checkout(&boris, "month_3", "telegram", "XTR").await?;
    let details = invoice.invoice.clone().context("a Stars invoice")?;
    match demo.tg.pay_invoice(&boris, invoice.message_id).await? {
        PayOutcome::Paid { answered_in_ms, .. } => demo.say(
            clicked,
            &format!(
                "Boris paid {} ⭐ (pre-checkout answered in {answered_in_ms} ms)",
                details.total_amount
            ),
        ),
        other => bail!("the Stars payment did not go through: {other:?}"),
    }
    demo.activation(&boris, invoice.message_id, clicked).await?;

    // 3. USDT on TRON: the exact amount to the wallet, seen by the chain watcher.
    let chen = TestUser::new(700_003, "Chen", "en");
    let (transfer, clicked) = demo.checkout(&chen, "month_6", "crypto", "USDT").await?;
    let amount = transfer_amount(transfer.text.as_deref().unwrap_or_default())?;
    chain.add_transfer(tron::NewTransfer::usdt(
        "TNtbiqvanUnm4YHK9SYzRGR8ktiHRduDbM",
        WALLET,
        amount,
    ));
    demo.say(clicked, &format!("Chen sent {amount} micro-USDT on chain"));
    demo.activation(&chen, transfer.message_id, clicked).await?;

    // 4. The admin refunds Boris's Stars payment from the bot.
    let admin = TestUser::new(ADMIN_ID, "Admin", "en");
    let clicked = Instant::now();
    let ask = demo
        .tg
        .send_text(&admin, &format!("/refund {}", details.payload));
    let confirm = demo
        .next(&admin, ask, "the refund confirmation", |m| {
            m.callback_data().iter().any(|d| d.starts_with("rf:"))
        })
        .await?;
    demo.tg.press(
        &admin,
        confirm.message_id,
        &format!("rf:{}", details.payload),
    )?;
    demo.next(&boris, invoice.message_id, "the refund message", |m| {
        m.text.as_deref().is_some_and(|t| t.contains("refunded"))
    })
    .await?;
    demo.say(clicked, "Boris's Stars refunded; the bot told him");

    // Final state.
    let stats = demo.tg.send_text(&admin, "/stats");
    let stats = demo
        .next(&admin, stats, "/stats", |m| {
            m.text.as_deref().is_some_and(|t| t.contains("Payments"))
        })
        .await?;
    println!("\nadmin's /stats:\n{}", stats.text.unwrap_or_default());
    println!("\npanel users:");
    for user in panel.users() {
        println!(
            "  {} status={:?} expire={:?}",
            user.username, user.status, user.expire
        );
    }
    println!(
        "YooKassa payments: {}, Stars charges: {}",
        kassa.payments().len(),
        demo.tg.charges().len()
    );

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
