//! What the bot reads from the database: tariffs, users' subscriptions and the pre-checkout
//! check. (Telegram payment messages go to the shared inbox, `service_kit::inbox`.)

use chrono::{DateTime, Utc};
use domain::PaymentId;
use domain::PaymentStatus;
use domain::entities::{payment_promos, payments, subscriptions, tariff_texts, tariffs, users};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, FromQueryResult,
    JoinType, QueryFilter, QueryOrder, QuerySelect, RelationTrait,
};

use crate::texts::Lang;

/// A tariff with its title and description in one language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTariff {
    pub tariff: tariffs::Model,
    pub title: String,
    pub description: Option<String>,
}

impl LocalTariff {
    /// `tariff`'s texts in `lang` among `texts` (any tariffs' rows), else its default (`ru`)
    /// texts, else `tariffs.title` — a tariffs file without translations still has a title.
    pub fn pick(tariff: tariffs::Model, texts: &[tariff_texts::Model], lang: Lang) -> Self {
        let find = |lang: Lang| {
            texts
                .iter()
                .find(|row| row.tariff_id == tariff.id && row.lang == lang.code())
        };
        let text = find(lang).or_else(|| find(Lang::Ru));
        Self {
            title: text.map_or_else(|| tariff.title.clone(), |row| row.title.clone()),
            description: text.and_then(|row| row.description.clone()),
            tariff,
        }
    }
}

/// Every language's texts of the tariffs `ids`.
pub async fn tariff_texts<C: ConnectionTrait>(
    db: &C,
    ids: impl IntoIterator<Item = i64>,
) -> Result<Vec<tariff_texts::Model>, DbErr> {
    tariff_texts::Entity::find()
        .filter(tariff_texts::Column::TariffId.is_in(ids))
        .all(db)
        .await
}

/// The tariffs on sale, in their order, with their texts in `lang`.
pub async fn active_tariffs(
    db: &DatabaseConnection,
    lang: Lang,
) -> Result<Vec<LocalTariff>, DbErr> {
    let list = tariffs::Entity::find()
        .filter(tariffs::Column::Active.eq(true))
        .order_by_asc(tariffs::Column::SortOrder)
        .order_by_asc(tariffs::Column::Id)
        .all(db)
        .await?;
    let texts = tariff_texts(db, list.iter().map(|t| t.id)).await?;
    Ok(list
        .into_iter()
        .map(|tariff| LocalTariff::pick(tariff, &texts, lang))
        .collect())
}

/// The tariff `code` if it is on sale, with its texts in `lang`.
pub async fn tariff(
    db: &DatabaseConnection,
    code: &str,
    lang: Lang,
) -> Result<Option<LocalTariff>, DbErr> {
    let Some(tariff) = tariffs::Entity::find()
        .filter(tariffs::Column::Code.eq(code))
        .filter(tariffs::Column::Active.eq(true))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let texts = tariff_texts(db, [tariff.id]).await?;
    Ok(Some(LocalTariff::pick(tariff, &texts, lang)))
}

pub async fn user<C: ConnectionTrait>(
    db: &C,
    telegram_id: i64,
) -> Result<Option<users::Model>, DbErr> {
    users::Entity::find()
        .filter(users::Column::TelegramId.eq(telegram_id))
        .one(db)
        .await
}

pub async fn subscription(
    db: &DatabaseConnection,
    telegram_id: i64,
) -> Result<Option<subscriptions::Model>, DbErr> {
    let Some(user) = user(db, telegram_id).await? else {
        return Ok(None);
    };
    subscriptions::Entity::find()
        .filter(subscriptions::Column::UserId.eq(user.id))
        .one(db)
        .await
}

/// The answer to a `pre_checkout_query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreCheckout {
    Ok,
    /// The payload names no Telegram payment of this user.
    Unknown,
    /// Paid, failed or closed already.
    NotPending,
    /// Amount or currency differ from the payment.
    Mismatch,
    /// The invoice's time to pay (`expires_at`) has passed.
    Expired,
    /// The tariff no longer costs what the invoice asks (or is no longer sold).
    PriceChanged,
}

/// What the pre-checkout check reads, in one statement: the payment, its payer's Telegram id,
/// its tariff's prices (if the tariff is still sold) and its promo code's list price.
#[derive(Debug, FromQueryResult)]
struct PreCheckoutRow {
    provider: domain::ProviderId,
    status: PaymentStatus,
    currency: domain::Currency,
    amount_minor: i64,
    expires_at: Option<DateTime<Utc>>,
    telegram_id: i64,
    tariff_active: Option<bool>,
    price_rub_minor: Option<i64>,
    price_xtr: Option<i64>,
    price_usdt_minor: Option<i64>,
    list_price_minor: Option<i64>,
}

/// Checks that `payload` names a pending Telegram payment of `from` for exactly `total` in
/// `currency`, not expired at `now`, whose tariff still costs that much (before its promo
/// code's discount, if it was made with one). One indexed look-up: the answer is due within
/// Telegram's 10 s, and a flood of them comes at once.
pub async fn check_pre_checkout(
    db: &DatabaseConnection,
    payload: &str,
    from: i64,
    currency: &str,
    total: i64,
    now: DateTime<Utc>,
) -> Result<PreCheckout, DbErr> {
    let Ok(id) = PaymentId::parse(payload) else {
        return Ok(PreCheckout::Unknown);
    };
    let row = payments::Entity::find_by_id(id)
        .select_only()
        .columns([
            payments::Column::Provider,
            payments::Column::Status,
            payments::Column::Currency,
            payments::Column::AmountMinor,
            payments::Column::ExpiresAt,
        ])
        .column(users::Column::TelegramId)
        .column_as(tariffs::Column::Active, "tariff_active")
        .columns([
            tariffs::Column::PriceRubMinor,
            tariffs::Column::PriceXtr,
            tariffs::Column::PriceUsdtMinor,
        ])
        .column(payment_promos::Column::ListPriceMinor)
        .inner_join(users::Entity)
        .left_join(tariffs::Entity)
        .join(
            JoinType::LeftJoin,
            payment_promos::Relation::Payment.def().rev(),
        )
        .into_model::<PreCheckoutRow>()
        .one(db)
        .await?;
    let Some(row) = row else {
        return Ok(PreCheckout::Unknown);
    };
    if row.provider != payment_core::providers::telegram::ID || row.telegram_id != from {
        return Ok(PreCheckout::Unknown);
    }
    if row.status != PaymentStatus::Pending {
        return Ok(PreCheckout::NotPending);
    }
    if row.currency.code() != currency || row.amount_minor != total {
        return Ok(PreCheckout::Mismatch);
    }
    if row.expires_at.is_some_and(|expires| expires <= now) {
        return Ok(PreCheckout::Expired);
    }
    let price = tariffs::price_minor(
        row.currency,
        [row.price_rub_minor, row.price_xtr, row.price_usdt_minor],
    )
    .filter(|_| row.tariff_active == Some(true));
    // A payment made with a promo code asks the discounted price of the list price it was
    // made at (issue 23); the code was checked then and is honoured.
    let list = row.list_price_minor.unwrap_or(row.amount_minor);
    if price != Some(list) {
        return Ok(PreCheckout::PriceChanged);
    }
    Ok(PreCheckout::Ok)
}

/// A payment and its payer's Telegram id, for the admin's refund confirmation.
pub async fn payment_with_payer(
    db: &DatabaseConnection,
    id: PaymentId,
) -> Result<Option<(payments::Model, Option<i64>)>, DbErr> {
    Ok(payments::Entity::find_by_id(id)
        .find_also_related(users::Entity)
        .one(db)
        .await?
        .map(|(payment, user)| (payment, user.map(|u| u.telegram_id))))
}
