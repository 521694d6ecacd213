//! Per-user rate limits (issue 18): presses and commands over the limit get a polite "too many
//! requests, try again in N s" and do nothing; other users are not affected; the pre-checkout
//! answer and the payment message are never limited.

use std::time::{Duration, Instant};

use domain::PaymentStatus;
use sandbox::telegram::{PayOutcome, TestUser};

use crate::helpers::{WAIT, world_with};

/// Waits for the answer to a callback query; returns its text.
async fn toast(w: &crate::helpers::World, press: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(answer) = w.tg.callback_answer(press) {
            return answer["text"].as_str().unwrap_or_default().to_owned();
        }
        assert!(Instant::now() < deadline, "the press {press} is answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn presses_and_commands_over_the_user_limit_get_a_polite_answer_and_do_nothing() {
    let w = world_with(&[("BOT_USER_LIMIT", "1/min,burst=3".into())]).await;
    let user = TestUser::new(5_100_001, "Lena", "en");
    // 1: /start, 2: Buy, 3: the tariff — within the burst.
    let providers = w
        .providers_menu(&user, "month_1", "p:month_1:telegram:XTR")
        .await;
    let sent_before = w.tg.messages(user.id).len();

    // 4: over the limit — a toast, no payment.
    let press =
        w.tg.press(&user, providers.message_id, "p:month_1:telegram:XTR")
            .unwrap();
    let text = toast(&w, &press).await;
    assert!(
        text.starts_with("Too many requests. Please try again in"),
        "{text}"
    );
    let secs: u64 = text
        .trim_start_matches("Too many requests. Please try again in ")
        .trim_end_matches(" s.")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "{text}");
    assert!(w.payments_of(user.id).await.is_empty(), "nothing created");

    // Commands: the same words once as a message, then silence.
    let first = w.tg.send_text(&user, "/start");
    let refusal = w.wait_new(user.id, first, |m| m.text.is_some()).await;
    assert!(
        refusal
            .text
            .clone()
            .unwrap()
            .starts_with("Too many requests. Please try again in"),
    );
    assert!(refusal.callback_data().is_empty(), "no menu");
    for _ in 0..5 {
        w.tg.send_text(&user, "/help");
    }
    let russian = TestUser::new(5_100_002, "Оля", "ru");
    let other = w.tg.send_text(&russian, "/start");
    // Another user is answered; by then the limited user's commands have been handled.
    w.wait_new(russian.id, other, |m| {
        m.callback_data().contains(&"buy".into())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        w.tg.messages(user.id).len(),
        sent_before + 1,
        "one refusal message, nothing else"
    );
}

#[tokio::test]
async fn pay_presses_have_their_own_limit_and_a_payment_is_never_limited() {
    let w = world_with(&[
        ("BOT_USER_LIMIT", "1/min,burst=6".into()),
        ("BOT_CHECKOUT_LIMIT", "1/min,burst=1".into()),
    ])
    .await;
    let user = TestUser::new(5_100_003, "Максим", "ru");
    // /start, Buy, tariff, Pay: 4 of 6 presses, 1 of 1 checkout.
    let (invoice, providers) = w.checkout(&user, "month_1", "telegram", "XTR").await;
    assert!(invoice.invoice.is_some(), "{invoice:?}");
    // A second Pay press: over the checkout limit, in Russian.
    let press =
        w.tg.press(&user, providers.message_id, "p:month_1:telegram:XTR")
            .unwrap();
    let text = toast(&w, &press).await;
    assert!(
        text.starts_with("Слишком много запросов. Попробуйте снова через"),
        "{text}"
    );
    // Use up the rest of the user limit too.
    for _ in 0..3 {
        let press = w.tg.press(&user, providers.message_id, "menu").unwrap();
        toast(&w, &press).await;
    }
    let press = w.tg.press(&user, providers.message_id, "menu").unwrap();
    assert!(
        toast(&w, &press)
            .await
            .starts_with("Слишком много запросов")
    );

    // Paying is not a press: the pre-checkout query is answered, the payment stored.
    let payment_id = domain::PaymentId::parse(&invoice.invoice.clone().unwrap().payload).unwrap();
    let outcome = w.tg.pay_invoice(&user, invoice.message_id).await.unwrap();
    assert!(matches!(outcome, PayOutcome::Paid { .. }), "{outcome:?}");
    w.wait_status(payment_id, PaymentStatus::Succeeded).await;
    assert_eq!(w.payments_of(user.id).await.len(), 1);
}
