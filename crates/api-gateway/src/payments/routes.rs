//! The payments routes: each authorises, parses the request once, calls its use case and
//! answers.

use actix_web::{HttpRequest, HttpResponse, web};
use domain::PaymentId;
use domain::entities::{payments, tariffs, users};
use sea_orm::EntityTrait;

use super::create::{self, CreateBody};
use super::refund::{self, RefundBody};
use super::views::{PaymentView, ProviderView};
use crate::auth::Role;
use crate::body::{json_request, parse_json, read_limited, require_json};
use crate::error::ApiError;
use crate::idempotency;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::resource;
    cfg.service(resource("/api/payment/providers", "GET").route(web::get().to(providers)))
        .service(resource("/api/payments", "POST").route(web::post().to(create)))
        .service(resource("/api/payments/{id}", "GET").route(web::get().to(get)))
        .service(resource("/api/payments/{id}/refund", "POST").route(web::post().to(refund)));
}

/// `GET /api/payment/providers`.
async fn providers(state: web::Data<AppState>) -> HttpResponse {
    let list: Vec<ProviderView> = state
        .payments
        .providers()
        .map(|provider| ProviderView::new(provider.as_ref()))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "providers": list }))
}

/// `POST /api/payments` (service token, `Idempotency-Key` required): see [`create::create`].
async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body: CreateBody = json_request(&req, payload, &state, &[Role::Service]).await?;
    let key = idempotency::key_from(&req)?
        .ok_or_else(|| ApiError::BadRequest("the Idempotency-Key header is required".into()))?;
    create::create(&state, &key, &body).await
}

fn payment_id(raw: &str) -> Result<PaymentId, ApiError> {
    PaymentId::parse(raw).map_err(|_| ApiError::NotFound(format!("no payment {raw:?}")))
}

/// `GET /api/payments/{id}` (service or admin token).
async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req, &[Role::Service, Role::Admin])?;
    let id = payment_id(&path)?;
    let payment = payments::Entity::find_by_id(id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no payment {id}")))?;
    let telegram_id = users::Entity::find_by_id(payment.user_id)
        .one(&state.db)
        .await?
        .map_or(0, |u| u.telegram_id);
    let tariff_code = tariffs::Entity::find_by_id(payment.tariff_id)
        .one(&state.db)
        .await?
        .map(|t| t.code)
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(PaymentView::new(&payment, telegram_id, tariff_code)))
}

/// `POST /api/payments/{id}/refund` (admin token, `Idempotency-Key` optional): see
/// [`refund::refund`].
async fn refund(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req, &[Role::Admin])?;
    let id = payment_id(&path)?;
    let key = idempotency::key_from(&req)?;
    let raw = read_limited(&req, payload, state.max_body_bytes).await?;
    // An empty body is a full refund; a body must be JSON.
    let body: RefundBody = if raw.is_empty() {
        RefundBody::default()
    } else {
        require_json(&req)?;
        parse_json(&raw)?
    };
    refund::refund(&state, id, key, &body).await
}
