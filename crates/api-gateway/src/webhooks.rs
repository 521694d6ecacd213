//! Provider webhooks: one route, `POST /webhook/payment/{provider}`. The provider verifies the
//! call (source address, signature) and parses it ([`payment_core::PaymentProvider`]); the
//! gateway stores the notice in the inbox (with the outbox row) and answers 200 at once. The
//! business logic — re-fetching the object and moving the payment — is the worker's.

use actix_web::{HttpRequest, HttpResponse, web};
use payment_core::{ProviderId, WebhookError, WebhookHeaders, WebhookRequest};

use crate::body::{read_limited, refuse_declared_non_json};
use crate::error::ApiError;
use crate::observability::webhook_verdict;
use crate::state::AppState;
use service_kit::inbox::{Notice, Stored};

/// Routes `POST /webhook/payment/{provider}` for the enabled providers that take webhooks
/// (`providers`): any other path under /webhook/payment/ stays an unknown route (404 for every
/// method, not 405).
pub fn configure(cfg: &mut web::ServiceConfig, providers: &[ProviderId]) {
    if providers.is_empty() {
        return;
    }
    let names: Vec<&str> = providers.iter().map(ProviderId::as_str).collect();
    let path = format!("/webhook/payment/{{provider:{}}}", names.join("|"));
    cfg.service(crate::resource(&path, "POST").route(web::post().to(receive)));
}

fn headers_of(req: &HttpRequest) -> WebhookHeaders {
    WebhookHeaders::from_pairs(req.headers().iter().filter_map(|(name, value)| {
        value
            .to_str()
            .ok()
            .map(|v| (name.as_str().to_owned(), v.to_owned()))
    }))
}

/// `POST /webhook/payment/{provider}`: verify (the provider's check), refuse a declared
/// non-JSON body, parse (the provider's format), store once.
async fn receive(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let id = name.parse::<ProviderId>().ok();
    let Some(provider) = id
        .and_then(|id| state.payments.provider(id).ok())
        .filter(|p| p.accepts_webhooks())
    else {
        return Err(ApiError::NotFound(format!(
            "{name} webhooks are not enabled"
        )));
    };
    let id = provider.id();
    let label = id.as_str();
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no peer address")))?;
    let body = read_limited(&req, payload, state.max_body_bytes)
        .await
        .inspect_err(|error| {
            if matches!(error, ApiError::PayloadTooLarge { .. }) {
                webhook_verdict(label, "too_large");
            }
        })?;
    let headers = headers_of(&req);
    let request = WebhookRequest {
        peer,
        headers: &headers,
        body: &body,
    };
    provider
        .verify_webhook(&request)
        .await
        .map_err(|error| refused(label, &req, error))?;
    crate::limits::mark_verified(&req);
    refuse_declared_non_json(&req).inspect_err(|_| webhook_verdict(label, "malformed"))?;
    let notification = provider
        .process_webhook(&body)
        .await
        .map_err(|error| refused(label, &req, error))?;
    let client = state.resolver.client_ip(peer, &headers).unwrap_or(peer);
    let notice = Notice {
        provider: id.clone(),
        dedupe_key: notification.dedupe_key.clone(),
        source: "webhook",
        peer: Some(client.to_string()),
        body: String::from_utf8(body.to_vec()).map_err(|_| {
            webhook_verdict(label, "malformed");
            ApiError::InvalidJson("body is not UTF-8".into())
        })?,
        provider_payment_id: notification.provider_payment_id().map(str::to_owned),
        claimed_payment_id: notification.claimed_payment_id(),
    };
    let stored = state.inbox.store(notice).await.map_err(|error| {
        webhook_verdict(label, "error");
        ApiError::from(error)
    })?;
    tracing::info!(
        provider = label,
        event = %notification.event,
        dedupe_key = %notification.dedupe_key,
        ?stored,
        "provider notification stored"
    );
    let duplicate = stored == Stored::Duplicate;
    webhook_verdict(label, if duplicate { "duplicate" } else { "accepted" });
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok", "duplicate": duplicate})))
}

/// The answer to a call the provider did not accept, with its verdict and log line.
fn refused(provider: &str, req: &HttpRequest, error: WebhookError) -> ApiError {
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    match error {
        WebhookError::ForbiddenSource(client) => {
            webhook_verdict(provider, "forbidden");
            tracing::warn!(%peer, %client, provider, "webhook from outside the allow-list refused");
            ApiError::Forbidden(client.to_string())
        }
        WebhookError::MalformedForwardingHeader(hop) => {
            webhook_verdict(provider, "malformed");
            ApiError::BadRequest(format!("malformed X-Forwarded-For hop {hop:?}"))
        }
        WebhookError::MalformedBody(reason) => {
            // Verified: a bad body, not unverified traffic.
            crate::limits::mark_verified(req);
            webhook_verdict(provider, "malformed");
            ApiError::InvalidJson(reason)
        }
        WebhookError::BadSignature(reason) => {
            webhook_verdict(provider, "bad_signature");
            tracing::warn!(%peer, error = %reason, provider, "webhook signature refused");
            ApiError::BadSignature(reason)
        }
        WebhookError::ExpiredSignature(reason) => {
            webhook_verdict(provider, "expired_signature");
            tracing::warn!(%peer, error = %reason, provider, "webhook signature refused");
            ApiError::BadSignature(reason)
        }
    }
}
