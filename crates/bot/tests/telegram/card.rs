//! Paying by card inside Telegram (a provider token from @BotFather, currency RUB): the
//! whole path through the real gateway, worker and bot — and the invoices pre-checkout
//! refuses: expired ones, and ones whose tariff price changed or stopped being sold since.

use domain::PaymentStatus;
use domain::entities::{payments, tariffs};
use sandbox::telegram::{PayOutcome, TestUser};
use sea_orm::ActiveValue::Set;
use sea_orm::{ActiveModelTrait, EntityTrait};

use crate::helpers::{World, world_with};

/// A test token as @BotFather issues them for a provider's test mode.
const PROVIDER_TOKEN: &str = "381764678:TEST:100500";

async fn card_world() -> World {
    world_with(&[("TELEGRAM_PAYMENT_PROVIDER_TOKEN", PROVIDER_TOKEN.into())]).await
}

/// The customer presses "card" for `tariff`: the bot's invoice message and our payment id.
async fn card_invoice(w: &World, user: &TestUser, tariff: &str) -> (i64, domain::PaymentId) {
    let (invoice, _) = w.checkout(user, tariff, "telegram", "RUB").await;
    let details = invoice.invoice.clone().expect("sendInvoice");
    assert_eq!(details.currency, "RUB");
    assert_eq!(details.provider_token, PROVIDER_TOKEN);
    (
        invoice.message_id,
        domain::PaymentId::parse(&details.payload).unwrap(),
    )
}

/// The seller edits the tariff of `payment_id` after its invoice went out.
async fn edit_tariff(
    w: &World,
    payment_id: domain::PaymentId,
    edit: impl FnOnce(&mut tariffs::ActiveModel),
) {
    let tariff_id = w.payment(payment_id).await.tariff_id;
    let mut tariff: tariffs::ActiveModel = tariffs::Entity::find_by_id(tariff_id)
        .one(&w.db.conn)
        .await
        .unwrap()
        .expect("tariff")
        .into();
    edit(&mut tariff);
    tariff.update(&w.db.conn).await.unwrap();
}

#[tokio::test]
async fn a_card_payment_inside_telegram_completes_once() {
    let w = card_world().await;
    let user = TestUser::new(5_100_001, "Dasha", "ru");
    let (message_id, payment_id) = card_invoice(&w, &user, "month_1").await;
    let payment = w.payment(payment_id).await;
    assert_eq!(payment.amount_minor, 19_900, "199.00 RUB");
    assert!(payment.expires_at.is_some(), "a Telegram invoice expires");

    let outcome = w.tg.pay_invoice(&user, message_id).await.unwrap();
    assert!(matches!(outcome, PayOutcome::Paid { .. }), "{outcome:?}");
    let paid = w.wait_status(payment_id, PaymentStatus::Succeeded).await;
    assert!(!paid.flagged);
    // The stored proof is Telegram's update with the provider's own charge id.
    let inbox = w.inbox().await;
    assert_eq!(inbox.len(), 1);
    let stored: serde_json::Value = serde_json::from_str(&inbox[0].body).unwrap();
    let charge = stored["message"]["successful_payment"]["provider_payment_charge_id"]
        .as_str()
        .unwrap_or_default();
    assert!(!charge.is_empty(), "card payments carry the provider's id");
    assert_eq!(w.outbox("payment.completed").await.len(), 1);
    w.wait_new(user.id, message_id, |m| {
        m.text.as_deref().is_some_and(|t| t.contains("199.00"))
    })
    .await;
}

#[tokio::test]
async fn an_expired_invoice_is_refused_at_pre_checkout() {
    let w = card_world().await;
    let user = TestUser::new(5_100_002, "Egor", "en");
    let (message_id, payment_id) = card_invoice(&w, &user, "month_1").await;
    // Last month's invoice.
    let mut row: payments::ActiveModel = w.payment(payment_id).await.into();
    row.expires_at = Set(Some(chrono::Utc::now() - chrono::Duration::minutes(1)));
    row.update(&w.db.conn).await.unwrap();

    let outcome = w.tg.pay_invoice(&user, message_id).await.unwrap();
    let PayOutcome::Refused { error_message, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(error_message.contains("expired"), "{error_message}");
    assert!(w.tg.charges().is_empty(), "nothing was charged");
    assert_eq!(w.payment(payment_id).await.status, PaymentStatus::Pending);
}

#[tokio::test]
async fn an_invoice_whose_tariff_price_changed_is_refused_at_pre_checkout() {
    let w = card_world().await;
    let user = TestUser::new(5_100_003, "Фёдор", "ru");
    let (message_id, payment_id) = card_invoice(&w, &user, "month_1").await;
    // The seller raises the price.
    edit_tariff(&w, payment_id, |t| t.price_rub_minor = Set(Some(24_900))).await;

    let outcome = w.tg.pay_invoice(&user, message_id).await.unwrap();
    let PayOutcome::Refused { error_message, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        error_message.contains("Цена тарифа изменилась"),
        "{error_message}"
    );
    assert!(w.tg.charges().is_empty(), "nothing was charged");
}

#[tokio::test]
async fn an_invoice_whose_tariff_is_no_longer_sold_is_refused_at_pre_checkout() {
    let w = card_world().await;
    let user = TestUser::new(5_100_004, "Zoe", "en");
    let (message_id, payment_id) = card_invoice(&w, &user, "month_1").await;
    // The seller stops selling the tariff; the price is unchanged.
    edit_tariff(&w, payment_id, |t| t.active = Set(false)).await;

    let outcome = w.tg.pay_invoice(&user, message_id).await.unwrap();
    let PayOutcome::Refused { error_message, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(error_message.contains("price"), "{error_message}");
    assert!(w.tg.charges().is_empty(), "nothing was charged");
    assert_eq!(w.payment(payment_id).await.status, PaymentStatus::Pending);
}
