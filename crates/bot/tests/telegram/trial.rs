//! The free trial: offered in the main menu only to a user who may take it (`TRIAL_DAYS` > 0,
//! never paid, no subscription, no trial before); two presses write one trial; a repeat, a
//! paying user and a bot with the trial off get a clear answer and change nothing; the user is
//! told when marzban-sync has the trial on the panel (`grant.activated`), or that it was
//! refused because they already have a VPN account (`grant.refused`).

use domain::entities::{manual_grants, processed_messages};
use messaging::Envelope;
use messaging::events::{GrantActivated, GrantRefused};
use sandbox::telegram::{SentMessage, TestUser};
use sea_orm::ActiveValue::Set;
use sea_orm::{ActiveModelTrait, EntityTrait};

use crate::grants::grants;
use crate::helpers::{World, world, world_with};

async fn trial_world() -> World {
    world_with(&[
        ("TRIAL_DAYS", "3".to_owned()),
        ("TRIAL_DATA_LIMIT_GB", "5".to_owned()),
    ])
    .await
}

/// /start: the main menu.
async fn menu(w: &World, user: &TestUser) -> SentMessage {
    let start = w.tg.send_text(user, "/start");
    w.wait_new(user.id, start, |m| {
        m.callback_data().contains(&"buy".to_owned())
    })
    .await
}

fn offers_trial(menu: &SentMessage) -> bool {
    menu.callback_data().contains(&"trial".to_owned())
}

fn body(m: &SentMessage) -> String {
    m.text
        .clone()
        .or_else(|| m.caption.clone())
        .unwrap_or_default()
}

/// Presses the trial button of `menu`; waits for the answer that says `expected`.
async fn press_trial(w: &World, user: &TestUser, menu: &SentMessage, after: i64, expected: &str) {
    w.tg.press(user, menu.message_id, "trial")
        .expect("press trial");
    w.wait_new(user.id, after, |m| body(m).contains(expected))
        .await;
}

/// The bot's answer to a trial press, in Russian.
fn trial_answer(m: &SentMessage) -> bool {
    let text = body(m);
    text.contains("Пробный период") || text.contains("пробным периодом")
}

#[tokio::test]
async fn a_new_user_gets_one_trial_and_is_told_when_it_is_active() {
    let w = trial_world().await;
    let user = TestUser::new(5_230_201, "Ида", "ru");
    let menu = menu(&w, &user).await;
    assert!(offers_trial(&menu), "{menu:?}");
    let button = menu
        .reply_markup
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    assert!(button.contains("3 дня"), "{button}");

    // Two presses at once: one trial, and each press gets an answer.
    w.tg.press(&user, menu.message_id, "trial").expect("press");
    w.tg.press(&user, menu.message_id, "trial")
        .expect("press again");
    let first = w.wait_new(user.id, menu.message_id, trial_answer).await;
    let second = w.wait_new(user.id, first.message_id, trial_answer).await;
    let answers = [body(&first), body(&second)];
    assert_eq!(
        answers.iter().filter(|a| a.contains("оформлен")).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.contains("уже воспользовались"))
            .count(),
        1,
        "{answers:?}"
    );
    assert_eq!(grants(&w).await, (1, 1));
    let row = manual_grants::Entity::find()
        .one(&w.db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.days, row.data_limit_bytes),
        (3, Some(5 * 1024 * 1024 * 1024))
    );

    // marzban-sync has it on the panel: the user gets the link.
    let last = second.message_id;
    announce(&w, &row, user.id, "https://panel.example/sub/trial-ida").await;
    let active = w
        .wait_new(user.id, last, |m| body(m).contains("активен до"))
        .await;
    assert!(
        body(&active).contains("https://panel.example/sub/trial-ida"),
        "{active:?}"
    );
    assert!(body(&active).contains("3 дня"), "{active:?}");

    // The menu no longer offers it; the old button answers that it was had.
    let again = self::menu(&w, &user).await;
    assert!(!offers_trial(&again), "{again:?}");
    press_trial(&w, &user, &menu, again.message_id, "уже воспользовались").await;
    assert_eq!(grants(&w).await, (1, 1));
}

/// What marzban-sync publishes once the trial `row` is on the panel.
async fn announce(w: &World, row: &manual_grants::Model, telegram_id: i64, link: &str) {
    let event = GrantActivated {
        grant_id: row.id,
        telegram_id,
        kind: row.kind.clone(),
        days: row.days,
        marzban_username: format!("tg_{telegram_id}"),
        expires_at: chrono::Utc::now() + chrono::Duration::days(3),
        subscription_url: link.to_owned(),
    };
    let envelope = Envelope::new(&event, uuid::Uuid::now_v7(), None).expect("envelope");
    messaging::outbox::enqueue(&w.db.conn, &envelope)
        .await
        .expect("outbox");
    w.infra.outbox_nudge.notify_one();
}

/// A customer from the seller's older bot (the panel already has them): marzban-sync refuses
/// the trial and the user is told, with the menu, that the trial is for new customers and that
/// they already have a VPN account; the menu no longer offers it and the old button says so.
#[tokio::test]
async fn a_user_the_panel_already_has_is_told_the_trial_was_refused() {
    let w = trial_world().await;
    let user = TestUser::new(5_230_204, "Лев", "ru");
    let menu = menu(&w, &user).await;
    assert!(offers_trial(&menu), "{menu:?}");
    press_trial(&w, &user, &menu, menu.message_id, "оформлен").await;
    let row = manual_grants::Entity::find()
        .one(&w.db.conn)
        .await
        .unwrap()
        .unwrap();

    // What marzban-sync writes when it finds the user on the panel.
    refuse(&w, &row, user.id).await;
    let refused = w
        .wait_new(user.id, menu.message_id, |m| {
            body(m).contains("VPN-аккаунт")
        })
        .await;
    assert!(
        body(&refused).contains("только для новых клиентов"),
        "{refused:?}"
    );
    let buttons = refused.callback_data();
    assert!(buttons.contains(&"buy".to_owned()), "the menu: {buttons:?}");
    assert!(!buttons.contains(&"trial".to_owned()), "{buttons:?}");

    let again = self::menu(&w, &user).await;
    assert!(!offers_trial(&again), "{again:?}");
    press_trial(&w, &user, &menu, again.message_id, "VPN-аккаунт").await;
    assert_eq!(grants(&w).await, (1, 1), "nothing more written");
}

/// What marzban-sync writes when it refuses the trial `row`: its mark and `grant.refused`.
async fn refuse(w: &World, row: &manual_grants::Model, telegram_id: i64) {
    processed_messages::ActiveModel {
        consumer: Set(domain::trial::REFUSED_MARK.to_owned()),
        message_id: Set(domain::trial::refused_key(row.id)),
        processed_at: Set(chrono::Utc::now()),
    }
    .insert(&w.db.conn)
    .await
    .expect("mark");
    let event = GrantRefused {
        grant_id: row.id,
        user_id: row.user_id,
        telegram_id,
        kind: row.kind.clone(),
        reason: domain::trial::REASON_PANEL_USER.to_owned(),
    };
    let envelope = Envelope::new(&event, uuid::Uuid::now_v7(), None).expect("envelope");
    messaging::outbox::enqueue(&w.db.conn, &envelope)
        .await
        .expect("outbox");
    w.infra.outbox_nudge.notify_one();
}

#[tokio::test]
async fn a_paying_user_is_not_offered_a_trial_and_is_refused_one() {
    let w = trial_world().await;
    let user = TestUser::new(5_230_202, "Jon", "en");
    let before = menu(&w, &user).await;
    assert!(offers_trial(&before), "{before:?}");
    w.buy_with_stars(&user).await;

    let after = menu(&w, &user).await;
    assert!(!offers_trial(&after), "{after:?}");
    // The menu from before the payment still has the button: a clear no.
    press_trial(&w, &user, &before, after.message_id, "for new users").await;
    assert_eq!(grants(&w).await, (0, 0));
}

#[tokio::test]
async fn no_trial_is_offered_while_trial_days_is_zero() {
    let w = world().await;
    let user = TestUser::new(5_230_203, "Kai", "en");
    let menu = menu(&w, &user).await;
    assert!(!offers_trial(&menu), "{menu:?}");
    assert_eq!(grants(&w).await, (0, 0));
}
