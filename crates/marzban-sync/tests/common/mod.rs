//! Helpers shared by the panel client tests.
#![allow(dead_code)]

use chrono::Utc;
use marzban_sync::panel::{Desired, MarzbanUsername};

pub const GIB: i64 = 1 << 30;

pub fn name(s: &str) -> MarzbanUsername {
    MarzbanUsername::parse(s).unwrap()
}

/// `actual` is `expected` give or take the second the test's clock may have moved on.
pub fn assert_near(actual: Option<i64>, expected: i64) {
    let actual = actual.expect("an expiry");
    assert!((actual - expected).abs() <= 2, "{actual} != {expected}");
}

pub fn in_days(days: i64) -> i64 {
    Utc::now().timestamp() + days * 86_400
}

/// `username` paid until `expire`, with a 10 GiB limit.
pub fn desired(username: &str, expire: i64) -> Desired {
    Desired {
        username: name(username),
        expire,
        data_limit: Some(10 * GIB),
    }
}
