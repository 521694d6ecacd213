//! Referrals (issue 23): each user has a personal deep link `t.me/<bot>?start=ref_<code>`;
//! a new user who opens the bot through it is recorded as referred by the link's owner, and
//! when the referred user's first payment succeeds the referrer gets `REFERRAL_BONUS_DAYS`
//! days (default 7; 0 = referrals off) through the ledger, exactly once.
//!
//! - The code is random ([`CODE_LEN`] characters of a 32-letter alphabet, 40 bits), stored
//!   in `referral_codes` (one per user, UNIQUE): a link cannot be guessed from a Telegram id.
//! - [`record`] writes the referral only for a user who is new to us (no paid payment, no
//!   referrer yet — `referrals.referred_user_id` is the key), never for the link's owner
//!   themselves nor for the owner's own referrer (two users rewarding each other).
//! - [`claim`] is called by the payment worker in the transaction that moves a payment to
//!   `succeeded`: a conditional `UPDATE referrals … WHERE rewarded_payment_id IS NULL` makes
//!   the reward once per referred user, and only for their first paid payment; the worker
//!   then writes the referrer's `manual_grants` row of kind [`KIND`] under the UNIQUE key
//!   [`key`]`(payment)` with its `grant.created` event, which marzban-sync puts in the ledger.
//! - A later refund of that payment does not take the bonus back: the bonus is paid only
//!   for a payment that really succeeded, and the referrer did bring a paying customer.

use chrono::Utc;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect,
    TryInsertResult,
};

use crate::PaymentId;
use crate::entities::{payments, referral_codes, referrals, users};
use crate::env::{Vars, invalid};
use crate::status::PaymentStatus;

/// `manual_grants.kind` (and so `subscription_grants.kind`) of a referral bonus.
pub const KIND: &str = "referral";
/// The start parameter's prefix: `/start ref_<code>`.
pub const START_PREFIX: &str = "ref_";
/// Characters of a code.
pub const CODE_LEN: usize = 8;
/// The code's alphabet: lower-case letters and digits without the look-alikes `l`, `o`,
/// `0`, `1`.
const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// Default of `REFERRAL_BONUS_DAYS`.
pub const DEFAULT_BONUS_DAYS: i32 = 7;
/// The largest `REFERRAL_BONUS_DAYS`.
pub const MAX_BONUS_DAYS: i32 = 365;

/// How many days a referrer gets; 0 = referrals off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferralPolicy {
    /// `REFERRAL_BONUS_DAYS` (default [`DEFAULT_BONUS_DAYS`]; at most [`MAX_BONUS_DAYS`]).
    pub bonus_days: i32,
}

impl Default for ReferralPolicy {
    fn default() -> Self {
        Self {
            bonus_days: DEFAULT_BONUS_DAYS,
        }
    }
}

impl ReferralPolicy {
    /// Off: no links, `/start ref_…` records nothing.
    pub const OFF: Self = Self { bonus_days: 0 };

    /// `REFERRAL_BONUS_DAYS`.
    pub fn from_vars(raw: &Vars) -> Result<Self, String> {
        let bonus_days = raw.parse_or::<i32>("REFERRAL_BONUS_DAYS", DEFAULT_BONUS_DAYS)?;
        if !(0..=MAX_BONUS_DAYS).contains(&bonus_days) {
            return Err(invalid(
                "REFERRAL_BONUS_DAYS",
                format!("must be 0 (off) to {MAX_BONUS_DAYS}"),
            ));
        }
        Ok(Self { bonus_days })
    }

    pub fn enabled(&self) -> bool {
        self.bonus_days > 0
    }
}

/// A well-formed referral code (what follows `ref_`), lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code(String);

impl Code {
    /// The code of a start parameter `ref_<code>`; `None` for anything else (another start
    /// parameter, a code of the wrong length or with characters outside the alphabet).
    pub fn from_start(parameter: &str) -> Option<Self> {
        let code = parameter.trim().strip_prefix(START_PREFIX)?;
        let code = code.to_ascii_lowercase();
        (code.len() == CODE_LEN && code.bytes().all(|b| ALPHABET.contains(&b)))
            .then_some(Self(code))
    }

    /// A fresh random code.
    fn random() -> Self {
        // A v4 UUID carries 122 random bits; 40 of them make the code.
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let mut bits = u64::from_be_bytes([
            0, 0, 0, bytes[10], bytes[11], bytes[12], bytes[13], bytes[14],
        ]);
        let mut code = String::with_capacity(CODE_LEN);
        for _ in 0..CODE_LEN {
            code.push(char::from(ALPHABET[(bits & 31) as usize]));
            bits >>= 5;
        }
        Self(code)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `ref_<code>`: the start parameter of the deep link.
    pub fn start_parameter(&self) -> String {
        format!("{START_PREFIX}{}", self.0)
    }

    /// `https://t.me/<bot>?start=ref_<code>`.
    pub fn link(&self, bot_username: &str) -> String {
        format!(
            "https://t.me/{bot_username}?start={}",
            self.start_parameter()
        )
    }
}

/// The `manual_grants.idempotency_key` of the bonus for the referred user's payment: one
/// grant per payment, by the column's UNIQUE constraint.
pub fn key(payment_id: PaymentId) -> String {
    format!("referral:{payment_id}")
}

/// The user of `telegram_id`, created (with what the bot knows of them) when unknown — a
/// referrer needs a row for their code, a referred user for their referral.
pub async fn ensure_user(
    conn: &impl ConnectionTrait,
    telegram_id: i64,
    username: Option<String>,
    first_name: Option<String>,
    language_code: Option<String>,
) -> Result<users::Model, DbErr> {
    users::Entity::insert(users::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        telegram_id: Set(telegram_id),
        username: Set(username),
        first_name: Set(first_name),
        language_code: Set(language_code),
        created_at: Set(Utc::now()),
    })
    .on_conflict_do_nothing_on([users::Column::TelegramId])
    .exec_without_returning(conn)
    .await?;
    users::Entity::find()
        .filter(users::Column::TelegramId.eq(telegram_id))
        .one(conn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("user {telegram_id} after upsert")))
}

/// `user_id`'s code, made on first use. Two concurrent calls agree (the first insert wins,
/// the other reads it); a code taken by someone else is drawn again.
pub async fn code_of(conn: &impl ConnectionTrait, user_id: i64) -> Result<Code, DbErr> {
    for _ in 0..8 {
        if let Some(row) = referral_codes::Entity::find_by_id(user_id)
            .one(conn)
            .await?
        {
            return Ok(Code(row.code));
        }
        new_code(user_id).exec_without_returning(conn).await?;
    }
    Err(DbErr::Custom(format!(
        "no free referral code for user {user_id} after 8 draws"
    )))
}

/// Inserts a random code for `user_id`; a taken user id *or* code inserts nothing (no
/// conflict target: either UNIQUE constraint).
fn new_code(user_id: i64) -> sea_orm::TryInsert<referral_codes::ActiveModel> {
    referral_codes::Entity::insert(referral_codes::ActiveModel {
        user_id: Set(user_id),
        code: Set(Code::random().0),
        created_at: Set(Utc::now()),
    })
    .on_conflict(OnConflict::new().do_nothing().to_owned())
    .try_insert()
}

/// What [`record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The referral is recorded: the referrer's user row.
    Referred(users::Model),
    /// No user has this code.
    UnknownCode,
    /// The link is the user's own.
    OwnLink,
    /// The user has a referrer already (this one or another).
    AlreadyReferred,
    /// The user has paid before: not new to us.
    NotNew,
    /// The link's owner was brought by this user: they would reward each other.
    Circular,
}

impl Recorded {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Referred(_) => "referred",
            Self::UnknownCode => "unknown_code",
            Self::OwnLink => "own_link",
            Self::AlreadyReferred => "already_referred",
            Self::NotNew => "not_new",
            Self::Circular => "circular",
        }
    }
}

/// Records that `code`'s owner brought `user_id`, who is promised `bonus_days` for the
/// owner (see the module docs for who may be referred). Changes nothing unless it answers
/// [`Recorded::Referred`].
pub async fn record(
    conn: &impl ConnectionTrait,
    user_id: i64,
    code: &Code,
    bonus_days: i32,
) -> Result<Recorded, DbErr> {
    let Some(owner) = referral_codes::Entity::find()
        .filter(referral_codes::Column::Code.eq(code.as_str()))
        .one(conn)
        .await?
    else {
        return Ok(Recorded::UnknownCode);
    };
    if owner.user_id == user_id {
        return Ok(Recorded::OwnLink);
    }
    if referrals::Entity::find_by_id(user_id)
        .one(conn)
        .await?
        .is_some()
    {
        return Ok(Recorded::AlreadyReferred);
    }
    if has_paid(conn, user_id, None).await? {
        return Ok(Recorded::NotNew);
    }
    let owners_referrer = referrals::Entity::find_by_id(owner.user_id)
        .one(conn)
        .await?
        .map(|r| r.referrer_user_id);
    if owners_referrer == Some(user_id) {
        return Ok(Recorded::Circular);
    }
    let Some(referrer) = users::Entity::find_by_id(owner.user_id).one(conn).await? else {
        return Ok(Recorded::UnknownCode);
    };
    let inserted = referrals::Entity::insert(referrals::ActiveModel {
        referred_user_id: Set(user_id),
        referrer_user_id: Set(owner.user_id),
        bonus_days: Set(bonus_days),
        created_at: Set(Utc::now()),
        rewarded_payment_id: Set(None),
        reward_grant_id: Set(None),
        rewarded_at: Set(None),
    })
    .on_conflict_do_nothing_on([referrals::Column::ReferredUserId])
    .exec_without_returning(conn)
    .await?;
    // A concurrent /start of the same user with another link got there first.
    Ok(if matches!(inserted, TryInsertResult::Inserted(1)) {
        Recorded::Referred(referrer)
    } else {
        Recorded::AlreadyReferred
    })
}

/// Whether a payment of `user_id` (other than `except`) has succeeded (refunded ones count).
async fn has_paid(
    conn: &impl ConnectionTrait,
    user_id: i64,
    except: Option<PaymentId>,
) -> Result<bool, DbErr> {
    let mut query = payments::Entity::find()
        .select_only()
        .column(payments::Column::UserId)
        .filter(payments::Column::UserId.eq(user_id))
        .filter(payments::Column::Status.is_in([
            PaymentStatus::Succeeded,
            PaymentStatus::PartiallyRefunded,
            PaymentStatus::Refunded,
        ]));
    if let Some(id) = except {
        query = query.filter(payments::Column::Id.ne(id));
    }
    Ok(query.into_tuple::<i64>().one(conn).await?.is_some())
}

/// In the transaction that moves `payment` (of `user_id`) to `succeeded`: claims the
/// referral of `user_id` for this payment when it is their first paid one and the referral
/// has not been rewarded. `Some` (the claimed row, with `rewarded_payment_id` set) at most
/// once per referred user: the `UPDATE`'s condition decides between concurrent payments.
/// The caller writes the grant and names it with [`set_reward_grant`].
pub async fn claim(
    conn: &impl ConnectionTrait,
    user_id: i64,
    payment_id: PaymentId,
) -> Result<Option<referrals::Model>, DbErr> {
    // Most payers were referred by nobody: one primary-key look-up, and nothing more.
    let open = referrals::Entity::find_by_id(user_id)
        .filter(referrals::Column::RewardedPaymentId.is_null())
        .one(conn)
        .await?;
    if open.is_none() || has_paid(conn, user_id, Some(payment_id)).await? {
        return Ok(None);
    }
    let now = Utc::now();
    let claimed = referrals::Entity::update_many()
        .col_expr(
            referrals::Column::RewardedPaymentId,
            Expr::value(Some(payment_id)),
        )
        .col_expr(referrals::Column::RewardedAt, Expr::value(Some(now)))
        .filter(referrals::Column::ReferredUserId.eq(user_id))
        .filter(referrals::Column::RewardedPaymentId.is_null())
        .filter(referrals::Column::BonusDays.gt(0))
        .exec_with_returning(conn)
        .await?;
    Ok(claimed.into_iter().next())
}

/// Names the referrer's grant of a claimed referral.
pub async fn set_reward_grant(
    conn: &impl ConnectionTrait,
    referred_user_id: i64,
    grant_id: i64,
) -> Result<(), DbErr> {
    referrals::Entity::update_many()
        .col_expr(
            referrals::Column::RewardGrantId,
            Expr::value(Some(grant_id)),
        )
        .filter(referrals::Column::ReferredUserId.eq(referred_user_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// A referrer's numbers, for `/ref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Counts {
    /// Users recorded as brought by them.
    pub referred: u64,
    /// Of those, the ones whose first payment earned the bonus.
    pub rewarded: u64,
}

pub async fn counts(conn: &impl ConnectionTrait, referrer_user_id: i64) -> Result<Counts, DbErr> {
    let mine =
        || referrals::Entity::find().filter(referrals::Column::ReferrerUserId.eq(referrer_user_id));
    Ok(Counts {
        referred: mine().count(conn).await?,
        rewarded: mine()
            .filter(referrals::Column::RewardedPaymentId.is_not_null())
            .count(conn)
            .await?,
    })
}

/// The referral whose bonus is `grant_id` (the referred user is told too).
pub async fn by_reward_grant(
    conn: &impl ConnectionTrait,
    grant_id: i64,
) -> Result<Option<referrals::Model>, DbErr> {
    referrals::Entity::find()
        .filter(referrals::Column::RewardGrantId.eq(grant_id))
        .one(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&'static str, &str)]) -> Result<ReferralPolicy, String> {
        ReferralPolicy::from_vars(&pairs.iter().copied().collect::<Vars>())
    }

    #[test]
    fn settings() {
        assert_eq!(policy(&[]).unwrap().bonus_days, DEFAULT_BONUS_DAYS);
        assert!(policy(&[]).unwrap().enabled());
        assert!(!policy(&[("REFERRAL_BONUS_DAYS", "0")]).unwrap().enabled());
        assert_eq!(
            policy(&[("REFERRAL_BONUS_DAYS", "30")]).unwrap().bonus_days,
            30
        );
        for bad in ["-1", "366", "x", "1.5"] {
            assert!(policy(&[("REFERRAL_BONUS_DAYS", bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_taken_code_or_user_inserts_nothing() {
        use sea_orm::QueryTrait;
        for backend in [sea_orm::DbBackend::Postgres, sea_orm::DbBackend::Sqlite] {
            let sql = new_code(1).build(backend).to_string();
            let words: Vec<&str> = sql.split_whitespace().collect();
            assert!(
                words.ends_with(&["ON", "CONFLICT", "DO", "NOTHING"]),
                "{sql}"
            );
        }
    }

    #[test]
    fn codes_are_random_and_parse_back() {
        let a = Code::random();
        let b = Code::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), CODE_LEN);
        assert_eq!(Code::from_start(&a.start_parameter()), Some(a.clone()));
        assert_eq!(
            Code::from_start(
                &a.start_parameter()
                    .to_ascii_uppercase()
                    .replace("REF_", "ref_")
            ),
            Some(a.clone())
        );
        assert_eq!(
            a.link("acp_bot"),
            format!("https://t.me/acp_bot?start=ref_{}", a.as_str())
        );
        for bad in [
            "",
            "ref_",
            "ref_abc",
            "ref_abcdefghj",
            "ref_abcdefg0",
            "ref_abcd-fgh",
            "abcdefgh",
            "promo_abcdefgh",
        ] {
            assert_eq!(Code::from_start(bad), None, "{bad:?}");
        }
    }
}
