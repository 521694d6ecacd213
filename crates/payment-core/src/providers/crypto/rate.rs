//! The configured RUB→USDT rate and the exact conversion of kopecks to micro-USDT.
//!
//! No floats anywhere: the rate is kept as `mantissa / 10^scale` RUB per USDT and the
//! conversion is one integer division, rounded up so the shop never receives less than the
//! RUB price is worth at that rate.

use std::fmt;
use std::str::FromStr;

use domain::money::{Currency, Money};

/// At most this many decimals in a configured rate.
pub const MAX_RATE_DECIMALS: u32 = 8;

/// RUB per 1 USDT, exactly as configured (e.g. `"95.50"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RubPerUsdt {
    mantissa: u128,
    scale: u32,
}

/// A rate that is not a positive decimal number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a positive decimal RUB-per-USDT rate with at most {MAX_RATE_DECIMALS} decimals: {0:?}"
)]
pub struct BadRate(pub String);

/// A conversion that cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("only RUB amounts are converted, got {0}")]
    NotRub(Currency),
    #[error("negative amount {0}")]
    Negative(Money),
    #[error("the converted amount does not fit in i64 micro-USDT")]
    Overflow,
}

impl RubPerUsdt {
    /// The rate as `mantissa / 10^scale`.
    pub fn parts(self) -> (u128, u32) {
        (self.mantissa, self.scale)
    }

    /// Converts a RUB amount to USDT: `ceil(kopecks × 10^(scale+4) / mantissa)` micro-USDT
    /// (1 RUB = 100 kopecks, 1 USDT = 10^6 micro-USDT).
    pub fn rub_to_usdt(self, rub: Money) -> Result<Money, ConversionError> {
        if rub.currency() != Currency::Rub {
            return Err(ConversionError::NotRub(rub.currency()));
        }
        let kopecks = u128::try_from(rub.minor()).map_err(|_| ConversionError::Negative(rub))?;
        let numerator = kopecks
            .checked_mul(10u128.pow(self.scale + 4))
            .ok_or(ConversionError::Overflow)?;
        let micro = numerator.div_ceil(self.mantissa);
        let micro = i64::try_from(micro).map_err(|_| ConversionError::Overflow)?;
        Ok(Money::new(micro, Currency::Usdt))
    }
}

impl FromStr for RubPerUsdt {
    type Err = BadRate;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRate(s.to_owned());
        let t = s.trim();
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty()
            || !all_digits(int)
            || !all_digits(frac)
            || (t.contains('.') && frac.is_empty())
        {
            return Err(bad());
        }
        let scale = u32::try_from(frac.len()).map_err(|_| bad())?;
        if scale > MAX_RATE_DECIMALS || int.len() > 12 {
            return Err(bad());
        }
        let mantissa: u128 = format!("{int}{frac}").parse().map_err(|_| bad())?;
        if mantissa == 0 {
            return Err(bad());
        }
        Ok(Self { mantissa, scale })
    }
}

impl fmt::Display for RubPerUsdt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let divisor = 10u128.pow(self.scale);
        if self.scale == 0 {
            write!(f, "{}", self.mantissa)
        } else {
            write!(
                f,
                "{}.{:0width$}",
                self.mantissa / divisor,
                self.mantissa % divisor,
                width = self.scale as usize
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rub(s: &str) -> Money {
        Money::parse(s, Currency::Rub).expect("rub")
    }

    #[test]
    fn parses_exact_decimals() {
        let r: RubPerUsdt = "95.50".parse().expect("rate");
        assert_eq!(r.parts(), (9550, 2));
        assert_eq!(r.to_string(), "95.50");
        assert_eq!("100".parse::<RubPerUsdt>().expect("int").parts(), (100, 0));
        for bad in [
            "",
            "0",
            "0.00",
            "-95",
            "95,5",
            "1e2",
            "95.",
            ".5",
            "1.123456789",
            "abc",
        ] {
            assert!(bad.parse::<RubPerUsdt>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn converts_rounding_up() {
        let r: RubPerUsdt = "95.50".parse().expect("rate");
        // 199.00 RUB / 95.50 = 2.083769633… USDT → 2.083770
        assert_eq!(r.rub_to_usdt(rub("199.00")).expect("ok").minor(), 2_083_770);
        // 955.00 RUB / 95.50 = exactly 10 USDT: no rounding.
        assert_eq!(
            r.rub_to_usdt(rub("955.00")).expect("ok").minor(),
            10_000_000
        );
        assert_eq!(r.rub_to_usdt(rub("0.01")).expect("ok").minor(), 105);
        assert_eq!(
            r.rub_to_usdt(Money::new(1, Currency::Xtr)),
            Err(ConversionError::NotRub(Currency::Xtr))
        );
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn rate() -> impl Strategy<Value = (u128, u32)> {
            (1u128..=10_000_000_000, 0u32..=MAX_RATE_DECIMALS)
        }

        proptest! {
            /// micro = ceil(kopecks × 10^(scale+4) / mantissa), checked by integer identities
            /// only: the result covers the price, and one micro-USDT less would not.
            #[test]
            fn converts_exactly_rounding_up(kopecks in 0i64..=1_000_000_000_000, (mantissa, scale) in rate()) {
                let text = if scale == 0 {
                    mantissa.to_string()
                } else {
                    let d = 10u128.pow(scale);
                    format!("{}.{:0w$}", mantissa / d, mantissa % d, w = scale as usize)
                };
                let r: RubPerUsdt = text.parse().expect("rate");
                prop_assert_eq!(r.parts(), (mantissa, scale));
                prop_assert_eq!(r.to_string(), text);
                let Ok(usdt) = r.rub_to_usdt(Money::new(kopecks, Currency::Rub)) else {
                    // Only an i64 overflow may refuse.
                    let exact = u128::try_from(kopecks).unwrap() * 10u128.pow(scale + 4) / mantissa;
                    prop_assert!(exact >= i64::MAX as u128);
                    return Ok(());
                };
                prop_assert_eq!(usdt.currency(), Currency::Usdt);
                let micro = u128::try_from(usdt.minor()).unwrap();
                let wanted = u128::try_from(kopecks).unwrap() * 10u128.pow(scale + 4);
                prop_assert!(micro * mantissa >= wanted);
                prop_assert!(micro == 0 || (micro - 1) * mantissa < wanted);
            }

            #[test]
            fn conversion_is_monotonic(a in 0i64..=10_000_000_000, b in 0i64..=10_000_000_000, (mantissa, scale) in rate()) {
                let d = 10u128.pow(scale);
                let text = format!("{}.{:0w$}", mantissa / d, mantissa % d, w = scale.max(1) as usize);
                let Ok(r) = text.parse::<RubPerUsdt>() else { return Ok(()); };
                let (lo, hi) = (a.min(b), a.max(b));
                let to = |k| r.rub_to_usdt(Money::new(k, Currency::Rub)).map(|m| m.minor());
                if let (Ok(x), Ok(y)) = (to(lo), to(hi)) {
                    prop_assert!(x <= y);
                }
            }
        }
    }
}
