//! `/grant <telegram id> <days> <reason>`: an admin gives a customer days through the
//! gateway; the same command again grants nothing more; bad input and unknown customers get
//! a clear answer and change nothing; others get the ordinary menu.

use domain::entities::{manual_grants, outbox};
use sandbox::telegram::{SentMessage, TestUser};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

use crate::helpers::{ADMIN_ID, World, world};

async fn say(w: &World, user: &TestUser, text: &str) -> SentMessage {
    let sent = w.tg.send_text(user, text);
    w.wait_new(user.id, sent, |m| {
        m.method == "sendMessage" && m.text.is_some()
    })
    .await
}

/// `manual_grants` rows and their `grant.created` events.
pub(crate) async fn grants(w: &World) -> (u64, u64) {
    let rows = manual_grants::Entity::find()
        .count(&w.db.conn)
        .await
        .unwrap();
    let events = outbox::Entity::find()
        .filter(outbox::Column::RoutingKey.eq("grant.created"))
        .count(&w.db.conn)
        .await
        .unwrap();
    (rows, events)
}

#[tokio::test]
async fn an_admin_grants_days_once_per_command() {
    let w = world().await;
    let customer = TestUser::new(5_230_101, "Gus", "en");
    // A checkout makes the customer known to the gateway.
    w.checkout(&customer, "month_1", "telegram", "XTR").await;
    let admin = TestUser::new(ADMIN_ID, "Админ", "ru");

    let done = say(&w, &admin, "/grant 5230101 7 компенсация за сбой").await;
    let text = done.text.unwrap();
    assert!(
        text.contains("5230101") && text.contains("7 дней"),
        "{text}"
    );
    assert_eq!(grants(&w).await, (1, 1));
    let row = manual_grants::Entity::find()
        .one(&w.db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            row.days,
            row.reason.as_str(),
            row.granted_by,
            row.kind.as_str()
        ),
        (7, "компенсация за сбой", Some(ADMIN_ID), "admin")
    );

    // The same command again: nothing granted twice.
    let again = say(&w, &admin, "/grant 5230101 7 компенсация за сбой").await;
    let text = again.text.unwrap();
    assert!(
        text.contains("уже сделано") && text.contains(&format!("№{}", row.id)),
        "{text}"
    );
    assert_eq!(grants(&w).await, (1, 1));

    // Bad input: a clear answer, nothing granted.
    for bad in [
        "/grant",
        "/grant 5230101 0 gift",
        "/grant 5230101 -3 gift",
        "/grant 5230101 100000 gift",
        "/grant 5230101 7",
        "/grant abc 7 gift",
    ] {
        let answer = say(&w, &admin, bad).await.text.unwrap();
        assert!(
            answer.contains("/grant <telegram id> <дни от 1 до 3650> <причина>"),
            "{bad}: {answer}"
        );
    }
    let unknown = say(&w, &admin, "/grant 999999 7 gift").await.text.unwrap();
    assert!(
        unknown.contains("999999") && unknown.contains("не найден"),
        "{unknown}"
    );
    assert_eq!(grants(&w).await, (1, 1));

    // Not an admin: the ordinary menu, no grant.
    let sent = w.tg.send_text(&customer, "/grant 5230101 30 for me");
    let menu = w
        .wait_new(customer.id, sent, |m| m.reply_markup.is_some())
        .await;
    assert!(menu.callback_data().contains(&"buy".into()), "{menu:?}");
    assert_eq!(grants(&w).await, (1, 1));
}
