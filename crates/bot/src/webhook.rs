//! Webhook mode: Telegram POSTs each update to `TELEGRAM_WEBHOOK_URL`, with the secret from
//! `setWebhook` in `X-Telegram-Bot-Api-Secret-Token` (compared in constant time; anything
//! else gets 401). The answer is 200 only after the update is handled — for a payment, after
//! its inbox and outbox rows committed — and 500 when it could not be stored, so Telegram
//! delivers it again: the same durability rule as the poller's offset.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App as HttpApp, HttpRequest, HttpResponse, HttpServer, web};
use frankenstein::AsyncTelegramApi;
use frankenstein::methods::SetWebhookParams;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::poller::allowed_updates;

/// The path updates are POSTed to.
pub const PATH: &str = "/telegram/webhook";
/// The header Telegram sends the secret in.
pub const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";
const MAX_BODY: usize = 1 << 20;

/// Webhook settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `TELEGRAM_WEBHOOK_URL`: the public URL Telegram calls (ending in [`PATH`] behind any
    /// proxy).
    pub url: String,
    /// `TELEGRAM_WEBHOOK_SECRET`: 1-256 characters of `A-Z a-z 0-9 _ -`.
    pub secret: SecretString,
    /// `TELEGRAM_WEBHOOK_BIND` (default `0.0.0.0:8088`).
    pub bind: String,
}

/// Equal without revealing where two secrets differ: compares fixed-size digests with no
/// early exit.
pub fn secrets_match(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

struct State {
    app: Arc<App>,
    secret: SecretString,
}

async fn receive(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let given = req
        .headers()
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !secrets_match(given, state.secret.expose_secret().as_bytes()) {
        tracing::warn!("webhook call without the right secret token");
        return HttpResponse::Unauthorized().finish();
    }
    let update: Value = match serde_json::from_slice(&body) {
        Ok(update) => update,
        Err(error) => {
            tracing::warn!(%error, "webhook body is not JSON");
            return HttpResponse::BadRequest().finish();
        }
    };
    match state.app.handle(&update).await {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(error) => {
            tracing::error!(%error, "update not stored; Telegram will deliver it again");
            HttpResponse::InternalServerError().finish()
        }
    }
}

/// Serves the webhook endpoint until `shutdown`, then registers it with Telegram.
pub async fn start(
    app: Arc<App>,
    settings: &WebhookSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let data = web::Data::new(State {
        app: app.clone(),
        secret: settings.secret.clone(),
    });
    let server = HttpServer::new(move || {
        HttpApp::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .route(PATH, web::post().to(receive))
    })
    .workers(2)
    .disable_signals()
    .bind(&settings.bind)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("TELEGRAM_WEBHOOK_BIND bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(async move {
        tokio::select! {
            served = server => {
                if let Err(error) = served {
                    tracing::error!(%error, "webhook server failed");
                }
            }
            () = shutdown.cancelled() => handle.stop(true).await,
        }
    });
    let params = SetWebhookParams::builder()
        .url(settings.url.clone())
        .secret_token(settings.secret.expose_secret().to_owned())
        .allowed_updates(allowed_updates())
        .build();
    app.api
        .set_webhook(&params)
        .await
        .map_err(|e| anyhow::anyhow!("setWebhook failed: {e}"))?;
    tracing::info!(%addr, url = %settings.url, "receiving updates by webhook");
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets() {
        assert!(secrets_match(b"abc_DEF-1", b"abc_DEF-1"));
        assert!(!secrets_match(b"abc_DEF-2", b"abc_DEF-1"));
        assert!(!secrets_match(b"", b"abc"));
    }
}
