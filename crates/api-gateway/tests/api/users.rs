//! `GET /api/admin/users/{who}`: one customer by Telegram id or @username — subscription,
//! recent payments, ledger, settings, referrals; nobody we know is 404, a malformed `who` is
//! 400, and only the admin token may ask.

use chrono::{Duration, Utc};
use domain::entities::{subscription_grants, subscriptions};
use domain::referral::{self, Recorded};
use sea_orm::ActiveModelTrait;
use sea_orm::ActiveValue::{NotSet, Set};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, SERVICE_TOKEN, TestApp, created_payment, spawn_app};

async fn get(app: &TestApp, token: &str, who: &str) -> reqwest::Response {
    app.http
        .get(app.url(&format!("/api/admin/users/{who}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

async fn overview(app: &TestApp, who: &str) -> Value {
    let response = get(app, ADMIN_TOKEN, who).await;
    assert_eq!(response.status(), 200, "{who}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn an_admin_sees_a_customer_by_id_or_username() {
    let app = spawn_app(&[]).await;
    let db = &app.db.conn;
    // The checkout makes customer 123456 (@alice) known, with a pending payment.
    let payment = created_payment(&app, "users-1").await;
    let alice = referral::ensure_user(db, 123_456, None, None, None)
        .await
        .unwrap();
    let expires = Utc::now() + Duration::days(30);
    let subscription = subscriptions::ActiveModel {
        id: NotSet,
        user_id: Set(alice.id),
        marzban_username: Set("tg_123456".into()),
        expires_at: Set(expires),
        data_limit_bytes: Set(None),
        status: Set("active".into()),
        subscription_url: Set(Some("https://panel.example/sub/alice".into())),
        synced_at: Set(Some(Utc::now())),
        sync_error: Set(None),
        created_at: Set(Utc::now()),
        updated_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
    subscription_grants::ActiveModel {
        id: NotSet,
        subscription_id: Set(subscription.id),
        payment_id: Set(None),
        kind: Set("admin".into()),
        days_granted: Set(30),
        days_revoked: Set(0),
        expires_at_after: Set(expires),
        created_at: Set(Utc::now()),
        revoked_at: Set(None),
    }
    .insert(db)
    .await
    .unwrap();
    // Alice brought Bob.
    let bob = referral::ensure_user(db, 654_321, Some("bob".into()), None, None)
        .await
        .unwrap();
    let code = referral::code_of(db, alice.id).await.unwrap();
    assert!(matches!(
        referral::record(db, bob.id, &code, 7).await.unwrap(),
        Recorded::Referred(_)
    ));

    let by_id = overview(&app, "123456").await;
    assert_eq!(by_id["user"]["telegram_id"], 123_456);
    assert_eq!(by_id["user"]["username"], "alice");
    assert_eq!(by_id["subscription"]["panel_username"], "tg_123456");
    assert_eq!(by_id["subscription"]["active"], true);
    assert_eq!(by_id["payments_total"], 1);
    let listed = &by_id["payments"][0];
    assert_eq!(listed["id"], payment["payment_id"]);
    assert_eq!(
        (
            listed["tariff"].clone(),
            listed["status"].clone(),
            listed["currency"].clone()
        ),
        (json!("month_1"), json!("pending"), json!("RUB"))
    );
    assert!(listed["amount_minor"].as_i64().unwrap() > 0);
    assert_eq!(by_id["ledger"][0]["kind"], "admin");
    assert_eq!(by_id["ledger"][0]["days_granted"], 30);
    assert_eq!(by_id["reminders_off"], false);
    assert_eq!(by_id["autopay"], json!([]));
    assert_eq!(by_id["star_subscription"], Value::Null);
    assert_eq!(by_id["referral"]["referred"], 1);
    assert_eq!(by_id["referral"]["rewarded"], 0);
    assert_eq!(by_id["referral"]["referred_by"], Value::Null);

    // The same customer by @username, in any case; `@` may come URL-encoded.
    assert_eq!(overview(&app, "@ALICE").await, by_id);
    assert_eq!(overview(&app, "%40alice").await, by_id);

    let bobs = overview(&app, "@bob").await;
    assert_eq!(bobs["referral"]["referred_by"], 123_456);
    assert_eq!(bobs["subscription"], Value::Null);
    assert_eq!(bobs["payments"], json!([]));
}

#[tokio::test]
async fn unknown_and_malformed_users_and_other_tokens_are_refused() {
    let app = spawn_app(&[]).await;
    for who in ["999999", "@nobody"] {
        let response = get(&app, ADMIN_TOKEN, who).await;
        assert_eq!(response.status(), 404, "{who}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_found");
        assert!(
            body["message"].as_str().unwrap().contains("no customer"),
            "{body}"
        );
    }
    for who in ["abc", "-5", "0", "@bad-name"] {
        assert_eq!(get(&app, ADMIN_TOKEN, who).await.status(), 400, "{who}");
    }
    assert_eq!(get(&app, SERVICE_TOKEN, "999999").await.status(), 401);
    let no_token = app
        .http
        .get(app.url("/api/admin/users/999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
}
