//! `PaymentService`: the registry follows the settings.

use domain::money::Currency;
use payment_core::{PaymentService, PaymentSettings, ProviderError};

use crate::helpers::{request, spawn};

fn settings(vars: &[(&str, String)]) -> PaymentSettings {
    PaymentSettings::from_vars(&vars.iter().cloned().collect()).expect("settings")
}

#[tokio::test]
async fn providers_are_enabled_exactly_by_their_settings() {
    let none = PaymentService::from_settings(&settings(&[])).expect("service");
    assert!(none.descriptors().is_empty());
    assert!(!none.is_enabled(payment_core::providers::yookassa::ID));
    let err = none
        .create_payment(payment_core::providers::yookassa::ID, &request(1_000))
        .await
        .expect_err("disabled");
    assert!(matches!(
        err,
        ProviderError::NotEnabled(id) if id == payment_core::providers::yookassa::ID
    ));

    let shop = spawn().await;
    let service = PaymentService::from_settings(&settings(&[
        ("YOOKASSA_SHOP_ID", "100500".into()),
        ("YOOKASSA_SECRET_KEY", "test_sandbox_secret".into()),
        ("YOOKASSA_TEST_MODE", "true".into()),
        ("YOOKASSA_API_URL", shop.emulator.api_url()),
    ]))
    .expect("service");
    let descriptors = service.descriptors();
    assert_eq!(descriptors.len(), 1);
    assert_eq!(descriptors[0].id, payment_core::providers::yookassa::ID);
    assert_eq!(descriptors[0].currencies, &[Currency::Rub]);
    assert!(descriptors[0].supports_refunds);
    assert_eq!(service.providers_for(Currency::Rub).len(), 1);
    assert!(service.providers_for(Currency::Xtr).is_empty());
    assert_eq!(
        serde_json::to_value(descriptors[0]).expect("json"),
        serde_json::json!({"id": "yookassa", "title": "YooKassa", "currencies": ["RUB"], "supports_refunds": true})
    );

    let created = service
        .create_payment(payment_core::providers::yookassa::ID, &request(1_000))
        .await
        .expect("created");
    assert_eq!(shop.emulator.payments().len(), 1);
    assert_eq!(
        shop.emulator.payments()[0]["id"],
        created.provider_payment_id.as_str()
    );
}
