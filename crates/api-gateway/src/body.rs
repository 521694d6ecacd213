//! Reading request bodies: a hard size limit (413 with a JSON error, before the body is read
//! when `Content-Length` already says too much) and strict JSON (unknown fields refused, the
//! serde message returned so the caller sees what to fix).

use actix_web::HttpRequest;
use actix_web::http::header;
use actix_web::web::{self, Bytes, BytesMut};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::auth::Role;
use crate::error::ApiError;
use crate::state::AppState;

/// An API call's JSON body, after the checks every API route makes in this order: the
/// caller's token has one of `roles` (401), the body says it is JSON (415), it fits the size
/// limit (413) and parses strictly (400 naming what is wrong).
pub async fn json_request<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    roles: &[Role],
) -> Result<T, ApiError> {
    state.tokens.check(req, roles)?;
    require_json(req)?;
    let raw = read_limited(req, payload, state.max_body_bytes).await?;
    parse_json(&raw)
}

/// Reads the whole body, refusing more than `limit` bytes.
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// API requests must say they carry JSON.
pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Webhook senders may leave `Content-Type` out, but a body that says it is something else
/// than JSON is refused rather than guessed at.
pub fn refuse_declared_non_json(req: &HttpRequest) -> Result<(), ApiError> {
    if req.headers().contains_key(header::CONTENT_TYPE) {
        require_json(req)
    } else {
        Ok(())
    }
}

/// Strict parse; the target types use `deny_unknown_fields`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::InvalidJson("the body is empty".into()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))
}
