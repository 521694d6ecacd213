//! `referrals`: who brought whom, one referrer per user, and the reward once the referred
//! user's first payment succeeded ([`crate::referral`], migration `m20261206_000910_referrals`).

use sea_orm::entity::prelude::*;

use crate::PaymentId;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "referrals")]
pub struct Model {
    /// The referred user (`users.id`): the key, so there is one referrer per user.
    #[sea_orm(primary_key, auto_increment = false)]
    pub referred_user_id: i64,
    pub referrer_user_id: i64,
    /// The days promised to the referrer when the referral was recorded.
    pub bonus_days: i32,
    pub created_at: DateTimeUtc,
    /// The referred user's first succeeded payment, once rewarded.
    #[sea_orm(unique)]
    pub rewarded_payment_id: Option<PaymentId>,
    /// The referrer's `manual_grants` row of kind `referral`.
    pub reward_grant_id: Option<i64>,
    pub rewarded_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
