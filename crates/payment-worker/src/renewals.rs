//! Charges a provider makes on its own — a Telegram Stars subscription's monthly charge — as
//! payments of their own.
//!
//! The notice of such a charge names the payment it renews (Telegram: the first payment's
//! invoice payload) and carries a new charge id. The worker records it as a new payment row,
//! a renewal of the same user and tariff with the charge's amount, whose `provider_payment_id`
//! is the charge id and whose idempotency key is derived from it: both are UNIQUE, so a charge
//! becomes one payment however often its notice arrives. That payment is then looked up and
//! completed like every other, so the ledger, the panel and analytics see an ordinary paid
//! payment (a renewal: not its user's first).
//!
//! The row is drafted before the look-up (outside any transaction) and inserted in the
//! runner's transaction together with its `payment.created` event; a copy of the notice that
//! lost the race to insert finds the winner's row and is retried with it. A charge that
//! renews a payment we do not know is left unapplied, its inbox row marked
//! `unknown_subscription` and logged for an admin: the money is in the stored notice.

use chrono::Utc;
use domain::entities::{payments, provider_notifications, tariffs, users};
use domain::{PaymentId, PaymentStatus};
use messaging::events::{PaymentCreated, PaymentSnapshot};
use messaging::{Envelope, Event};
use payment_core::{PaymentService, RecurringCharge};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel};

use crate::transition;

/// The inbox outcome of a recurring charge for a payment we do not know.
pub const UNKNOWN_SUBSCRIPTION: &str = "unknown_subscription";

/// The recurring charge `row` reports, if its provider reads one in it.
pub(crate) fn charge_of(
    providers: &PaymentService,
    row: &provider_notifications::Model,
) -> Option<RecurringCharge> {
    providers
        .provider_named(&row.provider)?
        .recurring_charge(row.body.as_bytes())
}

/// The idempotency key of the payment a charge becomes.
fn idempotency_key(row: &provider_notifications::Model, charge: &RecurringCharge) -> String {
    format!("renewal:{}:{}", row.provider, charge.provider_payment_id)
}

/// The charge's payment if it is recorded, else a draft of it (not stored) renewing the
/// payment it names; `None` when we do not know that payment.
pub(crate) async fn find_or_draft(
    db: &impl ConnectionTrait,
    row: &provider_notifications::Model,
    charge: &RecurringCharge,
) -> Result<Option<payments::Model>, DbErr> {
    if let Some(recorded) = recorded(db, row, charge).await? {
        return Ok(Some(recorded));
    }
    let Some(renewed) =
        payments::find_notified(db, &row.provider, Some(&charge.renews), None).await?
    else {
        return Ok(None);
    };
    let now = Utc::now();
    Ok(Some(payments::Model {
        id: PaymentId::new(),
        user_id: renewed.user_id,
        tariff_id: renewed.tariff_id,
        provider: renewed.provider.clone(),
        amount_minor: charge.amount.minor(),
        currency: charge.amount.currency(),
        status: PaymentStatus::Pending,
        provider_payment_id: Some(charge.provider_payment_id.clone()),
        idempotency_key: idempotency_key(row, charge),
        confirmation_url: None,
        failure_reason: None,
        metadata: serde_json::json!({"renews": renewed.id, "recurring_charge": true}),
        created_at: now,
        updated_at: now,
        completed_at: None,
        expires_at: None,
        refunded_minor: 0,
        flagged: false,
        flag_reason: None,
        next_check_at: None,
        check_attempts: 0,
    }))
}

/// The charge's payment as recorded (by the provider's id of the charge).
async fn recorded(
    db: &impl ConnectionTrait,
    row: &provider_notifications::Model,
    charge: &RecurringCharge,
) -> Result<Option<payments::Model>, DbErr> {
    payments::find_notified(db, &row.provider, Some(&charge.provider_payment_id), None).await
}

/// In the runner's transaction: the charge's payment, inserting `draft` (with its
/// `payment.created` event and log row) when none is recorded yet. `None` when the charge
/// renews a payment we do not know.
pub(crate) async fn find_or_insert(
    tx: &impl ConnectionTrait,
    row: &provider_notifications::Model,
    charge: &RecurringCharge,
    draft: Option<payments::Model>,
) -> Result<Option<payments::Model>, RecordError> {
    if let Some(recorded) = recorded(tx, row, charge).await? {
        return Ok(Some(recorded));
    }
    let Some(draft) = draft.filter(|d| d.idempotency_key == idempotency_key(row, charge)) else {
        return Ok(find_or_draft(tx, row, charge).await?);
    };
    let user = users::Entity::find_by_id(draft.user_id).one(tx).await?;
    let tariff = tariffs::Entity::find_by_id(draft.tariff_id).one(tx).await?;
    let model = draft.into_active_model().insert(tx).await?;
    let event = PaymentCreated {
        payment: PaymentSnapshot {
            payment_id: model.id,
            user_id: model.user_id,
            telegram_id: user.map_or(0, |u| u.telegram_id),
            tariff_code: tariff.map(|t| t.code).unwrap_or_default(),
            provider: model.provider.clone(),
            amount_minor: model.amount_minor,
            currency: model.currency.code().to_owned(),
        },
    };
    let envelope = Envelope::new(&event, model.id, None)?;
    messaging::outbox::enqueue(tx, &envelope).await?;
    transition::log(
        tx,
        PaymentCreated::EVENT_TYPE,
        &model,
        None,
        format!("recurring charge {} recorded", charge.provider_payment_id),
        serde_json::json!({"event_id": envelope.event_id, "notification_id": row.id,
            "provider_payment_id": charge.provider_payment_id, "renews": model.metadata["renews"]}),
    )
    .await?;
    tracing::info!(payment_id = %model.id, charge = %charge.provider_payment_id, renews = %charge.renews, "recurring charge recorded as a renewal payment");
    Ok(Some(model))
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error(transparent)]
    Db(#[from] DbErr),
    #[error(transparent)]
    Event(#[from] messaging::EnvelopeError),
    #[error(transparent)]
    Outbox(#[from] messaging::outbox::OutboxError),
}
