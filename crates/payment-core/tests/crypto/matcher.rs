//! The matching rules (`providers::crypto::matcher`) against a simple in-memory model of a
//! wallet: random invoices (fresh, partly paid, closed), random transfer sequences (dust,
//! exact, near, top-ups, more than asked, split payments, duplicates, any order, late), each
//! decision checked against the rules' definition of a match, written here independently.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use domain::CryptoInvoiceStatus;
use domain::entities::crypto_invoices::Model as Invoice;
use domain::money::Currency;
use payment_core::providers::crypto::matcher::{Decision, Rules, Transfer, settle};
use payment_core::providers::crypto::{LatePolicy, MAX_TAG};
use proptest::prelude::*;

const TTL_MINUTES: i64 = 30;
const LATE_MINUTES: i64 = 60;
/// Prices close enough that tag ranges overlap (half a tag range apart), one tag range apart
/// (a cent, with `MAX_TAG` = 9,999), and far away.
const PRICES: [i64; 4] = [
    2_000_000,
    2_000_000 + (MAX_TAG + 1) / 2,
    2_000_000 + MAX_TAG + 1,
    5_000_000,
];
const SPAMMER: &str = "TSpammer";
const OWNER: &str = "TWalletOwner";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap()
}

fn rules() -> Rules {
    Rules::new(std::time::Duration::from_secs(60 * LATE_MINUTES as u64))
}

fn customer(n: usize) -> String {
    format!("TCustomer{n}")
}

/// How an invoice starts.
#[derive(Debug, Clone)]
enum Start {
    Fresh,
    /// Open, `shortfall` still missing (an earlier near transfer of its customer).
    PartlyPaid {
        shortfall: i64,
    },
    Closed(CryptoInvoiceStatus),
}

#[derive(Debug, Clone)]
struct InvoiceSpec {
    price: usize,
    tag: i64,
    created_minutes: i64,
    start: Start,
}

/// A transfer, relative to invoice `n` (modulo the number of invoices) where it names one.
#[derive(Debug, Clone)]
enum Op {
    Dust(i64),
    Exact(usize),
    /// `k` below the invoice's amount (a dropped or cut tag).
    Near(usize, i64),
    /// The wallet owner moving money in.
    TopUp(i64),
    /// More than asked, not exact.
    Above(usize, i64),
    /// A near transfer, then (as a later operation) exactly the rest.
    Split(usize, i64),
    /// Transfer number `n` (modulo those so far) seen again: the same transaction.
    Duplicate(usize),
}

#[derive(Debug, Clone)]
struct Step {
    op: Op,
    /// Minutes after the named invoice's creation (or after `t0`).
    minutes: i64,
}

fn start() -> impl Strategy<Value = Start> {
    prop_oneof![
        5 => Just(Start::Fresh),
        2 => prop_oneof![1..=MAX_TAG, Just(500)].prop_map(|shortfall| Start::PartlyPaid { shortfall }),
        2 => prop_oneof![
            Just(CryptoInvoiceStatus::Paid),
            Just(CryptoInvoiceStatus::Overpaid),
            Just(CryptoInvoiceStatus::Expired),
            Just(CryptoInvoiceStatus::Underpaid),
            Just(CryptoInvoiceStatus::Late),
        ]
        .prop_map(Start::Closed),
    ]
}

fn invoice_spec() -> impl Strategy<Value = InvoiceSpec> {
    (0..PRICES.len(), 1..=MAX_TAG, 0i64..=240, start()).prop_map(
        |(price, tag, created_minutes, start)| InvoiceSpec {
            price,
            tag,
            created_minutes,
            start,
        },
    )
}

fn step() -> impl Strategy<Value = Step> {
    let op = prop_oneof![
        1 => (1i64..=10_000).prop_map(Op::Dust),
        3 => any::<usize>().prop_map(Op::Exact),
        2 => (any::<usize>(), 1..=MAX_TAG).prop_map(|(n, k)| Op::Near(n, k)),
        1 => (10_000_000i64..=1_000_000_000).prop_map(Op::TopUp),
        1 => (any::<usize>(), 1i64..=3_000_000).prop_map(|(n, k)| Op::Above(n, k)),
        2 => (any::<usize>(), 1..=MAX_TAG).prop_map(|(n, k)| Op::Split(n, k)),
        1 => any::<usize>().prop_map(Op::Duplicate),
    ];
    // Before creation, in time, in the late window, after it, and far later.
    (op, -5i64..=200).prop_map(|(op, minutes)| Step { op, minutes })
}

/// The model's invoices: unique amounts among the open ones, as the partial unique index
/// guarantees (a clashing open invoice starts closed instead).
fn invoices(specs: &[InvoiceSpec]) -> Vec<Invoice> {
    let mut open_amounts = HashSet::new();
    specs
        .iter()
        .enumerate()
        .map(|(n, spec)| {
            let expected = PRICES[spec.price] + spec.tag;
            let created = t0() + Duration::minutes(spec.created_minutes);
            let (mut status, received) = match spec.start {
                Start::Fresh => (CryptoInvoiceStatus::Open, None),
                Start::PartlyPaid { shortfall } => {
                    (CryptoInvoiceStatus::Open, Some(expected - shortfall))
                }
                Start::Closed(s) => (s, None),
            };
            if status == CryptoInvoiceStatus::Open && !open_amounts.insert(expected) {
                status = CryptoInvoiceStatus::Expired;
            }
            Invoice {
                id: n as i64 + 1,
                payment_id: domain::PaymentId::new(),
                network: "TRC20".into(),
                address: "TWallet".into(),
                expected_minor: expected,
                currency: Currency::Usdt,
                status,
                tx_id: None,
                event_index: None,
                received_minor: received,
                from_address: received.map(|_| customer(n)),
                confirmations: 0,
                paid_at: None,
                expires_at: created + Duration::minutes(TTL_MINUTES),
                created_at: created,
                updated_at: created,
            }
        })
        .collect()
}

/// A chain transfer: transaction id, sender, amount, time.
#[derive(Debug, Clone)]
struct Sent {
    tx: usize,
    from: String,
    amount: i64,
    at: DateTime<Utc>,
}

/// The transfers the steps describe, in the order they are processed (the rest of a split
/// payment comes after the next step's transfer).
fn transfers(steps: &[Step], invoices: &[Invoice]) -> Vec<Sent> {
    let mut out: Vec<Sent> = Vec::new();
    let mut pending: Option<Sent> = None;
    let mut next_tx = 0;
    for step in steps {
        let earlier = pending.take();
        let named = |n: usize| &invoices[n % invoices.len()];
        let of = |n: usize| customer(n % invoices.len());
        let at = |base: DateTime<Utc>| base + Duration::minutes(step.minutes);
        next_tx += 1;
        let new = |from: String, amount: i64, at: DateTime<Utc>| Sent {
            tx: next_tx,
            from,
            amount,
            at,
        };
        let sent = match step.op {
            Op::Dust(v) => Some(new(SPAMMER.into(), v, at(t0()))),
            Op::TopUp(v) => Some(new(OWNER.into(), v, at(t0()))),
            Op::Exact(n) => Some(new(of(n), named(n).expected_minor, at(named(n).created_at))),
            Op::Near(n, k) => Some(new(
                of(n),
                named(n).expected_minor - k,
                at(named(n).created_at),
            )),
            Op::Above(n, k) => Some(new(
                of(n),
                named(n).expected_minor + k,
                at(named(n).created_at),
            )),
            Op::Split(n, k) => {
                let first = at(named(n).created_at);
                pending = Some(Sent {
                    tx: next_tx + 1_000_000,
                    from: of(n),
                    amount: k,
                    at: first + Duration::minutes(1),
                });
                Some(new(of(n), named(n).expected_minor - k, first))
            }
            Op::Duplicate(n) => (!out.is_empty()).then(|| out[n % out.len()].clone()),
        };
        out.extend(sent);
        out.extend(earlier);
    }
    out.extend(pending);
    out
}

/// Open and inside its window at `at`.
fn takes_transfers(i: &Invoice, at: DateTime<Utc>) -> bool {
    i.status == CryptoInvoiceStatus::Open
        && i.created_at - Duration::minutes(2) <= at
        && at <= i.expires_at + Duration::minutes(LATE_MINUTES)
}

/// Whether a payer at `at` may still mean `i` (any status): window plus a day.
fn may_mean(i: &Invoice, at: DateTime<Utc>) -> bool {
    i.created_at - Duration::minutes(2) <= at
        && at <= i.expires_at + Duration::minutes(LATE_MINUTES) + Duration::days(1)
}

/// Runs the transfers through the rules, checking every decision; returns the credits
/// (transaction → invoice ids) and the final invoices.
fn run(mut state: Vec<Invoice>, sent: &[Sent]) -> Result<(), TestCaseError> {
    let rules = rules();
    let initial = state.clone();
    let mut claimed = HashSet::new();
    let mut credits: HashMap<usize, Vec<i64>> = HashMap::new();
    for s in sent {
        // `crypto_transfers` UNIQUE(network, tx_id, event_index): claimed once.
        if !claimed.insert(s.tx) {
            continue;
        }
        let t = Transfer {
            amount: s.amount,
            from: &s.from,
            at: s.at,
        };
        let before = state.clone();
        let mut decision = rules.decide(&t, &before, None);
        if decision == Decision::NeedsNearby {
            decision = rules.decide(&t, &before, Some(&before));
        }
        let v = s.amount;
        // Every exact transfer for an open invoice in its window lands on that invoice.
        let own = before
            .iter()
            .find(|i| i.expected_minor == v && takes_transfers(i, s.at));
        if let Some(own) = own {
            prop_assert!(
                matches!(decision, Decision::Complete { invoice, .. } if invoice.id == own.id),
                "exact {s:?} for {own:?}: {decision:?}"
            );
        }
        let (invoice, total) = match decision {
            Decision::Complete { invoice, total } => {
                let received = invoice.received_minor.unwrap_or(0);
                let exact = v == invoice.expected_minor && total == received + v;
                let rest = invoice.received_minor.is_some()
                    && invoice.expected_minor - received == v
                    && total == invoice.expected_minor;
                prop_assert!(exact || rest, "{s:?} completes {invoice:?} ({total})");
                prop_assert!(total >= invoice.expected_minor, "completed on less");
                (invoice, total)
            }
            Decision::Partial { invoice, total } => {
                prop_assert!(invoice.received_minor.is_none(), "partial of a partly paid");
                prop_assert!(total == v && v < invoice.expected_minor);
                prop_assert!(invoice.expected_minor - v <= MAX_TAG, "{s:?}: {invoice:?}");
                let competitor = before.iter().find(|j| {
                    j.id != invoice.id
                        && (j.expected_minor - v).abs() <= MAX_TAG
                        && may_mean(j, s.at)
                });
                prop_assert!(
                    competitor.is_none(),
                    "{s:?} credited to {invoice:?} though {competitor:?} may claim it"
                );
                (invoice, total)
            }
            Decision::Unmatched(_) => continue,
            Decision::NeedsNearby => {
                return Err(TestCaseError::fail("asked for nearby rows twice"));
            }
        };
        prop_assert!(takes_transfers(invoice, s.at), "{s:?} on {invoice:?}");
        let id = invoice.id;
        let (status, kind) = settle(invoice, total, s.at, LatePolicy::Complete);
        prop_assert_eq!(kind.completes(), total >= invoice.expected_minor);
        let row = state.iter_mut().find(|i| i.id == id).expect("invoice");
        row.status = status;
        row.received_minor = Some(total);
        row.from_address.get_or_insert_with(|| s.from.clone());
        credits.entry(s.tx).or_default().push(id);
    }
    // A transfer is applied at most once, and what an invoice received is the sum of what
    // was credited to it.
    let mut got: HashMap<i64, i64> = HashMap::new();
    for (tx, ids) in &credits {
        prop_assert_eq!(ids.len(), 1, "transfer {} applied {:?}", tx, ids);
        let amount = sent.iter().find(|s| s.tx == *tx).expect("sent").amount;
        *got.entry(ids[0]).or_default() += amount;
    }
    for (old, new) in initial.iter().zip(&state) {
        let credited = got.get(&new.id).copied().unwrap_or(0);
        prop_assert_eq!(
            new.received_minor.unwrap_or(0),
            old.received_minor.unwrap_or(0) + credited
        );
        if !matches!(
            new.status,
            CryptoInvoiceStatus::Open | CryptoInvoiceStatus::Expired
        ) && new.status != old.status
        {
            prop_assert!(
                new.received_minor.unwrap_or(0) >= new.expected_minor,
                "{new:?} completed on less than its amount"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn no_transfer_reaches_an_invoice_it_does_not_match(
        specs in prop::collection::vec(invoice_spec(), 1..8),
        steps in prop::collection::vec(step(), 0..24),
    ) {
        let state = invoices(&specs);
        let sent = transfers(&steps, &state);
        run(state, &sent)?;
    }
}

/// The field cases, one by one, on the pure rules.
mod cases {
    use super::*;

    fn open(n: usize, expected: i64) -> Invoice {
        let mut i = invoices(&[InvoiceSpec {
            price: 0,
            tag: 1,
            created_minutes: 0,
            start: Start::Fresh,
        }])
        .remove(0);
        i.id = n as i64;
        i.expected_minor = expected;
        i
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        t0() + Duration::minutes(minutes)
    }

    fn decide<'a>(from: &str, amount: i64, minutes: i64, all: &'a [Invoice]) -> Decision<'a> {
        let t = Transfer {
            amount,
            from,
            at: at(minutes),
        };
        match rules().decide(&t, all, None) {
            Decision::NeedsNearby => rules().decide(&t, all, Some(all)),
            d => d,
        }
    }

    #[test]
    fn dust_and_top_ups_are_not_attached_to_the_only_invoice() {
        let all = [open(1, 2_000_123)];
        assert!(matches!(
            decide(SPAMMER, 1, 5, &all),
            Decision::Unmatched(_)
        ));
        assert!(matches!(
            decide(OWNER, 100_000_000, 5, &all),
            Decision::Unmatched(_)
        ));
        assert!(matches!(
            decide(OWNER, 2_500_000, 5, &all),
            Decision::Unmatched(_)
        ));
    }

    #[test]
    fn a_dropped_tag_is_partial_unless_another_invoice_is_near() {
        let mut all = vec![open(1, 2_000_123)];
        assert_eq!(
            decide("A", 2_000_000, 5, &all),
            Decision::Partial {
                invoice: &all[0],
                total: 2_000_000
            }
        );
        // Another customer's invoice a tag away, closed hours ago but still meant.
        let mut other = open(2, 2_000_900);
        other.status = CryptoInvoiceStatus::Expired;
        all.push(other);
        assert!(matches!(
            decide("A", 2_000_000, 5, &all),
            Decision::Unmatched(_)
        ));
    }

    #[test]
    fn the_shortfall_goes_to_the_sender_among_equals() {
        let mut a = open(1, 2_000_500);
        a.received_minor = Some(2_000_000);
        a.from_address = Some("A".into());
        let mut b = open(2, 3_000_500);
        b.received_minor = Some(3_000_000);
        b.from_address = Some("B".into());
        let all = [a, b];
        assert_eq!(
            decide("B", 500, 5, &all),
            Decision::Complete {
                invoice: &all[1],
                total: 3_000_500
            }
        );
        assert!(matches!(decide("C", 500, 5, &all), Decision::Unmatched(_)));
    }

    #[test]
    fn an_exact_transfer_completes_a_partly_paid_invoice_overpaid() {
        let mut a = open(1, 2_000_500);
        a.received_minor = Some(2_000_000);
        let all = [a];
        assert_eq!(
            decide("A", 2_000_500, 5, &all),
            Decision::Complete {
                invoice: &all[0],
                total: 4_000_500
            }
        );
    }
}
