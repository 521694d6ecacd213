//! The bot's side of broadcasts (issue 23; the life of a row is in [`domain::broadcast`]).
//!
//! [`Broadcasts::run`] looks every [`POLL`] for broadcasts the admin confirmed (in the bot or
//! through the admin API) and for broadcasts being sent:
//!
//! - a `confirmed` one is moved to `sending` in one transaction with its copies, one
//!   `send_queue` row per recipient (`broadcast:<id>:<chat>`, kind `broadcast`, so the sender
//!   drains them at Telegram's pace after notifications and reminders); two bot processes
//!   racing for it queue it once (the conditional update decides);
//! - a `sending` one with no copy pending any more is moved to `done` with its final counts,
//!   and the report to the admin who made it is queued in the same transaction.
//!
//! Every copy carries a "no news" button; a customer who presses it (or turns news off in
//! "My subscription") gets no more broadcasts.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::broadcast::{self, Segment};
use domain::entities::broadcasts;
use frankenstein::types::InlineKeyboardMarkup;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder};
use service_kit::Shutdown;
use tokio::sync::Notify;

use crate::app::ui::{button, keyboard};
use crate::sender::{self, Kind, Outgoing, Queued};
use crate::texts::{Lang, Texts, fill};

/// How often the bot looks for confirmed and finished broadcasts.
pub const POLL: Duration = Duration::from_secs(2);

/// The "no news" button under every copy (and under the admin's preview).
pub fn news_off_markup(t: &Texts) -> InlineKeyboardMarkup {
    keyboard(vec![vec![button(t.btn_news_off, "nw:off")]])
}

/// Queues confirmed broadcasts and reports finished ones.
pub struct Broadcasts {
    db: DatabaseConnection,
    nudge: Arc<Notify>,
}

impl Broadcasts {
    pub fn new(db: DatabaseConnection, nudge: Arc<Notify>) -> Self {
        Self { db, nudge }
    }

    pub async fn run(self, every: Duration, shutdown: Shutdown) {
        loop {
            if let Err(error) = self.pass().await {
                tracing::warn!(%error, "broadcasts: pass failed; retried");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One look at confirmed and sending broadcasts.
    pub async fn pass(&self) -> Result<(), DbErr> {
        let open = broadcasts::Entity::find()
            .filter(broadcasts::Column::Status.is_in([broadcasts::CONFIRMED, broadcasts::SENDING]))
            .order_by_asc(broadcasts::Column::Id)
            .all(&self.db)
            .await?;
        let mut queued = false;
        for row in open {
            queued |= match row.status.as_str() {
                broadcasts::CONFIRMED => self.queue(&row).await?,
                _ => self.finish(&row).await?,
            };
        }
        if queued {
            self.nudge.notify_one();
        }
        Ok(())
    }

    /// `confirmed` → `sending` with one copy per recipient, in one transaction.
    async fn queue(&self, row: &broadcasts::Model) -> Result<bool, DbErr> {
        let segment: Segment = match row.segment.parse() {
            Ok(segment) => segment,
            Err(error) => {
                // Only a row written by hand gets here (the bot and the API check segments).
                tracing::error!(broadcast = row.id, %error, "broadcast with an unknown segment; left as it is");
                return Ok(false);
            }
        };
        let now = Utc::now();
        let txn = service_kit::db::begin_write(&self.db).await?;
        if !broadcast::advance(
            &txn,
            row.id,
            broadcasts::CONFIRMED,
            broadcasts::SENDING,
            now,
        )
        .await?
        {
            return Ok(false);
        }
        let audience = broadcast::audience(&txn, segment, now).await?;
        let copies: Vec<Queued> = audience
            .recipients
            .iter()
            .map(|r| Queued {
                chat: r.chat,
                kind: Kind::Broadcast,
                dedupe_key: format!("broadcast:{}:{}", row.id, r.chat),
                message: Outgoing::text(
                    row.text.clone(),
                    Some(news_off_markup(
                        Lang::from_code(r.language_code.as_deref()).texts(),
                    )),
                ),
            })
            .collect();
        sender::enqueue_broadcast(&txn, row.id, &copies).await?;
        broadcasts::Entity::update_many()
            .col_expr(
                broadcasts::Column::Recipients,
                Expr::value(count(copies.len())),
            )
            .col_expr(
                broadcasts::Column::OptedOut,
                Expr::value(count(audience.opted_out)),
            )
            .filter(broadcasts::Column::Id.eq(row.id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        tracing::info!(
            broadcast = row.id,
            segment = %segment,
            recipients = copies.len(),
            opted_out = audience.opted_out,
            "broadcast queued"
        );
        Ok(true)
    }

    /// `sending` → `done` once no copy is pending, with the counts and the admin's report.
    async fn finish(&self, row: &broadcasts::Model) -> Result<bool, DbErr> {
        let progress = broadcast::progress(&self.db, row.id).await?;
        if progress.pending > 0 {
            return Ok(false);
        }
        let lang = Lang::from_code(row.lang.as_deref());
        let txn = service_kit::db::begin_write(&self.db).await?;
        if !broadcast::advance(
            &txn,
            row.id,
            broadcasts::SENDING,
            broadcasts::DONE,
            Utc::now(),
        )
        .await?
        {
            return Ok(false);
        }
        broadcasts::Entity::update_many()
            .col_expr(broadcasts::Column::Sent, Expr::value(count(progress.sent)))
            .col_expr(
                broadcasts::Column::Blocked,
                Expr::value(count(progress.blocked)),
            )
            .col_expr(
                broadcasts::Column::Failed,
                Expr::value(count(progress.failed)),
            )
            .filter(broadcasts::Column::Id.eq(row.id))
            .exec(&txn)
            .await?;
        if let Some(admin) = row.created_by {
            let text = report(lang.texts(), row, &progress);
            sender::enqueue(
                &txn,
                &[Queued {
                    chat: admin,
                    kind: Kind::Notification,
                    dedupe_key: format!("broadcast-report:{}", row.id),
                    message: Outgoing::text(text, None),
                }],
            )
            .await?;
        }
        txn.commit().await?;
        tracing::info!(
            broadcast = row.id,
            sent = progress.sent,
            blocked = progress.blocked,
            failed = progress.failed,
            skipped = progress.skipped,
            "broadcast done"
        );
        Ok(row.created_by.is_some())
    }
}

fn count(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

/// The admin's final report of `row`.
pub fn report(t: &Texts, row: &broadcasts::Model, progress: &broadcast::Progress) -> String {
    fill(
        t.broadcast_report,
        &[
            ("id", &row.id.to_string()),
            ("segment", &row.segment),
            ("sent", &progress.sent.to_string()),
            ("blocked", &progress.blocked.to_string()),
            ("failed", &progress.failed.to_string()),
            ("skipped", &progress.skipped.to_string()),
            ("opted_out", &row.opted_out.unwrap_or_default().to_string()),
        ],
    )
}
