//! Rate limits of the public port (issue 18), as one middleware in front of every route.
//!
//! Keyed by the client address the gateway believes (the peer, or the right-most
//! `X-Forwarded-For` hop that is not a trusted proxy, as everywhere else); IPv6 addresses by
//! their /64, which one client usually holds whole.
//!
//! - **Webhooks** (`/webhook/*`): only requests that fail the source or signature check count
//!   (the handlers mark the ones that pass, [`mark_verified`]), after the fact, against the
//!   `webhook` limit. An address over that budget is penalized: its next webhook requests are
//!   answered 429 before anything is verified (a small body is read and dropped so the
//!   connection stays open, see `discard_small_body`), until its budget has room again. An
//!   allow-listed YooKassa notification or a validly signed crypto notice never spends
//!   anything, and junk from other addresses never touches its budget: the legitimate path
//!   costs one look-up in the penalty table.
//! - **Everything else** (the API, `/api/openapi.json`, unknown routes): every request counts
//!   before its handler runs, against `api_token` when it carries the service or admin token,
//!   else against `api`. A token raises the limit of its address, it does not lift it: a
//!   leaked or runaway token is still bounded.
//!
//! Each limit keeps at most `GATEWAY_LIMIT_KEYS` addresses (idle ones are swept every 10 s;
//! new addresses that find the table full share one overflow budget), so the memory of the
//! three tables and the penalty table is bounded whatever addresses the traffic comes from.

use std::net::IpAddr;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, ResponseError, web};
use futures::StreamExt;
use payment_core::WebhookHeaders;
use ratelimit::{Decision, Keyed};

use crate::error::ApiError;
use crate::settings::GatewaySettings;
use crate::state::AppState;

/// Limiter names: the `limiter` label of `rate_limit_decisions_total`.
pub const WEBHOOK: &str = "gateway_webhook";
pub const API: &str = "gateway_api";
pub const API_TOKEN: &str = "gateway_api_token";

/// The gateway's three per-address limits.
#[derive(Debug)]
pub struct Limits {
    pub webhook: Keyed<IpAddr>,
    pub api: Keyed<IpAddr>,
    pub api_token: Keyed<IpAddr>,
}

impl Limits {
    pub fn new(settings: &GatewaySettings) -> Self {
        let keys = settings.limit_keys;
        Self {
            webhook: Keyed::new(WEBHOOK, settings.webhook_limit, keys),
            api: Keyed::new(API, settings.api_limit, keys),
            api_token: Keyed::new(API_TOKEN, settings.api_token_limit, keys),
        }
    }
}

/// Set on a webhook request whose source or signature checked out: its answer, whatever it
/// is, does not count against the address.
#[derive(Debug, Clone, Copy)]
struct Verified;

/// Marks the request as verified (see [`Verified`]).
pub fn mark_verified(req: &HttpRequest) {
    req.extensions_mut().insert(Verified);
}

/// The key of a client address: IPv4 as is, IPv6 by its /64.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

/// The client address as the gateway believes it; the peer when a forwarding header is
/// malformed (the webhook handler refuses that request, and it counts against the peer).
fn client(req: &ServiceRequest, state: &AppState) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let forwarded = WebhookHeaders::from_pairs(
        req.headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .map(|v| ("x-forwarded-for", v)),
    );
    Some(state.resolver.client_ip(peer, &forwarded).unwrap_or(peer))
}

fn too_many(decision: Decision) -> actix_web::HttpResponse {
    ApiError::RateLimited {
        retry_after_secs: decision.retry_after_secs(),
    }
    .error_response()
}

/// Reads and drops the body of a refused request when its `Content-Length` declares at most
/// `limit` bytes, so the 429 keeps the connection open. Without this, actix closes a
/// connection whose request body is unread, and a penalized client comes back on a new
/// connection for every request: in the load generator's `flood` scenario that
/// accept-and-close churn cost far more than reading a few hundred bytes already in the socket
/// buffer (with the body read, 2.6 times the junk was answered for the same CPU). A larger,
/// chunked or undeclared body is not read: its connection is closed after the 429.
async fn discard_small_body(req: &mut ServiceRequest, limit: usize) {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_none_or(|len| len > limit) {
        return;
    }
    let mut payload = req.take_payload();
    while let Some(Ok(_)) = payload.next().await {}
}

/// The middleware (see the module docs).
pub async fn limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let Some(key) = client(&req, &state).map(key) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let limits = &state.limits;
    if req.path().starts_with("/webhook/") {
        let penalty = limits.webhook.penalized(&key);
        if !penalty.is_allowed() {
            let mut req = req;
            discard_small_body(&mut req, state.max_body_bytes).await;
            return Ok(req.into_response(too_many(penalty)));
        }
        let response = next.call(req).await?;
        let failed = response.status().is_client_error()
            && response.request().extensions().get::<Verified>().is_none();
        if failed {
            let decision = limits.webhook.check_failure(&key);
            if !decision.is_allowed() {
                tracing::debug!(client = %key, "unverified webhook traffic over its limit");
                return Ok(response.into_response(too_many(decision)));
            }
        }
        return Ok(response.map_into_boxed_body());
    }
    let limit = if state.tokens.presented_valid(req.request()) {
        &limits.api_token
    } else {
        &limits.api
    };
    let decision = limit.check(&key);
    if !decision.is_allowed() {
        return Ok(req.into_response(too_many(decision)));
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(key(v4), v4);
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        assert_eq!(key(a), key(b), "one /64");
        assert_eq!(key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(key(a), key("2001:db8:1:3::1".parse().unwrap()));
    }
}
