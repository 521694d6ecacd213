//! `tariff_texts`: a tariff's title and description per language (issue 23).
//!
//! One row per `(tariff_id, lang)` (the primary key); `lang` is a language code (`ru`, `en`).
//! The tariffs file's `title`/`description` are stored as `ru`, its `en = { … }` as `en`; a
//! language without a row shows `tariffs.title`, so a file without translations keeps working.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TariffTexts::Table)
                    .col(big_integer(TariffTexts::TariffId))
                    .col(text(TariffTexts::Lang))
                    .col(text(TariffTexts::Title))
                    .col(text_null(TariffTexts::Description))
                    .primary_key(
                        Index::create()
                            .col(TariffTexts::TariffId)
                            .col(TariffTexts::Lang),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(TariffTexts::Table, TariffTexts::TariffId)
                            .to(Tariffs::Table, Tariffs::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(TariffTexts::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum TariffTexts {
    Table,
    TariffId,
    Lang,
    Title,
    Description,
}

#[derive(DeriveIden)]
enum Tariffs {
    Table,
    Id,
}
