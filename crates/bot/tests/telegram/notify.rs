//! Notifications against a slow Telegram: an event becomes a row of the sending queue, the
//! send is made with no transaction of the bot open (no pooled connection held, no
//! uncommitted row), and each notification is shown once, a redelivery included.

use std::time::{Duration, Instant};

use domain::entities::send_queue;
use sandbox::telegram::TestUser;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::helpers::{WAIT, world};

/// How long the emulator holds the answer to a send back.
const SLOW: Duration = Duration::from_secs(2);
/// A transaction open longer than this during the slow call is held across it (background
/// loops' own transactions last milliseconds).
const BRIEF: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_slow_telegram_holds_no_transaction_and_each_notification_is_shown_once() {
    let w = world().await;
    let user = TestUser::new(5_000_020, "Slow", "en");
    let start = w.tg.send_text(&user, "/start");
    w.wait_new(user.id, start, |m| m.text.is_some()).await;
    let stats = w.consumer_stats();

    // An activation with a link: one sendPhoto (its QR code); with a relative link (a panel
    // without a URL prefix): one sendMessage.
    for (method, link) in [
        ("sendPhoto", "https://vpn.example/sub/tg_5000020"),
        ("sendMessage", "/sub/relative_5000020"),
    ] {
        let calls = w.tg.calls(method);
        w.tg.slow_next(method, SLOW, 1);
        let envelope = w.activate(user.id, domain::PaymentId::new(), link).await;
        let key = format!("event:{}", envelope.event_id);
        let sent = async || {
            send_queue::Entity::find()
                .filter(send_queue::Column::DedupeKey.eq(key.as_str()))
                .filter(send_queue::Column::Status.eq(send_queue::SENT))
                .one(&w.db.conn)
                .await
                .expect("read the queue")
                .is_some()
        };

        // The emulator counts the call when it arrives, then holds its answer back.
        let deadline = Instant::now() + WAIT;
        while w.tg.calls(method) == calls {
            assert!(Instant::now() < deadline, "the bot calls {method}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut probes = 0;
        let mut open = Vec::new();
        while !sent().await {
            let now_open = testkit::open_transactions(&w.db.conn, BRIEF).await;
            if sent().await {
                break;
            }
            open.extend(now_open);
            probes += 1;
            assert!(
                Instant::now() < deadline,
                "the {method} notification is handled"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(
            open.is_empty(),
            "transactions open during the slow {method}: {open:?}"
        );
        assert!(
            probes >= 5,
            "probed {probes} times during the slow {method}"
        );
        assert_eq!(w.tg.calls(method), calls + 1, "one {method}");

        // The same event again: its marker is committed, nothing is queued or sent.
        let duplicates = stats.duplicates();
        w.infra
            .bus
            .publish_envelope(&envelope)
            .await
            .expect("the same event again");
        while stats.duplicates() == duplicates {
            assert!(Instant::now() < deadline, "the redelivery is handled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(w.tg.calls(method), calls + 1, "nothing sent again");
        let shown =
            w.tg.messages(user.id)
                .iter()
                .filter(|m| m.body().is_some_and(|t| t.contains(link)))
                .count();
        assert_eq!(shown, 1, "the {method} notification is shown once");
    }
}
