//! The analytics figures over a known set of payments: several providers and currencies,
//! refunds (full and partial), failures of each kind, a pending payment, first payments and
//! renewals, and known processing times. Every figure is asserted exactly, on both backends.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use domain::analytics::{
    self, Counts, DailyRevenue, Figures, Period, Ratio, Revenue, Series, Timing,
};
use domain::entities::payments;
use domain::{Currency, IdempotencyKey, PaymentId, PaymentStatus};
use sea_orm::{ActiveModelTrait, DatabaseConnection, Set};

use crate::helpers::{tariff, user};
use crate::on_both_backends;

use Currency::{Rub, Usdt, Xtr};
use PaymentStatus::*;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// "Now" of the relative periods: 2026-11-29 12:00 UTC.
fn now() -> DateTime<Utc> {
    at("2026-11-29T12:00:00Z")
}

struct Seed {
    user: i64,
    provider: &'static str,
    status: PaymentStatus,
    amount: i64,
    currency: Currency,
    refunded: i64,
    created: &'static str,
    /// Milliseconds from creation to success.
    took_ms: Option<i64>,
}

/// Users A, B, C, D (telegram ids 101–104) and their twelve payments, P1…P12.
async fn seed(conn: &DatabaseConnection) {
    let tariff = tariff(conn, "m1").await;
    let mut users = Vec::new();
    for telegram_id in 101..=104 {
        users.push(user(conn, telegram_id).await.id);
    }
    let [a, b, c, d] = [users[0], users[1], users[2], users[3]];
    #[rustfmt::skip]
    let seeds = [
        // P1: A's first payment, long ago (outside the 30 days).
        Seed { user: a, provider: "yookassa", status: Succeeded, amount: 19_900, currency: Rub, refunded: 0, created: "2026-10-01T10:00:00Z", took_ms: Some(2_000) },
        // P2: A renews.
        Seed { user: a, provider: "yookassa", status: Succeeded, amount: 19_900, currency: Rub, refunded: 0, created: "2026-11-20T10:00:00Z", took_ms: Some(3_000) },
        // P3: B's first payment, refunded in full.
        Seed { user: b, provider: "yookassa", status: Refunded, amount: 49_900, currency: Rub, refunded: 49_900, created: "2026-11-28T09:00:00Z", took_ms: Some(1_000) },
        // P4: B again, in Stars.
        Seed { user: b, provider: "telegram", status: Succeeded, amount: 150, currency: Xtr, refunded: 0, created: "2026-11-28T12:00:00Z", took_ms: Some(500) },
        // P5: C's first payment, partly refunded.
        Seed { user: c, provider: "telegram", status: PartiallyRefunded, amount: 400, currency: Xtr, refunded: 100, created: "2026-11-29T08:00:00Z", took_ms: Some(1_500) },
        // P6: C again, in USDT, slowly.
        Seed { user: c, provider: "crypto", status: Succeeded, amount: 2_500_000, currency: Usdt, refunded: 0, created: "2026-11-29T09:00:00Z", took_ms: Some(60_000) },
        // P7–P10: D's pending, failed, canceled and expired payments.
        Seed { user: d, provider: "crypto", status: Pending, amount: 2_500_001, currency: Usdt, refunded: 0, created: "2026-11-29T10:00:00Z", took_ms: None },
        Seed { user: d, provider: "yookassa", status: Failed, amount: 19_900, currency: Rub, refunded: 0, created: "2026-11-29T10:30:00Z", took_ms: None },
        Seed { user: d, provider: "yookassa", status: Canceled, amount: 19_900, currency: Rub, refunded: 0, created: "2026-11-25T10:00:00Z", took_ms: None },
        Seed { user: d, provider: "telegram", status: Expired, amount: 150, currency: Xtr, refunded: 0, created: "2026-11-22T10:00:00Z", took_ms: None },
        // P11: A renews for an odd amount.
        Seed { user: a, provider: "yookassa", status: Succeeded, amount: 10_001, currency: Rub, refunded: 0, created: "2026-11-29T11:00:00Z", took_ms: Some(4_000) },
        // P12: D's first payment, by card through Telegram.
        Seed { user: d, provider: "telegram", status: Succeeded, amount: 29_900, currency: Rub, refunded: 0, created: "2026-11-29T11:30:00Z", took_ms: Some(2_500) },
    ];
    for seed in seeds {
        let created = at(seed.created);
        let completed = seed.took_ms.map(|ms| created + Duration::milliseconds(ms));
        payments::ActiveModel {
            id: Set(PaymentId::new()),
            user_id: Set(seed.user),
            tariff_id: Set(tariff.id),
            provider: Set(seed.provider.parse().expect("a provider name")),
            amount_minor: Set(seed.amount),
            currency: Set(seed.currency),
            status: Set(seed.status),
            provider_payment_id: Set(None),
            idempotency_key: Set(IdempotencyKey::random().into_inner()),
            confirmation_url: Set(None),
            failure_reason: Set(None),
            metadata: Set(serde_json::json!({})),
            created_at: Set(created),
            updated_at: Set(completed.unwrap_or(created)),
            completed_at: Set(completed),
            expires_at: Set(None),
            refunded_minor: Set(seed.refunded),
            flagged: Set(false),
            flag_reason: Set(None),
            next_check_at: Set(None),
            check_attempts: Set(0),
        }
        .insert(conn)
        .await
        .unwrap();
    }
}

fn counts(created: u64, succeeded: u64, failed: u64, refunded: u64, pending: u64) -> Counts {
    Counts {
        created,
        succeeded,
        failed,
        refunded,
        pending,
    }
}

/// `(currency, payments, gross, refunded, average check)`; net is derived.
fn revenue(items: &[(Currency, u64, i64, i64, i64)]) -> Vec<Revenue> {
    items
        .iter()
        .map(
            |&(currency, payments, gross_minor, refunded_minor, average_check_minor)| Revenue {
                currency,
                payments,
                gross_minor,
                refunded_minor,
                net_minor: gross_minor - refunded_minor,
                average_check_minor,
            },
        )
        .collect()
}

fn figures(
    counts: Counts,
    revenue: Vec<Revenue>,
    timing: Option<(u64, i64, i64)>,
    new_paying_users: u64,
    renewals: u64,
) -> Figures {
    Figures {
        counts,
        conversion: Ratio {
            numerator: counts.succeeded,
            denominator: counts.created,
        },
        revenue,
        processing: timing.map(|(count, p50_ms, p95_ms)| Timing {
            count,
            p50_ms,
            p95_ms,
        }),
        new_paying_users,
        renewals,
    }
}

fn usdt() -> (Currency, u64, i64, i64, i64) {
    (Usdt, 1, 2_500_000, 0, 2_500_000)
}

async fn all_time_by_provider(conn: &DatabaseConnection) {
    seed(conn).await;
    let report = analytics::report(conn, Period::ALL_TIME, None)
        .await
        .unwrap();
    assert_eq!(
        report.total,
        figures(
            counts(12, 8, 3, 2, 1),
            revenue(&[
                // 19 900 + 19 900 + 49 900 + 10 001 + 29 900 = 129 601; ÷ 5 = 25 920.2
                (Rub, 5, 129_601, 49_900, 25_920),
                (Xtr, 2, 550, 100, 275),
                usdt(),
            ]),
            // 500 1000 1500 2000 2500 3000 4000 60000: ranks 4 and 8
            Some((8, 2_000, 60_000)),
            4,
            4,
        )
    );
    assert_eq!(report.total.conversion.basis_points(), Some(6_667));
    assert_eq!(
        report.providers.keys().collect::<Vec<_>>(),
        ["crypto", "telegram", "yookassa"]
    );
    assert_eq!(
        report.providers["yookassa"],
        figures(
            counts(6, 4, 2, 1, 0),
            // 99 701 ÷ 4 = 24 925.25
            revenue(&[(Rub, 4, 99_701, 49_900, 24_925)]),
            Some((4, 2_000, 4_000)),
            2,
            2,
        )
    );
    assert_eq!(
        report.providers["telegram"],
        figures(
            counts(4, 3, 1, 1, 0),
            revenue(&[(Rub, 1, 29_900, 0, 29_900), (Xtr, 2, 550, 100, 275)]),
            Some((3, 1_500, 2_500)),
            2,
            1,
        )
    );
    assert_eq!(
        report.providers["telegram"].conversion.basis_points(),
        Some(7_500)
    );
    assert_eq!(
        report.providers["crypto"],
        figures(
            counts(2, 1, 0, 0, 1),
            revenue(&[usdt()]),
            Some((1, 60_000, 60_000)),
            0,
            1
        )
    );
    assert_eq!(
        report.providers["crypto"].conversion.basis_points(),
        Some(5_000)
    );
}

async fn relative_periods(conn: &DatabaseConnection) {
    seed(conn).await;
    let today = analytics::report(conn, Period::today(now()), None)
        .await
        .unwrap();
    assert_eq!(
        today.total,
        figures(
            counts(6, 4, 1, 1, 1),
            // 39 901 ÷ 2 = 19 950.5, rounded half up
            revenue(&[(Rub, 2, 39_901, 0, 19_951), (Xtr, 1, 400, 100, 400), usdt()]),
            Some((4, 2_500, 60_000)),
            2,
            2,
        )
    );
    let week = analytics::report(conn, Period::last_days(7, now()), None)
        .await
        .unwrap();
    assert_eq!(
        week.total,
        figures(
            counts(9, 6, 2, 2, 1),
            // 89 801 ÷ 3 = 29 933.67
            revenue(&[
                (Rub, 3, 89_801, 49_900, 29_934),
                (Xtr, 2, 550, 100, 275),
                usdt()
            ]),
            Some((6, 1_500, 60_000)),
            3,
            3,
        )
    );
    let month = analytics::report(conn, Period::last_days(30, now()), None)
        .await
        .unwrap();
    assert_eq!(
        month.total,
        figures(
            counts(11, 7, 3, 2, 1),
            // 109 701 ÷ 4 = 27 425.25
            revenue(&[
                (Rub, 4, 109_701, 49_900, 27_425),
                (Xtr, 2, 550, 100, 275),
                usdt()
            ]),
            Some((7, 2_500, 60_000)),
            3,
            4,
        )
    );
    // 7 ÷ 11 = 63.636 %
    assert_eq!(month.total.conversion.basis_points(), Some(6_364));
}

async fn custom_range_and_provider(conn: &DatabaseConnection) {
    seed(conn).await;
    let period = Period::custom(
        Some(at("2026-11-28T00:00:00Z")),
        Some(at("2026-11-29T00:00:00Z")),
    )
    .unwrap();
    let report = analytics::report(conn, period, Some("yookassa"))
        .await
        .unwrap();
    let expected = figures(
        counts(1, 1, 0, 1, 0),
        revenue(&[(Rub, 1, 49_900, 49_900, 49_900)]),
        Some((1, 1_000, 1_000)),
        1,
        0,
    );
    assert_eq!(report.total, expected);
    assert_eq!(report.provider.as_deref(), Some("yookassa"));
    assert_eq!(report.providers.len(), 1);
    assert_eq!(report.providers["yookassa"], expected);
    assert_eq!(report.total.conversion.basis_points(), Some(10_000));

    // Nothing at all: zeros, no ratio, no timing.
    let empty = Period::custom(
        Some(at("2020-01-01T00:00:00Z")),
        Some(at("2020-01-02T00:00:00Z")),
    )
    .unwrap();
    let report = analytics::report(conn, empty, None).await.unwrap();
    assert_eq!(report.total, Figures::default());
    assert_eq!(report.total.conversion.basis_points(), None);
    assert!(report.providers.is_empty());
}

async fn daily_series(conn: &DatabaseConnection) {
    seed(conn).await;
    let series = analytics::daily_revenue(conn, Period::last_days(30, now()))
        .await
        .unwrap();
    let day = |d: u32, net_minor: i64| DailyRevenue {
        day: NaiveDate::from_ymd_opt(2026, 11, d).unwrap(),
        net_minor,
    };
    let s = |provider: &str, currency, days| Series {
        provider: provider.to_owned(),
        currency,
        days,
    };
    assert_eq!(
        series,
        vec![
            s("crypto", Usdt, vec![day(29, 2_500_000)]),
            s("telegram", Rub, vec![day(29, 29_900)]),
            s("telegram", Xtr, vec![day(28, 150), day(29, 300)]),
            s(
                "yookassa",
                Rub,
                vec![day(20, 19_900), day(28, 0), day(29, 10_001)]
            ),
        ]
    );
}

/// Automatic renewals and churn over November 2026, as of 2026-11-29 12:00: four autopay
/// charges (two paid, a decline for insufficient funds and one for an expired card), a
/// one-off payment that is not a charge, and four subscriptions: one renewed (still running),
/// one that ended on the 10th and was not renewed (churned), one that ended on the 25th (less
/// than 7 days ago: not churn yet) and one that ended in October (no access in November).
async fn autopay_and_churn(conn: &DatabaseConnection) {
    use domain::entities::subscriptions;
    let tariff = tariff(conn, "m1").await;
    let mut ids = Vec::new();
    for telegram_id in 201..=204 {
        ids.push(user(conn, telegram_id).await.id);
    }
    let charge =
        |key: &str, status: PaymentStatus, reason: Option<&str>, user: i64| payments::ActiveModel {
            id: Set(PaymentId::new()),
            user_id: Set(user),
            tariff_id: Set(tariff.id),
            provider: Set("yookassa".parse().unwrap()),
            amount_minor: Set(19_900),
            currency: Set(Rub),
            status: Set(status),
            provider_payment_id: Set(None),
            idempotency_key: Set(key.to_owned()),
            confirmation_url: Set(None),
            failure_reason: Set(reason.map(str::to_owned)),
            metadata: Set(serde_json::json!({})),
            created_at: Set(at("2026-11-20T10:00:00Z")),
            updated_at: Set(at("2026-11-20T10:00:00Z")),
            completed_at: Set(None),
            expires_at: Set(None),
            refunded_minor: Set(0),
            flagged: Set(false),
            flag_reason: Set(None),
            next_check_at: Set(None),
            check_attempts: Set(0),
        };
    for (key, status, reason, user) in [
        ("autopay:1:100", Succeeded, None, ids[0]),
        ("autopay:2:100", Succeeded, None, ids[1]),
        ("autopay:3:100", Failed, Some("insufficient_funds"), ids[2]),
        ("autopay:4:100", Failed, Some("card_expired"), ids[3]),
        ("one-off-press", Failed, Some("insufficient_funds"), ids[3]),
    ] {
        charge(key, status, reason, user)
            .insert(conn)
            .await
            .unwrap();
    }
    for (user, expires) in [
        (ids[0], "2026-12-20T00:00:00Z"),
        (ids[1], "2026-11-10T00:00:00Z"),
        (ids[2], "2026-11-25T00:00:00Z"),
        (ids[3], "2026-10-10T00:00:00Z"),
    ] {
        subscriptions::ActiveModel {
            user_id: Set(user),
            marzban_username: Set(format!("tg_{user}")),
            expires_at: Set(at(expires)),
            data_limit_bytes: Set(None),
            status: Set("active".into()),
            subscription_url: Set(None),
            synced_at: Set(None),
            sync_error: Set(None),
            created_at: Set(at("2026-09-01T00:00:00Z")),
            updated_at: Set(at("2026-09-01T00:00:00Z")),
            ..Default::default()
        }
        .insert(conn)
        .await
        .unwrap();
    }
    let november = Period::custom(
        Some(at("2026-11-01T00:00:00Z")),
        Some(at("2026-12-01T00:00:00Z")),
    )
    .unwrap();
    let r = analytics::retention(conn, november, now()).await.unwrap();
    assert_eq!(r.autopay_charges, 4, "the one-off payment is not a charge");
    assert_eq!(r.autopay_succeeded, 2);
    assert_eq!(
        r.autopay_success,
        Ratio {
            numerator: 2,
            denominator: 4
        }
    );
    assert_eq!(
        r.autopay_declines,
        [
            ("card_expired".to_owned(), 1),
            ("insufficient_funds".to_owned(), 1)
        ]
        .into()
    );
    assert_eq!(
        r.subscribers, 3,
        "the October one had no access in November"
    );
    assert_eq!(r.churned, 1, "ended on the 10th, not renewed within 7 days");
    assert_eq!(r.churn.percent().as_deref(), Some("33.33"));
}

on_both_backends!(
    all_time_by_provider,
    relative_periods,
    custom_range_and_provider,
    daily_series,
    autopay_and_churn
);
