//! Bearer tokens of the internal API (`API_SERVICE_TOKEN` for the bot, `API_ADMIN_TOKEN` for
//! refunds), checked on every call in constant time.

use actix_web::HttpRequest;
use actix_web::http::header;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Which token a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Service,
    Admin,
}

#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub service: Option<SecretString>,
    pub admin: Option<SecretString>,
}

impl Tokens {
    /// Passes when the request carries one of the tokens of `roles`. Unconfigured tokens never
    /// match; with none configured the route answers 503 rather than being open.
    pub fn check(&self, req: &HttpRequest, roles: &[Role]) -> Result<Role, ApiError> {
        let configured: Vec<(Role, &SecretString)> = roles
            .iter()
            .filter_map(|role| match role {
                Role::Service => self.service.as_ref().map(|t| (*role, t)),
                Role::Admin => self.admin.as_ref().map(|t| (*role, t)),
            })
            .collect();
        if configured.is_empty() {
            return Err(ApiError::NotConfigured(match roles.first() {
                Some(Role::Admin) => "API_ADMIN_TOKEN",
                _ => "API_SERVICE_TOKEN",
            }));
        }
        let presented = bearer(req).ok_or(ApiError::Unauthorized)?;
        // Check every configured token so timing does not tell which one exists.
        let mut matched = None;
        for (role, token) in configured {
            if constant_time_eq(presented.as_bytes(), token.expose_secret().as_bytes()) {
                matched = Some(role);
            }
        }
        matched.ok_or(ApiError::Unauthorized)
    }

    /// Whether the request carries the service or the admin token (for picking its rate
    /// limit; the route still checks the role it needs). No bearer header: `false` at once.
    pub fn presented_valid(&self, req: &HttpRequest) -> bool {
        bearer(req).is_some() && self.check(req, &[Role::Service, Role::Admin]).is_ok()
    }
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Equality whose duration does not depend on where the inputs differ: both sides are hashed
/// to fixed-length digests first (so the length is not leaked either), then compared with a
/// branch-free fold.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    let diff = da
        .iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
