//! The crypto notice's signature: `X-Signature: t=<unix seconds>,v1=<hex>` where the hex is
//! HMAC-SHA256, keyed with `CRYPTO_WEBHOOK_SECRET`, over `"{t}.{raw body}"`.
//!
//! The timestamp is inside the signed string, so a captured request cannot be replayed with a
//! fresh timestamp; outside the tolerance (default 5 minutes either way) it is refused. Several
//! `v1=` entries may be sent (e.g. while the secret is rotated); one match is enough. The
//! comparison is constant-time (`Mac::verify_slice`).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying timestamp and signature.
pub const HEADER: &str = "x-signature";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("X-Signature header is missing")]
    Missing,
    #[error("X-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("signature timestamp {timestamp} is more than {tolerance} s away from now")]
    Expired { timestamp: i64, tolerance: u64 },
    #[error("signature does not match")]
    Mismatch,
    #[error("the signing key is unusable")]
    BadKey,
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Result<HmacSha256, SignatureError> {
    // HMAC takes keys of any length; the error exists only in the trait's signature.
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(secret).map_err(|_| SignatureError::BadKey)?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac)
}

/// The header value a sender puts on `body` at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> Result<String, SignatureError> {
    let tag = mac(secret, timestamp, body)?.finalize().into_bytes();
    Ok(format!("t={timestamp},v1={}", hex::encode(tag)))
}

/// Checks `header` against `body`; returns the signed timestamp.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_secs: u64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("expected t=<unix>,v1=<hex>"))?;
        match key.trim() {
            "t" => {
                let t = value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed("t is not a unix timestamp"))?;
                if timestamp.replace(t).is_some() {
                    return Err(SignatureError::Malformed("t given twice"));
                }
            }
            "v1" => signatures.push(
                hex::decode(value.trim())
                    .map_err(|_| SignatureError::Malformed("v1 is not hex"))?,
            ),
            // Unknown schemes are ignored, so a sender can add v2 before we read it.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("t is missing"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("v1 is missing"));
    }
    if now.abs_diff(timestamp) > tolerance_secs {
        return Err(SignatureError::Expired {
            timestamp,
            tolerance: tolerance_secs,
        });
    }
    let expected = mac(secret, timestamp, body)?;
    let mut matched = false;
    for signature in &signatures {
        matched |= expected.clone().verify_slice(signature).is_ok();
    }
    if matched {
        Ok(timestamp)
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const NOW: i64 = 1_767_225_600;

    #[test]
    fn round_trip() {
        let header = sign(SECRET, NOW, b"{}").unwrap();
        assert_eq!(
            verify(SECRET, Some(&header), b"{}", NOW + 299, 300),
            Ok(NOW)
        );
        assert_eq!(
            verify(SECRET, Some(&header), b"{}", NOW - 300, 300),
            Ok(NOW)
        );
    }

    #[test]
    fn known_vector() {
        // From `printf '1767225600.{}' | openssl dgst -sha256 -hmac whsec_test`.
        let header = sign(SECRET, NOW, b"{}").unwrap();
        assert_eq!(
            header,
            "t=1767225600,v1=4a942ef9477fb7b15b98664cf7ff2c2543984c1fa6bdf3520b48dcb25bcd1fe4"
        );
    }

    #[test]
    fn refusals() {
        let header = sign(SECRET, NOW, b"{}").unwrap();
        assert_eq!(
            verify(SECRET, None, b"{}", NOW, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(SECRET, Some(&header), b"{ }", NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", Some(&header), b"{}", NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(SECRET, Some(&header), b"{}", NOW + 301, 300),
            Err(SignatureError::Expired { .. })
        ));
        for bad in [
            "",
            "v1=00",
            "t=1",
            "t=x,v1=00",
            "t=1,v1=zz",
            "t=1,t=2,v1=00",
            "garbage",
        ] {
            assert!(
                matches!(
                    verify(SECRET, Some(bad), b"{}", NOW, 300),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn any_of_several_signatures() {
        let good = sign(SECRET, NOW, b"{}").unwrap();
        let v1 = good.split_once("v1=").unwrap().1;
        let header = format!("t={NOW},v1={},v1={v1}", "00".repeat(32));
        assert_eq!(verify(SECRET, Some(&header), b"{}", NOW, 300), Ok(NOW));
    }
}
