//! The referral bonus (issue 23): the referred user's first succeeded payment writes one
//! `manual_grants` row of kind `referral` for the referrer (key `referral:<payment id>`) with
//! its `grant.created` event, in the transition's transaction — once, however often the
//! notification arrives, and never for a later payment or for a user nobody referred.

use domain::PaymentStatus;
use domain::entities::{manual_grants, payments, referrals, users};
use domain::money::{Currency, Money};
use domain::referral::{self, Recorded};
use messaging::Event;
use messaging::events::GrantCreated;
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use crate::helpers::*;

/// A referrer and a user they brought (recorded with 7 bonus days).
async fn referred_pair(db: &DatabaseConnection) -> (users::Model, users::Model) {
    let (referrer, _) = user_and_tariff(db).await;
    let (friend, _) = user_and_tariff(db).await;
    let code = referral::code_of(db, referrer.id).await.unwrap();
    let recorded = referral::record(db, friend.id, &code, 7).await.unwrap();
    assert_eq!(recorded, Recorded::Referred(referrer.clone()));
    (referrer, friend)
}

/// A paid (on the emulator) payment of `user`, still pending on our side.
async fn paid_payment_of(env: &Env, user: &users::Model) -> payments::Model {
    let user_id = user.id;
    let payment = payment_with(env, Money::new(PRICE, Currency::Rub), |row| {
        row.user_id = Set(user_id);
    })
    .await;
    env.shop.pay(ppid(&payment)).unwrap();
    payment
}

async fn referral_grants(db: &DatabaseConnection) -> Vec<manual_grants::Model> {
    manual_grants::Entity::find()
        .filter(manual_grants::Column::Kind.eq(referral::KIND))
        .all(db)
        .await
        .unwrap()
}

/// The whole story on `env`: the notification twice and a copy under another dedupe key
/// reward once; a second payment rewards nothing.
async fn first_payment_rewards_the_referrer_once(env: &Env) {
    let db = &env.db.conn;
    let handler = handler_for(env);
    let (referrer, friend) = referred_pair(db).await;
    let first = paid_payment_of(env, &friend).await;

    let envelope = notify(db, &first, "succeeded", "").await;
    deliver(&handler, db, &envelope).await.unwrap();
    deliver(&handler, db, &envelope).await.unwrap();
    let copy = notify(db, &first, "succeeded", ":copy").await;
    deliver(&handler, db, &copy).await.unwrap();
    assert_eq!(reload(db, first.id).await.status, PaymentStatus::Succeeded);

    let grants = referral_grants(db).await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    let grant = &grants[0];
    assert_eq!(
        (
            grant.user_id,
            grant.days,
            grant.idempotency_key.as_str(),
            grant.granted_by
        ),
        (referrer.id, 7, referral::key(first.id).as_str(), None)
    );
    let announced = events(db, GrantCreated::EVENT_TYPE, first.id).await;
    assert_eq!(announced.len(), 1);
    let event: GrantCreated = announced[0].decode().unwrap();
    assert_eq!(
        (
            event.grant_id,
            event.telegram_id,
            event.kind.as_str(),
            event.days
        ),
        (grant.id, referrer.telegram_id, "referral", 7)
    );
    assert_eq!(logs(db, GrantCreated::EVENT_TYPE, first.id).await.len(), 1);
    let row = referrals::Entity::find_by_id(friend.id)
        .one(db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.rewarded_payment_id, Some(first.id));
    assert_eq!(row.reward_grant_id, Some(grant.id));
    assert_eq!(
        referral::counts(db, referrer.id).await.unwrap(),
        referral::Counts {
            referred: 1,
            rewarded: 1
        }
    );

    // The friend renews: their second payment earns nothing more.
    let second = paid_payment_of(env, &friend).await;
    deliver(&handler, db, &notify(db, &second, "succeeded", "").await)
        .await
        .unwrap();
    assert_eq!(reload(db, second.id).await.status, PaymentStatus::Succeeded);
    assert_eq!(referral_grants(db).await.len(), 1);
    assert!(
        events(db, GrantCreated::EVENT_TYPE, second.id)
            .await
            .is_empty()
    );

    // A user nobody referred pays: no bonus for anyone.
    let stranger = payment(env).await;
    env.shop.pay(ppid(&stranger)).unwrap();
    deliver(&handler, db, &notify(db, &stranger, "succeeded", "").await)
        .await
        .unwrap();
    assert_eq!(referral_grants(db).await.len(), 1);
}

#[tokio::test]
async fn the_first_payment_rewards_the_referrer_once() {
    first_payment_rewards_the_referrer_once(&env().await).await;
}

#[tokio::test]
async fn the_first_payment_rewards_the_referrer_once_on_sqlite() {
    first_payment_rewards_the_referrer_once(&sqlite_env().await).await;
}

#[tokio::test]
async fn two_first_payments_at_once_reward_once() {
    let env = env().await;
    let db = &env.db.conn;
    let handler = handler_for(&env);
    let (_, friend) = referred_pair(db).await;
    let a = paid_payment_of(&env, &friend).await;
    let b = paid_payment_of(&env, &friend).await;
    let (ea, eb) = (
        notify(db, &a, "succeeded", "").await,
        notify(db, &b, "succeeded", "").await,
    );
    let (ra, rb) = tokio::join!(deliver(&handler, db, &ea), deliver(&handler, db, &eb));
    ra.unwrap();
    rb.unwrap();
    assert_eq!(reload(db, a.id).await.status, PaymentStatus::Succeeded);
    assert_eq!(reload(db, b.id).await.status, PaymentStatus::Succeeded);
    let grants = referral_grants(db).await;
    assert_eq!(grants.len(), 1, "{grants:?}");
}

#[tokio::test]
async fn a_failed_payment_earns_nothing_and_a_customer_who_paid_cannot_be_referred() {
    let env = env().await;
    let db = &env.db.conn;
    let handler = handler_for(&env);
    let (referrer, friend) = referred_pair(db).await;
    let user_id = friend.id;
    let declined = payment_with(&env, Money::new(PRICE, Currency::Rub), |row| {
        row.user_id = Set(user_id);
    })
    .await;
    env.shop
        .decline(ppid(&declined), "insufficient_funds")
        .unwrap();
    deliver(&handler, db, &notify(db, &declined, "canceled", "").await)
        .await
        .unwrap();
    assert_eq!(reload(db, declined.id).await.status, PaymentStatus::Failed);
    assert!(referral_grants(db).await.is_empty());
    // The first payment that succeeds is the one rewarded.
    let paid = paid_payment_of(&env, &friend).await;
    deliver(&handler, db, &notify(db, &paid, "succeeded", "").await)
        .await
        .unwrap();
    let grants = referral_grants(db).await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].idempotency_key, referral::key(paid.id));

    // A customer who has paid is not new: a referrer's link records nothing.
    let paid = payment(&env).await;
    env.shop.pay(ppid(&paid)).unwrap();
    deliver(&handler, db, &notify(db, &paid, "succeeded", "").await)
        .await
        .unwrap();
    let code = referral::code_of(db, referrer.id).await.unwrap();
    assert_eq!(
        referral::record(db, paid.user_id, &code, 7).await.unwrap(),
        Recorded::NotNew
    );
    assert!(
        referrals::Entity::find_by_id(paid.user_id)
            .one(db)
            .await
            .unwrap()
            .is_none()
    );
}
