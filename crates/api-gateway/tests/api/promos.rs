//! Promo codes (issue 23): the admin API makes, lists and disables codes; a checkout with a
//! code is priced with it, recorded with it and handed out again only to a press with the
//! same code; every bad code is a 422 `promo_rejected` that writes nothing.

use chrono::{Duration, Utc};
use domain::entities::{payment_promos, promo_codes, system_logs, users};
use domain::{PaymentId, PaymentStatus};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, SERVICE_TOKEN, TestApp, spawn_app};

async fn new_promo(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/api/admin/promos"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn list(app: &TestApp) -> Value {
    let response = app
        .http
        .get(app.url("/api/admin/promos"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn made(app: &TestApp, body: Value) -> Value {
    let response = new_promo(app, ADMIN_TOKEN, body).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

/// A press for `tariff` through `provider` by `telegram_id`, with `promo` if any.
async fn press(
    app: &TestApp,
    key: &str,
    telegram_id: i64,
    tariff: &str,
    provider: &str,
    promo: Option<&str>,
) -> reqwest::Response {
    let mut body = json!({"telegram_id": telegram_id, "tariff_code": tariff, "provider": provider});
    if let Some(code) = promo {
        body["promo_code"] = json!(code);
    }
    app.create_payment(key, &body.to_string()).await
}

async fn rows(app: &TestApp) -> (u64, u64, u64) {
    let db = &app.db.conn;
    (
        domain::entities::payments::Entity::find()
            .count(db)
            .await
            .unwrap(),
        payment_promos::Entity::find().count(db).await.unwrap(),
        users::Entity::find().count(db).await.unwrap(),
    )
}

/// The press is refused with `reason` and writes nothing.
async fn refused(app: &TestApp, response: reqwest::Response, reason: &str) {
    let before = rows(app).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "promo_rejected", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.starts_with(&format!("{reason}:")), "{body}");
    assert_eq!(rows(app).await, before);
}

/// Marks the payment `id` paid and its code's use counted, as the worker does.
async fn paid(app: &TestApp, id: &str) {
    let id = PaymentId::parse(id).unwrap();
    domain::entities::payments::Entity::update_many()
        .col_expr(
            domain::entities::payments::Column::Status,
            Expr::value(PaymentStatus::Succeeded),
        )
        .filter(domain::entities::payments::Column::Id.eq(id))
        .exec(&app.db.conn)
        .await
        .unwrap();
    assert!(
        domain::promo::count_use(&app.db.conn, id, Utc::now())
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn admins_make_list_and_disable_codes_and_bad_bodies_change_nothing() {
    let app = spawn_app(&[]).await;
    let view = made(
        &app,
        json!({"code": "spring20", "kind": "percent", "percent": 20, "max_uses": 100,
               "once_per_user": true, "ends_at": "2099-02-01T00:00:00Z",
               "tariffs": ["month_1", "month_3"], "providers": ["yookassa"], "created_by": 42}),
    )
    .await;
    assert_eq!(
        (
            &view["code"],
            &view["kind"],
            &view["value"],
            &view["max_uses"],
            &view["tariffs"],
            &view["providers"],
            &view["active"],
        ),
        (
            &json!("SPRING20"),
            &json!("percent"),
            &json!(20),
            &json!(100),
            &json!(["month_1", "month_3"]),
            &json!(["yookassa"]),
            &json!(true)
        )
    );
    let fixed = made(
        &app,
        json!({"code": "MINUS50", "kind": "fixed", "amount_minor": 5000, "currency": "RUB"}),
    )
    .await;
    assert_eq!(fixed["amount"]["value"], "50.00");

    let bad = [
        json!({"code": "FULL", "kind": "percent", "percent": 100}),
        json!({"code": "ZERO", "kind": "percent", "percent": 0}),
        json!({"code": "a b", "kind": "percent", "percent": 10}),
        json!({"code": "NOCUR", "kind": "fixed", "amount_minor": 100}),
        json!({"code": "MIXED", "kind": "days", "days": 7, "percent": 10}),
        json!({"code": "LONG", "kind": "days", "days": 5000}),
        json!({"code": "NOTARIFF", "kind": "percent", "percent": 10, "tariffs": ["year_9"]}),
        json!({"code": "NOPROV", "kind": "percent", "percent": 10, "providers": ["paypal"]}),
        json!({"code": "PAST", "kind": "percent", "percent": 10, "ends_at": "2020-01-01T00:00:00Z"}),
        json!({"code": "USES", "kind": "percent", "percent": 10, "max_uses": 0}),
        json!({"code": "TYPO", "kind": "percent", "percent": 10, "max_use": 5}),
    ];
    for body in bad {
        let response = new_promo(&app, ADMIN_TOKEN, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
    }
    // The code exists (in any case): 409, the row stays as it was.
    let again = new_promo(
        &app,
        ADMIN_TOKEN,
        json!({"code": "Spring20", "kind": "days", "days": 3}),
    )
    .await;
    assert_eq!(again.status(), 409);
    // Only admins.
    let service = new_promo(
        &app,
        SERVICE_TOKEN,
        json!({"code": "SVC", "kind": "days", "days": 3}),
    )
    .await;
    assert_eq!(service.status(), 401);
    assert_eq!(
        promo_codes::Entity::find()
            .count(&app.db.conn)
            .await
            .unwrap(),
        2
    );

    let listed = list(&app).await;
    let codes: Vec<&str> = listed["promos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["MINUS50", "SPRING20"]);

    let off = app
        .http
        .post(app.url("/api/admin/promos/spring20/disable"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 200);
    let off: Value = off.json().await.unwrap();
    assert_eq!(off["active"], false);
    let unknown = app
        .http
        .post(app.url("/api/admin/promos/NOPE/disable"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let logged = system_logs::Entity::find()
        .filter(system_logs::Column::EventType.is_in(["promo.created", "promo.disabled"]))
        .count(&app.db.conn)
        .await
        .unwrap();
    assert_eq!(logged, 3);
}

#[tokio::test]
async fn a_code_prices_the_checkout_and_is_recorded_on_it() {
    let app = spawn_app(&[]).await;
    made(
        &app,
        json!({"code": "SPRING20", "kind": "percent", "percent": 20}),
    )
    .await;
    made(&app, json!({"code": "WEEK", "kind": "days", "days": 7})).await;

    let response = press(
        &app,
        "promo-1",
        7_300_001,
        "month_1",
        "yookassa",
        Some("spring20"),
    )
    .await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let payment: Value = response.json().await.unwrap();
    // 199.00 less 20 %: the payment's amount, and what YooKassa was asked for.
    assert_eq!(payment["amount"]["minor"], 15_920);
    let id = payment["payment_id"].as_str().unwrap().to_owned();
    let asked = app.yookassa.payments();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["amount"]["value"], "159.20");
    let row = payment_promos::Entity::find_by_id(PaymentId::parse(&id).unwrap())
        .one(&app.db.conn)
        .await
        .unwrap()
        .expect("the code is recorded on the payment");
    assert_eq!(
        (
            row.code.as_str(),
            row.list_price_minor,
            row.discount_minor,
            row.extra_days,
            row.used_at
        ),
        ("SPRING20", 19_900, 3_980, 0, None)
    );

    // Another press with the same code: the same checkout.
    let again = press(
        &app,
        "promo-2",
        7_300_001,
        "month_1",
        "yookassa",
        Some("SPRING20"),
    )
    .await;
    assert_eq!(again.status(), 200);
    assert!(again.headers().contains_key("checkout-reused"));
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["payment_id"], payment["payment_id"]);

    // Without the code, or with another code of the same price: not that checkout.
    let full = press(&app, "promo-3", 7_300_001, "month_1", "yookassa", None).await;
    assert_eq!(full.status(), 201);
    let full: Value = full.json().await.unwrap();
    assert_eq!(full["amount"]["minor"], 19_900);
    let week = press(
        &app,
        "promo-4",
        7_300_001,
        "month_1",
        "yookassa",
        Some("WEEK"),
    )
    .await;
    assert_eq!(week.status(), 201);
    let week: Value = week.json().await.unwrap();
    assert_eq!(week["amount"]["minor"], 19_900);
    assert_ne!(week["payment_id"], full["payment_id"]);
    let week_row = payment_promos::Entity::find_by_id(
        PaymentId::parse(week["payment_id"].as_str().unwrap()).unwrap(),
    )
    .one(&app.db.conn)
    .await
    .unwrap()
    .unwrap();
    assert_eq!((week_row.discount_minor, week_row.extra_days), (0, 7));
    // And a press with no code does not get the extra-days checkout either.
    let plain = press(&app, "promo-5", 7_300_001, "month_1", "yookassa", None).await;
    assert_eq!(plain.status(), 200);
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain["payment_id"], full["payment_id"]);

    // Paid: the code's numbers.
    paid(&app, &id).await;
    let listed = list(&app).await;
    let spring = listed["promos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "SPRING20")
        .unwrap()
        .clone();
    assert_eq!(
        (
            &spring["stats"]["uses"],
            &spring["stats"]["payments"],
            &spring["stats"]["paid"],
            &spring["stats"]["conversion_pct"],
            &spring["stats"]["revenue"][0]["minor"],
            &spring["stats"]["discount"][0]["minor"],
        ),
        (
            &json!(1),
            &json!(1),
            &json!(1),
            &json!(100.0),
            &json!(15_920),
            &json!(3_980)
        )
    );
}

#[tokio::test]
async fn bad_codes_are_refused_and_change_nothing() {
    let app = spawn_app(&[]).await;
    made(
        &app,
        json!({"code": "ONLY3", "kind": "percent", "percent": 10, "tariffs": ["month_3"],
               "providers": ["yookassa"]}),
    )
    .await;
    made(
        &app,
        json!({"code": "ONCE", "kind": "percent", "percent": 10, "once_per_user": true}),
    )
    .await;
    made(
        &app,
        json!({"code": "TWO", "kind": "percent", "percent": 10, "max_uses": 1}),
    )
    .await;
    made(
        &app,
        json!({"code": "RUBONLY", "kind": "fixed", "amount_minor": 1000, "currency": "RUB"}),
    )
    .await;
    made(
        &app,
        json!({"code": "ALMOST", "kind": "fixed", "amount_minor": 19_850, "currency": "RUB"}),
    )
    .await;
    made(
        &app,
        json!({"code": "GONE", "kind": "percent", "percent": 10}),
    )
    .await;
    made(
        &app,
        json!({"code": "LATER", "kind": "percent", "percent": 10,
                      "starts_at": (Utc::now() + Duration::days(3)).to_rfc3339()}),
    )
    .await;
    made(
        &app,
        json!({"code": "OLD", "kind": "percent", "percent": 10,
                      "ends_at": (Utc::now() + Duration::days(3)).to_rfc3339()}),
    )
    .await;
    // OLD's window closes (the API refuses making a code already over).
    promo_codes::Entity::update_many()
        .col_expr(
            promo_codes::Column::EndsAt,
            Expr::value(Some(Utc::now() - Duration::hours(1))),
        )
        .filter(promo_codes::Column::Code.eq("OLD"))
        .exec(&app.db.conn)
        .await
        .unwrap();
    let off = app
        .http
        .post(app.url("/api/admin/promos/GONE/disable"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 200);

    let user = 7_300_100;
    let cases = [
        ("NOSUCH", "month_1", "yookassa", "unknown"),
        ("no such code!", "month_1", "yookassa", "unknown"),
        ("GONE", "month_1", "yookassa", "disabled"),
        ("LATER", "month_1", "yookassa", "not_yet"),
        ("OLD", "month_1", "yookassa", "expired"),
        ("ONLY3", "month_1", "yookassa", "tariff"),
        ("ONLY3", "month_3", "crypto", "provider"),
        ("RUBONLY", "month_1", "crypto", "currency"),
        ("ALMOST", "month_1", "yookassa", "below_minimum"),
    ];
    for (i, (code, tariff, provider, reason)) in cases.into_iter().enumerate() {
        let response = press(
            &app,
            &format!("bad-{i}"),
            user,
            tariff,
            provider,
            Some(code),
        )
        .await;
        refused(&app, response, reason).await;
    }
    assert_eq!(rows(&app).await, (0, 0, 0));

    // Once per customer: a counted use rules the customer out, not another one.
    let first = press(&app, "once-1", user, "month_1", "yookassa", Some("ONCE")).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    paid(&app, first["payment_id"].as_str().unwrap()).await;
    let second = press(&app, "once-2", user, "month_3", "yookassa", Some("ONCE")).await;
    refused(&app, second, "already_used").await;
    let other = press(
        &app,
        "once-3",
        user + 1,
        "month_3",
        "yookassa",
        Some("ONCE"),
    )
    .await;
    assert_eq!(other.status(), 201);

    // Total uses: open checkouts do not use the code up; a paid one does.
    let a = press(&app, "two-1", user + 2, "month_1", "yookassa", Some("TWO")).await;
    assert_eq!(a.status(), 201);
    let b = press(&app, "two-2", user + 3, "month_1", "yookassa", Some("TWO")).await;
    assert_eq!(b.status(), 201);
    let a: Value = a.json().await.unwrap();
    paid(&app, a["payment_id"].as_str().unwrap()).await;
    let c = press(&app, "two-3", user + 4, "month_1", "yookassa", Some("TWO")).await;
    refused(&app, c, "exhausted").await;
    // A full refund gives the use back.
    assert!(
        domain::promo::return_use(
            &app.db.conn,
            PaymentId::parse(a["payment_id"].as_str().unwrap()).unwrap(),
            Utc::now()
        )
        .await
        .unwrap()
    );
    let d = press(&app, "two-4", user + 4, "month_1", "yookassa", Some("TWO")).await;
    assert_eq!(d.status(), 201);
}

#[tokio::test]
async fn a_code_prices_the_checkout_on_sqlite_too() {
    let app = crate::helpers::spawn_embedded_app().await;
    made(
        &app,
        json!({"code": "HALF", "kind": "percent", "percent": 50}),
    )
    .await;
    let with = press(&app, "sq-1", 7_300_201, "month_1", "yookassa", Some("half")).await;
    assert_eq!(with.status(), 201, "{:?}", with.text().await);
    let with: Value = with.json().await.unwrap();
    assert_eq!(with["amount"]["minor"], 9_950);
    // No code: not the discounted checkout; the same code again: the same one.
    let without = press(&app, "sq-2", 7_300_201, "month_1", "yookassa", None).await;
    assert_eq!(without.status(), 201);
    let again = press(&app, "sq-3", 7_300_201, "month_1", "yookassa", Some("HALF")).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["payment_id"], with["payment_id"]);
    let gone = press(&app, "sq-4", 7_300_201, "month_1", "yookassa", Some("NOPE")).await;
    refused(&app, gone, "unknown").await;
    let listed = list(&app).await;
    assert_eq!(listed["promos"][0]["stats"]["payments"], 1);
}
