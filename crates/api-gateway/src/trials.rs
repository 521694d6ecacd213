//! `POST /api/trials` (service token): the bot asks for a customer's free trial (issue 23).
//!
//! Off (404) while `TRIAL_DAYS` is 0. One transaction upserts the customer, locks their
//! `users` row, refuses (409, with the reason) a customer who had a trial, has paid before or
//! has a subscription ([`domain::trial::refusal`]), and writes the trial: a `manual_grants`
//! row of kind `trial` with the trial's days and data limit under the key
//! [`domain::trial::key`] — UNIQUE, so two concurrent presses write one trial whatever the
//! lock does —, its `system_logs` row and its `grant.created` event. marzban-sync then puts it
//! in the ledger and on the panel like any grant, and announces it (`grant.activated`), which
//! the bot tells the customer.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use domain::TelegramUserId;
use domain::entities::manual_grants;
use domain::trial::{self, Refusal};
use sea_orm::ActiveModelTrait;
use sea_orm::ActiveValue::{NotSet, Set};
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::body::json_request;
use crate::error::ApiError;
use crate::grants::announce;
use crate::idempotency;
use crate::payments::{Profile, upsert_and_lock_user};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::resource("/api/trials", "POST").route(web::post().to(create)));
}

/// The request body: who presses, and what the bot knows of them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrialBody {
    telegram_id: i64,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    language_code: Option<String>,
}

/// The trial as the API shows it.
#[derive(Debug, Serialize)]
pub struct TrialView {
    pub grant_id: i64,
    pub telegram_id: i64,
    pub days: i32,
    pub data_limit_bytes: Option<i64>,
}

async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body: TrialBody = json_request(&req, payload, &state, &[Role::Service]).await?;
    let telegram_id = TelegramUserId::parse(body.telegram_id)
        .map_err(|e| ApiError::BadRequest(format!("telegram_id: {e}")))?;
    if !state.trial.enabled() {
        return Err(ApiError::NotFound(
            "the free trial is off (TRIAL_DAYS=0)".into(),
        ));
    }
    let view = start(&state, telegram_id, &body).await?;
    Ok(HttpResponse::Created().json(view))
}

/// The refusal as the API answers it: 409 whose message starts with the reason's code.
fn refused(refusal: Refusal) -> ApiError {
    let why = match refusal {
        Refusal::Taken => "the customer has had their free trial",
        Refusal::PaidBefore => "the customer has paid before",
        Refusal::Subscribed => "the customer has a subscription",
    };
    ApiError::Conflict(format!("{}: {why}", refusal.as_str()))
}

/// Records the trial (see the module docs).
async fn start(
    state: &AppState,
    telegram_id: TelegramUserId,
    body: &TrialBody,
) -> Result<TrialView, ApiError> {
    let policy = state.trial;
    let now = Utc::now();
    let txn = service_kit::db::begin_write(&state.db).await?;
    let profile = Profile {
        username: &body.username,
        first_name: &body.first_name,
        language_code: &body.language_code,
    };
    // Presses of one customer take turns on the locked row; the UNIQUE key decides in any case.
    let user = upsert_and_lock_user(&txn, telegram_id, profile).await?;
    if let Some(refusal) = trial::refusal(&txn, user.id).await? {
        return Err(refused(refusal));
    }
    let inserted = manual_grants::ActiveModel {
        id: NotSet,
        idempotency_key: Set(trial::key(user.telegram_id)),
        user_id: Set(user.id),
        kind: Set(trial::KIND.to_owned()),
        days: Set(policy.days),
        data_limit_bytes: Set(policy.data_limit_bytes),
        reason: Set("free trial".to_owned()),
        granted_by: Set(None),
        created_at: Set(now),
    }
    .insert(&txn)
    .await;
    let row = match inserted {
        Ok(row) => row,
        Err(error) if idempotency::key_taken(&error) => return Err(refused(Refusal::Taken)),
        Err(error) => return Err(error.into()),
    };
    let message = format!("{} days of free trial", row.days);
    announce(&txn, &user, &row, now, message, serde_json::json!({})).await?;
    txn.commit().await?;
    tracing::info!(
        grant_id = row.id,
        telegram_id = user.telegram_id,
        days = row.days,
        "free trial granted"
    );
    state.outbox_nudge.notify_one();
    Ok(TrialView {
        grant_id: row.id,
        telegram_id: user.telegram_id,
        days: row.days,
        data_limit_bytes: row.data_limit_bytes,
    })
}
