//! `payments`: one row per checkout, whatever the provider.
//!
//! Status changes go through one conditional `UPDATE … WHERE id = ? AND status IN
//! (PaymentStatus::allowed_predecessors(next))`, in the same transaction as the outbox row.

use sea_orm::QuerySelect;
use sea_orm::entity::prelude::*;

use crate::ids::PaymentId;
use crate::money::{Currency, Money};
use crate::status::PaymentStatus;

/// Marks, in `metadata`, a payment whose creation has not finished: the gateway stores the
/// row (its intent) before calling the provider, and the mark goes when the provider's answer
/// is stored. A row still marked [`CREATION_IN_PROGRESS`] — `pending`, no
/// `provider_payment_id` — once [`CREATION_WINDOW`] has passed was never shown to a payer:
/// reconciliation expires it.
pub const META_CREATION: &str = "gateway_creation";
/// [`META_CREATION`] while the provider has not answered (or its answer was lost).
pub const CREATION_IN_PROGRESS: &str = "in_progress";
/// [`META_CREATION`] of a row the provider refused (status `failed`; the refusal is the key's
/// stored answer).
pub const CREATION_REFUSED: &str = "refused";
/// How long a request with the same `Idempotency-Key` may finish a half-made payment.
pub const CREATION_WINDOW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: PaymentId,
    pub user_id: i64,
    pub tariff_id: i64,
    /// Provider name (`yookassa`, `telegram`, `crypto`).
    #[sea_orm(column_type = "Text")]
    pub provider: crate::ProviderId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: PaymentStatus,
    /// The provider's id; unique together with `provider`.
    #[sea_orm(column_type = "Text", nullable)]
    pub provider_payment_id: Option<String>,
    #[sea_orm(unique, column_type = "Text")]
    pub idempotency_key: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub confirmation_url: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub failure_reason: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub metadata: Json,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,
    /// The provider's deadline for paying; reconciliation asks until then.
    pub expires_at: Option<DateTimeUtc>,
    /// Total refunded so far, in the payment's currency.
    pub refunded_minor: i64,
    /// Set when a provider answer disagreed with us (amount or currency mismatch).
    pub flagged: bool,
    #[sea_orm(column_type = "Text", nullable)]
    pub flag_reason: Option<String>,
    /// When reconciliation should next ask the provider about this pending payment.
    pub next_check_at: Option<DateTimeUtc>,
    pub check_attempts: i32,
}

impl Model {
    pub fn amount(&self) -> Money {
        Money::new(self.amount_minor, self.currency)
    }

    pub fn refunded(&self) -> Money {
        Money::new(self.refunded_minor, self.currency)
    }

    /// Whether the payment's creation never finished (see [`META_CREATION`]).
    pub fn is_half_made(&self) -> bool {
        self.status == PaymentStatus::Pending && self.provider_payment_id.is_none()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::UserId",
        to = "super::users::Column::Id"
    )]
    User,
    #[sea_orm(
        belongs_to = "super::tariffs::Entity",
        from = "Column::TariffId",
        to = "super::tariffs::Column::Id"
    )]
    Tariff,
    #[sea_orm(has_many = "super::refunds::Entity")]
    Refunds,
    #[sea_orm(has_one = "super::crypto_invoices::Entity")]
    CryptoInvoice,
    #[sea_orm(has_many = "super::provider_notifications::Entity")]
    ProviderNotifications,
    /// The promo code the payment was made with, if any.
    #[sea_orm(has_one = "super::payment_promos::Entity")]
    PaymentPromo,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl Related<super::tariffs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Tariff.def()
    }
}

impl Related<super::refunds::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Refunds.def()
    }
}

impl Related<super::crypto_invoices::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::CryptoInvoice.def()
    }
}

impl Related<super::payment_promos::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::PaymentPromo.def()
    }
}

impl Related<super::provider_notifications::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ProviderNotifications.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

/// The one look-up of the payment a provider's notification is about: by the provider's id
/// (`provider`, `provider_payment_id`, unique together) first, else by the first of our own
/// `candidates` ids that exists (the id the body claims, or the one the inbox matched). Used by
/// the worker when it applies a notice; the inbox, which stores notices in groups, applies the
/// same rule as a subquery of its insert (`service_kit::inbox`).
pub async fn find_notified<C: ConnectionTrait>(
    conn: &C,
    provider: &crate::ProviderId,
    provider_payment_id: Option<&str>,
    candidates: impl IntoIterator<Item = PaymentId>,
) -> Result<Option<Model>, DbErr> {
    find_notified_as(conn, provider, provider_payment_id, candidates, false).await
}

/// [`find_notified`], with the row found locked for the transaction `conn` (`FOR UPDATE`)
/// when `lock` is set, so a caller that changes it needs no second read.
pub async fn find_notified_as<C: ConnectionTrait>(
    conn: &C,
    provider: &crate::ProviderId,
    provider_payment_id: Option<&str>,
    candidates: impl IntoIterator<Item = PaymentId>,
    lock: bool,
) -> Result<Option<Model>, DbErr> {
    let locked = |query: Select<Entity>| if lock { query.lock_exclusive() } else { query };
    if let Some(provider_payment_id) = provider_payment_id {
        let found = locked(
            Entity::find()
                .filter(Column::Provider.eq(provider.clone()))
                .filter(Column::ProviderPaymentId.eq(provider_payment_id)),
        )
        .one(conn)
        .await?;
        if found.is_some() {
            return Ok(found);
        }
    }
    for id in candidates {
        if let Some(found) = locked(Entity::find_by_id(id)).one(conn).await? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}
