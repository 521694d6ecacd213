//! Automatic renewal with a saved payment method (issue 22).
//!
//! `saved_methods`: one per user and provider (UNIQUE): the method the provider saved when
//! the user paid with "renew automatically" (YooKassa: `payment_method.id`, its title like
//! "Bank card *4477"), the tariff it renews, whether autopay is on, and the declines in a row
//! (three turn it off). The renewal charges themselves are ordinary `payments` rows whose
//! idempotency key is `autopay:<subscription>:<period end>`, so a period is charged once.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SavedMethods::Table)
                    .col(big_pk_auto(SavedMethods::Id))
                    .col(big_integer(SavedMethods::UserId))
                    .col(text(SavedMethods::Provider))
                    .col(text(SavedMethods::MethodId))
                    .col(text(SavedMethods::Title))
                    .col(big_integer(SavedMethods::TariffId))
                    .col(boolean(SavedMethods::Autopay))
                    .col(integer(SavedMethods::Declines))
                    .col(text_null(SavedMethods::LastDecline))
                    .col(timestamp_with_time_zone(SavedMethods::CreatedAt))
                    .col(timestamp_with_time_zone(SavedMethods::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_saved_methods_user_provider")
                    .table(SavedMethods::Table)
                    .col(SavedMethods::UserId)
                    .col(SavedMethods::Provider)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SavedMethods::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum SavedMethods {
    Table,
    Id,
    UserId,
    Provider,
    MethodId,
    Title,
    TariffId,
    Autopay,
    Declines,
    LastDecline,
    CreatedAt,
    UpdatedAt,
}
