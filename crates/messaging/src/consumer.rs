//! The idempotent consumer runner and the [`Handler`] trait.
//!
//! For each delivery: decode the envelope (undecodable → parked at once); for a handler with
//! an outside step ([`Handler::prepares`]), skip a message already processed and run
//! [`Handler::prepare`] — the calls to outside APIs — with no transaction open; then open a database
//! transaction, insert `processed_messages(consumer, event_id)` — a conflict means the message
//! was handled before, so it is acknowledged and skipped — run the handler in that
//! transaction, commit, and only then acknowledge. A failed handler rolls back; the message is
//! sent to the next delay queue, or parked once the retry policy is used up (at once for a
//! [`HandlerError::Permanent`]).
//!
//! **Group commit.** The first steps (decode, the duplicate check, `prepare`) run for up to
//! `prefetch` deliveries at once; the transactions run one at a time, and each takes every
//! message that is ready by then, up to [`RunnerConfig::batch`]: one multi-row insert of
//! their `processed_messages` rows, each handler in turn, one commit, then the acks. At a
//! trickle a transaction holds one message, as before; under load a commit (an `fsync`) is
//! shared by many. If any handler of a batch fails, or the commit does, the batch is rolled
//! back and its messages go back to the queue untouched; they come back redelivered, and a
//! message tried before (redelivered, or retried) always gets a transaction of its own, so a
//! failure is retried or parked for the message that caused it only. One transaction at a time also means the
//! batches of one process never wait on each other's row locks. SQLite (the embedded mode)
//! has no multi-row `RETURNING` here and a single writer anyway: its batches hold one message.

use std::any::Any;
use std::collections::HashSet;
use std::error::Error as StdError;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use domain::entities::processed_messages;
use futures::{FutureExt, StreamExt};
use sea_orm::{
    ActiveValue::Set, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    TransactionTrait, TryInsertResult,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::{Delivery, DeliverySource};
use crate::envelope::{Envelope, EnvelopeError};
use crate::retry::RetryPolicy;
use crate::topology::ConsumerSpec;

/// Counter `{consumer, outcome}`: outcome is `handled`, `duplicate`, `retried` or `parked`.
pub const METRIC_MESSAGES: &str = "messaging_consumer_messages_total";
/// Histogram `{consumer}`: seconds from delivery to settlement of handled messages.
pub const METRIC_HANDLE_SECONDS: &str = "messaging_consumer_handle_seconds";
/// Histogram `{consumer}`: messages per committed transaction (group commit).
pub const METRIC_BATCH_SIZE: &str = "messaging_consumer_batch_messages";
/// Gauge `{consumer}`: messages in the parking queue when last polled.
pub const METRIC_PARKING: &str = "messaging_parking_messages";
/// Gauge `{consumer}`: messages ready in the work queue when last polled (RabbitMQ only).
pub const METRIC_QUEUE: &str = "messaging_queue_messages";

/// While the broker is away, the pause between subscription attempts grows to this many times
/// `RunnerConfig::resubscribe_delay`.
const MAX_BACKOFF_FACTOR: u32 = 16;

type BoxError = Box<dyn StdError + Send + Sync>;

/// A handler's failure.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed later (a dependency is down, a lock timed out): retried with delay.
    #[error("{0}")]
    Transient(#[source] BoxError),
    /// Will never succeed (the event makes no sense here): parked at once.
    #[error("{0}")]
    Permanent(#[source] BoxError),
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(err: impl Into<BoxError>) -> Self {
        Self::Transient(err.into())
    }

    /// A failure not worth retrying.
    pub fn permanent(err: impl Into<BoxError>) -> Self {
        Self::Permanent(err.into())
    }

    /// `true` for [`HandlerError::Permanent`].
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }
}

impl From<DbErr> for HandlerError {
    fn from(err: DbErr) -> Self {
        Self::Transient(Box::new(err))
    }
}

impl From<EnvelopeError> for HandlerError {
    /// A payload that does not decode will not decode next time either.
    fn from(err: EnvelopeError) -> Self {
        Self::Permanent(Box::new(err))
    }
}

/// What a handler's [`Handler::prepare`] learned outside any transaction, handed to its
/// [`Handler::handle`]. Type-erased so that handlers stay object-safe; [`Prepared::take`]
/// gets the value back.
#[derive(Default)]
pub struct Prepared(Option<Box<dyn Any + Send + Sync>>);

impl Prepared {
    /// Nothing prepared (the default for handlers without an outside step).
    pub fn none() -> Self {
        Self(None)
    }

    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self(Some(Box::new(value)))
    }

    /// The prepared value, if there is one of type `T`.
    pub fn take<T: Any>(self) -> Option<T> {
        self.0
            .and_then(|value| (value as Box<dyn Any>).downcast::<T>().ok())
            .map(|value| *value)
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Prepared(..)"
        } else {
            "Prepared(none)"
        })
    }
}

/// Handles the events of one consumer.
///
/// The name and bindings become the queue `<prefix>.<consumer>` bound to those patterns; the
/// name is also the `processed_messages.consumer` key, so it must stay stable.
///
/// No call to an outside API belongs inside the transaction `handle` runs in (it would hold
/// a pooled connection and its row locks for as long as the outside service takes): such
/// calls go into [`Handler::prepare`], which runs first with no transaction open. Design the
/// pair as *call, then record the result*: `prepare` may run again for the same message
/// (a retry, a redelivery, a concurrent copy), so its call must be safe to repeat, and
/// `handle` must check under its locks that what `prepare` saw still holds.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Stable consumer name, e.g. `marzban-sync`.
    fn consumer(&self) -> &str;

    /// Routing-key patterns this consumer receives (`payment.completed`, `payment.#`).
    fn bindings(&self) -> Vec<String>;

    /// Whether this handler has an outside step ([`Handler::prepare`]). When it does, the
    /// runner first checks that the message was not processed before (so a redelivered
    /// message costs no outside call), then runs `prepare`.
    fn prepares(&self) -> bool {
        false
    }

    /// Whether [`Handler::prepare`] itself finds a message whose work is done, from rows it
    /// reads anyway, and then makes no outside call. The runner then skips its own look-up of
    /// the message's idempotency row before `prepare` (a statement a message, for the rare
    /// copy); the copy is still told apart by that row's insert in the transaction.
    fn prepare_spots_done_work(&self) -> bool {
        false
    }

    /// The handler's outside calls for `envelope`, with no transaction open; what it returns
    /// is handed to [`Handler::handle`]. An error fails the message like a failed `handle`.
    async fn prepare(&self, _envelope: &Envelope) -> Result<Prepared, HandlerError> {
        Ok(Prepared::none())
    }

    /// Applies the event's effect using `tx`, which commits only if this returns `Ok` — the
    /// effect, the idempotency row and any outbox rows written through `tx` are atomic.
    /// Events of types the handler does not care about should return `Ok(())`.
    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        prepared: Prepared,
    ) -> Result<(), HandlerError>;

    /// Called once `handle`'s transaction has committed: the place to wake whatever reads
    /// what it wrote (a wake-up sent from inside `handle` would come before the rows are
    /// visible).
    fn committed(&self, _envelope: &Envelope) {}
}

/// Counts of what a runner did (for tests and status pages; metrics carry the same).
#[derive(Debug, Default)]
pub struct ConsumerStats {
    handled: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    parked: AtomicU64,
    settle_failures: AtomicU64,
    transactions: AtomicU64,
    batches_split: AtomicU64,
}

impl ConsumerStats {
    /// Messages whose handler committed.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::SeqCst)
    }
    /// Messages skipped as already processed.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::SeqCst)
    }
    /// Failures sent to a delay queue.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::SeqCst)
    }
    /// Messages parked.
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::SeqCst)
    }
    /// Acks, retries or parks the transport failed to carry out (the message is redelivered).
    pub fn settle_failures(&self) -> u64 {
        self.settle_failures.load(Ordering::SeqCst)
    }
    /// Transactions committed (a batch of several messages counts once).
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::SeqCst)
    }
    /// Batches rolled back, their messages given back to the queue to come back one at a time.
    pub fn batches_split(&self) -> u64 {
        self.batches_split.load(Ordering::SeqCst)
    }
}

/// Runner settings.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Unacknowledged messages in flight, which is also how many are prepared concurrently.
    pub prefetch: u16,
    /// Messages handled in one transaction at most (group commit; 1 = one transaction per
    /// message). A batch takes only what is ready: it never waits for more.
    pub batch: u16,
    /// Delays between attempts before parking (also declares the delay queues).
    pub retry: RetryPolicy,
    /// Wait before subscribing again after the subscription failed or ended; doubled after
    /// every failed attempt up to 16 times this, back to this after a success.
    pub resubscribe_delay: Duration,
    /// How often the parking-queue gauge is refreshed.
    pub parking_poll_interval: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            prefetch: 16,
            batch: 16,
            retry: RetryPolicy::default(),
            resubscribe_delay: Duration::from_secs(1),
            parking_poll_interval: Duration::from_secs(30),
        }
    }
}

enum Applied {
    Handled,
    Duplicate,
}

/// Runs one [`Handler`] against a [`DeliverySource`].
pub struct ConsumerRunner {
    handler: Arc<dyn Handler>,
    db: DatabaseConnection,
    source: Arc<dyn DeliverySource>,
    spec: ConsumerSpec,
    config: RunnerConfig,
    stats: Arc<ConsumerStats>,
    outbox_nudge: Option<Arc<Notify>>,
}

impl std::fmt::Debug for ConsumerRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerRunner")
            .field("spec", &self.spec)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ConsumerRunner {
    /// A runner for `handler`, handling in transactions on `db`.
    pub fn new(
        handler: impl Handler,
        db: DatabaseConnection,
        source: Arc<dyn DeliverySource>,
        config: RunnerConfig,
    ) -> Self {
        let spec = ConsumerSpec::new(handler.consumer(), handler.bindings())
            .with_retry(config.retry.clone());
        Self {
            handler: Arc::new(handler),
            db,
            source,
            spec,
            config,
            stats: Arc::default(),
            outbox_nudge: None,
        }
    }

    /// Wakes this process's outbox relay after every committed handler, so the events a
    /// handler wrote are published at once rather than at the relay's next poll.
    #[must_use]
    pub fn with_outbox_nudge(mut self, nudge: Arc<Notify>) -> Self {
        self.outbox_nudge = Some(nudge);
        self
    }

    /// The topology this runner needs (declare it at start-up so publishers can route to it
    /// before the runner subscribes).
    pub fn spec(&self) -> &ConsumerSpec {
        &self.spec
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown`, then finishes the messages in hand and returns; messages
    /// received but not started go back to the queue.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let consume = this.clone().consume(shutdown.clone());
        let monitor = this.clone().monitor_parking(shutdown);
        futures::future::join(consume, monitor).await;
        tracing::debug!(consumer = %this.spec.name, "consumer stopped");
    }

    /// Runs the runner on a new task.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    async fn consume(self: Arc<Self>, shutdown: CancellationToken) {
        let concurrency = usize::from(self.config.prefetch.max(1));
        let mut pause = self.config.resubscribe_delay;
        while !shutdown.is_cancelled() {
            match self
                .source
                .subscribe(&self.spec, self.config.prefetch)
                .await
            {
                Ok(deliveries) => {
                    tracing::info!(consumer = %self.spec.name, "consuming");
                    pause = self.config.resubscribe_delay;
                    let consumer = self.spec.name.clone();
                    // Stage one (decode, duplicate check, prepare) for up to `prefetch`
                    // deliveries at once feeds stage two (the transactions), which runs one
                    // batch at a time; both are polled together, so preparing goes on while a
                    // batch commits. At most `prefetch` messages are unsettled, so the channel
                    // never holds more.
                    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(concurrency);
                    let stage = async {
                        let ready_tx = ready_tx;
                        deliveries
                            .take_until(shutdown.clone().cancelled_owned())
                            // A transport error ends this subscription; the loop subscribes
                            // again.
                            .scan((), move |(), item| {
                                futures::future::ready(match item {
                                    Ok(delivery) => Some(delivery),
                                    Err(err) => {
                                        tracing::warn!(%consumer, error = %err, "subscription failed");
                                        None
                                    }
                                })
                            })
                            .map(|delivery| self.stage(delivery))
                            .buffer_unordered(concurrency)
                            .for_each(|staged| {
                                let ready_tx = &ready_tx;
                                async move {
                                    if let Some(staged) = staged {
                                        // The receiver lives until the sender is gone.
                                        let _ = ready_tx.send(staged).await;
                                    }
                                }
                            })
                            .await;
                    };
                    let commit = async {
                        let max = self.batch_limit();
                        // A message tried before goes alone; one met while filling a batch
                        // opens the next.
                        let mut next = None;
                        loop {
                            let first = match next.take() {
                                Some(staged) => staged,
                                None => match ready_rx.recv().await {
                                    Some(staged) => staged,
                                    None => break,
                                },
                            };
                            let mut batch = vec![first];
                            while !batch[0].alone() && batch.len() < max {
                                match ready_rx.try_recv() {
                                    Ok(staged) if staged.alone() => {
                                        next = Some(staged);
                                        break;
                                    }
                                    Ok(staged) => batch.push(staged),
                                    Err(_) => break,
                                }
                            }
                            self.commit(batch).await;
                        }
                    };
                    futures::future::join(stage, commit).await;
                }
                Err(err) => {
                    tracing::warn!(consumer = %self.spec.name, error = %err, retry_in_ms = pause.as_millis() as u64, "cannot subscribe");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(self.config.resubscribe_delay * MAX_BACKOFF_FACTOR);
        }
    }

    /// Messages per transaction: one on SQLite (see the module docs).
    fn batch_limit(&self) -> usize {
        if self.db.get_database_backend() == DbBackend::Sqlite {
            1
        } else {
            usize::from(self.config.batch.max(1))
        }
    }

    async fn monitor_parking(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            match self.source.parking_count(&self.spec.name).await {
                Ok(count) => {
                    metrics::gauge!(METRIC_PARKING, "consumer" => self.spec.name.clone())
                        .set(count as f64);
                }
                Err(err) => {
                    tracing::debug!(consumer = %self.spec.name, error = %err, "parking count unavailable");
                }
            }
            match self.source.queue_count(&self.spec.name).await {
                Ok(Some(count)) => {
                    metrics::gauge!(METRIC_QUEUE, "consumer" => self.spec.name.clone())
                        .set(count as f64);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::debug!(consumer = %self.spec.name, error = %err, "queue depth unavailable");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.config.parking_poll_interval) => {}
            }
        }
    }

    /// Stage one for one delivery: decode it and, for a handler with an outside step, skip
    /// it if it was processed before and run `prepare`. What cannot go on is settled here;
    /// the rest goes to a transaction.
    async fn stage(&self, delivery: Delivery) -> Option<Staged> {
        let started = Instant::now();
        let consumer = self.spec.name.as_str();
        let envelope = match Envelope::from_json(&delivery.message.body) {
            Ok(envelope) => envelope.with_routing_key(delivery.message.routing_key.clone()),
            Err(err) => {
                let error = error_chain(&err);
                tracing::error!(%consumer, message_id = ?delivery.message.message_id, %error, "undecodable message; parking");
                let attempts = delivery.message.failed_attempts + 1;
                self.park(delivery, attempts, &error).await;
                return None;
            }
        };
        let prepared = match catch_panic(self.prepare(&envelope)).await {
            Ok(Some(prepared)) => prepared,
            Ok(None) => {
                self.settle(delivery, &envelope, Ok(Applied::Duplicate), started)
                    .await;
                return None;
            }
            Err(err) => {
                self.settle(delivery, &envelope, Err(err), started).await;
                return None;
            }
        };
        Some(Staged {
            delivery,
            envelope,
            prepared,
            started,
        })
    }

    /// Stage two: the staged messages in one transaction, then each settled. The messages
    /// of a batch that fails go back to the queue untouched; they come back redelivered, and
    /// a redelivered message is committed alone.
    ///
    /// They are not handled again right here: that would run their `prepare` again while
    /// later messages wait, prepared, for this loop — and a `prepare` may wait for what one of
    /// those holds (marzban-sync's per-user turn, from its `prepare` to the end of its
    /// `handle`), which would never come.
    async fn commit(&self, mut batch: Vec<Staged>) {
        if batch.len() == 1 {
            let Staged {
                delivery,
                envelope,
                prepared,
                started,
            } = batch.pop().expect("one message");
            let applied = catch_panic(self.record(&envelope, prepared)).await;
            self.settle(delivery, &envelope, applied, started).await;
            return;
        }
        let work = batch
            .iter_mut()
            .map(|staged| (&staged.envelope, std::mem::take(&mut staged.prepared)))
            .collect();
        match catch_panic(self.record_batch(work)).await {
            Ok(applied) => {
                for (staged, applied) in batch.into_iter().zip(applied) {
                    self.settle(
                        staged.delivery,
                        &staged.envelope,
                        Ok(applied),
                        staged.started,
                    )
                    .await;
                }
            }
            Err(err) => {
                self.stats.batches_split.fetch_add(1, Ordering::SeqCst);
                tracing::info!(consumer = %self.spec.name, messages = batch.len(), error = %error_chain(&err), "batch rolled back; its messages come back one at a time");
                for staged in batch {
                    if let Err(err) = staged.delivery.requeue().await {
                        self.stats.settle_failures.fetch_add(1, Ordering::SeqCst);
                        tracing::warn!(consumer = %self.spec.name, event_id = %staged.envelope.event_id, error = %err, "could not give the message back; it is redelivered when the channel closes");
                    }
                }
            }
        }
    }

    /// Acknowledges a handled or duplicate message; sends a failed one to its next delay
    /// queue, or parks it.
    async fn settle(
        &self,
        delivery: Delivery,
        envelope: &Envelope,
        applied: Result<Applied, HandlerError>,
        started: Instant,
    ) {
        let consumer = self.spec.name.as_str();
        match applied {
            Ok(applied) => {
                let outcome = match applied {
                    Applied::Handled => {
                        self.stats.handled.fetch_add(1, Ordering::SeqCst);
                        "handled"
                    }
                    Applied::Duplicate => {
                        self.stats.duplicates.fetch_add(1, Ordering::SeqCst);
                        tracing::info!(%consumer, event_id = %envelope.event_id, "duplicate skipped");
                        "duplicate"
                    }
                };
                if let Err(err) = delivery.ack().await {
                    // Committed but not acked: the redelivery will be skipped as a duplicate.
                    self.stats.settle_failures.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(%consumer, event_id = %envelope.event_id, error = %err, "ack failed");
                }
                count(consumer, outcome);
                metrics::histogram!(METRIC_HANDLE_SECONDS, "consumer" => consumer.to_owned())
                    .record(started.elapsed().as_secs_f64());
            }
            Err(err) => {
                let failed = delivery.message.failed_attempts + 1;
                let error = error_chain(&err);
                let delay = if err.is_permanent() {
                    None
                } else {
                    self.spec.retry.delay_after(failed)
                };
                match delay {
                    Some(delay) => {
                        tracing::warn!(%consumer, event_id = %envelope.event_id, event_type = %envelope.event_type, attempt = failed, retry_in_ms = delay.as_millis() as u64, %error, "handler failed; will retry");
                        match delivery.retry(failed, delay, &error).await {
                            Ok(()) => {
                                self.stats.retried.fetch_add(1, Ordering::SeqCst);
                                count(consumer, "retried");
                            }
                            Err(settle) => {
                                self.stats.settle_failures.fetch_add(1, Ordering::SeqCst);
                                tracing::warn!(%consumer, event_id = %envelope.event_id, error = %settle, "could not schedule the retry");
                            }
                        }
                    }
                    None => {
                        tracing::error!(%consumer, event_id = %envelope.event_id, event_type = %envelope.event_type, attempts = failed, %error, "handler failed for the last time; parking");
                        self.park(delivery, failed, &error).await;
                    }
                }
            }
        }
    }

    async fn park(&self, delivery: Delivery, attempts: u32, error: &str) {
        match delivery.park(attempts, error).await {
            Ok(()) => {
                self.stats.parked.fetch_add(1, Ordering::SeqCst);
                count(&self.spec.name, "parked");
            }
            Err(err) => {
                self.stats.settle_failures.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(consumer = %self.spec.name, error = %err, "could not park the message");
            }
        }
    }

    /// The handler's outside step, unless the message was processed before (`None`).
    async fn prepare(&self, envelope: &Envelope) -> Result<Option<Prepared>, HandlerError> {
        if !self.handler.prepares() {
            return Ok(Some(Prepared::none()));
        }
        if self.handler.prepare_spots_done_work() {
            return Ok(Some(self.handler.prepare(envelope).await?));
        }
        let seen =
            processed_messages::Entity::find_by_id((self.spec.name.clone(), envelope.message_id()))
                .one(&self.db)
                .await?;
        if seen.is_some() {
            return Ok(None);
        }
        Ok(Some(self.handler.prepare(envelope).await?))
    }

    /// The idempotency row and the handler's effect for one message, in one transaction.
    async fn record(
        &self,
        envelope: &Envelope,
        prepared: Prepared,
    ) -> Result<Applied, HandlerError> {
        let tx = self.db.begin().await?;
        let inserted = processed_messages::Entity::insert(self.marker(envelope))
            .on_conflict_do_nothing()
            .exec_without_returning(&tx)
            .await?;
        if !matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
            tx.rollback().await?;
            return Ok(Applied::Duplicate);
        }
        if let Err(err) = self.handler.handle(&tx, envelope, prepared).await {
            tx.rollback().await?;
            return Err(err);
        }
        tx.commit().await?;
        self.committed(&[envelope]);
        Ok(Applied::Handled)
    }

    /// [`Self::record`] for several messages in one transaction: one multi-row insert of
    /// their idempotency rows (a message whose row exists, or that came twice in the batch, is
    /// a duplicate), each handler in turn, one commit. Any failure rolls the whole batch back.
    async fn record_batch(
        &self,
        work: Vec<(&Envelope, Prepared)>,
    ) -> Result<Vec<Applied>, HandlerError> {
        let tx = self.db.begin().await?;
        let markers = work.iter().map(|(envelope, _)| self.marker(envelope));
        let mut new: HashSet<String> = match processed_messages::Entity::insert_many(markers)
            .on_conflict_do_nothing()
            .exec_with_returning_keys(&tx)
            .await?
        {
            TryInsertResult::Inserted(keys) => keys.into_iter().map(|(_, id)| id).collect(),
            TryInsertResult::Empty | TryInsertResult::Conflicted => HashSet::new(),
        };
        let mut applied = Vec::with_capacity(work.len());
        let mut handled = Vec::with_capacity(work.len());
        for (envelope, prepared) in work {
            if !new.remove(&envelope.message_id()) {
                applied.push(Applied::Duplicate);
                continue;
            }
            if let Err(err) = self.handler.handle(&tx, envelope, prepared).await {
                tx.rollback().await?;
                return Err(err);
            }
            applied.push(Applied::Handled);
            handled.push(envelope);
        }
        tx.commit().await?;
        self.committed(&handled);
        Ok(applied)
    }

    fn marker(&self, envelope: &Envelope) -> processed_messages::ActiveModel {
        processed_messages::ActiveModel {
            consumer: Set(self.spec.name.clone()),
            message_id: Set(envelope.message_id()),
            processed_at: Set(Utc::now()),
        }
    }

    /// After a commit: the handlers' hooks, the counts and one nudge of the outbox relay.
    fn committed(&self, handled: &[&Envelope]) {
        self.stats.transactions.fetch_add(1, Ordering::SeqCst);
        metrics::histogram!(METRIC_BATCH_SIZE, "consumer" => self.spec.name.clone())
            .record(handled.len() as f64);
        for envelope in handled {
            self.handler.committed(envelope);
        }
        if let Some(nudge) = &self.outbox_nudge
            && !handled.is_empty()
        {
            nudge.notify_one();
        }
    }
}

/// A message through stage one, waiting for a transaction.
struct Staged {
    delivery: Delivery,
    envelope: Envelope,
    prepared: Prepared,
    started: Instant,
}

impl Staged {
    /// Tried before (redelivered, or failed before): it gets a transaction of its own, so a
    /// message that failed a batch cannot fail another.
    fn alone(&self) -> bool {
        self.delivery.message.redelivered || self.delivery.message.failed_attempts > 0
    }
}

/// Runs `work`, turning a panic into a transient failure of the message.
async fn catch_panic<T>(
    work: impl std::future::Future<Output = Result<T, HandlerError>>,
) -> Result<T, HandlerError> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_owned());
            Err(HandlerError::transient(format!("handler panicked: {what}")))
        })
}

fn count(consumer: &str, outcome: &'static str) {
    metrics::counter!(METRIC_MESSAGES, "consumer" => consumer.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// `error: cause: cause`, for logs and the parking headers.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // thiserror's `#[error("{0}")]` repeats the source; don't print it twice.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_skips_repeated_sources() {
        let err = HandlerError::transient(std::io::Error::other("marzban down"));
        assert_eq!(error_chain(&err), "marzban down");
        let env_err = Envelope::from_json(b"{").unwrap_err();
        let chain = error_chain(&env_err);
        assert!(chain.starts_with("not a valid event envelope"), "{chain}");
    }
}
