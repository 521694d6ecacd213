//! `manual_grants`: days given without a payment — by an admin (`admin`), as a free trial
//! (`trial`) or as a referrer's bonus (`referral`, [`crate::referral`]). `idempotency_key` is
//! unique, so a repeated request grants once; marzban-sync writes the ledger entry
//! (`subscription_grants.kind` = `kind`).

use sea_orm::entity::prelude::*;

/// `kind` of an admin's grant (`/grant`, `POST /api/admin/grants`).
pub const KIND_ADMIN: &str = "admin";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "manual_grants")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique, column_type = "Text")]
    pub idempotency_key: String,
    pub user_id: i64,
    #[sea_orm(column_type = "Text")]
    pub kind: String,
    pub days: i32,
    /// `None`: the subscription's data limit stays as it is.
    pub data_limit_bytes: Option<i64>,
    #[sea_orm(column_type = "Text")]
    pub reason: String,
    /// The admin's Telegram id; `None` for grants nobody typed (a trial).
    pub granted_by: Option<i64>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::UserId",
        to = "super::users::Column::Id"
    )]
    User,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
