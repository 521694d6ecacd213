//! Promo codes (issue 23).
//!
//! `promo_codes`: one row per code (UNIQUE, upper case) with its benefit — `percent` off,
//! a `fixed` amount off in one currency, or extra `days` — and its limits: total uses, once
//! per customer, a validity window, the tariffs and providers it is good for (empty: any).
//! Admins disable a code (`active` false); rows are never deleted.
//!
//! `payment_promos`: the code a payment was made with, one row per payment (its primary key),
//! written in the payment's intent transaction: the list price, the discount and the extra
//! days. The worker stamps `used_at` in the transaction of the payment's `succeeded`
//! transition (a conditional update, so a duplicated notification counts nothing twice) and
//! `returned_at` in that of its `refunded` transition. A use is a row with `used_at` and no
//! `returned_at`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PromoCodes::Table)
                    .col(big_pk_auto(PromoCodes::Id))
                    .col(text(PromoCodes::Code).unique_key())
                    .col(text(PromoCodes::Kind))
                    .col(big_integer(PromoCodes::Value))
                    .col(text_null(PromoCodes::Currency))
                    .col(integer_null(PromoCodes::MaxUses))
                    .col(boolean(PromoCodes::OncePerUser))
                    .col(timestamp_with_time_zone_null(PromoCodes::StartsAt))
                    .col(timestamp_with_time_zone_null(PromoCodes::EndsAt))
                    .col(text(PromoCodes::Tariffs))
                    .col(text(PromoCodes::Providers))
                    .col(boolean(PromoCodes::Active))
                    .col(big_integer_null(PromoCodes::CreatedBy))
                    .col(timestamp_with_time_zone(PromoCodes::CreatedAt))
                    .col(timestamp_with_time_zone_null(PromoCodes::DisabledAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PaymentPromos::Table)
                    .col(pk_uuid(PaymentPromos::PaymentId))
                    .col(big_integer(PaymentPromos::PromoCodeId))
                    .col(big_integer(PaymentPromos::UserId))
                    .col(text(PaymentPromos::Code))
                    .col(big_integer(PaymentPromos::ListPriceMinor))
                    .col(big_integer(PaymentPromos::DiscountMinor))
                    .col(integer(PaymentPromos::ExtraDays))
                    .col(timestamp_with_time_zone(PaymentPromos::CreatedAt))
                    .col(timestamp_with_time_zone_null(PaymentPromos::UsedAt))
                    .col(timestamp_with_time_zone_null(PaymentPromos::ReturnedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(PaymentPromos::Table, PaymentPromos::PaymentId)
                            .to(Payments::Table, Payments::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PaymentPromos::Table, PaymentPromos::PromoCodeId)
                            .to(PromoCodes::Table, PromoCodes::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_payment_promos_code_user")
                    .table(PaymentPromos::Table)
                    .col(PaymentPromos::PromoCodeId)
                    .col(PaymentPromos::UserId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(PaymentPromos::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(PromoCodes::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum PromoCodes {
    Table,
    Id,
    Code,
    Kind,
    Value,
    Currency,
    MaxUses,
    OncePerUser,
    StartsAt,
    EndsAt,
    Tariffs,
    Providers,
    Active,
    CreatedBy,
    CreatedAt,
    DisabledAt,
}

#[derive(DeriveIden)]
enum PaymentPromos {
    Table,
    PaymentId,
    PromoCodeId,
    UserId,
    Code,
    ListPriceMinor,
    DiscountMinor,
    ExtraDays,
    CreatedAt,
    UsedAt,
    ReturnedAt,
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    Id,
}
