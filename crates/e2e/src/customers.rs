//! Scripted customers: people pressing the bot's buttons in the Telegram emulator and paying
//! on the emulators, plus an admin refunding from the bot. One implementation for `make demo`
//! (emulators in-process, the standalone service) and the cross-process end-to-end test.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sandbox::telegram::{PayOutcome, SentMessage, TestUser};
use sandbox::tron::NewTransfer;

use crate::cluster::{ADMIN_ID, WALLET};
use crate::sandbox_client::{SandboxClient, transfer_amount};

/// How long a step may take before the script gives up.
pub const WAIT: Duration = Duration::from_secs(30);

/// The sender of the scripted USDT transfer (any valid TRON address but the wallet).
pub const PAYER_WALLET: &str = "TNtbiqvanUnm4YHK9SYzRGR8ktiHRduDbM";

/// Is this the bot's "your subscription is active" message (English or Russian texts; a
/// text, or the caption of the link's QR code)?
pub fn is_activation(message: &SentMessage) -> bool {
    [&message.text, &message.caption].into_iter().any(|t| {
        t.as_deref()
            .is_some_and(|t| t.contains("subscription is active") || t.contains("Подписка активна"))
    })
}

/// The four purchases and the refund, as they happened.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Subscription links from the activation messages: YooKassa, Stars, USDT, card in
    /// Telegram customer.
    pub links: Vec<String>,
    /// The Stars payment's id (the invoice payload), the one refunded.
    pub refunded_payment: String,
    pub stars_amount: i64,
    pub usdt_micro: i64,
    /// What the card customer paid inside Telegram, in kopecks.
    pub card_kopecks: i64,
    pub pre_checkout_ms: u64,
}

/// Plays customers against a running system; prints a timeline when `verbose`.
pub struct Script {
    pub sandbox: SandboxClient,
    pub started: Instant,
    pub verbose: bool,
}

impl Script {
    pub fn new(sandbox: SandboxClient, verbose: bool) -> Self {
        Self {
            sandbox,
            started: Instant::now(),
            verbose,
        }
    }

    pub fn say(&self, clicked: Instant, what: &str) {
        if self.verbose {
            println!(
                "[{:>7.3}s | +{:>6.3}s since the click] {what}",
                self.started.elapsed().as_secs_f64(),
                clicked.elapsed().as_secs_f64()
            );
        }
    }

    /// Waits for a message to `user` newer than `after` that matches.
    pub async fn next(
        &self,
        user: &TestUser,
        after: i64,
        what: &str,
        pred: impl Fn(&SentMessage) -> bool,
    ) -> anyhow::Result<SentMessage> {
        self.sandbox
            .wait_for_message(user.id, WAIT, |m| m.message_id > after && pred(m))
            .await?
            .with_context(|| format!("{} never got: {what}", user.first_name))
    }

    /// /start → Buy → tariff → payment method; returns the bot's answer and the click time.
    pub async fn checkout(
        &self,
        user: &TestUser,
        tariff: &str,
        provider: &str,
        currency: &str,
    ) -> anyhow::Result<(SentMessage, Instant)> {
        let pay_data = format!("p:{tariff}:{provider}:{currency}");
        self.checkout_with(user, tariff, &pay_data, provider).await
    }

    /// [`Self::checkout`] pressing the method button `pay_data` (`label` names it in the
    /// timeline).
    pub async fn checkout_with(
        &self,
        user: &TestUser,
        tariff: &str,
        pay_data: &str,
        label: &str,
    ) -> anyhow::Result<(SentMessage, Instant)> {
        let start = self.sandbox.send_text(user, "/start").await?;
        let menu = self
            .next(user, start, "the main menu", |m| {
                m.callback_data().iter().any(|d| d == "buy")
            })
            .await?;
        self.sandbox.press(user, menu.message_id, "buy").await?;
        let tariff_data = format!("t:{tariff}");
        let tariffs = self
            .next(user, menu.message_id, "the tariffs", |m| {
                m.callback_data().contains(&tariff_data)
            })
            .await?;
        self.sandbox
            .press(user, tariffs.message_id, &tariff_data)
            .await?;
        let methods = self
            .next(user, tariffs.message_id, "the payment methods", |m| {
                m.callback_data().iter().any(|d| d == pay_data)
            })
            .await?;
        let clicked = Instant::now();
        self.sandbox
            .press(user, methods.message_id, pay_data)
            .await?;
        let answer = self
            .next(user, methods.message_id, "how to pay", |m| {
                m.invoice.is_some() || m.text.is_some()
            })
            .await?;
        self.say(
            clicked,
            &format!("{}: bot answered the {label} click", user.first_name),
        );
        Ok((answer, clicked))
    }

    /// Waits for the activation message; returns the subscription link in it.
    pub async fn activation(
        &self,
        user: &TestUser,
        after: i64,
        clicked: Instant,
    ) -> anyhow::Result<String> {
        let message = self
            .next(user, after, "the activation message", is_activation)
            .await?;
        let text = message.text.or(message.caption).unwrap_or_default();
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

    /// Pays `tariff` with YooKassa: the Pay button opens the emulator's checkout, the customer
    /// pays there, the emulator notifies the gateway.
    pub async fn pay_yookassa(&self, user: &TestUser, tariff: &str) -> anyhow::Result<String> {
        let (pay, clicked) = self.checkout(user, tariff, "yookassa", "RUB").await?;
        self.pay_on_checkout(user, pay, clicked).await
    }

    /// Pays `tariff` with YooKassa choosing "card, renew automatically" (the card is saved),
    /// then waits, without touching the bot, for the worker's automatic renewal charge and
    /// its second activation message; returns the link.
    pub async fn pay_yookassa_with_autopay(
        &self,
        user: &TestUser,
        tariff: &str,
    ) -> anyhow::Result<String> {
        let data = format!("a:{tariff}:yookassa:RUB");
        let (pay, clicked) = self
            .checkout_with(user, tariff, &data, "card-with-autopay")
            .await?;
        let after = pay.message_id;
        let link = self.pay_on_checkout(user, pay, clicked).await?;
        let first = self
            .next(user, after, "the first activation", is_activation)
            .await?;
        let renewed = self
            .next(
                user,
                first.message_id,
                "the automatic renewal's activation",
                is_activation,
            )
            .await?;
        self.say(
            clicked,
            &format!(
                "{}: renewed automatically with the saved card, no click ({})",
                user.first_name,
                renewed
                    .text
                    .or(renewed.caption)
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
            ),
        );
        Ok(link)
    }

    /// Waits for an expiry reminder after `after` and renews in one tap: its Renew button
    /// repeats the last checkout (`p:…`), the customer pays on the YooKassa checkout, and the
    /// subscription is extended (a second activation). Returns the link.
    pub async fn renew_from_reminder(&self, user: &TestUser, after: i64) -> anyhow::Result<String> {
        let reminder = self
            .next(user, after, "an expiry reminder with Renew", |m| {
                m.text.as_deref().is_some_and(|t| t.contains("⏳"))
                    && m.callback_data().iter().any(|d| d.starts_with("p:"))
            })
            .await?;
        let renew = reminder
            .callback_data()
            .into_iter()
            .find(|d| d.starts_with("p:"))
            .context("the Renew button")?;
        let clicked = Instant::now();
        self.say(
            clicked,
            &format!(
                "{} got a reminder: {}",
                user.first_name,
                reminder.text.clone().unwrap_or_default()
            ),
        );
        self.sandbox
            .press(user, reminder.message_id, &renew)
            .await?;
        let pay = self
            .next(user, reminder.message_id, "the renewal's Pay button", |m| {
                !m.button_urls().is_empty()
            })
            .await?;
        self.say(
            clicked,
            &format!("{}: pressed Renew ({renew})", user.first_name),
        );
        self.pay_on_checkout(user, pay, clicked).await
    }

    /// Pays a YooKassa checkout the bot answered with (its Pay button opens the emulator's
    /// checkout page) and waits for the activation; returns the link.
    async fn pay_on_checkout(
        &self,
        user: &TestUser,
        pay: SentMessage,
        clicked: Instant,
    ) -> anyhow::Result<String> {
        let url = pay
            .button_urls()
            .into_iter()
            .next()
            .context("a Pay URL button")?;
        let id = url.rsplit('/').next().unwrap_or_default().to_owned();
        let paid = self.sandbox.yookassa_pay(&id).await?;
        self.say(
            clicked,
            &format!(
                "{} paid {} {} on the YooKassa checkout ({url})",
                user.first_name,
                paid["amount"]["value"].as_str().unwrap_or_default(),
                paid["amount"]["currency"].as_str().unwrap_or_default()
            ),
        );
        self.activation(user, pay.message_id, clicked).await
    }

    /// Pays `tariff` inside Telegram in `currency`: `XTR` for Stars, `RUB` by card through
    /// the payment provider connected in @BotFather (a provider token). An invoice,
    /// `pre_checkout_query`, `successful_payment`. Returns the link, the invoice payload (the
    /// payment id), the amount in the currency's minor units and the pre-checkout answer time.
    pub async fn pay_in_telegram(
        &self,
        user: &TestUser,
        tariff: &str,
        currency: &str,
    ) -> anyhow::Result<(String, String, i64, u64)> {
        let (invoice, clicked) = self.checkout(user, tariff, "telegram", currency).await?;
        let details = invoice.invoice.clone().context("a Telegram invoice")?;
        let answered_in_ms = match self.sandbox.pay_invoice(user, invoice.message_id).await? {
            PayOutcome::Paid { answered_in_ms, .. } => answered_in_ms,
            other => bail!("the {currency} payment in Telegram did not go through: {other:?}"),
        };
        let paid = if currency == "XTR" {
            format!("{} ⭐", details.total_amount)
        } else {
            format!(
                "{}.{:02} {currency} by card inside Telegram",
                details.total_amount / 100,
                details.total_amount % 100
            )
        };
        self.say(
            clicked,
            &format!(
                "{} paid {paid} (pre-checkout answered in {answered_in_ms} ms)",
                user.first_name
            ),
        );
        let link = self.activation(user, invoice.message_id, clicked).await?;
        Ok((link, details.payload, details.total_amount, answered_in_ms))
    }

    /// Pays `tariff` in USDT: the exact amount from the bot's message, sent to the wallet on
    /// the emulated chain, seen by the chain watcher. Returns the link and the micro-USDT.
    pub async fn pay_usdt(&self, user: &TestUser, tariff: &str) -> anyhow::Result<(String, i64)> {
        let (transfer, clicked) = self.checkout(user, tariff, "crypto", "USDT").await?;
        let amount = transfer_amount(transfer.text.as_deref().unwrap_or_default())?;
        self.sandbox
            .tron_transfer(&NewTransfer::usdt(PAYER_WALLET, WALLET, amount))
            .await?;
        self.say(
            clicked,
            &format!("{} sent {amount} micro-USDT on chain", user.first_name),
        );
        let link = self.activation(user, transfer.message_id, clicked).await?;
        Ok((link, amount))
    }

    /// Pays `tariff` through CryptoBot: the bot's Pay button opens the invoice in @CryptoBot
    /// (`bot_invoice_url`), where `pay` settles it (the demo pays it in the Crypto Pay
    /// emulator; the emulator then posts the signed `invoice_paid` webhook). Returns the link.
    pub async fn pay_cryptobot(
        &self,
        user: &TestUser,
        tariff: &str,
        pay: impl FnOnce(&str) -> anyhow::Result<String>,
    ) -> anyhow::Result<String> {
        let (invoice, clicked) = self.checkout(user, tariff, "cryptobot", "RUB").await?;
        let url = invoice
            .button_urls()
            .into_iter()
            .next()
            .context("a Pay URL button")?;
        let paid = pay(&url)?;
        self.say(
            clicked,
            &format!("{} paid {paid} in @CryptoBot ({url})", user.first_name),
        );
        self.activation(user, invoice.message_id, clicked).await
    }

    /// The admin refunds `payment_id` from the bot (`/refund`, then the confirmation button);
    /// returns when `customer` got the refund message.
    pub async fn refund(&self, payment_id: &str, customer: &TestUser) -> anyhow::Result<()> {
        let admin = TestUser::new(ADMIN_ID, "Admin", "en");
        let before = self
            .sandbox
            .messages(customer.id)
            .await?
            .last()
            .map_or(0, |m| m.message_id);
        let clicked = Instant::now();
        let ask = self
            .sandbox
            .send_text(&admin, &format!("/refund {payment_id}"))
            .await?;
        let confirm_data = format!("rf:{payment_id}");
        let confirm = self
            .next(&admin, ask, "the refund confirmation", |m| {
                m.callback_data().contains(&confirm_data)
            })
            .await?;
        self.sandbox
            .press(&admin, confirm.message_id, &confirm_data)
            .await?;
        self.next(customer, before, "the refund message", |m| {
            m.text.as_deref().is_some_and(|t| t.contains("refunded"))
        })
        .await?;
        self.say(
            clicked,
            &format!(
                "{}'s payment refunded; the bot told them",
                customer.first_name
            ),
        );
        Ok(())
    }

    /// The admin's `/stats` text.
    pub async fn admin_stats(&self) -> anyhow::Result<String> {
        let admin = TestUser::new(ADMIN_ID, "Admin", "en");
        let asked = self.sandbox.send_text(&admin, "/stats").await?;
        let stats = self
            .next(&admin, asked, "/stats", |m| {
                m.text.as_deref().is_some_and(|t| t.contains("Payments"))
            })
            .await?;
        Ok(stats.text.unwrap_or_default())
    }

    /// The demo's story: Anna pays with YooKassa, Boris with Stars, Chen with USDT, Dasha by
    /// card inside Telegram, and the admin refunds Boris.
    pub async fn four_purchases_and_a_refund(&self) -> anyhow::Result<Outcome> {
        let anna = TestUser::new(700_001, "Anna", "en");
        let anna_link = self.pay_yookassa(&anna, "month_1").await?;
        let boris = TestUser::new(700_002, "Boris", "en");
        let (boris_link, payload, stars, pre_checkout_ms) =
            self.pay_in_telegram(&boris, "month_3", "XTR").await?;
        let chen = TestUser::new(700_003, "Chen", "en");
        let (chen_link, usdt_micro) = self.pay_usdt(&chen, "month_6").await?;
        let dasha = TestUser::new(700_004, "Dasha", "ru");
        let (dasha_link, _, card_kopecks, _) =
            self.pay_in_telegram(&dasha, "month_1", "RUB").await?;
        self.refund(&payload, &boris).await?;
        Ok(Outcome {
            links: vec![anna_link, boris_link, chen_link, dasha_link],
            refunded_payment: payload,
            stars_amount: stars,
            usdt_micro,
            card_kopecks,
            pre_checkout_ms,
        })
    }
}
