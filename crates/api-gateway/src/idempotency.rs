//! `Idempotency-Key`: one scheme for every endpoint that takes one (creating a payment,
//! refunding one).
//!
//! - **The key** is the caller's header, stored namespaced (`api:<key>`) in the UNIQUE
//!   `idempotency_key` column of the row the request makes (`payments` or `refunds`), so keys
//!   of other payment paths (bot, crypto) never collide with the API's. The row itself is the
//!   claim: of two requests that insert the same key, the database lets one in and the other
//!   sees [`key_taken`].
//! - **The fingerprint** ([`Fingerprint`]) is the SHA-256 of the request as the endpoint
//!   parsed it, serialised again, so two bodies that differ only in whitespace or key order
//!   are the same request. A repeat of the key with another fingerprint is refused with 422
//!   `idempotency_key_reused` ([`check`]).
//! - **The answer** of a repeat is the stored one, marked [`REPLAYED`]: a payment keeps its
//!   first answer byte for byte in a [`Record`] (in `payments.metadata`); a refund's row is its
//!   record, and the answer is that row as it is now.
//! - **Requests in flight**: a payment whose creation has not finished is held by the request
//!   working on it for [`LEASE`] ([`Lease`], kept in the record and taken under a row lock), so
//!   a repeat of the key meanwhile — on any replica — gets 409 `request_in_flight` instead of
//!   asking the provider a second time. The holder gives the row back when it stops without an
//!   answer (a 504 the caller is told to repeat, a dropped request); a holder that died is
//!   outlived by the lease. A refund needs no lease: its row is stored `pending` before the
//!   provider is asked, and the provider's idempotence (our refund id) makes a concurrent
//!   repeat harmless.

use domain::PaymentId;
use std::time::Duration;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use domain::IdempotencyKey;
use domain::entities::payments;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, DatabaseConnection, DbErr, EntityTrait, QuerySelect, SqlErr,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;

/// Header of the caller's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set (`true`) on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// Where a payment's [`Record`] lives in `payments.metadata`.
pub const META_IDEMPOTENCY: &str = "gateway_idempotency";
/// How long a request holds an unfinished payment before a repeat of its key may take it
/// over: longer than a provider call with its retries, short enough that a crashed holder
/// does not block the key for long.
pub const LEASE: Duration = Duration::from_secs(30);

/// The caller's key, if the request has the header; 400 when it is malformed.
pub fn key_from(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    req.headers()
        .get(IDEMPOTENCY_KEY)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| IdempotencyKey::parse(v).ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "Idempotency-Key must be 1 to 64 characters of A-Z a-z 0-9 _ - : .".into(),
                    )
                })
        })
        .transpose()
}

/// The key as stored: namespaced, so keys of other payment paths never collide with the API's.
pub fn stored_key(key: &IdempotencyKey) -> String {
    format!("api:{key}")
}

/// The key a caller repeats for a row stored under `stored`: the API key it sent (or, for a
/// row made without one, the row's own key).
pub fn caller_key(stored: &str) -> &str {
    stored.strip_prefix("api:").unwrap_or(stored)
}

/// Whether an insert (or its commit) failed because the key is stored already: another
/// request claimed it first.
pub fn key_taken(error: &DbErr) -> bool {
    matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// The SHA-256 of a request, hex: what a repeat of the key must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of `request` serialised as JSON (fields in declaration order).
    pub fn of(request: &impl Serialize) -> Result<Self, ApiError> {
        let bytes = serde_json::to_vec(request).map_err(ApiError::internal)?;
        Ok(Self(hex::encode(Sha256::digest(bytes))))
    }
}

/// 422 `idempotency_key_reused` unless the repeat is the request stored under the key.
pub fn check(stored: &Fingerprint, repeat: &Fingerprint) -> Result<(), ApiError> {
    if stored == repeat {
        Ok(())
    } else {
        Err(ApiError::IdempotencyMismatch)
    }
}

/// Marks an answer as a replay of the key's stored one.
pub fn replayed(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(
        header::HeaderName::from_static(REPLAYED),
        header::HeaderValue::from_static("true"),
    );
    response
}

/// What is kept with a payment's key (`payments.metadata.gateway_idempotency`): the request's
/// fingerprint, its answer once there is one, and meanwhile the lease of the request working
/// on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub request_hash: Fingerprint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The answer's JSON body, byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held_by: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held_until: Option<DateTime<Utc>>,
}

impl Record {
    /// A record with no answer yet.
    pub fn open(request_hash: Fingerprint) -> Self {
        Self {
            request_hash,
            status: None,
            response: None,
            held_by: None,
            held_until: None,
        }
    }

    /// A record holding the answer (`status`, JSON `body`).
    pub fn answered(request_hash: Fingerprint, status: StatusCode, body: String) -> Self {
        Self {
            status: Some(status.as_u16()),
            response: Some(body),
            ..Self::open(request_hash)
        }
    }

    /// The record kept in a payment row's metadata, if it has one (a row made by another
    /// payment path has none).
    pub fn of_payment(row: &payments::Model) -> Option<Self> {
        row.metadata
            .get(META_IDEMPOTENCY)
            .and_then(|value| serde_json::from_value(value.clone()).ok())
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The stored answer, replayed (`location` on a success), or `None` before there is one.
    pub fn replay(&self, location: impl FnOnce() -> String) -> Option<HttpResponse> {
        let body = self.response.clone()?;
        let status = self
            .status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::CREATED);
        let mut response = HttpResponse::build(status);
        response.content_type("application/json");
        if status.is_success() {
            response.insert_header((header::LOCATION, location()));
        }
        Some(replayed(response.body(body)))
    }

    fn held_by_other(&self, token: Uuid, now: DateTime<Utc>) -> bool {
        self.held_by.is_some_and(|holder| holder != token)
            && self.held_until.is_some_and(|until| until > now)
    }
}

fn lease_until(now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(LEASE).unwrap_or(chrono::Duration::MAX)
}

/// An unfinished payment held by this request (see the module docs). Give it back with
/// [`Lease::release`] when stopping without an answer, or [`Lease::done`] once the answer is
/// stored; a lease dropped otherwise (the request was cancelled) is given back in the
/// background.
#[derive(Debug)]
pub struct Lease {
    db: DatabaseConnection,
    payment_id: PaymentId,
    token: Uuid,
    armed: bool,
}

/// What [`Lease::take`] found.
#[derive(Debug)]
pub enum Taken {
    Held(Lease),
    /// Another request holds the payment: 409 `request_in_flight`.
    Busy,
    /// The payment is no longer unfinished (its answer was stored meanwhile).
    Finished,
}

impl Lease {
    /// A new lease for a row about to be inserted: its record carries [`Lease::stamp`].
    pub fn fresh(db: &DatabaseConnection, payment_id: PaymentId) -> Self {
        Self {
            db: db.clone(),
            payment_id,
            token: Uuid::now_v7(),
            armed: true,
        }
    }

    /// `record` held by this lease from `now`.
    pub fn stamp(&self, mut record: Record, now: DateTime<Utc>) -> Record {
        record.held_by = Some(self.token);
        record.held_until = Some(lease_until(now));
        record
    }

    /// Takes the unfinished payment `payment_id`, unless another request holds it. The row is
    /// locked for the few milliseconds of the check (`SELECT … FOR UPDATE`; SQLite's write
    /// transaction is exclusive), so of two requests one takes it and the other is refused.
    pub async fn take(db: &DatabaseConnection, payment_id: PaymentId) -> Result<Taken, ApiError> {
        let lease = Self::fresh(db, payment_id);
        let now = Utc::now();
        let txn = service_kit::db::begin_write(db).await?;
        let Some(row) = payments::Entity::find_by_id(payment_id)
            .lock_exclusive()
            .one(&txn)
            .await?
        else {
            return Ok(Taken::Finished);
        };
        let record = match Record::of_payment(&row) {
            Some(record) if row.is_half_made() && record.response.is_none() => record,
            _ => return Ok(Taken::Finished),
        };
        if record.held_by_other(lease.token, now) {
            return Ok(Taken::Busy);
        }
        let mut metadata = row.metadata.clone();
        metadata[META_IDEMPOTENCY] = lease.stamp(record, now).to_json();
        let mut active: payments::ActiveModel = row.into();
        active.metadata = Set(metadata);
        active.update(&txn).await?;
        txn.commit().await?;
        Ok(Taken::Held(lease))
    }

    /// The answer is stored (it replaced the record): nothing to give back.
    pub fn done(mut self) {
        self.armed = false;
    }

    /// Gives the payment back so a repeat of the key may continue it at once.
    pub async fn release(mut self) {
        self.armed = false;
        if let Err(error) = release(&self.db, self.payment_id, self.token).await {
            tracing::warn!(payment_id = %self.payment_id, %error, "could not give back the payment's lease; it lapses");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (db, payment_id, token) = (self.db.clone(), self.payment_id, self.token);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = release(&db, payment_id, token).await {
                    tracing::warn!(%payment_id, %error, "could not give back the payment's lease; it lapses");
                }
            });
        }
    }
}

/// Clears the lease `token` from the payment's record, if it still holds it.
async fn release(db: &DatabaseConnection, payment_id: PaymentId, token: Uuid) -> Result<(), DbErr> {
    let txn = service_kit::db::begin_write(db).await?;
    let Some(row) = payments::Entity::find_by_id(payment_id)
        .lock_exclusive()
        .one(&txn)
        .await?
    else {
        return Ok(());
    };
    let Some(mut record) = Record::of_payment(&row).filter(|r| r.held_by == Some(token)) else {
        return Ok(());
    };
    record.held_by = None;
    record.held_until = None;
    let mut metadata = row.metadata.clone();
    metadata[META_IDEMPOTENCY] = record.to_json();
    let mut active: payments::ActiveModel = row.into();
    active.metadata = Set(metadata);
    active.update(&txn).await?;
    txn.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Body<'a> {
        a: i64,
        b: &'a str,
    }

    #[test]
    fn the_fingerprint_is_of_the_parsed_request() {
        let one = Fingerprint::of(&Body { a: 1, b: "x" }).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(r#"{ "b":"x",  "a":1 }"#).unwrap();
        let again = Fingerprint::of(&Body {
            a: parsed["a"].as_i64().unwrap(),
            b: parsed["b"].as_str().unwrap(),
        })
        .unwrap();
        assert_eq!(one, again);
        assert!(check(&one, &again).is_ok());
        let other = Fingerprint::of(&Body { a: 2, b: "x" }).unwrap();
        assert!(matches!(
            check(&one, &other),
            Err(ApiError::IdempotencyMismatch)
        ));
    }

    #[test]
    fn a_record_without_an_answer_replays_nothing() {
        let hash = Fingerprint::of(&1).unwrap();
        assert!(Record::open(hash.clone()).replay(String::new).is_none());
        let answered = Record::answered(hash, StatusCode::BAD_GATEWAY, "{}".into());
        let response = answered
            .replay(|| unreachable!("no Location on an error"))
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers().get(REPLAYED).unwrap(), "true");
    }

    #[test]
    fn a_record_keeps_the_stored_shape() {
        // Rows stored before the record had a lease read the same.
        let stored = serde_json::json!({"request_hash": "ab", "status": 201, "response": "{}"});
        let record: Record = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(record.to_json(), stored);
        let now = Utc::now();
        let lease = Uuid::now_v7();
        let held = Record {
            held_by: Some(lease),
            held_until: Some(lease_until(now)),
            ..record
        };
        assert!(held.held_by_other(Uuid::now_v7(), now));
        assert!(!held.held_by_other(lease, now));
        assert!(!held.held_by_other(Uuid::now_v7(), lease_until(now)));
    }
}
