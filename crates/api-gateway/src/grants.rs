//! `POST /api/admin/grants` (admin token, `Idempotency-Key` required): an admin gives a
//! customer days without a payment (issue 23).
//!
//! The request is parsed once into a [`GrantRequest`] (a known customer's Telegram id, 1 to
//! [`MAX_DAYS`] days, a reason, the admin's Telegram id); anything else is refused and
//! changes nothing. One transaction writes the `manual_grants` row (kind `admin`, the
//! caller's key in its UNIQUE `idempotency_key`), its `system_logs` row (`grant.created`, with
//! the admin's id) and its `grant.created` outbox event; marzban-sync then writes the ledger
//! entry and provisions the panel as for a paid grant. A repeat of the key gets the stored
//! grant back (200, `Idempotent-Replayed: true`) and grants nothing; the same key with another
//! request is 422.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use domain::IdempotencyKey;
use domain::entities::{manual_grants, system_logs, users};
use messaging::events::GrantCreated;
use messaging::{Envelope, Event};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::body::json_request;
use crate::error::ApiError;
use crate::idempotency;
use crate::state::AppState;

/// The most days one grant may give (ten years): more is a typo, not a gift.
pub const MAX_DAYS: i64 = 3650;
/// The longest reason kept.
pub const MAX_REASON_CHARS: usize = 500;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::resource("/api/admin/grants", "POST").route(web::post().to(create)));
}

/// The request body as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    telegram_id: i64,
    days: i64,
    reason: String,
    admin_telegram_id: i64,
}

/// A checked grant request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    pub telegram_id: i64,
    pub days: i32,
    pub reason: String,
    pub admin_telegram_id: i64,
}

impl GrantRequest {
    /// Checks what the body says; the error names what is wrong.
    pub fn parse(
        telegram_id: i64,
        days: i64,
        reason: &str,
        admin_telegram_id: i64,
    ) -> Result<Self, ApiError> {
        if telegram_id <= 0 || admin_telegram_id <= 0 {
            return Err(ApiError::BadRequest(
                "telegram_id and admin_telegram_id must be positive Telegram ids".into(),
            ));
        }
        let days = i32::try_from(days)
            .ok()
            .filter(|d| (1..=MAX_DAYS).contains(&i64::from(*d)))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("days must be 1 to {MAX_DAYS}, not {days}"))
            })?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(ApiError::BadRequest("a reason is required".into()));
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(ApiError::BadRequest(format!(
                "the reason is longer than {MAX_REASON_CHARS} characters"
            )));
        }
        Ok(Self {
            telegram_id,
            days,
            reason: reason.to_owned(),
            admin_telegram_id,
        })
    }

    fn matches(&self, row: &manual_grants::Model, telegram_id: i64) -> bool {
        telegram_id == self.telegram_id
            && row.days == self.days
            && row.reason == self.reason
            && row.granted_by == Some(self.admin_telegram_id)
    }
}

/// A grant as the API shows it.
#[derive(Debug, Serialize)]
pub struct GrantView {
    pub grant_id: i64,
    pub telegram_id: i64,
    pub kind: String,
    pub days: i32,
    pub reason: String,
    pub granted_by: Option<i64>,
    pub created_at: DateTime<Utc>,
}

impl GrantView {
    fn new(row: manual_grants::Model, telegram_id: i64) -> Self {
        Self {
            grant_id: row.id,
            telegram_id,
            kind: row.kind,
            days: row.days,
            reason: row.reason,
            granted_by: row.granted_by,
            created_at: row.created_at,
        }
    }
}

async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body: GrantBody = json_request(&req, payload, &state, &[Role::Admin]).await?;
    let key = idempotency::key_from(&req)?
        .ok_or_else(|| ApiError::BadRequest("the Idempotency-Key header is required".into()))?;
    let request = GrantRequest::parse(
        body.telegram_id,
        body.days,
        &body.reason,
        body.admin_telegram_id,
    )?;
    grant(&state, &key, &request).await
}

/// The stored grant of `key`, answered as a replay; 422 when it was another request.
async fn replay(
    state: &AppState,
    stored_key: &str,
    request: &GrantRequest,
) -> Result<Option<HttpResponse>, ApiError> {
    let Some((row, Some(user))) = manual_grants::Entity::find()
        .filter(manual_grants::Column::IdempotencyKey.eq(stored_key))
        .find_also_related(users::Entity)
        .one(&state.db)
        .await?
    else {
        return Ok(None);
    };
    if !request.matches(&row, user.telegram_id) {
        return Err(ApiError::IdempotencyMismatch);
    }
    let answer = HttpResponse::Ok().json(GrantView::new(row, user.telegram_id));
    Ok(Some(idempotency::replayed(answer)))
}

/// Records the grant, its log row and its event in one transaction (see the module docs).
pub async fn grant(
    state: &AppState,
    key: &IdempotencyKey,
    request: &GrantRequest,
) -> Result<HttpResponse, ApiError> {
    let stored_key = idempotency::stored_key(key);
    if let Some(answer) = replay(state, &stored_key, request).await? {
        return Ok(answer);
    }
    let user = users::Entity::find()
        .filter(users::Column::TelegramId.eq(request.telegram_id))
        .one(&state.db)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no customer with Telegram id {}: they have not opened a checkout yet",
                request.telegram_id
            ))
        })?;
    let now = Utc::now();
    let txn = service_kit::db::begin_write(&state.db).await?;
    let inserted = manual_grants::ActiveModel {
        id: NotSet,
        idempotency_key: Set(stored_key.clone()),
        user_id: Set(user.id),
        kind: Set(manual_grants::KIND_ADMIN.to_owned()),
        days: Set(request.days),
        data_limit_bytes: Set(None),
        reason: Set(request.reason.clone()),
        granted_by: Set(Some(request.admin_telegram_id)),
        created_at: Set(now),
    }
    .insert(&txn)
    .await;
    let row = match inserted {
        Ok(row) => row,
        Err(error) if idempotency::key_taken(&error) => {
            // A concurrent repeat of the key won: answer with its grant.
            txn.rollback().await?;
            return replay(state, &stored_key, request)
                .await?
                .ok_or_else(|| ApiError::internal(error));
        }
        Err(error) => return Err(error.into()),
    };
    let message = format!(
        "{} days granted by admin {}: {}",
        row.days, request.admin_telegram_id, row.reason
    );
    let who = serde_json::json!({ "admin_telegram_id": request.admin_telegram_id });
    announce(&txn, &user, &row, now, message, who).await?;
    txn.commit().await?;
    tracing::info!(
        grant_id = row.id,
        telegram_id = user.telegram_id,
        days = row.days,
        admin = request.admin_telegram_id,
        "days granted by an admin"
    );
    state.outbox_nudge.notify_one();
    let location = format!("/api/admin/grants/{}", row.id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(GrantView::new(row, user.telegram_id)))
}

/// Writes the `grant.created` outbox event and the `system_logs` row of `row`, a manual grant
/// of `user` just inserted in `txn`; `message` and the fields of `who` say who gave it and why.
pub(crate) async fn announce(
    txn: &sea_orm::DatabaseTransaction,
    user: &users::Model,
    row: &manual_grants::Model,
    now: DateTime<Utc>,
    message: String,
    who: serde_json::Value,
) -> Result<(), ApiError> {
    let event = GrantCreated {
        grant_id: row.id,
        user_id: user.id,
        telegram_id: user.telegram_id,
        kind: row.kind.clone(),
        days: row.days,
    };
    let envelope = Envelope::new(&event, uuid::Uuid::now_v7(), None)?.with_occurred_at(now);
    messaging::outbox::enqueue(txn, &envelope).await?;
    let mut metadata = serde_json::json!({
        "event_id": envelope.event_id,
        "grant_id": row.id,
        "telegram_id": user.telegram_id,
        "days": row.days,
        "kind": row.kind,
        "reason": row.reason,
        "data_limit_bytes": row.data_limit_bytes,
    });
    if let (Some(all), serde_json::Value::Object(more)) = (metadata.as_object_mut(), who) {
        all.extend(more);
    }
    system_logs::ActiveModel {
        id: NotSet,
        event_type: Set(GrantCreated::EVENT_TYPE.to_owned()),
        user_id: Set(Some(user.id)),
        payment_id: Set(None),
        provider: Set(None),
        amount_minor: Set(None),
        currency: Set(None),
        status: Set(Some(row.kind.clone())),
        message: Set(Some(message)),
        metadata: Set(Some(metadata)),
        created_at: Set(now),
    }
    .insert(txn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_are_refused() {
        assert!(GrantRequest::parse(1, 7, "gift", 2).is_ok());
        assert_eq!(
            GrantRequest::parse(1, 7, "  gift ", 2).unwrap().reason,
            "gift"
        );
        for days in [0, -3, MAX_DAYS + 1, i64::MAX] {
            assert!(GrantRequest::parse(1, days, "gift", 2).is_err(), "{days}");
        }
        assert!(GrantRequest::parse(1, MAX_DAYS, "gift", 2).is_ok());
        assert!(GrantRequest::parse(1, 7, " \n", 2).is_err());
        assert!(GrantRequest::parse(1, 7, &"x".repeat(MAX_REASON_CHARS + 1), 2).is_err());
        assert!(GrantRequest::parse(0, 7, "gift", 2).is_err());
        assert!(GrantRequest::parse(1, 7, "gift", -2).is_err());
    }
}
