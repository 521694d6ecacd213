//! Routes: the Crypto Pay API under `/api/{method}` and the control API under
//! `/sandbox/cryptobot/`.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::web::{self, Bytes, Data, Path};
use actix_web::{HttpRequest, HttpResponse};
use chrono::Utc;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};

use super::state::{ASSETS, ApiError, Params, decimal_text, parse_amount};
use super::{ControlError, Fault, NotificationMode, RequestRecord, Shared, TOKEN_HEADER, lock};
use crate::form;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/{method}", web::get().to(api))
        .route("/api/{method}", web::post().to(api))
        .service(
            web::scope("/sandbox/cryptobot")
                .route("/invoices", web::get().to(list_invoices))
                .route("/invoices/{id}/pay", web::post().to(control_pay))
                .route("/invoices/{id}/expire", web::post().to(control_expire))
                .route("/transfers", web::get().to(list_transfers))
                .route("/requests", web::get().to(list_requests))
                .route("/deliveries", web::get().to(list_deliveries))
                .route("/balance", web::put().to(set_balance))
                .route("/faults", web::post().to(push_fault))
                .route("/faults", web::delete().to(clear_faults))
                .route("/notification-modes", web::post().to(push_mode))
                .route("/webhook", web::put().to(set_webhook)),
        );
}

fn answer(status: u16, body: &Value) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::OK)).json(body)
}

/// The query string's parameters, overlaid by a JSON object or form body.
fn params(req: &HttpRequest, body: &[u8]) -> Result<Params, ApiError> {
    let mut params: Params = form::parse(req.query_string())
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(params);
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let text = std::str::from_utf8(body).map_err(|_| ApiError::new(400, "PARAMS_INVALID"))?;
        params.extend(
            form::parse(text)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v))),
        );
        return Ok(params);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => {
            params.extend(object);
            Ok(params)
        }
        _ => Err(ApiError::new(400, "PARAMS_INVALID")),
    }
}

fn call(shared: &Shared, method: &str, params: &Params) -> Result<Value, ApiError> {
    let now = Utc::now();
    let mut state = lock(&shared.state);
    match method {
        "getMe" => {
            let app_id = shared
                .config
                .token
                .split_once(':')
                .and_then(|(id, _)| id.parse::<i64>().ok())
                .unwrap_or(1);
            Ok(json!({
                "app_id": app_id,
                "name": "Sandbox app",
                "payment_processing_bot_username": "CryptoBot",
            }))
        }
        "createInvoice" => state.create_invoice(params, now),
        "getInvoices" => state.get_invoices(params),
        "deleteInvoice" => state.delete_invoice(params),
        "transfer" => state.transfer(params, now),
        "getBalance" => Ok(state.balance()),
        "getExchangeRates" => Ok(exchange_rates(shared)),
        _ => Err(ApiError::new(405, "METHOD_NOT_FOUND")),
    }
}

fn exchange_rates(shared: &Shared) -> Value {
    let usdt = shared.prices.rub_per_unit.get("USDT").copied();
    let mut rates = Vec::new();
    for (asset, rub) in &shared.prices.rub_per_unit {
        rates.push(
            json!({"is_valid": true, "is_crypto": true, "is_fiat": false,
            "source": asset, "target": "RUB", "rate": decimal_text(*rub)}),
        );
        if let Some(usdt) = usdt.filter(|u| !u.is_zero()) {
            rates.push(
                json!({"is_valid": true, "is_crypto": true, "is_fiat": false,
                "source": asset, "target": "USD", "rate": decimal_text((*rub / usdt).round_dp(8))}),
            );
        }
    }
    Value::Array(rates)
}

async fn api(
    shared: Data<Shared>,
    req: HttpRequest,
    method: Path<String>,
    body: Bytes,
) -> HttpResponse {
    let method = method.into_inner();
    let fault = lock(&shared.state).faults.pop_front();
    let result = if fault == Some(Fault::InternalError) {
        Err(ApiError::new(500, "INTERNAL_ERROR"))
    } else {
        let token = req
            .headers()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok());
        if token != Some(shared.config.token.as_str()) {
            Err(ApiError::new(401, "UNAUTHORIZED"))
        } else {
            params(&req, &body).and_then(|params| call(&shared, &method, &params))
        }
    };
    let result = match (fault, result) {
        (Some(Fault::InternalErrorAfterProcessing), _) => Err(ApiError::new(500, "INTERNAL_ERROR")),
        (_, result) => result,
    };
    let (status, body) = match &result {
        Ok(value) => (200, json!({"ok": true, "result": value})),
        Err(error) => (error.code, error.body()),
    };
    lock(&shared.state).requests.push(RequestRecord {
        http_method: req.method().to_string(),
        method,
        status,
        error: result.err().map(|e| e.name),
        fault,
    });
    answer(status, &body)
}

fn control_error(e: &ControlError) -> HttpResponse {
    let status = match e {
        ControlError::NotFound(_) => 404,
        _ => 409,
    };
    answer(status, &json!({"error": e.to_string()}))
}

fn control_result(result: Result<Value, ControlError>) -> HttpResponse {
    result.map_or_else(|e| control_error(&e), |v| answer(200, &v))
}

#[derive(Deserialize, Default)]
struct PayBody {
    asset: Option<String>,
}

async fn control_pay(shared: Data<Shared>, id: Path<i64>, body: Bytes) -> HttpResponse {
    let pay: PayBody = if body.is_empty() {
        PayBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(pay) => pay,
            Err(e) => return answer(400, &json!({"error": e.to_string()})),
        }
    };
    control_result(shared.pay(id.into_inner(), pay.asset.as_deref()))
}

async fn control_expire(shared: Data<Shared>, id: Path<i64>) -> HttpResponse {
    control_result(lock(&shared.state).expire(id.into_inner()))
}

async fn list_invoices(shared: Data<Shared>) -> HttpResponse {
    answer(200, &Value::Array(lock(&shared.state).invoices()))
}

async fn list_transfers(shared: Data<Shared>) -> HttpResponse {
    answer(200, &Value::Array(lock(&shared.state).transfers()))
}

async fn list_requests(shared: Data<Shared>) -> HttpResponse {
    answer(200, &json!(lock(&shared.state).requests))
}

async fn list_deliveries(shared: Data<Shared>) -> HttpResponse {
    answer(200, &json!(*lock(&shared.deliveries)))
}

#[derive(Deserialize)]
struct BalanceBody {
    asset: String,
    available: String,
}

async fn set_balance(shared: Data<Shared>, body: web::Json<BalanceBody>) -> HttpResponse {
    let decimals = ASSETS
        .iter()
        .find(|(a, _)| *a == body.asset)
        .map_or(0, |(_, d)| *d);
    let available = if body.available == "0" {
        Some(Decimal::ZERO)
    } else {
        parse_amount(&body.available, decimals)
    };
    let Some(available) = available else {
        return answer(400, &json!({"error": "available must be a decimal string"}));
    };
    match shared.set_balance(&body.asset, available) {
        Ok(()) => answer(
            200,
            &json!({"asset": body.asset, "available": decimal_text(available)}),
        ),
        Err(e) => control_error(&e),
    }
}

#[derive(Deserialize)]
struct Times<T> {
    #[serde(flatten)]
    item: T,
    #[serde(default = "one")]
    times: usize,
}

fn one() -> usize {
    1
}

async fn push_fault(shared: Data<Shared>, body: web::Json<Times<Fault>>) -> HttpResponse {
    let Times { item, times } = body.into_inner();
    lock(&shared.state)
        .faults
        .extend(std::iter::repeat_n(item, times));
    HttpResponse::NoContent().finish()
}

async fn clear_faults(shared: Data<Shared>) -> HttpResponse {
    lock(&shared.state).faults.clear();
    HttpResponse::NoContent().finish()
}

async fn push_mode(shared: Data<Shared>, body: web::Json<Times<NotificationMode>>) -> HttpResponse {
    let Times { item, times } = body.into_inner();
    lock(&shared.state)
        .notification_modes
        .extend(std::iter::repeat_n(item, times));
    HttpResponse::NoContent().finish()
}

#[derive(Deserialize)]
struct WebhookBody {
    url: Option<String>,
}

async fn set_webhook(shared: Data<Shared>, body: web::Json<WebhookBody>) -> HttpResponse {
    *lock(&shared.webhook_url) = body.into_inner().url;
    HttpResponse::NoContent().finish()
}
