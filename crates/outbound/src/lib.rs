//! One retrying HTTP transport for every client of an outside service (YooKassa, TronGrid,
//! the Telegram Bot API, Marzban, …).
//!
//! A client owns a [`Transport`] and implements [`Classify`] once: the hook that turns one
//! exchange (an answer, or a request that failed on the wire) into a [`Verdict`] — done, a
//! definite error, or "no definite answer, try again". The transport does the rest the same
//! way for everyone: it waits for the service's process-wide call budget
//! ([`ratelimit::Outbound`]) before each attempt, sends, asks the hook, and retries transient
//! outcomes on a Fibonacci schedule ([`backon`]) with the same request (so the same idempotence
//! key), honouring a pause the server asked for (capped at [`MAX_ASKED_PAUSE`]). When the
//! attempts run out the hook's [`Classify::exhausted`] names the error.
//!
//! ```no_run
//! use outbound::{Answer, Classify, Exchange, HttpRetry, Transient, TransientFailure, Transport, Verdict};
//!
//! #[derive(Debug)]
//! enum PanelError {
//!     Rejected(u16),
//!     Unavailable { attempts: u32, last: TransientFailure },
//! }
//!
//! /// The panel's classify hook: 2xx is done, 5xx and 429 are worth another try.
//! struct Panel;
//!
//! impl Classify for Panel {
//!     type Output = Vec<u8>;
//!     type Error = PanelError;
//!
//!     fn classify(&self, exchange: Exchange) -> Verdict<Vec<u8>, PanelError> {
//!         match exchange {
//!             Exchange::Failed(error) => Verdict::Retry(Transient::from_wire(&error)),
//!             Exchange::Answered(Answer { status: 200..=299, body, .. }) => Verdict::Done(body),
//!             Exchange::Answered(answer) if answer.status == 429 || answer.status >= 500 => {
//!                 Verdict::Retry(Transient::from_status(&answer))
//!             }
//!             Exchange::Answered(answer) => Verdict::Fail(PanelError::Rejected(answer.status)),
//!         }
//!     }
//!
//!     fn exhausted(&self, attempts: u32, last: Transient) -> PanelError {
//!         PanelError::Unavailable { attempts, last: last.failure }
//!     }
//! }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let transport = Transport::new("marzban", HttpRetry::default(), None)?;
//! let url = "http://127.0.0.1:8000/api/users";
//! let body = transport.send(&Panel, |http| http.get(url).bearer_auth("token")).await;
//! # let _ = body;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{FibonacciBuilder, Retryable};
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The longest pause an outside service can make us take: TronGrid's "suspended for N s", a
/// `Retry-After` from YooKassa or TronGrid. A longer ask is capped (and logged), so one answer
/// cannot stop the chain watcher or a payment call for hours.
pub const MAX_ASKED_PAUSE: Duration = Duration::from_secs(5 * 60);

/// What `service` asked us to wait, capped at [`MAX_ASKED_PAUSE`]; a longer ask is logged as a
/// warning naming the asked and the capped pause.
pub fn cap_asked_pause(service: &str, asked: Duration) -> Duration {
    if asked <= MAX_ASKED_PAUSE {
        return asked;
    }
    tracing::warn!(
        service,
        asked_secs = asked.as_secs(),
        capped_secs = MAX_ASKED_PAUSE.as_secs(),
        "{service} asked for a {}s pause; capped at {}s",
        asked.as_secs(),
        MAX_ASKED_PAUSE.as_secs()
    );
    MAX_ASKED_PAUSE
}

/// How an outside call is retried: bounded attempts with a growing (Fibonacci) pause, as
/// YooKassa recommends. (Not to be confused with `messaging::RetryPolicy`, which says when a
/// failed *message* is delivered again.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRetry {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// The first pause; later ones grow as 1, 1, 2, 3, 5, … times this.
    pub initial_backoff: Duration,
    /// No pause is longer than this (a rate-limited pause included).
    pub max_backoff: Duration,
    /// Per-attempt limit. YooKassa answers 500 itself after ~30 s, so the default waits longer.
    pub request_timeout: Duration,
}

impl Default for HttpRetry {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            request_timeout: Duration::from_secs(35),
        }
    }
}

impl HttpRetry {
    /// One attempt, no retries (e.g. a call that is not idempotent), with this timeout.
    pub fn once(request_timeout: Duration) -> Self {
        Self {
            max_attempts: 1,
            request_timeout,
            ..Self::default()
        }
    }

    /// The backon schedule of the pauses between attempts.
    fn schedule(&self) -> FibonacciBuilder {
        let retries = usize::try_from(self.max_attempts.max(1) - 1).unwrap_or(usize::MAX);
        FibonacciBuilder::default()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_max_times(retries)
    }

    /// The pause before the next attempt: the schedule's, or for a rate-limited answer what
    /// the server asked (else twice the schedule's), never above `max_backoff`.
    fn pause(&self, scheduled: Duration, transient: &Transient) -> Duration {
        let pause = match transient.failure {
            TransientFailure::RateLimited => transient
                .asked
                .unwrap_or_else(|| scheduled.saturating_mul(2)),
            _ => scheduled,
        };
        pause.min(self.max_backoff)
    }
}

/// A retryable answer (or lack of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransientFailure {
    /// HTTP 5xx: YooKassa's "result unknown".
    ServerError(u16),
    /// HTTP 202: still processing.
    Processing,
    /// HTTP 429, or a service's own spelling of "too many requests".
    RateLimited,
    /// No answer within the request timeout.
    Timeout,
    /// The connection failed or broke.
    Connection(String),
}

impl fmt::Display for TransientFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransientFailure::ServerError(status) => write!(f, "HTTP {status}"),
            TransientFailure::Processing => f.write_str("HTTP 202 (processing)"),
            TransientFailure::RateLimited => f.write_str("HTTP 429 (rate limited)"),
            TransientFailure::Timeout => f.write_str("timeout"),
            TransientFailure::Connection(e) => write!(f, "connection: {e}"),
        }
    }
}

/// An answer as received, body read in full.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The `Retry-After` header in seconds, as sent (not capped).
    pub fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }
}

/// One exchange: an answer, or a request that got none (the error of sending or of reading
/// the body). The error's text may hold the URL: a client whose URL holds a secret strips it
/// (`reqwest::Error::without_url`) before printing.
#[derive(Debug)]
pub enum Exchange {
    Answered(Answer),
    Failed(reqwest::Error),
}

/// No definite answer: worth another attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transient {
    pub failure: TransientFailure,
    /// The pause the server asked for (already capped by the client if it wants it capped);
    /// honoured for [`TransientFailure::RateLimited`].
    pub asked: Option<Duration>,
    /// What the client wants to remember of this answer (e.g. TronGrid's limit message), for
    /// the error it builds when the attempts run out.
    pub note: Option<(u16, String)>,
}

impl Transient {
    pub fn new(failure: TransientFailure) -> Self {
        Self {
            failure,
            asked: None,
            note: None,
        }
    }

    #[must_use]
    pub fn asking(mut self, asked: Option<Duration>) -> Self {
        self.asked = asked;
        self
    }

    #[must_use]
    pub fn noting(mut self, status: u16, note: String) -> Self {
        self.note = Some((status, note));
        self
    }

    /// A request that got no answer: a timeout or a broken connection.
    pub fn from_wire(error: &reqwest::Error) -> Self {
        Self::new(if error.is_timeout() {
            TransientFailure::Timeout
        } else {
            TransientFailure::Connection(error.to_string())
        })
    }

    /// A 429 (asking for its `Retry-After`, capped), 202 or 5xx answer.
    pub fn from_status(answer: &Answer) -> Self {
        match answer.status {
            429 => Self::new(TransientFailure::RateLimited).asking(answer.retry_after()),
            202 => Self::new(TransientFailure::Processing),
            status => Self::new(TransientFailure::ServerError(status)),
        }
    }
}

/// The classify hook's decision about one exchange.
#[derive(Debug)]
pub enum Verdict<T, E> {
    Done(T),
    Retry(Transient),
    Fail(E),
}

/// A client's knowledge of its service's answers: the one thing each client writes.
pub trait Classify {
    type Output;
    type Error;

    /// Decides what one exchange came to.
    fn classify(&self, exchange: Exchange) -> Verdict<Self::Output, Self::Error>;

    /// The error once `attempts` attempts all ended transient, the last one as `last`.
    fn exhausted(&self, attempts: u32, last: Transient) -> Self::Error;
}

/// An HTTP client with a retry schedule and the service's call budget.
#[derive(Clone)]
pub struct Transport {
    service: &'static str,
    http: reqwest::Client,
    retry: HttpRetry,
    budget: Option<&'static ratelimit::Outbound>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("service", &self.service)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Stops the backon loop: either worth a retry, or final.
enum Stop<E> {
    Transient(Transient),
    Final(E),
}

impl Transport {
    /// A transport for `service` (its name in logs), with a client whose per-request timeout is
    /// the schedule's `request_timeout` (connecting at most 10 s of it), waiting for `budget`
    /// (e.g. `&ratelimit::YOOKASSA`) before every attempt.
    pub fn new(
        service: &'static str,
        retry: HttpRetry,
        budget: Option<&'static ratelimit::Outbound>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(retry.request_timeout)
            .connect_timeout(retry.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!(
                "anomaly-connect-payments/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(Self::with_client(service, http, retry, budget))
    }

    /// A transport over a client built elsewhere (its own timeouts, proxy or TLS settings).
    pub fn with_client(
        service: &'static str,
        http: reqwest::Client,
        retry: HttpRetry,
        budget: Option<&'static ratelimit::Outbound>,
    ) -> Self {
        Self {
            service,
            http,
            retry,
            budget,
        }
    }

    pub fn retry(&self) -> HttpRetry {
        self.retry
    }

    /// The underlying client (for a call that must not be retried or classified).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends the request `build` makes (called again for each attempt, so every attempt is the
    /// same request), classified by `hook`, retried while the hook says [`Verdict::Retry`].
    pub async fn send<C: Classify>(
        &self,
        hook: &C,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<C::Output, C::Error> {
        let attempts = AtomicU32::new(0);
        let attempt = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            match hook.classify(self.exchange(build(&self.http)).await) {
                Verdict::Done(output) => Ok(output),
                Verdict::Retry(transient) => Err(Stop::Transient(transient)),
                Verdict::Fail(error) => Err(Stop::Final(error)),
            }
        };
        let result = attempt
            .retry(self.retry.schedule())
            .when(|stop| matches!(stop, Stop::Transient(_)))
            .adjust(|stop, scheduled| match (stop, scheduled) {
                (Stop::Transient(transient), Some(scheduled)) => {
                    Some(self.retry.pause(scheduled, transient))
                }
                (_, scheduled) => scheduled,
            })
            .notify(|stop, pause| {
                if let Stop::Transient(transient) = stop {
                    tracing::info!(
                        service = self.service,
                        attempt = attempts.load(Ordering::Relaxed),
                        failure = %transient.failure,
                        ?pause,
                        "{}: no definite answer, retrying the same request",
                        self.service
                    );
                }
            })
            .await;
        result.map_err(|stop| match stop {
            Stop::Final(error) => error,
            Stop::Transient(last) => {
                let attempts = attempts.load(Ordering::Relaxed);
                tracing::warn!(
                    service = self.service,
                    attempts,
                    failure = %last.failure,
                    "{}: giving up, the result is unknown",
                    self.service
                );
                hook.exhausted(attempts, last)
            }
        })
    }

    /// One attempt: wait for the budget, send, read the whole body.
    async fn exchange(&self, request: reqwest::RequestBuilder) -> Exchange {
        if let Some(budget) = self.budget {
            budget.wait().await;
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Exchange::Failed(error),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        match response.bytes().await {
            Ok(body) => Exchange::Answered(Answer {
                status,
                headers,
                body: body.to_vec(),
            }),
            Err(error) => Exchange::Failed(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_pauses_are_capped_at_five_minutes() {
        assert_eq!(
            cap_asked_pause("TronGrid", Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            cap_asked_pause("TronGrid", MAX_ASKED_PAUSE),
            MAX_ASKED_PAUSE
        );
        assert_eq!(
            cap_asked_pause("YooKassa", Duration::from_secs(301)),
            MAX_ASKED_PAUSE
        );
        assert_eq!(
            cap_asked_pause("YooKassa", Duration::from_secs(u64::MAX)),
            MAX_ASKED_PAUSE
        );
        assert_eq!(MAX_ASKED_PAUSE, Duration::from_secs(300));
    }

    #[test]
    fn grows_like_fibonacci_and_is_capped() {
        use backon::BackoffBuilder;
        let retry = HttpRetry {
            max_attempts: 7,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(450),
            ..HttpRetry::default()
        };
        let e = Transient::new(TransientFailure::ServerError(500));
        let pauses: Vec<u128> = retry
            .schedule()
            .build()
            .map(|d| retry.pause(d, &e).as_millis())
            .collect();
        assert_eq!(pauses, vec![100, 100, 200, 300, 450, 450]);
        let limited = Transient::new(TransientFailure::RateLimited);
        assert_eq!(
            retry.pause(Duration::from_millis(100), &limited),
            Duration::from_millis(200)
        );
        let asked = limited.asking(Some(Duration::from_secs(60)));
        assert_eq!(
            retry.pause(Duration::from_millis(100), &asked),
            Duration::from_millis(450)
        );
        assert_eq!(
            HttpRetry::once(Duration::from_secs(1))
                .schedule()
                .build()
                .count(),
            0
        );
    }
}
