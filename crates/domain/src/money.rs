//! Money as an integer count of minor units plus a currency — never floating point.
//!
//! Decimal strings from providers (YooKassa's `"199.00"`, TronGrid's token amounts) are
//! parsed here with exact integer arithmetic, refusing anything that does not fit exactly.

use std::fmt;
use std::str::FromStr;

use sea_orm::{DeriveActiveEnum, EnumIter};
use serde::{Deserialize, Serialize};

/// A supported currency. Stored and serialised as its code (`"RUB"`, `"XTR"`, `"USDT"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum Currency {
    /// Russian rouble; minor unit = kopeck (2 decimals).
    #[sea_orm(string_value = "RUB")]
    #[serde(rename = "RUB")]
    Rub,
    /// Telegram Stars; whole units only.
    #[sea_orm(string_value = "XTR")]
    #[serde(rename = "XTR")]
    Xtr,
    /// Tether USD (TRC20 token with 6 decimals); minor unit = 10^-6 USDT.
    #[sea_orm(string_value = "USDT")]
    #[serde(rename = "USDT")]
    Usdt,
}

impl Currency {
    /// Every supported currency.
    pub const ALL: [Currency; 3] = [Currency::Rub, Currency::Xtr, Currency::Usdt];

    /// ISO-style code: `"RUB"`, `"XTR"`, `"USDT"`.
    pub fn code(self) -> &'static str {
        match self {
            Currency::Rub => "RUB",
            Currency::Xtr => "XTR",
            Currency::Usdt => "USDT",
        }
    }

    /// Number of decimal digits of the minor unit.
    pub fn exponent(self) -> u32 {
        match self {
            Currency::Rub => 2,
            Currency::Xtr => 0,
            Currency::Usdt => 6,
        }
    }

    /// Minor units per major unit (`10^exponent`).
    pub fn minor_per_major(self) -> i64 {
        10_i64.pow(self.exponent())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;

    /// Accepts the code in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::ALL
            .into_iter()
            .find(|c| c.code().eq_ignore_ascii_case(s))
            .ok_or_else(|| MoneyError::UnknownCurrency(s.to_owned()))
    }
}

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency {0:?}")]
    UnknownCurrency(String),
    #[error("not a decimal amount: {0:?}")]
    Invalid(String),
    #[error("negative amount: {0:?}")]
    Negative(String),
    #[error("{input:?} has more than {max} fractional digits allowed for {currency}")]
    TooPrecise {
        input: String,
        currency: Currency,
        max: u32,
    },
    #[error("amount out of range")]
    Overflow,
    #[error("currency mismatch: {left} vs {right}")]
    CurrencyMismatch { left: Currency, right: Currency },
}

/// An amount in minor units of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Money { minor, currency }
    }

    /// The amount in minor units (kopecks, Stars, micro-USDT).
    pub fn minor(self) -> i64 {
        self.minor
    }

    pub fn currency(self) -> Currency {
        self.currency
    }

    /// Parses a non-negative decimal string such as `"199.00"` exactly.
    ///
    /// Accepts `digits[.digits]` with at most `currency.exponent()` fractional digits
    /// (fewer are padded: `"199.5"` RUB is 19950). Refuses signs, exponents, whitespace,
    /// extra precision (`"1.999"` RUB) and values that do not fit in `i64` minor units.
    pub fn parse(input: &str, currency: Currency) -> Result<Money, MoneyError> {
        let invalid = || MoneyError::Invalid(input.to_owned());
        if input.starts_with('-') {
            return Err(MoneyError::Negative(input.to_owned()));
        }
        let (whole, fraction) = match input.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (input, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
            return Err(invalid());
        }
        let fraction = fraction.unwrap_or("");
        let exponent = currency.exponent();
        if fraction.len() > exponent as usize {
            return Err(MoneyError::TooPrecise {
                input: input.to_owned(),
                currency,
                max: exponent,
            });
        }

        let mut minor: i64 = 0;
        for digit in whole.bytes().chain(fraction.bytes()) {
            minor = minor
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(digit - b'0')))
                .ok_or(MoneyError::Overflow)?;
        }
        // Pad the fraction to the full exponent, e.g. "199.5" -> 19950 kopecks.
        for _ in fraction.len()..exponent as usize {
            minor = minor.checked_mul(10).ok_or(MoneyError::Overflow)?;
        }
        Ok(Money { minor, currency })
    }

    /// The amount as a decimal string with exactly `exponent` fractional digits
    /// (`"199.00"`, `"50"`, `"1.500000"`), the form providers expect.
    pub fn to_decimal_string(self) -> String {
        let exponent = self.currency.exponent() as usize;
        let sign = if self.minor < 0 { "-" } else { "" };
        let digits = self.minor.unsigned_abs().to_string();
        if exponent == 0 {
            return format!("{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = exponent + 1);
        let (whole, fraction) = padded.split_at(padded.len() - exponent);
        format!("{sign}{whole}.{fraction}")
    }

    /// Sum of two amounts of the same currency.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        self.minor
            .checked_add(other.minor)
            .map(|minor| Money::new(minor, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    /// Difference of two amounts of the same currency (may be negative).
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        self.minor
            .checked_sub(other.minor)
            .map(|minor| Money::new(minor, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal_string(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rub(s: &str) -> Result<i64, MoneyError> {
        Money::parse(s, Currency::Rub).map(Money::minor)
    }

    #[test]
    fn currency_codes_and_exponents() {
        assert_eq!(Currency::Rub.code(), "RUB");
        assert_eq!(Currency::Xtr.code(), "XTR");
        assert_eq!(Currency::Usdt.code(), "USDT");
        assert_eq!(
            Currency::ALL.map(Currency::exponent),
            [2, 0, 6],
            "RUB, XTR, USDT"
        );
        assert_eq!("usdt".parse::<Currency>(), Ok(Currency::Usdt));
        assert!(matches!(
            "EUR".parse::<Currency>(),
            Err(MoneyError::UnknownCurrency(_))
        ));
    }

    #[test]
    fn currency_serde_is_the_code() {
        assert_eq!(serde_json::to_string(&Currency::Xtr).unwrap(), "\"XTR\"");
        assert_eq!(
            serde_json::from_str::<Currency>("\"USDT\"").unwrap(),
            Currency::Usdt
        );
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
    }

    #[test]
    fn parses_provider_amounts() {
        assert_eq!(rub("199.00"), Ok(19900));
        assert_eq!(rub("199.5"), Ok(19950));
        assert_eq!(rub("199"), Ok(19900));
        assert_eq!(rub("0.01"), Ok(1));
        assert_eq!(rub("0"), Ok(0));
        assert_eq!(Money::parse("50", Currency::Xtr).unwrap().minor(), 50);
        assert_eq!(
            Money::parse("12.000001", Currency::Usdt).unwrap().minor(),
            12_000_001
        );
    }

    #[test]
    fn refuses_what_does_not_fit_exactly() {
        assert!(matches!(rub("1.999"), Err(MoneyError::TooPrecise { .. })));
        assert!(matches!(rub("1.990"), Err(MoneyError::TooPrecise { .. })));
        assert!(matches!(
            Money::parse("1.0", Currency::Xtr),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(rub("-1.00"), Err(MoneyError::Negative(_))));
        for garbage in [
            "", ".", "1.", ".5", "+1", " 1", "1 ", "1,00", "1e3", "abc", "1.2.3", "١",
        ] {
            assert!(
                matches!(rub(garbage), Err(MoneyError::Invalid(_))),
                "{garbage:?}"
            );
        }
        assert_eq!(rub("92233720368547758.07"), Ok(i64::MAX));
        assert_eq!(rub("92233720368547758.08"), Err(MoneyError::Overflow));
        assert_eq!(rub("99999999999999999999"), Err(MoneyError::Overflow));
    }

    #[test]
    fn formats_with_exactly_exponent_decimals() {
        assert_eq!(
            Money::new(19900, Currency::Rub).to_decimal_string(),
            "199.00"
        );
        assert_eq!(Money::new(5, Currency::Rub).to_decimal_string(), "0.05");
        assert_eq!(Money::new(0, Currency::Rub).to_decimal_string(), "0.00");
        assert_eq!(Money::new(50, Currency::Xtr).to_decimal_string(), "50");
        assert_eq!(
            Money::new(1_500_000, Currency::Usdt).to_decimal_string(),
            "1.500000"
        );
        assert_eq!(Money::new(-150, Currency::Rub).to_decimal_string(), "-1.50");
        assert_eq!(
            Money::new(i64::MIN, Currency::Rub).to_decimal_string(),
            "-92233720368547758.08"
        );
        assert_eq!(Money::new(19900, Currency::Rub).to_string(), "199.00 RUB");
    }

    #[test]
    fn arithmetic_requires_one_currency() {
        let a = Money::new(100, Currency::Rub);
        assert_eq!(
            a.checked_add(Money::new(50, Currency::Rub)),
            Ok(Money::new(150, Currency::Rub))
        );
        assert_eq!(
            a.checked_sub(Money::new(150, Currency::Rub)),
            Ok(Money::new(-50, Currency::Rub))
        );
        assert_eq!(
            a.checked_add(Money::new(1, Currency::Xtr)),
            Err(MoneyError::CurrencyMismatch {
                left: Currency::Rub,
                right: Currency::Xtr
            })
        );
        assert_eq!(
            Money::new(i64::MAX, Currency::Rub).checked_add(Money::new(1, Currency::Rub)),
            Err(MoneyError::Overflow)
        );
    }

    fn any_currency() -> impl Strategy<Value = Currency> {
        prop::sample::select(Currency::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn decimal_string_round_trips(minor in 0..=i64::MAX, currency in any_currency()) {
            let money = Money::new(minor, currency);
            let text = money.to_decimal_string();
            prop_assert_eq!(Money::parse(&text, currency), Ok(money));
        }

        #[test]
        fn formatted_amounts_have_exactly_exponent_decimals(
            minor in any::<i64>(),
            currency in any_currency(),
        ) {
            let text = Money::new(minor, currency).to_decimal_string();
            let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
            prop_assert_eq!(decimals, currency.exponent() as usize);
        }

        #[test]
        fn parse_matches_integer_arithmetic(whole in 0..1_000_000_000_i64, cents in 0..100_i64) {
            let text = format!("{whole}.{cents:02}");
            prop_assert_eq!(rub(&text), Ok(whole * 100 + cents));
        }

        #[test]
        fn extra_precision_is_always_refused(
            whole in 0..1_000_000_i64,
            extra in "[0-9]{1,4}",
            currency in any_currency(),
        ) {
            let decimals = "0".repeat(currency.exponent() as usize);
            let text = format!("{whole}.{decimals}{extra}");
            let refused = matches!(
                Money::parse(&text, currency),
                Err(MoneyError::TooPrecise { .. })
            );
            prop_assert!(refused);
        }

        #[test]
        fn add_then_sub_is_identity(
            a in -1_000_000_000_000_i64..1_000_000_000_000,
            b in -1_000_000_000_000_i64..1_000_000_000_000,
            currency in any_currency(),
        ) {
            let (a, b) = (Money::new(a, currency), Money::new(b, currency));
            prop_assert_eq!(a.checked_add(b).and_then(|s| s.checked_sub(b)), Ok(a));
        }

        #[test]
        fn parse_never_panics(input in ".{0,40}", currency in any_currency()) {
            let _ = Money::parse(&input, currency);
        }
    }
}
