//! The transactional outbox: [`enqueue`] writes an event in the caller's transaction, and the
//! [`OutboxRelay`] publishes what was committed.
//!
//! Delivery is at-least-once: a relay that dies after the broker confirmed a message but
//! before its transaction committed publishes it again; consumers skip the duplicate by its
//! `event_id` (see [`crate::consumer`]). A rolled-back transaction leaves no row, so nothing is
//! ever published for a change that did not happen.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::entities::{outbox, system_logs};
use domain::payment_log;
use futures::FutureExt;
use sea_orm::sea_query::{
    Alias, CommonTableExpression, Expr, ExprTrait, LockBehavior, LockType, WithClause,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select, TransactionTrait,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::{OutgoingMessage, PublishError, Publisher};
use crate::envelope::{Envelope, EnvelopeError};

/// Counter: events the relay published (confirmed by the bus).
pub const METRIC_PUBLISHED: &str = "messaging_outbox_published_total";
/// Counter: publish attempts that failed (the row stays and is retried).
pub const METRIC_PUBLISH_FAILURES: &str = "messaging_outbox_publish_failures_total";
/// Counter: events no queue is bound to. The broker took them and dropped them, as a topic
/// exchange does; the row is marked published with `last_error = "unroutable…"`. Every process
/// declares the system's consumer queues at start-up, so only events that nothing consumes by
/// design end here.
pub const METRIC_UNROUTABLE: &str = "messaging_outbox_unroutable_total";

/// Failures of the outbox functions.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database refused.
    #[error("outbox database error: {0}")]
    Db(#[from] DbErr),
    /// The envelope could not be serialised.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// Writes `envelope` to the outbox through `conn` — pass the transaction that makes the
/// change the event announces, so both commit or neither does. Returns the row id.
pub async fn enqueue<C: ConnectionTrait>(
    conn: &C,
    envelope: &Envelope,
) -> Result<i64, OutboxError> {
    let row = row(envelope, Utc::now())?;
    Ok(outbox::Entity::insert(row).exec(conn).await?.last_insert_id)
}

/// The unpublished outbox row of `envelope`.
fn row(envelope: &Envelope, now: DateTime<Utc>) -> Result<outbox::ActiveModel, OutboxError> {
    Ok(outbox::ActiveModel {
        id: NotSet,
        event_id: Set(envelope.event_id),
        routing_key: Set(envelope.routing_key().to_owned()),
        envelope: Set(envelope.to_json()?),
        created_at: Set(now),
        published_at: Set(None),
        attempts: Set(0),
        last_error: Set(None),
    })
}

/// [`enqueue`] with the payment-log row of the change that emits the event
/// ([`domain::payment_log`]), in one statement on PostgreSQL (`WITH event AS (INSERT INTO
/// outbox …) INSERT INTO system_logs …`: one round trip, both rows or neither) and in two
/// elsewhere (SQLite has no data-modifying `WITH`); then the log line.
pub async fn enqueue_logged<C: ConnectionTrait>(
    conn: &C,
    envelope: &Envelope,
    entry: payment_log::Entry<'_>,
) -> Result<(), OutboxError> {
    let event = outbox::Entity::insert(row(envelope, Utc::now())?).into_query();
    let log = system_logs::Entity::insert(payment_log::row(&entry)).into_query();
    let backend = conn.get_database_backend();
    if backend == DbBackend::Postgres {
        let with = WithClause::new()
            .cte(
                CommonTableExpression::new()
                    .query(event)
                    .table_name(Alias::new("event"))
                    .to_owned(),
            )
            .to_owned();
        conn.execute_raw(backend.build(&log.with(with))).await?;
    } else {
        conn.execute_raw(backend.build(&event)).await?;
        conn.execute_raw(backend.build(&log)).await?;
    }
    payment_log::trace(&entry);
    Ok(())
}

/// [`enqueue`] for several envelopes, in one multi-row insert (none for an empty slice).
pub async fn enqueue_all<C: ConnectionTrait>(
    conn: &C,
    envelopes: &[Envelope],
) -> Result<(), OutboxError> {
    if envelopes.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let rows = envelopes
        .iter()
        .map(|envelope| row(envelope, now))
        .collect::<Result<Vec<_>, OutboxError>>()?;
    outbox::Entity::insert_many(rows)
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

/// Marks the rows `ids` published, in one statement; `reason` is kept as `last_error` when
/// nothing subscribes to them (retrying cannot help, so they are closed with it).
async fn mark_published<C: ConnectionTrait>(
    conn: &C,
    ids: &[i64],
    reason: Option<&str>,
) -> Result<(), OutboxError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut update = outbox::Entity::update_many()
        .col_expr(outbox::Column::PublishedAt, Expr::value(Utc::now()))
        .filter(outbox::Column::Id.is_in(ids.iter().copied()))
        .filter(outbox::Column::PublishedAt.is_null());
    if let Some(reason) = reason {
        update = update.col_expr(outbox::Column::LastError, Expr::value(reason));
    }
    update.exec(conn).await?;
    Ok(())
}

/// Number of rows not yet published (for metrics and tests).
pub async fn pending_count<C: ConnectionTrait>(conn: &C) -> Result<u64, OutboxError> {
    Ok(outbox::Entity::find()
        .filter(outbox::Column::PublishedAt.is_null())
        .count(conn)
        .await?)
}

/// The next `limit` unpublished rows, in the order of the partial index
/// `idx_outbox_unpublished` (so a claim reads only open rows): rows that keep failing (e.g.
/// unroutable) go last, so they cannot starve the rest of the outbox.
pub fn claim_query(limit: u64) -> Select<outbox::Entity> {
    outbox::Entity::find()
        .filter(outbox::Column::PublishedAt.is_null())
        .order_by_asc(outbox::Column::Attempts)
        .order_by_asc(outbox::Column::Id)
        .limit(limit)
}

/// How the relay polls.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Rows claimed and published per transaction.
    pub batch_size: u64,
    /// Sleep between polls when the outbox is empty (a nudge cuts it short).
    pub poll_interval: Duration,
    /// Upper bound of the back-off after failures.
    pub max_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What one [`OutboxRelay::run_once`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayBatch {
    /// Rows taken.
    pub claimed: usize,
    /// Rows published and marked.
    pub published: usize,
    /// Rows whose publish failed (attempts bumped, retried later).
    pub failed: usize,
}

/// Publishes committed outbox rows.
///
/// On PostgreSQL each batch is claimed with `FOR UPDATE SKIP LOCKED`, published with
/// confirms and marked in the same transaction, so any number of relays (in one process or
/// many) share the work without publishing a row twice — except when a relay dies between the
/// confirm and the commit, which consumers absorb. On SQLite (the single-process mode) there is
/// no row locking and a long read transaction would block the other writers, so rows are read,
/// published, then marked each in short statements; run one relay per SQLite database.
pub struct OutboxRelay {
    db: DatabaseConnection,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    nudge: Arc<Notify>,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OutboxRelay {
    /// A relay publishing from `db` through `publisher`.
    pub fn new(db: DatabaseConnection, publisher: Arc<dyn Publisher>, config: RelayConfig) -> Self {
        Self {
            db,
            publisher,
            config,
            nudge: Arc::new(Notify::new()),
        }
    }

    /// Uses a shared nudge (e.g. one created before the services that write events).
    #[must_use]
    pub fn with_nudge(mut self, nudge: Arc<Notify>) -> Self {
        self.nudge = nudge;
        self
    }

    /// In-process writers call `notify_one()` on this after committing an outbox row, so the
    /// relay publishes at once instead of at the next poll.
    pub fn nudge(&self) -> Arc<Notify> {
        self.nudge.clone()
    }

    /// Claims, publishes and marks one batch.
    pub async fn run_once(&self) -> Result<RelayBatch, OutboxError> {
        if self.db.get_database_backend() == DbBackend::Postgres {
            let tx = self.db.begin().await?;
            let rows = claim_query(self.config.batch_size)
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .all(&tx)
                .await?;
            let batch = self.publish_rows(&tx, rows).await?;
            tx.commit().await?;
            Ok(batch)
        } else {
            let rows = claim_query(self.config.batch_size).all(&self.db).await?;
            self.publish_rows(&self.db, rows).await
        }
    }

    async fn publish_rows<C: ConnectionTrait>(
        &self,
        conn: &C,
        rows: Vec<outbox::Model>,
    ) -> Result<RelayBatch, OutboxError> {
        let mut batch = RelayBatch {
            claimed: rows.len(),
            ..RelayBatch::default()
        };
        if rows.is_empty() {
            return Ok(batch);
        }
        let messages: Vec<OutgoingMessage> = rows
            .iter()
            .map(|row| OutgoingMessage {
                routing_key: row.routing_key.clone(),
                message_id: row.event_id.to_string(),
                body: row.envelope.clone().into_bytes(),
            })
            .collect();
        let results = self.publisher.publish_batch(&messages).await;

        let mut published = Vec::new();
        // Closed without a subscriber, grouped by the reason kept for operators (one per
        // routing key): one statement each, not one per row.
        let mut unroutable: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => published.push(row.id),
                Err(err @ PublishError::Unroutable { .. }) => {
                    tracing::warn!(
                        outbox_id = row.id,
                        event_id = %row.event_id,
                        routing_key = %row.routing_key,
                        "no queue is bound to this event; marked published without a subscriber"
                    );
                    unroutable.entry(err.to_string()).or_default().push(row.id);
                }
                Err(err) => {
                    batch.failed += 1;
                    self.record_failure(conn, row, &err).await?;
                }
            }
        }
        mark_published(conn, &published, None).await?;
        for (reason, ids) in &unroutable {
            metrics::counter!(METRIC_UNROUTABLE).increment(ids.len() as u64);
            mark_published(conn, ids, Some(reason)).await?;
        }
        batch.published = published.len();
        metrics::counter!(METRIC_PUBLISHED).increment(batch.published as u64);
        Ok(batch)
    }

    async fn record_failure<C: ConnectionTrait>(
        &self,
        conn: &C,
        row: &outbox::Model,
        err: &PublishError,
    ) -> Result<(), OutboxError> {
        tracing::warn!(
            outbox_id = row.id,
            event_id = %row.event_id,
            routing_key = %row.routing_key,
            attempts = row.attempts + 1,
            error = %err,
            "outbox publish failed; will retry"
        );
        metrics::counter!(METRIC_PUBLISH_FAILURES).increment(1);
        outbox::Entity::update_many()
            .col_expr(
                outbox::Column::Attempts,
                Expr::col(outbox::Column::Attempts).add(1),
            )
            .col_expr(outbox::Column::LastError, Expr::value(err.to_string()))
            .filter(outbox::Column::Id.eq(row.id))
            .exec(conn)
            .await?;
        Ok(())
    }

    /// Publishes until `shutdown`: a full batch is followed at once by the next; a shorter
    /// one waits for the poll interval or a nudge; failures back off exponentially. A batch
    /// in progress is finished before stopping.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.config.poll_interval;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // A nudge already waiting is answered by this claim, which sees every row
            // committed before it starts: dropped here, it would cost an empty claim (a
            // transaction) after nearly every batch, since writers nudge after their commit.
            // A nudge that comes once the claim has begun stays for the next one.
            let _ = self.nudge.notified().now_or_never();
            let outcome = self.run_once().await;
            let failed = match &outcome {
                Ok(batch) if batch.failed == 0 => {
                    backoff = self.config.poll_interval;
                    if batch.claimed as u64 >= self.config.batch_size {
                        continue;
                    }
                    false
                }
                Ok(_) => true,
                Err(err) => {
                    tracing::warn!(error = %err, "outbox relay batch failed");
                    true
                }
            };
            if failed {
                backoff = (backoff * 2).min(self.config.max_backoff);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
            } else {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.nudge.notified() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
            }
        }
        tracing::debug!("outbox relay stopped");
    }

    /// Runs the relay on a new task.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, QueryTrait, Statement};

    use super::*;

    /// The claim walks the partial index of open rows, not the dead entries that published
    /// rows leave behind in a full index (see migration `m20261129_000004_queue_indexes`).
    #[tokio::test]
    async fn the_claim_reads_the_index_of_unpublished_rows() {
        let db = testkit::TestDb::new().await;
        let tx = db.conn.begin().await.unwrap();
        // An empty table is cheapest to scan whole; the question is which index serves, and
        // whether it gives the rows in the claim's order.
        tx.execute_unprepared("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
            .await
            .unwrap();
        let claim = claim_query(100)
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .build(DbBackend::Postgres);
        let plan: Vec<String> = tx
            .query_all_raw(Statement {
                sql: format!("EXPLAIN {}", claim.sql),
                ..claim
            })
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get::<String>("", "QUERY PLAN").unwrap())
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("idx_outbox_unpublished"), "{plan}");
        assert!(!plan.contains("Sort"), "read in index order: {plan}");
    }

    /// The event and its log row go in together, on both databases, and roll back together.
    async fn an_event_and_its_log_row_are_written_together(db: testkit::TestDb) {
        use sea_orm::ActiveModelTrait;
        use testkit::fixtures::{customer_and_tariff, pending_payment};

        let now = Utc::now();
        let (customer, tariff) = customer_and_tariff(&db.conn, 42).await;
        let payment = pending_payment(&customer, &tariff, "yookassa", None)
            .insert(&db.conn)
            .await
            .unwrap();
        let entry = |message: &str| payment_log::Entry {
            event_type: "payment.created",
            payment: &payment,
            status: "pending",
            message: message.to_owned(),
            metadata: serde_json::json!({"k": 1}),
            at: now,
        };
        let event = || {
            let created = crate::events::PaymentCreated {
                payment: crate::events::PaymentSnapshot {
                    payment_id: payment.id,
                    user_id: payment.user_id,
                    telegram_id: 42,
                    tariff_code: "month_1".into(),
                    provider: payment.provider.clone(),
                    amount_minor: payment.amount_minor,
                    currency: payment.currency.code().to_owned(),
                },
            };
            Envelope::new(&created, payment.id, None).unwrap()
        };
        let kept = event();
        let tx = db.conn.begin().await.unwrap();
        enqueue_logged(&tx, &kept, entry("kept")).await.unwrap();
        tx.commit().await.unwrap();
        let dropped = event();
        let tx = db.conn.begin().await.unwrap();
        enqueue_logged(&tx, &dropped, entry("dropped"))
            .await
            .unwrap();
        tx.rollback().await.unwrap();

        let events: Vec<uuid::Uuid> = outbox::Entity::find()
            .all(&db.conn)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.event_id)
            .collect();
        assert_eq!(events, [kept.event_id]);
        let logs = system_logs::Entity::find().all(&db.conn).await.unwrap();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].message.as_deref(), Some("kept"));
        assert_eq!(logs[0].payment_id, Some(payment.id));
        assert_eq!(logs[0].event_type, "payment.created");
    }

    #[tokio::test]
    async fn an_event_and_its_log_row_are_written_together_on_postgres() {
        an_event_and_its_log_row_are_written_together(testkit::TestDb::new().await).await;
    }

    #[tokio::test]
    async fn an_event_and_its_log_row_are_written_together_on_sqlite() {
        an_event_and_its_log_row_are_written_together(testkit::TestDb::sqlite().await).await;
    }
}
