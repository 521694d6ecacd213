//! `World`: the real gateway, worker and bot in-process on one fresh PostgreSQL database and
//! one bus (in-process, or RabbitMQ with `BOT_TESTS_BROKER=rabbitmq`), with the Telegram Bot
//! API emulator. marzban-sync is not started: tests
//! that need `subscription.activated` publish it themselves (see [`World::activate`]).

use domain::PaymentId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use domain::PaymentStatus;
use domain::entities::{outbox, payments, provider_notifications, refunds};
use messaging::Envelope;
use messaging::events::{SubscriptionActivated, SubscriptionChange};
use sandbox::telegram::{SentMessage, TestUser};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use service_kit::Shutdown;
use service_kit::runtime::Infra;
use service_kit::settings::Source;
use testkit::TestDb;

pub const SERVICE_TOKEN: &str = "svc-token-for-bot-tests-0123456789abcdef";
pub const ADMIN_TOKEN: &str = "admin-token-for-bot-tests-0123456789abcdef";
pub const ADMIN_ID: i64 = 9_000_001;
pub const WAIT: Duration = Duration::from_secs(20);

pub struct World {
    pub db: TestDb,
    pub tg: sandbox::telegram::Handle,
    pub infra: Infra,
    pub vars: HashMap<String, String>,
    shutdown: Shutdown,
    bot: Option<(bot::Service, Shutdown)>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some((service, shutdown)) = &self.bot {
            if let Some(poller) = &service.poller {
                poller.abort();
            }
            shutdown.cancel();
        }
        if on_rabbitmq() {
            // So test runs do not pile up queues on the broker.
            service_kit::testing::delete_system_topology_blocking(
                &testkit::amqp_url(),
                &self.vars["AMQP_PREFIX"],
            );
        }
    }
}

/// `BOT_TESTS_BROKER=rabbitmq` runs the flows over RabbitMQ instead of the in-process bus.
fn on_rabbitmq() -> bool {
    std::env::var("BOT_TESTS_BROKER").as_deref() == Ok("rabbitmq")
}

/// Gateway + worker + bot, Telegram Stars on.
pub async fn world() -> World {
    world_with(&[]).await
}

/// Like [`world`], with more (or other) environment variables.
pub async fn world_with(extra: &[(&str, String)]) -> World {
    let db = TestDb::new().await;
    let tg = sandbox::telegram::spawn(sandbox::telegram::Config::default())
        .await
        .expect("telegram emulator");
    let mut vars: HashMap<String, String> = [
        ("DATABASE_URL", db.url.clone()),
        ("AMQP_URL", testkit::amqp_url()),
        ("AMQP_PREFIX", testkit::unique_prefix("bot")),
        ("RUN_MIGRATIONS", "false".into()),
        ("GATEWAY_BIND", "127.0.0.1:0".into()),
        ("GATEWAY_OPS_BIND", "127.0.0.1:0".into()),
        ("GATEWAY_WORKERS", "2".into()),
        ("WORKER_OPS_BIND", "127.0.0.1:0".into()),
        ("BOT_OPS_BIND", "127.0.0.1:0".into()),
        ("API_SERVICE_TOKEN", SERVICE_TOKEN.into()),
        ("API_ADMIN_TOKEN", ADMIN_TOKEN.into()),
        ("TELEGRAM_BOT_TOKEN", tg.token().to_owned()),
        ("TELEGRAM_API_URL", tg.api_url()),
        ("TELEGRAM_POLL_TIMEOUT_SECS", "2".into()),
        ("ADMIN_TELEGRAM_IDS", ADMIN_ID.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (name, value) in extra {
        vars.insert((*name).to_owned(), value.clone());
    }
    let gateway_settings =
        api_gateway::Settings::load(&Source::Map(vars.clone())).expect("gateway settings");
    // The in-process bus by default (the same runner, relay and routing as RabbitMQ, without
    // depending on a shared broker); BOT_TESTS_BROKER=rabbitmq runs the flows over RabbitMQ.
    let infra = if on_rabbitmq() {
        Infra::connect("bot-tests", &gateway_settings.common).await
    } else {
        Infra::embedded("bot-tests", &gateway_settings.common).await
    }
    .expect("infra");
    let shutdown = Shutdown::new();
    let gateway = api_gateway::start(&gateway_settings.gateway, &infra, shutdown.clone())
        .await
        .expect("gateway starts");
    vars.insert("GATEWAY_URL".into(), format!("http://{}", gateway.addr));
    let worker_settings =
        payment_worker::Settings::load(&Source::Map(vars.clone())).expect("worker settings");
    payment_worker::start(&worker_settings.service, &infra, shutdown.clone())
        .expect("worker starts");
    let mut world = World {
        db,
        tg,
        infra,
        vars,
        shutdown,
        bot: None,
    };
    world.start_bot().await;
    world
}

impl World {
    pub async fn start_bot(&mut self) {
        let settings = bot::Settings::load(&Source::Map(self.vars.clone())).expect("bot settings");
        let shutdown = Shutdown::new();
        let service = bot::start(&settings.service, &self.infra, shutdown.clone())
            .await
            .expect("bot starts");
        self.bot = Some((service, shutdown));
    }

    /// The bot's ops address (`/health/ready`, `/metrics`).
    pub fn bot_ops_addr(&self) -> std::net::SocketAddr {
        let (service, _) = self.bot.as_ref().expect("the bot runs");
        service.server.addr.expect("an ops address")
    }

    /// Stops the bot's poller as a crash would: no graceful last confirmation of updates.
    pub fn kill_bot(&mut self) {
        if let Some((service, shutdown)) = self.bot.take() {
            if let Some(poller) = &service.poller {
                poller.abort();
            }
            shutdown.cancel();
        }
    }

    /// Waits for a message to `chat` newer than `after` that matches `pred`.
    pub async fn wait_new(
        &self,
        chat: i64,
        after: i64,
        pred: impl Fn(&SentMessage) -> bool,
    ) -> SentMessage {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self
                .tg
                .messages(chat)
                .into_iter()
                .find(|m| m.message_id > after && pred(m))
            {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no matching message to {chat} after {after}; got {:#?}",
                self.tg.messages(chat)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// /start → Buy → the tariff → `provider`/`currency`: returns the message the bot sent
    /// after the click (an invoice for Telegram) and the providers message.
    pub async fn checkout(
        &self,
        user: &TestUser,
        tariff: &str,
        provider: &str,
        currency: &str,
    ) -> (SentMessage, SentMessage) {
        let pay_data = format!("p:{tariff}:{provider}:{currency}");
        let providers = self.providers_menu(user, tariff, &pay_data).await;
        self.tg
            .press(user, providers.message_id, &pay_data)
            .expect("press pay");
        let after = self
            .wait_new(user.id, providers.message_id, |m| {
                m.invoice.is_some() || m.text.is_some()
            })
            .await;
        (after, providers)
    }

    /// /start → My subscription: the message, once it offers the button `data`.
    pub async fn my_subscription(&self, user: &TestUser, data: &str) -> SentMessage {
        let start = self.tg.send_text(user, "/start");
        let menu = self
            .wait_new(user.id, start, |m| {
                m.callback_data().contains(&"sub".to_owned())
            })
            .await;
        self.tg
            .press(user, menu.message_id, "sub")
            .expect("press My subscription");
        self.wait_new(user.id, menu.message_id, |m| {
            m.callback_data().iter().any(|d| d == data)
        })
        .await
    }

    /// /start → Buy → the tariff: the providers message, once it offers `pay_data`.
    pub async fn providers_menu(
        &self,
        user: &TestUser,
        tariff: &str,
        pay_data: &str,
    ) -> SentMessage {
        let start = self.tg.send_text(user, "/start");
        let menu = self
            .wait_new(user.id, start, |m| {
                m.callback_data().contains(&"buy".to_owned())
            })
            .await;
        self.tg
            .press(user, menu.message_id, "buy")
            .expect("press buy");
        let tariff_data = format!("t:{tariff}");
        let tariffs = self
            .wait_new(user.id, menu.message_id, |m| {
                m.callback_data().contains(&tariff_data)
            })
            .await;
        self.tg
            .press(user, tariffs.message_id, &tariff_data)
            .expect("press tariff");
        self.wait_new(user.id, tariffs.message_id, |m| {
            m.callback_data().iter().any(|d| d == pay_data)
        })
        .await
    }

    pub async fn payments_of(&self, telegram_id: i64) -> Vec<payments::Model> {
        let user = bot::store::user(&self.db.conn, telegram_id).await.unwrap();
        match user {
            Some(user) => payments::Entity::find()
                .filter(payments::Column::UserId.eq(user.id))
                .all(&self.db.conn)
                .await
                .unwrap(),
            None => Vec::new(),
        }
    }

    pub async fn payment(&self, id: PaymentId) -> payments::Model {
        payments::Entity::find_by_id(id)
            .one(&self.db.conn)
            .await
            .unwrap()
            .expect("payment exists")
    }

    pub async fn wait_status(&self, id: PaymentId, status: PaymentStatus) -> payments::Model {
        let deadline = Instant::now() + WAIT;
        loop {
            let payment = self.payment(id).await;
            if payment.status == status {
                return payment;
            }
            assert!(
                Instant::now() < deadline,
                "payment {id} stayed {} (wanted {status})",
                payment.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn inbox(&self) -> Vec<provider_notifications::Model> {
        provider_notifications::Entity::find()
            .filter(provider_notifications::Column::Provider.eq("telegram"))
            .all(&self.db.conn)
            .await
            .unwrap()
    }

    pub async fn outbox(&self, routing_key: &str) -> Vec<outbox::Model> {
        outbox::Entity::find()
            .filter(outbox::Column::RoutingKey.eq(routing_key))
            .all(&self.db.conn)
            .await
            .unwrap()
    }

    pub async fn refunds(&self, payment: PaymentId) -> Vec<refunds::Model> {
        refunds::Entity::find()
            .filter(refunds::Column::PaymentId.eq(payment))
            .all(&self.db.conn)
            .await
            .unwrap()
    }

    /// The running bot's notification consumer counters.
    pub fn consumer_stats(&self) -> std::sync::Arc<messaging::ConsumerStats> {
        self.bot
            .as_ref()
            .and_then(|(service, _)| service.consumer_stats.clone())
            .expect("the bot runs")
    }

    /// What marzban-sync would publish after provisioning the panel for `payment`; returns
    /// the event.
    pub async fn activate(&self, telegram_id: i64, payment: PaymentId, link: &str) -> Envelope {
        let event = SubscriptionActivated {
            subscription: SubscriptionChange {
                telegram_id,
                payment_id: payment,
                marzban_username: format!("tg_{telegram_id}"),
                expires_at: chrono::Utc::now() + chrono::Duration::days(30),
                subscription_url: link.to_owned(),
            },
        };
        let envelope = Envelope::new(&event, payment, None).expect("envelope");
        messaging::outbox::enqueue(&self.db.conn, &envelope)
            .await
            .expect("outbox");
        self.infra.outbox_nudge.notify_one();
        envelope
    }

    /// A full Stars purchase: checkout, pay, the worker completes it.
    pub async fn buy_with_stars(&self, user: &TestUser) -> (PaymentId, SentMessage) {
        let (invoice, _) = self.checkout(user, "month_1", "telegram", "XTR").await;
        let details = invoice.invoice.clone().expect("an invoice");
        let payment_id = PaymentId::parse(&details.payload).expect("payload is our payment id");
        let outcome = self.tg.pay_invoice(user, invoice.message_id).await.unwrap();
        assert!(
            matches!(outcome, sandbox::telegram::PayOutcome::Paid { .. }),
            "{outcome:?}"
        );
        self.wait_status(payment_id, PaymentStatus::Succeeded).await;
        (payment_id, invoice)
    }
}

impl World {
    /// A second `App` on the same database, settings and emulator — the bot's update handling
    /// without its poller, so a test can decide when (or whether) updates are confirmed.
    pub fn app(&self) -> bot::App {
        let settings = bot::Settings::load(&Source::Map(self.vars.clone())).expect("bot settings");
        let bot_settings = settings.service.telegram.expect("bot settings");
        let gateway = bot::gateway::Gateway::new(
            &bot_settings.gateway_url,
            bot_settings.service_token.clone(),
            bot_settings.admin_token.clone(),
            bot_settings.gateway_timeout,
        )
        .expect("gateway client");
        bot::App::new(
            bot::telegram_client(&bot_settings),
            self.db.conn.clone(),
            gateway,
            bot_settings.admin_ids.clone(),
            None,
            self.infra.outbox_nudge.clone(),
        )
    }
}
