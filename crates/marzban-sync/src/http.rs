//! What the panel clients share on the wire: the HTTP client, the mapping of transport
//! failures and of FastAPI's error answers (Marzban, PasarGuard) to [`PanelError`], decoding
//! and the per-call metrics.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use std::sync::Arc;

use reqwest::Response;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::panel::PanelError;

/// Histogram `{operation}`: seconds a panel API call took (a re-login and resend included).
pub const METRIC_CALL_SECONDS: &str = "marzban_sync_api_call_seconds";
/// Counter `{operation, error}`: panel API calls that failed, by [`PanelError::kind`].
pub const METRIC_CALL_ERRORS: &str = "marzban_sync_api_errors_total";

/// The HTTP client of a panel: whole-request `timeout`, our user agent.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, PanelError> {
    if timeout.is_zero() {
        return Err(PanelError::InvalidInput(
            "PANEL_TIMEOUT_SECS must be positive".to_owned(),
        ));
    }
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!(
            "anomaly-connect-payments/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .map_err(|e| PanelError::InvalidInput(format!("HTTP client: {e}")))
}

/// Refuses a panel URL that is not `http(s)://…` without query or fragment, naming `setting`.
pub(crate) fn check_url(url: &str, setting: &str) -> Result<(), PanelError> {
    let url = url.trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(['?', '#']) {
        return Err(PanelError::InvalidInput(format!(
            "{setting} must be an http(s):// URL without query or fragment"
        )));
    }
    Ok(())
}

/// `call`, timed and counted by `operation` ([`METRIC_CALL_SECONDS`], [`METRIC_CALL_ERRORS`]).
pub(crate) async fn timed<T>(
    operation: &'static str,
    call: impl Future<Output = Result<T, PanelError>>,
) -> Result<T, PanelError> {
    let started = Instant::now();
    let result = call.await;
    metrics::histogram!(METRIC_CALL_SECONDS, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    if let Err(error) = &result {
        metrics::counter!(METRIC_CALL_ERRORS, "operation" => operation, "error" => error.kind())
            .increment(1);
    }
    result
}

/// A request that got no answer: refused, dropped (a Remnawave that drops the socket), or
/// timed out.
pub(crate) fn unreachable(error: reqwest::Error) -> PanelError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    PanelError::Unavailable {
        status: error.status().map(|s| s.as_u16()),
        reason: format!("{kind}: {}", error_chain(&error)),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The start of a body for an error message (an HTML page from a proxy is long).
pub(crate) fn excerpt(text: &str) -> String {
    let text = text.trim();
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// A non-2xx answer's body: the text and its JSON, if it is JSON.
pub(crate) async fn error_body(response: Response) -> (String, Option<Value>) {
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).ok();
    (text, body)
}

/// The error of a status that means the same on every panel: 5xx, 408 and 429 are
/// [`PanelError::Unavailable`]; `None` for the others.
pub(crate) fn unavailable(status: u16, detail: &str) -> Option<PanelError> {
    matches!(status, 408 | 429 | 500..=599).then(|| PanelError::Unavailable {
        status: Some(status),
        reason: format!("HTTP {status}: {detail}"),
    })
}

/// Passes 2xx through and turns a FastAPI error answer (Marzban, PasarGuard:
/// `{"detail": …}`) into a typed error.
pub(crate) async fn check_fastapi(response: Response) -> Result<Response, PanelError> {
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok(response);
    }
    let (text, body) = error_body(response).await;
    let detail = detail_text(body.as_ref(), &text);
    if let Some(error) = unavailable(status, &detail) {
        return Err(error);
    }
    Err(match status {
        401 => PanelError::Unauthorized { detail },
        404 => PanelError::NotFound { detail },
        409 => PanelError::Conflict { detail },
        422 => PanelError::Validation {
            fields: validation_fields(body.as_ref(), &detail),
        },
        code => PanelError::Rejected {
            status: code,
            detail,
        },
    })
}

/// `detail` when it is a string, the JSON of `detail` otherwise, else the (shortened) body.
fn detail_text(body: Option<&Value>, text: &str) -> String {
    match body.and_then(|b| b.get("detail")) {
        Some(Value::String(detail)) => detail.clone(),
        Some(detail) => detail.to_string(),
        None => excerpt(text),
    }
}

/// Marzban's and PasarGuard's 422 is `{"detail": {"field": "msg"}}`; FastAPI's own is a list
/// of `{"loc": [..., "field"], "msg": ...}`. Both become field → message (the last `loc`
/// element, as the panels key them); anything else lands under `"detail"`.
pub(crate) fn validation_fields(body: Option<&Value>, fallback: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    match body.and_then(|b| b.get("detail")) {
        Some(Value::Object(map)) => {
            for (field, message) in map {
                let message = match message {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                fields.insert(field.clone(), message);
            }
        }
        Some(Value::Array(items)) => {
            for item in items {
                let field = match item
                    .get("loc")
                    .and_then(|l| l.as_array())
                    .and_then(|l| l.last())
                {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => "detail".to_owned(),
                };
                let message = item
                    .get("msg")
                    .and_then(Value::as_str)
                    .map_or_else(|| item.to_string(), str::to_owned);
                fields
                    .entry(field)
                    .and_modify(|m: &mut String| {
                        m.push_str("; ");
                        m.push_str(&message);
                    })
                    .or_insert(message);
            }
        }
        _ => {
            fields.insert("detail".to_owned(), fallback.to_owned());
        }
    }
    fields
}

/// A 2xx answer's JSON; anything else (an HTML page a proxy answered 200 with, a changed
/// API) is a [`PanelError::Decode`] that quotes the start of the body.
pub(crate) async fn decode<T: DeserializeOwned>(response: Response) -> Result<T, PanelError> {
    let bytes = response.bytes().await.map_err(unreachable)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        PanelError::Decode(format!(
            "{e}; the answer began {:?}",
            excerpt(&String::from_utf8_lossy(&bytes))
        ))
    })
}

/// A cached bearer token; `generation` tells a caller that saw a 401 whether someone else has
/// already logged in again since it read the token.
#[derive(Clone)]
pub(crate) struct Token {
    pub value: SecretString,
    pub generation: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

/// The admin login of Marzban and PasarGuard: `POST /api/admin/token`, form-encoded (JSON is
/// a 422), and the bearer token cached and renewed once on 401. Cheap to clone; clones share
/// the token.
#[derive(Clone)]
pub(crate) struct AdminLogin {
    url: String,
    username: String,
    password: SecretString,
    slot: Arc<Mutex<Option<Token>>>,
}

impl AdminLogin {
    /// `api` is the panel's API base (`…/api`).
    pub fn new(api: &str, username: &str, password: SecretString) -> Self {
        Self {
            url: format!("{api}/admin/token"),
            username: username.to_owned(),
            password,
            slot: Arc::default(),
        }
    }

    /// Logs in now and caches the token.
    pub async fn login(&self, http: &reqwest::Client) -> Result<(), PanelError> {
        let mut slot = self.slot.lock().await;
        let generation = slot.as_ref().map_or(0, |t| t.generation + 1);
        *slot = Some(self.fetch(http, generation).await?);
        Ok(())
    }

    /// The cached token, logging in first if there is none. The lock is held during the login
    /// so that concurrent callers wait for one login instead of each making their own.
    pub async fn token(&self, http: &reqwest::Client) -> Result<Token, PanelError> {
        let mut slot = self.slot.lock().await;
        if let Some(token) = slot.as_ref() {
            return Ok(token.clone());
        }
        let token = self.fetch(http, 0).await?;
        *slot = Some(token.clone());
        Ok(token)
    }

    /// A token newer than the refused one: someone else's fresh login, or our own.
    pub async fn renew(&self, http: &reqwest::Client, refused: u64) -> Result<Token, PanelError> {
        let mut slot = self.slot.lock().await;
        if let Some(token) = slot.as_ref().filter(|t| t.generation > refused) {
            return Ok(token.clone());
        }
        *slot = None;
        let token = self.fetch(http, refused + 1).await?;
        *slot = Some(token.clone());
        Ok(token)
    }

    async fn fetch(&self, http: &reqwest::Client, generation: u64) -> Result<Token, PanelError> {
        let form = [
            ("grant_type", "password"),
            ("username", self.username.as_str()),
            ("password", self.password.expose_secret()),
        ];
        let response = http
            .post(&self.url)
            .form(&form)
            .send()
            .await
            .map_err(unreachable)?;
        let token: TokenResponse = decode(check_fastapi(response).await?).await?;
        tracing::debug!(generation, "logged in to the panel");
        Ok(Token {
            value: SecretString::from(token.access_token),
            generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn marzban_422_object_becomes_the_field_map() {
        let body =
            json!({"detail": {"expire": "Input should be a valid integer", "username": "bad"}});
        let fields = validation_fields(Some(&body), "");
        assert_eq!(fields["expire"], "Input should be a valid integer");
        assert_eq!(fields["username"], "bad");
    }

    #[test]
    fn fastapi_422_list_becomes_the_field_map() {
        let body = json!({"detail": [
            {"loc": ["body", "expire"], "msg": "first", "type": "int_parsing"},
            {"loc": ["body", "expire"], "msg": "second", "type": "x"},
            {"loc": ["body", 0], "msg": "JSON decode error", "type": "json_invalid"}
        ]});
        let fields = validation_fields(Some(&body), "");
        assert_eq!(fields["expire"], "first; second");
        assert_eq!(fields["0"], "JSON decode error");
    }

    #[test]
    fn string_422_is_kept_under_detail() {
        let body = json!({"detail": "nope"});
        let fields = validation_fields(Some(&body), "nope");
        assert_eq!(fields["detail"], "nope");
    }

    #[test]
    fn long_bodies_are_shortened() {
        let page = format!("<html>{}</html>", "x".repeat(1000));
        let short = excerpt(&page);
        assert!(short.starts_with("<html>xx"), "{short}");
        assert!(short.chars().count() <= 201, "{short}");
    }
}
