//! Broadcasts (issue 23): an admin's message to a segment of customers.
//!
//! A `broadcasts` row goes `draft` (previewed in the bot) → `confirmed` (the admin pressed
//! "Send", or `POST /api/admin/broadcasts`) → `sending` → `done`, or `draft` → `canceled`.
//! Each step is a conditional update from the step before, so a double press or a replayed
//! request moves it once. The bot turns a confirmed row into one `send_queue` copy per
//! recipient in the same transaction as the `confirmed → sending` step (UNIQUE
//! `broadcast:<id>:<chat>` keys), sends them at Telegram's pace behind notifications and
//! reminders, and when no copy is pending any more writes the final counts and queues the
//! report to the admin, again in one transaction.
//!
//! The audience is computed here, for the preview and for the copies alike: everyone who has
//! written to the bot or opened a checkout, narrowed to the segment, minus those who turned
//! news off (`bot_chats.broadcasts_off`). A chat that blocked the bot is still queued: the
//! sender skips it without a call and the report counts it as blocked.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect};

use crate::entities::{
    bot_chats, broadcasts, payments, send_queue, subscription_grants, subscriptions, users,
};
use crate::status::PaymentStatus;

/// Telegram's limit for a message's text.
pub const MAX_TEXT: usize = 4096;

/// Who a broadcast goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Everyone who has written to the bot or opened a checkout.
    All,
    /// A subscription that has not expired.
    Active,
    /// A subscription that has expired.
    Expired,
    /// No payment ever succeeded.
    NeverPaid,
    /// Had a free trial (its ledger entry: a refused trial does not count) and never paid.
    Trial,
}

impl Segment {
    pub const ALL: [Segment; 5] = [
        Segment::All,
        Segment::Active,
        Segment::Expired,
        Segment::NeverPaid,
        Segment::Trial,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Segment::All => "all",
            Segment::Active => "active",
            Segment::Expired => "expired",
            Segment::NeverPaid => "never_paid",
            Segment::Trial => "trial",
        }
    }

    /// `all, active, expired, never_paid, trial`, for error messages.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Segment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|segment| segment.as_str() == wanted)
            .ok_or_else(|| format!("unknown segment {s:?}: one of {}", Self::names()))
    }
}

/// A broadcast's text, checked: not empty, at most [`MAX_TEXT`] characters.
pub fn check_text(text: &str) -> Result<&str, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the text is empty".to_owned());
    }
    let length = text.chars().count();
    if length > MAX_TEXT {
        return Err(format!(
            "the text has {length} characters; Telegram takes at most {MAX_TEXT}"
        ));
    }
    Ok(text)
}

/// One recipient: the chat and, when known, the customer's Telegram language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub chat: i64,
    pub language_code: Option<String>,
}

/// A segment's audience at a moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    /// Ordered by chat id.
    pub recipients: Vec<Recipient>,
    /// In the segment but turned news off.
    pub opted_out: usize,
}

/// The audience of `segment` at `now` (see the module docs).
pub async fn audience<C: ConnectionTrait>(
    conn: &C,
    segment: Segment,
    now: DateTime<Utc>,
) -> Result<Audience, DbErr> {
    // Telegram id → (users.id, language); chats that only wrote to the bot have no users row.
    let mut everyone: BTreeMap<i64, (Option<i64>, Option<String>)> = BTreeMap::new();
    let known: Vec<(i64, i64, Option<String>)> = users::Entity::find()
        .select_only()
        .columns([
            users::Column::Id,
            users::Column::TelegramId,
            users::Column::LanguageCode,
        ])
        .into_tuple()
        .all(conn)
        .await?;
    for (id, telegram_id, language) in known {
        everyone.insert(telegram_id, (Some(id), language));
    }
    let chats: Vec<(i64, bool)> = bot_chats::Entity::find()
        .select_only()
        .columns([bot_chats::Column::ChatId, bot_chats::Column::BroadcastsOff])
        .into_tuple()
        .all(conn)
        .await?;
    let mut off = HashSet::new();
    for (chat, broadcasts_off) in chats {
        everyone.entry(chat).or_insert((None, None));
        if broadcasts_off {
            off.insert(chat);
        }
    }
    let paid: HashSet<i64> = user_ids(
        payments::Entity::find()
            .select_only()
            .column(payments::Column::UserId)
            .filter(payments::Column::Status.is_in([
                PaymentStatus::Succeeded,
                PaymentStatus::PartiallyRefunded,
                PaymentStatus::Refunded,
            ]))
            .distinct(),
        conn,
    )
    .await?;
    let subscribed: Vec<(i64, i64, DateTime<Utc>)> = subscriptions::Entity::find()
        .select_only()
        .columns([
            subscriptions::Column::Id,
            subscriptions::Column::UserId,
            subscriptions::Column::ExpiresAt,
        ])
        .into_tuple()
        .all(conn)
        .await?;
    let active: HashSet<i64> = subscribed
        .iter()
        .filter(|(_, _, expires)| *expires > now)
        .map(|(_, user, _)| *user)
        .collect();
    let expired: HashSet<i64> = subscribed
        .iter()
        .filter(|(_, _, expires)| *expires <= now)
        .map(|(_, user, _)| *user)
        .collect();
    // A trial that took effect: its ledger entry (a trial marzban-sync refused has none).
    let trial: HashSet<i64> = if segment == Segment::Trial {
        let subscriptions_with_trial: HashSet<i64> = subscription_grants::Entity::find()
            .select_only()
            .column(subscription_grants::Column::SubscriptionId)
            .filter(subscription_grants::Column::Kind.eq(crate::trial::KIND))
            .distinct()
            .into_tuple::<i64>()
            .all(conn)
            .await?
            .into_iter()
            .collect();
        subscribed
            .iter()
            .filter(|(id, _, _)| subscriptions_with_trial.contains(id))
            .map(|(_, user, _)| *user)
            .collect()
    } else {
        HashSet::new()
    };
    let in_segment = |user: Option<i64>| match segment {
        Segment::All => true,
        Segment::Active => user.is_some_and(|u| active.contains(&u)),
        Segment::Expired => user.is_some_and(|u| expired.contains(&u)),
        Segment::NeverPaid => user.is_none_or(|u| !paid.contains(&u)),
        Segment::Trial => user.is_some_and(|u| trial.contains(&u) && !paid.contains(&u)),
    };
    let mut audience = Audience::default();
    for (chat, (user, language_code)) in everyone {
        if !in_segment(user) {
            continue;
        }
        if off.contains(&chat) {
            audience.opted_out += 1;
        } else {
            audience.recipients.push(Recipient {
                chat,
                language_code,
            });
        }
    }
    Ok(audience)
}

async fn user_ids<C: ConnectionTrait>(
    query: sea_orm::Select<impl EntityTrait>,
    conn: &C,
) -> Result<HashSet<i64>, DbErr> {
    Ok(query
        .into_tuple::<i64>()
        .all(conn)
        .await?
        .into_iter()
        .collect())
}

/// How far a broadcast's copies have got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub pending: u64,
    pub sent: u64,
    /// Skipped because the customer blocked the bot.
    pub blocked: u64,
    /// Skipped for another reason (news turned off after the copies were queued).
    pub skipped: u64,
    pub failed: u64,
}

/// Why the sender skips a copy whose chat blocked the bot (`send_queue.last_error`).
pub const SKIPPED_BLOCKED: &str = "the user blocked the bot";

/// Counts the copies of broadcast `id` by status.
pub async fn progress<C: ConnectionTrait>(conn: &C, id: i64) -> Result<Progress, DbErr> {
    use send_queue::Column as Q;
    let rows: Vec<(String, Option<String>, i64)> = send_queue::Entity::find()
        .select_only()
        .column(Q::Status)
        .column(Q::LastError)
        .column_as(Q::Id.count(), "n")
        .filter(Q::BroadcastId.eq(id))
        .group_by(Q::Status)
        .group_by(Q::LastError)
        .into_tuple()
        .all(conn)
        .await?;
    let mut progress = Progress::default();
    for (status, why, n) in rows {
        let n = u64::try_from(n).unwrap_or_default();
        match status.as_str() {
            send_queue::SENT => progress.sent += n,
            send_queue::FAILED => progress.failed += n,
            send_queue::SKIPPED if why.as_deref() == Some(SKIPPED_BLOCKED) => progress.blocked += n,
            send_queue::SKIPPED => progress.skipped += n,
            _ => progress.pending += n,
        }
    }
    Ok(progress)
}

/// Moves broadcast `id` from `from` to `to` (and sets `extra` columns); `false` if it was
/// not at `from` (a double press, a replay).
pub async fn advance<C: ConnectionTrait>(
    conn: &C,
    id: i64,
    from: &str,
    to: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    use sea_orm::sea_query::Expr;
    let mut update = broadcasts::Entity::update_many()
        .col_expr(broadcasts::Column::Status, Expr::value(to))
        .filter(broadcasts::Column::Id.eq(id))
        .filter(broadcasts::Column::Status.eq(from));
    if to == broadcasts::CONFIRMED {
        update = update.col_expr(broadcasts::Column::ConfirmedAt, Expr::value(now));
    }
    if to == broadcasts::DONE || to == broadcasts::CANCELED {
        update = update.col_expr(broadcasts::Column::FinishedAt, Expr::value(now));
    }
    Ok(update.exec(conn).await?.rows_affected == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_parse_and_refuse_clearly() {
        for segment in Segment::ALL {
            assert_eq!(segment.as_str().parse::<Segment>(), Ok(segment));
        }
        assert_eq!("Never-Paid".parse::<Segment>(), Ok(Segment::NeverPaid));
        let error = "vip".parse::<Segment>().unwrap_err();
        assert!(
            error.contains("all, active, expired, never_paid, trial"),
            "{error}"
        );
    }

    #[test]
    fn texts_are_checked() {
        assert_eq!(check_text("  hello \n"), Ok("hello"));
        assert_eq!(check_text(" \n ").unwrap_err(), "the text is empty");
        assert!(check_text(&"я".repeat(MAX_TEXT)).is_ok());
        assert!(
            check_text(&"я".repeat(MAX_TEXT + 1))
                .unwrap_err()
                .contains("4097")
        );
    }
}
