//! Referrals (issue 23).
//!
//! `referral_codes`: one personal code per user (`user_id` PRIMARY KEY), random and UNIQUE,
//! the tail of the deep link `t.me/<bot>?start=ref_<code>`.
//!
//! `referrals`: who brought whom. `referred_user_id` is the PRIMARY KEY, so a user has at most
//! one referrer, whatever links they follow. `bonus_days` is what was promised when the
//! referral was recorded (`REFERRAL_BONUS_DAYS` then). The reward is written by the payment
//! worker in the transaction that makes the referred user's first payment succeed: a
//! conditional `UPDATE … WHERE rewarded_payment_id IS NULL` claims the row (UNIQUE
//! `rewarded_payment_id`), and a `manual_grants` row of kind `referral` under the UNIQUE key
//! `referral:<payment id>` carries the days to the ledger; `reward_grant_id` names it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ReferralCodes::Table)
                    .col(big_integer(ReferralCodes::UserId).primary_key())
                    .col(text(ReferralCodes::Code).unique_key())
                    .col(timestamp_with_time_zone(ReferralCodes::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ReferralCodes::Table, ReferralCodes::UserId)
                            .to(Users::Table, Users::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Referrals::Table)
                    .col(big_integer(Referrals::ReferredUserId).primary_key())
                    .col(big_integer(Referrals::ReferrerUserId))
                    .col(integer(Referrals::BonusDays))
                    .col(timestamp_with_time_zone(Referrals::CreatedAt))
                    .col(uuid_null(Referrals::RewardedPaymentId).unique_key())
                    .col(big_integer_null(Referrals::RewardGrantId))
                    .col(timestamp_with_time_zone_null(Referrals::RewardedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Referrals::Table, Referrals::ReferredUserId)
                            .to(Users::Table, Users::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Referrals::Table, Referrals::ReferrerUserId)
                            .to(Users::Table, Users::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // `/ref` counts a referrer's referrals.
        manager
            .create_index(
                Index::create()
                    .name("ix_referrals_referrer")
                    .table(Referrals::Table)
                    .col(Referrals::ReferrerUserId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Referrals::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ReferralCodes::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ReferralCodes {
    Table,
    UserId,
    Code,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Referrals {
    Table,
    ReferredUserId,
    ReferrerUserId,
    BonusDays,
    CreatedAt,
    RewardedPaymentId,
    RewardGrantId,
    RewardedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}
