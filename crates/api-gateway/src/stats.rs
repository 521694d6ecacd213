//! `GET /api/stats`: the payment analytics of a period, in total and per provider (admin
//! token). The figures and their rules are `domain::analytics`; this is the HTTP face.
//!
//! Parameters (all optional; without any, all time):
//! - `period` — `today`, `7d`, `30d` or `all` (calendar days, UTC, today included);
//! - `from`, `to` — RFC 3339 instants or `YYYY-MM-DD` dates, `from` inclusive, `to`
//!   exclusive; a date `to` includes that whole day. Not together with `period`;
//! - `provider` — `yookassa`, `telegram` or `crypto`.

use std::collections::BTreeMap;
use std::str::FromStr;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Days, NaiveDate, Utc};
use domain::Money;
use domain::analytics::{self, Figures, Period, Report};
use payment_core::ProviderId;
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::error::ApiError;
use crate::payments::MoneyView;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::resource("/api/stats", "GET").route(web::get().to(stats)));
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    period: Option<String>,
    from: Option<String>,
    to: Option<String>,
    provider: Option<String>,
}

/// The validated request: what to report on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsRequest {
    pub period: Period,
    pub provider: Option<ProviderId>,
}

impl StatsRequest {
    /// Parses a query string, relative periods counted from `now`.
    pub fn parse(query: &str, now: DateTime<Utc>) -> Result<Self, ApiError> {
        let raw = web::Query::<StatsQuery>::from_query(query)
            .map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?
            .into_inner();
        let provider = raw
            .provider
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| {
                ProviderId::from_str(p).map_err(|_| {
                    ApiError::BadRequest(format!(
                        "invalid provider {p:?}; expected a provider's name such as yookassa"
                    ))
                })
            })
            .transpose()?;
        let bound = |name: &str, value: &Option<String>, end: bool| {
            value
                .as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| instant(v, end).ok_or_else(|| ApiError::BadRequest(format!("{name} must be an RFC 3339 instant (2026-11-29T12:00:00Z) or a date (2026-11-29), got {v:?}"))))
                .transpose()
        };
        let from = bound("from", &raw.from, false)?;
        let to = bound("to", &raw.to, true)?;
        let period = match raw.period.as_deref().filter(|p| !p.is_empty()) {
            Some(_) if from.is_some() || to.is_some() => {
                return Err(ApiError::BadRequest(
                    "give either period or from/to, not both".into(),
                ));
            }
            Some("today") => Period::today(now),
            Some("7d") => Period::last_days(7, now),
            Some("30d") => Period::last_days(30, now),
            Some("all") => Period::ALL_TIME,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "unknown period {other:?}; expected today, 7d, 30d or all"
                )));
            }
            None => Period::custom(from, to).map_err(|e| ApiError::BadRequest(e.to_string()))?,
        };
        Ok(Self { period, provider })
    }
}

/// An RFC 3339 instant, or a date: its midnight, or the next one when it ends a range.
fn instant(value: &str, end: bool) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Some(at.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    let day = if end {
        day.checked_add_days(Days::new(1))?
    } else {
        day
    };
    Some(analytics::midnight(day))
}

async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req, &[Role::Admin])?;
    let request = StatsRequest::parse(req.query_string(), Utc::now())?;
    let report = analytics::report(
        &state.db,
        request.period,
        request.provider.as_ref().map(ProviderId::as_str),
    )
    .await?;
    Ok(HttpResponse::Ok().json(ReportView::from(report)))
}

// ---- views ---------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct ReportView {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    provider: Option<String>,
    total: FiguresView,
    providers: BTreeMap<String, FiguresView>,
    retention: RetentionView,
}

/// Automatic renewals and churn (`domain::analytics::Retention`).
#[derive(Debug, Serialize)]
struct RetentionView {
    autopay: AutopayView,
    churn: ChurnView,
}

#[derive(Debug, Serialize)]
struct AutopayView {
    charges: u64,
    succeeded: u64,
    /// `succeeded ÷ (succeeded + declined)`.
    success: RatioView,
    /// Declined charges by the provider's reason.
    declines: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct ChurnView {
    subscribers: u64,
    churned: u64,
    /// `churned ÷ subscribers`.
    rate: RatioView,
}

/// An exact ratio with its rounded forms (null when the denominator is 0).
#[derive(Debug, Serialize)]
struct RatioView {
    numerator: u64,
    denominator: u64,
    basis_points: Option<u64>,
    percent: Option<String>,
}

impl From<analytics::Ratio> for RatioView {
    fn from(ratio: analytics::Ratio) -> Self {
        Self {
            numerator: ratio.numerator,
            denominator: ratio.denominator,
            basis_points: ratio.basis_points(),
            percent: ratio.percent(),
        }
    }
}

impl From<Report> for ReportView {
    fn from(report: Report) -> Self {
        Self {
            from: report.period.from,
            to: report.period.to,
            provider: report.provider,
            retention: RetentionView {
                autopay: AutopayView {
                    charges: report.retention.autopay_charges,
                    succeeded: report.retention.autopay_succeeded,
                    success: report.retention.autopay_success.into(),
                    declines: report.retention.autopay_declines,
                },
                churn: ChurnView {
                    subscribers: report.retention.subscribers,
                    churned: report.retention.churned,
                    rate: report.retention.churn.into(),
                },
            },
            total: report.total.into(),
            providers: report
                .providers
                .into_iter()
                .map(|(name, figures)| (name, figures.into()))
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
struct FiguresView {
    counts: analytics::Counts,
    conversion: ConversionView,
    revenue: Vec<RevenueView>,
    processing_ms: Option<TimingView>,
    new_paying_users: u64,
    renewals: u64,
}

#[derive(Debug, Serialize)]
struct ConversionView {
    succeeded: u64,
    created: u64,
    /// `succeeded ÷ created` in 1/10 000, rounded half up; null when nothing was created.
    basis_points: Option<u64>,
    /// The same as a percentage string with two decimals.
    percent: Option<String>,
}

#[derive(Debug, Serialize)]
struct RevenueView {
    currency: &'static str,
    payments: u64,
    gross: MoneyView,
    refunded: MoneyView,
    net: MoneyView,
    average_check: MoneyView,
}

#[derive(Debug, Serialize)]
struct TimingView {
    count: u64,
    p50: i64,
    p95: i64,
}

impl From<Figures> for FiguresView {
    fn from(f: Figures) -> Self {
        Self {
            counts: f.counts,
            conversion: ConversionView {
                succeeded: f.conversion.numerator,
                created: f.conversion.denominator,
                basis_points: f.conversion.basis_points(),
                percent: f.conversion.percent(),
            },
            revenue: f
                .revenue
                .into_iter()
                .map(|r| RevenueView {
                    currency: r.currency.code(),
                    payments: r.payments,
                    gross: Money::new(r.gross_minor, r.currency).into(),
                    refunded: Money::new(r.refunded_minor, r.currency).into(),
                    net: Money::new(r.net_minor, r.currency).into(),
                    average_check: Money::new(r.average_check_minor, r.currency).into(),
                })
                .collect(),
            processing_ms: f.processing.map(|t| TimingView {
                count: t.count,
                p50: t.p50_ms,
                p95: t.p95_ms,
            }),
            new_paying_users: f.new_paying_users,
            renewals: f.renewals,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-11-29T15:00:00Z".parse().unwrap()
    }

    fn at(s: &str) -> Option<DateTime<Utc>> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn parses_periods_ranges_and_providers() {
        let parse = |q: &str| StatsRequest::parse(q, now()).unwrap();
        assert_eq!(parse("").period, Period::ALL_TIME);
        assert_eq!(
            parse("period=today").period.from,
            at("2026-11-29T00:00:00Z")
        );
        assert_eq!(parse("period=7d").period.from, at("2026-11-23T00:00:00Z"));
        let range = parse("from=2026-11-01&to=2026-11-30&provider=yookassa");
        assert_eq!(range.period.from, at("2026-11-01T00:00:00Z"));
        assert_eq!(range.period.to, at("2026-12-01T00:00:00Z"));
        assert_eq!(range.provider, Some(payment_core::providers::yookassa::ID));
        let instants = parse("from=2026-11-01T10:00:00%2B03:00&to=2026-11-02T00:00:00Z");
        assert_eq!(instants.period.from, at("2026-11-01T07:00:00Z"));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for query in [
            "period=week",
            "period=7d&from=2026-11-01",
            "from=yesterday",
            "from=2026-11-02&to=2026-11-01",
            "from=2026-11-02T00:00:00Z&to=2026-11-02T00:00:00Z",
            "provider=Pay%20Pal",
            "limit=10",
        ] {
            let error = StatsRequest::parse(query, now()).unwrap_err();
            assert!(
                matches!(error, ApiError::BadRequest(_)),
                "{query}: {error:?}"
            );
        }
    }
}
