//! `POST /api/admin/grants`: an admin's grant is stored once per Idempotency-Key with its log
//! row and its `grant.created` event; bad input changes nothing.

use chrono::Utc;
use domain::entities::{manual_grants, system_logs, users};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, SERVICE_TOKEN, TestApp, spawn_app};

const CUSTOMER: i64 = 7_230_001;
const ADMIN: i64 = 42;

async fn post(app: &TestApp, token: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/api/admin/grants"))
        .bearer_auth(token)
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("request")
}

/// Rows of `manual_grants`, `grant.created` outbox rows and `grant.created` log rows.
pub(crate) async fn counts(app: &TestApp) -> (u64, usize, u64) {
    let grants = manual_grants::Entity::find()
        .count(&app.db.conn)
        .await
        .unwrap();
    let events = app.outbox_with_key("grant.created").await.len();
    let logs = system_logs::Entity::find()
        .filter(system_logs::Column::EventType.eq("grant.created"))
        .count(&app.db.conn)
        .await
        .unwrap();
    (grants, events, logs)
}

async fn customer(app: &TestApp) -> i64 {
    users::ActiveModel {
        id: NotSet,
        telegram_id: Set(CUSTOMER),
        username: Set(None),
        first_name: Set(Some("Анна".into())),
        language_code: Set(Some("ru".into())),
        created_at: Set(Utc::now()),
    }
    .insert(&app.db.conn)
    .await
    .unwrap()
    .id
}

fn body(telegram_id: i64, days: i64, reason: &str) -> Value {
    json!({"telegram_id": telegram_id, "days": days, "reason": reason, "admin_telegram_id": ADMIN})
}

#[tokio::test]
async fn a_grant_is_stored_once_per_key_with_its_log_and_event() {
    let app = spawn_app(&[]).await;
    let user_id = customer(&app).await;

    let first = post(
        &app,
        ADMIN_TOKEN,
        Some("grant-1"),
        &body(CUSTOMER, 7, " support "),
    )
    .await;
    assert_eq!(first.status(), 201);
    let view: Value = first.json().await.unwrap();
    assert_eq!(view["telegram_id"], CUSTOMER);
    assert_eq!(
        (view["days"].clone(), view["kind"].clone()),
        (json!(7), json!("admin"))
    );
    assert_eq!(view["reason"], "support");
    assert_eq!(view["granted_by"], ADMIN);
    assert_eq!(counts(&app).await, (1, 1, 1));

    let row = manual_grants::Entity::find()
        .one(&app.db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.user_id, row.days, row.granted_by),
        (user_id, 7, Some(ADMIN))
    );
    let event: Value =
        serde_json::from_str(&app.outbox_with_key("grant.created").await[0].envelope).unwrap();
    let payload = &event["payload"];
    assert_eq!(payload["grant_id"], row.id);
    assert_eq!(
        (payload["user_id"].clone(), payload["days"].clone()),
        (json!(user_id), json!(7))
    );
    let log = system_logs::Entity::find()
        .filter(system_logs::Column::EventType.eq("grant.created"))
        .one(&app.db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(log.user_id, Some(user_id));
    let metadata = log.metadata.unwrap();
    assert_eq!(metadata["admin_telegram_id"], ADMIN);
    assert_eq!(metadata["reason"], "support");

    // The same command again: the stored grant, nothing granted twice.
    let again = post(
        &app,
        ADMIN_TOKEN,
        Some("grant-1"),
        &body(CUSTOMER, 7, "support"),
    )
    .await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let replayed: Value = again.json().await.unwrap();
    assert_eq!(replayed["grant_id"], view["grant_id"]);
    assert_eq!(counts(&app).await, (1, 1, 1));

    // The key with another request is refused.
    let other = post(
        &app,
        ADMIN_TOKEN,
        Some("grant-1"),
        &body(CUSTOMER, 8, "support"),
    )
    .await;
    assert_eq!(other.status(), 422);
    assert_eq!(counts(&app).await, (1, 1, 1));
}

#[tokio::test]
async fn bad_grants_are_refused_and_change_nothing() {
    let app = spawn_app(&[]).await;
    customer(&app).await;
    let cases: [(&str, Option<&str>, Value, u16); 8] = [
        (
            ADMIN_TOKEN,
            Some("g-unknown"),
            body(CUSTOMER + 1, 7, "gift"),
            404,
        ),
        (ADMIN_TOKEN, Some("g-zero"), body(CUSTOMER, 0, "gift"), 400),
        (
            ADMIN_TOKEN,
            Some("g-negative"),
            body(CUSTOMER, -5, "gift"),
            400,
        ),
        (
            ADMIN_TOKEN,
            Some("g-absurd"),
            body(CUSTOMER, 100_000, "gift"),
            400,
        ),
        (ADMIN_TOKEN, Some("g-reason"), body(CUSTOMER, 7, "   "), 400),
        (ADMIN_TOKEN, None, body(CUSTOMER, 7, "gift"), 400),
        (
            ADMIN_TOKEN,
            Some("g-extra"),
            json!({"telegram_id": CUSTOMER, "days": 7}),
            400,
        ),
        (
            SERVICE_TOKEN,
            Some("g-service"),
            body(CUSTOMER, 7, "gift"),
            401,
        ),
    ];
    for (token, key, request, status) in cases {
        let response = post(&app, token, key, &request).await;
        assert_eq!(response.status(), status, "{key:?} {request}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
    }
    assert_eq!(counts(&app).await, (0, 0, 0));
}
