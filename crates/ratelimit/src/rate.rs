//! A rate as operators write it: `5/s`, `30/min,burst=10` (also `30/min burst 10`), `off`.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::Quota;

/// `count` events per `per`, with bursts of up to `burst` (GCRA: the budget refills one event
/// every `per / count`, and holds at most `burst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: NonZeroU32,
    per: Duration,
    burst: NonZeroU32,
}

impl Rate {
    /// `count` per second, bursts of `burst`. Panics on zeros (for constants).
    pub const fn per_second(count: u32, burst: u32) -> Self {
        Self::new(count, Duration::from_secs(1), burst)
    }

    /// `count` per minute, bursts of `burst`. Panics on zeros (for constants).
    pub const fn per_minute(count: u32, burst: u32) -> Self {
        Self::new(count, Duration::from_secs(60), burst)
    }

    const fn new(count: u32, per: Duration, burst: u32) -> Self {
        match (NonZeroU32::new(count), NonZeroU32::new(burst)) {
            (Some(count), Some(burst)) => Self { count, per, burst },
            _ => panic!("a rate needs a positive count and burst"),
        }
    }

    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// The time one event's budget takes to refill.
    pub fn interval(&self) -> Duration {
        (self.per / self.count.get()).max(Duration::from_nanos(1))
    }

    pub(crate) fn quota(&self) -> Quota {
        Quota::with_period(self.interval())
            .expect("a positive interval")
            .allow_burst(self.burst)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit},burst={}", self.count, self.burst)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateError(String);

impl fmt::Display for RateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected `off` or `N/s`, `N/min`, `N/h`, optionally followed by `,burst=M` \
             (e.g. `5/s,burst=20`)",
            self.0
        )
    }
}

impl std::error::Error for RateError {}

/// A limit setting: `Some(rate)`, or `None` for `off` (also `0`, `none`, `unlimited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting(pub Option<Rate>);

impl FromStr for Setting {
    type Err = RateError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let text = raw.trim().to_ascii_lowercase();
        if matches!(text.as_str(), "off" | "0" | "none" | "unlimited") {
            return Ok(Self(None));
        }
        let bad = || RateError(format!("{raw:?} is not a rate"));
        // `5/s,burst=20` (no spaces: `.env` files cut a value at a space) or `5/s burst 20`.
        let words: Vec<&str> = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .collect();
        let (rate, burst) = match words.as_slice() {
            [rate] => (*rate, None),
            [rate, "burst", burst] => (*rate, Some(*burst)),
            [rate, burst] => match burst.strip_prefix("burst=") {
                Some(burst) => (*rate, Some(burst)),
                None => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Ok(Self(None));
        }
        let burst = match burst {
            Some(b) => b.parse::<u32>().ok().filter(|b| *b > 0).ok_or_else(bad)?,
            // One unit's worth at once.
            None => count,
        };
        Ok(Self(Some(Rate::new(count, per, burst))))
    }
}

impl FromStr for Rate {
    type Err = RateError;

    /// Like [`Setting`], but `off` is an error.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        raw.parse::<Setting>()?
            .0
            .ok_or_else(|| RateError(format!("{raw:?} turns the limit off")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let rate: Setting = "5/s,burst=20".parse().unwrap();
        assert_eq!(rate.0, Some(Rate::per_second(5, 20)));
        let rate: Setting = "5/s burst 20".parse().unwrap();
        assert_eq!(rate.0, Some(Rate::per_second(5, 20)));
        assert_eq!(
            "30/min".parse::<Setting>().unwrap().0,
            Some(Rate::per_minute(30, 30))
        );
        assert_eq!(" 30 / min  burst 10 ".parse::<Setting>().ok(), None);
        assert_eq!(
            "30/MIN BURST 10".parse::<Setting>().unwrap().0,
            Some(Rate::per_minute(30, 10))
        );
        for off in ["off", "0", "0/s", "none"] {
            assert_eq!(off.parse::<Setting>().unwrap().0, None, "{off}");
        }
        for bad in [
            "",
            "5",
            "5/day",
            "x/s",
            "5/s burst",
            "5/s burst 0",
            "5/s 20",
        ] {
            assert!(bad.parse::<Setting>().is_err(), "{bad}");
        }
        assert_eq!(Rate::per_second(5, 20).to_string(), "5/s,burst=20");
        assert_eq!(
            Rate::per_second(5, 20).interval(),
            Duration::from_millis(200)
        );
        assert!("off".parse::<Rate>().is_err());
    }
}
