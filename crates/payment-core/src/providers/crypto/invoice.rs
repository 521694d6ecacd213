//! Invoices: a unique amount per open invoice, and the payment status they imply.
//!
//! The amount is `price + tag`, the tag being 1..=[`MAX_TAG`] (9,999) micro-USDT (at most
//! 0.009999 USDT more than the price). `(network, address, expected_minor)` is unique among
//! open invoices (a partial unique index), so two open invoices of one wallet never ask for
//! the same amount and a transfer of exactly that amount names its invoice. A tag is free
//! again as soon as its invoice leaves `open`: paid (or overpaid), ended by the chain
//! watcher once its late window has passed (`expired`, `underpaid`), or closed with its
//! payment when the payment's creation was refused or never finished ([`close_unpaid`]).
//! An unpaid invoice stays `open` through its late window, so its amount is not handed to a
//! new invoice while a late transfer can still arrive. A transfer that is not exact is credited only within a
//! tag below one invoice's amount, and only when no other recent invoice (in any status) asks
//! within a tag of it (see [`super::matcher`]).

use chrono::{DateTime, Utc};
use domain::entities::crypto_invoices;
use domain::money::{Currency, Money};
use domain::{CryptoInvoiceStatus, PaymentId, PaymentStatus};
use sea_orm::sea_query::{Expr, ExprTrait, Query, SimpleExpr};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Statement, Value};
use uuid::Uuid;

use super::{CryptoProvider, CryptoSettings, LatePolicy, MAX_TAG, QuoteError};
use crate::error::{Mismatch, ProviderError};
use crate::provider::{Confirmation, CreatedPayment, PaymentRef, ProviderPayment};

/// Reservation attempts before giving up on contention.
const MAX_ATTEMPTS: u32 = 8;

/// An invoice whose amount is reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedInvoice {
    pub invoice_id: i64,
    pub payment_id: PaymentId,
    /// `TRC20`.
    pub network: String,
    /// The wallet to pay to.
    pub address: String,
    /// What the payer must send: price + tag, in USDT.
    pub amount: Money,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl ReservedInvoice {
    /// The tag (`amount − price`) is not stored; this is the whole amount to show.
    pub fn confirmation(&self) -> Confirmation {
        CryptoProvider::confirmation(self)
    }

    /// The invoice as the answer of a `create_payment` (pending, nothing charged yet).
    pub fn created_payment(&self) -> CreatedPayment {
        CreatedPayment {
            provider_payment_id: self.payment_id.to_string(),
            status: PaymentStatus::Pending,
            amount: self.amount,
            confirmation: Some(self.confirmation()),
            expires_at: Some(self.expires_at),
            test: false,
        }
    }

    fn from_model(m: &crypto_invoices::Model) -> Self {
        Self {
            invoice_id: m.id,
            payment_id: m.payment_id,
            network: m.network.clone(),
            address: m.address.clone(),
            amount: m.expected(),
            expires_at: m.expires_at,
            created_at: m.created_at,
        }
    }
}

/// Why no invoice could be reserved.
#[derive(Debug, thiserror::Error)]
pub enum InvoiceError {
    #[error(transparent)]
    Quote(#[from] QuoteError),
    /// All [`MAX_TAG`] tags of this price are taken by open invoices.
    #[error("no free tag for price {0}: {MAX_TAG} open invoices already ask for it")]
    NoFreeTag(Money),
    #[error("could not reserve an amount after {0} attempts (contention)")]
    Contended(u32),
    #[error("the amount does not fit in i64")]
    Overflow,
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

impl CryptoProvider {
    /// Reserves a unique amount for `payment_id` and inserts its `crypto_invoices` row, in
    /// the caller's transaction.
    ///
    /// - `price` is USDT, or RUB converted at `CRYPTO_RUB_PER_USDT` (see [`Self::quote`] for
    ///   tariffs); the amount asked is `price + tag`, the tag 1..=[`MAX_TAG`] micro-USDT, chosen at
    ///   random among the tags no open invoice of this wallet uses (random, so concurrent
    ///   reservations rarely pick the same one; a collision is retried with another tag).
    /// - The `payments` row must already exist in this transaction (foreign key). Store
    ///   `amount` and `expires_at` of the result on it and show [`ReservedInvoice::confirmation`].
    /// - Idempotent: an existing invoice of `payment_id` is returned as it is.
    /// - `INSERT … ON CONFLICT DO NOTHING`, so a collision never aborts the caller's
    ///   PostgreSQL transaction. Works on PostgreSQL and SQLite.
    pub async fn reserve_invoice<C: ConnectionTrait>(
        &self,
        conn: &C,
        payment_id: PaymentId,
        price: Money,
        now: DateTime<Utc>,
    ) -> Result<ReservedInvoice, InvoiceError> {
        let price = self.to_usdt(price)?;
        if price.minor() <= 0 {
            return Err(QuoteError::Unsupported(price.currency()).into());
        }
        let top = price
            .minor()
            .checked_add(MAX_TAG)
            .ok_or(InvoiceError::Overflow)?;
        let network = self.settings.network();
        let address = self.settings.wallet_address.to_string();
        let ttl = chrono::Duration::from_std(self.settings.invoice_ttl)
            .map_err(|_| InvoiceError::Overflow)?;
        let expires_at = now + ttl;
        let backend = conn.get_database_backend();
        for _ in 0..MAX_ATTEMPTS {
            if let Some(existing) = find(conn, payment_id).await? {
                return Ok(ReservedInvoice::from_model(&existing));
            }
            let used: std::collections::HashSet<i64> = conn
                .query_all_raw(Statement::from_sql_and_values(
                    backend,
                    "SELECT expected_minor FROM crypto_invoices \
                     WHERE network = $1 AND address = $2 AND status = 'open' \
                     AND expected_minor >= $3 AND expected_minor <= $4",
                    [
                        network.into(),
                        address.clone().into(),
                        (price.minor() + 1).into(),
                        top.into(),
                    ],
                ))
                .await?
                .iter()
                .map(|row| row.try_get::<i64>("", "expected_minor"))
                .collect::<Result<_, _>>()?;
            let free: Vec<i64> = (1..=MAX_TAG)
                .filter(|tag| !used.contains(&(price.minor() + tag)))
                .collect();
            if free.is_empty() {
                return Err(InvoiceError::NoFreeTag(price));
            }
            let tag = free[random_index(free.len())];
            let values: [Value; 8] = [
                payment_id.into(),
                network.into(),
                address.clone().into(),
                (price.minor() + tag).into(),
                Currency::Usdt.code().into(),
                expires_at.into(),
                now.into(),
                now.into(),
            ];
            let inserted = conn
                .query_one_raw(Statement::from_sql_and_values(
                    backend,
                    "INSERT INTO crypto_invoices \
                     (payment_id, network, address, expected_minor, currency, status, \
                      confirmations, expires_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 'open', 0, $6, $7, $8) \
                     ON CONFLICT DO NOTHING RETURNING id",
                    values,
                ))
                .await?;
            if let Some(row) = inserted {
                let invoice_id: i64 = row.try_get("", "id")?;
                return Ok(ReservedInvoice {
                    invoice_id,
                    payment_id,
                    network: network.to_owned(),
                    address,
                    amount: Money::new(price.minor() + tag, Currency::Usdt),
                    expires_at,
                    created_at: now,
                });
            }
            tracing::debug!(%payment_id, tag, "invoice amount taken concurrently, retrying");
        }
        Err(InvoiceError::Contended(MAX_ATTEMPTS))
    }
}

async fn find<C: ConnectionTrait>(
    conn: &C,
    payment_id: PaymentId,
) -> Result<Option<crypto_invoices::Model>, DbErr> {
    crypto_invoices::Entity::find()
        .filter(crypto_invoices::Column::PaymentId.eq(payment_id))
        .one(conn)
        .await
}

/// Closes the open invoice of `payment_id` that has received nothing, as `status`
/// (`expired` or `canceled`), in the caller's transaction: its tag is free at once. For a
/// payment that ended before anyone could pay it (creation refused or never finished). An
/// invoice that received something is left to the chain watcher. Returns whether one was
/// closed.
pub async fn close_unpaid<C: ConnectionTrait>(
    conn: &C,
    payment_id: PaymentId,
    status: CryptoInvoiceStatus,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let closed = crypto_invoices::Entity::update_many()
        .col_expr(crypto_invoices::Column::Status, Expr::value(status))
        .col_expr(crypto_invoices::Column::UpdatedAt, Expr::value(now))
        .filter(crypto_invoices::Column::PaymentId.eq(payment_id))
        .filter(crypto_invoices::Column::Status.eq(CryptoInvoiceStatus::Open))
        .filter(crypto_invoices::Column::ReceivedMinor.is_null())
        .exec(conn)
        .await?;
    Ok(closed.rows_affected > 0)
}

/// A uniform index below `len`, from the OS-seeded randomness of a v4 UUID.
/// On `payments`: the payment has an open invoice (it holds its tag, through the late
/// window, until it is paid or ended).
pub fn open_invoice_exists() -> SimpleExpr {
    use domain::entities::payments;
    Expr::exists(
        Query::select()
            .expr(Expr::value(1))
            .from(crypto_invoices::Entity)
            .and_where(
                Expr::col((crypto_invoices::Entity, crypto_invoices::Column::PaymentId))
                    .equals((payments::Entity, payments::Column::Id)),
            )
            .and_where(crypto_invoices::Column::Status.eq(CryptoInvoiceStatus::Open))
            .to_owned(),
    )
}

fn random_index(len: usize) -> usize {
    let n = Uuid::new_v4().as_u128();
    usize::try_from(n % len as u128).unwrap_or(0)
}

/// The payment status an invoice row implies (what `get_payment_status` answers):
///
/// | invoice | payment |
/// |---|---|
/// | `open` (also with a partial amount received, until the late window ends) | `pending` |
/// | `paid`, `overpaid` | `succeeded` |
/// | `late`, policy `complete` | `succeeded` |
/// | `late`, policy `flag` | `expired`, reason `late_transfer_flagged` |
/// | `underpaid` (window over, not enough received) | `expired`, reason `underpaid` |
/// | `expired` | `expired` |
/// | `canceled` | `canceled` |
pub async fn payment_status<C: ConnectionTrait>(
    conn: &C,
    settings: &CryptoSettings,
    payment: &PaymentRef,
) -> Result<ProviderPayment, ProviderError> {
    let invoice = find(conn, payment.payment_id)
        .await
        .map_err(|e| ProviderError::Client(format!("database: {e}")))?
        .ok_or_else(|| {
            ProviderError::InvalidRequest(format!(
                "no crypto invoice for payment {}",
                payment.payment_id
            ))
        })?;
    let expected = invoice.expected();
    if expected != payment.amount {
        return Err(Mismatch::Amount {
            expected: payment.amount,
            actual: expected,
        }
        .into());
    }
    let received = Money::new(invoice.received_minor.unwrap_or(0), Currency::Usdt);
    let (status, failure_reason) = match invoice.status {
        CryptoInvoiceStatus::Open => (PaymentStatus::Pending, None),
        CryptoInvoiceStatus::Paid | CryptoInvoiceStatus::Overpaid => {
            (PaymentStatus::Succeeded, None)
        }
        CryptoInvoiceStatus::Late => match settings.late_policy {
            LatePolicy::Complete => (PaymentStatus::Succeeded, None),
            LatePolicy::Flag => (
                PaymentStatus::Expired,
                Some(format!(
                    "late_transfer_flagged: received {received} after the invoice expired"
                )),
            ),
        },
        CryptoInvoiceStatus::Underpaid => (
            PaymentStatus::Expired,
            Some(format!("underpaid: received {received} of {expected}")),
        ),
        CryptoInvoiceStatus::Expired => (PaymentStatus::Expired, None),
        CryptoInvoiceStatus::Canceled => (PaymentStatus::Canceled, None),
    };
    let confirmation = (status == PaymentStatus::Pending).then(|| Confirmation::Transfer {
        network: invoice.network.clone(),
        address: invoice.address.clone(),
        amount: expected,
        expires_at: Some(invoice.expires_at),
    });
    Ok(ProviderPayment {
        provider_payment_id: payment.provider_payment_id.clone(),
        status,
        amount: expected,
        refunded: Money::new(0, Currency::Usdt),
        paid_at: invoice
            .paid_at
            .filter(|_| status == PaymentStatus::Succeeded),
        failure_reason,
        confirmation,
        test: false,
        saved_method: None,
    })
}
