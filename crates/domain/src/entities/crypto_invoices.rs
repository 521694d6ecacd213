//! `crypto_invoices`: USDT invoices identified on chain by their exact amount.
//!
//! `(network, address, expected_minor)` is unique among `open` invoices only (a partial
//! index), and `(tx_id, event_index)` is unique once a transfer is matched.

use crate::PaymentId;
use sea_orm::entity::prelude::*;

use crate::money::{Currency, Money};
use crate::status::CryptoInvoiceStatus;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "crypto_invoices")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub payment_id: PaymentId,
    /// Chain/token standard, e.g. `TRC20`.
    #[sea_orm(column_type = "Text")]
    pub network: String,
    /// Receiving wallet address.
    #[sea_orm(column_type = "Text")]
    pub address: String,
    /// Price plus this invoice's unique tag, in minor units.
    pub expected_minor: i64,
    pub currency: Currency,
    pub status: CryptoInvoiceStatus,
    #[sea_orm(column_type = "Text", nullable)]
    pub tx_id: Option<String>,
    /// Position of the transfer event within the transaction.
    pub event_index: Option<i32>,
    pub received_minor: Option<i64>,
    #[sea_orm(column_type = "Text", nullable)]
    pub from_address: Option<String>,
    pub confirmations: i32,
    /// Block time of the matched transfer.
    pub paid_at: Option<DateTimeUtc>,
    pub expires_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl Model {
    pub fn expected(&self) -> Money {
        Money::new(self.expected_minor, self.currency)
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::payments::Entity",
        from = "Column::PaymentId",
        to = "super::payments::Column::Id"
    )]
    Payment,
}

impl Related<super::payments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Payment.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
