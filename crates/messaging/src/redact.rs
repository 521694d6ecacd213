//! Connection URLs without their passwords, for `Debug` output and log lines.
//!
//! It lives here, the lowest crate that holds such a URL ([`RabbitConfig`]); `service-kit`
//! re-exports it for the settings of every service.

use std::fmt;

use crate::RabbitConfig;

/// What stands in for a password.
pub const MASK: &str = "***";

/// `url` with the password of its user-info replaced by `***`
/// (`postgres://acp:***@db:5432/acp`); a URL without a password is returned unchanged. A
/// string that does not parse as a URL is cut to its scheme (`postgres://…`), since where its
/// password would be cannot be told.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Cannot fail: a URL that has a password can have another one.
            let _ = parsed.set_password(Some(MASK));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "…".to_owned(),
        },
    }
}

/// `Display`s a URL through [`redact_url`], for `tracing` fields: `url = %Redacted(&url)`.
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.0))
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(self.0), f)
    }
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("url", &Redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("connection_name", &self.connection_name)
            .field("queue_type", &self.queue_type)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_the_rest_kept() {
        assert_eq!(
            redact_url("postgres://acp:s3cr%40t@db:5432/acp?sslmode=disable"),
            "postgres://acp:***@db:5432/acp?sslmode=disable"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("https://admin:pw@panel.example.com/"),
            "https://admin:***@panel.example.com/"
        );
        for plain in [
            "postgres://postgres@127.0.0.1/acp",
            "sqlite://data/acp.db?mode=rwc",
            "sqlite::memory:",
            "http://127.0.0.1:8080",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
        assert_eq!(redact_url("postgres://u:p@[bad/x"), "postgres://…");
        assert_eq!(redact_url("not a url"), "…");
    }

    #[test]
    fn rabbit_config_debug_hides_the_password() {
        let config = RabbitConfig::new("amqp://acp:hunter2-secret@rabbit:5672/%2f", "acp");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2-secret"), "{debug}");
        assert!(debug.contains("amqp://acp:***@rabbit:5672/%2f"), "{debug}");
        assert_eq!(
            format!("{}", Redacted(&config.url)),
            "amqp://acp:***@rabbit:5672/%2f"
        );
    }
}
