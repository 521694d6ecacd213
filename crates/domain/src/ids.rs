//! Identifier newtypes: parsed once at the boundary, so nothing further in sees a bare
//! string or integer that might not be valid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid payment id {0:?}: expected a UUID")]
    PaymentId(String),
    #[error("invalid Telegram user id {0:?}: expected a positive integer")]
    TelegramUserId(String),
    #[error("invalid idempotency key {0:?}: expected 1 to 64 characters of [A-Za-z0-9_-:.]")]
    IdempotencyKey(String),
    #[error("invalid Marzban username {0:?}: expected 3 to 32 characters of [a-z0-9_]")]
    MarzbanUsername(String),
    #[error("invalid payment provider name {0:?}: expected 1 to 32 characters of [a-z0-9_]")]
    ProviderId(String),
}

/// A payment provider's name as stored and sent (`"yookassa"`, `"cryptobot"`): one typed
/// value in entities, events and inbox notices. It is not a list of providers — each provider
/// declares its own id (`payment_core::providers::<name>::ID`) and the registry refuses two
/// with one name — so adding a provider edits nothing here. A name read from outside
/// (a URL, an admin's command) is checked for its shape by [`FromStr`]; whether such a provider
/// is enabled is the registry's question.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    sea_orm::DeriveValueType,
)]
#[serde(try_from = "String", into = "String")]
#[sea_orm(value_type = "String")]
pub struct ProviderId(std::borrow::Cow<'static, str>);

impl ProviderId {
    /// A provider's own id, declared as a constant (`pub const ID: ProviderId =
    /// ProviderId::from_static("cryptobot")`); a malformed name fails the build.
    pub const fn from_static(name: &'static str) -> Self {
        assert!(
            is_provider_name(name.as_bytes()),
            "a provider name is 1 to 32 characters of [a-z0-9_]"
        );
        ProviderId(std::borrow::Cow::Borrowed(name))
    }

    /// The stored form, e.g. `"yookassa"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const fn is_provider_name(bytes: &[u8]) -> bool {
    if bytes.is_empty() || bytes.len() > 32 {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

impl FromStr for ProviderId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_provider_name(s.as_bytes()) {
            Ok(ProviderId(std::borrow::Cow::Owned(s.to_owned())))
        } else {
            Err(IdError::ProviderId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for ProviderId {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if is_provider_name(s.as_bytes()) {
            Ok(ProviderId(std::borrow::Cow::Owned(s)))
        } else {
            Err(IdError::ProviderId(s))
        }
    }
}

impl From<ProviderId> for String {
    fn from(id: ProviderId) -> Self {
        id.0.into_owned()
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for ProviderId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ProviderId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Our id of a payment (UUIDv7, so ids sort by creation time): one type from the webhook to
/// the panel call — in entities (`payments.id` and every `payment_id` column), events and the
/// ledger.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    sea_orm::DeriveValueType,
)]
#[serde(transparent)]
pub struct PaymentId(Uuid);

/// `payments.id` is a UUID the application makes, never one the database numbers.
impl sea_orm::TryFromU64 for PaymentId {
    fn try_from_u64(_: u64) -> Result<Self, sea_orm::DbErr> {
        Err(sea_orm::DbErr::ConvertFromU64("PaymentId"))
    }
}

impl PaymentId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        PaymentId(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        PaymentId(id)
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s)
            .map(PaymentId)
            .map_err(|_| IdError::PaymentId(s.to_owned()))
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    pub fn into_inner(self) -> Uuid {
        self.0
    }
}

impl Default for PaymentId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for PaymentId {
    fn from(id: Uuid) -> Self {
        PaymentId(id)
    }
}

impl From<PaymentId> for Uuid {
    fn from(id: PaymentId) -> Self {
        id.0
    }
}

impl FromStr for PaymentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for PaymentId {
    type Error = IdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A Telegram user id (always positive; group chats have negative ids and are not users).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct TelegramUserId(i64);

impl TelegramUserId {
    pub fn parse(id: i64) -> Result<Self, IdError> {
        if id > 0 {
            Ok(TelegramUserId(id))
        } else {
            Err(IdError::TelegramUserId(id.to_string()))
        }
    }

    pub fn into_inner(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for TelegramUserId {
    type Error = IdError;
    fn try_from(id: i64) -> Result<Self, Self::Error> {
        Self::parse(id)
    }
}

impl From<TelegramUserId> for i64 {
    fn from(id: TelegramUserId) -> Self {
        id.0
    }
}

impl FromStr for TelegramUserId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = s
            .parse::<i64>()
            .map_err(|_| IdError::TelegramUserId(s.to_owned()))?;
        Self::parse(id)
    }
}

impl fmt::Display for TelegramUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Key that makes a provider call or a create-payment request safe to retry.
/// 1 to 64 characters of `[A-Za-z0-9_-:.]` (YooKassa allows up to 64).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.');
        if (1..=Self::MAX_LEN).contains(&s.len()) && s.chars().all(valid_char) {
            Ok(IdempotencyKey(s))
        } else {
            Err(IdError::IdempotencyKey(s))
        }
    }

    /// A fresh random key (a UUIDv4, 36 characters).
    pub fn random() -> Self {
        IdempotencyKey(Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for IdempotencyKey {
    type Error = IdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl FromStr for IdempotencyKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> Self {
        key.0
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user name on the Marzban panel: `^[a-z0-9_]{3,32}$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MarzbanUsername(String);

impl MarzbanUsername {
    pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let valid_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
        if (3..=32).contains(&s.len()) && s.bytes().all(valid_char) {
            Ok(MarzbanUsername(s))
        } else {
            Err(IdError::MarzbanUsername(s))
        }
    }

    /// The spelling an existing panel user already has, e.g. `TG_900004` for our `tg_900004`
    /// (adopted users keep their name): 3 to 32 ASCII letters, digits or `_`, case kept.
    pub fn adopted(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let valid_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        if (3..=32).contains(&s.len()) && s.bytes().all(valid_char) {
            Ok(MarzbanUsername(s))
        } else {
            Err(IdError::MarzbanUsername(s))
        }
    }

    /// The panel user for a Telegram user: `tg_<id>`. Deterministic, so a retried
    /// activation finds the same panel user instead of creating a second one.
    pub fn from_telegram_id(id: TelegramUserId) -> Self {
        // At most 3 + 19 characters of [a-z0-9_], always valid.
        MarzbanUsername(format!("tg_{}", id.into_inner()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl TryFrom<String> for MarzbanUsername {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for MarzbanUsername {
    type Error = IdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl FromStr for MarzbanUsername {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<MarzbanUsername> for String {
    fn from(name: MarzbanUsername) -> Self {
        name.0
    }
}

impl AsRef<str> for MarzbanUsername {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MarzbanUsername {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn provider_ids_are_checked_names_and_travel_as_plain_strings() {
        const CRYPTOBOT: ProviderId = ProviderId::from_static("cryptobot");
        assert_eq!("cryptobot".parse::<ProviderId>(), Ok(CRYPTOBOT));
        assert_eq!(CRYPTOBOT, "cryptobot");
        assert_eq!(serde_json::to_string(&CRYPTOBOT).unwrap(), "\"cryptobot\"");
        assert_eq!(
            serde_json::from_str::<ProviderId>("\"cryptobot\"").unwrap(),
            CRYPTOBOT
        );
        for bad in ["", "YooKassa", "you kassa", "../etc", &"a".repeat(33)] {
            assert_eq!(
                bad.parse::<ProviderId>(),
                Err(IdError::ProviderId(bad.to_owned()))
            );
            assert!(serde_json::from_value::<ProviderId>(serde_json::json!(bad)).is_err());
        }
    }

    #[test]
    fn payment_ids_are_v7_and_round_trip() {
        let id = PaymentId::new();
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert_eq!(PaymentId::parse(&id.to_string()), Ok(id));
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            format!("\"{id}\""),
            "serialised as a plain UUID string"
        );
        assert!(PaymentId::parse("not-a-uuid").is_err());
    }

    #[test]
    fn telegram_ids_must_be_positive() {
        assert_eq!(TelegramUserId::parse(42).map(i64::from), Ok(42));
        assert!(TelegramUserId::parse(0).is_err());
        assert!(TelegramUserId::parse(-100_123).is_err());
        assert_eq!("777".parse::<TelegramUserId>().map(i64::from), Ok(777));
        assert!("x".parse::<TelegramUserId>().is_err());
        assert!(serde_json::from_str::<TelegramUserId>("-1").is_err());
        assert_eq!(
            serde_json::to_string(&TelegramUserId::parse(5).unwrap()).unwrap(),
            "5"
        );
    }

    #[test]
    fn idempotency_keys() {
        assert!(IdempotencyKey::parse("order-1:retry.2_x").is_ok());
        assert!(IdempotencyKey::parse("a".repeat(64)).is_ok());
        assert!(IdempotencyKey::parse("a".repeat(65)).is_err());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("ключ").is_err());
        assert!(IdempotencyKey::parse(IdempotencyKey::random().into_inner()).is_ok());
        assert!(serde_json::from_str::<IdempotencyKey>("\"a/b\"").is_err());
    }

    #[test]
    fn marzban_usernames() {
        assert!(MarzbanUsername::parse("tg_123").is_ok());
        assert!(MarzbanUsername::parse("ab").is_err());
        assert!(MarzbanUsername::parse("a".repeat(33)).is_err());
        assert!(MarzbanUsername::parse("Upper").is_err());
        assert!(MarzbanUsername::parse("dash-ed").is_err());
        assert_eq!(
            MarzbanUsername::adopted("TG_900004").map(MarzbanUsername::into_inner),
            Ok("TG_900004".to_owned())
        );
        assert!(MarzbanUsername::adopted("dash-ed").is_err());
        let id = TelegramUserId::parse(123_456).unwrap();
        assert_eq!(MarzbanUsername::from_telegram_id(id).as_str(), "tg_123456");
    }

    proptest! {
        #[test]
        fn marzban_username_from_any_telegram_id_is_valid(id in 1..=i64::MAX) {
            let id = TelegramUserId::parse(id).unwrap();
            let name = MarzbanUsername::from_telegram_id(id);
            prop_assert_eq!(MarzbanUsername::parse(name.as_str()), Ok(name.clone()));
            prop_assert_eq!(MarzbanUsername::from_telegram_id(id), name);
        }

        #[test]
        fn idempotency_key_accepts_exactly_its_alphabet(s in "[A-Za-z0-9_:.-]{1,64}") {
            prop_assert!(IdempotencyKey::parse(s).is_ok());
        }

        #[test]
        fn idempotency_key_refuses_other_characters(
            prefix in "[a-z]{0,10}",
            bad in "[^A-Za-z0-9_:.-]",
        ) {
            let key = format!("{prefix}{bad}");
            prop_assert!(IdempotencyKey::parse(key).is_err());
        }

        #[test]
        fn payment_id_round_trips(bits in any::<u128>()) {
            let id = PaymentId::from_uuid(Uuid::from_u128(bits));
            prop_assert_eq!(id.to_string().parse::<PaymentId>(), Ok(id));
        }
    }
}
