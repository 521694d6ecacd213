//! Moving from Marzban to PasarGuard or Remnawave (issue 25): the ledger built on Marzban,
//! then `drift::migrate` against the new panel's emulator — every paid subscription exists
//! there with the ledger's expiry (a user the panel already has is adopted, keys kept), an
//! unpaid one is not created, a second run changes nothing, and the next payment extends
//! from the ledger on the new panel. Real PostgreSQL; the handler driven directly (no bus).

use std::sync::Arc;

use chrono::Utc;
use domain::entities::{payments, subscriptions, tariffs, users};
use domain::money::Currency;
use domain::status::PaymentStatus;
use marzban_sync::marzban::{MarzbanClient, MarzbanSettings};
use marzban_sync::pasarguard::{PasarguardAuth, PasarguardClient, PasarguardSettings};
use marzban_sync::remnawave::{RemnawaveClient, RemnawaveSettings};
use marzban_sync::{Panel, SubscriptionSync, drift};
use messaging::events::{PaymentCompleted, PaymentRefunded, PaymentSnapshot};
use messaging::{Envelope, Handler};
use sandbox::{marzban, pasarguard, remnawave};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
use secrecy::SecretString;
use testkit::TestDb;
use uuid::Uuid;

struct Ledger {
    db: TestDb,
    tariff: tariffs::Model,
}

struct Paid {
    id: domain::PaymentId,
    user_id: i64,
    telegram_id: i64,
}

impl Ledger {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let tariff = tariffs::ActiveModel {
            id: NotSet,
            code: Set("month_1".to_owned()),
            title: Set("month".to_owned()),
            duration_days: Set(30),
            data_limit_bytes: Set(None),
            price_rub_minor: Set(Some(19_900)),
            price_xtr: Set(None),
            price_usdt_minor: Set(None),
            active: Set(true),
            sort_order: Set(0),
        }
        .insert(&db.conn)
        .await
        .unwrap();
        Self { db, tariff }
    }

    async fn customer(&self, telegram_id: i64) -> i64 {
        users::ActiveModel {
            id: NotSet,
            telegram_id: Set(telegram_id),
            username: Set(None),
            first_name: Set(None),
            language_code: Set(None),
            created_at: Set(Utc::now()),
        }
        .insert(&self.db.conn)
        .await
        .unwrap()
        .id
    }

    async fn pay(&self, user_id: i64, telegram_id: i64) -> Paid {
        let id = domain::PaymentId::new();
        let now = Utc::now();
        payments::ActiveModel {
            id: Set(id),
            user_id: Set(user_id),
            tariff_id: Set(self.tariff.id),
            provider: Set(domain::ProviderId::from_static("yookassa")),
            amount_minor: Set(19_900),
            currency: Set(Currency::Rub),
            status: Set(PaymentStatus::Succeeded),
            provider_payment_id: Set(Some(id.to_string())),
            idempotency_key: Set(id.as_uuid().simple().to_string()),
            confirmation_url: Set(None),
            failure_reason: Set(None),
            metadata: Set(serde_json::json!({})),
            created_at: Set(now),
            updated_at: Set(now),
            completed_at: Set(Some(now)),
            expires_at: Set(None),
            refunded_minor: Set(0),
            flagged: Set(false),
            flag_reason: Set(None),
            next_check_at: Set(None),
            check_attempts: Set(0),
        }
        .insert(&self.db.conn)
        .await
        .unwrap();
        Paid {
            id,
            user_id,
            telegram_id,
        }
    }

    /// What the consumer runner does with one message: prepare, then handle and commit.
    async fn deliver(&self, sync: &SubscriptionSync, envelope: &Envelope) {
        let prepared = sync.prepare(envelope).await.unwrap();
        let tx = self.db.conn.begin().await.unwrap();
        sync.handle(&tx, envelope, prepared).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn subscription(&self, user_id: i64) -> subscriptions::Model {
        subscriptions::Entity::find()
            .filter(subscriptions::Column::UserId.eq(user_id))
            .one(&self.db.conn)
            .await
            .unwrap()
            .unwrap()
    }
}

fn snapshot(paid: &Paid) -> PaymentSnapshot {
    PaymentSnapshot {
        payment_id: paid.id,
        user_id: paid.user_id,
        telegram_id: paid.telegram_id,
        tariff_code: "month_1".to_owned(),
        provider: domain::ProviderId::from_static("yookassa"),
        amount_minor: 19_900,
        currency: "RUB".to_owned(),
    }
}

fn completed(paid: &Paid) -> Envelope {
    let event = PaymentCompleted {
        payment: snapshot(paid),
        paid_at: Utc::now(),
        processing_ms: 1,
    };
    Envelope::new(&event, paid.id, None).unwrap()
}

fn refunded(paid: &Paid) -> Envelope {
    let event = PaymentRefunded {
        payment: snapshot(paid),
        refunded_minor: 19_900,
        total_refunded_minor: 19_900,
    };
    Envelope::new(&event, paid.id, None).unwrap()
}

/// Three customers on Marzban: Anna paid twice (60 days), Boris once, Chen paid and was
/// refunded in full (no paid time). Returns their user ids.
async fn ledger_on_marzban(ledger: &Ledger) -> [i64; 3] {
    let old = marzban::spawn(marzban::Config::default()).await.unwrap();
    let client = MarzbanClient::new(MarzbanSettings::new(
        old.base_url.clone(),
        "admin",
        SecretString::from("admin-password"),
    ))
    .unwrap();
    let sync = SubscriptionSync::new(Arc::new(client), ledger.db.conn.clone());
    let mut ids = [0; 3];
    for (index, telegram_id) in [700_001, 700_002, 700_003].into_iter().enumerate() {
        ids[index] = ledger.customer(telegram_id).await;
    }
    for paid in [
        ledger.pay(ids[0], 700_001).await,
        ledger.pay(ids[0], 700_001).await,
        ledger.pay(ids[1], 700_002).await,
    ] {
        ledger.deliver(&sync, &completed(&paid)).await;
    }
    let chen = ledger.pay(ids[2], 700_003).await;
    ledger.deliver(&sync, &completed(&chen)).await;
    ledger.deliver(&sync, &refunded(&chen)).await;
    assert_eq!(old.users().len(), 3);
    ids
}

/// What the new panel says about `username`: expiry, key, subscription link.
type Seen = Option<(Option<i64>, Option<String>, String)>;

async fn seen(panel: &dyn Panel, username: &str) -> Seen {
    let name = marzban_sync::panel::MarzbanUsername::parse(username).unwrap();
    panel
        .get_user(&name)
        .await
        .unwrap()
        .map(|u| (u.expire, u.key, u.subscription_url))
}

/// The checks common to both panels, after the new panel's own copy of Anna was put there
/// (by its migration tool) with a stale expiry and `anna_key` as her key.
async fn migrate_and_check(ledger: &Ledger, ids: [i64; 3], new: Arc<dyn Panel>, anna_key: &str) {
    let [anna, boris, chen] = ids;
    let report = drift::migrate(&ledger.db.conn, new.as_ref()).await.unwrap();
    assert_eq!((report.checked, report.repaired, report.failed), (3, 3, 0));
    for (user_id, username) in [(anna, "tg_700001"), (boris, "tg_700002")] {
        let subscription = ledger.subscription(user_id).await;
        let (expire, _, url) = seen(new.as_ref(), username)
            .await
            .expect("on the new panel");
        assert_eq!(
            expire,
            Some(subscription.expires_at.timestamp()),
            "{username}: the ledger's expiry"
        );
        assert!(url.starts_with("https://sub.example.com/"), "{url}");
        let recorded = subscription.subscription_url.unwrap_or_default();
        assert!(
            recorded.starts_with("https://sub.example.com/"),
            "{username}: the new panel's link recorded, not {recorded}"
        );
        assert_eq!(subscription.status, "active");
    }
    let (_, key, _) = seen(new.as_ref(), "tg_700001").await.unwrap();
    assert_eq!(
        key.as_deref(),
        Some(anna_key),
        "the adopted user keeps its key"
    );
    assert!(
        seen(new.as_ref(), "tg_700003").await.is_none(),
        "no paid time: not created"
    );

    // A second run changes nothing; nothing is extended twice.
    let before = seen(new.as_ref(), "tg_700001").await.unwrap().0;
    let again = drift::migrate(&ledger.db.conn, new.as_ref()).await.unwrap();
    assert_eq!(again.failed, 0);
    assert_eq!(seen(new.as_ref(), "tg_700001").await.unwrap().0, before);
    let drift = drift::check_drift(&ledger.db.conn, new.as_ref())
        .await
        .unwrap();
    assert_eq!(drift.repaired, 0, "in sync after the migration");

    // The next payment extends from the ledger, on the new panel.
    let sync = SubscriptionSync::new(new.clone(), ledger.db.conn.clone());
    let old_expiry = ledger.subscription(boris).await.expires_at;
    let paid = ledger.pay(boris, 700_002).await;
    ledger.deliver(&sync, &completed(&paid)).await;
    let expiry = ledger.subscription(boris).await.expires_at;
    assert_eq!(expiry, old_expiry + chrono::Duration::days(30));
    assert_eq!(
        seen(new.as_ref(), "tg_700002").await.unwrap().0,
        Some(expiry.timestamp())
    );
    // And Chen, who has no paid time, is created on the new panel when he pays again.
    let paid = ledger.pay(chen, 700_003).await;
    ledger.deliver(&sync, &completed(&paid)).await;
    let expiry = ledger.subscription(chen).await.expires_at;
    assert_eq!(
        seen(new.as_ref(), "tg_700003").await.unwrap().0,
        Some(expiry.timestamp())
    );
}

#[tokio::test]
async fn marzban_to_remnawave_keeps_the_ledgers_expiry_and_extends_nothing_twice() {
    let ledger = Ledger::new().await;
    let ids = ledger_on_marzban(&ledger).await;
    let squad = Uuid::parse_str(remnawave::DEFAULT_SQUAD).unwrap();
    let other = Uuid::new_v4();
    let emu = remnawave::spawn(remnawave::Config {
        squads: vec![
            remnawave::Squad {
                uuid: squad,
                name: "Ours".to_owned(),
            },
            remnawave::Squad {
                uuid: other,
                name: "Migrated".to_owned(),
            },
        ],
        ..remnawave::Config::default()
    })
    .await
    .unwrap();
    // remnawave-migrate copied Anna with a stale expiry, into another squad.
    let anna = emu.insert_user(
        "tg_700001",
        Utc::now() + chrono::Duration::days(100),
        vec![other],
    );
    let client = RemnawaveClient::new(RemnawaveSettings::new(
        emu.base_url.clone(),
        SecretString::from(remnawave::DEFAULT_TOKEN),
        vec![squad],
    ))
    .unwrap();
    migrate_and_check(&ledger, ids, Arc::new(client), &anna.vless_uuid.to_string()).await;
    assert_eq!(
        emu.user("tg_700001").unwrap().active_internal_squads,
        vec![other, squad]
    );
    assert_eq!(
        emu.user("tg_700001").unwrap().short_uuid,
        anna.short_uuid,
        "her link kept"
    );
}

#[tokio::test]
async fn marzban_to_pasarguard_keeps_the_ledgers_expiry_and_extends_nothing_twice() {
    let ledger = Ledger::new().await;
    let ids = ledger_on_marzban(&ledger).await;
    let emu = pasarguard::spawn(pasarguard::Config::default())
        .await
        .unwrap();
    // The in-place upgrade kept Anna (with a stale expiry and her keys).
    let anna = emu.insert_user(
        "tg_700001",
        Some(Utc::now() + chrono::Duration::days(100)),
        vec![1],
    );
    let client = PasarguardClient::new(PasarguardSettings::new(
        emu.base_url.clone(),
        PasarguardAuth::ApiKey(SecretString::from(pasarguard::DEFAULT_API_KEY)),
        vec![1],
    ))
    .unwrap();
    migrate_and_check(&ledger, ids, Arc::new(client), anna.vless_id().unwrap()).await;
}
