//! Refunding a payment: record the intent, ask the provider, record the answer — one refund
//! at a time per payment.

use actix_web::HttpResponse;
use chrono::{SubsecRound, Utc};
use domain::entities::{payments, refunds};
use domain::money::Money;
use domain::{IdempotencyKey, PaymentId, PaymentStatus, RefundStatus};
use payment_core::{
    PaymentRef, ProviderId, ProviderRefund, RefundNotice, RefundRequest, RefundRoute,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    QueryFilter, QuerySelect,
};
use serde::{Deserialize, Serialize};
use service_kit::inbox::{self, Notice};
use uuid::Uuid;

use super::provider_error;
use super::views::refund_response;
use crate::error::ApiError;
use crate::idempotency::{self, Fingerprint};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RefundBody {
    /// Minor units; absent = everything not yet refunded.
    #[serde(default)]
    amount_minor: Option<i64>,
    #[serde(default)]
    reason: Option<String>,
    /// Who asked, for the record (e.g. an admin's Telegram id).
    #[serde(default)]
    requested_by: Option<String>,
}

/// Record the intent, call the provider, record the result — one refund at a time per
/// payment.
///
/// 1. A short transaction re-reads the payment (row-locked on PostgreSQL; SQLite's write
///    transaction is exclusive), answers 409 naming a refund still in progress, checks what is
///    left to refund and stores the refund as `pending`. The partial unique index
///    `uq_refunds_one_pending` (one pending refund per payment) backs this up.
/// 2. The provider is asked outside any transaction (our refund id is its idempotence key).
/// 3. A short transaction records the answer with the notice for the worker.
///
/// Fiat Telegram payments have no Bot API refund: step 2 is skipped, the refund is recorded
/// as made outside Telegram, and the answer tells the admin to return the money in the
/// payment provider's cabinet; the worker revokes the access as for any refund.
pub(super) async fn refund(
    state: &AppState,
    id: PaymentId,
    key: Option<IdempotencyKey>,
    body: &RefundBody,
) -> Result<HttpResponse, ApiError> {
    let payment = payments::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no payment {id}")))?;
    if let Some(key) = &key
        && let Some(existing) = refund_by_key(state, key).await?
    {
        // The refund row is the key's record: the repeat must ask for what it asked.
        idempotency::check(
            &RefundPrint::of_row(&existing)?,
            &RefundPrint::of_repeat(payment.id, body, &existing)?,
        )?;
        if existing.status != RefundStatus::Pending || existing.provider_refund_id.is_some() {
            return Ok(idempotency::replayed(refund_response(&existing)));
        }
        // The first attempt's result is unknown (timeout, 5xx): ask again with the same
        // refund id, hence the same provider idempotence key — the provider answers with
        // the refund it made, or makes it now, never a second one.
        let (provider_id, provider_payment_id) = refund_target(&payment)?;
        // The same request as the first time: what the other refunds had taken then. (The
        // payment may since show this refund applied, if the provider made it and told us.)
        let others = refunds_sum(&state.db, payment.id, &RECORDED, Some(existing.id)).await?;
        let original = payments::Model {
            status: if others == 0 {
                PaymentStatus::Succeeded
            } else {
                PaymentStatus::PartiallyRefunded
            },
            ..payment
        };
        return settle_refund(
            state,
            &original,
            existing,
            provider_id,
            provider_payment_id,
            others,
        )
        .await
        .map(idempotency::replayed);
    }
    let (provider_id, provider_payment_id) = refund_target(&payment)?;
    let route = state
        .payments
        .provider(provider_id.clone())
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?
        .refund_route(&PaymentRef {
            payment_id: payment.id,
            provider_payment_id: provider_payment_id.clone(),
            amount: payment.amount(),
        });
    let outside = route == RefundRoute::OutsideProvider;
    let (payment, record, already) =
        record_refund_intent(state, payment.id, body, key.as_ref(), outside).await?;
    if outside {
        return settle_outside(state, &payment, record, &provider_payment_id).await;
    }
    settle_refund(
        state,
        &payment,
        record,
        provider_id,
        provider_payment_id,
        already,
    )
    .await
}

/// A refund stored under the caller's key (`api:<key>`), or a key-less refund repeated with
/// its own `refund-<id>` key.
async fn refund_by_key(
    state: &AppState,
    key: &IdempotencyKey,
) -> Result<Option<refunds::Model>, ApiError> {
    let mut keys = vec![idempotency::stored_key(key)];
    if key.as_str().starts_with("refund-") {
        keys.push(key.as_str().to_owned());
    }
    Ok(refunds::Entity::find()
        .filter(refunds::Column::IdempotencyKey.is_in(keys))
        .one(&state.db)
        .await?)
}

/// What a refund request asks, as its row keeps it: the fingerprint a repeat of its key must
/// match. A request without an amount asks for what was left when the first one came, so it
/// matches whatever amount that was.
#[derive(Serialize)]
struct RefundPrint<'a> {
    payment_id: PaymentId,
    amount_minor: i64,
    reason: Option<&'a str>,
    requested_by: std::borrow::Cow<'a, str>,
}

impl<'a> RefundPrint<'a> {
    fn of_row(row: &'a refunds::Model) -> Result<Fingerprint, ApiError> {
        Fingerprint::of(&RefundPrint {
            payment_id: row.payment_id,
            amount_minor: row.amount_minor,
            reason: row.reason.as_deref(),
            requested_by: row.requested_by.as_str().into(),
        })
    }

    fn of_repeat(
        payment_id: PaymentId,
        body: &'a RefundBody,
        first: &refunds::Model,
    ) -> Result<Fingerprint, ApiError> {
        Fingerprint::of(&RefundPrint {
            payment_id,
            amount_minor: body.amount_minor.unwrap_or(first.amount_minor),
            reason: body.reason.as_deref(),
            requested_by: requested_by(body).into(),
        })
    }
}

/// Who asked, as the refund row records it.
fn requested_by(body: &RefundBody) -> String {
    body.requested_by
        .as_deref()
        .map_or_else(|| "api".to_owned(), |who| format!("admin:{who}"))
}

/// The 409 for a payment whose refund `pending` is still in progress.
fn refund_in_progress(pending: &refunds::Model) -> ApiError {
    ApiError::RefundInProgress {
        refund_id: pending.id,
        key: idempotency::caller_key(&pending.idempotency_key).to_owned(),
    }
}

async fn pending_refund<C: ConnectionTrait>(
    conn: &C,
    payment_id: PaymentId,
) -> Result<Option<refunds::Model>, DbErr> {
    refunds::Entity::find()
        .filter(refunds::Column::PaymentId.eq(payment_id))
        .filter(refunds::Column::Status.eq(RefundStatus::Pending))
        .one(conn)
        .await
}

/// Transaction 1 of a refund: stores it as `pending` unless another refund of the payment is
/// in progress (409 naming it), after checking what is left to refund. Returns the payment as
/// read in the transaction, the refund and what other refunds had taken.
async fn record_refund_intent(
    state: &AppState,
    payment_id: PaymentId,
    body: &RefundBody,
    key: Option<&IdempotencyKey>,
    outside: bool,
) -> Result<(payments::Model, refunds::Model, i64), ApiError> {
    let txn = service_kit::db::begin_write(&state.db).await?;
    // Refunds of one payment queue here on PostgreSQL for the few milliseconds of this
    // transaction; SQLite's write transaction is exclusive already (the lock is not emitted).
    let payment = payments::Entity::find_by_id(payment_id)
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no payment {payment_id}")))?;
    if let Some(pending) = pending_refund(&txn, payment.id).await? {
        return Err(refund_in_progress(&pending));
    }
    if !matches!(
        payment.status,
        PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
    ) {
        return Err(ApiError::Conflict(format!(
            "only succeeded payments can be refunded; this one is {}",
            payment.status
        )));
    }
    // Refunds not yet applied by the worker count too, so two refunds cannot exceed the
    // payment.
    let already = payment
        .refunded_minor
        .max(refunds_sum(&txn, payment.id, &RECORDED, None).await?);
    let amount_minor = body.amount_minor.unwrap_or(payment.amount_minor - already);
    if amount_minor <= 0 {
        return Err(ApiError::Unprocessable(
            "nothing to refund: the amount must be positive".into(),
        ));
    }
    if outside && (already != 0 || amount_minor != payment.amount_minor) {
        return Err(ApiError::Unprocessable(
            "Telegram card payments are refunded in full only (the access is revoked)".into(),
        ));
    }
    let refund_id = Uuid::now_v7();
    let now = Utc::now().trunc_subsecs(6);
    let record = refunds::Model {
        id: refund_id,
        payment_id: payment.id,
        provider: payment.provider.clone(),
        provider_refund_id: None,
        amount_minor,
        currency: payment.currency,
        status: RefundStatus::Pending,
        reason: body.reason.clone(),
        requested_by: requested_by(body),
        idempotency_key: key.map_or_else(|| format!("refund-{refund_id}"), idempotency::stored_key),
        failure_reason: None,
        created_at: now,
        updated_at: now,
        completed_at: None,
        outside_provider: outside,
    };
    // Recorded before the call: a crash afterwards leaves a pending refund to settle, not a
    // refund nobody knows about.
    let active: refunds::ActiveModel = record.clone().into();
    let inserted = refunds::Entity::insert(active.reset_all())
        .exec_without_returning(&txn)
        .await;
    let committed = match inserted {
        Ok(_) => txn.commit().await,
        Err(error) => Err(error),
    };
    if let Err(error) = committed {
        if !idempotency::key_taken(&error) {
            return Err(ApiError::internal(error));
        }
        // The last guard: another refund of the payment (partial unique index), or the same
        // key, got in first.
        return Err(match pending_refund(&state.db, payment.id).await? {
            Some(pending) => refund_in_progress(&pending),
            None => ApiError::InFlight,
        });
    }
    Ok((payment, record, already))
}

/// The provider that took `payment` and its id there: what a refund is asked of.
fn refund_target(payment: &payments::Model) -> Result<(ProviderId, String), ApiError> {
    let provider_id = payment.provider.clone();
    let provider_payment_id = payment
        .provider_payment_id
        .clone()
        .ok_or_else(|| ApiError::Conflict("the payment has no provider payment yet".into()))?;
    Ok((provider_id, provider_payment_id))
}

/// The refunds of `payment_id` in one of `statuses`, in minor units; `except` leaves out the
/// refund being settled.
async fn refunds_sum<C: ConnectionTrait>(
    conn: &C,
    payment_id: PaymentId,
    statuses: &[RefundStatus],
    except: Option<Uuid>,
) -> Result<i64, ApiError> {
    let mut query = refunds::Entity::find()
        .filter(refunds::Column::PaymentId.eq(payment_id))
        .filter(refunds::Column::Status.is_in(statuses.iter().copied()));
    if let Some(except) = except {
        query = query.filter(refunds::Column::Id.ne(except));
    }
    Ok(query.all(conn).await?.iter().map(|r| r.amount_minor).sum())
}

/// What counts against a new refund: the refunds recorded as pending or succeeded.
const RECORDED: [RefundStatus; 2] = [RefundStatus::Pending, RefundStatus::Succeeded];

/// Asks the provider for the refund `record` (already stored as pending) and records its
/// answer; a result the provider leaves unknown keeps the refund pending, to be asked again
/// by repeating the request with the same `Idempotency-Key`.
async fn settle_refund(
    state: &AppState,
    payment: &payments::Model,
    record: refunds::Model,
    provider_id: ProviderId,
    provider_payment_id: String,
    already: i64,
) -> Result<HttpResponse, ApiError> {
    let refund_id = record.id;
    let id = payment.id;
    let amount = Money::new(record.amount_minor, record.currency);
    let result = state
        .payments
        .refund(
            provider_id.clone(),
            &RefundRequest {
                refund_id,
                payment: PaymentRef {
                    payment_id: id,
                    provider_payment_id: provider_payment_id.clone(),
                    amount: payment.amount(),
                },
                payment_status: payment.status,
                already_refunded: Money::new(already, payment.currency),
                amount,
                reason: record.reason.clone(),
            },
        )
        .await;
    match result {
        Ok(done) => {
            let updated =
                record_refund(state, record, &provider_payment_id, provider_id, &done).await?;
            tracing::info!(%refund_id, payment_id = %id, status = %updated.status, "refund accepted by the provider");
            Ok(refund_response(&updated))
        }
        Err(error) if error.is_result_unknown() => {
            tracing::warn!(%refund_id, payment_id = %id, %error, "refund result unknown; stays pending");
            Err(ApiError::ProviderUnavailable(format!(
                "{error}; refund {refund_id} stays pending: repeat the request with the same \
                 Idempotency-Key ({}) to settle it",
                idempotency::caller_key(&record.idempotency_key)
            )))
        }
        Err(error) => {
            let mut failed: refunds::ActiveModel = record.into();
            failed.status = Set(RefundStatus::Failed);
            failed.failure_reason = Set(Some(error.to_string()));
            failed.updated_at = Set(Utc::now());
            failed.update(&state.db).await?;
            Err(provider_error(error))
        }
    }
}

/// A fiat Telegram refund: nobody is asked (there is no Bot API refund for fiat). The refund
/// is recorded as succeeded outside Telegram, with a `refunded_payment` notice so the worker
/// moves the payment and `payment.refunded` revokes the access; the answer tells the admin to
/// return the money in the payment provider's cabinet.
async fn settle_outside(
    state: &AppState,
    payment: &payments::Model,
    record: refunds::Model,
    provider_payment_id: &str,
) -> Result<HttpResponse, ApiError> {
    let done = state
        .payments
        .provider(payment.provider.clone())
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?
        .refund_made_outside(payment, record.id, record.amount())
        .await
        .map_err(super::provider_error)?;
    let refund_id = record.id;
    let updated = record_refund(
        state,
        record,
        provider_payment_id,
        payment.provider.clone(),
        &done,
    )
    .await?;
    tracing::info!(%refund_id, payment_id = %payment.id, provider = %payment.provider, "refund recorded as made outside the provider");
    Ok(refund_response(&updated))
}

/// Stores the provider's answer and tells the worker, in one transaction: the refund row is
/// updated and a `provider.notification.<provider>` notice (inbox + outbox) asks the worker to
/// re-fetch and apply it — `payment.refunded` is the worker's to emit.
async fn record_refund(
    state: &AppState,
    record: refunds::Model,
    provider_payment_id: &str,
    provider_id: ProviderId,
    done: &ProviderRefund,
) -> Result<refunds::Model, ApiError> {
    let now = Utc::now();
    // The provider words the notice and its own parser names it, so its real notification of
    // this refund gets the same key; a provider that parses no notices of ours gets a key of
    // our own.
    let provider = state.payments.provider(provider_id.clone()).ok();
    let txn = service_kit::db::begin_write(&state.db).await?;
    let mut active: refunds::ActiveModel = record.clone().into();
    active.provider_refund_id = Set(Some(done.provider_refund_id.clone()));
    active.status = Set(done.status);
    active.updated_at = Set(now);
    if done.status.is_terminal() {
        active.completed_at = Set(Some(now));
    }
    let updated = active.update(&txn).await?;
    let notice = RefundNotice {
        provider_payment_id,
        refund: done,
        total_refunded: Money::new(
            refunds_sum(&txn, record.payment_id, &[RefundStatus::Succeeded], None).await?,
            done.amount.currency(),
        ),
        at: now,
    };
    let body = match &provider {
        Some(provider) => provider.refund_notice(&notice),
        None => payment_core::provider::generic_refund_notice(&notice),
    };
    let dedupe_key = match &provider {
        Some(provider) => provider
            .process_webhook(body.as_bytes())
            .await
            .map(|parsed| parsed.dedupe_key)
            .ok(),
        None => None,
    }
    .unwrap_or_else(|| format!("refund:{}", done.provider_refund_id));
    inbox::store_in(
        &txn,
        &Notice {
            provider: provider_id,
            dedupe_key,
            source: "refund_api",
            peer: None,
            body,
            provider_payment_id: Some(provider_payment_id.to_owned()),
            claimed_payment_id: Some(record.payment_id),
        },
    )
    .await?;
    txn.commit().await?;
    state.outbox_nudge.notify_one();
    Ok(updated)
}
