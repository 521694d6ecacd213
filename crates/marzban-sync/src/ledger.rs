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
}

impl Entry {
    fn net_days(&self) -> i32 {
        (self.days_granted - self.days_revoked).max(0)
    }
}

/// The expiry the grants produce, replayed in order with [`extend`]; `None` without grants.
///
/// A grant's `expires_at_after` is exactly this replay up to that grant (it is computed with
/// the same `now` that is stored as `created_at`), so revoking days and replaying yields the
/// expiry the customer would have had without them.
pub fn replay(entries: &[Entry]) -> Option<DateTime<Utc>> {
    entries.iter().fold(None, |expiry, entry| {
        Some(extend(expiry, entry.granted_at, entry.net_days()))
    })
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
        let first = Entry {
            granted_at: at(0),
            days_granted: 30,
            days_revoked: 0,
        };
        let second = Entry {
            granted_at: at(10),
            days_granted: 30,
            days_revoked: 0,
        };
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
