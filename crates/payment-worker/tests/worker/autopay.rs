//! Automatic renewal with a saved YooKassa card, on PostgreSQL and the YooKassa emulator: the
//! payment made with "renew automatically" saves the card; a day before the expiry the
//! subscription's period is charged exactly once (however often the loop runs) and completes
//! like any payment; declines are counted with their reason and three in a row turn autopay
//! off.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::entities::{payments, saved_methods, subscriptions};
use domain::{PaymentId, PaymentStatus};
use payment_core::{CreatePaymentRequest, PaymentService, PaymentSettings, Recurring};
use payment_worker::autopay::{Autopay, AutopaySettings};
use payment_worker::{ReconcileSettings, Reconciler, WorkerHost};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, NotSet,
    QueryFilter,
};
use tokio::sync::Notify;

use crate::helpers::*;

fn service(env: &Env) -> Arc<PaymentService> {
    Arc::new(
        PaymentService::from_settings(&PaymentSettings {
            yookassa: Some(yookassa_settings(&env.shop)),
            ..PaymentSettings::default()
        })
        .expect("service"),
    )
}

/// A paid payment made with "renew automatically", settled by the worker.
async fn paid_with_autopay(env: &Env, providers: &Arc<PaymentService>) -> payments::Model {
    let payment_id = PaymentId::new();
    let created = env
        .service
        .create_payment(
            payment_core::providers::yookassa::ID,
            &CreatePaymentRequest {
                payment_id,
                amount: domain::Money::new(PRICE, domain::Currency::Rub),
                description: "VPN, 30 days".into(),
                metadata: Default::default(),
                return_url: None,
                receipt_email: None,
                recurring: Recurring::SaveMethod,
            },
        )
        .await
        .expect("created on the emulator");
    let payment = insert_payment(
        &env.db.conn,
        payment_id,
        domain::Money::new(PRICE, domain::Currency::Rub),
        Some(created.provider_payment_id.clone()),
        |_| {},
    )
    .await;
    env.shop.pay(&created.provider_payment_id).expect("paid");
    let reconciler = Reconciler::new(
        env.db.conn.clone(),
        providers.clone(),
        ReconcileSettings::default(),
        Arc::new(Notify::new()),
    );
    assert_eq!(
        reconciler.check_now(payment.id).await.expect("checked"),
        Some("applied")
    );
    payment
}

async fn method(db: &DatabaseConnection, user_id: i64) -> saved_methods::Model {
    saved_methods::Entity::find()
        .filter(saved_methods::Column::UserId.eq(user_id))
        .one(db)
        .await
        .expect("read")
        .expect("a saved method")
}

/// The user's subscription, expiring `hours` from now (a new period each call).
async fn expiring(db: &DatabaseConnection, user_id: i64, hours: i64) -> subscriptions::Model {
    let expires_at = Utc::now() + chrono::Duration::hours(hours);
    let existing = subscriptions::Entity::find()
        .filter(subscriptions::Column::UserId.eq(user_id))
        .one(db)
        .await
        .expect("read");
    let now = Utc::now();
    match existing {
        Some(row) => {
            let mut row: subscriptions::ActiveModel = row.into();
            row.expires_at = Set(expires_at);
            row.update(db).await.expect("moved")
        }
        None => subscriptions::ActiveModel {
            id: NotSet,
            user_id: Set(user_id),
            marzban_username: Set(format!("tg_{user_id}")),
            expires_at: Set(expires_at),
            data_limit_bytes: Set(None),
            status: Set("active".into()),
            subscription_url: Set(None),
            synced_at: Set(None),
            sync_error: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(db)
        .await
        .expect("subscription"),
    }
}

async fn renewals(db: &DatabaseConnection, user_id: i64) -> Vec<payments::Model> {
    payments::Entity::find()
        .filter(payments::Column::UserId.eq(user_id))
        .filter(payments::Column::IdempotencyKey.starts_with("autopay:"))
        .all(db)
        .await
        .expect("read")
}

#[tokio::test]
async fn a_saved_card_renews_each_period_once_and_three_declines_turn_autopay_off() {
    let env = env().await;
    let db = &env.db.conn;
    let providers = service(&env);
    let first = paid_with_autopay(&env, &providers).await;
    let saved = method(db, first.user_id).await;
    assert_eq!(saved.title, "Bank card *4477");
    assert!(saved.autopay);
    assert_eq!(saved.tariff_id, first.tariff_id);

    let host = Arc::new(WorkerHost::new(
        db.clone(),
        providers.clone(),
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    ));
    let autopay = Autopay::new(
        db.clone(),
        providers.clone(),
        host,
        AutopaySettings {
            lead: Duration::from_secs(24 * 3600),
            ..AutopaySettings::default()
        },
    );

    // Two days out: not yet.
    expiring(db, first.user_id, 48).await;
    assert_eq!(autopay.run_once(Utc::now()).await.expect("poll").charged, 0);

    // A day out: charged once, however often the loop runs.
    let period = expiring(db, first.user_id, 12).await;
    let report = autopay.run_once(Utc::now()).await.expect("poll");
    assert_eq!(report.charged, 1);
    assert_eq!(autopay.run_once(Utc::now()).await.expect("poll").charged, 0);
    let charged = renewals(db, first.user_id).await;
    assert_eq!(charged.len(), 1);
    let renewal = &charged[0];
    assert_eq!(renewal.status, PaymentStatus::Succeeded);
    assert_eq!(renewal.amount_minor, PRICE);
    assert_eq!(
        renewal.idempotency_key,
        format!("autopay:{}:{}", period.id, period.expires_at.timestamp())
    );
    assert_eq!(events(db, "payment.completed", renewal.id).await.len(), 1);
    let on_emulator = env
        .shop
        .payment(renewal.provider_payment_id.as_deref().unwrap())
        .expect("charged on the emulator");
    assert_eq!(
        on_emulator["payment_method"]["id"],
        saved.method_id.as_str()
    );
    assert!(on_emulator.get("confirmation").is_none());

    // The card is declined three periods in a row: counted with the reason, then autopay off.
    env.shop
        .script_method(&saved.method_id, Some("insufficient_funds"))
        .expect("scripted");
    for declines in 1..=3 {
        expiring(db, first.user_id, 12 + declines).await;
        assert_eq!(autopay.run_once(Utc::now()).await.expect("poll").charged, 1);
        let now = method(db, first.user_id).await;
        assert_eq!(now.declines, i32::try_from(declines).unwrap());
        assert_eq!(now.last_decline.as_deref(), Some("insufficient_funds"));
        assert_eq!(now.autopay, declines < 3, "after {declines} declines");
    }
    let failed = renewals(db, first.user_id).await;
    assert_eq!(
        failed
            .iter()
            .filter(|p| p.status == PaymentStatus::Failed)
            .count(),
        3
    );
    for payment in failed.iter().filter(|p| p.status == PaymentStatus::Failed) {
        assert_eq!(events(db, "payment.failed", payment.id).await.len(), 1);
    }
    expiring(db, first.user_id, 20).await;
    assert_eq!(
        autopay.run_once(Utc::now()).await.expect("poll").charged,
        0,
        "autopay is off"
    );
}

/// Periods already charged or declined stay in the window until they end; the loop pages
/// through the whole window, so they never hide the periods after them (here pages of one).
#[tokio::test]
async fn decided_periods_do_not_hide_the_next_ones() {
    let env = env().await;
    let db = &env.db.conn;
    let providers = service(&env);
    let declined = paid_with_autopay(&env, &providers).await;
    let due = paid_with_autopay(&env, &providers).await;
    env.shop
        .script_method(
            &method(db, declined.user_id).await.method_id,
            Some("card_expired"),
        )
        .expect("scripted");
    expiring(db, declined.user_id, 10).await;
    expiring(db, due.user_id, 12).await;
    let host = Arc::new(WorkerHost::new(
        db.clone(),
        providers.clone(),
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    ));
    let autopay = Autopay::new(
        db.clone(),
        providers,
        host,
        AutopaySettings {
            batch_size: 1,
            ..AutopaySettings::default()
        },
    );
    assert_eq!(autopay.run_once(Utc::now()).await.expect("poll").charged, 2);
    assert_eq!(autopay.run_once(Utc::now()).await.expect("poll").charged, 0);
    assert_eq!(
        renewals(db, due.user_id).await[0].status,
        PaymentStatus::Succeeded
    );
    assert_eq!(
        renewals(db, declined.user_id).await[0].status,
        PaymentStatus::Failed
    );
}
