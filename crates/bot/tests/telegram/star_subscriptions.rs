//! Telegram Stars subscriptions: a 30-day tariff sold as a monthly subscription, each
//! recurring charge a renewal payment completed exactly once, cancel and re-enable from "My
//! subscription", and a recurring charge nobody ordered kept for an admin.

use std::time::{Duration, Instant};

use domain::entities::payments;
use domain::{PaymentId, PaymentStatus};
use sandbox::telegram::{PayOutcome, SubscriptionError, TestUser};
use serde_json::json;

use crate::helpers::{WAIT, World, world};

/// /start → Buy → month_1 → "Stars subscription": pays the subscription link. Returns the
/// first payment and its charge id (which names the subscription).
async fn subscribe(w: &World, user: &TestUser) -> (PaymentId, String) {
    let data = "s:month_1";
    let providers = w.providers_menu(user, "month_1", data).await;
    w.tg.press(user, providers.message_id, data)
        .expect("press subscribe");
    let offer = w
        .wait_new(user.id, providers.message_id, |m| {
            !m.button_urls().is_empty()
        })
        .await;
    let link = offer.button_urls()[0].clone();
    let PayOutcome::Paid {
        telegram_payment_charge_id,
        ..
    } = w.tg.pay_link(user, &link).await.expect("a link")
    else {
        panic!("paid");
    };
    let subscription = w.tg.subscriptions().pop().expect("subscribed");
    assert_eq!(subscription.total_amount, 150);
    let payment_id = PaymentId::parse(&subscription.invoice_payload).expect("our payment id");
    w.wait_status(payment_id, PaymentStatus::Succeeded).await;
    (payment_id, telegram_payment_charge_id)
}

/// Waits until `user` has `n` succeeded payments; returns them, oldest first.
async fn paid(w: &World, user: &TestUser, n: usize) -> Vec<payments::Model> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut paid: Vec<_> = w
            .payments_of(user.id)
            .await
            .into_iter()
            .filter(|p| p.status == PaymentStatus::Succeeded)
            .collect();
        if paid.len() >= n {
            paid.sort_by_key(|p| p.created_at);
            return paid;
        }
        assert!(
            Instant::now() < deadline,
            "{} paid payments, wanted {n}",
            paid.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A recurring `successful_payment` as Telegram sends it.
fn recurring_update(
    user: &TestUser,
    payload: &str,
    charge: &str,
    expires: i64,
) -> serde_json::Value {
    json!({
        "update_id": 900_001,
        "message": {
            "message_id": 900,
            "date": chrono::Utc::now().timestamp(),
            "chat": {"id": user.id, "type": "private", "first_name": user.first_name},
            "from": {"id": user.id, "is_bot": false, "first_name": user.first_name},
            "successful_payment": {
                "currency": "XTR", "total_amount": 150, "invoice_payload": payload,
                "telegram_payment_charge_id": charge, "provider_payment_charge_id": "",
                "subscription_expiration_date": expires, "is_recurring": true,
            }
        }
    })
}

#[tokio::test]
async fn each_recurring_charge_renews_exactly_once() {
    let w = world().await;
    let user = TestUser::new(5_220_001, "Ann", "en");
    let (first, first_charge) = subscribe(&w, &user).await;
    let started = bot::stars::of_user(&w.db.conn, user.id)
        .await
        .unwrap()
        .expect("the subscription is recorded");
    assert_eq!(started.charge_id, first_charge);
    assert!(!started.canceled);

    let second = w.tg.charge_subscription(&first_charge).expect("charged");
    paid(&w, &user, 2).await;
    let third = w.tg.charge_subscription(&first_charge).expect("charged");
    let paid_now = paid(&w, &user, 3).await;
    let first_row = w.payment(first).await;
    for (renewal, charge) in paid_now[1..].iter().zip([&second, &third]) {
        assert_eq!(
            renewal.provider_payment_id.as_deref(),
            Some(charge.as_str())
        );
        assert_eq!(renewal.provider.as_str(), "telegram");
        assert_eq!(
            (renewal.amount_minor, renewal.currency.code()),
            (150, "XTR")
        );
        assert_eq!(
            (renewal.user_id, renewal.tariff_id),
            (first_row.user_id, first_row.tariff_id)
        );
        assert_eq!(renewal.metadata["renews"], json!(first));
    }
    assert_eq!(w.outbox("payment.completed").await.len(), 3);

    // Telegram sends the third charge again (a crash before the offset was confirmed).
    let expires = w.tg.subscriptions()[0].expiration_date;
    let again = recurring_update(&user, &first.to_string(), &third, expires);
    w.app().handle(&again).await.expect("stored");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(paid(&w, &user, 3).await.len(), 3, "renewed once");
    assert_eq!(w.outbox("payment.completed").await.len(), 3);
    let for_third = w
        .inbox()
        .await
        .into_iter()
        .filter(|n| n.dedupe_key == format!("payment:{third}"))
        .count();
    assert_eq!(for_third, 1);

    let renewed = bot::stars::of_user(&w.db.conn, user.id)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(
        renewed.expires_at.timestamp(),
        started.expires_at.timestamp() + 2 * 2_592_000,
        "two charges, sixty days more"
    );
}

#[tokio::test]
async fn cancelling_in_my_subscription_stops_the_next_charge() {
    let w = world().await;
    let user = TestUser::new(5_220_002, "Борис", "ru");
    let (_, first_charge) = subscribe(&w, &user).await;

    let mine = w.my_subscription(&user, "ss:off").await;
    assert!(
        mine.body().unwrap_or_default().contains("Подписка Stars"),
        "{mine:?}"
    );
    w.tg.press(&user, mine.message_id, "ss:off").expect("press");
    let canceled = w
        .wait_new(user.id, mine.message_id, |m| {
            m.callback_data().contains(&"ss:on".to_owned())
        })
        .await;
    assert!(canceled.body().unwrap_or_default().contains("отменена"));
    assert!(w.tg.subscriptions()[0].canceled);
    assert_eq!(
        w.tg.charge_subscription(&first_charge),
        Err(SubscriptionError::Canceled(first_charge.clone()))
    );
    assert_eq!(paid(&w, &user, 1).await.len(), 1, "nothing charged");

    w.tg.press(&user, canceled.message_id, "ss:on")
        .expect("press");
    w.wait_new(user.id, canceled.message_id, |m| {
        m.callback_data().contains(&"ss:off".to_owned())
    })
    .await;
    w.tg.charge_subscription(&first_charge).expect("re-enabled");
    assert_eq!(paid(&w, &user, 2).await.len(), 2);
}

#[tokio::test]
async fn a_recurring_charge_for_an_unknown_payload_is_kept_for_an_admin() {
    let w = world().await;
    let user = TestUser::new(5_220_003, "Chen", "en");
    let payload = PaymentId::new().to_string();
    let update = recurring_update(&user, &payload, "stx-nobody-ordered", 1_900_000_000);
    w.app().handle(&update).await.expect("stored");
    let deadline = Instant::now() + WAIT;
    let row = loop {
        let row = w
            .inbox()
            .await
            .into_iter()
            .find(|n| n.dedupe_key == "payment:stx-nobody-ordered")
            .expect("stored in the inbox");
        if row.processed_at.is_some() {
            break row;
        }
        assert!(Instant::now() < deadline, "never processed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row.outcome.as_deref(), Some("unknown_subscription"));
    assert!(
        row.body.contains("stx-nobody-ordered"),
        "the money's proof is kept"
    );
    assert!(w.payments_of(user.id).await.is_empty());
}

#[tokio::test]
async fn an_admin_refunds_a_renewal_by_its_own_charge() {
    let w = world().await;
    let user = TestUser::new(5_220_004, "Dasha", "en");
    let admin = TestUser::new(crate::helpers::ADMIN_ID, "Root", "en");
    let (first, first_charge) = subscribe(&w, &user).await;
    let second = w.tg.charge_subscription(&first_charge).expect("charged");
    let renewal = paid(&w, &user, 2).await.pop().expect("the renewal");
    assert_eq!(
        renewal.provider_payment_id.as_deref(),
        Some(second.as_str())
    );

    let sent = w.tg.send_text(&admin, &format!("/refund {}", renewal.id));
    let confirm = w
        .wait_new(admin.id, sent, |m| !m.callback_data().is_empty())
        .await;
    w.tg.press(&admin, confirm.message_id, &format!("rf:{}", renewal.id))
        .unwrap();
    w.wait_status(renewal.id, PaymentStatus::Refunded).await;
    let charges = w.tg.charges();
    let refunded: Vec<_> = charges
        .iter()
        .filter(|c| c.refunded)
        .map(|c| c.telegram_payment_charge_id.as_str())
        .collect();
    assert_eq!(
        refunded,
        [second.as_str()],
        "the renewal's charge, not the first"
    );
    assert_eq!(w.payment(first).await.status, PaymentStatus::Succeeded);
    assert_eq!(w.outbox("payment.refunded").await.len(), 1);
}
