//! Expiry reminders: durable rows, one per subscription period and offset, turned into
//! messages of the sending queue when due.
//!
//! - **Scheduling** ([`Reminders::schedule_page`]) reads `subscriptions` a page at a time in
//!   `(updated_at, id)` order from a cursor kept in `reminder_cursors`, and writes a
//!   `reminders` row per offset (`REMINDER_OFFSETS`, default 3 days and 1 day before the
//!   expiry, at it, and 3 days after) with `ON CONFLICT DO NOTHING` on
//!   `(subscription_id, period_end, offset_secs)`, the cursor in the same transaction. A
//!   renewal moves the expiry and touches `updated_at`, so the new period gets its own rows
//!   on the next pass; a restart resumes from the cursor; memory is one page. Offsets already
//!   more than [`GRACE`] past are not scheduled (a subscription bought for 2 days gets no
//!   "3 days left").
//! - **Dispatching** ([`Reminders::dispatch_page`]) takes due rows a page at a time and, in
//!   one transaction per page, queues a message per row (`send_queue`, dedupe key
//!   `reminder:<id>`) and marks it `queued` — or `skipped` when the subscription's expiry is
//!   no longer the reminder's period (renewed), the user turned reminders off, or the row is
//!   more than [`GRACE`] late. The queued message carries a guard, so a renewal while it waits
//!   in the queue still stops it.
//! - **Renew** is one tap: the button repeats the customer's last paid checkout (same tariff,
//!   same payment method: callback `p:<tariff>:<provider>:<currency>`, which creates the
//!   payment keyed by the reminder message), or opens the tariff's payment methods; *Other
//!   plan* opens the tariff list; *Turn reminders off* does that.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::PaymentStatus;
use domain::entities::{
    bot_chats, payments, reminder_cursors, reminders, subscriptions, tariffs, users,
};
use frankenstein::types::{InlineKeyboardButton, InlineKeyboardMarkup};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use service_kit::Shutdown;
use tokio::sync::Notify;

use crate::sender::{self, Guard, Kind, Outgoing, Queued};
use crate::store::LocalTariff;
use crate::texts::{self, Lang, fill};

/// A reminder more than this late is not sent (the bot was down, or the subscription was
/// scheduled after the moment had passed).
pub const GRACE: chrono::Duration = chrono::Duration::hours(12);

/// The cursor's name in `reminder_cursors`.
const CURSOR: &str = "subscriptions";

/// `REMINDER_OFFSETS`: when to remind, relative to the expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offsets(Vec<i64>);

impl Default for Offsets {
    fn default() -> Self {
        Self(vec![-3 * DAY, -DAY, 0, 3 * DAY])
    }
}

const DAY: i64 = 86_400;

impl Offsets {
    pub fn secs(&self) -> &[i64] {
        &self.0
    }
}

impl FromStr for Offsets {
    type Err = String;

    /// `-3d,-1d,0,+3d` (units `d`, `h`, `m`; no unit: seconds), or `off`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(Self(Vec::new()));
        }
        let mut offsets = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|part| {
                let (number, unit) = match part.char_indices().last() {
                    Some((i, 'd')) => (&part[..i], DAY),
                    Some((i, 'h')) => (&part[..i], 3600),
                    Some((i, 'm')) => (&part[..i], 60),
                    _ => (part, 1),
                };
                number
                    .trim_start_matches('+')
                    .parse::<i64>()
                    .ok()
                    .filter(|n| n.abs() <= 365)
                    .map(|n| n * unit)
                    .ok_or_else(|| format!("{part:?} is not an offset like -3d, 0 or +3d"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        offsets.sort_unstable();
        offsets.dedup();
        Ok(Self(offsets))
    }
}

/// What one page did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Subscriptions read, or reminders taken.
    pub read: usize,
    /// Reminder rows written, or messages queued.
    pub written: u64,
    pub skipped: usize,
}

/// Schedules and dispatches reminders (see the module docs).
#[derive(Debug, Clone)]
pub struct Reminders {
    db: DatabaseConnection,
    offsets: Offsets,
    page: u64,
    /// Wakes the sender after a page was queued.
    nudge: Arc<Notify>,
}

impl Reminders {
    pub fn new(db: DatabaseConnection, offsets: Offsets, nudge: Arc<Notify>) -> Self {
        Self {
            db,
            offsets,
            page: 1000,
            nudge,
        }
    }

    /// The same with pages of `page` rows.
    pub fn with_page(mut self, page: u64) -> Self {
        self.page = page.max(1);
        self
    }

    /// Schedules and dispatches until `shutdown`: every pass reads all pages that are ready.
    pub async fn run(self, every: Duration, shutdown: Shutdown) {
        if self.offsets.0.is_empty() {
            tracing::info!("expiry reminders are off (REMINDER_OFFSETS=off)");
            return;
        }
        loop {
            if let Err(error) = self.pass(&shutdown).await {
                tracing::warn!(%error, "reminders: pass failed; retried");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Schedules every page of changed subscriptions, then dispatches every due page.
    pub async fn pass(&self, shutdown: &Shutdown) -> Result<(), DbErr> {
        while !shutdown.is_cancelled() && self.schedule_page().await?.read > 0 {}
        while !shutdown.is_cancelled() && self.dispatch_page().await?.read > 0 {}
        Ok(())
    }

    /// Schedules the reminders of the next page of subscriptions changed since the cursor.
    pub async fn schedule_page(&self) -> Result<Page, DbErr> {
        let now = Utc::now();
        // Rows committed a moment late with an earlier `updated_at` are still read.
        let settled = now - chrono::Duration::seconds(5);
        let cursor = reminder_cursors::Entity::find_by_id(CURSOR)
            .one(&self.db)
            .await?;
        let (after_at, after_id) = cursor
            .as_ref()
            .map_or((DateTime::<Utc>::UNIX_EPOCH, 0), |c| {
                (c.updated_at, c.last_id)
            });
        let page: Vec<(i64, DateTime<Utc>, DateTime<Utc>, String)> = subscriptions::Entity::find()
            .select_only()
            .columns([
                subscriptions::Column::Id,
                subscriptions::Column::ExpiresAt,
                subscriptions::Column::UpdatedAt,
                subscriptions::Column::Status,
            ])
            .filter(
                Condition::any()
                    .add(subscriptions::Column::UpdatedAt.gt(after_at))
                    .add(
                        Condition::all()
                            .add(subscriptions::Column::UpdatedAt.eq(after_at))
                            .add(subscriptions::Column::Id.gt(after_id)),
                    ),
            )
            .filter(subscriptions::Column::UpdatedAt.lte(settled))
            .order_by_asc(subscriptions::Column::UpdatedAt)
            .order_by_asc(subscriptions::Column::Id)
            .limit(self.page)
            .into_tuple()
            .all(&self.db)
            .await?;
        let Some((last_id, _, last_at, _)) = page.last().cloned() else {
            return Ok(Page::default());
        };
        let rows: Vec<reminders::ActiveModel> = page
            .iter()
            .filter(|(_, _, _, status)| status != "revoked")
            .flat_map(|(id, expires_at, _, _)| {
                self.offsets.0.iter().filter_map(move |offset| {
                    let due = *expires_at + chrono::Duration::seconds(*offset);
                    (due + GRACE > now).then(|| reminders::ActiveModel {
                        subscription_id: Set(*id),
                        period_end: Set(*expires_at),
                        offset_secs: Set(*offset),
                        due_at: Set(due),
                        status: Set(reminders::SCHEDULED.to_owned()),
                        reason: Set(None),
                        created_at: Set(now),
                        done_at: Set(None),
                        ..Default::default()
                    })
                })
            })
            .collect();
        let tx = self.db.begin().await?;
        let mut written = 0;
        // PostgreSQL takes at most 65,535 parameters a statement: 8 a row.
        for chunk in rows.chunks(4000) {
            let inserted = reminders::Entity::insert_many(chunk.to_vec())
                .on_conflict_do_nothing_on([
                    reminders::Column::SubscriptionId,
                    reminders::Column::PeriodEnd,
                    reminders::Column::OffsetSecs,
                ])
                .exec_without_returning(&tx)
                .await?;
            if let sea_orm::TryInsertResult::Inserted(n) = inserted {
                written += n;
            }
        }
        reminder_cursors::Entity::insert(reminder_cursors::ActiveModel {
            name: Set(CURSOR.to_owned()),
            updated_at: Set(last_at),
            last_id: Set(last_id),
        })
        .on_conflict(
            OnConflict::column(reminder_cursors::Column::Name)
                .update_columns([
                    reminder_cursors::Column::UpdatedAt,
                    reminder_cursors::Column::LastId,
                ])
                .to_owned(),
        )
        .exec_without_returning(&tx)
        .await?;
        tx.commit().await?;
        metrics::counter!(METRIC_SCHEDULED).increment(written);
        Ok(Page {
            read: page.len(),
            written,
            skipped: 0,
        })
    }

    /// Queues (or skips) the next page of due reminders.
    pub async fn dispatch_page(&self) -> Result<Page, DbErr> {
        let now = Utc::now();
        let due = reminders::Entity::find()
            .filter(reminders::Column::Status.eq(reminders::SCHEDULED))
            .filter(reminders::Column::DueAt.lte(now))
            .order_by_asc(reminders::Column::DueAt)
            .order_by_asc(reminders::Column::Id)
            .limit(self.page)
            .all(&self.db)
            .await?;
        if due.is_empty() {
            return Ok(Page::default());
        }
        let context = Context::load(&self.db, &due).await?;
        let mut queued = Vec::new();
        let mut skipped: Vec<(i64, &'static str)> = Vec::new();
        for reminder in &due {
            match context.message(reminder, now) {
                Ok(message) => queued.push((reminder.id, message)),
                Err(reason) => skipped.push((reminder.id, reason)),
            }
        }
        let tx = self.db.begin().await?;
        let written = sender::enqueue(
            &tx,
            &queued.iter().map(|(_, q)| q.clone()).collect::<Vec<_>>(),
        )
        .await?;
        let mark = |ids: Vec<i64>, status: &'static str, reason: Option<&'static str>| {
            reminders::Entity::update_many()
                .col_expr(reminders::Column::Status, Expr::value(status))
                .col_expr(reminders::Column::Reason, Expr::value(reason))
                .col_expr(reminders::Column::DoneAt, Expr::value(now))
                .filter(reminders::Column::Id.is_in(ids))
                .filter(reminders::Column::Status.eq(reminders::SCHEDULED))
        };
        mark(
            queued.iter().map(|(id, _)| *id).collect(),
            reminders::QUEUED,
            None,
        )
        .exec(&tx)
        .await?;
        let mut by_reason: HashMap<&'static str, Vec<i64>> = HashMap::new();
        for (id, reason) in &skipped {
            by_reason.entry(reason).or_default().push(*id);
        }
        for (reason, ids) in by_reason {
            mark(ids, reminders::SKIPPED, Some(reason))
                .exec(&tx)
                .await?;
        }
        tx.commit().await?;
        metrics::counter!(METRIC_DISPATCHED, "outcome" => "queued").increment(written);
        metrics::counter!(METRIC_DISPATCHED, "outcome" => "skipped")
            .increment(skipped.len() as u64);
        self.nudge.notify_one();
        Ok(Page {
            read: due.len(),
            written,
            skipped: skipped.len(),
        })
    }
}

/// Counter: reminder rows scheduled.
pub const METRIC_SCHEDULED: &str = "bot_reminders_scheduled_total";
/// Counter: due reminders by `outcome` (`queued`, `skipped`).
pub const METRIC_DISPATCHED: &str = "bot_reminders_dispatched_total";

/// The last paid checkout of a user: what *Renew* repeats.
#[derive(Debug, Clone)]
struct LastCheckout {
    tariff_code: String,
    /// The tariff's title by language code (`ru`, `en`); the default under `ru`.
    tariff_titles: HashMap<&'static str, String>,
    provider: String,
    currency: String,
}

/// What a page of due reminders needs, read with a handful of queries.
struct Context {
    subscriptions: HashMap<i64, subscriptions::Model>,
    users: HashMap<i64, users::Model>,
    chats: HashMap<i64, bot_chats::Model>,
    last_checkout: HashMap<i64, LastCheckout>,
}

impl Context {
    async fn load(db: &DatabaseConnection, due: &[reminders::Model]) -> Result<Self, DbErr> {
        let ids: Vec<i64> = due.iter().map(|r| r.subscription_id).collect();
        let subscriptions: HashMap<i64, subscriptions::Model> = subscriptions::Entity::find()
            .filter(subscriptions::Column::Id.is_in(ids))
            .all(db)
            .await?
            .into_iter()
            .map(|s| (s.id, s))
            .collect();
        let user_ids: Vec<i64> = subscriptions.values().map(|s| s.user_id).collect();
        let users: HashMap<i64, users::Model> = users::Entity::find()
            .filter(users::Column::Id.is_in(user_ids.clone()))
            .all(db)
            .await?
            .into_iter()
            .map(|u| (u.id, u))
            .collect();
        let chats = bot_chats::Entity::find()
            .filter(bot_chats::Column::ChatId.is_in(users.values().map(|u| u.telegram_id)))
            .all(db)
            .await?
            .into_iter()
            .map(|c| (c.chat_id, c))
            .collect();
        let mut last_checkout = HashMap::new();
        let paid = payments::Entity::find()
            .find_also_related(tariffs::Entity)
            .filter(payments::Column::UserId.is_in(user_ids))
            .filter(
                payments::Column::Status
                    .is_in([PaymentStatus::Succeeded, PaymentStatus::PartiallyRefunded]),
            )
            .order_by_desc(payments::Column::CreatedAt)
            .all(db)
            .await?;
        let texts = crate::store::tariff_texts(
            db,
            paid.iter()
                .filter_map(|(_, tariff)| tariff.as_ref().map(|t| t.id)),
        )
        .await?;
        for (payment, tariff) in paid {
            let Some(tariff) = tariff.filter(|t| t.active) else {
                continue;
            };
            last_checkout
                .entry(payment.user_id)
                .or_insert_with(|| LastCheckout {
                    tariff_code: tariff.code.clone(),
                    tariff_titles: [Lang::Ru, Lang::En]
                        .into_iter()
                        .map(|lang| {
                            let local = LocalTariff::pick(tariff.clone(), &texts, lang);
                            (lang.code(), local.title)
                        })
                        .collect(),
                    provider: payment.provider.to_string(),
                    currency: payment.currency.code().to_owned(),
                });
        }
        Ok(Self {
            subscriptions,
            users,
            chats,
            last_checkout,
        })
    }

    /// The message for `reminder`, or why it is skipped.
    fn message(
        &self,
        reminder: &reminders::Model,
        now: DateTime<Utc>,
    ) -> Result<Queued, &'static str> {
        let subscription = self
            .subscriptions
            .get(&reminder.subscription_id)
            .ok_or("no subscription")?;
        if subscription.expires_at != reminder.period_end {
            return Err("renewed");
        }
        if subscription.status == "revoked" {
            return Err("revoked");
        }
        if reminder.due_at + GRACE < now {
            return Err("too late");
        }
        let user = self.users.get(&subscription.user_id).ok_or("no user")?;
        if let Some(chat) = self.chats.get(&user.telegram_id) {
            if chat.reminders_off {
                return Err("reminders off");
            }
            if chat.blocked_at.is_some() {
                return Err("blocked the bot");
            }
        }
        let lang = Lang::from_code(user.language_code.as_deref());
        let message = reminder_message(
            lang,
            reminder.offset_secs,
            reminder.period_end,
            self.last_checkout.get(&user.id),
            Guard {
                subscription_id: subscription.id,
                expires_at: subscription.expires_at,
            },
        );
        Ok(Queued {
            chat: user.telegram_id,
            kind: Kind::Reminder,
            dedupe_key: format!("reminder:{}", reminder.id),
            message,
        })
    }
}

fn button(text: impl Into<String>, data: impl Into<String>) -> InlineKeyboardButton {
    InlineKeyboardButton::builder()
        .text(text)
        .callback_data(data)
        .build()
}

/// The reminder's words and buttons.
fn reminder_message(
    lang: Lang,
    offset_secs: i64,
    period_end: DateTime<Utc>,
    last: Option<&LastCheckout>,
    guard: Guard,
) -> Outgoing {
    let t = lang.texts();
    let expires = texts::date(period_end);
    let text = if offset_secs < 0 {
        let days = (-offset_secs + DAY - 1) / DAY;
        fill(
            t.reminder_before,
            &[("expires", &expires), ("left", &texts::days(lang, days))],
        )
    } else if offset_secs < DAY {
        fill(t.reminder_today, &[("expires", &expires)])
    } else {
        fill(t.reminder_after, &[("expires", &expires)])
    };
    let renew = match last {
        Some(last) => {
            let data = format!("p:{}:{}:{}", last.tariff_code, last.provider, last.currency);
            let data = if data.len() <= 64 {
                data
            } else {
                format!("t:{}", last.tariff_code)
            };
            button(
                fill(
                    t.btn_renew_tariff,
                    &[(
                        "title",
                        last.tariff_titles
                            .get(lang.code())
                            .map_or(last.tariff_code.as_str(), String::as_str),
                    )],
                ),
                data,
            )
        }
        None => button(t.btn_renew, "buy"),
    };
    let markup = InlineKeyboardMarkup::builder()
        .inline_keyboard(vec![
            vec![renew],
            vec![button(t.btn_other_tariff, "buy")],
            vec![button(t.btn_reminders_off, "rm:off")],
        ])
        .build();
    Outgoing {
        guard: Some(guard),
        ..Outgoing::text(text, Some(markup))
    }
}

/// Turns reminders on or off for `chat`.
pub async fn set_off<C: ConnectionTrait>(conn: &C, chat: i64, off: bool) -> Result<(), DbErr> {
    let mut row = sender::chat_row(chat);
    row.reminders_off = Set(off);
    sender::upsert_chat(conn, row, &[bot_chats::Column::RemindersOff]).await
}

/// Whether `chat` turned reminders off.
pub async fn are_off<C: ConnectionTrait>(conn: &C, chat: i64) -> Result<bool, DbErr> {
    Ok(bot_chats::Entity::find_by_id(chat)
        .one(conn)
        .await?
        .is_some_and(|c| c.reminders_off))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse() {
        assert_eq!(
            "-3d,-1d,0,+3d".parse::<Offsets>().unwrap(),
            Offsets::default()
        );
        assert_eq!(
            " +2h , -30m, 0 ".parse::<Offsets>().unwrap().secs(),
            &[-1800, 0, 7200]
        );
        assert!("off".parse::<Offsets>().unwrap().secs().is_empty());
        assert!("-3x".parse::<Offsets>().is_err());
        assert!("soon".parse::<Offsets>().is_err());
    }

    #[test]
    fn the_words_follow_the_offset_and_renew_repeats_the_last_checkout() {
        let end = DateTime::parse_from_rfc3339("2026-12-24T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let guard = Guard {
            subscription_id: 1,
            expires_at: end,
        };
        let last = LastCheckout {
            tariff_code: "month_1".into(),
            tariff_titles: [("en", "1 month".to_owned())].into(),
            provider: "yookassa".into(),
            currency: "RUB".into(),
        };
        let before = reminder_message(Lang::En, -3 * DAY, end, Some(&last), guard);
        assert!(before.text.contains("3 days"), "{}", before.text);
        let data: Vec<String> = before
            .reply_markup
            .iter()
            .flat_map(|m| m.inline_keyboard.iter().flatten())
            .filter_map(|b| b.callback_data.clone())
            .collect();
        assert_eq!(data, ["p:month_1:yookassa:RUB", "buy", "rm:off"]);
        let ru = reminder_message(Lang::Ru, -DAY, end, None, guard);
        assert!(ru.text.contains("1 день"), "{}", ru.text);
        let today = reminder_message(Lang::En, 0, end, None, guard);
        let after = reminder_message(Lang::En, 3 * DAY, end, None, guard);
        assert_ne!(today.text, after.text);
        assert_eq!(after.guard, Some(guard));
    }
}
