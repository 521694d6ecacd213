//! `subscriptions`: one per user, mirrored to the Marzban panel. `expires_at` is derived
//! from the `subscription_grants` ledger, never read back from the panel.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "subscriptions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub user_id: i64,
    #[sea_orm(unique, column_type = "Text")]
    pub marzban_username: String,
    pub expires_at: DateTimeUtc,
    /// `None` = unlimited traffic.
    pub data_limit_bytes: Option<i64>,
    /// Panel-side state (`active`, `expired`, `disabled`, …).
    #[sea_orm(column_type = "Text")]
    pub status: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub subscription_url: Option<String>,
    /// The panel user's key (VLESS UUID) when `subscription_url` was stored: while the panel
    /// still shows this key, the subscription was not revoked and the stored link still works.
    #[sea_orm(column_type = "Text", nullable)]
    pub panel_key: Option<String>,
    /// Last successful push to the panel.
    pub synced_at: Option<DateTimeUtc>,
    /// Last failed push to the panel, cleared on success.
    #[sea_orm(column_type = "Text", nullable)]
    pub sync_error: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::UserId",
        to = "super::users::Column::Id"
    )]
    User,
    #[sea_orm(has_many = "super::subscription_grants::Entity")]
    Grants,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl Related<super::subscription_grants::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Grants.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
