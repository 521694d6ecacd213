//! The Crypto Pay API client: `POST <CRYPTOBOT_API_URL>/<method>` with a JSON body and the
//! `Crypto-Pay-API-Token` header, over the shared retrying transport ([`outbound`]).
//!
//! Classification: `{"ok":true}` is done; `{"ok":false}` with a 4xx code is a definite
//! [`Rejection`] (its `name`, e.g. `INSUFFICIENT_FUNDS`, is the description); 429, 5xx and
//! answers that never came are retried with the same request, then reported as
//! [`ProviderError::ResultUnknown`]. Only `createInvoice` is not idempotent on the API's side;
//! [`super::CryptoBotProvider`] looks for the invoice before asking again.

use outbound::{Answer, Classify, Exchange, HttpRetry, Transient, Transport, Verdict};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::transformers::Envelope;
use crate::error::{ProviderError, Rejection, RejectionCode, TransientFailure};

/// The header every call authenticates with.
pub const TOKEN_HEADER: &str = "Crypto-Pay-API-Token";

#[derive(Clone)]
pub struct CryptoPayClient {
    transport: Transport,
    api_url: String,
    token: SecretString,
}

impl std::fmt::Debug for CryptoPayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoPayClient")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl CryptoPayClient {
    pub fn new(
        api_url: &str,
        token: SecretString,
        retry: HttpRetry,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            transport: Transport::new("cryptobot", retry, None)?,
            api_url: api_url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Calls `method` with `params`; the `result` read as `T`.
    pub async fn call<P, T>(&self, method: &'static str, params: &P) -> Result<T, ProviderError>
    where
        P: Serialize + Sync,
        T: DeserializeOwned,
    {
        let url = format!("{}/{method}", self.api_url);
        let hook = Hook::<T>::new(method);
        self.transport
            .send(&hook, |http| {
                http.post(&url)
                    .header(TOKEN_HEADER, self.token.expose_secret())
                    .json(params)
            })
            .await
    }
}

/// The classify hook of one method's calls.
struct Hook<T> {
    method: &'static str,
    result: std::marker::PhantomData<fn() -> T>,
}

impl<T> Hook<T> {
    fn new(method: &'static str) -> Self {
        Self {
            method,
            result: std::marker::PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Classify for Hook<T> {
    type Output = T;
    type Error = ProviderError;

    fn classify(&self, exchange: Exchange) -> Verdict<T, ProviderError> {
        let answer = match exchange {
            // The error's text never holds the token: it travels in a header, not the URL.
            Exchange::Failed(error) if error.is_builder() => {
                return Verdict::Fail(ProviderError::Client(error.to_string()));
            }
            Exchange::Failed(error) => return Verdict::Retry(Transient::from_wire(&error)),
            Exchange::Answered(answer) => answer,
        };
        if answer.status == 429 || answer.status >= 500 {
            return Verdict::Retry(Transient::from_status(&answer));
        }
        match serde_json::from_slice::<Envelope<T>>(&answer.body) {
            Ok(Envelope {
                ok: true,
                result: Some(result),
                ..
            }) if (200..300).contains(&answer.status) => Verdict::Done(result),
            Ok(Envelope {
                ok: false,
                error: Some(error),
                ..
            }) => Verdict::Fail(rejection(answer.status, &error.name)),
            _ if (200..300).contains(&answer.status) => Verdict::Fail(
                ProviderError::MalformedResponse(format!("{}: {}", self.method, excerpt(&answer))),
            ),
            _ => Verdict::Fail(rejection(answer.status, &excerpt(&answer))),
        }
    }

    fn exhausted(&self, attempts: u32, last: Transient) -> ProviderError {
        ProviderError::ResultUnknown {
            attempts,
            last: transient(last.failure),
        }
    }
}

/// A definite refusal; the error name is the description (`INSUFFICIENT_FUNDS`).
fn rejection(status: u16, name: &str) -> ProviderError {
    let code = match status {
        401 => RejectionCode::InvalidCredentials,
        403 => RejectionCode::Forbidden,
        404 => RejectionCode::NotFound,
        400..=499 => RejectionCode::InvalidRequest,
        _ => RejectionCode::Unknown,
    };
    ProviderError::Rejected(Rejection {
        http_status: status,
        code,
        description: Some(name.to_owned()),
        parameter: None,
        error_id: None,
    })
}

fn excerpt(answer: &Answer) -> String {
    let text = String::from_utf8_lossy(&answer.body);
    let cut: String = text.chars().take(200).collect();
    format!("HTTP {} {cut}", answer.status)
}

fn transient(failure: outbound::TransientFailure) -> TransientFailure {
    match failure {
        outbound::TransientFailure::ServerError(status) => TransientFailure::ServerError(status),
        outbound::TransientFailure::Processing => TransientFailure::Processing,
        outbound::TransientFailure::RateLimited => TransientFailure::RateLimited,
        outbound::TransientFailure::Timeout => TransientFailure::Timeout,
        outbound::TransientFailure::Connection(e) => TransientFailure::Connection(e),
    }
}
