//! Which invoice a transfer pays: the matching rules, as pure functions.
//!
//! The chain watcher loads invoice rows and applies the [`Decision`]; every choice is made
//! here, so the rules are tested (and property-tested) without a database.
//!
//! Every invoice asks `price + tag` (tag 1..=[`MAX_TAG`] micro-USDT), unique among the
//! wallet's open invoices. A transfer of `v` micro-USDT from `from` at block time `at` looks
//! at the *candidates*: the wallet's open invoices whose window contains `at`
//! (`created_at − CLOCK_TOLERANCE ≤ at ≤ expires_at + late window`).
//!
//! 1. **Exact**: the candidate asking exactly `v` — fresh or already partly paid — gets it and
//!    completes (a partly paid one ends overpaid). So an exact transfer always lands on its own
//!    invoice, even after a near transfer reached it first.
//! 2. **Exact shortfall**: a partly paid candidate missing exactly `v` completes exactly.
//!    Several: the one whose recorded sender is `from`; still ambiguous → unmatched.
//! 3. **Tag tolerance** (the payer dropped or cut the tag): `expected − MAX_TAG ≤ v < expected`
//!    for exactly one *fresh* candidate → a partial payment (the payer is told the shortfall,
//!    at most `MAX_TAG`), but only when no *other* invoice of the wallet, in any status, whose
//!    window extended by [`COMPETITOR_HORIZON`] covers `at`, asks within `MAX_TAG` of `v`. A
//!    near amount thus never reaches another customer's invoice, and a late exact amount of a
//!    closed invoice is never given to someone else.
//! 4. Everything else — dust, top-ups, other amounts, more than asked but not exact, a near
//!    amount with a competitor — is **unmatched**: recorded for an admin, never attached.
//!
//! Rule 3 needs the invoices near the amount in every status ([`Rules::nearby_range`]); that
//! read runs only when rules 1–2 found nothing and rule 3 has its one candidate
//! ([`Decision::NeedsNearby`]).

use chrono::{DateTime, Duration, Utc};
use domain::CryptoInvoiceStatus;
use domain::entities::crypto_invoices::Model as Invoice;
use domain::money::{Currency, Money};

use super::watcher::OutcomeKind;
use super::{LatePolicy, MAX_TAG};

/// A transfer may predate its invoice's `created_at` by this much (clock differences).
pub const CLOCK_TOLERANCE: Duration = Duration::minutes(2);
/// How long after its late window an invoice still competes for near amounts (rule 3): a
/// payer who pays a closed invoice late must not pay another customer's invoice instead.
pub const COMPETITOR_HORIZON: Duration = Duration::days(1);

/// Why a transfer was not attached (the `reason` of its `crypto.unmatched_transfer` row).
pub mod reason {
    pub const UNREADABLE: &str = "zero or unreadable value";
    pub const NO_OPEN_INVOICE: &str = "no open invoice at the transfer's time";
    pub const NO_MATCH: &str = "the amount is not an open invoice's amount, nor its shortfall, \
                                nor within a tag below a fresh invoice's amount";
    pub const AMBIGUOUS_SHORTFALL: &str =
        "the shortfall of several partly paid invoices, none of them from this sender";
    pub const AMBIGUOUS_NEAR: &str = "within a tag below several open invoices' amounts";
    pub const COMPETITOR: &str = "within a tag below an open invoice's amount, but also within a \
                                  tag of another invoice's amount";
}

/// A confirmed incoming transfer of our token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer<'a> {
    /// Micro-USDT, > 0.
    pub amount: i64,
    pub from: &'a str,
    /// Block time.
    pub at: DateTime<Utc>,
}

/// What a transfer does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// It completes `invoice`; `total` = everything received, earlier partial transfer included.
    Complete { invoice: &'a Invoice, total: i64 },
    /// A partial payment of a fresh `invoice` (rule 3): `total` < the amount asked.
    Partial { invoice: &'a Invoice, total: i64 },
    /// Rule 3 has one candidate: decide again with the invoices near the amount.
    NeedsNearby,
    /// Attached to nothing; the reason is for an admin.
    Unmatched(&'static str),
}

/// The matching rules of one wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `CRYPTO_LATE_WINDOW_MINUTES`: how long after expiry an invoice still takes transfers.
    pub late_window: Duration,
}

impl Rules {
    pub fn new(late_window: std::time::Duration) -> Self {
        Self {
            late_window: Duration::from_std(late_window).unwrap_or(Duration::zero()),
        }
    }

    /// Whether `invoice` can take a transfer made at `at`: open, and `at` inside its window.
    pub fn is_candidate(&self, invoice: &Invoice, at: DateTime<Utc>) -> bool {
        invoice.status == CryptoInvoiceStatus::Open
            && invoice.created_at - CLOCK_TOLERANCE <= at
            && at <= invoice.expires_at + self.late_window
    }

    /// Whether a payer at `at` may still have meant `invoice` (any status): its window
    /// extended by [`COMPETITOR_HORIZON`] covers `at`.
    pub fn may_be_meant(&self, invoice: &Invoice, at: DateTime<Utc>) -> bool {
        invoice.created_at - CLOCK_TOLERANCE <= at
            && at <= invoice.expires_at + self.late_window + COMPETITOR_HORIZON
    }

    /// The invoices rule 3 must see for a transfer of `amount`: expected amount in
    /// `low..=high`, `expires_at ≥ expires_from`, `created_at ≤ created_to` (every status).
    pub fn nearby_range(&self, t: &Transfer<'_>) -> NearbyRange {
        NearbyRange {
            low: t.amount.saturating_sub(MAX_TAG),
            high: t.amount.saturating_add(MAX_TAG),
            expires_from: t.at - self.late_window - COMPETITOR_HORIZON,
            created_to: t.at + CLOCK_TOLERANCE,
        }
    }

    /// Applies the rules (module docs) to `t`. `invoices`: the wallet's open invoices (others
    /// and those outside their window are skipped). `nearby`: the wallet's invoices of every
    /// status in [`Self::nearby_range`], or `None` until [`Decision::NeedsNearby`] asks for
    /// them (extra rows are harmless: each is checked again).
    pub fn decide<'a>(
        &self,
        t: &Transfer<'_>,
        invoices: &'a [Invoice],
        nearby: Option<&[Invoice]>,
    ) -> Decision<'a> {
        let v = t.amount;
        if v <= 0 {
            return Decision::Unmatched(reason::UNREADABLE);
        }
        let open: Vec<&Invoice> = invoices
            .iter()
            .filter(|i| self.is_candidate(i, t.at))
            .collect();
        let received = |i: &Invoice| i.received_minor.unwrap_or(0);

        // 1. Exact.
        if let Some(&i) = open.iter().find(|i| i.expected_minor == v) {
            return Decision::Complete {
                invoice: i,
                total: received(i).saturating_add(v),
            };
        }
        // 2. Exact shortfall of a partly paid invoice.
        let short: Vec<&Invoice> = open
            .iter()
            .copied()
            .filter(|i| i.received_minor.is_some() && i.expected_minor - received(i) == v)
            .collect();
        let short = match short.as_slice() {
            [] => None,
            [one] => Some(*one),
            many => {
                let mine: Vec<&&Invoice> = many
                    .iter()
                    .filter(|i| i.from_address.as_deref() == Some(t.from))
                    .collect();
                match mine.as_slice() {
                    [one] => Some(**one),
                    _ => return Decision::Unmatched(reason::AMBIGUOUS_SHORTFALL),
                }
            }
        };
        if let Some(i) = short {
            return Decision::Complete {
                invoice: i,
                total: i.expected_minor,
            };
        }
        // 3. Within a tag below one fresh invoice, and nobody else's amount.
        let near: Vec<&Invoice> = open
            .iter()
            .copied()
            .filter(|i| {
                i.received_minor.is_none()
                    && i.expected_minor.saturating_sub(MAX_TAG) <= v
                    && v < i.expected_minor
            })
            .collect();
        match near.as_slice() {
            [] if open.is_empty() => Decision::Unmatched(reason::NO_OPEN_INVOICE),
            [] => Decision::Unmatched(reason::NO_MATCH),
            [one] => match nearby {
                None => Decision::NeedsNearby,
                Some(nearby) => {
                    let contested = nearby.iter().any(|other| {
                        other.id != one.id
                            && (other.expected_minor - v).abs() <= MAX_TAG
                            && self.may_be_meant(other, t.at)
                    });
                    if contested {
                        Decision::Unmatched(reason::COMPETITOR)
                    } else {
                        Decision::Partial {
                            invoice: one,
                            total: v,
                        }
                    }
                }
            },
            _ => Decision::Unmatched(reason::AMBIGUOUS_NEAR),
        }
    }
}

/// Where rule 3's competitors are looked for (see [`Rules::nearby_range`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearbyRange {
    pub low: i64,
    pub high: i64,
    pub expires_from: DateTime<Utc>,
    pub created_to: DateTime<Utc>,
}

/// The invoice's new status and the worker's instruction once `total` has been received, the
/// latest transfer at `at`: still open and underpaid below the amount; else late after
/// `expires_at`, paid when exact, overpaid above.
pub fn settle(
    invoice: &Invoice,
    total: i64,
    at: DateTime<Utc>,
    late_policy: LatePolicy,
) -> (CryptoInvoiceStatus, OutcomeKind) {
    let expected = invoice.expected_minor;
    if total < expected {
        (
            CryptoInvoiceStatus::Open,
            OutcomeKind::Underpaid {
                received: usdt(total),
                shortfall: usdt(expected - total),
            },
        )
    } else if at > invoice.expires_at {
        (
            CryptoInvoiceStatus::Late,
            OutcomeKind::Late {
                received: usdt(total),
                action: late_policy,
            },
        )
    } else if total == expected {
        (
            CryptoInvoiceStatus::Paid,
            OutcomeKind::Paid {
                amount: usdt(total),
            },
        )
    } else {
        (
            CryptoInvoiceStatus::Overpaid,
            OutcomeKind::Overpaid {
                received: usdt(total),
                surplus: usdt(total - expected),
            },
        )
    }
}

pub(crate) fn usdt(minor: i64) -> Money {
    Money::new(minor, Currency::Usdt)
}
