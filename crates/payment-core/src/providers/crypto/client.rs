//! The TronGrid HTTP client: the TRC20 history of a wallet, paged by fingerprint, and the
//! solidified receipt of one transaction.

use std::time::Duration;

use outbound::{Classify, Exchange, HttpRetry, Transient, Transport, Verdict};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::address::TronAddress;
use super::transformers::{ErrorBody, TransactionInfo, Trc20Page, Trc20Transfer};
use crate::error::TransientFailure;

/// The API key header.
pub const API_KEY_HEADER: &str = "TRON-PRO-API-KEY";
/// TronGrid's largest page.
pub const MAX_PAGE_SIZE: u32 = 200;

/// Why a TronGrid call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TronGridError {
    /// 403/429 with TronGrid's frequency-limit answer, on every attempt: wait `retry_after`
    /// before polling again.
    #[error("rate limited by TronGrid (HTTP {status}): {message}; retry after {retry_after:?}")]
    RateLimited {
        status: u16,
        message: String,
        retry_after: Duration,
    },
    /// 5xx, timeouts or connection failures on every attempt.
    #[error("TronGrid unavailable after {attempts} attempt(s): {last}")]
    Unavailable {
        attempts: u32,
        last: TransientFailure,
    },
    /// A definite 4xx refusal (bad parameter, bad key, …): retrying will not help.
    #[error("TronGrid refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// A 2xx answer we could not read.
    #[error("malformed TronGrid answer: {0}")]
    Malformed(String),
    #[error("http client: {0}")]
    Client(String),
}

impl TronGridError {
    /// How long to wait before the next poll.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TronGridError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// What to fetch: incoming, confirmed transfers of one token to one wallet since a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub account: TronAddress,
    pub contract: TronAddress,
    /// Milliseconds, inclusive.
    pub min_timestamp_ms: i64,
    /// 1..=200.
    pub page_size: u32,
    /// Stop after this many pages (the rest is fetched by the next poll).
    pub max_pages: u32,
}

/// The fetched transfers, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub transfers: Vec<Trc20Transfer>,
    /// False when `max_pages` cut the history short.
    pub complete: bool,
    pub pages: u32,
}

/// TronGrid over HTTP.
#[derive(Clone)]
pub struct TronGridClient {
    base_url: String,
    api_key: Option<SecretString>,
    transport: Transport,
}

impl std::fmt::Debug for TronGridClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TronGridClient")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .finish_non_exhaustive()
    }
}

impl TronGridClient {
    pub fn new(
        base_url: &str,
        api_key: Option<SecretString>,
        retry: HttpRetry,
    ) -> Result<Self, TronGridError> {
        // One budget for every TronGrid call of the process (TRONGRID_API_LIMIT).
        let transport = Transport::new("trongrid", retry, Some(&ratelimit::TRONGRID))
            .map_err(|e| TronGridError::Client(e.to_string()))?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            transport,
        })
    }

    /// Every page of the wallet's incoming confirmed transfers of `contract` since
    /// `min_timestamp_ms`, oldest first (`order_by=block_timestamp,asc`), following
    /// `meta.fingerprint` with all other parameters unchanged.
    pub async fn incoming_transfers(&self, q: &HistoryQuery) -> Result<History, TronGridError> {
        let url = format!(
            "{}/v1/accounts/{}/transactions/trc20",
            self.base_url, q.account
        );
        let base: Vec<(&str, String)> = vec![
            ("only_to", "true".into()),
            ("only_confirmed", "true".into()),
            ("contract_address", q.contract.to_string()),
            ("min_timestamp", q.min_timestamp_ms.to_string()),
            ("order_by", "block_timestamp,asc".into()),
            ("limit", q.page_size.clamp(1, MAX_PAGE_SIZE).to_string()),
        ];
        let mut transfers = Vec::new();
        let mut fingerprint: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut params = base.clone();
            if let Some(fp) = &fingerprint {
                params.push(("fingerprint", fp.clone()));
            }
            let page: Trc20Page = self.call(|http| http.get(&url).query(&params)).await?;
            if !page.success {
                return Err(TronGridError::Malformed("success is not true".into()));
            }
            pages += 1;
            transfers.extend(page.data);
            fingerprint = page
                .meta
                .and_then(|m| m.fingerprint)
                .filter(|f| !f.is_empty());
            match fingerprint {
                None => {
                    return Ok(History {
                        transfers,
                        complete: true,
                        pages,
                    });
                }
                Some(_) if pages >= q.max_pages.max(1) => {
                    return Ok(History {
                        transfers,
                        complete: false,
                        pages,
                    });
                }
                Some(_) => {}
            }
        }
    }

    /// The solidified receipt of `tx_id`; `None` when the node does not know it (yet).
    pub async fn transaction_info(
        &self,
        tx_id: &str,
    ) -> Result<Option<TransactionInfo>, TronGridError> {
        let url = format!("{}/walletsolidity/gettransactioninfobyid", self.base_url);
        let body = serde_json::json!({ "value": tx_id });
        let info: TransactionInfo = self.call(|http| http.post(&url).json(&body)).await?;
        Ok(info.id.is_some().then_some(info))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<T, TronGridError> {
        let hook = TronGridAnswers {
            retry: self.transport.retry(),
        };
        let body = self
            .transport
            .send(&hook, |http| {
                let request = build(http);
                match &self.api_key {
                    Some(key) => request.header(API_KEY_HEADER, key.expose_secret()),
                    None => request,
                }
            })
            .await?;
        serde_json::from_slice(&body).map_err(|e| TronGridError::Malformed(e.to_string()))
    }
}

/// TronGrid's answers for the transport: 2xx is done; its frequency-limit answers (with the
/// pause it asks for), 5xx and no answer are retried; any other status is a refusal.
struct TronGridAnswers {
    retry: HttpRetry,
}

impl Classify for TronGridAnswers {
    type Output = Vec<u8>;
    type Error = TronGridError;

    fn classify(&self, exchange: Exchange) -> Verdict<Vec<u8>, TronGridError> {
        let answer = match exchange {
            Exchange::Failed(e) if e.is_builder() => {
                return Verdict::Fail(TronGridError::Client(e.to_string()));
            }
            Exchange::Failed(e) => return Verdict::Retry(Transient::from_wire(&e)),
            Exchange::Answered(answer) => answer,
        };
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if status.is_success() {
            return Verdict::Done(answer.body);
        }
        let error: ErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
        let message = error.error.unwrap_or_else(|| {
            String::from_utf8_lossy(&answer.body)
                .chars()
                .take(200)
                .collect()
        });
        if is_rate_limit(status, &message) {
            let asked = asked_pause(answer.retry_after(), &message);
            return Verdict::Retry(
                Transient::new(TransientFailure::RateLimited)
                    .asking(asked)
                    .noting(answer.status, message),
            );
        }
        if status.is_server_error() {
            return Verdict::Retry(Transient::new(TransientFailure::ServerError(answer.status)));
        }
        Verdict::Fail(TronGridError::Rejected {
            status: answer.status,
            message,
        })
    }

    fn exhausted(&self, attempts: u32, last: Transient) -> TronGridError {
        match last.note {
            Some((status, message)) => TronGridError::RateLimited {
                status,
                message,
                // What TronGrid asked for (at most MAX_ASKED_PAUSE), not capped by our
                // backoff: the poller should honour it; else our longest pause.
                retry_after: last.asked.unwrap_or(self.retry.max_backoff),
            },
            None => TronGridError::Unavailable {
                attempts,
                last: last.failure,
            },
        }
    }
}

/// 429 always; 403 (and the older 503) when the body names the frequency limit — a 403 for
/// other reasons is a refusal.
fn is_rate_limit(status: StatusCode, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    status == StatusCode::TOO_MANY_REQUESTS
        || (matches!(status.as_u16(), 403 | 503)
            && (m.contains("frequency limit") || m.contains("suspended")))
}

/// The pause TronGrid asks for — its `Retry-After`, else the "suspended for N s" of its
/// message — capped at [`outbound::MAX_ASKED_PAUSE`].
fn asked_pause(retry_after: Option<Duration>, message: &str) -> Option<Duration> {
    retry_after
        .or_else(|| suspended_for(message))
        .map(|asked| outbound::cap_asked_pause("TronGrid", asked))
}

/// "… the query server is suspended for 30s" → 30 s.
fn suspended_for(message: &str) -> Option<Duration> {
    let rest = &message[message.find("suspended for")? + "suspended for".len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_suspension_from_the_body() {
        let m =
            "The key exceeds the frequency limit(15), and the query server is suspended for 30s";
        assert_eq!(suspended_for(m), Some(Duration::from_secs(30)));
        assert!(is_rate_limit(StatusCode::FORBIDDEN, m));
        assert!(!is_rate_limit(StatusCode::FORBIDDEN, "forbidden"));
        assert!(is_rate_limit(StatusCode::TOO_MANY_REQUESTS, ""));
        assert_eq!(suspended_for("nothing"), None);
    }

    #[test]
    fn a_long_suspension_is_capped_at_five_minutes() {
        let m =
            "The key exceeds the frequency limit(15), and the query server is suspended for 86400s";
        assert_eq!(asked_pause(None, m), Some(outbound::MAX_ASKED_PAUSE));
        assert_eq!(
            asked_pause(Some(Duration::from_secs(999_999)), "x"),
            Some(outbound::MAX_ASKED_PAUSE)
        );
        let short = "… suspended for 30s";
        assert_eq!(asked_pause(None, short), Some(Duration::from_secs(30)));
        assert_eq!(
            asked_pause(Some(Duration::from_secs(2)), short),
            Some(Duration::from_secs(2))
        );
        assert_eq!(asked_pause(None, "nothing"), None);
    }
}
