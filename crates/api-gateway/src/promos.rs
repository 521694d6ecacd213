//! Promo codes for admins (issue 23; admin token): `POST /api/admin/promos` makes a code,
//! `GET /api/admin/promos` lists every code with its numbers (uses, payments, conversion,
//! revenue), `GET /api/admin/promos/{code}` shows one, `POST
//! /api/admin/promos/{code}/disable` turns one off. How codes are checked at checkout and
//! counted is [`domain::promo`].
//!
//! A body is checked whole before anything is written ([`PromoBody::check`]): a bad one is
//! 400 with what is wrong, a code that exists is 409 — a code is made once, never replaced.

use std::str::FromStr;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use domain::entities::{promo_codes, system_logs, tariffs};
use domain::money::{Currency, Money};
use domain::promo::{self, CodeStats, Kind};
use payment_core::ProviderId;
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::body::json_request;
use crate::error::ApiError;
use crate::idempotency;
use crate::payments::MoneyView;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        crate::resource("/api/admin/promos", "GET, POST")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(crate::resource("/api/admin/promos/{code}", "GET").route(web::get().to(show)))
    .service(
        crate::resource("/api/admin/promos/{code}/disable", "POST").route(web::post().to(disable)),
    );
}

/// `POST /api/admin/promos` body. The benefit: `percent` (1–99) for `kind` percent,
/// `amount_minor` and `currency` for `fixed`, `days` for `days`; nothing else for a kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoBody {
    pub code: String,
    pub kind: Kind,
    #[serde(default)]
    pub percent: Option<i64>,
    #[serde(default)]
    pub amount_minor: Option<i64>,
    #[serde(default)]
    pub currency: Option<Currency>,
    #[serde(default)]
    pub days: Option<i64>,
    #[serde(default)]
    pub max_uses: Option<i64>,
    #[serde(default)]
    pub once_per_user: bool,
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// Exclusive.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// Tariff codes; empty: every tariff.
    #[serde(default)]
    pub tariffs: Vec<String>,
    /// Provider ids; empty: every provider.
    #[serde(default)]
    pub providers: Vec<String>,
    /// The admin's Telegram id (the bot sends it).
    #[serde(default)]
    pub created_by: Option<i64>,
}

impl PromoBody {
    /// The row this body makes at `now`, or what is wrong with it (tariffs and providers
    /// are checked against the database and the enabled providers by the caller).
    pub fn check(&self, now: DateTime<Utc>) -> Result<promo_codes::ActiveModel, ApiError> {
        let bad = |m: String| Err(ApiError::BadRequest(m));
        let code = promo::normalize(&self.code).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "code {:?}: 3 to {} of A-Z, 0-9, _ and -",
                self.code,
                promo::MAX_CODE_CHARS
            ))
        })?;
        let (value, currency) = match (
            self.kind,
            self.percent,
            self.amount_minor,
            self.currency,
            self.days,
        ) {
            (Kind::Percent, Some(p), None, None, None) if (1..=99).contains(&p) => (p, None),
            (Kind::Percent, Some(p), None, None, None) => {
                return bad(format!(
                    "percent must be 1 to 99, not {p} (a code must leave something to pay; \
                     give free days with a days code or a grant)"
                ));
            }
            (Kind::Fixed, None, Some(minor), Some(currency), None) if minor > 0 => {
                (minor, Some(currency))
            }
            (Kind::Fixed, None, Some(minor), Some(_), None) => {
                return bad(format!("amount_minor must be positive, not {minor}"));
            }
            (Kind::Days, None, None, None, Some(days)) if (1..=promo::MAX_DAYS).contains(&days) => {
                (days, None)
            }
            (Kind::Days, None, None, None, Some(days)) => {
                return bad(format!("days must be 1 to {}, not {days}", promo::MAX_DAYS));
            }
            (kind, ..) => {
                return bad(format!(
                    "a {} code takes {} and nothing else of percent, amount_minor, currency, days",
                    kind.as_str(),
                    match kind {
                        Kind::Percent => "percent",
                        Kind::Fixed => "amount_minor and currency",
                        Kind::Days => "days",
                    }
                ));
            }
        };
        let max_uses = self
            .max_uses
            .map(|n| {
                i32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                    ApiError::BadRequest(format!("max_uses must be 1 or more, not {n}"))
                })
            })
            .transpose()?;
        if let (Some(start), Some(end)) = (self.starts_at, self.ends_at)
            && end <= start
        {
            return bad("ends_at must be after starts_at".into());
        }
        if self.ends_at.is_some_and(|end| end <= now) {
            return bad("ends_at is in the past: the code would never work".into());
        }
        let tariffs = joined(&self.tariffs, "tariff")?;
        let providers = joined(&self.providers, "provider")?;
        if self.created_by.is_some_and(|id| id <= 0) {
            return bad("created_by must be a positive Telegram id".into());
        }
        Ok(promo_codes::ActiveModel {
            id: NotSet,
            code: Set(code),
            kind: Set(self.kind.as_str().to_owned()),
            value: Set(value),
            currency: Set(currency),
            max_uses: Set(max_uses),
            once_per_user: Set(self.once_per_user),
            starts_at: Set(self.starts_at),
            ends_at: Set(self.ends_at),
            tariffs: Set(tariffs),
            providers: Set(providers),
            active: Set(true),
            created_by: Set(self.created_by),
            created_at: Set(now),
            disabled_at: Set(None),
        })
    }
}

/// A list as the column keeps it: trimmed, no duplicates, no commas inside an item.
fn joined(items: &[String], what: &str) -> Result<String, ApiError> {
    let mut out: Vec<&str> = Vec::new();
    for item in items.iter().map(|s| s.trim()) {
        if item.is_empty() || item.contains(',') || item.contains(char::is_whitespace) {
            return Err(ApiError::BadRequest(format!("bad {what} {item:?}")));
        }
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(out.join(","))
}

/// A code as the API shows it, with its numbers.
#[derive(Debug, Serialize)]
pub(crate) struct PromoView {
    pub code: String,
    pub kind: String,
    /// Percent off, minor units off, or days.
    pub value: i64,
    pub amount: Option<MoneyView>,
    pub max_uses: Option<i32>,
    pub once_per_user: bool,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub tariffs: Vec<String>,
    pub providers: Vec<String>,
    pub active: bool,
    pub created_by: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub stats: StatsView,
}

/// [`CodeStats`] as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct StatsView {
    pub uses: u64,
    pub returned: u64,
    pub payments: u64,
    pub paid: u64,
    pub conversion_pct: f64,
    pub revenue: Vec<MoneyView>,
    pub discount: Vec<MoneyView>,
}

impl PromoView {
    fn new(row: promo_codes::Model, stats: Option<CodeStats>) -> Self {
        let stats = stats.unwrap_or_else(|| CodeStats {
            code: row.code.clone(),
            payments: 0,
            paid: 0,
            conversion_pct: 0.0,
            uses: 0,
            returned: 0,
            revenue: Vec::new(),
            discount: Vec::new(),
        });
        Self {
            amount: row.currency.map(|c| Money::new(row.value, c).into()),
            tariffs: promo::list(&row.tariffs)
                .into_iter()
                .map(String::from)
                .collect(),
            providers: promo::list(&row.providers)
                .into_iter()
                .map(String::from)
                .collect(),
            code: row.code,
            kind: row.kind,
            value: row.value,
            max_uses: row.max_uses,
            once_per_user: row.once_per_user,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            active: row.active,
            created_by: row.created_by,
            created_at: row.created_at,
            disabled_at: row.disabled_at,
            stats: StatsView {
                uses: stats.uses,
                returned: stats.returned,
                payments: stats.payments,
                paid: stats.paid,
                conversion_pct: stats.conversion_pct,
                revenue: stats.revenue.into_iter().map(MoneyView::from).collect(),
                discount: stats.discount.into_iter().map(MoneyView::from).collect(),
            },
        }
    }
}

async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body: PromoBody = json_request(&req, payload, &state, &[Role::Admin]).await?;
    let now = Utc::now();
    let row = body.check(now)?;
    for code in &body.tariffs {
        let known = tariffs::Entity::find()
            .filter(tariffs::Column::Code.eq(code.trim()))
            .count(&state.db)
            .await?;
        if known == 0 {
            return Err(ApiError::BadRequest(format!("no tariff {code:?}")));
        }
    }
    for provider in &body.providers {
        let enabled = ProviderId::from_str(provider.trim())
            .ok()
            .is_some_and(|id| state.payments.provider(id).is_ok());
        if !enabled {
            return Err(ApiError::BadRequest(format!(
                "no enabled provider {provider:?}"
            )));
        }
    }
    let txn = service_kit::db::begin_write(&state.db).await?;
    let row = match row.insert(&txn).await {
        Ok(row) => row,
        Err(error) if idempotency::key_taken(&error) => {
            return Err(ApiError::Conflict(format!(
                "promo code {} exists; disable it or choose another code",
                promo::normalize(&body.code).unwrap_or_default()
            )));
        }
        Err(error) => return Err(error.into()),
    };
    let message = format!("promo code {} created", row.code);
    log(&txn, &row, "promo.created", message, row.created_by).await?;
    txn.commit().await?;
    tracing::info!(code = %row.code, kind = %row.kind, value = row.value, "promo code created");
    Ok(HttpResponse::Created().json(PromoView::new(row, None)))
}

async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req, &[Role::Admin])?;
    let mut stats = promo::stats(&state.db).await?;
    let rows = promo_codes::Entity::find().all(&state.db).await?;
    let mut views: Vec<PromoView> = rows
        .into_iter()
        .map(|row| {
            let mine = stats
                .iter()
                .position(|s| s.code == row.code)
                .map(|i| stats.swap_remove(i));
            PromoView::new(row, mine)
        })
        .collect();
    views.sort_by(|a, b| a.code.cmp(&b.code));
    Ok(HttpResponse::Ok().json(serde_json::json!({ "promos": views })))
}

async fn found(state: &AppState, code: &str) -> Result<promo_codes::Model, ApiError> {
    promo::find(&state.db, code)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no promo code {code:?}")))
}

async fn show(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req, &[Role::Admin])?;
    let row = found(&state, &path).await?;
    let stats = promo::stats(&state.db)
        .await?
        .into_iter()
        .find(|s| s.code == row.code);
    Ok(HttpResponse::Ok().json(PromoView::new(row, stats)))
}

/// Turns the code off: checkouts refuse it from now on (payments made with it stay as they
/// are and still count their use when paid). Disabling a disabled code changes nothing.
async fn disable(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req, &[Role::Admin])?;
    let row = found(&state, &path).await?;
    let now = Utc::now();
    let txn = service_kit::db::begin_write(&state.db).await?;
    let done = promo_codes::Entity::update_many()
        .set(promo_codes::ActiveModel {
            active: Set(false),
            disabled_at: Set(Some(now)),
            ..Default::default()
        })
        .filter(promo_codes::Column::Id.eq(row.id))
        .filter(promo_codes::Column::Active.eq(true))
        .exec(&txn)
        .await?;
    if done.rows_affected == 1 {
        let message = format!("promo code {} disabled", row.code);
        log(&txn, &row, "promo.disabled", message, None).await?;
        tracing::info!(code = %row.code, "promo code disabled");
    }
    txn.commit().await?;
    let row = found(&state, &row.code).await?;
    let stats = promo::stats(&state.db)
        .await?
        .into_iter()
        .find(|s| s.code == row.code);
    Ok(HttpResponse::Ok().json(PromoView::new(row, stats)))
}

/// The `system_logs` row of an admin's change to a code.
async fn log(
    txn: &sea_orm::DatabaseTransaction,
    row: &promo_codes::Model,
    event_type: &str,
    message: String,
    admin: Option<i64>,
) -> Result<(), ApiError> {
    system_logs::ActiveModel {
        id: NotSet,
        event_type: Set(event_type.to_owned()),
        user_id: Set(None),
        payment_id: Set(None),
        provider: Set(None),
        amount_minor: Set(None),
        currency: Set(None),
        status: Set(None),
        message: Set(Some(message)),
        metadata: Set(Some(serde_json::json!({
            "code": row.code,
            "kind": row.kind,
            "value": row.value,
            "admin_telegram_id": admin,
        }))),
        created_at: Set(Utc::now()),
    }
    .insert(txn)
    .await?;
    Ok(())
}
