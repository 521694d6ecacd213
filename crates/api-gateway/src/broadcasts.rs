//! `POST /api/admin/broadcasts` and `GET /api/admin/broadcasts/{id}` (admin token): a message
//! to a segment of customers (issue 23), the API twin of the bot's `/broadcast`.
//!
//! `{"segment", "text", "dry_run": true}` answers the preview — how many customers the segment
//! reaches and how many of them turned news off — and writes nothing. Without `dry_run` an
//! `Idempotency-Key` is required and the broadcast is stored `confirmed` (the API caller has
//! seen the preview, or does not need one); the bot queues its copies within seconds, sends
//! them at Telegram's pace and reports to `admin_telegram_id` (if given) when done. A repeat
//! of the key answers the stored broadcast and sends nothing twice; the key with another
//! request is 422. `GET` answers the broadcast's progress. The life of a broadcast is in
//! [`domain::broadcast`].

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use domain::broadcast::{self, Segment};
use domain::entities::broadcasts;
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Role;
use crate::body::json_request;
use crate::error::ApiError;
use crate::idempotency;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::resource("/api/admin/broadcasts", "POST").route(web::post().to(create)))
        .service(crate::resource("/api/admin/broadcasts/{id}", "GET").route(web::get().to(show)));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    segment: String,
    text: String,
    #[serde(default)]
    admin_telegram_id: Option<i64>,
    /// The report's language: `ru` (default) or `en`.
    #[serde(default)]
    lang: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// A broadcast as the API shows it, with its progress.
#[derive(Debug, Serialize)]
pub struct BroadcastView {
    pub broadcast_id: i64,
    pub status: String,
    pub segment: String,
    pub text: String,
    pub created_by: Option<i64>,
    /// Copies queued (once the bot has queued them).
    pub recipients: Option<i32>,
    pub opted_out: Option<i32>,
    pub pending: u64,
    pub sent: u64,
    pub blocked: u64,
    pub failed: u64,
    pub skipped: u64,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

async fn view(state: &AppState, row: broadcasts::Model) -> Result<BroadcastView, ApiError> {
    let progress = broadcast::progress(&state.db, row.id).await?;
    Ok(BroadcastView {
        broadcast_id: row.id,
        status: row.status,
        segment: row.segment,
        text: row.text,
        created_by: row.created_by,
        recipients: row.recipients,
        opted_out: row.opted_out,
        pending: progress.pending,
        sent: progress.sent,
        blocked: progress.blocked,
        failed: progress.failed,
        skipped: progress.skipped,
        created_at: row.created_at,
        finished_at: row.finished_at,
    })
}

async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body: BroadcastBody = json_request(&req, payload, &state, &[Role::Admin]).await?;
    let segment: Segment = body.segment.parse().map_err(ApiError::BadRequest)?;
    let text = broadcast::check_text(&body.text).map_err(ApiError::BadRequest)?;
    if body.admin_telegram_id.is_some_and(|id| id <= 0) {
        return Err(ApiError::BadRequest(
            "admin_telegram_id must be a positive Telegram id".into(),
        ));
    }
    if body.lang.as_deref().is_some_and(|l| l != "ru" && l != "en") {
        return Err(ApiError::BadRequest("lang must be \"ru\" or \"en\"".into()));
    }
    let now = Utc::now();
    if body.dry_run {
        let audience = broadcast::audience(&state.db, segment, now).await?;
        return Ok(HttpResponse::Ok().json(json!({
            "segment": segment.as_str(),
            "recipients": audience.recipients.len(),
            "opted_out": audience.opted_out,
        })));
    }
    let key = idempotency::key_from(&req)?.ok_or_else(|| {
        ApiError::BadRequest("the Idempotency-Key header is required (or send dry_run)".into())
    })?;
    let stored_key = idempotency::stored_key(&key);
    let same = |row: &broadcasts::Model| {
        row.segment == segment.as_str()
            && row.text == text
            && row.created_by == body.admin_telegram_id
    };
    if let Some(row) = stored(&state, &stored_key).await? {
        if !same(&row) {
            return Err(ApiError::IdempotencyMismatch);
        }
        let answer = HttpResponse::Ok().json(view(&state, row).await?);
        return Ok(idempotency::replayed(answer));
    }
    let inserted = broadcasts::ActiveModel {
        id: NotSet,
        idempotency_key: Set(stored_key.clone()),
        segment: Set(segment.as_str().to_owned()),
        text: Set(text.to_owned()),
        status: Set(broadcasts::CONFIRMED.to_owned()),
        created_by: Set(body.admin_telegram_id),
        lang: Set(body.lang.clone()),
        created_at: Set(now),
        confirmed_at: Set(Some(now)),
        ..Default::default()
    }
    .insert(&state.db)
    .await;
    let row = match inserted {
        Ok(row) => row,
        Err(error) if idempotency::key_taken(&error) => {
            // A concurrent repeat of the key won: answer with its broadcast.
            let row = stored(&state, &stored_key)
                .await?
                .ok_or_else(|| ApiError::internal(error))?;
            if !same(&row) {
                return Err(ApiError::IdempotencyMismatch);
            }
            return Ok(idempotency::replayed(
                HttpResponse::Ok().json(view(&state, row).await?),
            ));
        }
        Err(error) => return Err(error.into()),
    };
    tracing::info!(
        broadcast = row.id,
        segment = %segment,
        admin = ?body.admin_telegram_id,
        "broadcast confirmed through the admin API"
    );
    let location = format!("/api/admin/broadcasts/{}", row.id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(view(&state, row).await?))
}

async fn stored(state: &AppState, key: &str) -> Result<Option<broadcasts::Model>, ApiError> {
    Ok(broadcasts::Entity::find()
        .filter(broadcasts::Column::IdempotencyKey.eq(key))
        .one(&state.db)
        .await?)
}

async fn show(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req, &[Role::Admin])?;
    let id: i64 = path
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{:?} is not a broadcast id", path.as_str())))?;
    let row = broadcasts::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no broadcast {id}")))?;
    Ok(HttpResponse::Ok().json(view(&state, row).await?))
}
