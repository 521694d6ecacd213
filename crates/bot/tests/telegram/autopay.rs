//! Automatic renewal with a saved card in the bot: the "card, renew automatically" offer
//! beside YooKassa makes a payment that saves the card; "My subscription" shows the card and
//! turns autopay off and on or removes the card; a shop YooKassa does not let save cards gets
//! a plain payment and the offer disappears.

use chrono::Utc;
use domain::entities::saved_methods;
use sandbox::yookassa::{self, Config, Shop};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, NotSet, QueryFilter};

use crate::helpers::*;
use sandbox::telegram::TestUser;

async fn world_on(shop: &yookassa::Handle) -> World {
    world_with(&[
        ("YOOKASSA_SHOP_ID", "100500".into()),
        ("YOOKASSA_SECRET_KEY", "test_sandbox_secret".into()),
        ("YOOKASSA_TEST_MODE", "true".into()),
        ("YOOKASSA_API_URL", shop.api_url()),
    ])
    .await
}

const OFFER: &str = "a:month_1:yookassa:RUB";

#[tokio::test]
async fn the_autopay_offer_saves_the_card_and_my_subscription_manages_it() {
    let shop = yookassa::spawn(Config::default()).await.expect("emulator");
    let w = world_on(&shop).await;
    let user = TestUser::new(5_300_001, "Olga", "ru");
    let providers = w.providers_menu(&user, "month_1", OFFER).await;
    assert!(
        providers
            .callback_data()
            .contains(&"p:month_1:yookassa:RUB".to_owned()),
        "the one-off payment stays: {providers:?}"
    );
    w.tg.press(&user, providers.message_id, OFFER)
        .expect("press");
    let pay = w
        .wait_new(user.id, providers.message_id, |m| {
            !m.button_urls().is_empty()
        })
        .await;
    assert!(pay.text.clone().unwrap().contains("199.00 ₽"), "{pay:?}");
    let payment = w.payments_of(user.id).await.pop().expect("a payment");
    let paid = shop
        .pay(payment.provider_payment_id.as_deref().unwrap())
        .expect("paid on the emulator");
    assert_eq!(paid["payment_method"]["saved"], true, "the card is saved");

    // The worker keeps the saved card (payment_worker::autopay); "My subscription" shows it.
    let now = Utc::now();
    saved_methods::ActiveModel {
        id: NotSet,
        user_id: Set(payment.user_id),
        provider: Set(payment.provider.clone()),
        method_id: Set(paid["payment_method"]["id"].as_str().unwrap().to_owned()),
        title: Set("Bank card *4477".into()),
        tariff_id: Set(payment.tariff_id),
        autopay: Set(true),
        declines: Set(0),
        last_decline: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&w.db.conn)
    .await
    .expect("saved method");
    let db = w.db.conn.clone();
    let user_id = payment.user_id;
    let card = |on: bool| {
        let db = db.clone();
        async move {
            saved_methods::Entity::find()
                .filter(saved_methods::Column::UserId.eq(user_id))
                .filter(saved_methods::Column::Autopay.eq(on))
                .one(&db)
                .await
                .expect("read")
        }
    };
    let start = w.tg.send_text(&user, "/start");
    let menu = w
        .wait_new(user.id, start, |m| {
            m.callback_data().contains(&"sub".to_owned())
        })
        .await;
    w.tg.press(&user, menu.message_id, "sub").expect("press");
    let mine = w
        .wait_new(user.id, menu.message_id, |m| {
            m.callback_data().contains(&"ap:off".to_owned())
        })
        .await;
    let text = mine.text.clone().unwrap();
    assert!(
        text.contains("Автопродление: включено, Bank card *4477"),
        "{text}"
    );

    w.tg.press(&user, mine.message_id, "ap:off").expect("press");
    let off = w
        .wait_new(user.id, mine.message_id, |m| {
            m.callback_data().contains(&"ap:on".to_owned())
        })
        .await;
    assert!(
        off.text
            .clone()
            .unwrap()
            .contains("Автопродление: выключено")
    );
    assert!(
        card(false).await.is_some(),
        "autopay is off in the database"
    );

    w.tg.press(&user, off.message_id, "ap:rm").expect("press");
    w.wait_new(user.id, off.message_id, |m| {
        m.text
            .as_deref()
            .is_some_and(|t| !t.contains("Автопродление"))
            && m.callback_data().contains(&"menu".to_owned())
    })
    .await;
    assert!(
        card(false).await.is_none() && card(true).await.is_none(),
        "card removed"
    );
}

#[tokio::test]
async fn a_shop_that_may_not_save_cards_gets_a_plain_payment_and_no_more_offer() {
    let shop = yookassa::spawn(Config {
        shops: vec![Shop::default().without_saved_methods()],
        ..Config::default()
    })
    .await
    .expect("emulator");
    let w = world_on(&shop).await;
    let user = TestUser::new(5_300_002, "Pavel", "en");
    let providers = w.providers_menu(&user, "month_1", OFFER).await;
    w.tg.press(&user, providers.message_id, OFFER)
        .expect("press");
    let pay = w
        .wait_new(user.id, providers.message_id, |m| {
            !m.button_urls().is_empty()
        })
        .await;
    assert!(
        pay.text.clone().unwrap().contains("199.00"),
        "a plain payment: {pay:?}"
    );

    let again = w
        .providers_menu(&user, "month_1", "p:month_1:yookassa:RUB")
        .await;
    assert!(
        !again.callback_data().contains(&OFFER.to_owned()),
        "the offer is hidden once YooKassa refused: {again:?}"
    );
}
