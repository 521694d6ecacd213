//! The sending queue: every message the bot sends on its own initiative — notifications about
//! payments and subscriptions, expiry reminders, later broadcasts — is a `send_queue` row
//! first, and one sender drains the rows at Telegram's pace.
//!
//! - **Durable and once.** A row is written in the same transaction as what it announces
//!   ([`enqueue`]) under a UNIQUE `dedupe_key` (`event:<event id>`, `reminder:<id>`), so an
//!   event or a reminder is queued at most once, and a restart loses nothing.
//! - **Telegram's limits.** About 30 messages a second in all: every send waits for a slot of
//!   the process-wide [`ratelimit::TELEGRAM`] budget (`TELEGRAM_API_LIMIT`). One a second per
//!   chat: a [`ratelimit::Keyed`] budget per chat; a row whose chat has no slot yet is put
//!   back for when it has, and the sender goes on with other chats. A 429 pauses every send
//!   for its `retry_after` and puts the row back for then (a 429 is Telegram's flood control,
//!   not the message's fault: it costs no attempt).
//! - **Blocked users.** A 403 ("bot was blocked by the user") marks the chat in `bot_chats`;
//!   its rows are skipped, without a call, until the user writes to the bot again
//!   ([`unblock`]).
//! - **Still true?** A row can carry a [`Guard`]: a reminder about a period is skipped if the
//!   subscription was renewed (its expiry moved) while the reminder waited in the queue.
//! - **Claims.** A sender claims a batch by moving the rows' `not_before` a lease ahead
//!   (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so several bot processes share the queue); a
//!   sender that dies leaves its rows to be due again when the lease ends. The send is made
//!   with no transaction open. Delivery is therefore at least once: a crash between
//!   Telegram's answer and the `sent` mark — made for the whole batch in one statement at its
//!   end — sends the batch's sent rows again.
//! - **News off.** A broadcast's copy to a chat that turned news off is skipped.
//! - **Order.** Notifications go before reminders, reminders before broadcasts
//!   (`priority`), then oldest first — a backlog of 100,000 reminders never holds back a
//!   payment's confirmation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::broadcast::SKIPPED_BLOCKED;
use domain::entities::{bot_chats, send_queue, subscriptions, users};
use frankenstein::AsyncTelegramApi;
use frankenstein::client_reqwest::Bot as Api;
use frankenstein::methods::SendMessageParams;
use frankenstein::types::{InlineKeyboardMarkup, ReplyMarkup};
use futures::{FutureExt, StreamExt};
use ratelimit::{Keyed, Rate};
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, OnConflict, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, StatementBuilder, TryInsertResult,
};
use serde::{Deserialize, Serialize};
use service_kit::Shutdown;
use tokio::sync::Notify;

use crate::qr;
use crate::texts::Lang;

/// What a row is; it also orders the queue (lower first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Notification,
    Reminder,
    Broadcast,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Notification => "notification",
            Kind::Reminder => "reminder",
            Kind::Broadcast => "broadcast",
        }
    }

    fn priority(self) -> i32 {
        match self {
            Kind::Notification => 0,
            Kind::Reminder => 1,
            Kind::Broadcast => 2,
        }
    }
}

/// Send only while the subscription still expires at `expires_at` (the period a reminder is
/// about has not been renewed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub subscription_id: i64,
    pub expires_at: DateTime<Utc>,
}

/// One message, as the queue stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_markup: Option<InlineKeyboardMarkup>,
    /// Sent as a photo of this text's QR code with `text` as its caption (plain text if
    /// Telegram refuses the photo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
}

impl Outgoing {
    pub fn text(text: String, reply_markup: Option<InlineKeyboardMarkup>) -> Self {
        Self {
            text,
            reply_markup,
            qr: None,
            guard: None,
        }
    }
}

/// A row to queue.
#[derive(Debug, Clone)]
pub struct Queued {
    pub chat: i64,
    pub kind: Kind,
    pub dedupe_key: String,
    pub message: Outgoing,
}

fn row(q: &Queued, now: DateTime<Utc>) -> Result<send_queue::ActiveModel, DbErr> {
    let payload = serde_json::to_string(&q.message).map_err(|e| DbErr::Custom(e.to_string()))?;
    Ok(send_queue::ActiveModel {
        chat_id: Set(q.chat),
        kind: Set(q.kind.as_str().to_owned()),
        priority: Set(q.kind.priority()),
        dedupe_key: Set(q.dedupe_key.clone()),
        payload: Set(payload),
        status: Set(send_queue::PENDING.to_owned()),
        attempts: Set(0),
        not_before: Set(now),
        last_error: Set(None),
        created_at: Set(now),
        sent_at: Set(None),
        ..Default::default()
    })
}

/// Queues `rows` (through `conn`, typically the transaction of what they announce); a row
/// whose `dedupe_key` is queued already is left as it is. Returns how many were new.
pub async fn enqueue<C: ConnectionTrait>(conn: &C, rows: &[Queued]) -> Result<u64, DbErr> {
    if rows.is_empty() {
        return Ok(0);
    }
    let now = Utc::now();
    let models = rows
        .iter()
        .map(|q| row(q, now))
        .collect::<Result<Vec<_>, _>>()?;
    let inserted = send_queue::Entity::insert_many(models)
        .on_conflict_do_nothing_on([send_queue::Column::DedupeKey])
        .exec_without_returning(conn)
        .await?;
    Ok(match inserted {
        TryInsertResult::Inserted(n) => n,
        TryInsertResult::Conflicted | TryInsertResult::Empty => 0,
    })
}

/// Queues one message to `chat` in the chat's language, which the statement that queues it
/// reads (`users.language_code`, by [`Lang::is_english_sql`]): one statement instead of a
/// look-up of the language and an insert. `render` gives the message in a language. A
/// `dedupe_key` queued already is left as it is; returns whether the row is new.
pub async fn enqueue_in_language<C: ConnectionTrait>(
    conn: &C,
    chat: i64,
    kind: Kind,
    dedupe_key: String,
    render: impl Fn(Lang) -> Outgoing,
) -> Result<bool, DbErr> {
    use send_queue::Column as C;
    let payload =
        |lang| serde_json::to_string(&render(lang)).map_err(|e| DbErr::Custom(e.to_string()));
    let english = Query::select()
        .expr(Expr::val(1))
        .from(users::Entity)
        .and_where(users::Column::TelegramId.eq(chat))
        .and_where(Lang::is_english_sql(Expr::col((
            users::Entity,
            users::Column::LanguageCode,
        ))))
        .to_owned();
    let payload = Expr::case(Expr::exists(english), payload(Lang::En)?).finally(payload(Lang::Ru)?);
    let now = Utc::now();
    let insert = Query::insert()
        .into_table(send_queue::Entity)
        .columns([
            C::ChatId,
            C::Kind,
            C::Priority,
            C::DedupeKey,
            C::Payload,
            C::Status,
            C::Attempts,
            C::NotBefore,
            C::CreatedAt,
        ])
        .values_panic([
            chat.into(),
            kind.as_str().into(),
            kind.priority().into(),
            dedupe_key.into(),
            payload.into(),
            send_queue::PENDING.into(),
            0.into(),
            now.into(),
            now.into(),
        ])
        .on_conflict(OnConflict::column(C::DedupeKey).do_nothing().to_owned())
        .to_owned();
    Ok(conn.execute(&insert).await?.rows_affected() > 0)
}

/// The user wrote to the bot: the chat is known from now on (broadcasts reach it), and if it
/// was marked blocked, it no longer is. One statement; it writes only for a new chat or a
/// blocked one.
pub async fn unblock<C: ConnectionTrait>(conn: &C, chat: i64) -> Result<(), DbErr> {
    bot_chats::Entity::insert(chat_row(chat))
        .on_conflict(
            OnConflict::column(bot_chats::Column::ChatId)
                .update_columns([bot_chats::Column::BlockedAt, bot_chats::Column::UpdatedAt])
                .action_and_where(
                    Expr::col((bot_chats::Entity, bot_chats::Column::BlockedAt)).is_not_null(),
                )
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

/// Queues the copies of broadcast `broadcast_id` (through `conn`, the transaction that moves
/// the broadcast to `sending`), a thousand rows a statement. Returns how many were new.
pub async fn enqueue_broadcast<C: ConnectionTrait>(
    conn: &C,
    broadcast_id: i64,
    rows: &[Queued],
) -> Result<u64, DbErr> {
    let now = Utc::now();
    let mut new = 0;
    for chunk in rows.chunks(1000) {
        let models = chunk
            .iter()
            .map(|q| {
                let mut model = row(q, now)?;
                model.broadcast_id = Set(Some(broadcast_id));
                Ok(model)
            })
            .collect::<Result<Vec<_>, DbErr>>()?;
        let inserted = send_queue::Entity::insert_many(models)
            .on_conflict_do_nothing_on([send_queue::Column::DedupeKey])
            .exec_without_returning(conn)
            .await?;
        if let TryInsertResult::Inserted(n) = inserted {
            new += n;
        }
    }
    Ok(new)
}

/// Marks `chat` as having blocked the bot.
async fn block(db: &DatabaseConnection, chat: i64) -> Result<(), DbErr> {
    let mut row = chat_row(chat);
    row.blocked_at = Set(Some(Utc::now()));
    upsert_chat(db, row, &[bot_chats::Column::BlockedAt]).await
}

/// A `bot_chats` row for `chat` with every column at its default (`updated_at`: now), for
/// [`upsert_chat`].
pub(crate) fn chat_row(chat: i64) -> bot_chats::ActiveModel {
    bot_chats::ActiveModel {
        chat_id: Set(chat),
        blocked_at: Set(None),
        reminders_off: Set(false),
        updated_at: Set(Utc::now()),
        qr_link: Set(None),
        qr_file_id: Set(None),
        broadcasts_off: Set(false),
    }
}

/// Writes `columns` of `row` (and `updated_at`) to its chat's row, creating the row with
/// `row`'s values if the chat has none yet.
pub(crate) async fn upsert_chat<C: ConnectionTrait>(
    conn: &C,
    row: bot_chats::ActiveModel,
    columns: &[bot_chats::Column],
) -> Result<(), DbErr> {
    bot_chats::Entity::insert(row)
        .on_conflict(
            OnConflict::column(bot_chats::Column::ChatId)
                .update_columns(
                    columns
                        .iter()
                        .copied()
                        .chain([bot_chats::Column::UpdatedAt]),
                )
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

/// Sends a text message (waiting for a slot of the process-wide Telegram budget).
pub async fn send_text(
    api: &Api,
    chat: i64,
    text: String,
    markup: Option<InlineKeyboardMarkup>,
) -> Result<(), frankenstein::Error> {
    let params = SendMessageParams::builder()
        .chat_id(chat)
        .text(text)
        .maybe_reply_markup(markup.map(ReplyMarkup::InlineKeyboardMarkup))
        .build();
    ratelimit::TELEGRAM.wait().await;
    api.send_message(&params).await.map(|_| ())
}

/// Telegram's limit for a photo's caption.
const CAPTION_LIMIT: usize = 1024;

/// A QR photo Telegram holds already: the link it shows and its `file_id`.
#[derive(Debug, Clone, Copy)]
pub struct HeldQr<'a> {
    pub link: &'a str,
    pub file_id: &'a str,
}

/// Sends `message`: one Telegram call (two only when Telegram refuses the QR photo itself).
/// A QR code of the link in `held` goes by its `file_id`; one uploaded anew comes back as
/// `Ok(Some(file_id))`, for the caller to keep.
pub async fn send(
    api: &Api,
    chat: i64,
    message: Outgoing,
    held: Option<HeldQr<'_>>,
) -> Result<Option<String>, frankenstein::Error> {
    let fits = message.text.chars().count() <= CAPTION_LIMIT;
    let markup = message.reply_markup.as_ref();
    if let (true, Some(link), Some(held)) = (fits, message.qr.as_deref(), held)
        && held.link == link
    {
        match qr::send_photo_by_id(api, chat, held.file_id, Some(&message.text), markup).await {
            // Telegram no longer knows the file: upload it again below.
            Err(frankenstein::Error::Api(error)) if error.error_code == 400 => {
                tracing::info!(chat, description = %error.description, "QR file_id refused; uploading again");
            }
            other => return other.map(|()| None),
        }
    }
    let image = message.qr.as_deref().filter(|_| fits).and_then(|data| {
        qr::png(data)
            .inspect_err(|error| tracing::warn!(%error, "no QR code; text only"))
            .ok()
    });
    let Some(image) = image else {
        return send_text(api, chat, message.text, message.reply_markup)
            .await
            .map(|()| None);
    };
    match qr::send_photo(
        api,
        chat,
        &image.bytes,
        "qr.png",
        Some(&message.text),
        markup,
    )
    .await
    {
        // Telegram refused the photo itself: the text alone still says it all.
        Err(frankenstein::Error::Api(error)) if error.error_code == 400 => {
            tracing::warn!(chat, description = %error.description, "sendPhoto refused; sending the text");
            send_text(api, chat, message.text, message.reply_markup)
                .await
                .map(|()| None)
        }
        other => other,
    }
}

/// Keeps the `file_id` of `chat`'s QR code of `link`.
async fn hold_qr(
    db: &DatabaseConnection,
    chat: i64,
    link: &str,
    file_id: String,
) -> Result<(), DbErr> {
    let mut row = chat_row(chat);
    row.qr_link = Set(Some(link.to_owned()));
    row.qr_file_id = Set(Some(file_id));
    upsert_chat(
        db,
        row,
        &[bot_chats::Column::QrLink, bot_chats::Column::QrFileId],
    )
    .await
}

/// How the sender works; [`SenderConfig::default`] suits production.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Rows claimed at a time (about a second's worth at Telegram's global rate).
    pub batch: u64,
    /// Sends in flight at once (Telegram answers in ~100 ms; one at a time would not reach
    /// 30 a second).
    pub concurrency: usize,
    /// A claimed row is due again after this if its sender died.
    pub lease: Duration,
    /// How often an idle sender looks for due rows (it is also woken by [`Sender::nudge`]).
    pub poll: Duration,
    /// Per chat: Telegram allows about one message a second.
    pub per_chat: Rate,
    /// A row that failed this many times (5xx, timeouts) is given up as `failed`.
    pub max_attempts: i32,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            batch: 30,
            concurrency: 8,
            lease: Duration::from_secs(120),
            poll: Duration::from_millis(100),
            // A payment's confirmation and its activation come in the same second: Telegram
            // tolerates such short bursts in a chat as long as the average stays about 1/s.
            per_chat: Rate::per_second(1, 3),
            max_attempts: 8,
        }
    }
}

/// What one [`Sender::run_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub claimed: usize,
    pub sent: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Put back for later (the chat's or Telegram's limit, a transient error).
    pub deferred: usize,
}

impl Drained {
    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Sent => self.sent += 1,
            Outcome::Skipped(_) => self.skipped += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Later { .. } => self.deferred += 1,
        }
    }
}

/// Drains the queue (see the module docs).
pub struct Sender {
    api: Api,
    db: DatabaseConnection,
    config: SenderConfig,
    per_chat: Keyed<i64>,
    /// Telegram said 429: nothing is sent before this.
    paused_until: Mutex<Option<Instant>>,
    nudge: Arc<Notify>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What became of one row.
enum Outcome {
    Sent,
    Skipped(&'static str),
    Failed(String),
    /// Due again at this time; `attempt` says whether it counts as a failed attempt.
    Later {
        at: DateTime<Utc>,
        error: Option<String>,
        attempt: bool,
    },
}

fn later(after: Duration, error: Option<String>, attempt: bool) -> Outcome {
    Outcome::Later {
        at: Utc::now() + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX),
        error,
        attempt,
    }
}

impl Sender {
    pub fn new(api: Api, db: DatabaseConnection, config: SenderConfig) -> Self {
        let per_chat = Keyed::new("telegram_chat", Some(config.per_chat), 100_000);
        Self {
            api,
            db,
            config,
            per_chat,
            paused_until: Mutex::new(None),
            nudge: Arc::new(Notify::new()),
        }
    }

    /// Wakes an idle sender (after queuing rows in this process).
    pub fn nudge(&self) -> Arc<Notify> {
        self.nudge.clone()
    }

    /// Drains until `shutdown`: a full batch is followed at once by the next; a shorter one
    /// waits for a nudge or the poll.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            // A nudge already waiting is answered by this claim, which sees every row
            // committed before it: the notifier nudges after its commit, so kept it would cost
            // an empty claim after nearly every batch (as in the outbox relay).
            let _ = self.nudge.notified().now_or_never();
            let drained = tokio::select! {
                () = shutdown.cancelled() => return,
                drained = self.run_once() => drained,
            };
            let idle = match drained {
                Ok(drained) => (drained.claimed as u64) < self.config.batch,
                Err(error) => {
                    tracing::warn!(%error, "send queue: cannot claim rows");
                    true
                }
            };
            if idle {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.nudge.notified() => {}
                    () = tokio::time::sleep(self.config.poll) => {}
                }
            }
        }
    }

    /// Claims one batch of due rows and sends them.
    pub async fn run_once(&self) -> Result<Drained, DbErr> {
        self.wait_pause().await;
        let rows = self.claim().await?;
        let mut drained = Drained {
            claimed: rows.len(),
            ..Drained::default()
        };
        if rows.is_empty() {
            return Ok(drained);
        }
        // One chat's rows go one after another, in order; chats go side by side. Once a row
        // of a chat is put back, the chat's later rows are put back to the same time, so the
        // chat's order holds on the next claim too.
        let mut chats: Vec<Vec<send_queue::Model>> = Vec::new();
        for row in rows {
            match chats.iter_mut().find(|c| c[0].chat_id == row.chat_id) {
                Some(chat) => chat.push(row),
                None => chats.push(vec![row]),
            }
        }
        // The batch's chats are read in one query. A row's outcome is recorded as soon as it
        // is known, so the writes overlap the other chats' sends — except `sent`, the common
        // outcome, which is recorded for the whole batch in one statement at its end (a crash
        // before that sends the batch's rows again, as any crash after a send does).
        let known = self.chats(&chats).await?;
        // Each chat gives back the rows it sent even when recording another outcome failed, so
        // that a database error does not leave sent rows unmarked (to be sent again).
        let outcomes: Vec<(Drained, Vec<i64>, Option<DbErr>)> = futures::stream::iter(chats)
            .map(|chat| {
                let mut state = known.get(&chat[0].chat_id).cloned();
                async move {
                    let mut chat_drained = Drained::default();
                    let mut sent = Vec::new();
                    let mut put_back = None;
                    for row in chat {
                        let outcome = match put_back {
                            Some(at) => Outcome::Later {
                                at,
                                error: None,
                                attempt: false,
                            },
                            None => self.deliver(&row, &mut state).await,
                        };
                        if let Outcome::Later { at, .. } = &outcome {
                            put_back = Some(*at);
                        }
                        chat_drained.count(&outcome);
                        match outcome {
                            Outcome::Sent => sent.push(row.id),
                            outcome => {
                                if let Err(error) = self.record(row.id, outcome).await {
                                    return (chat_drained, sent, Some(error));
                                }
                            }
                        }
                    }
                    (chat_drained, sent, None)
                }
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        let mut sent = Vec::new();
        let mut failure = None;
        for (chat, ids, error) in outcomes {
            drained.sent += chat.sent;
            drained.skipped += chat.skipped;
            drained.failed += chat.failed;
            drained.deferred += chat.deferred;
            sent.extend(ids);
            failure = failure.or(error);
        }
        self.record_sent(&sent).await?;
        match failure {
            Some(error) => Err(error),
            None => Ok(drained),
        }
    }

    /// The `bot_chats` rows of the claimed chats.
    async fn chats(
        &self,
        chats: &[Vec<send_queue::Model>],
    ) -> Result<HashMap<i64, bot_chats::Model>, DbErr> {
        Ok(bot_chats::Entity::find()
            .filter(bot_chats::Column::ChatId.is_in(chats.iter().map(|c| c[0].chat_id)))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|chat| (chat.chat_id, chat))
            .collect())
    }

    /// Marks the rows `ids` sent, in one statement.
    async fn record_sent(&self, ids: &[i64]) -> Result<(), DbErr> {
        use send_queue::Column as C;
        if ids.is_empty() {
            return Ok(());
        }
        metrics::counter!(METRIC_SENT, "outcome" => "sent").increment(ids.len() as u64);
        send_queue::Entity::update_many()
            .col_expr(C::Status, Expr::value(send_queue::SENT))
            .col_expr(C::SentAt, Expr::value(Utc::now()))
            .filter(C::Id.is_in(ids.iter().copied()))
            .filter(C::Status.eq(send_queue::PENDING))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    async fn wait_pause(&self) {
        let until = *self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    fn pause(&self, retry_after: Duration) {
        let until = Instant::now() + retry_after;
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// Takes up to a batch of due rows by moving their `not_before` a lease ahead.
    async fn claim(&self) -> Result<Vec<send_queue::Model>, DbErr> {
        let now = Utc::now();
        let lease = now + chrono::Duration::from_std(self.config.lease).unwrap_or_default();
        let backend = self.db.get_database_backend();
        let mut due = Query::select();
        due.column(send_queue::Column::Id)
            .from(send_queue::Entity)
            .and_where(send_queue::Column::Status.eq(send_queue::PENDING))
            .and_where(send_queue::Column::NotBefore.lte(now))
            .order_by(send_queue::Column::Priority, sea_orm::Order::Asc)
            .order_by(send_queue::Column::NotBefore, sea_orm::Order::Asc)
            .order_by(send_queue::Column::Id, sea_orm::Order::Asc)
            .limit(self.config.batch);
        if backend == DbBackend::Postgres {
            due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let claim = Query::update()
            .table(send_queue::Entity)
            .value(send_queue::Column::NotBefore, lease)
            .and_where(Expr::col(send_queue::Column::Id).in_subquery(due))
            .returning_all()
            .to_owned();
        let mut rows = send_queue::Entity::find()
            .from_raw_sql(StatementBuilder::build(&claim, &backend))
            .all(&self.db)
            .await?;
        rows.sort_by_key(|r| (r.priority, r.id));
        Ok(rows)
    }

    /// Sends `row` to its chat; `chat` is the chat's `bot_chats` row as this batch knows it,
    /// kept up to date for the chat's next row (blocked, the QR code Telegram holds).
    async fn deliver(
        &self,
        row: &send_queue::Model,
        chat: &mut Option<bot_chats::Model>,
    ) -> Outcome {
        match self.try_deliver(row, chat).await {
            Ok(outcome) => outcome,
            Err(error) => later(
                Duration::from_secs(5),
                Some(format!("database: {error}")),
                true,
            ),
        }
    }

    async fn try_deliver(
        &self,
        row: &send_queue::Model,
        known: &mut Option<bot_chats::Model>,
    ) -> Result<Outcome, DbErr> {
        let message: Outgoing = match serde_json::from_str(&row.payload) {
            Ok(message) => message,
            Err(error) => return Ok(Outcome::Failed(format!("unreadable payload: {error}"))),
        };
        let chat = &*known;
        if chat.as_ref().is_some_and(|c| c.blocked_at.is_some()) {
            return Ok(Outcome::Skipped(SKIPPED_BLOCKED));
        }
        if row.kind == Kind::Broadcast.as_str() && chat.as_ref().is_some_and(|c| c.broadcasts_off) {
            return Ok(Outcome::Skipped("news turned off"));
        }
        if let Some(guard) = message.guard {
            if row.kind == Kind::Reminder.as_str() && chat.as_ref().is_some_and(|c| c.reminders_off)
            {
                return Ok(Outcome::Skipped("reminders turned off"));
            }
            let current = subscriptions::Entity::find_by_id(guard.subscription_id)
                .one(&self.db)
                .await?;
            if current.is_none_or(|s| s.expires_at != guard.expires_at) {
                return Ok(Outcome::Skipped("the period was renewed"));
            }
        }
        let decision = self.per_chat.check(&row.chat_id);
        if let ratelimit::Decision::Limited { retry_after } = decision {
            return Ok(later(retry_after, None, false));
        }
        self.wait_pause().await;
        let link = message.qr.clone();
        let held = chat.as_ref().and_then(|c| {
            Some(HeldQr {
                link: c.qr_link.as_deref()?,
                file_id: c.qr_file_id.as_deref()?,
            })
        });
        Ok(match send(&self.api, row.chat_id, message, held).await {
            Ok(uploaded) => {
                if let (Some(file_id), Some(link)) = (uploaded, link) {
                    hold_qr(&self.db, row.chat_id, &link, file_id.clone()).await?;
                    if let Some(chat) = known {
                        chat.qr_link = Some(link);
                        chat.qr_file_id = Some(file_id);
                    }
                }
                Outcome::Sent
            }
            Err(frankenstein::Error::Api(error)) => match error.error_code {
                429 => {
                    let after = Duration::from_secs(
                        error
                            .parameters
                            .and_then(|p| p.retry_after)
                            .map_or(1, |secs| u64::from(secs).clamp(1, 3600)),
                    );
                    tracing::warn!(
                        chat = row.chat_id,
                        retry_after_s = after.as_secs(),
                        "Telegram said 429; sending paused"
                    );
                    self.pause(after);
                    later(after, Some(error.description), false)
                }
                403 => {
                    tracing::info!(chat = row.chat_id, description = %error.description, "the user blocked the bot; marked and skipped");
                    block(&self.db, row.chat_id).await?;
                    if let Some(chat) = known {
                        chat.blocked_at = Some(Utc::now());
                    }
                    Outcome::Skipped(SKIPPED_BLOCKED)
                }
                400 => Outcome::Failed(error.description),
                _ => self.retry(row, error.description),
            },
            Err(error) => self.retry(row, error.to_string()),
        })
    }

    fn retry(&self, row: &send_queue::Model, error: String) -> Outcome {
        if row.attempts + 1 >= self.config.max_attempts {
            return Outcome::Failed(error);
        }
        // 2, 4, 8 … seconds, at most five minutes.
        let backoff = Duration::from_secs(2u64.saturating_pow(row.attempts.unsigned_abs() + 1))
            .min(Duration::from_secs(300));
        later(backoff, Some(error), true)
    }

    async fn record(&self, id: i64, outcome: Outcome) -> Result<(), DbErr> {
        use send_queue::Column as C;
        let mut update = send_queue::Entity::update_many()
            .filter(C::Id.eq(id))
            .filter(C::Status.eq(send_queue::PENDING));
        update = match outcome {
            Outcome::Sent => return self.record_sent(&[id]).await,
            Outcome::Skipped(why) => {
                metrics::counter!(METRIC_SENT, "outcome" => "skipped").increment(1);
                update
                    .col_expr(C::Status, Expr::value(send_queue::SKIPPED))
                    .col_expr(C::LastError, Expr::value(why))
            }
            Outcome::Failed(error) => {
                metrics::counter!(METRIC_SENT, "outcome" => "failed").increment(1);
                tracing::warn!(send_id = id, %error, "queued message given up");
                update
                    .col_expr(C::Status, Expr::value(send_queue::FAILED))
                    .col_expr(C::LastError, Expr::value(error))
                    .col_expr(C::Attempts, Expr::col(C::Attempts).add(1))
            }
            Outcome::Later { at, error, attempt } => {
                let update = update.col_expr(C::NotBefore, Expr::value(at));
                let update = match error {
                    Some(error) => update.col_expr(C::LastError, Expr::value(error)),
                    None => update,
                };
                if attempt {
                    update.col_expr(C::Attempts, Expr::col(C::Attempts).add(1))
                } else {
                    update
                }
            }
        };
        update.exec(&self.db).await?;
        Ok(())
    }
}

/// Counter: queued messages done, by `outcome` (`sent`, `skipped`, `failed`).
pub const METRIC_SENT: &str = "bot_send_queue_total";

#[cfg(test)]
mod tests {
    use domain::migration::Migrator;
    use sea_orm::{ActiveModelTrait, PaginatorTrait};
    use sea_orm_migration::MigratorTrait;

    use super::*;

    /// The claim's SQL (UPDATE … WHERE id IN (SELECT … LIMIT) RETURNING) on SQLite, the
    /// single-process mode's database: due rows are leased once, in priority order.
    #[tokio::test]
    async fn rows_are_claimed_once_on_sqlite() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        Migrator::up(&db, None).await.unwrap();
        let queued = |chat, kind, key: &str| Queued {
            chat,
            kind,
            dedupe_key: key.to_owned(),
            message: Outgoing::text("hi".into(), None),
        };
        let rows = [
            queued(1, Kind::Broadcast, "b"),
            queued(2, Kind::Reminder, "r"),
            queued(3, Kind::Notification, "n"),
        ];
        assert_eq!(enqueue(&db, &rows).await.unwrap(), 3);
        assert_eq!(enqueue(&db, &rows).await.unwrap(), 0);
        let api = Api::new_url("http://127.0.0.1:9/botX".to_owned());
        let sender = Sender::new(api, db, SenderConfig::default());
        let claimed: Vec<String> = sender
            .claim()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.dedupe_key)
            .collect();
        assert_eq!(claimed, ["n", "r", "b"], "notifications first");
        assert!(sender.claim().await.unwrap().is_empty(), "leased");
    }

    /// The queueing statement picks the chat's language by [`Lang::from_code`]'s rule: each
    /// chat gets the payload of the language that rule gives its `language_code` (Russian
    /// without a users row), and a key queued already is left as it is.
    async fn a_row_is_queued_in_the_chats_language(db: DatabaseConnection) {
        let codes = [
            None,
            Some(""),
            Some("en"),
            Some("EN"),
            Some("en-GB"),
            Some("En-us"),
            Some("ru"),
            Some("de"),
            Some("e"),
            Some("uk-en"),
        ];
        let now = Utc::now();
        for (chat, code) in (1_i64..).zip(codes) {
            users::ActiveModel {
                telegram_id: Set(chat),
                language_code: Set(code.map(str::to_owned)),
                created_at: Set(now),
                ..Default::default()
            }
            .insert(&db)
            .await
            .unwrap();
        }
        // Chat 99 has no users row.
        let chats = (1_i64..).zip(codes.map(Some)).chain([(99, None)]);
        let render = |lang: Lang| Outgoing::text(lang.code().to_owned(), None);
        for (chat, _) in chats.clone() {
            let key = format!("event:{chat}");
            assert!(
                enqueue_in_language(&db, chat, Kind::Notification, key.clone(), render)
                    .await
                    .unwrap()
            );
            assert!(
                !enqueue_in_language(&db, chat, Kind::Notification, key, |_| {
                    Outgoing::text("again".into(), None)
                })
                .await
                .unwrap(),
                "queued once, the first payload kept"
            );
        }
        for (chat, code) in chats {
            let row = send_queue::Entity::find()
                .filter(send_queue::Column::ChatId.eq(chat))
                .one(&db)
                .await
                .unwrap()
                .unwrap();
            let message: Outgoing = serde_json::from_str(&row.payload).unwrap();
            let expected = Lang::from_code(code.flatten());
            assert_eq!(message.text, expected.code(), "chat {chat}, code {code:?}");
            assert_eq!(
                (
                    row.kind.as_str(),
                    row.priority,
                    row.status.as_str(),
                    row.attempts
                ),
                ("notification", 0, send_queue::PENDING, 0)
            );
        }
    }

    #[tokio::test]
    async fn a_row_is_queued_in_the_chats_language_on_postgres() {
        a_row_is_queued_in_the_chats_language(testkit::TestDb::new().await.conn).await;
    }

    #[tokio::test]
    async fn a_row_is_queued_in_the_chats_language_on_sqlite() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        Migrator::up(&db, None).await.unwrap();
        a_row_is_queued_in_the_chats_language(db).await;
    }

    /// The notifier nudges the sender after its commit, often for rows the sender has
    /// already claimed: the claim answers the nudges waiting before it, so no empty claim
    /// follows, and a row queued later still wakes the sender.
    #[tokio::test]
    async fn a_claim_answers_the_nudges_before_it() {
        let mut db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        Migrator::up(&db, None).await.unwrap();
        let claims = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = claims.clone();
        db.set_metric_callback(move |info| {
            if info.statement.sql.starts_with(r#"UPDATE "send_queue""#)
                && info.statement.sql.contains("IN (SELECT")
            {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let claims = move || claims.load(std::sync::atomic::Ordering::SeqCst);
        // The chat blocked the bot: its rows are settled without a call to Telegram.
        block(&db, 7).await.unwrap();
        let queue = |key: &str| {
            [Queued {
                chat: 7,
                kind: Kind::Notification,
                dedupe_key: key.to_owned(),
                message: Outgoing::text("hi".into(), None),
            }]
        };
        let settled = |db: DatabaseConnection, n: u64| async move {
            for _ in 0..200 {
                let done = send_queue::Entity::find()
                    .filter(send_queue::Column::Status.eq(send_queue::SKIPPED))
                    .count(&db)
                    .await
                    .unwrap();
                if done == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{n} rows were not settled");
        };
        let api = Api::new_url("http://127.0.0.1:9/botX".to_owned());
        let config = SenderConfig {
            poll: Duration::from_secs(3600),
            ..SenderConfig::default()
        };
        let sender = Arc::new(Sender::new(api, db.clone(), config));
        let nudge = sender.nudge();
        for key in ["a", "b"] {
            enqueue(&db, &queue(key)).await.unwrap();
            nudge.notify_one();
        }
        let shutdown = Shutdown::new();
        let running = tokio::spawn(sender.run(shutdown.clone()));
        settled(db.clone(), 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            claims(),
            1,
            "one claim took both rows and answered both nudges"
        );

        enqueue(&db, &queue("c")).await.unwrap();
        nudge.notify_one();
        settled(db.clone(), 3).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(claims(), 2);
        shutdown.cancel();
        running.await.unwrap();
    }
}
