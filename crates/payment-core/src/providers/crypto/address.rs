//! TRON addresses: base58check (Bitcoin alphabet) over `0x41` + 20 bytes, 34 characters
//! starting with `T`; the checksum is the first 4 bytes of sha256(sha256(payload)).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const PREFIX: u8 = 0x41;

/// A checked TRON address in its `T…` form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TronAddress(String);

/// Why a string is not a TRON address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("a TRON address is 34 characters starting with T, got {0:?}")]
    Shape(String),
    #[error("not base58: {0:?}")]
    Alphabet(String),
    #[error("checksum mismatch in {0:?}")]
    Checksum(String),
}

impl TronAddress {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let s = s.trim();
        if s.len() != 34 || !s.starts_with('T') {
            return Err(AddressError::Shape(s.to_owned()));
        }
        let bytes = decode_base58(s).ok_or_else(|| AddressError::Alphabet(s.to_owned()))?;
        if bytes.len() != 25 || bytes[0] != PREFIX {
            return Err(AddressError::Shape(s.to_owned()));
        }
        let (payload, check) = bytes.split_at(21);
        if checksum(payload) != check {
            return Err(AddressError::Checksum(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// Tether USD on mainnet ([`super::USDT_MAINNET`], checked by a test).
    pub fn usdt_mainnet() -> Self {
        Self(super::USDT_MAINNET.to_owned())
    }

    /// The address of a 21-byte payload (`0x41` + 20 bytes).
    pub fn from_payload(payload: &[u8; 21]) -> Result<Self, AddressError> {
        if payload[0] != PREFIX {
            return Err(AddressError::Shape(hex::encode(payload)));
        }
        let mut data = payload.to_vec();
        data.extend_from_slice(&checksum(payload));
        Ok(Self(encode_base58(&data)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `41…` hex form.
    pub fn to_hex(&self) -> String {
        decode_base58(&self.0)
            .map(|b| hex::encode(&b[..21]))
            .unwrap_or_default()
    }
}

impl fmt::Display for TronAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TronAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let twice = Sha256::digest(Sha256::digest(payload));
    [twice[0], twice[1], twice[2], twice[3]]
}

fn decode_base58(s: &str) -> Option<Vec<u8>> {
    // Big-endian base-256 digits, multiplied by 58 and added to per character.
    let mut bytes: Vec<u8> = Vec::with_capacity(25);
    for c in s.bytes() {
        let mut carry = u32::try_from(ALPHABET.iter().position(|&a| a == c)?).ok()?;
        for b in bytes.iter_mut().rev() {
            carry += u32::from(*b) * 58;
            *b = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let zeros = s.bytes().take_while(|&c| c == b'1').count();
    let mut full = vec![0u8; zeros];
    full.extend(bytes);
    Some(full)
}

fn encode_base58(data: &[u8]) -> String {
    // Little-endian base-58 digits.
    let mut digits: Vec<u8> = Vec::with_capacity(34);
    for &byte in data {
        let mut carry = u32::from(byte);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = data.iter().take_while(|&&b| b == 0).count();
    std::iter::repeat_n('1', zeros)
        .chain(
            digits
                .iter()
                .rev()
                .map(|&d| char::from(ALPHABET[usize::from(d)])),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const USDT: &str = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t";

    #[test]
    fn known_addresses() {
        for a in [
            USDT,
            "TNtbiqvanUnm4YHK9SYzRGR8ktiHRduDbM",
            "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE",
            "TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf",
        ] {
            assert_eq!(TronAddress::parse(a).expect(a).as_str(), a);
        }
        let usdt = TronAddress::parse(USDT).expect("usdt");
        assert_eq!(TronAddress::usdt_mainnet(), usdt);
        assert_eq!(usdt.to_hex(), "41a614f803b6fd780986a42c78ec9c7f77e6ded13c");
        let payload: [u8; 21] = hex::decode(usdt.to_hex())
            .expect("hex")
            .try_into()
            .expect("21 bytes");
        assert_eq!(TronAddress::from_payload(&payload).expect("ok"), usdt);
    }

    #[test]
    fn refuses_bad_addresses() {
        assert!(matches!(
            TronAddress::parse("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6u"),
            Err(AddressError::Checksum(_))
        ));
        assert!(matches!(
            TronAddress::parse("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6"),
            Err(AddressError::Shape(_))
        ));
        assert!(matches!(
            TronAddress::parse("0x6B175474E89094C44Da98b954EedeAC495271d0F"),
            Err(AddressError::Shape(_))
        ));
        assert!(matches!(
            TronAddress::parse("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj0t"),
            Err(AddressError::Alphabet(_))
        ));
    }
}
