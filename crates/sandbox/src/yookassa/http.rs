//! Routes: the YooKassa API under `/v3`, the checkout page, and the sandbox control API.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::web::{self, Bytes, Data, Path};
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::model::{ApiError, parse_minor};
use super::state::Outgoing;
use super::validate;
use super::{ControlError, Fault, NotificationMode, RequestRecord, Shared, Shop, lock};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v3")
            .route("/payments", web::post().to(create_payment))
            .route("/payments/{id}", web::get().to(get_payment))
            .route("/payments/{id}/capture", web::post().to(capture_payment))
            .route("/payments/{id}/cancel", web::post().to(cancel_payment))
            .route("/refunds", web::post().to(create_refund))
            .route("/refunds/{id}", web::get().to(get_refund))
            .route("/me", web::get().to(me))
            .default_service(web::to(api_not_found)),
    )
    .route("/checkout/{id}", web::get().to(checkout_page))
    .route("/checkout/{id}/pay", web::post().to(checkout_pay))
    .route("/checkout/{id}/cancel", web::post().to(checkout_cancel))
    .service(
        web::scope("/sandbox/yookassa")
            .route("/payments", web::get().to(list_payments))
            .route("/payments/{id}/pay", web::post().to(control_pay))
            .route("/payments/{id}/decline", web::post().to(control_decline))
            .route("/payments/{id}/cancel", web::post().to(control_decline))
            .route("/payments/{id}/expire", web::post().to(control_expire))
            .route(
                "/payment-methods/{id}",
                web::put().to(control_script_method),
            )
            .route("/expire-pending", web::post().to(control_expire_pending))
            .route("/refunds", web::get().to(list_refunds))
            .route("/requests", web::get().to(list_requests))
            .route("/notifications", web::get().to(list_deliveries))
            .route("/faults", web::post().to(push_fault))
            .route("/faults", web::delete().to(clear_faults))
            .route("/notification-modes", web::post().to(push_mode))
            .route("/webhook", web::put().to(set_webhook))
            .route("/latency", web::put().to(set_latency))
            .route("/latency", web::get().to(get_latency)),
    );
}

/// One API operation; POST ones go through the idempotence check.
enum Op {
    CreatePayment,
    GetPayment(String),
    Capture(String),
    Cancel(String),
    CreateRefund,
    GetRefund(String),
    Me,
}

impl Op {
    fn is_post(&self) -> bool {
        matches!(
            self,
            Self::CreatePayment | Self::Capture(_) | Self::Cancel(_) | Self::CreateRefund
        )
    }
}

type Answer = (u16, Value);

fn error(e: &ApiError) -> Answer {
    (e.status, e.body())
}

fn authenticate<'a>(shops: &'a [Shop], headers: &HeaderMap) -> Option<&'a Shop> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (shop_id, secret) = decoded.split_once(':')?;
    shops
        .iter()
        .find(|s| s.shop_id == shop_id && s.secret_key == secret)
}

fn idempotence_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("Idempotence-Key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Auth, idempotence and the operation itself, all under the state lock.
fn process(shared: &Shared, req: &HttpRequest, body: &[u8], op: Op) -> (Answer, Vec<Outgoing>) {
    let Some(shop) = authenticate(&shared.config.shops, req.headers()) else {
        return (error(&ApiError::invalid_credentials()), Vec::new());
    };
    let now = Utc::now();
    if !op.is_post() {
        let state = lock(&shared.state);
        let result = match &op {
            Op::GetPayment(id) => state.get_payment(shop, id),
            Op::GetRefund(id) => state.get_refund(shop, id),
            _ => Ok(json!({
                "account_id": shop.shop_id, "test": shop.test, "fiscalization_enabled": true,
                "payment_methods": ["bank_card"], "status": "enabled"
            })),
        };
        return (result.map_or_else(|e| error(&e), |v| (200, v)), Vec::new());
    }

    let key = match validate::idempotence_key(idempotence_header(req.headers()).as_deref()) {
        Ok(key) => key,
        Err(e) => return (error(&e), Vec::new()),
    };
    let parsed: Result<Value, _> = if body.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_slice(body)
    };
    let fingerprint = json!({
        "method": req.method().as_str(),
        "path": req.path(),
        "body": parsed.as_ref().map_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()), Clone::clone),
    });

    let mut state = lock(&shared.state);
    let slot = (shop.shop_id.clone(), key);
    let ttl =
        chrono::Duration::from_std(shared.config.idempotence_ttl).unwrap_or(chrono::Duration::MAX);
    if let Some(entry) = state.idempotence.get(&slot)
        && entry
            .at
            .checked_add_signed(ttl)
            .is_none_or(|until| until > now)
    {
        let answer = if entry.fingerprint == fingerprint {
            (entry.status, entry.body.clone())
        } else {
            error(&ApiError::invalid_request(
                "Duplicate idempotence key: it was already used for another request. \
                 Use a new Idempotence-Key for a new request",
                Some("Idempotence-Key"),
            ))
        };
        return (answer, Vec::new());
    }

    let result = match parsed {
        Err(_) => Err(ApiError::invalid_request(
            "Request body is not valid JSON",
            None,
        )),
        Ok(body) => match &op {
            Op::CreatePayment => validate::create_payment(&body).and_then(|req| {
                let ttl = chrono::Duration::from_std(shared.config.confirmation_ttl)
                    .unwrap_or(chrono::Duration::MAX);
                state.create_payment(shop, req, &shared.public_url, ttl, now)
            }),
            Op::Capture(id) => {
                validate::capture(&body).and_then(|amount| state.capture(shop, id, amount, now))
            }
            Op::Cancel(id) => state.cancel_by_merchant(shop, id),
            Op::CreateRefund => {
                validate::create_refund(&body).and_then(|req| state.refund(shop, req, now))
            }
            Op::GetPayment(_) | Op::GetRefund(_) | Op::Me => Err(ApiError::not_found("Not found")),
        },
    };
    let (answer, notes) = match result {
        Ok((value, notes)) => ((200, value), notes),
        Err(e) => (error(&e), Vec::new()),
    };
    state.idempotence.insert(
        slot,
        super::state::IdempotenceEntry {
            fingerprint,
            status: answer.0,
            body: answer.1.clone(),
            at: now,
        },
    );
    (answer, notes)
}

async fn api(shared: Data<Shared>, req: HttpRequest, body: Bytes, op: Op) -> HttpResponse {
    let fault = shared.take_fault();
    let (status, mut value) = match fault {
        Some(Fault::InternalError) => error(&ApiError::internal()),
        Some(Fault::TooManyRequests) => error(&ApiError::too_many_requests()),
        _ => {
            let (answer, notes) = process(&shared, &req, &body, op);
            shared.send(notes);
            answer
        }
    };
    let status = match &fault {
        Some(Fault::InternalErrorAfterProcessing) => {
            value = ApiError::internal().body();
            500
        }
        Some(Fault::WrongAmount { amount }) if status == 200 => {
            if let Some(object) = value.as_object_mut() {
                object.insert("amount".into(), json!(amount));
            }
            status
        }
        _ => status,
    };
    lock(&shared.state).requests.push(RequestRecord {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        idempotence_key: idempotence_header(req.headers()),
        status,
        fault: fault.clone(),
    });
    let delay = match fault {
        Some(Fault::Slow { delay_ms }) => Duration::from_millis(delay_ms),
        _ => Duration::ZERO,
    } + shared.latency();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .json(value)
}

async fn create_payment(shared: Data<Shared>, req: HttpRequest, body: Bytes) -> HttpResponse {
    api(shared, req, body, Op::CreatePayment).await
}

async fn get_payment(shared: Data<Shared>, req: HttpRequest, id: Path<String>) -> HttpResponse {
    api(shared, req, Bytes::new(), Op::GetPayment(id.into_inner())).await
}

async fn capture_payment(
    shared: Data<Shared>,
    req: HttpRequest,
    id: Path<String>,
    body: Bytes,
) -> HttpResponse {
    api(shared, req, body, Op::Capture(id.into_inner())).await
}

async fn cancel_payment(
    shared: Data<Shared>,
    req: HttpRequest,
    id: Path<String>,
    body: Bytes,
) -> HttpResponse {
    api(shared, req, body, Op::Cancel(id.into_inner())).await
}

async fn create_refund(shared: Data<Shared>, req: HttpRequest, body: Bytes) -> HttpResponse {
    api(shared, req, body, Op::CreateRefund).await
}

async fn get_refund(shared: Data<Shared>, req: HttpRequest, id: Path<String>) -> HttpResponse {
    api(shared, req, Bytes::new(), Op::GetRefund(id.into_inner())).await
}

async fn me(shared: Data<Shared>, req: HttpRequest) -> HttpResponse {
    api(shared, req, Bytes::new(), Op::Me).await
}

async fn api_not_found(req: HttpRequest) -> HttpResponse {
    let e = ApiError::not_found(format!(
        "{} {} is not a YooKassa API method",
        req.method(),
        req.path()
    ));
    HttpResponse::NotFound().json(e.body())
}

// ---- checkout page -------------------------------------------------------------------------

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

async fn checkout_page(shared: Data<Shared>, id: Path<String>) -> HttpResponse {
    let state = lock(&shared.state);
    let Some(record) = state.payments.get(id.as_str()) else {
        return HttpResponse::NotFound()
            .content_type("text/html; charset=utf-8")
            .body("<!doctype html><title>Not found</title><p>Payment not found.</p>");
    };
    let p = &record.object;
    let id = escape(&p.id);
    let actions = if p.status == super::model::PaymentStatus::Pending {
        format!(
            r#"<form method="post" action="/checkout/{id}/pay"><button type="submit">Pay</button></form>
<form method="post" action="/checkout/{id}/cancel"><button type="submit">Cancel</button></form>"#
        )
    } else {
        format!(
            r#"<p><a href="{}">Return to the shop</a></p>"#,
            escape(&record.return_url)
        )
    };
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>YooKassa sandbox checkout</title></head>
<body>
<h1>YooKassa sandbox checkout</h1>
<p>Payment <code>{id}</code>{test}</p>
<p>{description}</p>
<p><strong>{value} {currency}</strong></p>
<p>Status: <code>{status}</code></p>
{actions}
</body></html>"#,
        test = if p.test { " (test)" } else { "" },
        description = escape(p.description.as_deref().unwrap_or("")),
        value = escape(&p.amount.value),
        currency = escape(&p.amount.currency),
        status = p.status.as_str(),
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html)
}

fn back_to_shop(shared: &Shared, id: &str, result: Result<Value, ControlError>) -> HttpResponse {
    match result {
        Ok(_) => {
            let return_url = lock(&shared.state)
                .payments
                .get(id)
                .map(|p| p.return_url.clone())
                .unwrap_or_else(|| "/".into());
            HttpResponse::SeeOther()
                .insert_header((header::LOCATION, return_url))
                .finish()
        }
        Err(e) => control_error(&e),
    }
}

async fn checkout_pay(shared: Data<Shared>, id: Path<String>) -> HttpResponse {
    let result = shared.pay(&id);
    back_to_shop(&shared, &id, result)
}

async fn checkout_cancel(shared: Data<Shared>, id: Path<String>) -> HttpResponse {
    // The payer gave up on the form; YooKassa reports this as a decline by the payment network.
    let result = shared.decline(&id, "general_decline");
    back_to_shop(&shared, &id, result)
}

// ---- sandbox control API -------------------------------------------------------------------

fn control_error(e: &ControlError) -> HttpResponse {
    let body = json!({"error": e.to_string()});
    match e {
        ControlError::NotFound(_) => HttpResponse::NotFound().json(body),
        ControlError::InvalidState { .. } => HttpResponse::Conflict().json(body),
    }
}

fn control_answer(result: Result<Value, ControlError>) -> HttpResponse {
    match result {
        Ok(value) => HttpResponse::Ok().json(value),
        Err(e) => control_error(&e),
    }
}

async fn control_pay(shared: Data<Shared>, id: Path<String>) -> HttpResponse {
    control_answer(shared.pay(&id))
}

#[derive(Deserialize, Default)]
struct DeclineBody {
    reason: Option<String>,
}

async fn control_decline(shared: Data<Shared>, id: Path<String>, body: Bytes) -> HttpResponse {
    let reason = serde_json::from_slice::<DeclineBody>(&body)
        .unwrap_or_default()
        .reason
        .unwrap_or_else(|| "general_decline".into());
    control_answer(shared.decline(&id, &reason))
}

/// `PUT /control/payment-methods/{id}` `{"decline": "insufficient_funds"}` (or `null`): how
/// charges of a saved method end.
async fn control_script_method(
    shared: Data<Shared>,
    id: Path<String>,
    body: Bytes,
) -> HttpResponse {
    #[derive(Deserialize)]
    struct Script {
        decline: Option<String>,
    }
    let Ok(script) = serde_json::from_slice::<Script>(&body) else {
        return HttpResponse::BadRequest()
            .json(json!({"error": "expected {\"decline\": reason or null}"}));
    };
    match lock(&shared.state).script_method(&id, script.decline) {
        Ok(()) => HttpResponse::NoContent().finish(),
        Err(e) => control_error(&e),
    }
}

async fn control_expire(shared: Data<Shared>, id: Path<String>) -> HttpResponse {
    control_answer(shared.expire(&id))
}

#[derive(Deserialize, Default)]
struct ExpireBody {
    older_than_ms: Option<u64>,
}

async fn control_expire_pending(shared: Data<Shared>, body: Bytes) -> HttpResponse {
    let older_than = serde_json::from_slice::<ExpireBody>(&body)
        .unwrap_or_default()
        .older_than_ms
        .map(Duration::from_millis);
    HttpResponse::Ok().json(json!({"expired": shared.expire_pending(older_than)}))
}

async fn list_payments(shared: Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(lock(&shared.state).payments_json())
}

async fn list_refunds(shared: Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(lock(&shared.state).refunds_json())
}

async fn list_requests(shared: Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&lock(&shared.state).requests)
}

async fn list_deliveries(shared: Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&*lock(&shared.deliveries))
}

#[derive(Deserialize)]
struct Times<T> {
    #[serde(flatten)]
    what: T,
    #[serde(default = "one")]
    times: usize,
}

fn one() -> usize {
    1
}

async fn push_fault(shared: Data<Shared>, body: web::Json<Times<Fault>>) -> HttpResponse {
    let Times { what, times } = body.into_inner();
    if let Fault::WrongAmount { amount } = &what
        && parse_minor(&amount.value).is_none()
    {
        return HttpResponse::BadRequest()
            .json(json!({"error": "amount.value must be like \"1.00\""}));
    }
    lock(&shared.state)
        .faults
        .extend(std::iter::repeat_n(what, times));
    HttpResponse::NoContent().finish()
}

async fn clear_faults(shared: Data<Shared>) -> HttpResponse {
    lock(&shared.state).faults.clear();
    HttpResponse::NoContent().finish()
}

async fn push_mode(shared: Data<Shared>, body: web::Json<Times<NotificationMode>>) -> HttpResponse {
    let Times { what, times } = body.into_inner();
    lock(&shared.state)
        .notification_modes
        .extend(std::iter::repeat_n(what, times));
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

#[derive(Deserialize)]
struct LatencyBody {
    delay_ms: u64,
}

async fn set_latency(shared: Data<Shared>, body: web::Json<LatencyBody>) -> HttpResponse {
    shared.set_latency(Duration::from_millis(body.delay_ms));
    get_latency(shared).await
}

async fn get_latency(shared: Data<Shared>) -> HttpResponse {
    let delay_ms = u64::try_from(shared.latency().as_millis()).unwrap_or(u64::MAX);
    HttpResponse::Ok().json(json!({ "delay_ms": delay_ms }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
