//! A customer at the gateway's cap of open payments (`CHECKOUT_MAX_OPEN_PAYMENTS`) is told so
//! politely, in their language, and nothing is created.

use sandbox::telegram::TestUser;

use crate::helpers::world_with;

#[tokio::test]
async fn a_customer_at_the_cap_of_open_payments_is_told_politely() {
    let w = world_with(&[("CHECKOUT_MAX_OPEN_PAYMENTS", "1".to_owned())]).await;
    for (user, expected) in [
        (
            TestUser::new(5_000_031, "Eve", "en"),
            "several unpaid payments",
        ),
        (
            TestUser::new(5_000_032, "Ира", "ru"),
            "несколько неоплаченных платежей",
        ),
    ] {
        let (invoice, _) = w.checkout(&user, "month_1", "telegram", "XTR").await;
        assert!(invoice.invoice.is_some(), "{invoice:#?}");
        // The same tariff again: the same open payment (its invoice is sent again).
        let (again, _) = w.checkout(&user, "month_1", "telegram", "XTR").await;
        assert!(again.invoice.is_some(), "{again:#?}");
        assert_eq!(w.payments_of(user.id).await.len(), 1);
        // Another tariff would be a second open payment.
        let (refused, _) = w.checkout(&user, "month_3", "telegram", "XTR").await;
        let text = refused.text.clone().unwrap_or_default();
        assert!(text.contains(expected), "{refused:#?}");
        assert_eq!(w.payments_of(user.id).await.len(), 1);
    }
}
