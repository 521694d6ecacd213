//! Promo codes (issue 23): what a code gives, whom it is good for, and how its uses are
//! counted.
//!
//! A code gives one of: a percent off (1–99), a fixed amount off in one currency, or extra
//! days on top of the tariff's. Its limits: total uses, once per customer, a validity window
//! (`starts_at` inclusive, `ends_at` exclusive), the tariffs and providers it is good for.
//!
//! **At checkout** the gateway checks the code in the payment's intent transaction (under the
//! customer's row lock) with [`refusal`] and [`price`]; the discounted price is the payment's
//! `amount_minor` (so the worker's amount check compares the provider's amount with it), and
//! a [`payment_promos`] row records the code, the list price, the discount and the extra days
//! in the same transaction. Bad input is refused before anything is written.
//!
//! **Uses** are counted by the worker, never at checkout: [`count_use`] stamps `used_at` in
//! the transaction of the payment's `succeeded` transition — a conditional update, so a
//! duplicated notification (the transition itself happens once) counts nothing twice — and
//! [`return_use`] stamps `returned_at` in that of its `refunded` transition (a full refund; a
//! partial one keeps the use). A use is a row with `used_at` and no `returned_at`.
//!
//! **Limits** (`max_uses`, once per customer) are checked at checkout against counted uses
//! only, not against open checkouts: an abandoned checkout never blocks a code, and a
//! payment that succeeds is always honoured. The price of that choice: customers who hold
//! open checkouts with the code when its last use goes may still pay them, so a code can end
//! a little over `max_uses` (at most by the number of such open checkouts), and a customer
//! who opened two checkouts with a once-per-customer code and pays both uses it twice.
//!
//! **Extra days** reach the ledger through marzban-sync, which adds
//! `payment_promos.extra_days` to the tariff's days of the payment's grant.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
};
use serde::{Deserialize, Serialize};

use crate::entities::{payment_promos, payments, promo_codes};
use crate::money::{Currency, Money};
use crate::{PaymentId, PaymentStatus};

/// The longest code.
pub const MAX_CODE_CHARS: usize = 32;
/// The most extra days one code gives.
pub const MAX_DAYS: i64 = 3650;

/// What a code gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Percent,
    Fixed,
    Days,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Percent => "percent",
            Kind::Fixed => "fixed",
            Kind::Days => "days",
        }
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "percent" | "%" => Ok(Kind::Percent),
            "fixed" => Ok(Kind::Fixed),
            "days" => Ok(Kind::Days),
            other => Err(format!("unknown kind {other:?}: percent, fixed or days")),
        }
    }
}

/// A code's benefit, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benefit {
    /// Percent off, 1–99.
    Percent(i64),
    /// This much off, in its currency only.
    Fixed(Money),
    /// Days on top of the tariff's, at the full price.
    Days(i32),
}

impl Benefit {
    /// The benefit a stored row gives (`None` for a row no API could have written).
    pub fn of(row: &promo_codes::Model) -> Option<Self> {
        match Kind::from_str(&row.kind).ok()? {
            Kind::Percent => Some(Benefit::Percent(row.value)),
            Kind::Fixed => Some(Benefit::Fixed(Money::new(row.value, row.currency?))),
            Kind::Days => i32::try_from(row.value).ok().map(Benefit::Days),
        }
    }
}

/// Why a code cannot be used. Its [`Refusal::as_str`] starts the API's error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such code.
    Unknown,
    /// Disabled by an admin.
    Disabled,
    /// Its window has not opened yet.
    NotYet,
    /// Its window has closed.
    Expired,
    /// Every use has gone.
    Exhausted,
    /// A once-per-customer code this customer has used.
    AlreadyUsed,
    /// Not for this tariff.
    Tariff,
    /// Not for this payment method.
    Provider,
    /// A fixed discount in another currency than the price.
    Currency,
    /// The discount would leave less than the smallest amount a payment may ask.
    BelowMinimum,
}

impl Refusal {
    pub const ALL: [Refusal; 10] = [
        Refusal::Unknown,
        Refusal::Disabled,
        Refusal::NotYet,
        Refusal::Expired,
        Refusal::Exhausted,
        Refusal::AlreadyUsed,
        Refusal::Tariff,
        Refusal::Provider,
        Refusal::Currency,
        Refusal::BelowMinimum,
    ];

    /// The stable code of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::Disabled => "disabled",
            Refusal::NotYet => "not_yet",
            Refusal::Expired => "expired",
            Refusal::Exhausted => "exhausted",
            Refusal::AlreadyUsed => "already_used",
            Refusal::Tariff => "tariff",
            Refusal::Provider => "provider",
            Refusal::Currency => "currency",
            Refusal::BelowMinimum => "below_minimum",
        }
    }

    /// The reason whose code starts `message` (`"expired: …"`).
    pub fn from_message(message: &str) -> Option<Self> {
        let head = message.split(':').next()?.trim();
        Self::ALL.into_iter().find(|r| r.as_str() == head)
    }

    /// A sentence for the API's error message.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Unknown => "there is no such promo code",
            Refusal::Disabled => "the promo code is disabled",
            Refusal::NotYet => "the promo code is not valid yet",
            Refusal::Expired => "the promo code has expired",
            Refusal::Exhausted => "the promo code has been used up",
            Refusal::AlreadyUsed => "this customer has used the promo code already",
            Refusal::Tariff => "the promo code is not valid for this tariff",
            Refusal::Provider => "the promo code is not valid for this payment method",
            Refusal::Currency => "the promo code's discount is in another currency",
            Refusal::BelowMinimum => {
                "the discount would leave less than the smallest payment allowed"
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.as_str(), self.describe())
    }
}

/// The code as stored: trimmed, upper case, 3 to [`MAX_CODE_CHARS`] of `A-Z 0-9 _ -`.
pub fn normalize(code: &str) -> Option<String> {
    let code = code.trim().to_ascii_uppercase();
    let ok = (3..=MAX_CODE_CHARS).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    ok.then_some(code)
}

/// The smallest amount a discounted payment may ask: 1 ₽, 1 ⭐, 0.1 USDT.
pub fn min_charge(currency: Currency) -> Money {
    let minor = match currency {
        Currency::Rub => 100,
        Currency::Xtr => 1,
        Currency::Usdt => 100_000,
    };
    Money::new(minor, currency)
}

/// A price with a code applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priced {
    /// What the payer is asked (before a crypto tag).
    pub amount: Money,
    pub discount_minor: i64,
    pub extra_days: i32,
}

/// `list` with the code's benefit applied, or why it cannot be.
pub fn price(benefit: Benefit, list: Money) -> Result<Priced, Refusal> {
    let discount_minor = match benefit {
        Benefit::Days(days) => {
            return Ok(Priced {
                amount: list,
                discount_minor: 0,
                extra_days: days,
            });
        }
        // Rounded down: the payer never pays less than the percent says.
        Benefit::Percent(percent) => {
            i64::try_from(i128::from(list.minor()) * i128::from(percent) / 100)
                .map_err(|_| Refusal::BelowMinimum)?
        }
        Benefit::Fixed(off) if off.currency() != list.currency() => {
            return Err(Refusal::Currency);
        }
        Benefit::Fixed(off) => off.minor(),
    };
    let amount = Money::new(list.minor().saturating_sub(discount_minor), list.currency());
    if amount.minor() < min_charge(list.currency()).minor() {
        return Err(Refusal::BelowMinimum);
    }
    Ok(Priced {
        amount,
        discount_minor,
        extra_days: 0,
    })
}

/// The comma-separated list of a row, as items (empty: any).
pub fn list(column: &str) -> Vec<&str> {
    column
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Why the row `promo` is no good for this checkout at `now`, from the row alone: disabled,
/// outside its window, another tariff or provider (`None` skips that check).
pub fn offer_refusal(
    promo: &promo_codes::Model,
    tariff_code: Option<&str>,
    provider: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Refusal> {
    if !promo.active {
        return Some(Refusal::Disabled);
    }
    if promo.starts_at.is_some_and(|start| now < start) {
        return Some(Refusal::NotYet);
    }
    if promo.ends_at.is_some_and(|end| now >= end) {
        return Some(Refusal::Expired);
    }
    let tariffs = list(&promo.tariffs);
    if let Some(tariff) = tariff_code
        && !tariffs.is_empty()
        && !tariffs.contains(&tariff)
    {
        return Some(Refusal::Tariff);
    }
    let providers = list(&promo.providers);
    if let Some(provider) = provider
        && !providers.is_empty()
        && !providers.contains(&provider)
    {
        return Some(Refusal::Provider);
    }
    None
}

/// The row of `code` (any case), if there is one.
pub async fn find<C: ConnectionTrait>(
    conn: &C,
    code: &str,
) -> Result<Option<promo_codes::Model>, DbErr> {
    let Some(code) = normalize(code) else {
        return Ok(None);
    };
    promo_codes::Entity::find()
        .filter(promo_codes::Column::Code.eq(code))
        .one(conn)
        .await
}

/// Condition of the rows that are uses (counted, not given back).
fn counted() -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(payment_promos::Column::UsedAt.is_not_null())
        .add(payment_promos::Column::ReturnedAt.is_null())
}

/// The code's uses so far.
pub async fn uses<C: ConnectionTrait>(conn: &C, promo_id: i64) -> Result<u64, DbErr> {
    payment_promos::Entity::find()
        .filter(payment_promos::Column::PromoCodeId.eq(promo_id))
        .filter(counted())
        .count(conn)
        .await
}

/// Why `promo` is no good for the customer `users.id` = `user_id` (`None`: a customer the
/// gateway has not seen, who has used nothing) by its limits: used up, or used by them.
pub async fn limit_refusal<C: ConnectionTrait>(
    conn: &C,
    promo: &promo_codes::Model,
    user_id: Option<i64>,
) -> Result<Option<Refusal>, DbErr> {
    if let Some(max) = promo.max_uses
        && uses(conn, promo.id).await? >= u64::try_from(max).unwrap_or(0)
    {
        return Ok(Some(Refusal::Exhausted));
    }
    if promo.once_per_user
        && let Some(user_id) = user_id
    {
        let used = payment_promos::Entity::find()
            .filter(payment_promos::Column::PromoCodeId.eq(promo.id))
            .filter(payment_promos::Column::UserId.eq(user_id))
            .filter(counted())
            .count(conn)
            .await?;
        if used > 0 {
            return Ok(Some(Refusal::AlreadyUsed));
        }
    }
    Ok(None)
}

/// Every check of a checkout at once: the row's ([`offer_refusal`]), then its limits
/// ([`limit_refusal`]).
pub async fn refusal<C: ConnectionTrait>(
    conn: &C,
    promo: &promo_codes::Model,
    user_id: Option<i64>,
    tariff_code: Option<&str>,
    provider: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<Refusal>, DbErr> {
    if let Some(refusal) = offer_refusal(promo, tariff_code, provider, now) {
        return Ok(Some(refusal));
    }
    limit_refusal(conn, promo, user_id).await
}

/// In the transaction of the payment's `succeeded` transition: counts its code's use, once.
/// Whether this call counted it (false: no code, or counted before).
pub async fn count_use<C: ConnectionTrait>(
    conn: &C,
    payment_id: PaymentId,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let done = payment_promos::Entity::update_many()
        .col_expr(payment_promos::Column::UsedAt, Expr::value(Some(now)))
        .filter(payment_promos::Column::PaymentId.eq(payment_id))
        .filter(payment_promos::Column::UsedAt.is_null())
        .exec(conn)
        .await?;
    Ok(done.rows_affected == 1)
}

/// In the transaction of the payment's `refunded` transition: gives its code's use back,
/// once. Whether this call gave it back.
pub async fn return_use<C: ConnectionTrait>(
    conn: &C,
    payment_id: PaymentId,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let done = payment_promos::Entity::update_many()
        .col_expr(payment_promos::Column::ReturnedAt, Expr::value(Some(now)))
        .filter(payment_promos::Column::PaymentId.eq(payment_id))
        .filter(payment_promos::Column::UsedAt.is_not_null())
        .filter(payment_promos::Column::ReturnedAt.is_null())
        .exec(conn)
        .await?;
    Ok(done.rows_affected == 1)
}

/// One code's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodeStats {
    pub code: String,
    /// Payments created with the code.
    pub payments: u64,
    /// Of them, paid (succeeded, whatever was refunded later).
    pub paid: u64,
    /// Paid over created, in percent (0 without payments).
    pub conversion_pct: f64,
    /// Uses counted now (paid and not refunded in full).
    pub uses: u64,
    /// Uses given back by full refunds.
    pub returned: u64,
    /// Money received net of refunds, per currency.
    pub revenue: Vec<Money>,
    /// Discounts given on paid payments, per currency.
    pub discount: Vec<Money>,
}

/// The numbers of every code, in code order.
pub async fn stats<C: ConnectionTrait>(conn: &C) -> Result<Vec<CodeStats>, DbErr> {
    let codes = promo_codes::Entity::find()
        .order_by_asc(promo_codes::Column::Code)
        .all(conn)
        .await?;
    let rows = payment_promos::Entity::find()
        .find_also_related(payments::Entity)
        .all(conn)
        .await?;
    Ok(codes
        .into_iter()
        .map(|code| {
            let mut out = CodeStats {
                code: code.code.clone(),
                payments: 0,
                paid: 0,
                conversion_pct: 0.0,
                uses: 0,
                returned: 0,
                revenue: Vec::new(),
                discount: Vec::new(),
            };
            for (row, payment) in rows.iter().filter(|(r, _)| r.promo_code_id == code.id) {
                out.payments += 1;
                if row.used_at.is_some() && row.returned_at.is_none() {
                    out.uses += 1;
                }
                if row.returned_at.is_some() {
                    out.returned += 1;
                }
                let Some(payment) = payment else { continue };
                if !matches!(
                    payment.status,
                    PaymentStatus::Succeeded
                        | PaymentStatus::PartiallyRefunded
                        | PaymentStatus::Refunded
                ) {
                    continue;
                }
                out.paid += 1;
                add(
                    &mut out.revenue,
                    Money::new(
                        payment.amount_minor - payment.refunded_minor,
                        payment.currency,
                    ),
                );
                add(
                    &mut out.discount,
                    Money::new(row.discount_minor, payment.currency),
                );
            }
            if out.payments > 0 {
                out.conversion_pct =
                    (out.paid as f64 * 1000.0 / out.payments as f64).round() / 10.0;
            }
            out
        })
        .collect())
}

fn add(sums: &mut Vec<Money>, amount: Money) {
    match sums.iter_mut().find(|m| m.currency() == amount.currency()) {
        Some(sum) => *sum = Money::new(sum.minor() + amount.minor(), sum.currency()),
        None => sums.push(amount),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rub(minor: i64) -> Money {
        Money::new(minor, Currency::Rub)
    }

    #[test]
    fn codes_are_normalized() {
        assert_eq!(normalize(" spring-20 ").as_deref(), Some("SPRING-20"));
        for bad in [
            "",
            "ab",
            "with space",
            "ÄBC",
            &"X".repeat(MAX_CODE_CHARS + 1),
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prices() {
        let percent = price(Benefit::Percent(20), rub(19_900)).unwrap();
        assert_eq!(percent.amount, rub(15_920));
        assert_eq!(percent.discount_minor, 3_980);
        // Rounded in the payer's disfavour by less than a kopeck.
        assert_eq!(
            price(Benefit::Percent(33), rub(10_001)).unwrap().amount,
            rub(6_701)
        );
        assert_eq!(
            price(Benefit::Fixed(rub(5_000)), rub(19_900))
                .unwrap()
                .amount,
            rub(14_900)
        );
        assert_eq!(
            price(Benefit::Fixed(rub(19_850)), rub(19_900)),
            Err(Refusal::BelowMinimum)
        );
        assert_eq!(
            price(Benefit::Fixed(rub(100)), Money::new(150, Currency::Xtr)),
            Err(Refusal::Currency)
        );
        // 1 ⭐ left is the smallest payment; 0.99 ₽ is below it.
        assert_eq!(
            price(Benefit::Percent(99), Money::new(50, Currency::Xtr))
                .unwrap()
                .amount,
            Money::new(1, Currency::Xtr)
        );
        assert_eq!(
            price(Benefit::Percent(99), rub(9_900)),
            Err(Refusal::BelowMinimum)
        );
        let days = price(Benefit::Days(7), rub(19_900)).unwrap();
        assert_eq!(
            (days.amount, days.discount_minor, days.extra_days),
            (rub(19_900), 0, 7)
        );
    }

    #[test]
    fn refusals_round_trip_through_messages() {
        for refusal in Refusal::ALL {
            assert_eq!(Refusal::from_message(&refusal.to_string()), Some(refusal));
        }
        assert_eq!(Refusal::from_message("something else"), None);
    }
}
