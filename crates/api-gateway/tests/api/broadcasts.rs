//! `POST /api/admin/broadcasts` and `GET /api/admin/broadcasts/{id}`: the preview counts each
//! segment right (news-off customers left out), a broadcast is stored once per
//! Idempotency-Key, and bad input is refused with a clear message and changes nothing.

use chrono::{Duration, Utc};
use domain::PaymentStatus;
use domain::entities::{
    bot_chats, broadcasts, manual_grants, payments, subscription_grants, subscriptions, users,
};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, SERVICE_TOKEN, TestApp, created_payment, spawn_app};

async fn post(app: &TestApp, token: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/api/admin/broadcasts"))
        .bearer_auth(token)
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("request")
}

async fn user(app: &TestApp, telegram_id: i64) -> i64 {
    users::ActiveModel {
        id: NotSet,
        telegram_id: Set(telegram_id),
        username: Set(None),
        first_name: Set(None),
        language_code: Set(Some("en".into())),
        created_at: Set(Utc::now()),
    }
    .insert(&app.db.conn)
    .await
    .unwrap()
    .id
}

async fn subscription(app: &TestApp, user_id: i64, expires_in: Duration) -> i64 {
    let now = Utc::now();
    subscriptions::ActiveModel {
        user_id: Set(user_id),
        marzban_username: Set(format!("u{user_id}")),
        expires_at: Set(now + expires_in),
        data_limit_bytes: Set(None),
        status: Set("active".into()),
        subscription_url: Set(None),
        synced_at: Set(None),
        sync_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&app.db.conn)
    .await
    .unwrap()
    .id
}

async fn chat(app: &TestApp, chat_id: i64, news_off: bool) {
    bot_chats::ActiveModel {
        chat_id: Set(chat_id),
        blocked_at: Set(None),
        reminders_off: Set(false),
        updated_at: Set(Utc::now()),
        qr_link: Set(None),
        qr_file_id: Set(None),
        broadcasts_off: Set(news_off),
    }
    .insert(&app.db.conn)
    .await
    .unwrap();
}

async fn preview(app: &TestApp, segment: &str) -> (u64, u64) {
    let response = post(
        app,
        ADMIN_TOKEN,
        None,
        &json!({"segment": segment, "text": "hi", "dry_run": true}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let audience: Value = response.json().await.unwrap();
    assert_eq!(audience["segment"], segment);
    (
        audience["recipients"].as_u64().unwrap(),
        audience["opted_out"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn segments_are_counted_and_a_broadcast_is_stored_once_per_key() {
    let app = spawn_app(&[]).await;
    // 123456 (CREATE_BODY's customer) has paid and is active; 1 expired and paid nothing;
    // 2 had a trial only (active); 3 only wrote to the bot; 4 wrote to the bot and turned news off.
    created_payment(&app, "paid-1").await;
    payments::Entity::update_many()
        .col_expr(
            payments::Column::Status,
            Expr::value(PaymentStatus::Succeeded),
        )
        .exec(&app.db.conn)
        .await
        .unwrap();
    let paid = users::Entity::find()
        .filter(users::Column::TelegramId.eq(123_456))
        .one(&app.db.conn)
        .await
        .unwrap()
        .unwrap();
    subscription(&app, paid.id, Duration::days(20)).await;
    let expired = user(&app, 1).await;
    subscription(&app, expired, -Duration::days(2)).await;
    let trial = user(&app, 2).await;
    // The trial's ledger entry is what counts (a refused trial has none).
    let trial_subscription = subscription(&app, trial, Duration::days(3)).await;
    subscription_grants::ActiveModel {
        subscription_id: Set(trial_subscription),
        payment_id: Set(None),
        kind: Set("trial".into()),
        days_granted: Set(3),
        days_revoked: Set(0),
        expires_at_after: Set(Utc::now() + Duration::days(3)),
        created_at: Set(Utc::now()),
        revoked_at: Set(None),
        ..Default::default()
    }
    .insert(&app.db.conn)
    .await
    .unwrap();
    // 5's trial was refused (the panel had the user): a manual grant, no ledger entry.
    let refused = user(&app, 5).await;
    manual_grants::ActiveModel {
        idempotency_key: Set("trial:5".into()),
        user_id: Set(refused),
        kind: Set("trial".into()),
        days: Set(3),
        data_limit_bytes: Set(None),
        reason: Set("trial".into()),
        granted_by: Set(None),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(&app.db.conn)
    .await
    .unwrap();
    chat(&app, 3, false).await;
    chat(&app, 4, true).await;

    assert_eq!(preview(&app, "all").await, (5, 1));
    assert_eq!(preview(&app, "active").await, (2, 0));
    assert_eq!(preview(&app, "expired").await, (1, 0));
    assert_eq!(preview(&app, "never_paid").await, (4, 1));
    assert_eq!(preview(&app, "trial").await, (1, 0));
    assert_eq!(
        broadcasts::Entity::find()
            .count(&app.db.conn)
            .await
            .unwrap(),
        0,
        "a preview writes nothing"
    );

    let body = json!({"segment": "active", "text": " Новый сервер! ", "admin_telegram_id": 42});
    let first = post(&app, ADMIN_TOKEN, Some("news-1"), &body).await;
    assert_eq!(first.status(), 201);
    let created: Value = first.json().await.unwrap();
    assert_eq!(
        (
            &created["status"],
            &created["segment"],
            &created["text"],
            &created["created_by"]
        ),
        (
            &json!("confirmed"),
            &json!("active"),
            &json!("Новый сервер!"),
            &json!(42)
        )
    );
    let id = created["broadcast_id"].as_i64().unwrap();

    let again = post(&app, ADMIN_TOKEN, Some("news-1"), &body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let replayed: Value = again.json().await.unwrap();
    assert_eq!(replayed["broadcast_id"], id);
    let other = post(
        &app,
        ADMIN_TOKEN,
        Some("news-1"),
        &json!({"segment": "all", "text": "other"}),
    )
    .await;
    assert_eq!(other.status(), 422);
    assert_eq!(
        broadcasts::Entity::find()
            .count(&app.db.conn)
            .await
            .unwrap(),
        1
    );

    let shown = app
        .http
        .get(app.url(&format!("/api/admin/broadcasts/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 200);
    let shown: Value = shown.json().await.unwrap();
    assert_eq!(
        (shown["status"].clone(), shown["pending"].clone()),
        (json!("confirmed"), json!(0))
    );
    let missing = app
        .http
        .get(app.url("/api/admin/broadcasts/999999"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn bad_broadcasts_are_refused_clearly_and_change_nothing() {
    let app = spawn_app(&[]).await;
    let cases = [
        (
            json!({"segment": "vip", "text": "hi"}),
            400,
            "unknown segment",
        ),
        (
            json!({"segment": "all", "text": "  \n "}),
            400,
            "the text is empty",
        ),
        (
            json!({"segment": "all", "text": "x".repeat(4097)}),
            400,
            "at most 4096",
        ),
        (json!({"segment": "all"}), 400, "text"),
        (
            json!({"segment": "all", "text": "hi", "admin_telegram_id": -5}),
            400,
            "positive",
        ),
        (
            json!({"segment": "all", "text": "hi", "extra": 1}),
            400,
            "extra",
        ),
    ];
    for (body, status, message) in cases {
        let response = post(&app, ADMIN_TOKEN, Some("bad-1"), &body).await;
        assert_eq!(response.status(), status, "{body}");
        let text = response.text().await.unwrap();
        assert!(text.contains(message), "{body}: {text}");
    }
    let no_key = post(
        &app,
        ADMIN_TOKEN,
        None,
        &json!({"segment": "all", "text": "hi"}),
    )
    .await;
    assert_eq!(no_key.status(), 400);
    assert!(no_key.text().await.unwrap().contains("Idempotency-Key"));
    let service = post(
        &app,
        SERVICE_TOKEN,
        Some("svc-1"),
        &json!({"segment": "all", "text": "hi"}),
    )
    .await;
    assert_eq!(service.status(), 401, "the service token may not broadcast");
    let bad_id = app
        .http
        .get(app.url("/api/admin/broadcasts/abc"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), 400);
    assert_eq!(
        broadcasts::Entity::find()
            .count(&app.db.conn)
            .await
            .unwrap(),
        0
    );
}
