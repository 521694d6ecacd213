//! Payment analytics (DESIGN §7): the figures behind the gateway's `GET /api/stats` and the
//! bot's `/stats` and `/admin`, computed the same way on PostgreSQL and SQLite.
//!
//! The rules, in one place so every surface agrees:
//! - **A payment belongs to the period in which it was created** (`created_at` in
//!   `[from, to)`, UTC). Its outcome, refunds and timing count there, so conversion never
//!   exceeds 100 % and daily figures add up to the period's.
//! - **created** = every payment; **succeeded** = money was received (`succeeded`,
//!   `partially_refunded` or `refunded`: a refunded payment did succeed first);
//!   **refunded** = the succeeded ones with any refund; **failed** = `failed`, `canceled` or
//!   `expired`; **pending** = still `pending`. So `created = succeeded + failed + pending`.
//! - **Revenue**, per currency, in minor units: `gross` = amounts of succeeded payments,
//!   `refunded` = what was returned of them, `net = gross − refunded`.
//! - **Average check** = `gross ÷ succeeded payments` of that currency, rounded to the nearest
//!   minor unit, halves up.
//! - **Conversion** = `succeeded ÷ created`, kept as the exact ratio; its basis points
//!   (1/100 of a percent) are rounded to the nearest, halves up.
//! - **Processing time** = `completed_at − created_at` of succeeded payments, in
//!   milliseconds; p50 and p95 by the nearest-rank method (the smallest value with at least
//!   that share of values at or below it), computed here over the fetched durations because
//!   the two backends share no percentile function.
//! - **New paying users** = succeeded payments that are their user's first succeeded payment
//!   ever (with any provider); every other succeeded payment is a **renewal**.
//! - **Autopay** = the automatic renewal charges of saved methods created in the period
//!   (payments keyed `autopay:…`): charged, succeeded, the success rate (`succeeded ÷
//!   decided`, where decided = succeeded + declined) and the declines by the provider's reason.
//! - **Churn** = subscriptions whose access ended in the period more than
//!   [`CHURN_GRACE_DAYS`] days ago and was not renewed since (their expiry is still that
//!   end), over the subscriptions that had access at some time in the period.
//!
//! Counts are aggregated in SQL; only succeeded payments of the period are fetched (for money,
//! timing and the daily series), one narrow row each.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use sea_orm::sea_query::{Alias, Condition, Expr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter,
    QuerySelect,
};
use serde::Serialize;
use uuid::Uuid;

use crate::entities::payments;
use crate::money::Currency;
use crate::status::PaymentStatus;

/// The states in which money was received.
pub const SUCCEEDED: [PaymentStatus; 3] = [
    PaymentStatus::Succeeded,
    PaymentStatus::PartiallyRefunded,
    PaymentStatus::Refunded,
];

/// Days after an expiry within which a renewal does not count as churn.
pub const CHURN_GRACE_DAYS: i64 = 7;

/// Automatic renewals and churn in a period (see the module rules).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub autopay_charges: u64,
    pub autopay_succeeded: u64,
    /// `succeeded ÷ (succeeded + declined)`.
    pub autopay_success: Ratio,
    /// Declined charges by the provider's reason (e.g. `insufficient_funds`).
    pub autopay_declines: BTreeMap<String, u64>,
    /// Subscriptions with access at some time in the period.
    pub subscribers: u64,
    /// Of them, ended in the period and not renewed within [`CHURN_GRACE_DAYS`] days.
    pub churned: u64,
    /// `churned ÷ subscribers`.
    pub churn: Ratio,
}

/// A half-open time range `[from, to)`; an absent bound is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Period {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// `from` is not before `to`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the period is empty: from ({from}) must be before to ({to})")]
pub struct EmptyPeriod {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Period {
    /// Everything, ever.
    pub const ALL_TIME: Period = Period {
        from: None,
        to: None,
    };

    /// Since midnight UTC of `now`'s day.
    pub fn today(now: DateTime<Utc>) -> Period {
        Period::last_days(1, now)
    }

    /// The last `days` calendar days (UTC), today included: `last_days(7)` starts at midnight
    /// six days ago. `days` of 0 is taken as 1.
    pub fn last_days(days: u32, now: DateTime<Utc>) -> Period {
        let first = midnight(now.date_naive()) - Duration::days(i64::from(days.max(1)) - 1);
        Period {
            from: Some(first),
            to: None,
        }
    }

    /// `[from, to)`; either bound may be open.
    pub fn custom(
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Period, EmptyPeriod> {
        match (from, to) {
            (Some(from), Some(to)) if from >= to => Err(EmptyPeriod { from, to }),
            _ => Ok(Period { from, to }),
        }
    }

    fn condition(&self) -> Condition {
        let mut condition = Condition::all();
        if let Some(from) = self.from {
            condition = condition.add(payments::Column::CreatedAt.gte(from));
        }
        if let Some(to) = self.to {
            condition = condition.add(payments::Column::CreatedAt.lt(to));
        }
        condition
    }
}

/// Midnight UTC at the start of `day`.
pub fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// Payments by outcome (see the module rules).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub created: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub refunded: u64,
    pub pending: u64,
}

/// An exact ratio; `basis_points` is its rounded form for display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Ratio {
    pub numerator: u64,
    pub denominator: u64,
}

impl Ratio {
    /// In 1/10 000, rounded to the nearest, halves up; `None` when nothing was created.
    pub fn basis_points(self) -> Option<u64> {
        (self.denominator > 0).then(|| {
            let scaled = u128::from(self.numerator) * 20_000 + u128::from(self.denominator);
            u64::try_from(scaled / (2 * u128::from(self.denominator))).unwrap_or(u64::MAX)
        })
    }

    /// The ratio in percent with two decimals (`"66.67"`), from [`Ratio::basis_points`].
    pub fn percent(self) -> Option<String> {
        self.basis_points()
            .map(|bp| format!("{}.{:02}", bp / 100, bp % 100))
    }
}

/// Money of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Revenue {
    pub currency: Currency,
    /// Succeeded payments in this currency.
    pub payments: u64,
    pub gross_minor: i64,
    pub refunded_minor: i64,
    /// `gross − refunded`.
    pub net_minor: i64,
    /// `gross ÷ payments`, to the nearest minor unit, halves up.
    pub average_check_minor: i64,
}

/// Created → succeeded, over `count` succeeded payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timing {
    pub count: u64,
    pub p50_ms: i64,
    pub p95_ms: i64,
}

/// The figures of one provider, or of all together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub counts: Counts,
    /// `succeeded ÷ created`.
    pub conversion: Ratio,
    /// One entry per currency with a succeeded payment, in [`Currency::ALL`] order.
    pub revenue: Vec<Revenue>,
    /// `None` without succeeded payments.
    pub processing: Option<Timing>,
    pub new_paying_users: u64,
    pub renewals: u64,
}

/// The figures of a period: all providers together and each one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub period: Period,
    /// The provider the report is limited to, if any.
    pub provider: Option<String>,
    pub total: Figures,
    /// Every provider with a payment in the period, by name.
    pub providers: BTreeMap<String, Figures>,
    /// Automatic renewals and churn (of all providers).
    pub retention: Retention,
}

/// Net revenue of one provider, currency and day (UTC, by creation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DailyRevenue {
    pub day: NaiveDate,
    pub net_minor: i64,
}

/// The daily series of one provider in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Series {
    pub provider: String,
    pub currency: Currency,
    /// Days with a succeeded payment, in order.
    pub days: Vec<DailyRevenue>,
}

#[derive(Debug, FromQueryResult)]
struct SucceededRow {
    id: Uuid,
    provider: String,
    amount_minor: i64,
    currency: Currency,
    refunded_minor: i64,
    created_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

/// Everything accumulated for one provider (or the total) before the figures are derived.
#[derive(Debug, Default)]
struct Tally {
    counts: Counts,
    /// `(payments, gross, refunded)` per currency.
    money: BTreeMap<usize, (u64, i64, i64)>,
    durations_ms: Vec<i64>,
    first_payments: u64,
}

impl Tally {
    fn count(&mut self, status: PaymentStatus, n: u64) {
        let c = &mut self.counts;
        c.created += n;
        match status {
            PaymentStatus::Pending => c.pending += n,
            PaymentStatus::Succeeded => c.succeeded += n,
            PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded => {
                c.succeeded += n;
                c.refunded += n;
            }
            PaymentStatus::Failed | PaymentStatus::Canceled | PaymentStatus::Expired => {
                c.failed += n;
            }
        }
    }

    fn add(&mut self, row: &SucceededRow, first: bool) {
        let money = self.money.entry(slot(row.currency)).or_default();
        money.0 += 1;
        money.1 += row.amount_minor;
        money.2 += row.refunded_minor;
        if let Some(completed) = row.completed_at {
            self.durations_ms
                .push((completed - row.created_at).num_milliseconds().max(0));
        }
        if first {
            self.first_payments += 1;
        }
    }

    fn figures(mut self) -> Figures {
        let revenue = self
            .money
            .iter()
            .filter_map(|(slot, &(payments, gross, refunded))| {
                Some(Revenue {
                    currency: *Currency::ALL.get(*slot)?,
                    payments,
                    gross_minor: gross,
                    refunded_minor: refunded,
                    net_minor: gross - refunded,
                    average_check_minor: rounded_div(gross, payments),
                })
            })
            .collect();
        self.durations_ms.sort_unstable();
        let processing = (!self.durations_ms.is_empty()).then(|| Timing {
            count: self.durations_ms.len() as u64,
            p50_ms: nearest_rank(&self.durations_ms, 50),
            p95_ms: nearest_rank(&self.durations_ms, 95),
        });
        Figures {
            counts: self.counts,
            conversion: Ratio {
                numerator: self.counts.succeeded,
                denominator: self.counts.created,
            },
            revenue,
            processing,
            new_paying_users: self.first_payments,
            renewals: self.counts.succeeded.saturating_sub(self.first_payments),
        }
    }
}

/// Where `currency` is in [`Currency::ALL`]: sorts currencies in that order.
fn slot(currency: Currency) -> usize {
    Currency::ALL
        .iter()
        .position(|c| *c == currency)
        .unwrap_or(Currency::ALL.len())
}

/// `n ÷ d` to the nearest integer, halves away from zero; 0 when `d` is 0.
pub fn rounded_div(n: i64, d: u64) -> i64 {
    if d == 0 {
        return 0;
    }
    let (n, d) = (i128::from(n), i128::from(d));
    let q = (2 * n.abs() + d) / (2 * d);
    i64::try_from(if n < 0 { -q } else { q }).unwrap_or(i64::MAX)
}

/// The `p`-th percentile of ascending `sorted` by nearest rank: the value at rank
/// `⌈p/100 · n⌉` (1-based). `sorted` must not be empty.
pub fn nearest_rank(sorted: &[i64], p: u32) -> i64 {
    let n = sorted.len() as u64;
    let rank = (u64::from(p) * n).div_ceil(100).clamp(1, n);
    sorted[(rank - 1) as usize]
}

fn cohort(period: Period, provider: Option<&str>) -> Condition {
    let mut condition = period.condition();
    if let Some(provider) = provider {
        condition = condition.add(payments::Column::Provider.eq(provider));
    }
    condition
}

/// The figures of `period`, of one `provider` or all.
pub async fn report<C: ConnectionTrait>(
    db: &C,
    period: Period,
    provider: Option<&str>,
) -> Result<Report, DbErr> {
    use payments::Column as P;
    let scope = cohort(period, provider);
    let counts: Vec<(String, PaymentStatus, i64)> = payments::Entity::find()
        .select_only()
        .column(P::Provider)
        .column(P::Status)
        .column_as(P::Id.count(), "n")
        .filter(scope.clone())
        .group_by(P::Provider)
        .group_by(P::Status)
        .into_tuple()
        .all(db)
        .await?;
    let succeeded = succeeded_rows(db, scope.clone()).await?;
    let firsts = first_payments(db, scope).await?;

    let mut total = Tally::default();
    let mut providers: BTreeMap<String, Tally> = BTreeMap::new();
    for (name, status, n) in counts {
        let n = u64::try_from(n).unwrap_or_default();
        total.count(status, n);
        providers.entry(name).or_default().count(status, n);
    }
    for row in &succeeded {
        let first = firsts.contains(&row.id);
        total.add(row, first);
        providers
            .entry(row.provider.clone())
            .or_default()
            .add(row, first);
    }
    Ok(Report {
        period,
        provider: provider.map(str::to_owned),
        retention: retention(db, period, Utc::now()).await?,
        total: total.figures(),
        providers: providers
            .into_iter()
            .map(|(name, tally)| (name, tally.figures()))
            .collect(),
    })
}

/// Autopay charges and churn of `period`, as of `now` (see the module rules).
pub async fn retention<C: ConnectionTrait>(
    db: &C,
    period: Period,
    now: DateTime<Utc>,
) -> Result<Retention, DbErr> {
    use crate::entities::subscriptions::Column as S;
    use payments::Column as P;
    let charges: Vec<(PaymentStatus, Option<String>, i64)> = payments::Entity::find()
        .select_only()
        .column(P::Status)
        .column(P::FailureReason)
        .column_as(P::Id.count(), "n")
        .filter(period.condition())
        .filter(P::IdempotencyKey.starts_with("autopay:"))
        .group_by(P::Status)
        .group_by(P::FailureReason)
        .into_tuple()
        .all(db)
        .await?;
    let mut r = Retention::default();
    for (status, reason, n) in charges {
        let n = u64::try_from(n).unwrap_or_default();
        r.autopay_charges += n;
        if SUCCEEDED.contains(&status) {
            r.autopay_succeeded += n;
        } else if status != PaymentStatus::Pending {
            *r.autopay_declines
                .entry(reason.unwrap_or_else(|| status.as_str().to_owned()))
                .or_default() += n;
        }
    }
    let declined: u64 = r.autopay_declines.values().sum();
    r.autopay_success = Ratio {
        numerator: r.autopay_succeeded,
        denominator: r.autopay_succeeded + declined,
    };
    let subs = crate::entities::subscriptions::Entity::find();
    let mut with_access = Condition::all();
    if let Some(from) = period.from {
        with_access = with_access.add(S::ExpiresAt.gte(from));
    }
    if let Some(to) = period.to {
        with_access = with_access.add(S::CreatedAt.lt(to));
    }
    r.subscribers = subs.clone().filter(with_access.clone()).count(db).await?;
    let settled = now - Duration::days(CHURN_GRACE_DAYS);
    let mut ended = with_access.add(S::ExpiresAt.lt(settled));
    if let Some(to) = period.to {
        ended = ended.add(S::ExpiresAt.lt(to));
    }
    r.churned = subs.filter(ended).count(db).await?;
    r.churn = Ratio {
        numerator: r.churned,
        denominator: r.subscribers,
    };
    Ok(r)
}

/// Net revenue per provider, currency and day of `period` (by creation day, UTC), for charts.
pub async fn daily_revenue<C: ConnectionTrait>(
    db: &C,
    period: Period,
) -> Result<Vec<Series>, DbErr> {
    let rows = succeeded_rows(db, period.condition()).await?;
    let mut series: BTreeMap<(String, usize), BTreeMap<NaiveDate, i64>> = BTreeMap::new();
    for row in rows {
        *series
            .entry((row.provider, slot(row.currency)))
            .or_default()
            .entry(row.created_at.date_naive())
            .or_default() += row.amount_minor - row.refunded_minor;
    }
    Ok(series
        .into_iter()
        .filter_map(|((provider, slot), days)| {
            Some(Series {
                provider,
                currency: *Currency::ALL.get(slot)?,
                days: days
                    .into_iter()
                    .map(|(day, net_minor)| DailyRevenue { day, net_minor })
                    .collect(),
            })
        })
        .collect())
}

async fn succeeded_rows<C: ConnectionTrait>(
    db: &C,
    scope: Condition,
) -> Result<Vec<SucceededRow>, DbErr> {
    use payments::Column as P;
    payments::Entity::find()
        .select_only()
        .columns([
            P::Id,
            P::Provider,
            P::AmountMinor,
            P::Currency,
            P::RefundedMinor,
            P::CreatedAt,
            P::CompletedAt,
        ])
        .filter(scope)
        .filter(P::Status.is_in(SUCCEEDED))
        .into_model::<SucceededRow>()
        .all(db)
        .await
}

/// The succeeded payments in `scope` that are their user's first succeeded payment: no
/// succeeded payment of the same user completed earlier (ties broken by id).
async fn first_payments<C: ConnectionTrait>(
    db: &C,
    scope: Condition,
) -> Result<HashSet<Uuid>, DbErr> {
    use payments::Column as P;
    use sea_orm::sea_query::ExprTrait;
    let earlier = Alias::new("earlier");
    let outer = |column: P| Expr::col((payments::Entity, column));
    let inner = |column: P| Expr::col((earlier.clone(), column));
    let mut before = Query::select();
    before
        .expr(Expr::val(1))
        .from_as(payments::Entity, earlier.clone())
        .and_where(inner(P::UserId).eq(outer(P::UserId)))
        .and_where(inner(P::Status).is_in(SUCCEEDED.map(PaymentStatus::as_str)))
        .cond_where(
            Condition::any()
                .add(inner(P::CompletedAt).lt(outer(P::CompletedAt)))
                .add(
                    Condition::all()
                        .add(inner(P::CompletedAt).eq(outer(P::CompletedAt)))
                        .add(inner(P::Id).lt(outer(P::Id))),
                ),
        );
    let ids: Vec<Uuid> = payments::Entity::find()
        .select_only()
        .column(P::Id)
        .filter(scope)
        .filter(P::Status.is_in(SUCCEEDED))
        .filter(Expr::exists(before).not())
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
        assert_eq!(nearest_rank(&v, 50), 50);
        assert_eq!(nearest_rank(&v, 95), 100);
        assert_eq!(nearest_rank(&[7], 50), 7);
        assert_eq!(nearest_rank(&[7], 95), 7);
        assert_eq!(nearest_rank(&[1, 2, 3], 50), 2);
        assert_eq!(nearest_rank(&[1, 2], 50), 1);
    }

    #[test]
    fn rounding_halves_up() {
        assert_eq!(rounded_div(5, 2), 3);
        assert_eq!(rounded_div(4, 3), 1);
        assert_eq!(rounded_div(5, 3), 2);
        assert_eq!(rounded_div(-5, 2), -3);
        assert_eq!(rounded_div(1, 0), 0);
        let third = Ratio {
            numerator: 1,
            denominator: 3,
        };
        assert_eq!(third.basis_points(), Some(3_333));
        assert_eq!(third.percent().as_deref(), Some("33.33"));
        let two_thirds = Ratio {
            numerator: 2,
            denominator: 3,
        };
        assert_eq!(two_thirds.basis_points(), Some(6_667));
        assert_eq!(Ratio::default().basis_points(), None);
    }

    #[test]
    fn periods_are_calendar_days() {
        let now = "2026-11-29T15:30:00Z".parse::<DateTime<Utc>>().unwrap();
        let day = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        assert_eq!(Period::today(now).from, day("2026-11-29T00:00:00Z"));
        assert_eq!(Period::last_days(7, now).from, day("2026-11-23T00:00:00Z"));
        assert_eq!(Period::last_days(30, now).from, day("2026-10-31T00:00:00Z"));
        assert!(Period::custom(day("2026-11-02T00:00:00Z"), day("2026-11-01T00:00:00Z")).is_err());
    }
}
