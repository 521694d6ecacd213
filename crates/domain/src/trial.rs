//! The free trial (issue 23): `TRIAL_DAYS` days (0 = off, the default) with
//! `TRIAL_DATA_LIMIT_GB` GiB of traffic (0 = unlimited), given once per Telegram user who has
//! never paid and has no subscription. The gateway grants it (a `manual_grants` row of kind
//! [`KIND`] whose UNIQUE `idempotency_key` is [`key`], so a second trial of one user cannot be
//! written however the requests race); the bot offers it and reads [`refusal`] to decide
//! whether to.

use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect};

use crate::entities::{manual_grants, payments, processed_messages, subscriptions};
use crate::env::{EnvVar, Vars, invalid};
use crate::status::PaymentStatus;

/// `manual_grants.kind` (and so `subscription_grants.kind`) of a free trial.
pub const KIND: &str = "trial";
/// `system_logs.event_type` of a trial marzban-sync refused (with its `grant.refused` event):
/// the panel already had the user, a customer from before this bot.
pub const REFUSED_LOG: &str = "trial.refused";
/// `grant.refused`'s `reason` when the panel already has the user.
pub const REASON_PANEL_USER: &str = "panel_user_exists";
/// `processed_messages.consumer` under which marzban-sync marks a trial it refused, keyed
/// [`refused_key`].
pub const REFUSED_MARK: &str = "marzban-sync:refused";

/// The `processed_messages.message_id` of the refusal of the manual grant `grant_id`.
pub fn refused_key(grant_id: i64) -> String {
    format!("manual_grant:{grant_id}")
}
/// The longest trial `TRIAL_DAYS` may set.
pub const MAX_DAYS: i32 = 365;
const GIB: i64 = 1024 * 1024 * 1024;

/// The trial's variables, read by the gateway and the bot.
pub const VARS: &[EnvVar] = &[
    EnvVar::default("TRIAL_DAYS", "0"),
    EnvVar::default("TRIAL_DATA_LIMIT_GB", "0"),
];

/// What a trial gives; `days` 0 = no trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrialPolicy {
    /// `TRIAL_DAYS` (default 0 = off; at most [`MAX_DAYS`]).
    pub days: i32,
    /// `TRIAL_DATA_LIMIT_GB` in bytes; `None` (0, the default) = unlimited.
    pub data_limit_bytes: Option<i64>,
}

impl TrialPolicy {
    /// `TRIAL_DAYS` and `TRIAL_DATA_LIMIT_GB`.
    pub fn from_vars(raw: &Vars) -> Result<Self, String> {
        let days = raw.parse_or::<i32>("TRIAL_DAYS", 0)?;
        if !(0..=MAX_DAYS).contains(&days) {
            return Err(invalid(
                "TRIAL_DAYS",
                format!("must be 0 (off) to {MAX_DAYS}"),
            ));
        }
        let gb = raw.parse_or::<i64>("TRIAL_DATA_LIMIT_GB", 0)?;
        let data_limit_bytes = match gb {
            0 => None,
            gb => Some(gb.checked_mul(GIB).filter(|b| *b > 0).ok_or_else(|| {
                invalid(
                    "TRIAL_DATA_LIMIT_GB",
                    "must be 0 (unlimited) or a positive number of GiB",
                )
            })?),
        };
        Ok(Self {
            days,
            data_limit_bytes,
        })
    }

    pub fn enabled(&self) -> bool {
        self.days > 0
    }
}

/// The `manual_grants.idempotency_key` of the trial of a Telegram user: one per user, by the
/// column's UNIQUE constraint.
pub fn key(telegram_id: i64) -> String {
    format!("trial:{telegram_id}")
}

/// Why a user may not have a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// They had it.
    Taken,
    /// A payment of theirs succeeded (refunded ones count).
    PaidBefore,
    /// They have a subscription (a panel user): from a payment, a grant or an adopted user.
    Subscribed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Taken => "trial_taken",
            Self::PaidBefore => "paid_before",
            Self::Subscribed => "subscribed",
        }
    }
}

/// Why `users.id` = `user_id` may not have a trial, or `None` when they may.
pub async fn refusal(conn: &impl ConnectionTrait, user_id: i64) -> Result<Option<Refusal>, DbErr> {
    let trial = manual_grants::Entity::find()
        .select_only()
        .column(manual_grants::Column::Id)
        .filter(manual_grants::Column::UserId.eq(user_id))
        .filter(manual_grants::Column::Kind.eq(KIND))
        .into_tuple::<i64>()
        .one(conn)
        .await?;
    if trial.is_some() {
        return Ok(Some(Refusal::Taken));
    }
    let paid = payments::Entity::find()
        .select_only()
        .column(payments::Column::UserId)
        .filter(payments::Column::UserId.eq(user_id))
        .filter(payments::Column::Status.is_in([
            PaymentStatus::Succeeded,
            PaymentStatus::PartiallyRefunded,
            PaymentStatus::Refunded,
        ]))
        .into_tuple::<i64>()
        .one(conn)
        .await?;
    if paid.is_some() {
        return Ok(Some(Refusal::PaidBefore));
    }
    let subscribed = subscriptions::Entity::find()
        .select_only()
        .column(subscriptions::Column::Id)
        .filter(subscriptions::Column::UserId.eq(user_id))
        .into_tuple::<i64>()
        .one(conn)
        .await?;
    Ok(subscribed.map(|_| Refusal::Subscribed))
}

/// Whether marzban-sync refused the trial of `users.id` = `user_id` because the panel already
/// had the user (a customer from before this bot): the bot then says so instead of "you have
/// had your trial".
pub async fn refused_for_panel_user(
    conn: &impl ConnectionTrait,
    user_id: i64,
) -> Result<bool, DbErr> {
    let trial = manual_grants::Entity::find()
        .select_only()
        .column(manual_grants::Column::Id)
        .filter(manual_grants::Column::UserId.eq(user_id))
        .filter(manual_grants::Column::Kind.eq(KIND))
        .into_tuple::<i64>()
        .one(conn)
        .await?;
    let Some(grant_id) = trial else {
        return Ok(false);
    };
    Ok(
        processed_messages::Entity::find_by_id((REFUSED_MARK.to_owned(), refused_key(grant_id)))
            .one(conn)
            .await?
            .is_some(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&'static str, &str)]) -> Result<TrialPolicy, String> {
        TrialPolicy::from_vars(&pairs.iter().copied().collect::<Vars>())
    }

    #[test]
    fn settings() {
        assert_eq!(policy(&[]), Ok(TrialPolicy::default()));
        assert!(!policy(&[]).unwrap().enabled());
        let on = policy(&[("TRIAL_DAYS", "3"), ("TRIAL_DATA_LIMIT_GB", "5")]).unwrap();
        assert_eq!(on.days, 3);
        assert!(on.enabled());
        assert_eq!(on.data_limit_bytes, Some(5 * GIB));
        for bad in [
            ("TRIAL_DAYS", "-1"),
            ("TRIAL_DAYS", "366"),
            ("TRIAL_DAYS", "x"),
        ] {
            assert!(policy(&[bad]).is_err(), "{bad:?}");
        }
        for bad in ["-1", "9223372036854775807", "1.5"] {
            assert!(policy(&[("TRIAL_DATA_LIMIT_GB", bad)]).is_err(), "{bad}");
        }
    }
}
