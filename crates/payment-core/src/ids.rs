//! Which provider a payment goes through.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A provider name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown payment provider {0:?}")]
pub struct UnknownProvider(pub String);

/// Defines [`ProviderId`] with `as_str`, `FromStr`, `Display`, serde and `ALL` from one list,
/// so a new provider is one line here.
macro_rules! provider_ids {
    ($( $(#[$meta:meta])* $variant:ident = $text:literal ),+ $(,)?) => {
        /// A payment provider, stored and sent as its snake_case name (`"yookassa"`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum ProviderId {
            $( $(#[$meta])* #[serde(rename = $text)] $variant, )+
        }

        impl ProviderId {
            /// Every provider this build knows, enabled or not.
            pub const ALL: &'static [ProviderId] = &[$(ProviderId::$variant),+];

            /// The stored form, e.g. `"yookassa"`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ProviderId::$variant => $text,)+
                }
            }
        }

        impl FromStr for ProviderId {
            type Err = UnknownProvider;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(ProviderId::$variant),)+
                    _ => Err(UnknownProvider(s.to_owned())),
                }
            }
        }
    };
}

provider_ids! {
    /// YooKassa (ЮKassa): cards, SBP and wallets through a redirect checkout.
    YooKassa = "yookassa",
    /// USDT on TRON (TRC20), verified on chain by our own watcher.
    Crypto = "crypto",
    /// Telegram Payments: Telegram Stars, or fiat through a BotFather payment provider.
    Telegram = "telegram",
    /// CryptoBot (Crypto Pay API): crypto assets paid inside @CryptoBot.
    CryptoBot = "cryptobot",
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The specification's name for the same thing: the method a payment is made with is the
/// provider it goes through (`payments.provider`). One enum, so a new provider is one variant.
pub type PaymentMethod = ProviderId;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for id in ProviderId::ALL {
            assert_eq!(id.as_str().parse::<ProviderId>(), Ok(*id));
            let json = serde_json::to_string(id).expect("serialize");
            assert_eq!(json, format!("\"{}\"", id.as_str()));
        }
        assert_eq!(PaymentMethod::YooKassa.as_str(), "yookassa");
        assert!("YooKassa".parse::<ProviderId>().is_err());
    }
}
