//! Expiry reminders: scheduled once per period and offset, queued when due, never for a
//! period that was renewed, with a one-tap Renew that leads to a paid renewal, and a switch
//! to turn them off.

use std::sync::Arc;

use bot::reminders::{Offsets, Reminders};
use bot::sender::{self, Guard, Kind, Outgoing, Queued};
use chrono::Utc;
use domain::PaymentStatus;
use domain::entities::{bot_chats, reminder_cursors, reminders, send_queue, subscriptions, users};
use sandbox::telegram::{PayOutcome, TestUser};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use tokio::sync::Notify;

use crate::helpers::{World, world_with};

async fn subscribe(w: &World, user_id: i64, expires_in: chrono::Duration) -> subscriptions::Model {
    let now = Utc::now();
    subscriptions::ActiveModel {
        user_id: Set(user_id),
        marzban_username: Set(format!("tg_{user_id}")),
        expires_at: Set(now + expires_in),
        data_limit_bytes: Set(None),
        status: Set("active".into()),
        subscription_url: Set(Some(format!("https://vpn.example/sub/{user_id}"))),
        synced_at: Set(Some(now)),
        sync_error: Set(None),
        // Settled: the scheduler reads rows a few seconds old.
        created_at: Set(now - chrono::Duration::seconds(10)),
        updated_at: Set(now - chrono::Duration::seconds(10)),
        ..Default::default()
    }
    .insert(&w.db.conn)
    .await
    .expect("subscription")
}

async fn user_row(w: &World, telegram_id: i64) -> users::Model {
    users::Entity::find()
        .filter(users::Column::TelegramId.eq(telegram_id))
        .one(&w.db.conn)
        .await
        .unwrap()
        .expect("the user")
}

#[tokio::test]
async fn reminders_are_sent_once_per_period_skip_a_renewed_one_and_renew_in_one_tap() {
    // The bot's own reminder loop is off: the test drives the scheduler itself.
    let w = world_with(&[("REMINDER_OFFSETS", "off".into())]).await;
    let ann = TestUser::new(5_200_001, "Ann", "en");
    w.buy_with_stars(&ann).await;
    let ann_row = user_row(&w, ann.id).await;
    let ann_sub = subscribe(
        &w,
        ann_row.id,
        chrono::Duration::days(3) - chrono::Duration::minutes(1),
    )
    .await;

    let bob = TestUser::new(5_200_002, "Боб", "ru");
    w.tg.add_user(&bob);
    let bob_row = users::ActiveModel {
        telegram_id: Set(bob.id),
        first_name: Set(Some(bob.first_name.clone())),
        language_code: Set(Some("ru".into())),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(&w.db.conn)
    .await
    .unwrap();
    let bob_sub = subscribe(
        &w,
        bob_row.id,
        chrono::Duration::days(1) - chrono::Duration::minutes(1),
    )
    .await;

    let scheduler = Reminders::new(
        w.db.conn.clone(),
        Offsets::default(),
        Arc::new(Notify::new()),
    );
    let page = scheduler.schedule_page().await.unwrap();
    // Four offsets each, less Bob's "3 days left", whose moment passed two days ago.
    assert_eq!((page.read, page.written), (2, 7));
    assert_eq!(
        scheduler.schedule_page().await.unwrap().read,
        0,
        "the cursor moved on"
    );
    // From the start again (a lost cursor): the unique key writes nothing twice.
    reminder_cursors::Entity::delete_many()
        .exec(&w.db.conn)
        .await
        .unwrap();
    let again = scheduler.schedule_page().await.unwrap();
    assert_eq!((again.read, again.written), (2, 0));

    // Bob renews before his "1 day left": his reminder is not sent.
    let renewed_until = bob_sub.expires_at + chrono::Duration::days(30);
    subscriptions::ActiveModel {
        id: Set(bob_sub.id),
        expires_at: Set(renewed_until),
        updated_at: Set(Utc::now() - chrono::Duration::seconds(10)),
        ..Default::default()
    }
    .update(&w.db.conn)
    .await
    .unwrap();

    let due = scheduler.dispatch_page().await.unwrap();
    assert_eq!((due.read, due.written, due.skipped), (2, 1, 1));
    assert_eq!(
        scheduler.dispatch_page().await.unwrap().read,
        0,
        "nothing due twice"
    );
    let bob_reminder = reminders::Entity::find()
        .filter(reminders::Column::SubscriptionId.eq(bob_sub.id))
        .filter(reminders::Column::OffsetSecs.eq(-86_400))
        .one(&w.db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bob_reminder.status, reminders::SKIPPED);
    assert_eq!(bob_reminder.reason.as_deref(), Some("renewed"));

    let reminder = w
        .wait_new(ann.id, 0, |m| {
            m.text
                .as_deref()
                .is_some_and(|t| t.contains("ends in 3 days"))
        })
        .await;
    assert_eq!(
        reminder.callback_data(),
        ["p:month_1:telegram:XTR", "buy", "rm:off"],
        "Renew repeats the last paid checkout"
    );
    // The renewed period gets its own reminders on the next pass.
    let next = scheduler.schedule_page().await.unwrap();
    assert_eq!((next.read, next.written), (1, 4));

    // A queued reminder whose period is renewed before it is sent is skipped by the sender.
    sender::enqueue(
        &w.db.conn,
        &[Queued {
            chat: bob.id,
            kind: Kind::Reminder,
            dedupe_key: "test:stale-reminder".into(),
            message: Outgoing {
                guard: Some(Guard {
                    subscription_id: bob_sub.id,
                    expires_at: bob_sub.expires_at,
                }),
                ..Outgoing::text("stale".into(), None)
            },
        }],
    )
    .await
    .unwrap();
    let stale = crate::sending::settled(&w, "test:stale-reminder").await;
    assert_eq!(stale.status, send_queue::SKIPPED);
    assert_eq!(stale.last_error.as_deref(), Some("the period was renewed"));
    assert!(w.tg.messages(bob.id).is_empty(), "Bob got no reminder");

    // Renew: one tap makes the invoice of the same plan; paying it completes the renewal.
    let before = w.payments_of(ann.id).await.len();
    w.tg.press(&ann, reminder.message_id, "p:month_1:telegram:XTR")
        .unwrap();
    let invoice = w
        .wait_new(ann.id, reminder.message_id, |m| m.invoice.is_some())
        .await;
    let payment_id = domain::PaymentId::parse(&invoice.invoice.clone().unwrap().payload).unwrap();
    let outcome = w.tg.pay_invoice(&ann, invoice.message_id).await.unwrap();
    assert!(matches!(outcome, PayOutcome::Paid { .. }), "{outcome:?}");
    w.wait_status(payment_id, PaymentStatus::Succeeded).await;
    assert_eq!(w.payments_of(ann.id).await.len(), before + 1);

    // Reminders off, from the reminder itself.
    let last = w.tg.messages(ann.id).last().unwrap().message_id;
    w.tg.press(&ann, reminder.message_id, "rm:off").unwrap();
    let shown = w
        .wait_new(ann.id, last, |m| {
            m.text
                .as_deref()
                .is_some_and(|t| t.contains("Expiry reminders: off"))
        })
        .await;
    assert_eq!(shown.callback_data(), ["rm:on", "nw:off", "menu"]);
    let chat = bot_chats::Entity::find_by_id(ann.id)
        .one(&w.db.conn)
        .await
        .unwrap()
        .unwrap();
    assert!(chat.reminders_off);
    let _ = ann_sub;
}
