//! Referrals and the admin's `/user` (issue 23): `/ref` shows the link and the counts; a new
//! user who opens `/start ref_<code>` is recorded once (never through their own link, never a
//! second referrer); their first payment gives the referrer the bonus through a manual grant,
//! once; both are told when it is on the panel. Malformed links and unknown users get a clear
//! answer and change nothing.

use domain::entities::{manual_grants, referrals};
use domain::referral;
use messaging::Envelope;
use messaging::events::GrantActivated;
use sandbox::telegram::{SentMessage, TestUser};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use crate::helpers::{ADMIN_ID, World, world, world_with};

fn body(m: &SentMessage) -> String {
    m.text
        .clone()
        .or_else(|| m.caption.clone())
        .unwrap_or_default()
}

/// Sends `text`; waits for the bot's answer that contains `expected`.
async fn say(w: &World, user: &TestUser, text: &str, expected: &str) -> SentMessage {
    let sent = w.tg.send_text(user, text);
    w.wait_new(user.id, sent, |m| body(m).contains(expected))
        .await
}

/// `/ref`: the answer and the link in it.
async fn my_link(w: &World, user: &TestUser, expected: &str) -> (SentMessage, String) {
    let answer = say(w, user, "/ref", expected).await;
    let text = body(&answer);
    let link = text
        .split_whitespace()
        .find(|word| word.starts_with("https://t.me/"))
        .expect("a link")
        .to_owned();
    (answer, link)
}

/// The start parameter of a link.
fn parameter(link: &str) -> &str {
    link.split_once("?start=").expect("a start parameter").1
}

async fn referral_rows(w: &World) -> Vec<referrals::Model> {
    referrals::Entity::find().all(&w.db.conn).await.unwrap()
}

async fn referral_grants(w: &World) -> Vec<manual_grants::Model> {
    manual_grants::Entity::find()
        .filter(manual_grants::Column::Kind.eq(referral::KIND))
        .all(&w.db.conn)
        .await
        .unwrap()
}

/// What marzban-sync publishes once the grant `row` is on the panel.
async fn announce(w: &World, row: &manual_grants::Model, telegram_id: i64, link: &str) {
    let event = GrantActivated {
        grant_id: row.id,
        telegram_id,
        kind: row.kind.clone(),
        days: row.days,
        marzban_username: format!("tg_{telegram_id}"),
        expires_at: chrono::Utc::now() + chrono::Duration::days(37),
        subscription_url: link.to_owned(),
    };
    let envelope = Envelope::new(&event, uuid::Uuid::now_v7(), None).expect("envelope");
    messaging::outbox::enqueue(&w.db.conn, &envelope)
        .await
        .expect("outbox");
    w.infra.outbox_nudge.notify_one();
}

#[tokio::test]
async fn a_friend_brought_by_a_link_earns_the_referrer_days_once() {
    let w = world().await;
    let referrer = TestUser::new(5_230_301, "Вера", "ru");
    let friend = TestUser::new(5_230_302, "Finn", "en");
    let other = TestUser::new(5_230_303, "Олег", "ru");

    let (_, link) = my_link(&w, &referrer, "Приглашено: 0 · оплатили: 0").await;
    assert!(
        link.starts_with("https://t.me/anomaly_sandbox_bot?start=ref_"),
        "{link}"
    );
    // The link is stable.
    let (again, same) = my_link(&w, &referrer, "Приглашено: 0").await;
    assert_eq!(same, link);
    assert!(body(&again).contains("7 дней"), "{again:?}");

    // Their own link records nothing.
    say(
        &w,
        &referrer,
        &format!("/start {}", parameter(&link)),
        "собственная",
    )
    .await;
    assert!(referral_rows(&w).await.is_empty());

    // The friend comes through it: told, then the ordinary menu.
    let start =
        w.tg.send_text(&friend, &format!("/start {}", parameter(&link)));
    let welcome = w
        .wait_new(friend.id, start, |m| {
            body(m).contains("friend's invitation")
        })
        .await;
    w.wait_new(friend.id, welcome.message_id, |m| {
        m.callback_data().contains(&"buy".to_owned())
    })
    .await;
    let rows = referral_rows(&w).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].bonus_days, 7);

    // A second referrer's link is refused; the first stays.
    let (_, other_link) = my_link(&w, &other, "Приглашено: 0").await;
    say(
        &w,
        &friend,
        &format!("/start {}", parameter(&other_link)),
        "new users only",
    )
    .await;
    let rows = referral_rows(&w).await;
    assert_eq!(rows.len(), 1);
    let first = rows[0].clone();
    my_link(&w, &referrer, "Приглашено: 1 · оплатили: 0").await;

    // The friend pays: the worker writes the referrer's bonus, once.
    let (paid, _) = w.buy_with_stars(&friend).await;
    let grants = referral_grants(&w).await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    let grant = grants[0].clone();
    assert_eq!(grant.days, 7);
    assert_eq!(grant.idempotency_key, referral::key(paid));
    assert_eq!(grant.user_id, first.referrer_user_id);
    my_link(&w, &referrer, "Приглашено: 1 · оплатили: 1").await;

    // Once marzban-sync has it on the panel, both are told.
    let before_referrer = w.tg.messages(referrer.id).last().unwrap().message_id;
    let before_friend = w.tg.messages(friend.id).last().unwrap().message_id;
    announce(&w, &grant, referrer.id, "https://panel.example/sub/vera").await;
    let told = w
        .wait_new(referrer.id, before_referrer, |m| {
            body(m).contains("вам начислено 7 дней")
        })
        .await;
    assert!(
        body(&told).contains("https://panel.example/sub/vera"),
        "{told:?}"
    );
    w.wait_new(friend.id, before_friend, |m| {
        body(m).contains("invited you got 7 days")
    })
    .await;

    // The friend renews: no second bonus.
    w.buy_with_stars(&friend).await;
    assert_eq!(referral_grants(&w).await.len(), 1);
}

#[tokio::test]
async fn malformed_and_unknown_links_change_nothing() {
    let w = world().await;
    let user = TestUser::new(5_230_311, "Pia", "en");
    for bad in ["ref_xx", "ref_zzzzzzzz", "ref_abc!defg"] {
        let start = w.tg.send_text(&user, &format!("/start {bad}"));
        let told = w
            .wait_new(user.id, start, |m| body(m).contains("not valid"))
            .await;
        // Still the ordinary menu.
        w.wait_new(user.id, told.message_id, |m| {
            m.callback_data().contains(&"buy".to_owned())
        })
        .await;
    }
    assert!(referral_rows(&w).await.is_empty());
}

#[tokio::test]
async fn referrals_are_off_with_zero_bonus_days() {
    let w = world_with(&[("REFERRAL_BONUS_DAYS", "0".to_owned())]).await;
    let user = TestUser::new(5_230_321, "Rea", "en");
    say(&w, &user, "/ref", "not running").await;
    // A link made while referrals were on is only the menu now.
    let start = w.tg.send_text(&user, "/start ref_abcdefgh");
    let menu = w
        .wait_new(user.id, start, |m| {
            m.callback_data().contains(&"buy".to_owned())
        })
        .await;
    assert!(
        w.tg.messages(user.id)
            .iter()
            .filter(|m| m.message_id > start && m.message_id <= menu.message_id)
            .all(|m| !body(m).contains("not valid")),
    );
    assert!(referral_rows(&w).await.is_empty());
}

#[tokio::test]
async fn an_admin_looks_a_customer_up() {
    let w = world().await;
    let mut customer = TestUser::new(5_230_331, "Uma", "en");
    customer.username = Some("uma_vpn".into());
    let (payment, _) = w.buy_with_stars(&customer).await;
    let admin = TestUser::new(ADMIN_ID, "Админ", "ru");
    // A Stars subscription as the bot records it, canceled: shown with the autopay state.
    let until = chrono::Utc::now() + chrono::Duration::days(20);
    w.db.conn
        .execute_unprepared(&format!(
            "INSERT INTO star_subscriptions \
             (invoice_payload, telegram_payment_charge_id, telegram_id, expires_at, canceled) \
             VALUES ('stars-uma', 'charge-uma', 5230331, {}, TRUE)",
            until.timestamp()
        ))
        .await
        .unwrap();

    let by_id = say(&w, &admin, "/user 5230331", "Платежи (1 из 1)").await;
    let text = body(&by_id);
    for expected in [
        "5230331",
        "@uma_vpn",
        &payment.to_string(),
        "succeeded",
        "month_1",
        "⭐",
        "Подписки нет",
        "Напоминания: вкл",
        "автопродление: карта не сохранена, подписка Stars отменена",
        "Пригласил его: никто",
    ] {
        assert!(text.contains(expected), "{expected:?} in {text}");
    }
    let by_name = say(&w, &admin, "/user @UMA_VPN", "Платежи (1 из 1)").await;
    assert_eq!(body(&by_name), text);

    say(&w, &admin, "/user 777", "не найден").await;
    say(&w, &admin, "/user @nobody_here", "не найден").await;
    say(&w, &admin, "/user", "Использование").await;
    say(&w, &admin, "/user uma", "Использование").await;

    // Not an admin: the ordinary menu, nothing about the customer.
    let start = w.tg.send_text(&customer, "/user 5230331");
    w.wait_new(customer.id, start, |m| {
        m.callback_data().contains(&"buy".to_owned())
    })
    .await;
    assert!(
        w.tg.messages(customer.id)
            .iter()
            .filter(|m| m.message_id > start)
            .all(|m| !body(m).contains("Payments (")),
    );
}
