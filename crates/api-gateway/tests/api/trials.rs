//! `POST /api/trials`: one free trial per Telegram user, by the database's UNIQUE key even
//! when two presses race; never for a customer who has paid or has a subscription; off while
//! `TRIAL_DAYS` is 0.

use domain::entities::{manual_grants, payments, subscriptions};
use domain::status::PaymentStatus;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::grants::counts;
use crate::helpers::{ADMIN_TOKEN, SERVICE_TOKEN, TestApp, created_payment, spawn_app};

const GIB: i64 = 1024 * 1024 * 1024;
const ON: &[(&str, &str)] = &[("TRIAL_DAYS", "3"), ("TRIAL_DATA_LIMIT_GB", "5")];

async fn post(app: &TestApp, token: &str, telegram_id: i64) -> reqwest::Response {
    app.http
        .post(app.url("/api/trials"))
        .bearer_auth(token)
        .json(&json!({"telegram_id": telegram_id, "first_name": "Ида", "language_code": "ru"}))
        .send()
        .await
        .expect("request")
}

async fn refused(response: reqwest::Response, reason: &str) {
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.starts_with(reason), "{body}");
}

#[tokio::test]
async fn two_concurrent_presses_of_a_new_user_write_one_trial() {
    let app = spawn_app(ON).await;
    let (first, second) = tokio::join!(
        post(&app, SERVICE_TOKEN, 7_230_501),
        post(&app, SERVICE_TOKEN, 7_230_501)
    );
    let mut statuses = [first.status().as_u16(), second.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409]);
    let won = if first.status() == 201 { first } else { second };
    let view: Value = won.json().await.unwrap();
    assert_eq!(
        (
            &view["telegram_id"],
            &view["days"],
            &view["data_limit_bytes"]
        ),
        (&json!(7_230_501), &json!(3), &json!(5 * GIB))
    );
    assert_eq!(counts(&app).await, (1, 1, 1));
    let row = manual_grants::Entity::find()
        .one(&app.db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            row.kind.as_str(),
            row.days,
            row.data_limit_bytes,
            row.granted_by,
            row.idempotency_key.as_str()
        ),
        ("trial", 3, Some(5 * GIB), None, "trial:7230501")
    );
    let event: Value =
        serde_json::from_str(&app.outbox_with_key("grant.created").await[0].envelope).unwrap();
    assert_eq!(
        (&event["payload"]["kind"], &event["payload"]["days"]),
        (&json!("trial"), &json!(3))
    );

    // A later press: refused, nothing more written.
    refused(post(&app, SERVICE_TOKEN, 7_230_501).await, "trial_taken").await;
    assert_eq!(counts(&app).await, (1, 1, 1));
}

#[tokio::test]
async fn a_customer_who_paid_or_has_a_subscription_gets_no_trial() {
    let app = spawn_app(ON).await;
    // A succeeded payment, even one refunded later, rules the trial out.
    let payment = created_payment(&app, "pay-1").await;
    let telegram_id = 123_456; // CREATE_BODY's customer
    let id = payment["payment_id"].as_str().unwrap().to_owned();
    refused_after(&app, &id, PaymentStatus::Refunded, telegram_id).await;
    // A pending payment alone does not.
    let pending = post(&app, SERVICE_TOKEN, 7_230_502).await;
    assert_eq!(pending.status(), 201);

    // A customer with a subscription (a panel user) but no trial and no payment.
    let (grants, _, _) = counts(&app).await;
    assert_eq!(grants, 1);
    let user = domain::entities::users::Entity::find()
        .filter(domain::entities::users::Column::TelegramId.eq(telegram_id))
        .one(&app.db.conn)
        .await
        .unwrap()
        .unwrap();
    payments::Entity::update_many()
        .col_expr(payments::Column::Status, Expr::value(PaymentStatus::Failed))
        .filter(payments::Column::UserId.eq(user.id))
        .exec(&app.db.conn)
        .await
        .unwrap();
    let now = chrono::Utc::now();
    subscriptions::Entity::insert(subscriptions::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        user_id: sea_orm::ActiveValue::Set(user.id),
        marzban_username: sea_orm::ActiveValue::Set(format!("tg_{telegram_id}")),
        expires_at: sea_orm::ActiveValue::Set(now),
        data_limit_bytes: sea_orm::ActiveValue::Set(None),
        status: sea_orm::ActiveValue::Set("active".into()),
        subscription_url: sea_orm::ActiveValue::Set(None),
        synced_at: sea_orm::ActiveValue::Set(Some(now)),
        sync_error: sea_orm::ActiveValue::Set(None),
        created_at: sea_orm::ActiveValue::Set(now),
        updated_at: sea_orm::ActiveValue::Set(now),
        ..Default::default()
    })
    .exec(&app.db.conn)
    .await
    .unwrap();
    refused(post(&app, SERVICE_TOKEN, telegram_id).await, "subscribed").await;
    assert_eq!(counts(&app).await, (1, 1, 1));
}

/// Marks the payment `id` as `status` and checks that its customer is refused a trial.
async fn refused_after(app: &TestApp, id: &str, status: PaymentStatus, telegram_id: i64) {
    payments::Entity::update_many()
        .col_expr(payments::Column::Status, Expr::value(status))
        .filter(payments::Column::Id.eq(domain::PaymentId::parse(id).unwrap()))
        .exec(&app.db.conn)
        .await
        .unwrap();
    refused(post(app, SERVICE_TOKEN, telegram_id).await, "paid_before").await;
    assert_eq!(counts(app).await.0, 0);
}

#[tokio::test]
async fn off_when_trial_days_is_zero_and_only_for_the_bot() {
    let app = spawn_app(&[]).await;
    let off = post(&app, SERVICE_TOKEN, 7_230_503).await;
    assert_eq!(off.status(), 404);
    assert_eq!(counts(&app).await, (0, 0, 0));

    let on = spawn_app(ON).await;
    assert_eq!(post(&on, ADMIN_TOKEN, 7_230_503).await.status(), 401);
    assert_eq!(post(&on, "wrong-token", 7_230_503).await.status(), 401);
    let bad = post(&on, SERVICE_TOKEN, -5).await;
    assert_eq!(bad.status(), 400);
    assert_eq!(counts(&on).await, (0, 0, 0));
}
