//! The subscription ledger's arithmetic. The expiry is derived from `subscription_grants` only,
//! never read back from the panel, so the same ledger always yields the same absolute expiry
//! and re-sending it to the panel changes nothing.

use chrono::{DateTime, Duration, Utc};

/// `t` without its sub-second part: the panel keeps Unix seconds, so the ledger does too and
/// the two compare exactly.
pub fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// The expiry after granting `days` at `now`: `max(now, current) + days`. Paid days are added
/// to what is left, and a lapsed subscription starts again from `now`.
pub fn extend(current: Option<DateTime<Utc>>, now: DateTime<Utc>, days: i32) -> DateTime<Utc> {
    let base = current.map_or(now, |current| current.max(now));
    base + Duration::days(i64::from(days))
}

/// One ledger row as the replay needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// When the grant was made (`subscription_grants.created_at`).
    pub granted_at: DateTime<Utc>,
    pub days_granted: i32,
    pub days_revoked: i32,
    /// An opening balance (`kind` = `opening_balance`): the expiry the panel user already had
    /// when we adopted it (`expires_at_after`), exact to the second. Its days are only a
    /// rounded record; the replay starts from this instant.
    pub carried_until: Option<DateTime<Utc>>,
}

impl Entry {
    /// A paid (or otherwise granted) number of days.
    pub fn grant(granted_at: DateTime<Utc>, days_granted: i32, days_revoked: i32) -> Self {
        Self {
            granted_at,
            days_granted,
            days_revoked,
            carried_until: None,
        }
    }

    fn net_days(&self) -> i32 {
        (self.days_granted - self.days_revoked).max(0)
    }
}

/// The expiry the grants produce: from the opening balance, if any (whatever its place in the
/// ledger: the panel's time was the customer's before anything we sold), then every other
/// grant in order with [`extend`]; `None` without entries.
///
/// A grant's `expires_at_after` is exactly this replay up to that grant (it is computed with
/// the same `now` that is stored as `created_at`), so revoking days and replaying yields the
/// expiry the customer would have had without them — and a refund never reaches into the
/// opening balance, which no payment bought.
pub fn replay(entries: &[Entry]) -> Option<DateTime<Utc>> {
    let opening = entries.iter().filter_map(|e| e.carried_until).max();
    entries
        .iter()
        .filter(|e| e.carried_until.is_none())
        .fold(opening, |expiry, entry| {
            Some(extend(expiry, entry.granted_at, entry.net_days()))
        })
}

/// The opening balance of a panel user whose time runs until `expire` (Unix seconds), adopted
/// at `now`: its expiry and its remaining whole days (rounded, for the record); `None` when
/// nothing is left (or the user never expires, which no number of days can carry).
pub fn opening_balance(expire: Option<i64>, now: DateTime<Utc>) -> Option<(DateTime<Utc>, i32)> {
    let until = DateTime::from_timestamp(expire?, 0)?;
    if until <= now {
        return None;
    }
    let seconds = (until - now).num_seconds();
    let days = i32::try_from((seconds + 43_200) / 86_400).unwrap_or(i32::MAX);
    Some((until, days))
}

/// Days of a `days_granted` grant to take back once `total_refunded_minor` of
/// `amount_minor` has been refunded: all of them for a full refund, else in proportion,
/// rounded down (in the customer's favour). Based on the running total, so a redelivered
/// refund event computes the same number.
pub fn days_to_revoke(days_granted: i32, amount_minor: i64, total_refunded_minor: i64) -> i32 {
    if days_granted <= 0 || total_refunded_minor <= 0 {
        return 0;
    }
    if amount_minor <= 0 || total_refunded_minor >= amount_minor {
        return days_granted;
    }
    let days =
        i128::from(days_granted) * i128::from(total_refunded_minor) / i128::from(amount_minor);
    i32::try_from(days)
        .unwrap_or(days_granted)
        .clamp(0, days_granted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + day * 86_400, 0).unwrap()
    }

    #[test]
    fn extend_adds_to_what_is_left_or_starts_from_now() {
        assert_eq!(extend(None, at(0), 30), at(30));
        assert_eq!(extend(Some(at(10)), at(0), 30), at(40), "10 days left");
        assert_eq!(extend(Some(at(-5)), at(0), 30), at(30), "lapsed");
    }

    #[test]
    fn replay_matches_the_forward_computation_and_drops_revoked_days() {
        let first = Entry::grant(at(0), 30, 0);
        let second = Entry::grant(at(10), 30, 0);
        assert_eq!(replay(&[]), None);
        assert_eq!(replay(&[first, second]), Some(at(60)));

        let second_refunded = Entry {
            days_revoked: 30,
            ..second
        };
        assert_eq!(replay(&[first, second_refunded]), Some(at(30)));

        // Without the first month the second one runs from the day it was bought.
        let first_refunded = Entry {
            days_revoked: 30,
            ..first
        };
        assert_eq!(replay(&[first_refunded, second]), Some(at(40)));
        assert_eq!(replay(&[first_refunded]), Some(at(0)), "nothing left");
    }

    #[test]
    fn the_opening_balance_comes_first_and_no_refund_takes_it() {
        let opening = Entry {
            carried_until: Some(at(5)),
            ..Entry::grant(at(1), 4, 0)
        };
        let paid = Entry::grant(at(0), 30, 0);
        // Recorded after the payment's grant, replayed before it: 5 days left + 30 paid.
        assert_eq!(replay(&[paid, opening]), Some(at(35)));
        let refunded = Entry {
            days_revoked: 30,
            ..paid
        };
        assert_eq!(replay(&[refunded, opening]), Some(at(5)), "the 5 days stay");
        assert_eq!(replay(&[opening]), Some(at(5)));
    }

    #[test]
    fn opening_balance_is_the_time_left_on_the_panel() {
        let now = at(0);
        let in_5_days = at(5).timestamp();
        assert_eq!(opening_balance(Some(in_5_days), now), Some((at(5), 5)));
        assert_eq!(
            opening_balance(Some(in_5_days - 3_600), now).map(|b| b.1),
            Some(5),
            "rounded"
        );
        assert_eq!(opening_balance(Some(at(-1).timestamp()), now), None);
        assert_eq!(opening_balance(Some(now.timestamp()), now), None);
        assert_eq!(opening_balance(None, now), None, "never expires");
    }

    #[test]
    fn refunds_revoke_days_in_proportion_rounding_down() {
        assert_eq!(days_to_revoke(30, 19_900, 19_900), 30);
        assert_eq!(days_to_revoke(30, 19_900, 25_000), 30);
        assert_eq!(days_to_revoke(30, 20_000, 10_000), 15);
        assert_eq!(days_to_revoke(30, 20_000, 100), 0);
        assert_eq!(days_to_revoke(30, 20_000, 0), 0);
        assert_eq!(days_to_revoke(30, 0, 1), 30);
        assert_eq!(days_to_revoke(365, i64::MAX, i64::MAX - 1), 364);
    }

    #[test]
    fn whole_seconds_drops_the_fraction() {
        let t = DateTime::from_timestamp(1_767_225_600, 123_456_789).unwrap();
        assert_eq!(whole_seconds(t), at(0));
    }
}
