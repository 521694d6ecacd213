//! One customer as an admin looks them up (issue 23): the bot's `/user <id|@username>` and
//! the gateway's `GET /api/admin/users/{id or @username}` read the same [`Overview`].
//!
//! Everything comes from our database. The panel is not asked: the subscription shows the
//! ledger's expiry and the last panel sync marzban-sync recorded (`synced_at`, `sync_error`);
//! `acpctl user` compares it with the live panel.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};
use serde::Serialize;

use crate::PaymentId;
use crate::entities::{
    bot_chats, manual_grants, payments, referrals, saved_methods, subscription_grants,
    subscriptions, tariffs, users,
};
use crate::referral;

/// The most recent payments an overview lists.
pub const RECENT_PAYMENTS: u64 = 10;
/// The most recent ledger entries an overview lists.
pub const RECENT_GRANTS: u64 = 20;

/// Who to look up: a Telegram id or a `@username`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    TelegramId(i64),
    /// Without the `@`; compared without regard to case, as Telegram does.
    Username(String),
}

impl Lookup {
    /// `123456789` or `@name` (Telegram's 5 to 32 letters, digits and underscores; shorter
    /// ones are accepted, some old names are).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if let Some(name) = raw.strip_prefix('@') {
            let valid = (1..=32).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            return if valid {
                Ok(Self::Username(name.to_owned()))
            } else {
                Err(format!("{raw:?} is not a Telegram @username"))
            };
        }
        match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(Self::TelegramId(id)),
            _ => Err(format!(
                "{raw:?} is neither a Telegram id (a positive number) nor an @username"
            )),
        }
    }
}

impl std::fmt::Display for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TelegramId(id) => write!(f, "{id}"),
            Self::Username(name) => write!(f, "@{name}"),
        }
    }
}

/// What an admin sees of one customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overview {
    pub user: UserView,
    /// `None`: nothing was ever provisioned for them.
    pub subscription: Option<SubscriptionView>,
    /// The most recent [`RECENT_PAYMENTS`], newest first.
    pub payments: Vec<PaymentView>,
    /// All their payments, however many are listed.
    pub payments_total: u64,
    /// The ledger's most recent [`RECENT_GRANTS`] entries, newest first.
    pub ledger: Vec<GrantView>,
    /// Saved cards for automatic renewal.
    pub autopay: Vec<AutopayView>,
    /// The latest Telegram Stars subscription (renews itself monthly), if any.
    pub star_subscription: Option<StarSubscriptionView>,
    /// Expiry reminders switched off by the user.
    pub reminders_off: bool,
    /// The user blocked the bot (messages to them are skipped).
    pub blocked_bot: bool,
    pub referral: ReferralView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub id: i64,
    pub telegram_id: i64,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub language_code: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionView {
    /// The panel user's name.
    pub panel_username: String,
    /// The ledger's expiry.
    pub expires_at: DateTime<Utc>,
    /// Whether that expiry is still ahead.
    pub active: bool,
    pub data_limit_bytes: Option<i64>,
    pub subscription_url: Option<String>,
    /// The last time marzban-sync brought the panel in line, and what failed since.
    pub synced_at: Option<DateTime<Utc>>,
    pub sync_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentView {
    pub id: PaymentId,
    pub tariff: String,
    pub provider: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub refunded_minor: i64,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantView {
    /// `purchase`, `admin`, `trial`, `referral`, `opening_balance`, …
    pub kind: String,
    pub days_granted: i32,
    pub days_revoked: i32,
    pub payment_id: Option<PaymentId>,
    pub expires_at_after: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutopayView {
    pub provider: String,
    /// The provider's title of the saved method ("Bank card *4477").
    pub title: String,
    pub autopay: bool,
    pub declines: i32,
    pub last_decline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StarSubscriptionView {
    /// Paid until (moved on by every monthly charge).
    pub expires_at: DateTime<Utc>,
    /// The user canceled it: it ends at `expires_at`.
    pub canceled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReferralView {
    /// The Telegram id of who brought them, if anyone.
    pub referred_by: Option<i64>,
    /// Whether their first payment earned the referrer's bonus.
    pub referrer_rewarded: bool,
    /// Whom they brought.
    #[serde(flatten)]
    pub counts: referral::Counts,
    /// Days earned with referral bonuses (manual grants of kind `referral`).
    pub bonus_days: i64,
}

/// The customer `lookup` names, or `None` when we know no such user.
pub async fn overview(
    conn: &impl ConnectionTrait,
    lookup: &Lookup,
) -> Result<Option<Overview>, DbErr> {
    let user = match lookup {
        Lookup::TelegramId(id) => {
            users::Entity::find()
                .filter(users::Column::TelegramId.eq(*id))
                .one(conn)
                .await?
        }
        Lookup::Username(name) => {
            // Names change hands; the most recently seen holder is the one meant.
            users::Entity::find()
                .filter(ExprTrait::eq(
                    Func::lower(Expr::col(users::Column::Username)),
                    name.to_lowercase(),
                ))
                .order_by_desc(users::Column::Id)
                .one(conn)
                .await?
        }
    };
    let Some(user) = user else {
        return Ok(None);
    };
    let now = Utc::now();

    let subscription = subscriptions::Entity::find()
        .filter(subscriptions::Column::UserId.eq(user.id))
        .one(conn)
        .await?;
    let ledger = match &subscription {
        Some(s) => subscription_grants::Entity::find()
            .filter(subscription_grants::Column::SubscriptionId.eq(s.id))
            .order_by_desc(subscription_grants::Column::Id)
            .limit(RECENT_GRANTS)
            .all(conn)
            .await?
            .into_iter()
            .map(|g| GrantView {
                kind: g.kind,
                days_granted: g.days_granted,
                days_revoked: g.days_revoked,
                payment_id: g.payment_id,
                expires_at_after: g.expires_at_after,
                created_at: g.created_at,
            })
            .collect(),
        None => Vec::new(),
    };

    let of_user = || payments::Entity::find().filter(payments::Column::UserId.eq(user.id));
    let payments_total = of_user().count(conn).await?;
    let recent = of_user()
        .find_also_related(tariffs::Entity)
        .order_by_desc(payments::Column::CreatedAt)
        .limit(RECENT_PAYMENTS)
        .all(conn)
        .await?;
    let payments = recent
        .into_iter()
        .map(|(p, tariff)| PaymentView {
            id: p.id,
            tariff: tariff.map_or_else(|| format!("#{}", p.tariff_id), |t| t.code),
            provider: p.provider.to_string(),
            amount_minor: p.amount_minor,
            currency: p.currency.code().to_owned(),
            status: p.status.as_str().to_owned(),
            refunded_minor: p.refunded_minor,
            created_at: p.created_at,
            completed_at: p.completed_at,
        })
        .collect();

    let autopay = saved_methods::Entity::find()
        .filter(saved_methods::Column::UserId.eq(user.id))
        .order_by_asc(saved_methods::Column::Id)
        .all(conn)
        .await?
        .into_iter()
        .map(|m| AutopayView {
            provider: m.provider.to_string(),
            title: m.title,
            autopay: m.autopay,
            declines: m.declines,
            last_decline: m.last_decline,
        })
        .collect();
    let star_subscription = star_subscription(conn, user.telegram_id).await?;
    let chat = bot_chats::Entity::find_by_id(user.telegram_id)
        .one(conn)
        .await?;

    let referred = referrals::Entity::find_by_id(user.id).one(conn).await?;
    let referred_by = match &referred {
        Some(r) => users::Entity::find_by_id(r.referrer_user_id)
            .one(conn)
            .await?
            .map(|u| u.telegram_id),
        None => None,
    };
    let bonus_days = manual_grants::Entity::find()
        .select_only()
        .column(manual_grants::Column::Days)
        .filter(manual_grants::Column::UserId.eq(user.id))
        .filter(manual_grants::Column::Kind.eq(referral::KIND))
        .into_tuple::<i32>()
        .all(conn)
        .await?
        .into_iter()
        .map(i64::from)
        .sum();
    let referral = ReferralView {
        referred_by,
        referrer_rewarded: referred.is_some_and(|r| r.rewarded_payment_id.is_some()),
        counts: referral::counts(conn, user.id).await?,
        bonus_days,
    };

    Ok(Some(Overview {
        subscription: subscription.map(|s| SubscriptionView {
            active: s.expires_at > now,
            panel_username: s.marzban_username,
            expires_at: s.expires_at,
            data_limit_bytes: s.data_limit_bytes,
            subscription_url: s.subscription_url,
            synced_at: s.synced_at,
            sync_error: s.sync_error,
        }),
        payments,
        payments_total,
        ledger,
        autopay,
        star_subscription,
        reminders_off: chat.as_ref().is_some_and(|c| c.reminders_off),
        blocked_bot: chat.as_ref().is_some_and(|c| c.blocked_at.is_some()),
        referral,
        user: UserView {
            id: user.id,
            telegram_id: user.telegram_id,
            username: user.username,
            first_name: user.first_name,
            language_code: user.language_code,
            created_at: user.created_at,
        },
    }))
}

/// The latest row of `star_subscriptions` (a table the bot keeps with plain SQL).
async fn star_subscription(
    conn: &impl ConnectionTrait,
    telegram_id: i64,
) -> Result<Option<StarSubscriptionView>, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            conn.get_database_backend(),
            "SELECT expires_at, canceled FROM star_subscriptions WHERE telegram_id = $1 \
             ORDER BY expires_at DESC LIMIT 1",
            [telegram_id.into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let expires_at: i64 = row.try_get("", "expires_at")?;
    Ok(Some(StarSubscriptionView {
        expires_at: DateTime::from_timestamp(expires_at, 0).unwrap_or_default(),
        canceled: row.try_get("", "canceled")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(Lookup::parse(" 123 "), Ok(Lookup::TelegramId(123)));
        assert_eq!(
            Lookup::parse("@Some_User1"),
            Ok(Lookup::Username("Some_User1".into()))
        );
        for bad in [
            "",
            "0",
            "-5",
            "abc",
            "@",
            "@with space",
            "@дима",
            "12x",
            "@a-b",
        ] {
            assert!(Lookup::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Lookup::parse(&format!("@{}", "a".repeat(33))).is_err());
        assert_eq!(Lookup::TelegramId(5).to_string(), "5");
        assert_eq!(Lookup::Username("x".into()).to_string(), "@x");
    }
}
