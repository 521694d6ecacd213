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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use domain::PaymentId;
use domain::entities::{payments, provider_notifications};
use messaging::Envelope;
use messaging::events::ProviderNotificationReceived;
use sea_orm::sea_query::{Expr, Func, OnConflict, Query, QueryStatementBuilder};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait};
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
    let stored = store_all_in(&txn, notices).await?;
    txn.commit().await?;
    Ok(stored)
}

/// Stores `notice` and its outbox row inside the caller's transaction (the caller commits
/// and nudges).
pub async fn store_in<C: ConnectionTrait>(conn: &C, notice: &Notice) -> Result<Stored, InboxError> {
    let mut stored = store_all_in(conn, &[notice]).await?;
    Ok(stored.pop().unwrap_or(Stored::Duplicate))
}

/// Stores `notices` and their outbox rows inside the caller's transaction, in two statements
/// whatever their number: one multi-row insert into the inbox that matches each notice's
/// payment as it goes ([`matched_payment`]) and skips the keys stored already (also a key
/// twice in `notices`: its first copy is the new one), then one multi-row insert of the new
/// notices' outbox rows. Answers in the order of `notices`.
async fn store_all_in<C: ConnectionTrait>(
    conn: &C,
    notices: &[&Notice],
) -> Result<Vec<Stored>, InboxError> {
    use provider_notifications::Column as N;
    if notices.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let mut insert = Query::insert();
    insert
        .into_table(provider_notifications::Entity)
        .columns([
            N::Provider,
            N::DedupeKey,
            N::Source,
            N::Peer,
            N::Body,
            N::ProviderPaymentId,
            N::PaymentId,
            N::ReceivedAt,
        ])
        .on_conflict(
            OnConflict::columns([N::Provider, N::DedupeKey])
                .do_nothing()
                .to_owned(),
        )
        .returning_all();
    for notice in notices {
        insert.values_panic([
            notice.provider.clone().into(),
            notice.dedupe_key.clone().into(),
            notice.source.into(),
            notice.peer.clone().into(),
            notice.body.clone().into(),
            notice.provider_payment_id.clone().into(),
            matched_payment(notice),
            now.into(),
        ]);
    }
    let backend = conn.get_database_backend();
    let mut inserted: HashMap<(domain::ProviderId, String), provider_notifications::Model> =
        provider_notifications::Entity::find()
            .from_raw_sql(backend.build(&insert))
            .all(conn)
            .await?
            .into_iter()
            .map(|row| ((row.provider.clone(), row.dedupe_key.clone()), row))
            .collect();
    let mut stored = Vec::with_capacity(notices.len());
    let mut envelopes = Vec::new();
    for notice in notices {
        let key = (notice.provider.clone(), notice.dedupe_key.clone());
        let Some(row) = inserted.remove(&key) else {
            stored.push(Stored::Duplicate);
            continue;
        };
        let event = ProviderNotificationReceived {
            provider: row.provider,
            notification_id: row.id,
            dedupe_key: row.dedupe_key,
            payment_id: row.payment_id,
        };
        // Notices about payments we do not know still need a correlation id: the nil UUID
        // says "no payment" without inventing one.
        let correlation = row.payment_id.map_or(Uuid::nil(), Uuid::from);
        envelopes.push(Envelope::new(&event, correlation, None)?);
        stored.push(Stored::New {
            notification_id: row.id,
            payment_id: row.payment_id,
        });
    }
    messaging::outbox::enqueue_all(conn, &envelopes).await?;
    Ok(stored)
}

/// Our payment, as the statement storing the notice reads it: by the provider's id first,
/// else by the id the notice claims; NULL when we do not know it (the notice is still
/// recorded). The rule of [`payments::find_notified`], as an expression.
fn matched_payment(notice: &Notice) -> Expr {
    use payments::Column as P;
    let by_provider = notice
        .provider_payment_id
        .as_ref()
        .map(|provider_payment_id| {
            Query::select()
                .column(P::Id)
                .from(payments::Entity)
                .and_where(P::Provider.eq(notice.provider.clone()))
                .and_where(P::ProviderPaymentId.eq(provider_payment_id.clone()))
                .to_owned()
        });
    let by_claim = notice.claimed_payment_id.map(|claimed| {
        Query::select()
            .column(P::Id)
            .from(payments::Entity)
            .and_where(P::Id.eq(claimed))
            .to_owned()
    });
    let mut found: Vec<Expr> = [by_provider, by_claim]
        .into_iter()
        .flatten()
        .map(|query| Expr::SubQuery(None, Box::new(query.into_sub_query_statement())))
        .collect();
    match found.len() {
        0 => Expr::value(Option::<PaymentId>::None),
        1 => found.remove(0),
        _ => Func::coalesce(found).into(),
    }
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

    /// Two payments: `(by the provider's id, by our id)`.
    async fn two_payments(db: &TestDb) -> (PaymentId, PaymentId) {
        use sea_orm::ActiveModelTrait;
        use testkit::fixtures::{customer_and_tariff, pending_payment};
        let (user, tariff) = customer_and_tariff(&db.conn, 42).await;
        let mut ids = Vec::new();
        for provider_payment_id in [Some("yk-1"), None] {
            let payment = pending_payment(&user, &tariff, "yookassa", provider_payment_id)
                .insert(&db.conn)
                .await
                .unwrap();
            ids.push(payment.id);
        }
        (ids[0], ids[1])
    }

    /// The statement that stores a group matches each notice's payment: by the provider's id
    /// first, else by the id it claims if that exists, else none — on both databases.
    async fn a_group_matches_each_notice_to_its_payment(db: TestDb) {
        let (by_provider, by_claim) = two_payments(&db).await;
        let notices = [
            Notice {
                provider_payment_id: Some("yk-1".into()),
                // The provider's id wins over a claim.
                claimed_payment_id: Some(by_claim),
                ..notice("a", "{}")
            },
            Notice {
                claimed_payment_id: Some(by_claim),
                ..notice("b", "{}")
            },
            Notice {
                provider_payment_id: Some("yk-unknown".into()),
                claimed_payment_id: Some(PaymentId::new()),
                ..notice("c", "{}")
            },
            notice("d", "{}"),
            // A key twice in one group: the first copy is the new one.
            Notice {
                provider_payment_id: Some("yk-1".into()),
                ..notice("a", "{}")
            },
        ];
        let stored = store_all(&db.conn, &notices.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        let matched: Vec<Option<Option<PaymentId>>> = stored
            .iter()
            .map(|s| match s {
                Stored::New { payment_id, .. } => Some(*payment_id),
                Stored::Duplicate => None,
            })
            .collect();
        assert_eq!(
            matched,
            [
                Some(Some(by_provider)),
                Some(Some(by_claim)),
                Some(None),
                Some(None),
                None
            ]
        );
        assert_eq!(rows(&db).await, (4, 4));
        let rows = provider_notifications::Entity::find()
            .all(&db.conn)
            .await
            .unwrap();
        let linked: Vec<(String, Option<PaymentId>)> = rows
            .into_iter()
            .map(|row| (row.dedupe_key, row.payment_id))
            .collect();
        assert!(
            linked.contains(&("a".into(), Some(by_provider))),
            "{linked:?}"
        );
        assert!(linked.contains(&("b".into(), Some(by_claim))), "{linked:?}");
    }

    #[tokio::test]
    async fn a_group_matches_each_notice_to_its_payment_on_postgres() {
        a_group_matches_each_notice_to_its_payment(TestDb::new().await).await;
    }

    #[tokio::test]
    async fn a_group_matches_each_notice_to_its_payment_on_sqlite() {
        a_group_matches_each_notice_to_its_payment(TestDb::sqlite().await).await;
    }
}
