//! The sending queue against the Telegram emulator, which enforces Telegram's limits (30 a
//! second in all, about one a second per chat with short bursts, 429 with `retry_after`) and
//! answers 403 for a user who blocked the bot.

use std::time::{Duration, Instant};

use bot::sender::{self, Kind, Outgoing, Queued};
use domain::entities::{bot_chats, send_queue};
use sandbox::telegram::TestUser;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::helpers::{WAIT, World, world};

fn queued(chat: i64, key: &str, text: &str) -> Queued {
    Queued {
        chat,
        kind: Kind::Broadcast,
        dedupe_key: key.to_owned(),
        message: Outgoing::text(text.to_owned(), None),
    }
}

async fn row(w: &World, key: &str) -> send_queue::Model {
    send_queue::Entity::find()
        .filter(send_queue::Column::DedupeKey.eq(key))
        .one(&w.db.conn)
        .await
        .unwrap()
        .expect("the row")
}

/// Waits until the row `key` is no longer pending.
pub async fn settled(w: &World, key: &str) -> send_queue::Model {
    let deadline = Instant::now() + WAIT;
    loop {
        let row = row(w, key).await;
        if row.status != send_queue::PENDING {
            return row;
        }
        assert!(Instant::now() < deadline, "{key} is still pending: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_queue_keeps_to_telegrams_limits_and_skips_a_user_who_blocked_the_bot() {
    let w = world().await;
    let ann = TestUser::new(5_100_001, "Ann", "en");
    let bob = TestUser::new(5_100_002, "Bob", "en");
    w.tg.add_user(&ann);
    w.tg.block_bot(&bob);

    // More messages for one chat than the emulator's per-chat burst (20), so a sender that
    // did not pace one chat at one a second would be refused.
    let mut rows: Vec<Queued> = (0..24)
        .map(|i| queued(ann.id, &format!("test:ann:{i}"), &format!("news {i}")))
        .collect();
    rows.push(queued(bob.id, "test:bob:0", "news for Bob"));
    assert_eq!(sender::enqueue(&w.db.conn, &rows).await.unwrap(), 25);
    assert_eq!(
        sender::enqueue(&w.db.conn, &rows).await.unwrap(),
        0,
        "queued again: nothing new"
    );

    let bob_row = settled(&w, "test:bob:0").await;
    assert_eq!(bob_row.status, send_queue::SKIPPED);
    let chat = bot_chats::Entity::find_by_id(bob.id)
        .one(&w.db.conn)
        .await
        .unwrap()
        .expect("Bob's chat is known");
    assert!(
        chat.blocked_at.is_some(),
        "Bob is marked as having blocked the bot"
    );
    for i in 0..24 {
        let row = settled(&w, &format!("test:ann:{i}")).await;
        assert_eq!(row.status, send_queue::SENT, "{row:?}");
    }
    let texts: Vec<String> =
        w.tg.messages(ann.id)
            .into_iter()
            .filter_map(|m| m.text)
            .collect();
    let expected: Vec<String> = (0..24).map(|i| format!("news {i}")).collect();
    assert_eq!(texts, expected, "each once, in order");
    assert_eq!(w.tg.rate_limited(), 0, "the sender never went over a limit");

    // Once blocked, Bob's next rows are skipped without a call to Telegram.
    let calls = w.tg.calls("sendMessage");
    sender::enqueue(&w.db.conn, &[queued(bob.id, "test:bob:1", "more news")])
        .await
        .unwrap();
    assert_eq!(settled(&w, "test:bob:1").await.status, send_queue::SKIPPED);
    assert_eq!(
        w.tg.calls("sendMessage"),
        calls,
        "no call for a blocked chat"
    );

    // Bob unblocks the bot and writes: the mark goes, and the queue reaches him again.
    w.tg.unblock_bot(&bob);
    let start = w.tg.send_text(&bob, "/start");
    w.wait_new(bob.id, start, |m| m.text.is_some()).await;
    sender::enqueue(&w.db.conn, &[queued(bob.id, "test:bob:2", "welcome back")])
        .await
        .unwrap();
    assert_eq!(settled(&w, "test:bob:2").await.status, send_queue::SENT);
    assert!(
        w.tg.messages(bob.id)
            .iter()
            .any(|m| m.text.as_deref() == Some("welcome back"))
    );
}

#[tokio::test]
async fn a_429_is_honoured_and_the_message_is_sent_once_afterwards() {
    let w = world().await;
    let ann = TestUser::new(5_100_011, "Ann", "en");
    w.tg.add_user(&ann);
    w.tg.fail_next("sendMessage", 429, 1);
    sender::enqueue(&w.db.conn, &[queued(ann.id, "test:429", "after the pause")])
        .await
        .unwrap();
    let row = settled(&w, "test:429").await;
    assert_eq!(row.status, send_queue::SENT);
    assert_eq!(row.attempts, 0, "a 429 costs no attempt");
    assert_eq!(w.tg.calls("sendMessage"), 2, "refused once, then sent");
    let shown = w.tg.messages(ann.id).len();
    assert_eq!(shown, 1, "shown once");
    let waited = row.sent_at.expect("sent") - row.created_at;
    assert!(
        waited >= chrono::Duration::milliseconds(900),
        "the retry waited for retry_after (1 s): {waited}"
    );
}

#[tokio::test]
async fn a_refused_message_fails_for_good_and_a_failing_telegram_is_retried() {
    let w = world().await;
    let ann = TestUser::new(5_100_021, "Ann", "en");
    w.tg.add_user(&ann);
    w.tg.fail_next("sendMessage", 400, 1);
    sender::enqueue(&w.db.conn, &[queued(ann.id, "test:400", "refused")])
        .await
        .unwrap();
    let row = settled(&w, "test:400").await;
    assert_eq!(row.status, send_queue::FAILED);
    assert!(row.last_error.is_some_and(|e| e.contains("Bad Request")));

    w.tg.fail_next("sendMessage", 502, 1);
    sender::enqueue(&w.db.conn, &[queued(ann.id, "test:502", "retried")])
        .await
        .unwrap();
    let row = settled(&w, "test:502").await;
    assert_eq!(row.status, send_queue::SENT);
    assert_eq!(row.attempts, 1, "one failed attempt before");
}
