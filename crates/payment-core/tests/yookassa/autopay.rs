//! Saved cards (automatic renewal) against the emulator, which follows YooKassa's rules: a
//! payment made with `save_payment_method` saves the card; a charge of it carries
//! `payment_method_id` and no confirmation and is decided at once (succeeded, or canceled
//! with the issuer's reason); a shop without the right gets 403 "Forbidden to save payment
//! method", after which the provider makes plain payments.

use payment_core::{PaymentProvider, PaymentStatus, ProviderError, Recurring, SavedMethod};
use sandbox::yookassa::{Config, Shop};

use crate::helpers::*;

/// A paid payment that saved its card; the saved method as the provider reports it.
async fn saved_card(shop: &TestShop) -> SavedMethod {
    let mut first = request(19_900);
    first.recurring = Recurring::SaveMethod;
    let created = shop.provider.create_payment(&first).await.expect("created");
    assert!(
        created.confirmation.is_some(),
        "the payer confirms the first payment"
    );
    shop.emulator
        .pay(&created.provider_payment_id)
        .expect("paid");
    let paid = shop
        .provider
        .get_payment_status(&payment_ref(&first, &created.provider_payment_id))
        .await
        .expect("status");
    assert_eq!(paid.status, PaymentStatus::Succeeded);
    paid.saved_method.expect("the card is saved")
}

#[tokio::test]
async fn a_saved_card_is_charged_without_the_payer_and_a_scripted_decline_cancels() {
    let shop = spawn().await;
    let method = saved_card(&shop).await;
    assert_eq!(method.title, "Bank card *4477");

    let mut renewal = request(19_900);
    renewal.recurring = Recurring::Charge {
        method_id: method.id.clone(),
    };
    let charged = shop
        .provider
        .create_payment(&renewal)
        .await
        .expect("charged");
    assert_eq!(charged.status, PaymentStatus::Succeeded, "decided at once");
    assert_eq!(charged.confirmation, None, "nobody to confirm");
    let object = shop
        .emulator
        .payment(&charged.provider_payment_id)
        .expect("on the emulator");
    assert_eq!(object["payment_method"]["id"], method.id.as_str());
    assert!(object.get("confirmation").is_none(), "{object}");

    shop.emulator
        .script_method(&method.id, Some("insufficient_funds"))
        .expect("scripted");
    let mut declined = request(19_900);
    declined.recurring = Recurring::Charge {
        method_id: method.id.clone(),
    };
    let created = shop
        .provider
        .create_payment(&declined)
        .await
        .expect("answered");
    let status = shop
        .provider
        .get_payment_status(&payment_ref(&declined, &created.provider_payment_id))
        .await
        .expect("status");
    assert_eq!(
        status.status,
        PaymentStatus::Failed,
        "a decline fails the payment"
    );
    assert_eq!(status.failure_reason.as_deref(), Some("insufficient_funds"));
}

#[tokio::test]
async fn an_unknown_saved_method_is_refused_with_a_clear_error() {
    let shop = spawn().await;
    let mut charge = request(19_900);
    charge.recurring = Recurring::Charge {
        method_id: "2f4c0d5e-000f-5000-9000-1b2c3d4e5f60".into(),
    };
    match shop.provider.create_payment(&charge).await {
        Err(ProviderError::Rejected(r)) => {
            assert_eq!(r.http_status, 400);
            assert_eq!(r.parameter.as_deref(), Some("payment_method_id"));
        }
        other => panic!("expected a 400 refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_shop_without_the_right_to_save_cards_gets_plain_payments() {
    let shop = spawn_with(
        Config {
            shops: vec![Shop::default().without_saved_methods()],
            ..Config::default()
        },
        |_| {},
    )
    .await;
    assert!(
        shop.provider.saves_methods(),
        "assumed until YooKassa says no"
    );
    let mut first = request(19_900);
    first.recurring = Recurring::SaveMethod;
    let created = shop
        .provider
        .create_payment(&first)
        .await
        .expect("a plain payment instead");
    assert!(created.confirmation.is_some());
    assert!(
        !shop.provider.saves_methods(),
        "the option is hidden from now on"
    );
    assert_eq!(
        creations(&shop),
        [403, 200],
        "refused once, then made without saving"
    );
    shop.emulator
        .pay(&created.provider_payment_id)
        .expect("paid");
    let paid = shop
        .provider
        .get_payment_status(&payment_ref(&first, &created.provider_payment_id))
        .await
        .expect("status");
    assert_eq!(paid.saved_method, None);
    // Later checkouts do not ask again.
    let mut next = request(19_900);
    next.recurring = Recurring::SaveMethod;
    shop.provider.create_payment(&next).await.expect("plain");
    assert_eq!(creations(&shop), [403, 200, 200], "not refused again");
}

/// The answers to `POST /payments`, in order.
fn creations(shop: &TestShop) -> Vec<u16> {
    shop.emulator
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/payments"))
        .map(|r| r.status)
        .collect()
}
