//! acpctl end to end: the built binary against real PostgreSQL and RabbitMQ, with the
//! YooKassa and Marzban emulators. Each command's happy path and its bad input; `--json`
//! output parses.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use chrono::Utc;
use domain::entities::{payments, subscription_grants, subscriptions, tariffs, users};
use domain::money::{Currency, Money};
use domain::{IdempotencyKey, PaymentId, PaymentStatus};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use messaging::topology::system_consumers;
use messaging::{DeliverySource, QueueType, RabbitBus, RabbitConfig};
use payment_core::providers::yookassa::YooKassaSettings;
use payment_core::{CreatePaymentRequest, PaymentService, PaymentSettings};
use sandbox::{marzban, yookassa};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::Value;
use service_kit::runtime::Infra;
use service_kit::settings::{Source, load_common};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;

/// Runs the built binary with exactly `env` (plus PATH), in an empty directory so that no
/// `.env` of the working tree is read.
async fn acpctl(env: &[(&str, String)], args: &[&str]) -> Output {
    let dir = scratch_dir();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_acpctl"));
    command.args(args).current_dir(&dir).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("acpctl finishes within 60 s")
        .expect("acpctl runs");
    // `-- --nocapture` shows each run as an operator would see it.
    println!(
        "$ acpctl {}   # exit {:?}\n{}{}",
        args.join(" "),
        output.status.code(),
        stdout(&output),
        stderr(&output)
    );
    output
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("acpctl-tests");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit status 0 and the JSON document on stdout.
fn json_ok(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

/// The exit status and one clear line on stderr: no panic, no backtrace.
fn refused(output: &Output, code: i32, says: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(says), "{err:?} should say {says:?}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

/// Puts a message into a parking queue the way the runner parks one.
async fn park(bus: &RabbitBus, consumer: &str, id: &str, routing_key: &str, body: &[u8]) {
    let channel = bus.channel().await.unwrap();
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    headers.insert("x-acp-attempt".into(), AMQPValue::LongLongInt(6));
    headers.insert("x-acp-error".into(), text("Marzban unavailable: 502"));
    headers.insert("x-acp-routing-key".into(), text(routing_key));
    headers.insert("x-acp-parked-at".into(), text(&Utc::now().to_rfc3339()));
    headers.insert("x-acp-consumer".into(), text(consumer));
    channel
        .basic_publish(
            "".into(),
            bus.names().parking_queue(consumer).as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_message_id(id.into())
                .with_headers(headers)
                .with_delivery_mode(2),
        )
        .await
        .unwrap();
    channel.close(200, "done".into()).await.ok();
    for _ in 0..100 {
        if bus.parking_count(consumer).await.unwrap() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the message did not reach {consumer}'s parking queue");
}

#[tokio::test]
async fn parked_messages_are_listed_shown_and_replayed_with_their_id() {
    let prefix = testkit::unique_prefix("acpctl");
    let bus = RabbitBus::connect(
        RabbitConfig::new(testkit::amqp_url(), prefix.clone()).with_queue_type(QueueType::Classic),
    )
    .await
    .unwrap();
    for consumer in system_consumers() {
        bus.declare(&consumer).await.unwrap();
    }
    let env = [
        ("AMQP_URL", testkit::amqp_url()),
        ("AMQP_PREFIX", prefix.clone()),
        ("AMQP_QUEUE_TYPE", "classic".to_owned()),
    ];
    let id = uuid::Uuid::now_v7().to_string();
    let body = br#"{"event_id":"x","note":"not a real envelope"}"#;
    park(&bus, "marzban-sync", &id, "payment.completed", body).await;

    let listed = json_ok(&acpctl(&env, &["parked", "list", "--json"]).await);
    let queues = listed["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 3);
    let sync = queues
        .iter()
        .find(|q| q["consumer"] == "marzban-sync")
        .unwrap();
    assert_eq!(sync["count"], 1);
    assert_eq!(sync["messages"][0]["id"], id.as_str());
    assert_eq!(sync["messages"][0]["attempts"], 6);
    assert_eq!(sync["messages"][0]["routing_key"], "payment.completed");
    let text = acpctl(&env, &["parked", "list", "--queue", "marzban-sync"]).await;
    assert!(stdout(&text).contains(&id), "{}", stdout(&text));

    let shown = json_ok(&acpctl(&env, &["parked", "show", &id, "--json"]).await);
    assert_eq!(shown["error"], "Marzban unavailable: 502");
    assert_eq!(shown["body"]["note"], "not a real envelope");
    assert_eq!(shown["queue"], format!("{prefix}.marzban-sync.parking"));

    refused(
        &acpctl(&env, &["parked", "show", "no-such-id"]).await,
        1,
        "no parked message with id `no-such-id`",
    );
    refused(
        &acpctl(&env, &["parked", "replay", "--all", "--queue", "nope"]).await,
        2,
        "unknown queue `nope`",
    );
    refused(
        &acpctl(&env, &["parked", "replay", "no-such-id", "--queue", "bot"]).await,
        1,
        "no parked message",
    );
    // Neither an id nor --all: clap's usage error.
    assert_eq!(
        acpctl(&env, &["parked", "replay"]).await.status.code(),
        Some(2)
    );

    let replayed = json_ok(&acpctl(&env, &["parked", "replay", &id, "--json"]).await);
    assert_eq!(replayed["total"], 1);
    assert_eq!(bus.parking_count("marzban-sync").await.unwrap(), 0);
    // Back in the work queue with its original message id and a fresh attempt count.
    let channel = bus.channel().await.unwrap();
    let mut got = None;
    for _ in 0..100 {
        got = channel
            .basic_get(
                bus.names().queue("marzban-sync").as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = got
        .expect("the replayed copy is in the work queue")
        .delivery;
    assert_eq!(
        got.properties.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(got.data, body);
    let attempt = got.properties.headers().as_ref().unwrap().inner()["x-acp-attempt"].clone();
    assert_eq!(attempt, AMQPValue::LongLongInt(0));
    channel.close(200, "done".into()).await.ok();

    let again = json_ok(&acpctl(&env, &["parked", "replay", "--all", "--json"]).await);
    assert_eq!(again["total"], 0);

    // No broker configured (the standalone mode), and a broker that is down.
    refused(&acpctl(&[], &["parked", "list"]).await, 2, "no broker");
    refused(
        &acpctl(
            &[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f".to_owned())],
            &["parked", "list", "--json"],
        )
        .await,
        1,
        "cannot reach the broker at amqp://guest:***@127.0.0.1:1",
    );

    for consumer in system_consumers() {
        bus.delete_consumer(&consumer).await.unwrap();
    }
    bus.delete_exchange().await.unwrap();
    bus.close().await;
}

const PRICE: i64 = 19_900;

async fn user_and_tariff(db: &sea_orm::DatabaseConnection) -> (users::Model, tariffs::Model) {
    let n = (uuid::Uuid::now_v7().as_u128() % 1_000_000_000_000) as i64 + 1;
    let user = users::ActiveModel {
        id: NotSet,
        telegram_id: Set(n),
        username: Set(Some(format!("u{n}"))),
        first_name: Set(None),
        language_code: Set(Some("en".into())),
        created_at: Set(Utc::now()),
    }
    .insert(db)
    .await
    .unwrap();
    let tariff = tariffs::ActiveModel {
        id: NotSet,
        code: Set(format!("month_1_{n}")),
        title: Set("1 month".into()),
        duration_days: Set(30),
        data_limit_bytes: Set(None),
        price_rub_minor: Set(Some(PRICE)),
        price_xtr: Set(None),
        price_usdt_minor: Set(None),
        active: Set(true),
        sort_order: Set(1),
    }
    .insert(db)
    .await
    .unwrap();
    (user, tariff)
}

/// A pending payment of ours, created on the YooKassa emulator.
async fn pending_payment(
    db: &sea_orm::DatabaseConnection,
    shop: &yookassa::Handle,
) -> (users::Model, payments::Model) {
    let (user, tariff) = user_and_tariff(db).await;
    let mut settings = YooKassaSettings::new("100500", "test_sandbox_secret");
    settings.api_url = shop.api_url();
    settings.test_mode = true;
    let service = PaymentService::from_settings(&PaymentSettings {
        yookassa: Some(settings),
        ..PaymentSettings::default()
    })
    .unwrap();
    let id = PaymentId::new();
    let amount = Money::new(PRICE, Currency::Rub);
    let created = service
        .create_payment(
            payment_core::providers::yookassa::ID,
            &CreatePaymentRequest {
                payment_id: id,
                amount,
                description: "VPN, 30 days".into(),
                metadata: Default::default(),
                return_url: None,
                receipt_email: None,
                recurring: Default::default(),
            },
        )
        .await
        .unwrap();
    let now = Utc::now();
    let payment = payments::ActiveModel {
        id: Set(id),
        user_id: Set(user.id),
        tariff_id: Set(tariff.id),
        provider: Set(domain::ProviderId::from_static("yookassa")),
        amount_minor: Set(PRICE),
        currency: Set(Currency::Rub),
        status: Set(PaymentStatus::Pending),
        provider_payment_id: Set(Some(created.provider_payment_id)),
        idempotency_key: Set(IdempotencyKey::random().into_inner()),
        confirmation_url: Set(None),
        failure_reason: Set(None),
        metadata: Set(serde_json::json!({})),
        created_at: Set(now),
        updated_at: Set(now),
        completed_at: Set(None),
        expires_at: Set(None),
        refunded_minor: Set(0),
        flagged: Set(false),
        flag_reason: Set(None),
        next_check_at: Set(None),
        check_attempts: Set(0),
    }
    .insert(db)
    .await
    .unwrap();
    (user, payment)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_show_and_drift_on_postgres_with_the_emulators() {
    let db = TestDb::new().await;
    let shop = yookassa::spawn(yookassa::Config::default()).await.unwrap();
    let panel = marzban::spawn(marzban::Config::default()).await.unwrap();
    let panel_url = panel.base_url.clone();
    let env = vec![
        ("DATABASE_URL", db.url.clone()),
        ("YOOKASSA_SHOP_ID", "100500".to_owned()),
        ("YOOKASSA_SECRET_KEY", "test_sandbox_secret".to_owned()),
        ("YOOKASSA_API_URL", shop.api_url()),
        ("YOOKASSA_TEST_MODE", "true".to_owned()),
        ("MARZBAN_URL", panel_url.clone()),
        ("MARZBAN_USERNAME", "admin".to_owned()),
        ("MARZBAN_PASSWORD", "admin-password".to_owned()),
    ];
    let (user, payment) = pending_payment(&db.conn, &shop).await;
    let provider_id = payment.provider_payment_id.clone().unwrap();

    // Still pending at YooKassa: reconcile asks and changes nothing.
    let pending = json_ok(&acpctl(&env, &["reconcile", &payment.id.to_string(), "--json"]).await);
    assert_eq!(pending["outcome"], "pending");
    assert_eq!(pending["after"], "pending");

    // Paid, and the notification lost: reconcile by the provider's id completes it.
    shop.pay(&provider_id).unwrap();
    let text = acpctl(&env, &["reconcile", &provider_id]).await;
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    assert!(
        stdout(&text).contains("pending -> succeeded (applied)"),
        "{}",
        stdout(&text)
    );

    // marzban-sync (in-process bus, same database) turns the completion into panel access.
    let common = load_common(&Source::map([
        ("DATABASE_URL", db.url.as_str()),
        ("RUN_MIGRATIONS", "false"),
    ]))
    .unwrap();
    let infra = Infra::embedded("acpctl-test", &common).await.unwrap();
    let settings = marzban_sync::ServiceSettings::from_vars(
        &[
            ("marzban_url", panel_url.as_str()),
            ("marzban_username", "admin"),
            ("marzban_password", "admin-password"),
            ("marzban_sync_ops_bind", "127.0.0.1:0"),
            ("marzban_drift_check_secs", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let service = marzban_sync::start(&settings, &infra, shutdown.clone())
        .await
        .unwrap();
    let mut granted = false;
    for _ in 0..200 {
        let synced = subscriptions::Entity::find()
            .filter(subscriptions::Column::UserId.eq(user.id))
            .one(&db.conn)
            .await
            .unwrap()
            .is_some_and(|s| s.synced_at.is_some());
        if synced {
            granted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(granted, "marzban-sync provisioned the payment");

    let shown = json_ok(&acpctl(&env, &["payment", "show", &provider_id, "--json"]).await);
    assert_eq!(shown["payment"]["status"], "succeeded");
    let sources: Vec<&str> = shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    for source in ["log", "outbox", "ledger"] {
        assert!(sources.contains(&source), "{source} in {sources:?}");
    }
    assert_eq!(shown["ledger"].as_array().unwrap().len(), 1);
    assert_eq!(shown["panel"]["state"], "found");
    assert_eq!(shown["panel"]["in_sync"], true);
    let text = acpctl(&env, &["payment", "show", &payment.id.to_string()]).await;
    assert!(
        stdout(&text).contains("payment.completed"),
        "{}",
        stdout(&text)
    );

    let telegram = user.telegram_id.to_string();
    let person = json_ok(&acpctl(&env, &["user", "show", &telegram, "--json"]).await);
    assert_eq!(person["payments"].as_array().unwrap().len(), 1);
    assert_eq!(person["ledger"][0]["days_granted"], 30);
    assert_eq!(person["panel"]["status"], "active");
    let text = acpctl(&env, &["user", "show", &telegram]).await;
    assert!(
        stdout(&text).contains("panel matches the ledger"),
        "{}",
        stdout(&text)
    );

    // An admin's hand edit on the panel: check finds it (exit 1), repair fixes it.
    let checked = json_ok(&acpctl(&env, &["drift", "check", "--json"]).await);
    assert_eq!(checked["drifted"], 0);
    let username = person["subscription"]["marzban_username"]
        .as_str()
        .unwrap()
        .to_owned();
    panel
        .emulator()
        .edit_user(&username, |u| u.expire = Some(1_000))
        .unwrap();
    let drifted = acpctl(&env, &["drift", "check", "--json"]).await;
    assert_eq!(drifted.status.code(), Some(1), "{}", stderr(&drifted));
    let drifted: Value = serde_json::from_slice(&drifted.stdout).unwrap();
    assert_eq!(drifted["drift"][0]["username"], username.as_str());
    let repaired = json_ok(&acpctl(&env, &["drift", "repair", "--json"]).await);
    assert_eq!(repaired["repaired"], 1);
    assert_eq!(
        json_ok(&acpctl(&env, &["drift", "check", "--json"]).await)["drifted"],
        0
    );
    let grants = subscription_grants::Entity::find()
        .filter(subscription_grants::Column::PaymentId.eq(payment.id))
        .all(&db.conn)
        .await
        .unwrap();
    assert_eq!(grants.len(), 1, "the repair added no days");

    // Bad input: one line, non-zero.
    let unknown = uuid::Uuid::now_v7().to_string();
    refused(
        &acpctl(&env, &["payment", "show", &unknown]).await,
        1,
        "no payment with id or provider payment id",
    );
    refused(
        &acpctl(&env, &["reconcile", &unknown]).await,
        1,
        "no payment",
    );
    refused(
        &acpctl(&env, &["payment", "show", "two words"]).await,
        2,
        "malformed payment id",
    );
    refused(
        &acpctl(&env, &["user", "show", "12x"]).await,
        2,
        "malformed Telegram id",
    );
    refused(
        &acpctl(&env, &["user", "show", "987654321987"]).await,
        1,
        "no user with Telegram id 987654321987",
    );
    let no_panel: Vec<_> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("MARZBAN"))
        .cloned()
        .collect();
    refused(
        &acpctl(&no_panel, &["drift", "check"]).await,
        2,
        "PANEL_URL is missing",
    );
    let no_provider: Vec<_> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("YOOKASSA"))
        .cloned()
        .collect();
    refused(
        &acpctl(&no_provider, &["reconcile", &provider_id]).await,
        1,
        "provider `yookassa` is not configured here",
    );
    refused(
        &acpctl(&[], &["payment", "show", &unknown]).await,
        2,
        "setting DATABASE_URL is missing",
    );
    refused(
        &acpctl(
            &[(
                "DATABASE_URL",
                "postgres://postgres:secret@127.0.0.1:1/acp".to_owned(),
            )],
            &["user", "show", "1"],
        )
        .await,
        1,
        "cannot reach the database at postgres://postgres:***@127.0.0.1:1/acp",
    );

    shutdown.cancel();
    service.server.task.await.ok();
    infra.stop().await;
}
