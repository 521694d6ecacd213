//! One open checkout per customer, tariff, provider and currency, and a cap on a customer's
//! open payments (issue 18).
//!
//! A button press arrives with a new `Idempotency-Key` each time, so the key alone cannot stop
//! a customer (or a script) from opening a payment per press: each one a real YooKassa
//! payment, a USDT tag held for the invoice and its late window. So before a new intent is
//! stored, the intent transaction
//!
//! 1. locks the customer's `users` row as it reads it after the upsert
//!    (`payments::create::upsert_and_lock_user`: `SELECT … FOR UPDATE` on PostgreSQL; SQLite's write
//!    transaction is exclusive already), so two presses of one customer — on any replica —
//!    decide one after the other, and presses of different customers never wait on each
//!    other;
//! 2. looks for a **reusable** checkout of the same tariff, provider, currency and promo code
//!    (or none, like the press; issue 23) at the current price: `pending`, and either still being created (within the creation window),
//!    or finished and not expired — `expires_at` at least [`REUSE_MARGIN`] away, or for a
//!    payment without an expiry (a YooKassa redirect) created within
//!    `CHECKOUT_REUSE_MINUTES`. A press finds it and answers with the same payment and
//!    confirmation (same YooKassa link, same USDT amount, same Telegram invoice payload);
//! 3. otherwise counts the customer's **open** payments (steps 2 and 3 are one statement,
//!    [`CheckoutPolicy::look`]): `pending` and still reusable by the
//!    rule above, or still being created (a half-made row counts until reconciliation
//!    expires it), or still holding what its provider reserved at checkout
//!    ([`PaymentProvider::holds_reservation`]: an open crypto invoice keeps its tag through the
//!    late window). At `CHECKOUT_MAX_OPEN_PAYMENTS` the press is refused with
//!    409 `too_many_open_payments`, else the new intent is stored.
//!
//! Why a row lock and not a partial unique index: "open" depends on the clock (`expires_at`
//! against now), which an index predicate cannot express (it must be immutable), and the cap
//! counts rows, which no unique index can. The lock is held for the few milliseconds of the
//! intent transaction, never across the provider call.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::PaymentStatus;
use domain::entities::payments;
use domain::money::Money;
use payment_core::{PaymentProvider, PaymentService};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter,
    QueryOrder, QuerySelect,
};

/// Default `CHECKOUT_REUSE_MINUTES`.
pub const DEFAULT_REUSE_WINDOW: Duration = Duration::from_secs(30 * 60);
/// Default `CHECKOUT_MAX_OPEN_PAYMENTS`.
pub const DEFAULT_MAX_OPEN: u32 = 5;
/// A checkout that expires sooner than this is not handed out again: the payer would have
/// too little time to pay it (a new one is made instead, counted against the cap).
pub const REUSE_MARGIN: Duration = Duration::from_secs(2 * 60);

/// How presses of one customer share checkouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckoutPolicy {
    /// `CHECKOUT_REUSE_MINUTES` (default 30): how long a payment without an expiry of its own
    /// (a YooKassa redirect) is handed out again to the same customer, tariff and currency.
    pub reuse_window: Duration,
    /// `CHECKOUT_MAX_OPEN_PAYMENTS` (default 5): open payments one customer may hold in all.
    pub max_open: u32,
}

impl Default for CheckoutPolicy {
    fn default() -> Self {
        Self {
            reuse_window: DEFAULT_REUSE_WINDOW,
            max_open: DEFAULT_MAX_OPEN,
        }
    }
}

/// What a new checkout is for.
pub struct Wanted<'a> {
    pub user_id: i64,
    pub tariff_id: i64,
    pub provider: &'a dyn PaymentProvider,
    /// The price just quoted (for crypto: without the tag), the promo code's discount applied.
    pub price: &'a Money,
    /// The promo code (`promo_codes.id`) the press asks with: only a checkout made with the
    /// same code (or, without one, with none) is handed out again.
    pub promo: Option<i64>,
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl CheckoutPolicy {
    /// Payments that may be handed out again, at `now`: pending and being created, or
    /// finished and not (nearly) expired.
    fn reusable(&self, now: DateTime<Utc>) -> Condition {
        use payments::Column as P;
        let creation_window = chrono(payments::CREATION_WINDOW);
        Condition::all()
            .add(P::Status.eq(PaymentStatus::Pending))
            .add(
                Condition::any()
                    .add(
                        Condition::all()
                            .add(P::ProviderPaymentId.is_null())
                            .add(P::CreatedAt.gt(now - creation_window)),
                    )
                    .add(
                        Condition::all()
                            .add(P::ProviderPaymentId.is_not_null())
                            .add(P::ExpiresAt.gt(now + chrono(REUSE_MARGIN))),
                    )
                    .add(
                        Condition::all()
                            .add(P::ProviderPaymentId.is_not_null())
                            .add(P::ExpiresAt.is_null())
                            .add(P::CreatedAt.gt(now - chrono(self.reuse_window))),
                    ),
            )
    }

    /// What a press finds among the customer's payments, in one statement: how many are
    /// **open** (see the module docs), and among them the **reusable** checkout of this
    /// tariff, provider, currency and promo code at today's price (the newest), which the
    /// press answers with. Every reusable payment is open, so the one query of the open ones
    /// says of each whether it is reusable (a column computed by the same condition).
    pub async fn look<C: ConnectionTrait>(
        &self,
        txn: &C,
        providers: &PaymentService,
        wanted: &Wanted<'_>,
        now: DateTime<Utc>,
    ) -> Result<Found, DbErr> {
        use payments::Column as P;

        #[derive(Debug, FromQueryResult)]
        struct Row {
            #[sea_orm(nested)]
            payment: payments::Model,
            reusable: bool,
        }

        let held = providers.providers().filter_map(|provider| {
            let holds = provider.holds_reservation()?;
            Some(P::Provider.eq(provider.id()).and(holds))
        });
        let reusable = Condition::all()
            .add(P::TariffId.eq(wanted.tariff_id))
            .add(P::Provider.eq(wanted.provider.id()))
            .add(P::Currency.eq(wanted.price.currency()))
            .add(same_promo(wanted.promo))
            .add(self.reusable(now));
        let rows = payments::Entity::find()
            .filter(P::UserId.eq(wanted.user_id))
            .filter(P::Status.eq(PaymentStatus::Pending))
            .filter(
                held.fold(
                    Condition::any()
                        .add(self.reusable(now))
                        .add(P::ProviderPaymentId.is_null()),
                    Condition::add,
                ),
            )
            .column_as(Expr::from(reusable), "reusable")
            .order_by_desc(P::CreatedAt)
            .into_model::<Row>()
            .all(txn)
            .await?;
        let open = rows.len() as u64;
        // Only at today's price: a repriced tariff gets a new payment.
        let reusable = rows
            .into_iter()
            .filter(|row| row.reusable)
            .map(|row| row.payment)
            .find(|row| at_price(row, wanted));
        Ok(Found { open, reusable })
    }
}

/// What [`CheckoutPolicy::look`] found.
#[derive(Debug)]
pub struct Found {
    /// The customer's open payments.
    pub open: u64,
    /// The checkout a press answers with, if any.
    pub reusable: Option<payments::Model>,
}

/// Payments made with the promo code `promo` (`None`: with no code).
fn same_promo(promo: Option<i64>) -> Condition {
    use domain::entities::payment_promos::{Column as PP, Entity as PaymentPromos};
    use sea_orm::sea_query::Query;
    let mut with_code = Query::select();
    with_code.column(PP::PaymentId).from(PaymentPromos);
    let condition = match promo {
        Some(id) => {
            payments::Column::Id.in_subquery(with_code.and_where(PP::PromoCodeId.eq(id)).to_owned())
        }
        None => payments::Column::Id.not_in_subquery(with_code.to_owned()),
    };
    Condition::all().add(condition)
}

/// Whether `row` asks what `wanted` would ask now (the provider decides: the same amount,
/// or for crypto the same price plus a tag).
fn at_price(row: &payments::Model, wanted: &Wanted<'_>) -> bool {
    let asked = Money::new(row.amount_minor, row.currency);
    wanted.provider.asks_at_price(wanted.price, &asked)
}
