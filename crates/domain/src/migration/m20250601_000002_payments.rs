//! The payment domain: users, tariffs, payments and their inbox, refunds, crypto invoices,
//! the subscription ledger and the analytics log.
//!
//! Money columns are BIGINT minor units next to a TEXT currency code. Foreign keys are
//! declared inline (SQLite cannot add them later). `system_logs` has none on purpose: a log
//! row must never be refused.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_users(manager).await?;
        create_tariffs(manager).await?;
        create_payments(manager).await?;
        create_provider_notifications(manager).await?;
        create_refunds(manager).await?;
        create_crypto_invoices(manager).await?;
        create_subscriptions(manager).await?;
        create_subscription_grants(manager).await?;
        create_system_logs(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            SystemLogs::Table.into_iden(),
            SubscriptionGrants::Table.into_iden(),
            Subscriptions::Table.into_iden(),
            CryptoInvoices::Table.into_iden(),
            Refunds::Table.into_iden(),
            ProviderNotifications::Table.into_iden(),
            Payments::Table.into_iden(),
            Tariffs::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

async fn index(
    manager: &SchemaManager<'_>,
    name: &str,
    table: impl IntoIden,
    columns: &[DynIden],
    unique: bool,
) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for column in columns {
        stmt.col(column.clone());
    }
    if unique {
        stmt.unique();
    }
    manager.create_index(stmt).await
}

async fn create_users(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(Users::Table)
                .col(big_pk_auto(Users::Id))
                .col(big_integer_uniq(Users::TelegramId))
                .col(text_null(Users::Username))
                .col(text_null(Users::FirstName))
                .col(text_null(Users::LanguageCode))
                .col(timestamp_with_time_zone(Users::CreatedAt))
                .to_owned(),
        )
        .await
}

async fn create_tariffs(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(Tariffs::Table)
                .col(big_pk_auto(Tariffs::Id))
                .col(text_uniq(Tariffs::Code))
                .col(text(Tariffs::Title))
                .col(integer(Tariffs::DurationDays))
                .col(big_integer_null(Tariffs::DataLimitBytes))
                .col(big_integer_null(Tariffs::PriceRubMinor))
                .col(big_integer_null(Tariffs::PriceXtr))
                .col(big_integer_null(Tariffs::PriceUsdtMinor))
                .col(boolean(Tariffs::Active).default(true))
                .col(integer(Tariffs::SortOrder).default(0))
                .check(Expr::col(Tariffs::DurationDays).gt(0))
                .to_owned(),
        )
        .await
}

async fn create_payments(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(Payments::Table)
                .col(pk_uuid(Payments::Id))
                .col(big_integer(Payments::UserId))
                .col(big_integer(Payments::TariffId))
                .col(text(Payments::Provider))
                .col(big_integer(Payments::AmountMinor))
                .col(text(Payments::Currency))
                .col(text(Payments::Status))
                .col(text_null(Payments::ProviderPaymentId))
                .col(text_uniq(Payments::IdempotencyKey))
                .col(text_null(Payments::ConfirmationUrl))
                .col(text_null(Payments::FailureReason))
                .col(json_binary(Payments::Metadata))
                .col(timestamp_with_time_zone(Payments::CreatedAt))
                .col(timestamp_with_time_zone(Payments::UpdatedAt))
                .col(timestamp_with_time_zone_null(Payments::CompletedAt))
                .col(timestamp_with_time_zone_null(Payments::ExpiresAt))
                .col(big_integer(Payments::RefundedMinor).default(0))
                .col(boolean(Payments::Flagged).default(false))
                .col(text_null(Payments::FlagReason))
                .col(timestamp_with_time_zone_null(Payments::NextCheckAt))
                .col(integer(Payments::CheckAttempts).default(0))
                .check(Expr::col(Payments::AmountMinor).gte(0))
                .check(
                    Expr::col(Payments::RefundedMinor)
                        .gte(0)
                        .and(Expr::col(Payments::RefundedMinor).lte(Expr::col(Payments::AmountMinor))),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_payments_user")
                        .from(Payments::Table, Payments::UserId)
                        .to(Users::Table, Users::Id),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_payments_tariff")
                        .from(Payments::Table, Payments::TariffId)
                        .to(Tariffs::Table, Tariffs::Id),
                )
                .to_owned(),
        )
        .await?;
    // NULL provider ids (not yet assigned) never collide: NULLs are distinct in both backends.
    index(
        manager,
        "uq_payments_provider_payment_id",
        Payments::Table,
        &[
            Payments::Provider.into_iden(),
            Payments::ProviderPaymentId.into_iden(),
        ],
        true,
    )
    .await?;
    // Reconciliation: stale pending payments due for a re-check.
    index(
        manager,
        "idx_payments_status_next_check_at",
        Payments::Table,
        &[
            Payments::Status.into_iden(),
            Payments::NextCheckAt.into_iden(),
        ],
        false,
    )
    .await?;
    index(
        manager,
        "idx_payments_user_id",
        Payments::Table,
        &[Payments::UserId.into_iden()],
        false,
    )
    .await?;
    // Analytics by period and provider.
    index(
        manager,
        "idx_payments_created_at",
        Payments::Table,
        &[Payments::CreatedAt.into_iden()],
        false,
    )
    .await
}

async fn create_provider_notifications(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(ProviderNotifications::Table)
                .col(big_pk_auto(ProviderNotifications::Id))
                .col(text(ProviderNotifications::Provider))
                .col(text(ProviderNotifications::DedupeKey))
                .col(text(ProviderNotifications::Source))
                .col(text_null(ProviderNotifications::Peer))
                .col(text(ProviderNotifications::Body))
                .col(text_null(ProviderNotifications::ProviderPaymentId))
                .col(uuid_null(ProviderNotifications::PaymentId))
                .col(timestamp_with_time_zone(ProviderNotifications::ReceivedAt))
                .col(timestamp_with_time_zone_null(ProviderNotifications::ProcessedAt))
                .col(text_null(ProviderNotifications::Outcome))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_provider_notifications_payment")
                        .from(ProviderNotifications::Table, ProviderNotifications::PaymentId)
                        .to(Payments::Table, Payments::Id)
                        .on_delete(ForeignKeyAction::SetNull),
                )
                .to_owned(),
        )
        .await?;
    index(
        manager,
        "uq_provider_notifications_dedupe",
        ProviderNotifications::Table,
        &[
            ProviderNotifications::Provider.into_iden(),
            ProviderNotifications::DedupeKey.into_iden(),
        ],
        true,
    )
    .await?;
    index(
        manager,
        "idx_provider_notifications_unprocessed",
        ProviderNotifications::Table,
        &[
            ProviderNotifications::ProcessedAt.into_iden(),
            ProviderNotifications::Id.into_iden(),
        ],
        false,
    )
    .await?;
    index(
        manager,
        "idx_provider_notifications_payment_id",
        ProviderNotifications::Table,
        &[ProviderNotifications::PaymentId.into_iden()],
        false,
    )
    .await
}

async fn create_refunds(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(Refunds::Table)
                .col(pk_uuid(Refunds::Id))
                .col(uuid(Refunds::PaymentId))
                .col(text(Refunds::Provider))
                .col(text_null(Refunds::ProviderRefundId))
                .col(big_integer(Refunds::AmountMinor))
                .col(text(Refunds::Currency))
                .col(text(Refunds::Status))
                .col(text_null(Refunds::Reason))
                .col(text(Refunds::RequestedBy))
                .col(text_uniq(Refunds::IdempotencyKey))
                .col(text_null(Refunds::FailureReason))
                .col(timestamp_with_time_zone(Refunds::CreatedAt))
                .col(timestamp_with_time_zone(Refunds::UpdatedAt))
                .col(timestamp_with_time_zone_null(Refunds::CompletedAt))
                .check(Expr::col(Refunds::AmountMinor).gt(0))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_refunds_payment")
                        .from(Refunds::Table, Refunds::PaymentId)
                        .to(Payments::Table, Payments::Id),
                )
                .to_owned(),
        )
        .await?;
    index(
        manager,
        "uq_refunds_provider_refund_id",
        Refunds::Table,
        &[
            Refunds::Provider.into_iden(),
            Refunds::ProviderRefundId.into_iden(),
        ],
        true,
    )
    .await?;
    index(
        manager,
        "idx_refunds_payment_id",
        Refunds::Table,
        &[Refunds::PaymentId.into_iden()],
        false,
    )
    .await
}

async fn create_crypto_invoices(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(CryptoInvoices::Table)
                .col(big_pk_auto(CryptoInvoices::Id))
                .col(uuid_uniq(CryptoInvoices::PaymentId))
                .col(text(CryptoInvoices::Network))
                .col(text(CryptoInvoices::Address))
                .col(big_integer(CryptoInvoices::ExpectedMinor))
                .col(text(CryptoInvoices::Currency))
                .col(text(CryptoInvoices::Status))
                .col(text_null(CryptoInvoices::TxId))
                .col(integer_null(CryptoInvoices::EventIndex))
                .col(big_integer_null(CryptoInvoices::ReceivedMinor))
                .col(text_null(CryptoInvoices::FromAddress))
                .col(integer(CryptoInvoices::Confirmations).default(0))
                .col(timestamp_with_time_zone_null(CryptoInvoices::PaidAt))
                .col(timestamp_with_time_zone(CryptoInvoices::ExpiresAt))
                .col(timestamp_with_time_zone(CryptoInvoices::CreatedAt))
                .col(timestamp_with_time_zone(CryptoInvoices::UpdatedAt))
                .check(Expr::col(CryptoInvoices::ExpectedMinor).gt(0))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_crypto_invoices_payment")
                        .from(CryptoInvoices::Table, CryptoInvoices::PaymentId)
                        .to(Payments::Table, Payments::Id),
                )
                .to_owned(),
        )
        .await?;
    // One chain transfer settles at most one invoice.
    index(
        manager,
        "uq_crypto_invoices_tx",
        CryptoInvoices::Table,
        &[
            CryptoInvoices::TxId.into_iden(),
            CryptoInvoices::EventIndex.into_iden(),
        ],
        true,
    )
    .await?;
    index(
        manager,
        "idx_crypto_invoices_status_expires_at",
        CryptoInvoices::Table,
        &[
            CryptoInvoices::Status.into_iden(),
            CryptoInvoices::ExpiresAt.into_iden(),
        ],
        false,
    )
    .await?;
    // The amount identifies the invoice, so it is reserved while the invoice is open and
    // free again afterwards. A partial index: same syntax on PostgreSQL and SQLite.
    manager
        .get_connection()
        .execute_unprepared(
            "CREATE UNIQUE INDEX uq_crypto_invoices_open_amount \
             ON crypto_invoices (network, address, expected_minor) WHERE status = 'open'",
        )
        .await?;
    Ok(())
}

async fn create_subscriptions(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(Subscriptions::Table)
                .col(big_pk_auto(Subscriptions::Id))
                .col(big_integer_uniq(Subscriptions::UserId))
                .col(text_uniq(Subscriptions::MarzbanUsername))
                .col(timestamp_with_time_zone(Subscriptions::ExpiresAt))
                .col(big_integer_null(Subscriptions::DataLimitBytes))
                .col(text(Subscriptions::Status))
                .col(text_null(Subscriptions::SubscriptionUrl))
                .col(timestamp_with_time_zone_null(Subscriptions::SyncedAt))
                .col(text_null(Subscriptions::SyncError))
                .col(timestamp_with_time_zone(Subscriptions::CreatedAt))
                .col(timestamp_with_time_zone(Subscriptions::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_subscriptions_user")
                        .from(Subscriptions::Table, Subscriptions::UserId)
                        .to(Users::Table, Users::Id),
                )
                .to_owned(),
        )
        .await
}

async fn create_subscription_grants(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(SubscriptionGrants::Table)
                .col(big_pk_auto(SubscriptionGrants::Id))
                .col(big_integer(SubscriptionGrants::SubscriptionId))
                .col(uuid_null(SubscriptionGrants::PaymentId).unique_key())
                .col(text(SubscriptionGrants::Kind))
                .col(integer(SubscriptionGrants::DaysGranted))
                .col(integer(SubscriptionGrants::DaysRevoked).default(0))
                .col(timestamp_with_time_zone(SubscriptionGrants::ExpiresAtAfter))
                .col(timestamp_with_time_zone(SubscriptionGrants::CreatedAt))
                .col(timestamp_with_time_zone_null(SubscriptionGrants::RevokedAt))
                .check(
                    Expr::col(SubscriptionGrants::DaysRevoked).gte(0).and(
                        Expr::col(SubscriptionGrants::DaysRevoked)
                            .lte(Expr::col(SubscriptionGrants::DaysGranted)),
                    ),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_subscription_grants_subscription")
                        .from(SubscriptionGrants::Table, SubscriptionGrants::SubscriptionId)
                        .to(Subscriptions::Table, Subscriptions::Id),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_subscription_grants_payment")
                        .from(SubscriptionGrants::Table, SubscriptionGrants::PaymentId)
                        .to(Payments::Table, Payments::Id),
                )
                .to_owned(),
        )
        .await?;
    index(
        manager,
        "idx_subscription_grants_subscription_id",
        SubscriptionGrants::Table,
        &[SubscriptionGrants::SubscriptionId.into_iden()],
        false,
    )
    .await
}

async fn create_system_logs(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    manager
        .create_table(
            Table::create()
                .table(SystemLogs::Table)
                .col(big_pk_auto(SystemLogs::Id))
                .col(text(SystemLogs::EventType))
                .col(big_integer_null(SystemLogs::UserId))
                .col(uuid_null(SystemLogs::PaymentId))
                .col(text_null(SystemLogs::Provider))
                .col(big_integer_null(SystemLogs::AmountMinor))
                .col(text_null(SystemLogs::Currency))
                .col(text_null(SystemLogs::Status))
                .col(text_null(SystemLogs::Message))
                .col(json_binary_null(SystemLogs::Metadata))
                .col(timestamp_with_time_zone(SystemLogs::CreatedAt))
                .to_owned(),
        )
        .await?;
    index(
        manager,
        "idx_system_logs_event_type_created_at",
        SystemLogs::Table,
        &[
            SystemLogs::EventType.into_iden(),
            SystemLogs::CreatedAt.into_iden(),
        ],
        false,
    )
    .await?;
    index(
        manager,
        "idx_system_logs_payment_id",
        SystemLogs::Table,
        &[SystemLogs::PaymentId.into_iden()],
        false,
    )
    .await?;
    index(
        manager,
        "idx_system_logs_created_at",
        SystemLogs::Table,
        &[SystemLogs::CreatedAt.into_iden()],
        false,
    )
    .await
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    TelegramId,
    Username,
    FirstName,
    LanguageCode,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Tariffs {
    Table,
    Id,
    Code,
    Title,
    DurationDays,
    DataLimitBytes,
    PriceRubMinor,
    PriceXtr,
    PriceUsdtMinor,
    Active,
    SortOrder,
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    Id,
    UserId,
    TariffId,
    Provider,
    AmountMinor,
    Currency,
    Status,
    ProviderPaymentId,
    IdempotencyKey,
    ConfirmationUrl,
    FailureReason,
    Metadata,
    CreatedAt,
    UpdatedAt,
    CompletedAt,
    ExpiresAt,
    RefundedMinor,
    Flagged,
    FlagReason,
    NextCheckAt,
    CheckAttempts,
}

#[derive(DeriveIden)]
enum ProviderNotifications {
    Table,
    Id,
    Provider,
    DedupeKey,
    Source,
    Peer,
    Body,
    ProviderPaymentId,
    PaymentId,
    ReceivedAt,
    ProcessedAt,
    Outcome,
}

#[derive(DeriveIden)]
enum Refunds {
    Table,
    Id,
    PaymentId,
    Provider,
    ProviderRefundId,
    AmountMinor,
    Currency,
    Status,
    Reason,
    RequestedBy,
    IdempotencyKey,
    FailureReason,
    CreatedAt,
    UpdatedAt,
    CompletedAt,
}

#[derive(DeriveIden)]
enum CryptoInvoices {
    Table,
    Id,
    PaymentId,
    Network,
    Address,
    ExpectedMinor,
    Currency,
    Status,
    TxId,
    EventIndex,
    ReceivedMinor,
    FromAddress,
    Confirmations,
    PaidAt,
    ExpiresAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    Id,
    UserId,
    MarzbanUsername,
    ExpiresAt,
    DataLimitBytes,
    Status,
    SubscriptionUrl,
    SyncedAt,
    SyncError,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SubscriptionGrants {
    Table,
    Id,
    SubscriptionId,
    PaymentId,
    Kind,
    DaysGranted,
    DaysRevoked,
    ExpiresAtAfter,
    CreatedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum SystemLogs {
    Table,
    Id,
    EventType,
    UserId,
    PaymentId,
    Provider,
    AmountMinor,
    Currency,
    Status,
    Message,
    Metadata,
    CreatedAt,
}
