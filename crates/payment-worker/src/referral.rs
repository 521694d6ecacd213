//! The referral bonus (issue 23), written by [`crate::transition::apply`] in the transaction
//! that moves a payment to `succeeded`.
//!
//! When the payer was referred ([`domain::referral`]) and this is their first paid payment,
//! [`domain::referral::claim`] marks the referral rewarded by this payment — a conditional
//! `UPDATE`, so at most once per referred user — and this writes the referrer's
//! `manual_grants` row of kind `referral` (the days promised when the referral was recorded)
//! under the UNIQUE key `referral:<payment id>`, its `grant.created` event and its
//! `system_logs` row. marzban-sync then puts the days in the referrer's ledger and on the
//! panel like any grant and announces `grant.activated`, from which the bot tells both users.
//!
//! The transition itself happens once per payment (its own conditional `UPDATE`), so a
//! duplicated notification or a second worker finds nothing to do; if this fails, the whole
//! transition rolls back and is retried with it.

use chrono::Utc;
use domain::PaymentStatus;
use domain::entities::{manual_grants, payments, system_logs, users};
use domain::referral;
use messaging::events::GrantCreated;
use messaging::{Envelope, Event};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    TryInsertResult,
};
use serde_json::json;

use crate::transition::ApplyError;

/// Rewards the referrer of `payment`'s payer, if this success earns it (see the module docs).
pub(crate) async fn reward<C: ConnectionTrait>(
    tx: &C,
    payment: &payments::Model,
) -> Result<(), ApplyError> {
    if payment.status != PaymentStatus::Succeeded {
        return Ok(());
    }
    let Some(referral) = referral::claim(tx, payment.user_id, payment.id).await? else {
        return Ok(());
    };
    let referrer = users::Entity::find_by_id(referral.referrer_user_id)
        .one(tx)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("user {}", referral.referrer_user_id)))?;
    let now = Utc::now();
    let key = referral::key(payment.id);
    let inserted = manual_grants::Entity::insert(manual_grants::ActiveModel {
        id: NotSet,
        idempotency_key: Set(key.clone()),
        user_id: Set(referrer.id),
        kind: Set(referral::KIND.to_owned()),
        days: Set(referral.bonus_days),
        data_limit_bytes: Set(None),
        reason: Set(format!(
            "referral: first payment {} of user {}",
            payment.id, payment.user_id
        )),
        granted_by: Set(None),
        created_at: Set(now),
    })
    .on_conflict_do_nothing_on([manual_grants::Column::IdempotencyKey])
    .exec_without_returning(tx)
    .await?;
    let grant = manual_grants::Entity::find()
        .filter(manual_grants::Column::IdempotencyKey.eq(key.as_str()))
        .one(tx)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(key.clone()))?;
    referral::set_reward_grant(tx, referral.referred_user_id, grant.id).await?;
    if !matches!(inserted, TryInsertResult::Inserted(1)) {
        // Only possible if the claim were undone by hand: the grant stands, announced once.
        tracing::warn!(payment_id = %payment.id, grant_id = grant.id, "referral bonus existed already");
        return Ok(());
    }

    let event = GrantCreated {
        grant_id: grant.id,
        user_id: referrer.id,
        telegram_id: referrer.telegram_id,
        kind: grant.kind.clone(),
        days: grant.days,
    };
    let envelope = Envelope::new(&event, payment.id, None)?.with_occurred_at(now);
    messaging::outbox::enqueue(tx, &envelope).await?;
    system_logs::ActiveModel {
        id: NotSet,
        event_type: Set(GrantCreated::EVENT_TYPE.to_owned()),
        user_id: Set(Some(referrer.id)),
        payment_id: Set(Some(payment.id)),
        provider: Set(None),
        amount_minor: Set(None),
        currency: Set(None),
        status: Set(Some(grant.kind.clone())),
        message: Set(Some(format!(
            "{} referral days for the first payment of user {}",
            grant.days, payment.user_id
        ))),
        metadata: Set(Some(json!({
            "event_id": envelope.event_id,
            "grant_id": grant.id,
            "telegram_id": referrer.telegram_id,
            "days": grant.days,
            "kind": grant.kind,
            "reason": grant.reason,
            "referred_user_id": referral.referred_user_id,
        }))),
        created_at: Set(now),
    }
    .insert(tx)
    .await?;
    tracing::info!(
        payment_id = %payment.id,
        grant_id = grant.id,
        referrer = referrer.telegram_id,
        days = grant.days,
        "referral bonus granted"
    );
    Ok(())
}
