//! Promo codes in the bot (issue 23), through the real gateway and worker: an admin makes,
//! lists and disables codes with `/promo`; a customer enters `/promo CODE`, sees the tariffs
//! and prices with the code, pays the discounted price and the use is counted once; bad codes
//! and bad commands get a clear answer and change nothing.

use domain::PaymentStatus;
use domain::entities::{payment_promos, promo_codes};
use sandbox::telegram::{PayOutcome, SentMessage, TestUser};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::Value;

use crate::helpers::{ADMIN_ID, World, world};

async fn say(w: &World, user: &TestUser, text: &str) -> SentMessage {
    let sent = w.tg.send_text(user, text);
    w.wait_new(user.id, sent, |m| {
        m.method == "sendMessage" && m.text.is_some()
    })
    .await
}

/// The answer to `text` that contains `expected` (other messages, like a payment's
/// confirmation, may arrive meanwhile).
async fn answer(w: &World, user: &TestUser, text: &str, expected: &str) -> String {
    let sent = w.tg.send_text(user, text);
    w.wait_new(user.id, sent, |m| {
        m.text.as_deref().is_some_and(|t| t.contains(expected))
    })
    .await
    .text
    .unwrap()
}

async fn codes(w: &World) -> u64 {
    promo_codes::Entity::find().count(&w.db.conn).await.unwrap()
}

/// The text of the button whose data is `data`.
fn label(message: &SentMessage, data: &str) -> String {
    message
        .reply_markup
        .as_ref()
        .and_then(|m| m["inline_keyboard"].as_array())
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .find(|b| b["callback_data"] == data)
        .and_then(|b| b["text"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// `/promo CODE` → the code's tariff → its card, once it offers `pay_data`.
async fn promo_card(
    w: &World,
    user: &TestUser,
    code: &str,
    tariff: &str,
    pay_data: &str,
) -> SentMessage {
    let applied = say(w, user, &format!("/promo {code}")).await;
    let tariff_data = format!("t:{tariff}:{}", code.to_ascii_uppercase());
    assert!(
        applied.callback_data().contains(&tariff_data),
        "{applied:#?}"
    );
    w.tg.press(user, applied.message_id, &tariff_data)
        .expect("press the tariff");
    w.wait_new(user.id, applied.message_id, |m| {
        m.callback_data().iter().any(|d| d == pay_data)
    })
    .await
}

#[tokio::test]
async fn admins_manage_codes_and_a_customer_pays_the_discounted_price_once() {
    let w = world().await;
    let admin = TestUser::new(ADMIN_ID, "Админ", "ru");

    // An admin makes a code; bad commands are explained and make nothing.
    let made = say(
        &w,
        &admin,
        "/promo new stars20 percent 20 uses=5 once tariffs=month_1",
    )
    .await;
    let text = made.text.unwrap();
    assert!(
        text.contains("STARS20") && text.contains("20%") && text.contains("до 5"),
        "{text}"
    );
    assert_eq!(codes(&w).await, 1);
    for bad in [
        "/promo new STARS20 days 3",
        "/promo new FULL percent 100",
        "/promo new X gift 5",
        "/promo new WEEK days 7 until=someday",
    ] {
        let answer = say(&w, &admin, bad).await.text.unwrap();
        assert!(
            answer.contains("Не получилось") || answer.contains("уже есть"),
            "{bad}: {answer}"
        );
    }
    assert_eq!(codes(&w).await, 1);
    let help = say(&w, &admin, "/promo help").await.text.unwrap();
    assert!(help.contains("/promo new"), "{help}");

    // A customer finds how to enter a code under the tariffs.
    let customer = TestUser::new(5_240_001, "Pat", "en");
    let start = w.tg.send_text(&customer, "/start");
    let menu = w
        .wait_new(customer.id, start, |m| {
            m.callback_data().contains(&"buy".to_owned())
        })
        .await;
    w.tg.press(&customer, menu.message_id, "buy").unwrap();
    let tariffs = w
        .wait_new(customer.id, menu.message_id, |m| {
            m.callback_data().contains(&"promo".to_owned())
        })
        .await;
    assert_eq!(label(&tariffs, "promo"), "🎟 Have a promo code?");
    w.tg.press(&customer, tariffs.message_id, "promo").unwrap();
    w.wait_new(customer.id, tariffs.message_id, |m| {
        m.text.as_deref().is_some_and(|t| t.contains("/promo CODE"))
    })
    .await;

    // They enter it: only month_1, priced 20 % off, no automatic renewals.
    let pay_data = "p:month_1:telegram:XTR:STARS20";
    let applied = say(&w, &customer, "/promo stars20").await;
    assert!(applied.text.as_deref().unwrap().contains("20% off"));
    assert!(
        !applied
            .callback_data()
            .contains(&"t:month_3:STARS20".to_owned())
    );
    let card = promo_card(&w, &customer, "stars20", "month_1", pay_data).await;
    let price = label(&card, pay_data);
    assert!(price.contains("120") && price.contains("150"), "{price}");
    assert!(
        card.callback_data()
            .iter()
            .all(|d| !d.starts_with("s:") && !d.starts_with("a:")),
        "{card:#?}"
    );
    w.tg.press(&customer, card.message_id, pay_data).unwrap();
    let invoice = w
        .wait_new(customer.id, card.message_id, |m| m.invoice.is_some())
        .await;
    let details = invoice.invoice.clone().unwrap();
    assert_eq!(details.total_amount, 120);
    let payment_id = domain::PaymentId::parse(&details.payload).unwrap();
    let outcome =
        w.tg.pay_invoice(&customer, invoice.message_id)
            .await
            .unwrap();
    assert!(matches!(outcome, PayOutcome::Paid { .. }), "{outcome:?}");
    let paid = w.wait_status(payment_id, PaymentStatus::Succeeded).await;
    assert_eq!(paid.amount_minor, 120);
    let row = payment_promos::Entity::find_by_id(payment_id)
        .one(&w.db.conn)
        .await
        .unwrap()
        .unwrap();
    assert!(row.used_at.is_some());
    assert_eq!(row.discount_minor, 30);

    // Once per customer: the same customer is told, at once.
    answer(&w, &customer, "/promo STARS20", "used this code already").await;
    answer(&w, &customer, "/promo NOPE", "no such code").await;
    // A customer cannot make codes: `/promo new …` is a code to apply, and unknown.
    answer(&w, &customer, "/promo new FREE percent 99", "no such code").await;
    assert_eq!(codes(&w).await, 1);

    // The admin's list has the code's numbers.
    let list = say(&w, &admin, "/promo").await.text.unwrap();
    assert!(
        list.contains("STARS20") && list.contains("использований 1") && list.contains("100.0%"),
        "{list}"
    );

    // Another customer opens the card; the admin disables the code before the press: the
    // gateway refuses it, the customer is told why, no payment is made.
    let late = TestUser::new(5_240_002, "Lou", "en");
    let late_card = promo_card(&w, &late, "STARS20", "month_1", pay_data).await;
    let off = say(&w, &admin, "/promo off stars20").await.text.unwrap();
    assert!(off.contains("STARS20") && off.contains("отключён"), "{off}");
    w.tg.press(&late, late_card.message_id, pay_data).unwrap();
    let refused = w
        .wait_new(late.id, late_card.message_id, |m| m.text.is_some())
        .await;
    assert!(
        refused
            .text
            .as_deref()
            .unwrap()
            .contains("the code is disabled"),
        "{refused:#?}"
    );
    assert!(w.payments_of(late.id).await.is_empty());
    let disabled = say(&w, &late, "/promo STARS20").await.text.unwrap();
    assert!(disabled.contains("disabled"), "{disabled}");
    let still_one = payment_promos::Entity::find()
        .filter(payment_promos::Column::UsedAt.is_not_null())
        .count(&w.db.conn)
        .await
        .unwrap();
    assert_eq!(still_one, 1);
}
