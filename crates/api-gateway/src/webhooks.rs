//! Provider webhooks: verify, store in the inbox (with the outbox row), answer 200 at once.
//! The business logic — re-fetching the object and moving the payment — is the worker's.

use actix_web::{HttpRequest, HttpResponse, web};
use payment_core::{ProviderId, WebhookError, WebhookHeaders, WebhookRequest};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::body::{parse_json, read_limited, refuse_declared_non_json};
use crate::error::ApiError;
use crate::observability::webhook_verdict;
use crate::signature::{self, SignatureError};
use crate::state::AppState;
use service_kit::inbox::{InboxError, Notice, Stored};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        crate::resource("/webhook/payment/yookassa", "POST").route(web::post().to(yookassa)),
    )
    .service(crate::resource("/webhook/payment/crypto", "POST").route(web::post().to(crypto)));
}

fn headers_of(req: &HttpRequest) -> WebhookHeaders {
    WebhookHeaders::from_pairs(req.headers().iter().filter_map(|(name, value)| {
        value
            .to_str()
            .ok()
            .map(|v| (name.as_str().to_owned(), v.to_owned()))
    }))
}

/// Reads the body, counting an oversized one as a verdict.
async fn webhook_body(
    provider: &'static str,
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<web::Bytes, ApiError> {
    read_limited(req, payload, state.max_body_bytes)
        .await
        .inspect_err(|error| {
            if matches!(error, ApiError::PayloadTooLarge { .. }) {
                webhook_verdict(provider, "too_large");
            }
        })
}

fn accepted(provider: &'static str, stored: Stored) -> HttpResponse {
    let duplicate = stored == Stored::Duplicate;
    webhook_verdict(provider, if duplicate { "duplicate" } else { "accepted" });
    HttpResponse::Ok().json(serde_json::json!({"status": "ok", "duplicate": duplicate}))
}

fn store_failed(provider: &'static str) -> impl FnOnce(InboxError) -> ApiError {
    move |error| {
        webhook_verdict(provider, "error");
        ApiError::from(error)
    }
}

/// `POST /webhook/payment/yookassa`.
async fn yookassa(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    const PROVIDER: &str = "yookassa";
    let Ok(provider) = state.payments.provider(ProviderId::YooKassa) else {
        webhook_verdict(PROVIDER, "disabled");
        return Err(ApiError::NotFound("YooKassa is not enabled".into()));
    };
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no peer address")))?;
    let body = webhook_body(PROVIDER, &req, payload, &state).await?;
    let headers = headers_of(&req);
    let request = WebhookRequest {
        peer,
        headers: &headers,
        body: &body,
    };
    let notification = match provider.receive_webhook(&request).await {
        Ok(notification) => {
            crate::limits::mark_verified(&req);
            notification
        }
        Err(WebhookError::ForbiddenSource(client)) => {
            webhook_verdict(PROVIDER, "forbidden");
            tracing::warn!(%peer, %client, provider = PROVIDER, "webhook from outside the allow-list refused");
            return Err(ApiError::Forbidden(client.to_string()));
        }
        Err(WebhookError::MalformedForwardingHeader(hop)) => {
            webhook_verdict(PROVIDER, "malformed");
            return Err(ApiError::BadRequest(format!(
                "malformed X-Forwarded-For hop {hop:?}"
            )));
        }
        Err(WebhookError::MalformedBody(reason)) => {
            // From the allow-list: a bad body, not unverified traffic.
            crate::limits::mark_verified(&req);
            webhook_verdict(PROVIDER, "malformed");
            return Err(ApiError::InvalidJson(reason));
        }
    };
    refuse_declared_non_json(&req).inspect_err(|_| webhook_verdict(PROVIDER, "malformed"))?;
    let client = state.resolver.client_ip(peer, &headers).unwrap_or(peer);
    let claimed_payment_id = match &notification.subject {
        payment_core::WebhookSubject::Payment { payment_id, .. } => {
            payment_id.map(domain::PaymentId::into_inner)
        }
        _ => None,
    };
    let notice = Notice {
        provider: PROVIDER.to_owned(),
        dedupe_key: notification.dedupe_key.clone(),
        source: "webhook",
        peer: Some(client.to_string()),
        body: String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::InvalidJson("body is not UTF-8".into()))?,
        provider_payment_id: notification.provider_payment_id().map(str::to_owned),
        claimed_payment_id,
    };
    let stored = state
        .inbox
        .store(notice)
        .await
        .map_err(store_failed(PROVIDER))?;
    tracing::info!(
        event = %notification.event,
        dedupe_key = %notification.dedupe_key,
        ?stored,
        "yookassa notification stored"
    );
    Ok(accepted(PROVIDER, stored))
}

/// The crypto notice: a hint for the worker to look at the chain; it never marks a payment
/// paid by itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CryptoNotice {
    /// What the sender saw, e.g. `transfer.detected`.
    event: String,
    /// The transaction, when the notice is about one.
    #[serde(default)]
    tx_id: Option<String>,
    /// Our payment, when the sender knows it.
    #[serde(default)]
    payment_id: Option<Uuid>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    address: Option<String>,
}

/// `POST /webhook/payment/crypto`.
async fn crypto(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    const PROVIDER: &str = "crypto";
    let Some(secret) = &state.crypto_secret else {
        webhook_verdict(PROVIDER, "disabled");
        return Err(ApiError::NotFound(
            "crypto notices are not enabled (CRYPTO_WEBHOOK_SECRET)".into(),
        ));
    };
    let body = webhook_body(PROVIDER, &req, payload, &state).await?;
    let header = req
        .headers()
        .get(signature::HEADER)
        .and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    if let Err(error) = signature::verify(
        secret.expose_secret().as_bytes(),
        header,
        &body,
        now,
        state.crypto_tolerance_secs,
    ) {
        let verdict = match error {
            SignatureError::Expired { .. } => "expired_signature",
            _ => "bad_signature",
        };
        webhook_verdict(PROVIDER, verdict);
        let peer = req
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        tracing::warn!(%peer, %error, provider = PROVIDER, "crypto notice refused");
        return Err(ApiError::BadSignature(error.to_string()));
    }
    crate::limits::mark_verified(&req);
    refuse_declared_non_json(&req).inspect_err(|_| webhook_verdict(PROVIDER, "malformed"))?;
    let notice: CryptoNotice = parse_json(&body).inspect_err(|_| {
        webhook_verdict(PROVIDER, "malformed");
    })?;
    let event = notice.event.trim();
    if event.is_empty() || event.len() > 64 {
        webhook_verdict(PROVIDER, "malformed");
        return Err(ApiError::InvalidJson(
            "event must be 1 to 64 characters".into(),
        ));
    }
    // The same event about the same transaction is one notice, whenever it is re-sent.
    let dedupe_key = match notice.tx_id.as_deref().map(str::trim) {
        Some(tx) if !tx.is_empty() => format!("{event}:{tx}"),
        _ => format!("{event}:sha256:{}", hex::encode(Sha256::digest(&body))),
    };
    let peer = req.peer_addr().map(|a| a.ip());
    let client = peer.map(|p| {
        state
            .resolver
            .client_ip(p, &headers_of(&req))
            .unwrap_or(p)
            .to_string()
    });
    tracing::debug!(network = ?notice.network, address = ?notice.address, "crypto notice verified");
    let stored = state
        .inbox
        .store(Notice {
            provider: PROVIDER.to_owned(),
            dedupe_key,
            source: "webhook",
            peer: client,
            body: String::from_utf8(body.to_vec())
                .map_err(|_| ApiError::InvalidJson("body is not UTF-8".into()))?,
            provider_payment_id: None,
            claimed_payment_id: notice.payment_id,
        })
        .await
        .map_err(store_failed(PROVIDER))?;
    Ok(accepted(PROVIDER, stored))
}
