//! The inbox of provider notifications: a verified notification is stored in
//! `provider_notifications` together with its `provider.notification.<provider>` outbox row,
//! in one transaction. The inbox's `(provider, dedupe_key)` uniqueness turns redelivery into a
//! no-op: a duplicate adds neither row, even when the copies arrive at the same moment. The
//! gateway stores webhooks here, the bot Telegram's payment messages.
//!
//! Notices go through the [`Inbox`] writer, which commits them in groups: while its writers
//! are busy, newly arrived notices wait and then share one transaction (one commit, one WAL
//! flush). One notice alone is written at once; a burst costs one commit per group instead of
//! one per notice. Each caller is answered after the commit that holds its notice, so nothing
//! is acknowledged before it is durable; if a group's transaction fails, its notices are
//! written one by one, so one bad notice cannot fail the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use domain::PaymentId;
use domain::entities::{payments, provider_notifications};
use messaging::Envelope;
use messaging::events::ProviderNotificationReceived;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    TryInsertResult,
};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use uuid::Uuid;

use messaging::{EnvelopeError, OutboxError};

/// Counter: inbox transactions committed, and the notices they held (their ratio is the mean
/// group size).
pub const METRIC_COMMITS: &str = "inbox_commits_total";
pub const METRIC_NOTICES: &str = "inbox_notices_total";

/// Storing a notice failed; the sender must not be told it was received.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("inbox database error: {0}")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("the inbox writer has stopped")]
    Stopped,
}

/// One notification to store.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The inbox's provider column and the routing-key suffix.
    pub provider: domain::ProviderId,
    pub dedupe_key: String,
    /// `webhook`, `bot` (Telegram payment messages), or `refund_api` for refunds the admin API
    /// started.
    pub source: &'static str,
    pub peer: Option<String>,
    pub body: String,
    pub provider_payment_id: Option<String>,
    /// Our payment id as the notice claims it (checked against `payments` before use).
    pub claimed_payment_id: Option<PaymentId>,
}

/// What storing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New {
        notification_id: i64,
        payment_id: Option<PaymentId>,
    },
    Duplicate,
}

/// Transactions the [`Inbox`] runs at once.
pub const WRITERS: usize = 4;
/// Notices in one group transaction, at most.
pub const MAX_GROUP: usize = 256;

struct Job {
    notice: Notice,
    reply: oneshot::Sender<Result<Stored, InboxError>>,
}

/// The group-committing writer of notices, webhooks and Telegram payment messages alike (see
/// the module docs). Cloning shares it.
#[derive(Clone)]
pub struct Inbox {
    queue: mpsc::Sender<Job>,
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl Inbox {
    /// Starts the writer with [`WRITERS`] transactions at once, on the current runtime; it
    /// stops when the last clone is dropped.
    pub fn start(db: DatabaseConnection, nudge: Arc<Notify>) -> Self {
        Self::with_writers(db, nudge, WRITERS)
    }

    /// Like [`Inbox::start`], with `writers` transactions at once (at least one).
    pub fn with_writers(db: DatabaseConnection, nudge: Arc<Notify>, writers: usize) -> Self {
        let writers = writers.max(1);
        let (queue, jobs) = mpsc::channel(writers * MAX_GROUP);
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(dispatch(db, nudge, commits.clone(), writers, jobs));
        Self { queue, commits }
    }

    /// Transactions committed so far (fewer than the notices when they were grouped).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Stores `notice` and its outbox row; answers once they are committed.
    pub async fn store(&self, notice: Notice) -> Result<Stored, InboxError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { notice, reply })
            .await
            .map_err(|_| InboxError::Stopped)?;
        answer.await.map_err(|_| InboxError::Stopped)?
    }
}

/// Takes the notices that arrived while every writer was busy as one group.
async fn dispatch(
    db: DatabaseConnection,
    nudge: Arc<Notify>,
    commits: Arc<AtomicU64>,
    writers: usize,
    mut jobs: mpsc::Receiver<Job>,
) {
    let writers = Arc::new(Semaphore::new(writers));
    while let Some(first) = jobs.recv().await {
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let (db, nudge, commits) = (db.clone(), nudge.clone(), commits.clone());
        tokio::spawn(async move {
            write_group(&db, &nudge, &commits, group).await;
            drop(writer);
        });
    }
}

/// Writes `group`, counts its commits, and answers each caller.
async fn write_group(
    db: &DatabaseConnection,
    nudge: &Notify,
    commits: &AtomicU64,
    group: Vec<Job>,
) {
    let notices: Vec<&Notice> = group.iter().map(|job| &job.notice).collect();
    let (results, committed): (Vec<Result<Stored, InboxError>>, u64) = match store_all(db, &notices)
        .await
    {
        Ok(stored) => (stored.into_iter().map(Ok).collect(), 1),
        Err(error) if group.len() == 1 => (vec![Err(error)], 0),
        Err(error) => {
            tracing::warn!(%error, notices = group.len(), "group write failed; writing its notices one by one");
            let mut results = Vec::with_capacity(group.len());
            for notice in notices {
                results.push(store_all(db, &[notice]).await.map(|mut s| s.remove(0)));
            }
            let committed = results.iter().filter(|r| r.is_ok()).count() as u64;
            (results, committed)
        }
    };
    let stored = results.iter().filter(|r| r.is_ok()).count() as u64;
    commits.fetch_add(committed, Ordering::Relaxed);
    metrics::counter!(METRIC_COMMITS).increment(committed);
    metrics::counter!(METRIC_NOTICES).increment(stored);
    if results.iter().any(|r| matches!(r, Ok(Stored::New { .. }))) {
        nudge.notify_one();
    }
    for (job, result) in group.into_iter().zip(results) {
        // The caller may be gone (client disconnected); its notice is stored all the same.
        let _ = job.reply.send(result);
    }
}

/// Stores `notices` in one transaction.
async fn store_all(
    db: &DatabaseConnection,
    notices: &[&Notice],
) -> Result<Vec<Stored>, InboxError> {
    let txn = crate::db::begin_write(db).await?;
    let mut stored = Vec::with_capacity(notices.len());
    for notice in notices {
        stored.push(store_in(&txn, notice).await?);
    }
    txn.commit().await?;
    Ok(stored)
}

/// Stores `notice` and its outbox row inside the caller's transaction (the caller commits
/// and nudges).
pub async fn store_in<C: ConnectionTrait>(conn: &C, notice: &Notice) -> Result<Stored, InboxError> {
    let payment_id = match_payment(conn, notice).await?;
    let row = provider_notifications::ActiveModel {
        id: NotSet,
        provider: Set(notice.provider.clone()),
        dedupe_key: Set(notice.dedupe_key.clone()),
        source: Set(notice.source.to_owned()),
        peer: Set(notice.peer.clone()),
        body: Set(notice.body.clone()),
        provider_payment_id: Set(notice.provider_payment_id.clone()),
        payment_id: Set(payment_id),
        received_at: Set(Utc::now()),
        processed_at: Set(None),
        outcome: Set(None),
    };
    let inserted = provider_notifications::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([
                provider_notifications::Column::Provider,
                provider_notifications::Column::DedupeKey,
            ])
            .do_nothing()
            .to_owned(),
        )
        .try_insert()
        .exec(conn)
        .await?;
    let notification_id = match inserted {
        TryInsertResult::Inserted(result) => result.last_insert_id,
        TryInsertResult::Conflicted | TryInsertResult::Empty => return Ok(Stored::Duplicate),
    };
    let event = ProviderNotificationReceived {
        provider: notice.provider.clone(),
        notification_id,
        dedupe_key: notice.dedupe_key.clone(),
        payment_id,
    };
    // Notices about payments we do not know still need a correlation id: the nil UUID says
    // "no payment" without inventing one.
    let envelope = Envelope::new(&event, payment_id.map_or(Uuid::nil(), Uuid::from), None)?;
    messaging::outbox::enqueue(conn, &envelope).await?;
    Ok(Stored::New {
        notification_id,
        payment_id,
    })
}

/// Our payment, by the provider's id first, else by the id the notice claims; `None` when we
/// do not know it (the notice is still recorded).
async fn match_payment<C: ConnectionTrait>(
    conn: &C,
    notice: &Notice,
) -> Result<Option<PaymentId>, InboxError> {
    let found = payments::find_notified(
        conn,
        &notice.provider,
        notice.provider_payment_id.as_deref(),
        notice.claimed_payment_id,
    )
    .await?;
    Ok(found.map(|payment| payment.id))
}

#[cfg(test)]
mod tests {
    use domain::entities::outbox;
    use sea_orm::PaginatorTrait;
    use testkit::TestDb;

    use super::*;

    fn notice(dedupe_key: &str, body: &str) -> Notice {
        Notice {
            provider: domain::ProviderId::from_static("yookassa"),
            dedupe_key: dedupe_key.into(),
            source: "webhook",
            peer: None,
            body: body.into(),
            provider_payment_id: None,
            claimed_payment_id: None,
        }
    }

    async fn rows(db: &TestDb) -> (u64, u64) {
        (
            provider_notifications::Entity::find()
                .count(&db.conn)
                .await
                .unwrap(),
            outbox::Entity::find().count(&db.conn).await.unwrap(),
        )
    }

    #[tokio::test]
    async fn a_burst_is_committed_in_groups_and_each_key_is_stored_once() {
        let db = TestDb::new().await;
        // One writer: what arrives during its commit waits and goes into the next group.
        let inbox = Inbox::with_writers(db.conn.clone(), Arc::new(Notify::new()), 1);
        // 100 notices, each sent 4 times, all at once.
        let results = futures::future::join_all((0..400).map(|i| {
            let inbox = inbox.clone();
            async move { inbox.store(notice(&format!("n{}", i % 100), "{}")).await }
        }))
        .await;
        let new = results
            .iter()
            .filter(|r| matches!(r, Ok(Stored::New { .. })))
            .count();
        let duplicates = results
            .iter()
            .filter(|r| matches!(r, Ok(Stored::Duplicate)))
            .count();
        assert_eq!((new, duplicates), (100, 300), "{results:?}");
        assert_eq!(
            rows(&db).await,
            (100, 100),
            "one inbox and one outbox row per key"
        );
        assert!(
            inbox.commits() < 100,
            "{} commits for 400 notices",
            inbox.commits()
        );
    }

    #[tokio::test]
    async fn a_notice_the_database_refuses_fails_alone() {
        let db = TestDb::new().await;
        let mut answers = Vec::new();
        let group = ["first", "nul", "last"]
            .into_iter()
            .map(|key| {
                // PostgreSQL refuses a NUL character in text.
                let body = if key == "nul" { "{\u{0}}" } else { "{}" };
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                Job {
                    notice: notice(key, body),
                    reply,
                }
            })
            .collect();
        let commits = AtomicU64::new(0);
        write_group(&db.conn, &Notify::new(), &commits, group).await;
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.await.unwrap());
        }
        assert!(matches!(results[0], Ok(Stored::New { .. })), "{results:?}");
        assert!(results[1].is_err(), "{results:?}");
        assert!(matches!(results[2], Ok(Stored::New { .. })), "{results:?}");
        assert_eq!(rows(&db).await, (2, 2));
        assert_eq!(
            commits.load(Ordering::Relaxed),
            2,
            "one by one after the group failed"
        );
    }
}
