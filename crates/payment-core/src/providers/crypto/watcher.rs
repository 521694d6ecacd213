//! The chain watcher: reads the wallet's confirmed TRC20 history from TronGrid and matches
//! transfers to invoices by the rules of [`matcher`]: the exact amount of an open invoice,
//! the exact shortfall of a partly paid one, or — a payer who dropped the tag — less than a
//! tag below one fresh invoice's amount when no other invoice is that near. Dust, top-ups and
//! every other amount are recorded as unmatched for an admin (`system_logs`
//! `crypto.unmatched_transfer`, with the reason) and never attached to an invoice.
//!
//! It changes only its own rows (`crypto_invoices`, `crypto_transfers`,
//! `crypto_watch_cursors`, and `system_logs` for unmatched transfers), in one transaction
//! per poll, and returns per invoice what happened ([`InvoiceOutcome`]); moving the payment
//! (succeeded, flagged, expired) is the worker's job.
//!
//! Safe with several workers: a poll first takes a lease on the wallet's cursor row (an
//! `UPDATE … WHERE lease is free`), so one worker polls a wallet at a time, and every
//! transfer is claimed by inserting it into `crypto_transfers` under
//! `UNIQUE(network, tx_id, event_index)` before it may touch an invoice — a transfer seen
//! twice (overlapping polls, a notice, a second worker) is applied once.
//!
//! What the caller must announce exactly once (the payer's shortfall after a partial
//! transfer) it writes through an [`OutcomeSink`]: the sink runs inside the poll's
//! transaction, so its rows commit together with the transfer that caused them, or not at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use chrono::{DateTime, Utc};
use domain::entities::{crypto_invoices, system_logs};
use domain::money::{Currency, Money};
use domain::{CryptoInvoiceStatus, PaymentId};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, Statement, TransactionTrait, Value,
};
use uuid::Uuid;

use super::client::{History, HistoryQuery, TronGridClient, TronGridError};
use super::matcher::{self, Rules, Transfer, usdt};
use super::transformers::Trc20Transfer;
use super::{CryptoSettings, LatePolicy};

/// `system_logs.event_type` of a transfer no invoice claims.
pub const UNMATCHED_EVENT: &str = "crypto.unmatched_transfer";

/// What a poll found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Per invoice, what the worker must do, in chain order.
    pub invoices: Vec<InvoiceOutcome>,
    /// Rows TronGrid returned.
    pub fetched: usize,
    /// Transfers seen for the first time (matched or not).
    pub new_transfers: usize,
    /// Transfers already recorded by an earlier poll.
    pub duplicates: usize,
    /// Rows that are not an incoming transfer of our token to our wallet (fake tokens,
    /// other recipients, `Approval` rows).
    pub ignored: usize,
    /// New transfers no invoice claims (recorded for an admin).
    pub unmatched: usize,
    /// Where the next poll starts (ms).
    pub cursor_ms: i64,
    /// False when more history is waiting (poll again soon).
    pub complete: bool,
    /// Another worker holds the wallet's lease; nothing was done.
    pub skipped: bool,
}

/// What happened to one invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceOutcome {
    pub payment_id: PaymentId,
    pub invoice_id: i64,
    pub kind: OutcomeKind,
    /// The transfer that caused it (`None` for an expiry).
    pub tx_id: Option<String>,
    /// Block time of that transfer, or the poll time for an expiry.
    pub at: DateTime<Utc>,
}

/// The worker's instruction for a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Exactly the amount, in time: complete the payment.
    Paid { amount: Money },
    /// More than the amount, in time (the exact amount on top of an earlier partial
    /// transfer): complete it and record the surplus.
    Overpaid { received: Money, surplus: Money },
    /// A transfer less than a tag short of a fresh invoice: the invoice stays open until it
    /// expires; tell the payer the shortfall (a transfer of exactly the rest, or of the whole
    /// amount, completes it).
    Underpaid { received: Money, shortfall: Money },
    /// Completed after `expires_at` but inside the late window: complete or flag, per
    /// `CRYPTO_LATE_POLICY` (`action`).
    Late { received: Money, action: LatePolicy },
    /// The late window passed without the full amount: expire the payment (`received` is
    /// what arrived, if anything — an admin's case).
    Expired { received: Option<Money> },
}

impl OutcomeKind {
    /// Whether the worker should mark the payment succeeded.
    pub fn completes(&self) -> bool {
        matches!(
            self,
            OutcomeKind::Paid { .. }
                | OutcomeKind::Overpaid { .. }
                | OutcomeKind::Late {
                    action: LatePolicy::Complete,
                    ..
                }
        )
    }
}

/// The result of checking a transaction named by a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeCheck {
    /// The solidity node does not know it (forged, or not confirmed yet): nothing changes.
    NotOnChain,
    /// It exists but failed (`REVERT`, …): nothing changes.
    Failed { result: String },
    /// It is confirmed; the history was polled, which applies it if it pays an invoice.
    Polled(PollOutcome),
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    TronGrid(#[from] TronGridError),
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("not a transaction id (64 hex digits): {0:?}")]
    InvalidTxId(String),
}

impl WatchError {
    /// How long TronGrid asked us to wait (rate limiting).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            WatchError::TronGrid(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// Writes the caller's own rows about an outcome inside the poll's transaction (see the
/// module docs). An error rolls the whole poll back; the next poll sees the same transfers.
#[async_trait]
pub trait OutcomeSink: Send + Sync {
    async fn record(
        &self,
        txn: &DatabaseTransaction,
        outcome: &InvoiceOutcome,
    ) -> Result<(), DbErr>;
}

/// Polls TronGrid for one wallet and token (from [`CryptoSettings`]).
#[derive(Clone)]
pub struct ChainWatcher {
    settings: CryptoSettings,
    client: TronGridClient,
    /// This watcher's lease identity.
    owner: Uuid,
    sink: Option<Arc<dyn OutcomeSink>>,
}

impl std::fmt::Debug for ChainWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainWatcher")
            .field("settings", &self.settings)
            .field("owner", &self.owner)
            .field("sink", &self.sink.is_some())
            .finish_non_exhaustive()
    }
}

/// What the watcher does with a transfer ([`matcher::Decision`], rows owned).
enum Decision {
    /// Record `total` received on the invoice: it completes it or is a partial payment.
    Settle(crypto_invoices::Model, i64),
    Unmatched(&'static str),
}

impl ChainWatcher {
    pub fn new(settings: CryptoSettings) -> Result<Self, WatchError> {
        let client =
            TronGridClient::new(&settings.api_url, settings.api_key.clone(), settings.retry)?;
        Ok(Self {
            settings,
            client,
            owner: Uuid::new_v4(),
            sink: None,
        })
    }

    /// Hands every outcome to `sink` inside the poll's transaction.
    #[must_use]
    pub fn with_sink(mut self, sink: Arc<dyn OutcomeSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    pub fn settings(&self) -> &CryptoSettings {
        &self.settings
    }

    pub fn client(&self) -> &TronGridClient {
        &self.client
    }

    fn cursor_key(&self) -> String {
        format!(
            "{}:{}:{}",
            self.settings.network(),
            self.settings.wallet_address,
            self.settings.usdt_contract
        )
    }

    fn lease(&self) -> chrono::Duration {
        let d = (self.settings.retry.request_timeout * 4).max(Duration::from_secs(120));
        chrono::Duration::from_std(d).unwrap_or(chrono::Duration::minutes(2))
    }

    /// How long the worker's loop should wait after a poll: at once when history is
    /// waiting, what TronGrid asked for when rate limited, twice the interval after other
    /// errors, else `CRYPTO_POLL_INTERVAL_SECONDS`.
    pub fn delay_after(&self, result: &Result<PollOutcome, WatchError>) -> Duration {
        let interval = self.settings.poll_interval;
        match result {
            Ok(out) if !out.complete => Duration::ZERO,
            Ok(_) => interval,
            // The client caps what TronGrid asks for; capped again here so no error can
            // hold the watcher longer than MAX_ASKED_PAUSE (or the operator's own interval).
            Err(e) => e.retry_after().map_or(interval.saturating_mul(2), |d| {
                d.min(outbound::MAX_ASKED_PAUSE).max(interval)
            }),
        }
    }

    /// One poll, now.
    pub async fn poll_once(&self, db: &DatabaseConnection) -> Result<PollOutcome, WatchError> {
        self.poll_at(db, Utc::now()).await
    }

    /// One poll as of `now` (tests move the clock): fetch the confirmed transfers since the
    /// cursor, apply them, expire invoices whose late window is over, advance the cursor.
    pub async fn poll_at(
        &self,
        db: &DatabaseConnection,
        now: DateTime<Utc>,
    ) -> Result<PollOutcome, WatchError> {
        let Some(cursor_ms) = self.take_lease(db, now).await? else {
            return Ok(PollOutcome {
                skipped: true,
                ..PollOutcome::default()
            });
        };
        let query = HistoryQuery {
            account: self.settings.wallet_address.clone(),
            contract: self.settings.usdt_contract.clone(),
            min_timestamp_ms: cursor_ms,
            page_size: self.settings.page_size,
            max_pages: self.settings.max_pages,
        };
        let history = match self.client.incoming_transfers(&query).await {
            Ok(h) => h,
            Err(e) => {
                self.release_lease(db, None, now).await?;
                return Err(e.into());
            }
        };
        let applied: Result<PollOutcome, DbErr> = async {
            let txn = db.begin().await?;
            let outcome = self.apply(&txn, history, cursor_ms, now).await?;
            self.release_lease(&txn, Some(outcome.cursor_ms), now)
                .await?;
            txn.commit().await?;
            Ok(outcome)
        }
        .await;
        if applied.is_err() {
            // Nothing was applied (rolled back); let the next poll retry at once. The error
            // that matters is the first one.
            let _ = self.release_lease(db, None, now).await;
        }
        Ok(applied?)
    }

    /// Checks a transaction named by a notice: a notice never completes anything by itself,
    /// it only makes us look — and only a confirmed, successful transaction triggers a poll.
    pub async fn check_transaction(
        &self,
        db: &DatabaseConnection,
        tx_id: &str,
    ) -> Result<NoticeCheck, WatchError> {
        let tx_id = tx_id.trim();
        if tx_id.len() != 64 || !tx_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(WatchError::InvalidTxId(tx_id.to_owned()));
        }
        let Some(info) = self.client.transaction_info(tx_id).await? else {
            return Ok(NoticeCheck::NotOnChain);
        };
        let result = info
            .receipt
            .and_then(|r| r.result)
            .unwrap_or_else(|| "SUCCESS".into());
        if result != "SUCCESS" || info.result.as_deref() == Some("FAILED") {
            return Ok(NoticeCheck::Failed { result });
        }
        Ok(NoticeCheck::Polled(self.poll_once(db).await?))
    }

    /// The cursor, if this watcher now holds the wallet's lease.
    async fn take_lease(
        &self,
        db: &DatabaseConnection,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, DbErr> {
        let backend = db.get_database_backend();
        let lookback =
            self.settings.invoice_ttl + self.settings.late_window + self.settings.cursor_skew;
        let initial = now.timestamp_millis() - i64::try_from(lookback.as_millis()).unwrap_or(0);
        db.execute_raw(Statement::from_sql_and_values(
            backend,
            "INSERT INTO crypto_watch_cursors (\"key\", cursor_ms, updated_at) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            [self.cursor_key().into(), initial.into(), now.into()],
        ))
        .await?;
        let values: [Value; 5] = [
            self.owner.into(),
            (now + self.lease()).into(),
            self.cursor_key().into(),
            now.into(),
            self.owner.into(),
        ];
        let row = db
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                "UPDATE crypto_watch_cursors SET lease_owner = $1, lease_until = $2 \
                 WHERE \"key\" = $3 AND (lease_until IS NULL OR lease_until < $4 OR lease_owner = $5) \
                 RETURNING cursor_ms",
                values,
            ))
            .await?;
        row.map(|r| r.try_get::<i64>("", "cursor_ms")).transpose()
    }

    /// Frees the lease, moving the cursor when given.
    async fn release_lease<C: ConnectionTrait>(
        &self,
        conn: &C,
        cursor_ms: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let backend = conn.get_database_backend();
        let (sql, values): (&str, Vec<Value>) = match cursor_ms {
            Some(cursor) => (
                "UPDATE crypto_watch_cursors SET cursor_ms = $1, updated_at = $2, \
                 lease_owner = NULL, lease_until = NULL WHERE \"key\" = $3 AND lease_owner = $4",
                vec![
                    cursor.into(),
                    now.into(),
                    self.cursor_key().into(),
                    self.owner.into(),
                ],
            ),
            None => (
                "UPDATE crypto_watch_cursors SET lease_owner = NULL, lease_until = NULL \
                 WHERE \"key\" = $1 AND lease_owner = $2",
                vec![self.cursor_key().into(), self.owner.into()],
            ),
        };
        conn.execute_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        history: History,
        cursor_ms: i64,
        now: DateTime<Utc>,
    ) -> Result<PollOutcome, DbErr> {
        let wallet = self.settings.wallet_address.as_str();
        let contract = self.settings.usdt_contract.as_str();
        let mut out = PollOutcome {
            fetched: history.transfers.len(),
            complete: history.complete,
            ..PollOutcome::default()
        };
        let mut relevant: Vec<(&Trc20Transfer, String)> = Vec::new();
        for t in &history.transfers {
            if t.kind != "Transfer" || t.token_info.address != contract || t.to != wallet {
                // Fake "USDT" tokens and other rows the API filter should already have
                // dropped: never trusted.
                tracing::debug!(tx = %t.transaction_id, token = %t.token_info.address, to = %t.to, kind = %t.kind, "ignored TRC20 row");
                out.ignored += 1;
                continue;
            }
            relevant.push((t, t.transaction_id.to_ascii_lowercase()));
        }
        let newest = history
            .transfers
            .iter()
            .map(|t| t.block_timestamp)
            .max()
            .unwrap_or(cursor_ms);
        if !history.complete {
            // A page limit may have cut the newest transaction in two: leave that block
            // time to the next poll, which starts there (min_timestamp is inclusive).
            relevant.retain(|(t, _)| t.block_timestamp < newest);
        }
        let event_indexes = event_indexes(&relevant);
        for ((t, tx_id), event_index) in relevant.iter().zip(event_indexes) {
            let tx_id = tx_id.clone();
            let Some(at) = DateTime::from_timestamp_millis(t.block_timestamp) else {
                out.ignored += 1;
                continue;
            };
            let amount = t.amount_minor();
            let Some(transfer_id) = self
                .claim(txn, t, &tx_id, event_index, amount, at, now)
                .await?
            else {
                out.duplicates += 1;
                continue;
            };
            out.new_transfers += 1;
            let decision = match amount {
                None => Decision::Unmatched(matcher::reason::UNREADABLE),
                Some(v) => self.decide(txn, v, &t.from, at).await?,
            };
            match decision {
                Decision::Unmatched(reason) => {
                    out.unmatched += 1;
                    self.record_unmatched(txn, t, &tx_id, event_index, amount, reason, now)
                        .await?;
                }
                Decision::Settle(invoice, total) => {
                    let o = self
                        .settle(txn, &invoice, total, &tx_id, event_index, &t.from, at, now)
                        .await?;
                    if let Some(o) = o {
                        self.link(txn, transfer_id, &invoice, outcome_label(&o.kind))
                            .await?;
                        out.invoices.push(o);
                    }
                }
            }
        }
        let skew = i64::try_from(self.settings.cursor_skew.as_millis()).unwrap_or(i64::MAX);
        out.cursor_ms = if history.complete {
            cursor_ms.max(now.timestamp_millis().saturating_sub(skew))
        } else {
            // Oldest first, so everything before `newest` was seen.
            cursor_ms.max(newest)
        };
        if history.complete {
            self.expire(txn, now, &mut out).await?;
        }
        if let Some(sink) = &self.sink {
            for outcome in &out.invoices {
                sink.record(txn, outcome).await?;
            }
        }
        Ok(out)
    }

    /// Records a transfer; `None` when it was recorded before (applied at most once).
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        txn: &DatabaseTransaction,
        t: &Trc20Transfer,
        tx_id: &str,
        event_index: i32,
        amount: Option<i64>,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, DbErr> {
        let values: [Value; 10] = [
            self.settings.network().into(),
            tx_id.into(),
            event_index.into(),
            t.token_info.address.clone().into(),
            t.from.clone().into(),
            t.to.clone().into(),
            t.value.clone().into(),
            amount.into(),
            at.into(),
            now.into(),
        ];
        let row = txn
            .query_one_raw(Statement::from_sql_and_values(
                txn.get_database_backend(),
                "INSERT INTO crypto_transfers (network, tx_id, event_index, token_contract, \
                 from_address, to_address, value, amount_minor, block_timestamp, outcome, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'unmatched', $10) \
                 ON CONFLICT DO NOTHING RETURNING id",
                values,
            ))
            .await?;
        row.map(|r| r.try_get::<i64>("", "id")).transpose()
    }

    async fn link(
        &self,
        txn: &DatabaseTransaction,
        transfer_id: i64,
        invoice: &crypto_invoices::Model,
        outcome: &str,
    ) -> Result<(), DbErr> {
        txn.execute_raw(Statement::from_sql_and_values(
            txn.get_database_backend(),
            "UPDATE crypto_transfers SET outcome = $1, invoice_id = $2, payment_id = $3 WHERE id = $4",
            [
                outcome.into(),
                invoice.id.into(),
                invoice.payment_id.into(),
                transfer_id.into(),
            ],
        ))
        .await?;
        Ok(())
    }

    /// Decides what a transfer of `v` micro-USDT from `from` at `at` pays, by the rules of
    /// [`matcher`]: reads the wallet's open invoices, and the invoices near `v` in every
    /// status only when rule 3 asks for them.
    async fn decide(
        &self,
        txn: &DatabaseTransaction,
        v: i64,
        from: &str,
        at: DateTime<Utc>,
    ) -> Result<Decision, DbErr> {
        let rules = Rules::new(self.settings.late_window);
        let t = Transfer {
            amount: v,
            from,
            at,
        };
        let open: Vec<crypto_invoices::Model> = self
            .invoices()
            .filter(crypto_invoices::Column::Status.eq(CryptoInvoiceStatus::Open))
            .order_by_asc(crypto_invoices::Column::CreatedAt)
            .all(txn)
            .await?;
        let mut decision = rules.decide(&t, &open, None);
        let nearby;
        if decision == matcher::Decision::NeedsNearby {
            let range = rules.nearby_range(&t);
            nearby = self
                .invoices()
                .filter(crypto_invoices::Column::ExpectedMinor.between(range.low, range.high))
                .filter(crypto_invoices::Column::ExpiresAt.gte(range.expires_from))
                .filter(crypto_invoices::Column::CreatedAt.lte(range.created_to))
                .all(txn)
                .await?;
            decision = rules.decide(&t, &open, Some(&nearby));
        }
        Ok(match decision {
            matcher::Decision::Complete { invoice, total } => {
                Decision::Settle(invoice.clone(), total)
            }
            matcher::Decision::Partial { invoice, total } => {
                Decision::Settle(invoice.clone(), total)
            }
            matcher::Decision::Unmatched(reason) => Decision::Unmatched(reason),
            // Only without the nearby rows, which were just read.
            matcher::Decision::NeedsNearby => Decision::Unmatched(matcher::reason::COMPETITOR),
        })
    }

    /// The wallet's invoices (this network and address).
    fn invoices(&self) -> sea_orm::Select<crypto_invoices::Entity> {
        crypto_invoices::Entity::find()
            .filter(crypto_invoices::Column::Network.eq(self.settings.network()))
            .filter(crypto_invoices::Column::Address.eq(self.settings.wallet_address.as_str()))
    }

    /// Records `total` received on `invoice` (still open: only the open row is updated),
    /// the latest transfer `tx_id`/`event_index` from `from` at `at`, with its outcome
    /// ([`matcher::settle`]); `None` when the invoice was no longer open.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        txn: &DatabaseTransaction,
        invoice: &crypto_invoices::Model,
        total: i64,
        tx_id: &str,
        event_index: i32,
        from: &str,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<InvoiceOutcome>, DbErr> {
        let (status, kind) = matcher::settle(invoice, total, at, self.settings.late_policy);
        let completes = status != CryptoInvoiceStatus::Open;
        let mut update = crypto_invoices::ActiveModel {
            received_minor: Set(Some(total)),
            // The first payer stays the invoice's payer.
            from_address: Set(Some(
                invoice
                    .from_address
                    .clone()
                    .unwrap_or_else(|| from.to_owned()),
            )),
            updated_at: Set(now),
            ..Default::default()
        };
        if completes {
            update.status = Set(status);
            update.tx_id = Set(Some(tx_id.to_owned()));
            update.event_index = Set(Some(event_index));
            // 1 = seen in a solidified (confirmed) block.
            update.confirmations = Set(1);
            update.paid_at = Set(Some(at));
        }
        let done = crypto_invoices::Entity::update_many()
            .set(update)
            .filter(crypto_invoices::Column::Id.eq(invoice.id))
            .filter(crypto_invoices::Column::Status.eq(CryptoInvoiceStatus::Open))
            .exec(txn)
            .await?;
        Ok((done.rows_affected == 1).then(|| InvoiceOutcome {
            payment_id: invoice.payment_id,
            invoice_id: invoice.id,
            kind,
            tx_id: Some(tx_id.to_owned()),
            at,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_unmatched(
        &self,
        txn: &DatabaseTransaction,
        t: &Trc20Transfer,
        tx_id: &str,
        event_index: i32,
        amount: Option<i64>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        tracing::warn!(tx = %tx_id, value = %t.value, from = %t.from, reason, "unmatched crypto transfer");
        system_logs::Entity::insert(system_logs::ActiveModel {
            id: NotSet,
            event_type: Set(UNMATCHED_EVENT.to_owned()),
            user_id: Set(None),
            payment_id: Set(None),
            provider: Set(Some(crate::providers::crypto::ID)),
            amount_minor: Set(amount),
            currency: Set(Some(Currency::Usdt.code().to_owned())),
            status: Set(Some("unmatched".to_owned())),
            message: Set(Some(format!(
                "incoming transfer of {} USDT base units not matched: {reason}",
                t.value
            ))),
            metadata: Set(Some(serde_json::json!({
                "network": self.settings.network(),
                "tx_id": tx_id,
                "event_index": event_index,
                "from": t.from,
                "to": t.to,
                "value": t.value,
                "token_contract": t.token_info.address,
                "block_timestamp": t.block_timestamp,
                "reason": reason,
            }))),
            created_at: Set(now),
        })
        .exec(txn)
        .await?;
        Ok(())
    }

    /// Ends open invoices whose late window (plus the cursor skew, for transfers confirmed
    /// late) is over: `underpaid` when something arrived, else `expired`.
    async fn expire(
        &self,
        txn: &DatabaseTransaction,
        now: DateTime<Utc>,
        out: &mut PollOutcome,
    ) -> Result<(), DbErr> {
        let grace =
            chrono::Duration::from_std(self.settings.late_window + self.settings.cursor_skew)
                .unwrap_or(chrono::Duration::zero());
        let due = crypto_invoices::Entity::find()
            .filter(crypto_invoices::Column::Network.eq(self.settings.network()))
            .filter(crypto_invoices::Column::Address.eq(self.settings.wallet_address.as_str()))
            .filter(crypto_invoices::Column::Status.eq(CryptoInvoiceStatus::Open))
            .filter(crypto_invoices::Column::ExpiresAt.lt(now - grace))
            .order_by_asc(crypto_invoices::Column::ExpiresAt)
            .all(txn)
            .await?;
        for invoice in due {
            let status = if invoice.received_minor.is_some() {
                CryptoInvoiceStatus::Underpaid
            } else {
                CryptoInvoiceStatus::Expired
            };
            let done = crypto_invoices::Entity::update_many()
                .set(crypto_invoices::ActiveModel {
                    status: Set(status),
                    updated_at: Set(now),
                    ..Default::default()
                })
                .filter(crypto_invoices::Column::Id.eq(invoice.id))
                .filter(crypto_invoices::Column::Status.eq(CryptoInvoiceStatus::Open))
                .exec(txn)
                .await?;
            if done.rows_affected == 1 {
                out.invoices.push(InvoiceOutcome {
                    payment_id: invoice.payment_id,
                    invoice_id: invoice.id,
                    kind: OutcomeKind::Expired {
                        received: invoice.received_minor.map(usdt),
                    },
                    tx_id: None,
                    at: now,
                });
            }
        }
        Ok(())
    }
}

/// The event index of each row: its position among the rows of its transaction, ordered by
/// (recipient, value, sender). TronGrid rows carry no log index, and one transaction may
/// emit several transfers; this order does not depend on how the API orders them, and all
/// rows of a transaction are always fetched together (same block time).
fn event_indexes(rows: &[(&Trc20Transfer, String)]) -> Vec<i32> {
    let mut by_tx: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (_, tx)) in rows.iter().enumerate() {
        by_tx.entry(tx.as_str()).or_default().push(i);
    }
    let mut indexes = vec![0; rows.len()];
    for members in by_tx.values_mut() {
        members.sort_by_key(|&i| {
            let t = rows[i].0;
            (
                t.to.as_str(),
                t.value.len(),
                t.value.as_str(),
                t.from.as_str(),
            )
        });
        for (n, &i) in members.iter().enumerate() {
            indexes[i] = i32::try_from(n).unwrap_or(i32::MAX);
        }
    }
    indexes
}

fn outcome_label(kind: &OutcomeKind) -> &'static str {
    match kind {
        OutcomeKind::Paid { .. } => "paid",
        OutcomeKind::Overpaid { .. } => "overpaid",
        OutcomeKind::Underpaid { .. } => "partial",
        OutcomeKind::Late { .. } => "late",
        OutcomeKind::Expired { .. } => "expired",
    }
}
