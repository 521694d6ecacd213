//! Request ids, request logs and the HTTP metrics, as one middleware around every route.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;
use uuid::Uuid;

/// Counter: requests by `route` (the matched pattern, or `unmatched`), `method` (one of
/// [`method_label`]'s) and `status`. Every label comes from a fixed set: nothing a client sends
/// can add a time series (issue 18: random methods once grew `/metrics` without bound).
pub const METRIC_REQUESTS: &str = "gateway_http_requests_total";
/// Histogram (seconds): request latency by `route` and `method`.
pub const METRIC_LATENCY: &str = "gateway_http_request_duration_seconds";
/// Counter: webhook outcomes by `provider` and `verdict` (`accepted`, `duplicate`,
/// `forbidden`, `bad_signature`, `expired_signature`, `malformed`, `too_large`, `disabled`,
/// `error`).
pub const METRIC_WEBHOOK_VERDICTS: &str = "gateway_webhook_verdicts_total";
/// Counter: payments created by `provider` and `currency`.
pub const METRIC_PAYMENTS_CREATED: &str = "gateway_payments_created_total";

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The `route` label of a request that matched no route (404s, including unknown paths).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The `method` label: the standard methods as themselves, anything else `OTHER` (actix
/// accepts any token as a method).
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Records a webhook verdict.
pub fn webhook_verdict(provider: &str, verdict: &'static str) {
    metrics::counter!(METRIC_WEBHOOK_VERDICTS, "provider" => provider.to_owned(), "verdict" => verdict)
        .increment(1);
}

/// Records a created payment.
pub fn payment_created(provider: &str, currency: &'static str) {
    metrics::counter!(METRIC_PAYMENTS_CREATED, "provider" => provider.to_owned(), "currency" => currency)
        .increment(1);
}

/// Takes the caller's `X-Request-Id` when it is sane (else makes one), runs the request in a
/// span carrying it, echoes it back, logs the outcome and records the metrics.
pub async fn observe<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned);
    let method = method_label(req.method());
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.path(),
        peer = %peer,
    );
    let result = next.call(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    // The pattern of a route of ours (`/api/payments/{id}`), never the path itself.
    let (route, status) = match &result {
        Ok(response) => (
            response
                .request()
                .match_pattern()
                .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned()),
            response.status().as_u16(),
        ),
        Err(error) => (
            UNMATCHED_ROUTE.to_owned(),
            error.as_response_error().status_code().as_u16(),
        ),
    };
    metrics::counter!(
        METRIC_REQUESTS,
        "route" => route.clone(),
        "method" => method,
        "status" => status.to_string(),
    )
    .increment(1);
    metrics::histogram!(METRIC_LATENCY, "route" => route.clone(), "method" => method)
        .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        if status == 429 {
            // A flood's refusals are counted in the metrics; a log line each would turn
            // thousands of junk requests a second into as many lines (issue 18).
            tracing::debug!(%route, status, elapsed_ms, "request finished");
        } else {
            tracing::info!(%route, status, elapsed_ms, "request finished");
        }
    });
    result.map(|mut response| {
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        response.map_into_boxed_body()
    })
}
