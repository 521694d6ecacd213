//! `/broadcast <segment> <text>` for admins: a preview (the message as recipients will see
//! it, the segment's head count) with "Send" and "Cancel"; "Send" confirms the draft once and
//! [`crate::broadcasts`] does the rest. `/broadcast` alone lists the latest broadcasts with
//! their progress. Customers turn news off and on with `nw:off` / `nw:on`.

use chrono::Utc;
use domain::broadcast::{self, Segment};
use domain::entities::broadcasts;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::App;
use super::ui::{button, keyboard};
use crate::broadcasts::news_off_markup;
use crate::texts::{Texts, fill};

/// How many broadcasts `/broadcast` alone lists.
const LISTED: u64 = 5;

/// `/broadcast`'s arguments: the segment, then the text (on the same line or the next ones).
fn parse(arg: &str) -> Result<(Segment, &str), String> {
    let (segment, text) = arg
        .trim()
        .split_once(char::is_whitespace)
        .unwrap_or((arg.trim(), ""));
    let segment: Segment = segment.parse()?;
    Ok((segment, broadcast::check_text(text)?))
}

impl App {
    pub(super) async fn broadcast_command(
        &self,
        chat: i64,
        admin: i64,
        message_id: i32,
        t: &Texts,
        arg: &str,
    ) {
        if arg.trim().is_empty() {
            return self.broadcast_list(chat, t).await;
        }
        let (segment, text) = match parse(arg) {
            Ok(parsed) => parsed,
            Err(reason) => {
                let usage = fill(t.broadcast_usage, &[("segments", &Segment::names())]);
                let refused = fill(t.broadcast_refused, &[("reason", &reason)]);
                return self.send(chat, format!("{refused}\n\n{usage}"), None).await;
            }
        };
        match self.draft(admin, message_id, t, segment, text).await {
            Ok((row, audience)) => {
                // The message itself, as recipients will see it, then the question.
                self.send(chat, row.text.clone(), Some(news_off_markup(t)))
                    .await;
                let question = fill(
                    t.broadcast_preview,
                    &[
                        ("segment", segment.as_str()),
                        ("recipients", &audience.recipients.len().to_string()),
                        ("opted_out", &audience.opted_out.to_string()),
                    ],
                );
                let buttons = keyboard(vec![vec![
                    button(t.btn_broadcast_send, format!("bc:{}:go", row.id)),
                    button(t.btn_broadcast_cancel, format!("bc:{}:no", row.id)),
                ]]);
                self.send(chat, question, Some(buttons)).await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot draft a broadcast");
                self.send(chat, t.payment_unavailable.to_owned(), None)
                    .await;
            }
        }
    }

    /// Writes the draft (once per command message: a redelivered update finds its row) and
    /// counts its audience for the preview.
    async fn draft(
        &self,
        admin: i64,
        message_id: i32,
        t: &Texts,
        segment: Segment,
        text: &str,
    ) -> Result<(broadcasts::Model, broadcast::Audience), sea_orm::DbErr> {
        let now = Utc::now();
        let key = format!("bot:{admin}:{message_id}");
        broadcasts::Entity::insert(broadcasts::ActiveModel {
            idempotency_key: Set(key.clone()),
            segment: Set(segment.as_str().to_owned()),
            text: Set(text.to_owned()),
            status: Set(broadcasts::DRAFT.to_owned()),
            created_by: Set(Some(admin)),
            lang: Set(Some(t.lang.code().to_owned())),
            created_at: Set(now),
            ..Default::default()
        })
        .on_conflict(
            OnConflict::column(broadcasts::Column::IdempotencyKey)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        let row = broadcasts::Entity::find()
            .filter(broadcasts::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?
            .ok_or_else(|| sea_orm::DbErr::RecordNotFound("the broadcast just drafted".into()))?;
        let audience = broadcast::audience(&self.db, segment, now).await?;
        Ok((row, audience))
    }

    /// "Send" (`go`) or "Cancel" on a preview: moves the draft once.
    pub(super) async fn broadcast_decision(
        &self,
        chat: i64,
        admin: i64,
        t: &Texts,
        id: &str,
        go: bool,
    ) -> Option<&'static str> {
        let Ok(id) = id.parse::<i64>() else {
            return None;
        };
        let to = if go {
            broadcasts::CONFIRMED
        } else {
            broadcasts::CANCELED
        };
        let moved = broadcast::advance(&self.db, id, broadcasts::DRAFT, to, Utc::now()).await;
        let text = match moved {
            Ok(true) => {
                tracing::info!(admin, broadcast = id, status = to, "broadcast decided");
                let template = if go {
                    t.broadcast_confirmed
                } else {
                    t.broadcast_canceled
                };
                fill(template, &[("id", &id.to_string())])
            }
            Ok(false) => {
                let status = broadcasts::Entity::find_by_id(id)
                    .one(&self.db)
                    .await
                    .ok()
                    .flatten()
                    .map_or_else(|| "—".to_owned(), |row| row.status);
                fill(
                    t.broadcast_not_draft,
                    &[("id", &id.to_string()), ("status", &status)],
                )
            }
            Err(error) => {
                tracing::error!(%error, "cannot decide a broadcast");
                t.payment_unavailable.to_owned()
            }
        };
        self.send(chat, text, None).await;
        None
    }

    /// The latest broadcasts with their progress.
    async fn broadcast_list(&self, chat: i64, t: &Texts) {
        let usage = fill(t.broadcast_usage, &[("segments", &Segment::names())]);
        let rows = broadcasts::Entity::find()
            .filter(broadcasts::Column::Status.ne(broadcasts::DRAFT))
            .order_by_desc(broadcasts::Column::Id)
            .limit(LISTED)
            .all(&self.db)
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                tracing::error!(%error, "cannot list broadcasts");
                return self
                    .send(chat, t.payment_unavailable.to_owned(), None)
                    .await;
            }
        };
        if rows.is_empty() {
            return self.send(chat, usage, None).await;
        }
        let mut lines = vec![t.broadcast_list.to_owned()];
        for row in rows {
            let progress = broadcast::progress(&self.db, row.id)
                .await
                .unwrap_or_default();
            lines.push(fill(
                t.broadcast_line,
                &[
                    ("id", &row.id.to_string()),
                    ("segment", &row.segment),
                    ("status", &row.status),
                    ("sent", &progress.sent.to_string()),
                    (
                        "recipients",
                        &row.recipients.unwrap_or_default().to_string(),
                    ),
                    ("blocked", &progress.blocked.to_string()),
                    ("failed", &progress.failed.to_string()),
                    ("pending", &progress.pending.to_string()),
                ],
            ));
        }
        lines.push(String::new());
        lines.push(usage);
        self.send(chat, lines.join("\n"), None).await;
    }

    /// Turns the customer's news off or on, then shows "My subscription" (where the toggle is).
    pub(super) async fn set_news(&self, chat: i64, user: i64, t: &Texts, off: bool) {
        let mut row = crate::sender::chat_row(user);
        row.broadcasts_off = Set(off);
        let changed = crate::sender::upsert_chat(
            &self.db,
            row,
            &[domain::entities::bot_chats::Column::BroadcastsOff],
        )
        .await;
        if let Err(error) = changed {
            tracing::error!(%error, "cannot change the news setting");
            return self
                .send(chat, t.payment_unavailable.to_owned(), Some(Self::back(t)))
                .await;
        }
        tracing::info!(user, broadcasts_off = off, "news setting changed");
        self.my_subscription(chat, user, t).await;
    }

    /// "My subscription"'s news line and toggle.
    pub(super) async fn news_line(
        &self,
        user: i64,
        t: &Texts,
    ) -> Option<(&'static str, frankenstein::types::InlineKeyboardButton)> {
        let off = domain::entities::bot_chats::Entity::find_by_id(user)
            .one(&self.db)
            .await
            .inspect_err(|error| tracing::warn!(%error, "cannot read the news setting"))
            .ok()?
            .is_some_and(|c| c.broadcasts_off);
        Some(if off {
            (t.news_are_off, button(t.btn_news_on, "nw:on"))
        } else {
            (t.news_are_on, button(t.btn_news_off, "nw:off"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        assert_eq!(
            parse("active\nНовый сервер в Амстердаме!\nПодключайтесь."),
            Ok((
                Segment::Active,
                "Новый сервер в Амстердаме!\nПодключайтесь."
            ))
        );
        assert_eq!(parse("all  hi "), Ok((Segment::All, "hi")));
        assert_eq!(parse("active").unwrap_err(), "the text is empty");
        assert!(parse("vip hello").unwrap_err().contains("unknown segment"));
    }
}
