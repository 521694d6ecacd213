//! `GET /api/admin/users/{who}` (admin token): one customer as an admin looks them up — the
//! bot's `/user` as JSON (issue 23). `who` is a Telegram id or `@username`
//! ([`domain::customer::Lookup`]); the answer is [`domain::customer::Overview`]: the
//! subscription (the ledger's expiry and the last panel sync; the panel is not asked), the
//! recent payments, the ledger, saved cards and autopay, reminders, referrals. Malformed `who`
//! is 400, nobody we know is 404.

use actix_web::{HttpRequest, HttpResponse, web};
use domain::customer::{self, Lookup};

use crate::auth::Role;
use crate::error::ApiError;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::resource("/api/admin/users/{who}", "GET").route(web::get().to(show)));
}

async fn show(
    req: HttpRequest,
    who: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req, &[Role::Admin])?;
    let lookup = Lookup::parse(&who).map_err(ApiError::BadRequest)?;
    match customer::overview(&state.db, &lookup).await? {
        Some(overview) => Ok(HttpResponse::Ok().json(overview)),
        None => Err(ApiError::NotFound(format!("no customer {lookup}"))),
    }
}
