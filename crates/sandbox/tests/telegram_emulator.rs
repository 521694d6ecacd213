//! The Telegram Bot API emulator, driven from the bot side by the real `frankenstein` client
//! and from the user side by the emulator's scripted users.

use std::time::Duration;

use frankenstein::AsyncTelegramApi;
use frankenstein::client_reqwest::Bot;
use frankenstein::input_file::{FileUpload, InputFile};
use frankenstein::methods::{
    AnswerCallbackQueryParams, AnswerPreCheckoutQueryParams, CreateInvoiceLinkParams,
    EditMessageTextParams, EditUserStarSubscriptionParams, GetUpdatesParams,
    RefundStarPaymentParams, SendInvoiceParams, SendMessageParams, SendPhotoParams,
    SetWebhookParams,
};
use frankenstein::payments::LabeledPrice;
use frankenstein::types::{
    AllowedUpdate, InlineKeyboardButton, InlineKeyboardMarkup, MaybeInaccessibleMessage,
    ReplyMarkup,
};
use frankenstein::updates::{Update, UpdateContent};
use sandbox::telegram::{self, Config, PayOutcome, PhotoSent, TestUser};

async fn emulator(config: Config) -> (telegram::Handle, Bot) {
    let handle = telegram::spawn(config).await.unwrap();
    let bot = Bot::new_url(format!("{}/bot{}", handle.api_url(), handle.token()));
    (handle, bot)
}

fn ann() -> TestUser {
    TestUser::new(1001, "Ann", "en")
}

fn api_error(error: frankenstein::Error) -> (u64, String) {
    match error {
        frankenstein::Error::Api(response) => (response.error_code, response.description),
        other => panic!("expected a Telegram error, got {other:?}"),
    }
}

async fn poll(bot: &Bot, offset: Option<i64>, timeout: u32) -> Vec<Update> {
    let params = GetUpdatesParams::builder()
        .maybe_offset(offset)
        .timeout(timeout)
        .allowed_updates(vec![
            AllowedUpdate::Message,
            AllowedUpdate::CallbackQuery,
            AllowedUpdate::PreCheckoutQuery,
        ])
        .build();
    bot.get_updates(&params).await.unwrap().result
}

fn next_offset(updates: &[Update]) -> Option<i64> {
    updates.last().map(|u| i64::from(u.update_id) + 1)
}

fn stars_invoice(chat: i64, prices: Vec<LabeledPrice>) -> SendInvoiceParams {
    SendInvoiceParams::builder()
        .chat_id(chat)
        .title("VPN 30 days")
        .description("Anomaly Connect, 30 days")
        .payload("pay_0192")
        .currency("XTR")
        .prices(prices)
        .build()
}

fn price(amount: u32) -> LabeledPrice {
    LabeledPrice::builder()
        .label("30 days")
        .amount(amount)
        .build()
}

#[tokio::test]
async fn the_bot_token_is_checked() {
    let (handle, bot) = emulator(Config::default()).await;
    assert!(bot.get_me().await.unwrap().result.is_bot);
    let wrong = Bot::new_url(format!("{}/bot1:wrong", handle.api_url()));
    let (code, description) = api_error(wrong.get_me().await.unwrap_err());
    assert_eq!((code, description.as_str()), (401, "Unauthorized"));
}

#[tokio::test]
async fn updates_are_confirmed_by_the_offset() {
    let (handle, bot) = emulator(Config::default()).await;
    handle.send_text(&ann(), "/start");
    handle.send_text(&ann(), "hello");
    let updates = poll(&bot, None, 0).await;
    assert_eq!(updates.len(), 2);
    let UpdateContent::Message(first) = &updates[0].content else {
        panic!("expected a message");
    };
    assert_eq!(first.text.as_deref(), Some("/start"));
    assert_eq!(
        first.from.as_ref().unwrap().language_code.as_deref(),
        Some("en")
    );
    let entity = &first.entities.as_ref().unwrap()[0];
    assert_eq!((entity.offset, entity.length), (0, 6));

    // Without an offset the same updates come again; with it they are gone.
    assert_eq!(poll(&bot, None, 0).await.len(), 2);
    assert!(poll(&bot, next_offset(&updates), 0).await.is_empty());
    assert_eq!(handle.pending_updates(), 0);
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_an_update_arrives() {
    let (handle, bot) = emulator(Config::default()).await;
    let started = std::time::Instant::now();
    let poller = tokio::spawn(async move { poll(&bot, None, 20).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.send_text(&ann(), "/start");
    let updates = poller.await.unwrap();
    assert_eq!(updates.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_second_poller_terminates_the_first_with_409() {
    let (_handle, bot) = emulator(Config::default()).await;
    let first_bot = bot.clone();
    let first = tokio::spawn(async move {
        first_bot
            .get_updates(&GetUpdatesParams::builder().timeout(10).build())
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::spawn(async move {
        bot.get_updates(&GetUpdatesParams::builder().timeout(1).build())
            .await
    });
    let (code, description) = api_error(first.await.unwrap().unwrap_err());
    assert_eq!(code, 409);
    assert!(description.starts_with("Conflict: terminated by other getUpdates request"));
    assert!(second.await.unwrap().unwrap().result.is_empty());
}

#[tokio::test]
async fn buttons_are_pressed_and_answered_once() {
    let (handle, bot) = emulator(Config::default()).await;
    let user = ann();
    handle.send_text(&user, "/start");
    let keyboard = InlineKeyboardMarkup::builder()
        .inline_keyboard(vec![vec![
            InlineKeyboardButton::builder()
                .text("1 month")
                .callback_data("tariff:1m")
                .build(),
            InlineKeyboardButton::builder()
                .text("Pay")
                .url("https://yookassa.example/checkout")
                .build(),
        ]])
        .build();
    let sent = bot
        .send_message(
            &SendMessageParams::builder()
                .chat_id(user.id)
                .text("Pick a tariff")
                .reply_markup(ReplyMarkup::InlineKeyboardMarkup(keyboard))
                .build(),
        )
        .await
        .unwrap()
        .result;
    let message_id = i64::from(sent.message_id);
    let seen = handle.message(user.id, message_id).unwrap();
    assert_eq!(seen.callback_data(), vec!["tariff:1m"]);
    assert_eq!(
        seen.button_urls(),
        vec!["https://yookassa.example/checkout"]
    );

    assert!(handle.press(&user, message_id, "tariff:12m").is_err());
    let query_id = handle.press(&user, message_id, "tariff:1m").unwrap();
    let updates = poll(&bot, None, 0).await;
    let UpdateContent::CallbackQuery(query) = &updates.last().unwrap().content else {
        panic!("expected a callback query");
    };
    assert_eq!(query.data.as_deref(), Some("tariff:1m"));
    assert!(matches!(
        &query.message,
        Some(MaybeInaccessibleMessage::Message(m)) if i64::from(m.message_id) == message_id
    ));
    let answer = AnswerCallbackQueryParams::builder()
        .callback_query_id(query_id.clone())
        .build();
    assert!(bot.answer_callback_query(&answer).await.unwrap().result);
    assert!(handle.callback_answer(&query_id).is_some());
    assert_eq!(
        api_error(bot.answer_callback_query(&answer).await.unwrap_err()).0,
        400
    );

    let edit = EditMessageTextParams::builder()
        .chat_id(user.id)
        .message_id(sent.message_id)
        .text("Tariff: 1 month")
        .build();
    bot.edit_message_text(&edit).await.unwrap();
    assert_eq!(handle.message(user.id, message_id).unwrap().edits, 1);
    let (code, description) = api_error(bot.edit_message_text(&edit).await.unwrap_err());
    assert_eq!(code, 400);
    assert!(
        description.contains("message is not modified"),
        "{description}"
    );
}

#[tokio::test]
async fn messages_are_validated_like_telegram() {
    let (handle, bot) = emulator(Config::default()).await;
    let params = |chat: i64, text: String| {
        SendMessageParams::builder()
            .chat_id(chat)
            .text(text)
            .build()
    };
    let (code, description) = api_error(
        bot.send_message(&params(42, "hi".into()))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, description.as_str()),
        (400, "Bad Request: chat not found")
    );
    handle.send_text(&ann(), "/start");
    let (_, description) = api_error(
        bot.send_message(&params(ann().id, " ".into()))
            .await
            .unwrap_err(),
    );
    assert_eq!(description, "Bad Request: message text is empty");
    let (_, description) = api_error(
        bot.send_message(&params(ann().id, "x".repeat(4097)))
            .await
            .unwrap_err(),
    );
    assert_eq!(description, "Bad Request: message is too long");
    let long_data = InlineKeyboardMarkup::builder()
        .inline_keyboard(vec![vec![
            InlineKeyboardButton::builder()
                .text("x")
                .callback_data("d".repeat(65))
                .build(),
        ]])
        .build();
    let with_markup = SendMessageParams::builder()
        .chat_id(ann().id)
        .text("x")
        .reply_markup(ReplyMarkup::InlineKeyboardMarkup(long_data))
        .build();
    let (_, description) = api_error(bot.send_message(&with_markup).await.unwrap_err());
    assert_eq!(description, "Bad Request: BUTTON_DATA_INVALID");
}

#[tokio::test]
async fn stars_invoices_follow_telegrams_rules() {
    let (handle, bot) = emulator(Config::default()).await;
    let user = ann();
    handle.send_text(&user, "/start");
    let two_prices = stars_invoice(user.id, vec![price(100), price(150)]);
    let (code, description) = api_error(bot.send_invoice(&two_prices).await.unwrap_err());
    assert_eq!(code, 400);
    assert!(
        description.contains("STARS_INVOICE_INVALID"),
        "{description}"
    );
    let mut with_token = stars_invoice(user.id, vec![price(250)]);
    with_token.provider_token = Some("381764678:TEST:1".into());
    let (_, description) = api_error(bot.send_invoice(&with_token).await.unwrap_err());
    assert_eq!(description, "Bad Request: PAYMENT_PROVIDER_INVALID");
    let mut rub_without_token = stars_invoice(user.id, vec![price(19900)]);
    rub_without_token.currency = "RUB".into();
    let (_, description) = api_error(bot.send_invoice(&rub_without_token).await.unwrap_err());
    assert_eq!(description, "Bad Request: PAYMENT_PROVIDER_INVALID");
    let mut long_payload = stars_invoice(user.id, vec![price(250)]);
    long_payload.payload = "p".repeat(129);
    let (_, description) = api_error(bot.send_invoice(&long_payload).await.unwrap_err());
    assert_eq!(description, "Bad Request: INVOICE_PAYLOAD_INVALID");

    let sent = bot
        .send_invoice(&stars_invoice(user.id, vec![price(250)]))
        .await
        .unwrap()
        .result;
    let invoice = sent.invoice.unwrap();
    assert_eq!(
        (invoice.currency.as_str(), invoice.total_amount),
        ("XTR", 250)
    );
}

/// The whole Stars purchase: pre-checkout first, the payment only after `ok: true`, then a
/// refund that can happen once.
#[tokio::test]
async fn a_stars_payment_waits_for_the_pre_checkout_answer_and_can_be_refunded_once() {
    let (handle, bot) = emulator(Config::default()).await;
    let user = ann();
    handle.send_text(&user, "/start");
    let offset = next_offset(&poll(&bot, None, 0).await);
    let sent = bot
        .send_invoice(&stars_invoice(user.id, vec![price(250)]))
        .await
        .unwrap()
        .result;

    let payer = handle.pay_invoice(&user, i64::from(sent.message_id));
    let bot_side = async {
        let updates = poll(&bot, offset, 5).await;
        let UpdateContent::PreCheckoutQuery(query) = &updates[0].content else {
            panic!("expected pre_checkout_query, got {updates:?}");
        };
        assert_eq!((query.currency.as_str(), query.total_amount), ("XTR", 250));
        assert_eq!(query.invoice_payload, "pay_0192");
        // Nothing is paid before the answer.
        assert!(handle.charges().is_empty());
        bot.answer_pre_checkout_query(
            &AnswerPreCheckoutQueryParams::builder()
                .pre_checkout_query_id(query.id.clone())
                .ok(true)
                .build(),
        )
        .await
        .unwrap();
        next_offset(&updates)
    };
    let (outcome, offset) = tokio::join!(payer, bot_side);
    let PayOutcome::Paid {
        telegram_payment_charge_id,
        ..
    } = outcome.unwrap()
    else {
        panic!("expected a payment");
    };
    let updates = poll(&bot, offset, 5).await;
    let UpdateContent::Message(message) = &updates[0].content else {
        panic!("expected the successful_payment message");
    };
    let payment = message.successful_payment.as_ref().unwrap();
    assert_eq!(
        payment.telegram_payment_charge_id,
        telegram_payment_charge_id
    );
    assert_eq!(payment.provider_payment_charge_id, "");
    assert_eq!(payment.total_amount, 250);

    let refund = RefundStarPaymentParams::builder()
        .user_id(u64::try_from(user.id).unwrap())
        .telegram_payment_charge_id(telegram_payment_charge_id)
        .build();
    assert!(bot.refund_star_payment(&refund).await.unwrap().result);
    let (_, description) = api_error(bot.refund_star_payment(&refund).await.unwrap_err());
    assert_eq!(description, "Bad Request: CHARGE_ALREADY_REFUNDED");
    assert!(handle.charges()[0].refunded);
}

#[tokio::test]
async fn a_refused_or_unanswered_pre_checkout_charges_nothing() {
    let config = Config {
        pre_checkout_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (handle, bot) = emulator(config).await;
    let user = ann();
    handle.send_text(&user, "/start");
    let offset = next_offset(&poll(&bot, None, 0).await);
    let sent = bot
        .send_invoice(&stars_invoice(user.id, vec![price(250)]))
        .await
        .unwrap()
        .result;
    let message_id = i64::from(sent.message_id);

    // Refused: ok=false needs an error message, which the user then sees.
    let bot_side = async {
        let updates = poll(&bot, offset, 5).await;
        let UpdateContent::PreCheckoutQuery(query) = &updates[0].content else {
            panic!("expected pre_checkout_query");
        };
        let without_message = AnswerPreCheckoutQueryParams::builder()
            .pre_checkout_query_id(query.id.clone())
            .ok(false)
            .build();
        let (_, description) = api_error(
            bot.answer_pre_checkout_query(&without_message)
                .await
                .unwrap_err(),
        );
        assert_eq!(description, "Bad Request: ERROR_MESSAGE_EMPTY");
        let refusal = AnswerPreCheckoutQueryParams::builder()
            .pre_checkout_query_id(query.id.clone())
            .ok(false)
            .error_message("The amount has changed")
            .build();
        bot.answer_pre_checkout_query(&refusal).await.unwrap();
        next_offset(&updates)
    };
    let (outcome, offset) = tokio::join!(handle.pay_invoice(&user, message_id), bot_side);
    assert!(matches!(
        outcome.unwrap(),
        PayOutcome::Refused { error_message, .. } if error_message == "The amount has changed"
    ));

    // Unanswered: after the limit the query is dead and a late answer is refused.
    assert_eq!(
        handle.pay_invoice(&user, message_id).await.unwrap(),
        PayOutcome::TimedOut
    );
    let updates = poll(&bot, offset, 0).await;
    let UpdateContent::PreCheckoutQuery(late) = &updates[0].content else {
        panic!("expected pre_checkout_query");
    };
    let answer = AnswerPreCheckoutQueryParams::builder()
        .pre_checkout_query_id(late.id.clone())
        .ok(true)
        .build();
    assert_eq!(
        api_error(bot.answer_pre_checkout_query(&answer).await.unwrap_err()).0,
        400
    );
    assert!(handle.charges().is_empty());
}

/// The bot's side of a payment: the first update is a pre-checkout query, answered `ok`.
/// Returns the offset after it.
async fn approve_payment(bot: &Bot) -> Option<i64> {
    let updates = poll(bot, None, 5).await;
    let UpdateContent::PreCheckoutQuery(query) = &updates[0].content else {
        panic!("expected pre_checkout_query");
    };
    bot.answer_pre_checkout_query(
        &AnswerPreCheckoutQueryParams::builder()
            .pre_checkout_query_id(query.id.clone())
            .ok(true)
            .build(),
    )
    .await
    .unwrap();
    next_offset(&updates)
}

#[tokio::test]
async fn invoice_links_can_be_paid() {
    let (handle, bot) = emulator(Config::default()).await;
    let link = bot
        .create_invoice_link(
            &CreateInvoiceLinkParams::builder()
                .title("VPN 30 days")
                .description("Anomaly Connect, 30 days")
                .payload("pay_link")
                .currency("XTR")
                .prices(vec![price(250)])
                .build(),
        )
        .await
        .unwrap()
        .result;
    assert!(link.starts_with("https://t.me/$"));
    let payer = ann();
    let (outcome, _) = tokio::join!(handle.pay_link(&payer, &link), approve_payment(&bot));
    assert!(matches!(outcome.unwrap(), PayOutcome::Paid { .. }));
    assert_eq!(handle.charges()[0].invoice_payload, "pay_link");
}

#[tokio::test]
async fn photos_are_uploaded_as_multipart() {
    let (handle, bot) = emulator(Config::default()).await;
    handle.send_text(&ann(), "/start");
    let path = std::env::temp_dir().join(format!("qr-{}.png", std::process::id()));
    std::fs::write(&path, [0x89, b'P', b'N', b'G', 1, 2, 3]).unwrap();
    let params = SendPhotoParams::builder()
        .chat_id(ann().id)
        .photo(FileUpload::InputFile(InputFile { path: path.clone() }))
        .caption("Your subscription link")
        .build();
    let sent = bot.send_photo(&params).await.unwrap().result;
    std::fs::remove_file(&path).ok();
    let seen = handle
        .message(ann().id, i64::from(sent.message_id))
        .unwrap();
    assert_eq!(seen.caption.as_deref(), Some("Your subscription link"));
    assert!(matches!(
        seen.photo,
        Some(PhotoSent::Upload { bytes: 7, .. })
    ));

    // Sent again by the file_id Telegram gave it (the largest size); an unknown one is refused.
    let file_id = sent
        .photo
        .as_ref()
        .and_then(|sizes| sizes.iter().max_by_key(|p| p.width))
        .map(|p| p.file_id.clone())
        .expect("the answer lists the photo's sizes");
    let again = SendPhotoParams::builder()
        .chat_id(ann().id)
        .photo(FileUpload::String(file_id.clone()))
        .build();
    let resent = bot.send_photo(&again).await.unwrap().result;
    let seen = handle
        .message(ann().id, i64::from(resent.message_id))
        .unwrap();
    assert_eq!(seen.photo, Some(PhotoSent::Reference(file_id)));
    let unknown = SendPhotoParams::builder()
        .chat_id(ann().id)
        .photo(FileUpload::String("AgACAgIAAxkDAAI-made-up".into()))
        .build();
    match bot.send_photo(&unknown).await {
        Err(frankenstein::Error::Api(error)) => {
            assert_eq!(error.error_code, 400);
            assert!(
                error.description.contains("wrong file identifier"),
                "{}",
                error.description
            );
        }
        other => panic!("an unknown file_id is refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_webhook_receives_updates_with_the_secret_and_blocks_polling() {
    let (handle, bot) = emulator(Config::default()).await;
    // A tiny webhook receiver: records each update with the secret header it came with.
    let received =
        std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Option<String>, String)>::new()));
    let sink = received.clone();
    let server = actix_web::HttpServer::new(move || {
        let sink = sink.clone();
        actix_web::App::new().route(
            "/hook",
            actix_web::web::post().to(move |req: actix_web::HttpRequest, body: String| {
                let sink = sink.clone();
                async move {
                    let secret = req
                        .headers()
                        .get("X-Telegram-Bot-Api-Secret-Token")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    sink.lock().unwrap().push((secret, body));
                    actix_web::HttpResponse::Ok().finish()
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let hook_addr = server.addrs()[0];
    let server = server.run();
    let server_handle = server.handle();
    tokio::spawn(server);

    bot.set_webhook(
        &SetWebhookParams::builder()
            .url(format!("http://{hook_addr}/hook"))
            .secret_token("s3cr3t-token")
            .build(),
    )
    .await
    .unwrap();
    let (code, _) = api_error(
        bot.get_updates(&GetUpdatesParams::builder().build())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);
    handle.send_text(&ann(), "/start");
    for _ in 0..100 {
        if !received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0.as_deref(), Some("s3cr3t-token"));
    assert!(received[0].1.contains("\"/start\""));
    server_handle.stop(false).await;
}

#[tokio::test]
async fn updates_outside_allowed_updates_are_not_delivered() {
    let (handle, bot) = emulator(Config::default()).await;
    handle.send_text(&ann(), "/start");
    let only_queries = GetUpdatesParams::builder()
        .allowed_updates(vec![AllowedUpdate::PreCheckoutQuery])
        .build();
    assert!(
        bot.get_updates(&only_queries)
            .await
            .unwrap()
            .result
            .is_empty()
    );
    assert_eq!(handle.calls("getUpdates"), 1);
}

async fn say(bot: &Bot, chat: i64, text: &str) -> Result<(), frankenstein::Error> {
    let params = SendMessageParams::builder()
        .chat_id(chat)
        .text(text)
        .build();
    bot.send_message(&params).await.map(|_| ())
}

#[tokio::test]
async fn sends_over_telegrams_limits_get_429_with_retry_after_and_do_nothing() {
    let (tg, bot) = emulator(Config::default()).await;
    let ann = ann();
    tg.add_user(&ann);
    // One chat: a short burst passes, then about one a second.
    let mut refused = None;
    for i in 0..30 {
        if let Err(error) = say(&bot, ann.id, &format!("m{i}")).await {
            refused = Some((i, error));
            break;
        }
    }
    let (at, error) = refused.expect("a burst of 30 to one chat is refused");
    assert!((20..30).contains(&at), "a short burst passes ({at} did)");
    let frankenstein::Error::Api(response) = error else {
        panic!("a Telegram error");
    };
    assert_eq!(response.error_code, 429);
    assert!(
        response
            .description
            .starts_with("Too Many Requests: retry after")
    );
    let retry_after = response.parameters.and_then(|p| p.retry_after);
    assert_eq!(retry_after, Some(1));
    assert_eq!(
        tg.messages(ann.id).len(),
        at,
        "the refused send did nothing"
    );
    assert_eq!(tg.rate_limited(), 1);

    // All chats: 30 a second with a burst of 30.
    let users: Vec<TestUser> = (0..40)
        .map(|i| TestUser::new(20_000 + i, "U", "en"))
        .collect();
    let mut limited = 0;
    for user in &users {
        tg.add_user(user);
        if say(&bot, user.id, "hi").await.is_err() {
            limited += 1;
        }
    }
    assert!(
        limited >= 5,
        "40 sends at once exceed 30/s: {limited} refused"
    );

    // A user who blocked the bot: 403, nothing stored.
    let bob = TestUser::new(1002, "Bob", "en");
    tg.block_bot(&bob);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, description) = api_error(say(&bot, bob.id, "hello").await.unwrap_err());
    assert_eq!(
        (code, description.as_str()),
        (403, "Forbidden: bot was blocked by the user")
    );
    assert!(tg.messages(bob.id).is_empty());
    tg.unblock_bot(&bob);
    say(&bot, bob.id, "hello again").await.expect("unblocked");
}

fn subscription_link(currency: &str, period: u32) -> CreateInvoiceLinkParams {
    CreateInvoiceLinkParams::builder()
        .title("VPN monthly")
        .description("Anomaly Connect, every 30 days")
        .payload("sub_1")
        .currency(currency)
        .prices(vec![price(250)])
        .subscription_period(period)
        .build()
}

#[tokio::test]
async fn subscription_links_take_thirty_days_of_stars_only() {
    let (_handle, bot) = emulator(Config::default()).await;
    let (code, description) = api_error(
        bot.create_invoice_link(&subscription_link("XTR", 86_400))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, description.as_str()),
        (400, "Bad Request: SUBSCRIPTION_PERIOD_INVALID")
    );
    let mut rub = subscription_link("RUB", 2_592_000);
    rub.provider_token = Some("381764678:TEST:1".into());
    let (code, description) = api_error(bot.create_invoice_link(&rub).await.unwrap_err());
    assert_eq!(
        (code, description.as_str()),
        (400, "Bad Request: SUBSCRIPTION_PERIOD_INVALID")
    );
    assert!(
        bot.create_invoice_link(&subscription_link("XTR", 2_592_000))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn subscriptions_charge_on_demand_until_canceled() {
    let (handle, bot) = emulator(Config::default()).await;
    let link = bot
        .create_invoice_link(&subscription_link("XTR", 2_592_000))
        .await
        .unwrap()
        .result;
    let payer = ann();
    let (outcome, offset) = tokio::join!(handle.pay_link(&payer, &link), approve_payment(&bot));
    let PayOutcome::Paid {
        telegram_payment_charge_id: first,
        ..
    } = outcome.unwrap()
    else {
        panic!("paid");
    };
    let updates = poll(&bot, offset, 5).await;
    let UpdateContent::Message(message) = &updates[0].content else {
        panic!("expected the payment message");
    };
    let paid = message.successful_payment.as_ref().expect("paid");
    assert_eq!(paid.is_recurring, Some(true));
    assert_eq!(paid.is_first_recurring, Some(true));
    let first_expiry = paid.subscription_expiration_date.expect("expiry");

    let second = handle.charge_subscription(&first).expect("charged");
    assert_ne!(second, first);
    let updates = poll(&bot, next_offset(&updates), 5).await;
    let UpdateContent::Message(message) = &updates[0].content else {
        panic!("expected the recurring payment message");
    };
    let renewal = message.successful_payment.as_ref().expect("paid");
    assert_eq!(renewal.telegram_payment_charge_id, second);
    assert_eq!(renewal.invoice_payload, "sub_1");
    assert_eq!(renewal.is_recurring, Some(true));
    assert_eq!(renewal.is_first_recurring, None);
    assert_eq!(
        renewal.subscription_expiration_date,
        Some(first_expiry + 2_592_000)
    );
    assert_eq!(handle.charges().len(), 2);

    let edit = |charge: &str, canceled: bool, user: u64| {
        EditUserStarSubscriptionParams::builder()
            .user_id(user)
            .telegram_payment_charge_id(charge)
            .is_canceled(canceled)
            .build()
    };
    let (code, _) = api_error(
        bot.edit_user_star_subscription(&edit("stx-unknown", true, 1001))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400, "unknown charge id");
    let (code, _) = api_error(
        bot.edit_user_star_subscription(&edit(&first, true, 1002))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400, "someone else's subscription");
    assert!(
        bot.edit_user_star_subscription(&edit(&first, true, 1001))
            .await
            .unwrap()
            .result
    );
    assert_eq!(
        handle.charge_subscription(&first),
        Err(telegram::SubscriptionError::Canceled(first.clone())),
        "a canceled subscription is not charged"
    );
    assert_eq!(handle.charges().len(), 2);
    bot.edit_user_star_subscription(&edit(&second, false, 1001))
        .await
        .unwrap();
    assert!(handle.charge_subscription(&first).is_ok(), "re-enabled");
    assert_eq!(handle.subscriptions()[0].renewals.len(), 2);

    // The same over the control API (the demo and the load generator).
    let http = reqwest::Client::new();
    let charge = |id: &str| {
        http.post(format!(
            "{}/sandbox/telegram/subscriptions/{id}/charge",
            handle.base_url()
        ))
        .send()
    };
    let answer = charge(&first).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    let fourth = body["telegram_payment_charge_id"]
        .as_str()
        .expect("a charge id");
    assert_eq!(
        handle.subscriptions()[0]
            .renewals
            .last()
            .map(String::as_str),
        Some(fourth)
    );
    assert_eq!(charge("stx-unknown").await.unwrap().status(), 400);
}
