//! The four service binaries and the sandbox as separate processes on PostgreSQL and
//! RabbitMQ: every process becomes ready on the shared environment and stops cleanly on
//! SIGTERM; three customers pay three ways through the bot and one is refunded; with two
//! workers and two marzban-syncs, 200 payments extend every subscription exactly once. The
//! customer and exactly-once tests run on each panel (Marzban, PasarGuard, Remnawave).

use std::time::Duration;

use e2e::audit::{audit, create_payment};
use e2e::cluster::{Cluster, ClusterConfig, PanelKind, SERVICE_TOKEN};
use e2e::customers::{Script, is_activation};
use futures::StreamExt;
use sandbox::telegram::{PhotoSent, TestUser};

/// Two payment-workers and two marzban-syncs, on `panel`.
async fn scaled_out(panel: PanelKind) -> Cluster {
    Cluster::start(ClusterConfig {
        workers: 2,
        syncs: 2,
        panel,
        ..ClusterConfig::default()
    })
    .await
    .expect("every process becomes ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_run_as_separate_processes_and_stop_cleanly() {
    let cluster = scaled_out(PanelKind::Marzban).await;

    let created = reqwest::Client::new()
        .post(format!("http://{}/api/payments", cluster.gateway.addr))
        .bearer_auth(SERVICE_TOKEN)
        .header("Idempotency-Key", "e2e-smoke-1")
        .json(&serde_json::json!({
            "telegram_id": 800_001,
            "tariff_code": "month_1",
            "provider": "yookassa",
        }))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(created.status(), 201);
    let payment: serde_json::Value = created.json().await.unwrap();
    assert_eq!(payment["status"], "pending");
    assert_eq!(payment["amount"]["value"], "199.00");
    assert!(
        payment["confirmation_url"]
            .as_str()
            .is_some_and(|u| u.contains("/checkout/"))
    );

    cluster
        .stop()
        .await
        .expect("every service exits 0 on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_customers_pay_with_yookassa_stars_usdt_and_a_card_in_telegram_and_the_admin_refunds_one()
 {
    four_customers_and_a_refund(PanelKind::Marzban).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_pasarguard_four_customers_pay_four_ways_and_the_admin_refunds_one() {
    four_customers_and_a_refund(PanelKind::Pasarguard).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_remnawave_four_customers_pay_four_ways_and_the_admin_refunds_one() {
    four_customers_and_a_refund(PanelKind::Remnawave).await;
}

async fn four_customers_and_a_refund(panel: PanelKind) {
    let cluster = Cluster::start(ClusterConfig {
        panel,
        ..ClusterConfig::default()
    })
    .await
    .expect("every process becomes ready");
    let script = Script::new(cluster.sandbox_client(), false);

    let outcome = script
        .four_purchases_and_a_refund()
        .await
        .expect("every customer gets access and the refund goes through");

    assert_eq!(outcome.links.len(), 4);
    // Remnawave's links are `https://<SUB_PUBLIC_DOMAIN>/<shortUuid>`, the others' `…/sub/<token>`.
    let link_shape = match panel {
        PanelKind::Remnawave => "https://sub.example.com/",
        PanelKind::Marzban | PanelKind::Pasarguard => "/sub/",
    };
    assert!(
        outcome.links.iter().all(|l| l.contains(link_shape)),
        "{panel} links: {:?}",
        outcome.links
    );
    assert_eq!(outcome.stars_amount, 400, "month_3 costs 400 Stars");
    // 6.90 USDT plus the invoice's unique cents.
    assert_eq!(
        outcome.usdt_micro / 10_000,
        1_250,
        "month_6 costs 12.50 USDT"
    );
    assert_eq!(
        outcome.card_kopecks, 19_900,
        "month_1 costs 199.00 RUB by card"
    );
    let report = audit(&cluster.db.conn).await.expect("audit");
    assert_eq!(report.payments, 4);
    assert_eq!(report.succeeded, 3, "three paid, one refunded");
    assert_eq!(report.grants, 4, "one ledger grant per payment");
    let users = cluster.sandbox_client().panel_users().await.expect("panel");
    assert_eq!(users.len(), 4, "one {panel} user per customer");
    let stats = script.admin_stats().await.expect("/stats");
    assert!(stats.contains("Payments"), "{stats}");

    cluster.stop().await.expect("every service exits 0");
}

const USERS: i64 = 50;
/// Fewer on PasarGuard and Remnawave: the same concurrency per user, a quarter of the cost.
const PANEL_USERS: i64 = 12;
const PAYMENTS_PER_USER: i64 = 4;

/// (tariff, days) of a user's `n`-th payment: four tariffs, so a user's four checkouts at the
/// same time are four payments (a second press for the same tariff and provider returns the
/// open checkout instead).
fn tariff(n: i64) -> (&'static str, i64) {
    match n % 4 {
        0 => ("month_1", 30),
        1 => ("month_3", 90),
        2 => ("month_6", 180),
        _ => ("month_12", 365),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_and_two_syncs_extend_every_subscription_exactly_once_per_payment() {
    exactly_once_scaled_out(PanelKind::Marzban, USERS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_pasarguard_two_workers_and_two_syncs_extend_every_subscription_exactly_once() {
    exactly_once_scaled_out(PanelKind::Pasarguard, PANEL_USERS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_remnawave_two_workers_and_two_syncs_extend_every_subscription_exactly_once() {
    exactly_once_scaled_out(PanelKind::Remnawave, PANEL_USERS).await;
}

/// `count` users paying four times each at the same time, on `panel`.
async fn exactly_once_scaled_out(panel: PanelKind, count: i64) {
    let cluster = scaled_out(panel).await;
    let sandbox = cluster.sandbox_client();
    let users: Vec<TestUser> = (0..count)
        .map(|i| TestUser::new(810_000 + i, &format!("User {i}"), "en"))
        .collect();
    // Each user has talked to the bot, so it may write to them.
    for user in &users {
        let start = sandbox.send_text(user, "/start").await.expect("/start");
        sandbox
            .wait_for_message(user.id, Duration::from_secs(30), |m| m.message_id > start)
            .await
            .expect("messages")
            .expect("the bot answers /start");
    }

    // 200 payments, a user's four at the same time: created through the gateway and paid on
    // the YooKassa checkout, which notifies the gateway.
    let http = reqwest::Client::new();
    let gateway = cluster.gateway.addr.clone();
    let jobs = users
        .iter()
        .flat_map(|u| (0..PAYMENTS_PER_USER).map(move |n| (u.id, n)));
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(jobs)
        .map(|(telegram_id, n)| {
            let (http, gateway, sandbox) = (&http, &gateway, &sandbox);
            async move {
                let key = format!("scale-{telegram_id}-{n}");
                let created = create_payment(http, gateway, telegram_id, tariff(n).0, &key).await?;
                sandbox.yookassa_pay(&created.provider_payment_id).await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for result in results {
        result.expect("created and paid");
    }

    // Every user gets one activation message per payment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut waiting: Vec<&TestUser> = users.iter().collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for user in waiting {
            let messages = sandbox.messages(user.id).await.expect("messages");
            let activations = messages.iter().filter(|m| is_activation(m)).count();
            if (activations as i64) < PAYMENTS_PER_USER {
                still.push(user);
            }
        }
        waiting = still;
        assert!(
            waiting.is_empty() || tokio::time::Instant::now() < deadline,
            "{} users still wait for activations, e.g. {}",
            waiting.len(),
            waiting[0].id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let any duplicate that is on its way arrive before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let report = audit(&cluster.db.conn).await.expect("audit");
    let total = count * PAYMENTS_PER_USER;
    assert_eq!(report.payments, total);
    assert_eq!(report.succeeded, total, "every payment completed");
    assert_eq!(
        report.grants, total,
        "one ledger grant per completed payment"
    );
    assert_eq!(report.payments_granted_twice, 0);
    assert_eq!(report.subscriptions.len(), count as usize);
    let days_paid: i64 = (0..PAYMENTS_PER_USER).map(|n| tariff(n).1).sum();
    let on_panel = sandbox.panel_expiries().await.expect("panel users");
    assert_eq!(
        on_panel.len(),
        count as usize,
        "one {panel} user per subscriber"
    );
    for sub in &report.subscriptions {
        assert_eq!(sub.grants, PAYMENTS_PER_USER, "{sub:?}");
        assert_eq!(sub.days_granted, days_paid, "{sub:?}");
        assert!(
            (sub.days_covered() - days_paid as f64).abs() < 1.0 / 86_400.0 * 2.0,
            "the expiry is the first grant's start plus every paid day: {sub:?}"
        );
        let expire = on_panel[&sub.marzban_username];
        assert!(
            (expire as f64 - sub.expires_at).abs() <= 1.0,
            "the {panel} expiry {expire} is the ledger's: {sub:?}"
        );
    }
    for user in &users {
        let messages = sandbox.messages(user.id).await.expect("messages");
        let activations = messages.iter().filter(|m| is_activation(m)).count();
        assert_eq!(
            activations as i64, PAYMENTS_PER_USER,
            "no duplicate activation messages for {}",
            user.id
        );
        // The panel answers each renewal with a new link (Marzban, PasarGuard) but the
        // customer keeps the first: its QR code is uploaded once, then sent by file_id.
        let uploads = messages
            .iter()
            .filter(|m| is_activation(m))
            .filter(|m| matches!(m.photo, Some(PhotoSent::Upload { .. })))
            .count();
        assert_eq!(uploads, 1, "one QR upload for {}'s renewals", user.id);
    }

    cluster.stop().await.expect("every service exits 0");
}
