use std::sync::Arc;
use std::time::Duration;

use chrono::{Duration as Span, Utc};
use domain::CryptoInvoiceStatus;
use domain::entities::{crypto_invoices, system_logs};
use payment_core::providers::crypto::{
    ChainWatcher, LatePolicy, NoticeCheck, OutcomeKind, TronGridError, WatchError, matcher,
    watcher::UNMATCHED_EVENT,
};
use payment_core::{PaymentProvider, PaymentRef, PaymentStatus};
use sandbox::tron::{self, Fault, NewTransfer, TokenInfo};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, Statement,
};

use crate::helpers::{
    Env, FAKE_USDT, PAYER, PAYER2, WALLET, WALLET_OWNER, env, env_with, late_policy, usdt,
};

async fn status_of(
    env: &Env,
    inv: &payment_core::providers::crypto::ReservedInvoice,
) -> PaymentStatus {
    env.provider
        .get_payment_status(&PaymentRef {
            payment_id: inv.payment_id,
            provider_payment_id: inv.payment_id.to_string(),
            amount: inv.amount,
        })
        .await
        .expect("status")
        .status
}

#[tokio::test]
async fn an_exact_payment_completes() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    let tx = env.pay(PAYER, inv.amount.minor(), Utc::now());
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.invoices.len(), 1, "{out:?}");
    let o = &out.invoices[0];
    assert_eq!(o.payment_id, inv.payment_id);
    assert_eq!(o.kind, OutcomeKind::Paid { amount: inv.amount });
    assert!(o.kind.completes());
    assert_eq!(o.tx_id.as_deref(), Some(tx.as_str()));
    let row = env.row(&inv).await;
    assert_eq!(row.status, CryptoInvoiceStatus::Paid);
    assert_eq!(row.received_minor, Some(inv.amount.minor()));
    assert_eq!(row.tx_id.as_deref(), Some(tx.as_str()));
    assert_eq!(row.event_index, Some(0));
    assert_eq!(row.from_address.as_deref(), Some(PAYER));
    assert!(row.paid_at.is_some());
    assert_eq!(status_of(&env, &inv).await, PaymentStatus::Succeeded);
    // The request carried TronGrid's parameters.
    let q = &env.chain.requests()[0].query;
    for p in [
        "only_to=true",
        "only_confirmed=true",
        "contract_address=TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t",
        "order_by=block_timestamp%2Casc",
        "min_timestamp=",
        "limit=200",
    ] {
        assert!(q.contains(p), "{p} missing in {q}");
    }
}

/// Polls, asserting that no invoice changed; the number of new unmatched transfers.
async fn poll_unmatched(env: &Env) -> usize {
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert!(out.invoices.is_empty(), "{out:?}");
    out.unmatched
}

/// The reasons recorded for the unmatched transfers, oldest first.
async fn unmatched_reasons(env: &Env) -> Vec<String> {
    system_logs::Entity::find()
        .filter(system_logs::Column::EventType.eq(UNMATCHED_EVENT))
        .order_by_asc(system_logs::Column::Id)
        .all(&env.db.conn)
        .await
        .expect("logs")
        .into_iter()
        .map(|l| {
            l.metadata.expect("metadata")["reason"]
                .as_str()
                .expect("reason")
                .to_owned()
        })
        .collect()
}

/// The payer sends the price and forgets the tag: a partial payment (the payer is told the
/// tag is missing), then the tag completes it exactly.
#[tokio::test]
async fn a_dropped_tag_is_a_partial_then_the_tag_completes() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    let tag = inv.amount.minor() - 2_000_000;
    env.pay(PAYER, 2_000_000, Utc::now());
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(
        out.invoices[0].kind,
        OutcomeKind::Underpaid {
            received: usdt(2_000_000),
            shortfall: usdt(tag),
        }
    );
    assert!(!out.invoices[0].kind.completes());
    let row = env.row(&inv).await;
    assert_eq!(row.status, CryptoInvoiceStatus::Open);
    assert_eq!(row.received_minor, Some(2_000_000));
    assert_eq!(row.from_address.as_deref(), Some(PAYER));
    assert_eq!(status_of(&env, &inv).await, PaymentStatus::Pending);

    // The rest, from another wallet of the payer: exactly the shortfall.
    let tx = env.pay(PAYER2, tag, Utc::now());
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.invoices.len(), 1, "{out:?}");
    assert_eq!(
        out.invoices[0].kind,
        OutcomeKind::Paid { amount: inv.amount }
    );
    let row = env.row(&inv).await;
    assert_eq!(row.status, CryptoInvoiceStatus::Paid);
    assert_eq!(row.tx_id.as_deref(), Some(tx.as_str()));
    assert_eq!(
        row.from_address.as_deref(),
        Some(PAYER),
        "the first payer stays"
    );
    assert_eq!(status_of(&env, &inv).await, PaymentStatus::Succeeded);
}

/// More than asked but not the amount is nobody's payment; the exact amount on a partly
/// paid invoice completes it, and what came before is the surplus.
#[tokio::test]
async fn an_exact_transfer_completes_a_partly_paid_invoice_overpaid() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    env.pay(PAYER, 2_500_000, Utc::now());
    assert_eq!(poll_unmatched(&env).await, 1);
    assert_eq!(env.row(&inv).await.received_minor, None);

    env.pay(PAYER, 2_000_000, Utc::now());
    env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(env.row(&inv).await.received_minor, Some(2_000_000));
    // The payer, told the tag is missing, sends the whole amount again.
    env.pay(PAYER, inv.amount.minor(), Utc::now());
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(
        out.invoices[0].kind,
        OutcomeKind::Overpaid {
            received: usdt(2_000_000 + inv.amount.minor()),
            surplus: usdt(2_000_000),
        }
    );
    let row = env.row(&inv).await;
    assert_eq!(row.status, CryptoInvoiceStatus::Overpaid);
    assert_eq!(row.received_minor, Some(2_000_000 + inv.amount.minor()));
    assert_eq!(status_of(&env, &inv).await, PaymentStatus::Succeeded);
}

/// Address-poisoning spam: 0.000001 USDT to the wallet while one invoice is open.
#[tokio::test]
async fn a_dust_transfer_is_not_attached_and_the_exact_transfer_still_completes() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    env.pay(PAYER2, 1, Utc::now());
    assert_eq!(poll_unmatched(&env).await, 1);
    let row = env.row(&inv).await;
    assert_eq!((row.received_minor, row.from_address), (None, None));

    env.pay(PAYER, inv.amount.minor(), Utc::now());
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(
        out.invoices[0].kind,
        OutcomeKind::Paid { amount: inv.amount }
    );
    let row = env.row(&inv).await;
    assert_eq!(row.status, CryptoInvoiceStatus::Paid);
    assert_eq!(row.received_minor, Some(inv.amount.minor()));
    assert_eq!(row.from_address.as_deref(), Some(PAYER));
    assert_eq!(unmatched_reasons(&env).await, [matcher::reason::NO_MATCH]);
}

/// The wallet's owner moves 100 USDT in while one invoice is open, then while two are.
#[tokio::test]
async fn a_wallet_top_up_completes_no_invoice() {
    let env = env().await;
    let only = env.invoice(2_000_000).await;
    env.pay(WALLET_OWNER, 100_000_000, Utc::now());
    assert_eq!(poll_unmatched(&env).await, 1);
    let other = env.invoice(100_000_000).await;
    // Less than the other invoice asks, by more than a tag.
    env.pay(WALLET_OWNER, 99_000_000, Utc::now());
    assert_eq!(poll_unmatched(&env).await, 1);
    for inv in [&only, &other] {
        let row = env.row(inv).await;
        assert_eq!(row.status, CryptoInvoiceStatus::Open);
        assert_eq!(row.received_minor, None);
    }
    assert_eq!(unmatched_reasons(&env).await.len(), 2);
}

/// Customer A's invoice is partly paid, then customer B (same price, another tag) sends the
/// price without the tag: near B's amount, but near A's too, so neither gets it; the same
/// when A's invoice has expired.
#[tokio::test]
async fn a_near_amount_never_reaches_another_customers_invoice() {
    let env = env().await;
    let a = env.invoice(2_000_000).await;
    env.pay(PAYER, 2_000_000, Utc::now());
    env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(env.row(&a).await.received_minor, Some(2_000_000));
    let b = env.invoice(2_000_000).await;
    env.pay(PAYER2, 2_000_000, Utc::now());
    assert_eq!(poll_unmatched(&env).await, 1);
    assert_eq!(env.row(&a).await.received_minor, Some(2_000_000));
    assert_eq!(env.row(&b).await.received_minor, None);
    assert_eq!(unmatched_reasons(&env).await, [matcher::reason::COMPETITOR]);

    // A closed invoice competes too: C expired two hours ago, D is fresh.
    let env = crate::helpers::env().await;
    let c = env.invoice_at(3_000_000, Utc::now() - Span::hours(2)).await;
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert!(matches!(out.invoices[0].kind, OutcomeKind::Expired { .. }));
    assert_eq!(env.row(&c).await.status, CryptoInvoiceStatus::Expired);
    let d = env.invoice(3_000_000).await;
    env.pay(PAYER2, 3_000_000, Utc::now());
    assert_eq!(poll_unmatched(&env).await, 1);
    assert_eq!(env.row(&d).await.received_minor, None);
    assert_eq!(unmatched_reasons(&env).await, [matcher::reason::COMPETITOR]);
}

/// A's invoice expired (late window over); A pays its exact amount anyway, which lies a tag
/// below B's new invoice: B is not credited.
#[tokio::test]
async fn a_late_exact_amount_of_a_closed_invoice_is_not_given_to_another() {
    let env = env().await;
    let a = env.invoice_at(2_000_000, Utc::now() - Span::hours(3)).await;
    env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(env.row(&a).await.status, CryptoInvoiceStatus::Expired);
    // B's price is A's amount: B asks A's amount plus a tag.
    let b = env.invoice(a.amount.minor()).await;
    assert!(b.amount.minor() - a.amount.minor() <= payment_core::providers::crypto::MAX_TAG);
    env.pay(PAYER, a.amount.minor(), Utc::now());
    assert_eq!(poll_unmatched(&env).await, 1);
    assert_eq!(env.row(&a).await.status, CryptoInvoiceStatus::Expired);
    assert_eq!(env.row(&b).await.received_minor, None);
    assert_eq!(unmatched_reasons(&env).await, [matcher::reason::COMPETITOR]);
    // B's own exact amount still pays B.
    env.pay(PAYER2, b.amount.minor(), Utc::now());
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.invoices[0].kind, OutcomeKind::Paid { amount: b.amount });
}

async fn late_case(policy: LatePolicy) -> (Env, OutcomeKind, PaymentStatus) {
    let env = env_with(late_policy(policy)).await;
    let created = Utc::now() - Span::minutes(40);
    let inv = env.invoice_at(2_000_000, created).await;
    // Expired 10 minutes ago; paid 5 minutes ago: inside the 60-minute late window.
    env.pay(PAYER, inv.amount.minor(), Utc::now() - Span::minutes(5));
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.invoices.len(), 1, "{out:?}");
    assert_eq!(env.row(&inv).await.status, CryptoInvoiceStatus::Late);
    let status = status_of(&env, &inv).await;
    (env, out.invoices[0].kind.clone(), status)
}

#[tokio::test]
async fn a_late_payment_completes_under_the_complete_policy() {
    let (_env, kind, status) = late_case(LatePolicy::Complete).await;
    assert!(
        matches!(
            kind,
            OutcomeKind::Late {
                action: LatePolicy::Complete,
                received,
            } if received.minor() > 2_000_000
        ),
        "{kind:?}"
    );
    assert!(kind.completes());
    assert_eq!(status, PaymentStatus::Succeeded);
}

#[tokio::test]
async fn a_late_payment_is_flagged_under_the_flag_policy() {
    let (_env, kind, status) = late_case(LatePolicy::Flag).await;
    assert!(matches!(
        kind,
        OutcomeKind::Late {
            action: LatePolicy::Flag,
            ..
        }
    ));
    assert!(!kind.completes());
    assert_eq!(status, PaymentStatus::Expired);
}

#[tokio::test]
async fn a_payment_after_the_late_window_is_not_matched_and_the_invoice_expires() {
    let env = env().await;
    let then = Utc::now() - Span::hours(3);
    let inv = env.invoice_at(2_000_000, then).await;
    let partial = env.invoice_at(3_000_000, then).await;
    // The price without the tag: short by the tag, and closest to `partial` only.
    env.pay(PAYER2, 3_000_000, then + Span::minutes(1));
    // A poll back then saw the partial payment.
    let early = env
        .watcher
        .poll_at(&env.db.conn, then + Span::minutes(2))
        .await
        .expect("poll");
    assert_eq!(early.invoices.len(), 1, "{early:?}");
    // Paid two hours after expiry: too late even for the window.
    env.pay(PAYER, inv.amount.minor(), Utc::now() - Span::minutes(30));
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.unmatched, 1, "{out:?}");
    let expired: Vec<_> = out
        .invoices
        .iter()
        .filter(|o| matches!(o.kind, OutcomeKind::Expired { .. }))
        .collect();
    assert_eq!(expired.len(), 2, "{out:?}");
    assert_eq!(env.row(&inv).await.status, CryptoInvoiceStatus::Expired);
    assert_eq!(
        env.row(&partial).await.status,
        CryptoInvoiceStatus::Underpaid
    );
    assert!(
        out.invoices
            .iter()
            .any(|o| o.payment_id == partial.payment_id
                && o.kind
                    == OutcomeKind::Expired {
                        received: Some(usdt(3_000_000))
                    })
    );
    assert_eq!(status_of(&env, &inv).await, PaymentStatus::Expired);
    assert_eq!(status_of(&env, &partial).await, PaymentStatus::Expired);
}

#[tokio::test]
async fn a_fake_usdt_transfer_of_the_right_amount_is_ignored() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    env.chain.add_transfer(
        NewTransfer::usdt(PAYER, WALLET, inv.amount.minor()).token(TokenInfo::fake_usdt(FAKE_USDT)),
    );
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert!(out.invoices.is_empty(), "{out:?}");
    assert_eq!(env.row(&inv).await.status, CryptoInvoiceStatus::Open);
}

#[tokio::test]
async fn a_transfer_to_another_address_is_ignored() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    env.chain
        .add_transfer(NewTransfer::usdt(PAYER, PAYER2, inv.amount.minor()));
    // And one *from* our wallet (only_to leaves it out).
    env.chain
        .add_transfer(NewTransfer::usdt(WALLET, PAYER2, inv.amount.minor()));
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert!(out.invoices.is_empty(), "{out:?}");
    assert_eq!(out.fetched, 0);
    assert_eq!(env.row(&inv).await.status, CryptoInvoiceStatus::Open);
}

#[tokio::test]
async fn an_unconfirmed_transfer_waits_for_confirmation() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    let tx = env
        .chain
        .add_transfer(NewTransfer::usdt(PAYER, WALLET, inv.amount.minor()).unconfirmed(None));
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert!(out.invoices.is_empty());
    assert!(env.chain.confirm(&tx));
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.invoices.len(), 1);
}

/// The same transfer, fetched again (overlapping polls) or offered to a second invoice of the
/// same amount, is applied once.
#[tokio::test]
async fn a_transfer_is_used_at_most_once() {
    let env = env().await;
    let first = env.invoice(2_000_000).await;
    env.pay(PAYER, first.amount.minor(), Utc::now());
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.invoices.len(), 1);
    // A new open invoice asking the very same amount (free again once the first was paid).
    let second_payment = crate::helpers::payment(&env.db.conn, env.tariff_id, first.amount).await;
    let now = Utc::now();
    crypto_invoices::ActiveModel {
        payment_id: Set(second_payment),
        network: Set("TRC20".into()),
        address: Set(WALLET.into()),
        expected_minor: Set(first.amount.minor()),
        currency: Set(domain::money::Currency::Usdt),
        status: Set(CryptoInvoiceStatus::Open),
        confirmations: Set(0),
        expires_at: Set(now + Span::minutes(30)),
        created_at: Set(now - Span::minutes(10)),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&env.db.conn)
    .await
    .expect("second invoice");
    // Rewind the cursor so the old transfer is fetched again.
    env.db
        .conn
        .execute_unprepared("UPDATE crypto_watch_cursors SET cursor_ms = 0")
        .await
        .expect("rewind");
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert!(out.invoices.is_empty(), "{out:?}");
    assert_eq!((out.fetched, out.duplicates, out.new_transfers), (1, 1, 0));
    let open = crypto_invoices::Entity::find()
        .filter(crypto_invoices::Column::PaymentId.eq(second_payment.into_inner()))
        .one(&env.db.conn)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(open.status, CryptoInvoiceStatus::Open);
}

#[tokio::test]
async fn two_transfers_in_one_transaction_are_two_events() {
    let env = env().await;
    let a = env.invoice(2_000_000).await;
    let b = env.invoice(2_000_000).await;
    let tx = "ab".repeat(32);
    let at = Utc::now().timestamp_millis();
    env.chain.add_transfer(
        NewTransfer::usdt(PAYER, WALLET, a.amount.minor())
            .tx(&tx)
            .at(at),
    );
    env.chain.add_transfer(
        NewTransfer::usdt(PAYER, WALLET, b.amount.minor())
            .tx(&tx)
            .at(at),
    );
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.invoices.len(), 2, "{out:?}");
    assert_eq!(env.row(&a).await.status, CryptoInvoiceStatus::Paid);
    assert_eq!(env.row(&b).await.status, CryptoInvoiceStatus::Paid);
}

#[tokio::test]
async fn history_is_read_across_pages() {
    let env = env_with(|s| s.page_size = 2).await;
    let mut invoices = Vec::new();
    for _ in 0..5 {
        invoices.push(env.invoice(2_000_000).await);
    }
    let start = Utc::now() - Span::seconds(30);
    for (n, inv) in invoices.iter().enumerate() {
        env.pay(PAYER, inv.amount.minor(), start + Span::seconds(n as i64));
    }
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.fetched, 5);
    assert_eq!(out.invoices.len(), 5, "{out:?}");
    assert!(out.complete);
    assert_eq!(env.chain.request_count(tron::route::TRC20_HISTORY), 3);
    for inv in &invoices {
        assert_eq!(env.row(inv).await.status, CryptoInvoiceStatus::Paid);
    }
}

#[tokio::test]
async fn a_poll_stops_at_max_pages_and_the_next_one_continues() {
    let env = env_with(|s| {
        s.page_size = 2;
        s.max_pages = 1;
    })
    .await;
    let mut invoices = Vec::new();
    for _ in 0..3 {
        invoices.push(env.invoice(2_000_000).await);
    }
    let start = Utc::now() - Span::seconds(30);
    for (n, inv) in invoices.iter().enumerate() {
        env.pay(PAYER, inv.amount.minor(), start + Span::seconds(n as i64));
    }
    // Two rows fetched; the newest block time is left for the next poll (a transaction
    // could have been cut by the page limit).
    let first = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert!(!first.complete);
    assert_eq!(first.invoices.len(), 1, "{first:?}");
    let second = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(second.invoices.len(), 2, "{second:?}");
    for inv in &invoices {
        assert_eq!(env.row(inv).await.status, CryptoInvoiceStatus::Paid);
    }
}

#[tokio::test]
async fn rate_limiting_backs_off_and_succeeds() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    env.pay(PAYER, inv.amount.minor(), Utc::now());
    // Two limited answers: the client's own retries get through.
    env.chain.push_fault(Fault::RateLimited { status: 429 }, 1);
    env.chain.push_fault(Fault::RateLimited { status: 403 }, 1);
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.invoices.len(), 1);
    assert_eq!(env.chain.request_count(tron::route::TRC20_HISTORY), 3);

    // Limited on every attempt: a typed error with TronGrid's suspension time; nothing
    // changes, and the next poll works.
    let other = env.invoice(2_000_000).await;
    env.pay(PAYER, other.amount.minor(), Utc::now());
    env.chain.push_fault(Fault::RateLimited { status: 403 }, 3);
    let err = env
        .watcher
        .poll_once(&env.db.conn)
        .await
        .expect_err("limited");
    assert!(
        matches!(
            err,
            WatchError::TronGrid(TronGridError::RateLimited { status: 403, .. })
        ),
        "{err}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(env.row(&other).await.status, CryptoInvoiceStatus::Open);
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.invoices.len(), 1, "{out:?}");
    assert_eq!(env.row(&other).await.status, CryptoInvoiceStatus::Paid);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    env.pay(PAYER, inv.amount.minor(), Utc::now());
    env.chain.push_fault(Fault::ServerError { status: 502 }, 2);
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.invoices.len(), 1);
}

#[tokio::test]
async fn an_unmatched_transfer_is_recorded_for_an_admin() {
    let env = env().await;
    let tx = env.pay(PAYER, 7_777_777, Utc::now());
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.unmatched, 1);
    let logs = system_logs::Entity::find()
        .filter(system_logs::Column::EventType.eq(UNMATCHED_EVENT))
        .all(&env.db.conn)
        .await
        .expect("logs");
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].amount_minor, Some(7_777_777));
    assert_eq!(logs[0].provider, Some(payment_core::providers::crypto::ID));
    let meta = logs[0].metadata.clone().expect("metadata");
    assert_eq!(meta["tx_id"], serde_json::json!(tx));
    assert_eq!(meta["from"], serde_json::json!(PAYER));
    let row = env
        .db
        .conn
        .query_one_raw(Statement::from_string(
            env.db.conn.get_database_backend(),
            "SELECT outcome FROM crypto_transfers",
        ))
        .await
        .expect("query")
        .expect("row");
    assert_eq!(
        row.try_get::<String>("", "outcome").expect("outcome"),
        "unmatched"
    );
    // Seen again: recorded once.
    env.db
        .conn
        .execute_unprepared("UPDATE crypto_watch_cursors SET cursor_ms = 0")
        .await
        .expect("rewind");
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!((out.unmatched, out.duplicates), (0, 1));
}

#[tokio::test]
async fn an_ambiguous_amount_is_not_guessed() {
    let env = env().await;
    let a = env.invoice(2_000_000).await;
    let b = env.invoice(2_000_000).await;
    // Neither invoice's amount, and both are equally close.
    env.pay(PAYER, 2_000_000, Utc::now());
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.unmatched, 1, "{out:?}");
    assert_eq!(env.row(&a).await.received_minor, None);
    assert_eq!(env.row(&b).await.received_minor, None);
}

#[tokio::test]
async fn a_notice_naming_an_unknown_transaction_changes_nothing() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    let forged = "0f".repeat(32);
    let check = env
        .watcher
        .check_transaction(&env.db.conn, &forged)
        .await
        .expect("check");
    assert_eq!(check, NoticeCheck::NotOnChain);
    assert_eq!(env.chain.request_count(tron::route::TRC20_HISTORY), 0);
    assert_eq!(env.row(&inv).await.status, CryptoInvoiceStatus::Open);
    assert!(matches!(
        env.watcher
            .check_transaction(&env.db.conn, "not-a-tx")
            .await,
        Err(WatchError::InvalidTxId(_))
    ));
    // Known but not confirmed yet: the same.
    let pending = env
        .chain
        .add_transfer(NewTransfer::usdt(PAYER, WALLET, inv.amount.minor()).unconfirmed(None));
    assert_eq!(
        env.watcher
            .check_transaction(&env.db.conn, &pending)
            .await
            .expect("check"),
        NoticeCheck::NotOnChain
    );
    // Confirmed: the chain check applies it.
    env.chain.confirm(&pending);
    match env
        .watcher
        .check_transaction(&env.db.conn, &pending)
        .await
        .expect("check")
    {
        NoticeCheck::Polled(out) => assert_eq!(out.invoices.len(), 1, "{out:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(env.row(&inv).await.status, CryptoInvoiceStatus::Paid);
}

#[tokio::test]
async fn one_worker_polls_a_wallet_at_a_time() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    env.pay(PAYER, inv.amount.minor(), Utc::now());
    let other = ChainWatcher::new(env.watcher.settings().clone()).expect("watcher");
    // The other worker is mid-poll: it holds the lease.
    other.poll_once(&env.db.conn).await.expect("prime");
    env.db
        .conn
        .execute_unprepared(&format!(
            "UPDATE crypto_watch_cursors SET lease_owner = '{}', lease_until = now() + interval '1 minute'",
            uuid::Uuid::new_v4()
        ))
        .await
        .expect("lease");
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert!(out.skipped);
    // Concurrent polls of many watchers: each transfer is applied once in total.
    env.db
        .conn
        .execute_unprepared(
            "UPDATE crypto_watch_cursors SET lease_owner = NULL, lease_until = NULL, cursor_ms = 0",
        )
        .await
        .expect("free");
    let more = [env.invoice(2_000_000).await, env.invoice(2_000_000).await];
    for inv in &more {
        env.pay(PAYER, inv.amount.minor(), Utc::now());
    }
    let watchers: Vec<Arc<ChainWatcher>> = (0..4)
        .map(|_| Arc::new(ChainWatcher::new(env.watcher.settings().clone()).expect("w")))
        .collect();
    let mut tasks = Vec::new();
    for w in watchers {
        let db = env.db.conn.clone();
        tasks.push(tokio::spawn(async move {
            w.poll_once(&db).await.expect("poll")
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.expect("task").invoices.len();
    }
    assert_eq!(applied, 2);
    for inv in &more {
        assert_eq!(env.row(inv).await.status, CryptoInvoiceStatus::Paid);
    }
}

/// The embedded mode's backend: the same SQL works on SQLite.
#[tokio::test]
async fn the_watcher_works_on_sqlite() {
    let env = crate::helpers::env_on(testkit::TestDb::sqlite().await, |_| {}).await;
    let inv = env.invoice(2_000_000).await;
    let short = env.invoice(9_000_000).await;
    let again = env
        .provider
        .reserve_invoice(&env.db.conn, inv.payment_id, usdt(2_000_000), Utc::now())
        .await
        .expect("idempotent");
    assert_eq!(again.invoice_id, inv.invoice_id);
    env.pay(PAYER, inv.amount.minor(), Utc::now());
    // The price without the tag: a partial payment (the competitor check runs on SQLite too).
    env.pay(PAYER2, 9_000_000, Utc::now());
    env.pay(PAYER, 1, Utc::now());
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.invoices.len(), 2, "{out:?}");
    assert_eq!(out.unmatched, 1, "{out:?}");
    assert_eq!(env.row(&inv).await.status, CryptoInvoiceStatus::Paid);
    assert_eq!(env.row(&short).await.received_minor, Some(9_000_000));
    assert_eq!(status_of(&env, &inv).await, PaymentStatus::Succeeded);
    let out = env
        .watcher
        .poll_once(&env.db.conn)
        .await
        .expect("poll again");
    assert_eq!((out.duplicates, out.new_transfers), (3, 0), "{out:?}");
    // Expiry, as of two hours later.
    let later = env
        .watcher
        .poll_at(&env.db.conn, Utc::now() + Span::hours(2))
        .await
        .expect("poll later");
    assert!(
        later
            .invoices
            .iter()
            .any(|o| o.payment_id == short.payment_id
                && o.kind
                    == OutcomeKind::Expired {
                        received: Some(usdt(9_000_000))
                    }),
        "{later:?}"
    );
}

/// Rows TronGrid should have filtered out (another token calling itself USDT, another
/// recipient, an `Approval`) are checked again and never matched.
#[tokio::test]
async fn rows_the_api_should_have_filtered_are_checked_again() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let server = MockServer::start().await;
    let env = crate::helpers::env_on(testkit::TestDb::new().await, |s| {
        s.api_url = server.uri();
    })
    .await;
    let inv = env.invoice(2_000_000).await;
    let at = Utc::now().timestamp_millis();
    let row = |token: &str, to: &str, kind: &str, tx: &str| {
        serde_json::json!({
            "transaction_id": tx,
            "token_info": {"symbol": "USDT", "address": token, "decimals": 6, "name": "Tether USD"},
            "block_timestamp": at,
            "from": PAYER,
            "to": to,
            "type": kind,
            "value": inv.amount.minor().to_string(),
        })
    };
    let usdt_contract = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t";
    Mock::given(method("GET"))
        .and(path(format!("/v1/accounts/{WALLET}/transactions/trc20")))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": [
                row(FAKE_USDT, WALLET, "Transfer", &"01".repeat(32)),
                row(usdt_contract, PAYER2, "Transfer", &"02".repeat(32)),
                row(usdt_contract, WALLET, "Approval", &"03".repeat(32)),
            ],
            "success": true,
            "meta": {"at": at, "page_size": 3},
        })))
        .mount(&server)
        .await;
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(
        (out.fetched, out.ignored, out.new_transfers),
        (3, 3, 0),
        "{out:?}"
    );
    assert!(out.invoices.is_empty());
    assert_eq!(env.row(&inv).await.status, CryptoInvoiceStatus::Open);
}

#[tokio::test]
async fn a_transfer_older_than_the_invoice_does_not_pay_it() {
    let env = env().await;
    let inv = env.invoice(2_000_000).await;
    env.pay(PAYER, inv.amount.minor(), Utc::now() - Span::minutes(10));
    let out = env.watcher.poll_once(&env.db.conn).await.expect("poll");
    assert_eq!(out.unmatched, 1, "{out:?}");
    assert_eq!(env.row(&inv).await.status, CryptoInvoiceStatus::Open);
}

#[tokio::test]
async fn the_api_key_is_sent_and_a_refusal_is_not_retried() {
    let db = testkit::TestDb::new().await;
    let chain = tron::spawn(tron::Config {
        api_key: Some("key-1".into()),
        ..tron::Config::default()
    })
    .await
    .expect("emulator");
    let mut s = crate::helpers::settings(&chain.base_url);
    s.api_key = Some("key-1".to_owned().into());
    let watcher = ChainWatcher::new(s.clone()).expect("watcher");
    let out = watcher.poll_once(&db.conn).await;
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(watcher.delay_after(&out), s.poll_interval);
    assert_eq!(chain.requests()[0].api_key.as_deref(), Some("key-1"));

    s.api_key = Some("wrong".to_owned().into());
    let watcher = ChainWatcher::new(s.clone()).expect("watcher");
    let err = watcher.poll_once(&db.conn).await;
    assert!(
        matches!(
            err,
            Err(WatchError::TronGrid(TronGridError::Rejected {
                status: 401,
                ..
            }))
        ),
        "{err:?}"
    );
    assert_eq!(watcher.delay_after(&err), s.poll_interval * 2);
    assert_eq!(chain.requests().len(), 2, "a 401 is not retried");

    // Rate limited: wait what TronGrid asked (30 s).
    s.api_key = Some("key-1".to_owned().into());
    let watcher = ChainWatcher::new(s).expect("watcher");
    chain.push_fault(Fault::RateLimited { status: 429 }, 3);
    let limited = watcher.poll_once(&db.conn).await;
    assert_eq!(watcher.delay_after(&limited), Duration::from_secs(30));

    // A suspension of a day is capped at five minutes (issue 18).
    let day = Err(WatchError::TronGrid(TronGridError::RateLimited {
        status: 403,
        message: "suspended for 86400s".to_owned(),
        retry_after: Duration::from_secs(86_400),
    }));
    assert_eq!(watcher.delay_after(&day), outbound::MAX_ASKED_PAUSE);
}
