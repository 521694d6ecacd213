//! `/broadcast <segment> <text>`: an admin previews a broadcast, sends it once (a second
//! "Send" sends nothing more), every customer of the segment gets it once through the
//! sending queue except those who turned news off, a chat that blocked the bot is counted as
//! blocked, and the admin gets the final report; the "no news" button under a copy keeps the
//! next broadcast away. Bad input gets the usage and stores nothing.

use domain::entities::{bot_chats, broadcasts, send_queue};
use sandbox::telegram::{SentMessage, TestUser};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

use crate::helpers::{ADMIN_ID, World, world};

/// `user` writes `text`; returns the bot's first text answer after it.
async fn say(w: &World, user: &TestUser, text: &str) -> SentMessage {
    let sent = w.tg.send_text(user, text);
    w.wait_new(user.id, sent, |m| {
        m.method == "sendMessage" && m.text.is_some()
    })
    .await
}

fn text_is(m: &SentMessage, wanted: &str) -> bool {
    m.text.as_deref() == Some(wanted)
}

/// How many copies of `text` reached `user`.
fn copies(w: &World, user: &TestUser, text: &str) -> usize {
    w.tg.messages(user.id)
        .iter()
        .filter(|m| text_is(m, text))
        .count()
}

/// The admin broadcasts `text` to `segment` and presses "Send"; returns the report.
async fn broadcast(w: &World, admin: &TestUser, segment: &str, text: &str) -> (i64, SentMessage) {
    let question = say(w, admin, &format!("/broadcast {segment}\n{text}")).await;
    let question = if question.text.as_deref() == Some(text) {
        // The preview of the message itself comes first, then the question.
        w.wait_new(admin.id, question.message_id, |m| {
            !m.callback_data().is_empty()
        })
        .await
    } else {
        question
    };
    let go = question
        .callback_data()
        .into_iter()
        .find(|d| d.ends_with(":go"))
        .unwrap_or_else(|| panic!("no Send button: {question:?}"));
    let id: i64 = go.split(':').nth(1).unwrap().parse().unwrap();
    w.tg.press(admin, question.message_id, &go).unwrap();
    let report = w
        .wait_new(admin.id, question.message_id, |m| {
            m.text
                .as_deref()
                .is_some_and(|t| t.contains(&format!("#{id} ({segment}) done")))
        })
        .await;
    (id, report)
}

#[tokio::test]
async fn a_broadcast_reaches_its_segment_once_and_reports() {
    let w = world().await;
    let admin = TestUser::new(ADMIN_ID, "Admin", "en");
    let ann = TestUser::new(5_240_001, "Ann", "en");
    let boris = TestUser::new(5_240_002, "Борис", "ru");
    let blocked = TestUser::new(5_240_003, "Carl", "en");
    let quiet = TestUser::new(5_240_004, "Dana", "en");
    // Everyone writes to the bot once (so the bot knows the chat); Carl then blocks the bot
    // and Dana turns news off in "My subscription".
    for user in [&ann, &boris, &blocked, &quiet] {
        say(&w, user, "/start").await;
    }
    w.tg.block_bot(&blocked);
    let menu = w.my_subscription(&quiet, "nw:off").await;
    w.tg.press(&quiet, menu.message_id, "nw:off").unwrap();
    w.wait_new(quiet.id, menu.message_id, |m| {
        m.callback_data().iter().any(|d| d == "nw:on")
    })
    .await;

    // The preview: the message as customers will see it, and the head count.
    let question = say(
        &w,
        &admin,
        "/broadcast never_paid\nНовый сервер в Амстердаме",
    )
    .await;
    assert_eq!(question.text.as_deref(), Some("Новый сервер в Амстердаме"));
    assert_eq!(question.callback_data(), vec!["nw:off".to_owned()]);
    let question = w
        .wait_new(admin.id, question.message_id, |m| {
            !m.callback_data().is_empty()
        })
        .await;
    let asked = question.text.clone().unwrap();
    // Ann, Boris, Carl and the admin himself have never paid; Dana turned news off.
    assert!(
        asked.contains("4 recipients (1 turned news off)"),
        "{asked}"
    );
    let id: i64 = question.callback_data()[0]
        .split(':')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        broadcasts::Entity::find_by_id(id)
            .one(&w.db.conn)
            .await
            .unwrap()
            .unwrap()
            .status,
        broadcasts::DRAFT,
        "nothing is sent before Send"
    );

    // "Send" twice: the second press changes nothing.
    let go = format!("bc:{id}:go");
    w.tg.press(&admin, question.message_id, &go).unwrap();
    let confirmed = w
        .wait_new(admin.id, question.message_id, |m| m.text.is_some())
        .await;
    assert!(
        confirmed
            .text
            .unwrap()
            .contains(&format!("#{id} is queued"))
    );
    w.tg.press(&admin, question.message_id, &go).unwrap();
    let again = w
        .wait_new(admin.id, confirmed.message_id, |m| {
            m.text
                .as_deref()
                .is_some_and(|t| t.contains("no longer a draft"))
        })
        .await;
    let report = w
        .wait_new(admin.id, again.message_id, |m| {
            m.text.as_deref().is_some_and(|t| t.contains("done"))
        })
        .await
        .text
        .unwrap();
    assert!(
        report.contains("sent 3, blocked the bot 1, failed 0, skipped 0, turned news off 1"),
        "{report}"
    );

    let text = "Новый сервер в Амстердаме";
    assert_eq!(copies(&w, &ann, text), 1);
    assert_eq!(copies(&w, &boris, text), 1);
    assert_eq!(copies(&w, &blocked, text), 0);
    assert_eq!(copies(&w, &quiet, text), 0);
    let copy =
        w.tg.messages(boris.id)
            .into_iter()
            .find(|m| text_is(m, text))
            .unwrap();
    assert!(
        format!("{:?}", copy.reply_markup).contains("Не присылать новости"),
        "the button speaks the customer's language: {copy:?}"
    );
    let row = broadcasts::Entity::find_by_id(id)
        .one(&w.db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            row.status.as_str(),
            row.recipients,
            row.opted_out,
            row.sent,
            row.blocked,
            row.failed
        ),
        (
            broadcasts::DONE,
            Some(4),
            Some(1),
            Some(3),
            Some(1),
            Some(0)
        )
    );
    assert_eq!(
        send_queue::Entity::find()
            .filter(send_queue::Column::BroadcastId.eq(id))
            .count(&w.db.conn)
            .await
            .unwrap(),
        4,
        "one copy per recipient"
    );

    // Ann presses "no news" under the copy: the next broadcast passes her by.
    w.tg.press(&ann, copy_of(&w, &ann, text).message_id, "nw:off")
        .unwrap();
    let deadline = std::time::Instant::now() + crate::helpers::WAIT;
    while !bot_chats::Entity::find_by_id(ann.id)
        .one(&w.db.conn)
        .await
        .unwrap()
        .is_some_and(|c| c.broadcasts_off)
    {
        assert!(std::time::Instant::now() < deadline, "news stay on");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, report) = broadcast(&w, &admin, "all", "Second news").await;
    let report = report.text.unwrap();
    assert!(report.contains("turned news off 2"), "{report}");
    assert_eq!(copies(&w, &ann, "Second news"), 0);
    assert_eq!(copies(&w, &boris, "Second news"), 1);
}

fn copy_of(w: &World, user: &TestUser, text: &str) -> SentMessage {
    w.tg.messages(user.id)
        .into_iter()
        .find(|m| text_is(m, text))
        .unwrap()
}

#[tokio::test]
async fn bad_broadcasts_get_the_usage_and_store_nothing() {
    let w = world().await;
    let admin = TestUser::new(ADMIN_ID, "Админ", "ru");
    for (command, expected) in [
        (
            "/broadcast",
            "Сегменты: all, active, expired, never_paid, trial",
        ),
        ("/broadcast vip Привет", "unknown segment"),
        ("/broadcast active", "the text is empty"),
    ] {
        let answer = say(&w, &admin, command).await.text.unwrap();
        assert!(answer.contains(expected), "{command}: {answer}");
    }
    // A customer's /broadcast is not a command: the ordinary menu.
    let customer = TestUser::new(5_240_101, "Eve", "en");
    let answer = say(&w, &customer, "/broadcast all spam").await;
    assert!(!answer.text.unwrap().contains("Broadcast"));
    assert_eq!(
        broadcasts::Entity::find().count(&w.db.conn).await.unwrap(),
        0
    );
}
