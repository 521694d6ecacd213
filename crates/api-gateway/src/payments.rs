//! The payments API: the provider list, creating a payment (with `Idempotency-Key`), reading
//! one, and refunds.

use std::str::FromStr;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, SubsecRound, Utc};
use domain::entities::{payments, refunds, tariffs, users};
use domain::money::{Currency, Money};
use domain::{IdempotencyKey, PaymentId, PaymentStatus, RefundStatus, TelegramUserId};
use messaging::events::{PaymentCreated, PaymentSnapshot};
use messaging::{Envelope, Event};
use payment_core::providers::crypto::{CryptoProvider, InvoiceError};
use payment_core::{
    CreatePaymentRequest, CreatedPayment, PaymentProvider, PaymentRef, ProviderError, ProviderId,
    ProviderRefund, RefundRequest,
};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter, SqlErr, Statement,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::Role;
use crate::body::{parse_json, read_limited, require_json};
use crate::error::ApiError;
use crate::state::AppState;
use service_kit::inbox::{self, Notice};

/// Header of the caller's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// Where the stored answer of an idempotent create lives in `payments.metadata`.
const META_IDEMPOTENCY: &str = "gateway_idempotency";

pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::resource;
    cfg.service(resource("/api/payment/providers", "GET").route(web::get().to(providers)))
        .service(resource("/api/payments", "POST").route(web::post().to(create)))
        .service(resource("/api/payments/{id}", "GET").route(web::get().to(get)))
        .service(resource("/api/payments/{id}/refund", "POST").route(web::post().to(refund)));
}

// ---- views ---------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub(crate) struct MoneyView {
    minor: i64,
    currency: &'static str,
    /// Decimal string in the currency's units, e.g. `"199.00"`.
    value: String,
}

impl From<Money> for MoneyView {
    fn from(money: Money) -> Self {
        Self {
            minor: money.minor(),
            currency: money.currency().code(),
            value: money.to_decimal_string(),
        }
    }
}

#[derive(Debug, Serialize)]
struct PaymentView {
    payment_id: Uuid,
    status: PaymentStatus,
    provider: String,
    provider_payment_id: Option<String>,
    telegram_id: i64,
    tariff_code: String,
    amount: MoneyView,
    refunded: MoneyView,
    /// What the payer does next (`redirect` URL, `transfer` details or `invoice` payload).
    confirmation: Option<serde_json::Value>,
    confirmation_url: Option<String>,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

impl PaymentView {
    fn new(payment: &payments::Model, telegram_id: i64, tariff_code: String) -> Self {
        Self {
            payment_id: payment.id,
            status: payment.status,
            provider: payment.provider.clone(),
            provider_payment_id: payment.provider_payment_id.clone(),
            telegram_id,
            tariff_code,
            amount: payment.amount().into(),
            refunded: payment.refunded().into(),
            confirmation: payment.metadata.get("confirmation").cloned(),
            confirmation_url: payment.confirmation_url.clone(),
            failure_reason: payment.failure_reason.clone(),
            created_at: payment.created_at,
            updated_at: payment.updated_at,
            completed_at: payment.completed_at,
            expires_at: payment.expires_at,
        }
    }
}

// ---- GET /api/payment/providers --------------------------------------------------------------

#[derive(Serialize)]
struct ProviderView {
    id: ProviderId,
    title: &'static str,
    currencies: Vec<&'static str>,
    capabilities: Vec<&'static str>,
}

async fn providers(state: web::Data<AppState>) -> HttpResponse {
    let list: Vec<ProviderView> = state
        .payments
        .descriptors()
        .into_iter()
        .map(|d| {
            let mut capabilities = vec!["payments"];
            // Only providers that notify this gateway over HTTP (Telegram talks to the bot).
            let webhooks = match d.id {
                ProviderId::YooKassa => true,
                ProviderId::Crypto => state.crypto_secret.is_some(),
                ProviderId::Telegram => false,
            };
            if webhooks {
                capabilities.push("webhooks");
            }
            if d.supports_refunds {
                capabilities.push("refunds");
            }
            ProviderView {
                id: d.id,
                title: d.title,
                currencies: d.currencies.iter().map(|c| c.code()).collect(),
                capabilities,
            }
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "providers": list }))
}

// ---- POST /api/payments ----------------------------------------------------------------------

/// The bot's request. Serialised again (fields in this order) to hash it, so two bodies that
/// differ only in whitespace or key order are the same request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    telegram_id: i64,
    tariff_code: String,
    provider: String,
    /// Defaults to the first currency of the provider the tariff has a price in.
    #[serde(default)]
    currency: Option<Currency>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    language_code: Option<String>,
    #[serde(default)]
    return_url: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    req.headers()
        .get(IDEMPOTENCY_KEY)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| IdempotencyKey::parse(v).ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "Idempotency-Key must be 1 to 64 characters of A-Z a-z 0-9 _ - : .".into(),
                    )
                })
        })
        .transpose()
}

async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req, &[Role::Service])?;
    let key = idempotency_key(&req)?
        .ok_or_else(|| ApiError::BadRequest("the Idempotency-Key header is required".into()))?;
    require_json(&req)?;
    let raw = read_limited(&req, payload, state.max_body_bytes).await?;
    let body: CreateBody = parse_json(&raw)?;
    let request_hash = hex::encode(Sha256::digest(
        serde_json::to_vec(&body).map_err(ApiError::internal)?,
    ));
    // Namespaced so keys of other payment paths (bot, crypto) can never collide with the API's.
    let key = format!("api:{key}");

    let _claim = state.in_flight.claim(&key).ok_or(ApiError::InFlight)?;
    let request = Create {
        state: &state,
        body: &body,
        key: &key,
        request_hash: &request_hash,
    };
    if state.db.get_database_backend() == DbBackend::Postgres {
        // One transaction across the provider call: it holds the key's advisory lock, so a
        // concurrent request with the key — on any replica — gets 409, and the payment row
        // commits together with its outbox row or not at all.
        let txn = state.db.begin().await?;
        lock_key(&txn, &key).await?;
        let prepared = match request.prepare(&txn).await? {
            Prepared::Replay(response) => return Ok(response),
            Prepared::New(new) => new,
        };
        let created = request.call_provider(&prepared).await?;
        let (payment_id, response) = request.persist(&txn, &prepared, created).await?;
        txn.commit().await.map_err(conflict_or)?;
        Ok(request.created(payment_id, response))
    } else {
        // SQLite: no open transaction may span the provider call (it would hold the single
        // writer lock); the in-process claim above guards the key, the UNIQUE column backs it.
        let prepared = match request.prepare(&state.db).await? {
            Prepared::Replay(response) => return Ok(response),
            Prepared::New(new) => new,
        };
        let created = request.call_provider(&prepared).await?;
        let txn = service_kit::db::begin_write(&state.db).await?;
        let (payment_id, response) = request.persist(&txn, &prepared, created).await?;
        txn.commit().await.map_err(conflict_or)?;
        Ok(request.created(payment_id, response))
    }
}

/// One create request, between parsing and answering.
struct Create<'a> {
    state: &'a AppState,
    body: &'a CreateBody,
    key: &'a str,
    request_hash: &'a str,
}

enum Prepared {
    Replay(HttpResponse),
    New(NewPayment),
}

struct NewPayment {
    payment_id: PaymentId,
    telegram_id: TelegramUserId,
    provider_id: ProviderId,
    tariff: tariffs::Model,
    amount: Money,
}

impl Create<'_> {
    /// Replays a known key, or validates the request and prices it.
    async fn prepare<C: ConnectionTrait>(&self, conn: &C) -> Result<Prepared, ApiError> {
        if let Some(existing) = payments::Entity::find()
            .filter(payments::Column::IdempotencyKey.eq(self.key))
            .one(conn)
            .await?
        {
            return replay(&existing, self.request_hash).map(Prepared::Replay);
        }
        let body = self.body;
        let telegram_id = TelegramUserId::parse(body.telegram_id)
            .map_err(|e| ApiError::Unprocessable(format!("telegram_id: {e}")))?;
        let provider_id = ProviderId::from_str(&body.provider)
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        let descriptor = self
            .state
            .payments
            .provider(provider_id)
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?
            .descriptor();
        let tariff = tariffs::Entity::find()
            .filter(tariffs::Column::Code.eq(body.tariff_code.as_str()))
            .filter(tariffs::Column::Active.eq(true))
            .one(conn)
            .await?
            .ok_or_else(|| {
                ApiError::Unprocessable(format!("no active tariff {:?}", body.tariff_code))
            })?;
        let currencies: &[Currency] = match &body.currency {
            Some(currency) if descriptor.currencies.contains(currency) => {
                std::slice::from_ref(currency)
            }
            Some(currency) => {
                return Err(ApiError::Unprocessable(format!(
                    "{provider_id} does not charge in {}",
                    currency.code()
                )));
            }
            None => descriptor.currencies,
        };
        let amount = match (provider_id, &self.state.crypto) {
            // USDT price, or the RUB price at the configured rate; the tag comes at persist.
            (ProviderId::Crypto, Some(crypto)) => crypto
                .quote(&tariff)
                .map_err(|e| ApiError::Unprocessable(e.to_string()))?,
            _ => currencies
                .iter()
                .find_map(|c| tariff.price(*c))
                .ok_or_else(|| {
                    ApiError::Unprocessable(format!(
                        "tariff {} has no price in a currency {provider_id} charges in",
                        tariff.code
                    ))
                })?,
        };
        Ok(Prepared::New(NewPayment {
            payment_id: PaymentId::new(),
            telegram_id,
            provider_id,
            tariff,
            amount,
        }))
    }

    /// The provider's idempotence key derives from our fresh payment id. Crypto is not
    /// called here: its invoice is reserved inside the payment's transaction (see
    /// [`Create::persist`]).
    async fn call_provider(&self, new: &NewPayment) -> Result<Option<CreatedPayment>, ApiError> {
        if new.provider_id == ProviderId::Crypto {
            return Ok(None);
        }
        let created = self
            .state
            .payments
            .create_payment(new.provider_id, &self.provider_request(new, new.amount))
            .await
            .map_err(provider_error)?;
        if created.amount != new.amount {
            tracing::error!(
                payment_id = %new.payment_id,
                expected = %new.amount,
                actual = %created.amount,
                "provider changed the amount"
            );
            return Err(ApiError::ProviderRejected(format!(
                "the provider answered with amount {}, expected {}",
                created.amount, new.amount
            )));
        }
        Ok(Some(created))
    }

    fn provider_request(&self, new: &NewPayment, amount: Money) -> CreatePaymentRequest {
        CreatePaymentRequest {
            payment_id: new.payment_id,
            amount,
            description: format!("VPN subscription: {}", new.tariff.title),
            metadata: [
                ("telegram_id".to_owned(), new.telegram_id.to_string()),
                ("tariff_code".to_owned(), new.tariff.code.clone()),
            ]
            .into(),
            return_url: self.body.return_url.clone(),
            receipt_email: self.body.email.clone(),
        }
    }

    /// Reserves the crypto invoice (unique amount = price + tag) for the payment row already
    /// inserted in `txn`, and describes it as the provider's answer.
    async fn reserve_crypto(
        &self,
        txn: &DatabaseTransaction,
        new: &NewPayment,
        now: DateTime<Utc>,
    ) -> Result<CreatedPayment, ApiError> {
        let crypto = self
            .state
            .crypto
            .as_ref()
            .ok_or_else(|| ApiError::Unprocessable("crypto payments are not enabled".into()))?;
        let invoice = crypto
            .reserve_invoice(txn, new.payment_id, new.amount, now)
            .await
            .map_err(|e| match e {
                InvoiceError::Db(e) => ApiError::internal(e),
                InvoiceError::Contended(_) => ApiError::InFlight,
                other => ApiError::Unprocessable(other.to_string()),
            })?;
        let mut created = crypto
            .create_payment(&self.provider_request(new, invoice.amount))
            .await
            .map_err(provider_error)?;
        // The reserved invoice is what the payer must match, including its expiry.
        created.confirmation = Some(CryptoProvider::confirmation(&invoice));
        created.expires_at = Some(invoice.expires_at);
        Ok(created)
    }

    /// Upserts the user and stores the payment (pending, with the answer to replay) and its
    /// `payment.created` outbox row, in the caller's transaction.
    async fn persist(
        &self,
        txn: &DatabaseTransaction,
        new: &NewPayment,
        created: Option<CreatedPayment>,
    ) -> Result<(PaymentId, String), ApiError> {
        let user_id = upsert_user(txn, new.telegram_id, self.body).await?;
        let now = Utc::now().trunc_subsecs(6);
        // The row goes in first: a crypto invoice refers to it.
        let mut model = payments::Model {
            id: new.payment_id.into_inner(),
            user_id,
            tariff_id: new.tariff.id,
            provider: new.provider_id.as_str().to_owned(),
            amount_minor: new.amount.minor(),
            currency: new.amount.currency(),
            status: PaymentStatus::Pending,
            provider_payment_id: None,
            idempotency_key: self.key.to_owned(),
            confirmation_url: None,
            failure_reason: None,
            metadata: serde_json::json!({}),
            created_at: now,
            updated_at: now,
            completed_at: None,
            expires_at: None,
            refunded_minor: 0,
            flagged: false,
            flag_reason: None,
            next_check_at: None,
            check_attempts: 0,
        };
        let active: payments::ActiveModel = model.clone().into();
        payments::Entity::insert(active.reset_all())
            .exec_without_returning(txn)
            .await
            .map_err(conflict_or)?;
        let created = match created {
            Some(created) => created,
            None => self.reserve_crypto(txn, new, now).await?,
        };
        let confirmation = created
            .confirmation
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(ApiError::internal)?;
        model.amount_minor = created.amount.minor();
        model.currency = created.amount.currency();
        model.provider_payment_id = Some(created.provider_payment_id.clone());
        model.confirmation_url = match &created.confirmation {
            Some(payment_core::Confirmation::Redirect { url }) => Some(url.clone()),
            _ => None,
        };
        model.expires_at = created.expires_at;
        model.metadata = serde_json::json!({
            "confirmation": confirmation,
            "test": created.test,
        });
        let response = serde_json::to_string(&PaymentView::new(
            &model,
            new.telegram_id.into_inner(),
            new.tariff.code.clone(),
        ))
        .map_err(ApiError::internal)?;
        model.metadata[META_IDEMPOTENCY] = serde_json::json!({
            "request_hash": self.request_hash,
            "status": 201,
            "response": response,
        });
        let active: payments::ActiveModel = model.clone().into();
        active.reset_all().update(txn).await?;
        let event = PaymentCreated {
            payment: PaymentSnapshot {
                payment_id: new.payment_id.into_inner(),
                user_id,
                telegram_id: new.telegram_id.into_inner(),
                tariff_code: new.tariff.code.clone(),
                provider: new.provider_id.as_str().to_owned(),
                amount_minor: model.amount_minor,
                currency: model.currency.code().to_owned(),
            },
        };
        let envelope =
            Envelope::new(&event, new.payment_id.into_inner(), None)?.with_occurred_at(now);
        messaging::outbox::enqueue(txn, &envelope).await?;
        domain::payment_log::record(
            txn,
            domain::payment_log::Entry {
                event_type: PaymentCreated::EVENT_TYPE,
                payment: &model,
                status: model.status.as_str(),
                message: format!("payment created: {}", created.amount),
                metadata: serde_json::json!({
                    "event_id": envelope.event_id,
                    "telegram_id": new.telegram_id.into_inner(),
                    "tariff_code": new.tariff.code,
                    "provider_payment_id": model.provider_payment_id,
                    "expires_at": model.expires_at,
                    "test": created.test,
                }),
                at: now,
            },
        )
        .await?;
        crate::observability::payment_created(new.provider_id.as_str(), model.currency.code());
        tracing::info!(
            payment_id = %new.payment_id,
            provider = %new.provider_id,
            amount = %created.amount,
            "payment created"
        );
        Ok((new.payment_id, response))
    }

    /// The answer after commit.
    fn created(&self, payment_id: PaymentId, response: String) -> HttpResponse {
        self.state.outbox_nudge.notify_one();
        HttpResponse::Created()
            .content_type("application/json")
            .insert_header((header::LOCATION, format!("/api/payments/{payment_id}")))
            .body(response)
    }
}

/// Takes the key's transaction-scoped advisory lock on PostgreSQL (released at commit or
/// rollback); another holder means the same key is in flight elsewhere.
async fn lock_key(txn: &DatabaseTransaction, key: &str) -> Result<(), ApiError> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let digest = Sha256::digest(format!("acp:idempotency:{key}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_try_advisory_xact_lock($1) AS locked",
            [i64::from_be_bytes(first).into()],
        ))
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("advisory lock returned no row")))?;
    if row.try_get::<bool>("", "locked")? {
        Ok(())
    } else {
        Err(ApiError::InFlight)
    }
}

/// The stored answer for a repeated key: byte for byte when the request is the same.
fn replay(existing: &payments::Model, request_hash: &str) -> Result<HttpResponse, ApiError> {
    let stored = existing.metadata.get(META_IDEMPOTENCY).ok_or_else(|| {
        ApiError::Conflict("this Idempotency-Key belongs to another payment".into())
    })?;
    if stored.get("request_hash").and_then(|h| h.as_str()) != Some(request_hash) {
        return Err(ApiError::IdempotencyMismatch);
    }
    let status = stored
        .get("status")
        .and_then(serde_json::Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| actix_web::http::StatusCode::from_u16(s).ok())
        .unwrap_or(actix_web::http::StatusCode::CREATED);
    let body = stored
        .get("response")
        .and_then(|r| r.as_str())
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("stored response missing")))?
        .to_owned();
    Ok(HttpResponse::build(status)
        .content_type("application/json")
        .insert_header((header::LOCATION, format!("/api/payments/{}", existing.id)))
        .insert_header((REPLAYED, "true"))
        .body(body))
}

/// A unique-key race (a replica without the advisory lock, e.g. SQLite) is the in-flight
/// case; anything else is internal.
fn conflict_or(error: DbErr) -> ApiError {
    match error.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => ApiError::InFlight,
        _ => ApiError::internal(error),
    }
}

async fn upsert_user(
    txn: &DatabaseTransaction,
    telegram_id: TelegramUserId,
    body: &CreateBody,
) -> Result<i64, ApiError> {
    let row = users::ActiveModel {
        id: NotSet,
        telegram_id: Set(telegram_id.into_inner()),
        username: Set(body.username.clone()),
        first_name: Set(body.first_name.clone()),
        language_code: Set(body.language_code.clone()),
        created_at: Set(Utc::now()),
    };
    users::Entity::insert(row)
        .on_conflict(
            OnConflict::column(users::Column::TelegramId)
                .do_nothing()
                .to_owned(),
        )
        .try_insert()
        .exec_without_returning(txn)
        .await?;
    let user = users::Entity::find()
        .filter(users::Column::TelegramId.eq(telegram_id.into_inner()))
        .one(txn)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("user vanished after upsert")))?;
    // Names change; keep the latest the bot saw, never erase one with a missing value.
    let changed = [
        (&body.username, &user.username),
        (&body.first_name, &user.first_name),
        (&body.language_code, &user.language_code),
    ]
    .iter()
    .any(|(new, old)| new.is_some() && new != old);
    if changed {
        let mut active: users::ActiveModel = user.clone().into();
        if body.username.is_some() {
            active.username = Set(body.username.clone());
        }
        if body.first_name.is_some() {
            active.first_name = Set(body.first_name.clone());
        }
        if body.language_code.is_some() {
            active.language_code = Set(body.language_code.clone());
        }
        active.update(txn).await?;
    }
    Ok(user.id)
}

fn provider_error(error: ProviderError) -> ApiError {
    match error {
        e if e.is_result_unknown() => ApiError::ProviderUnavailable(e.to_string()),
        e @ (ProviderError::NotEnabled(_)
        | ProviderError::Unsupported(_)
        | ProviderError::InvalidRequest(_)
        | ProviderError::RefundRefused(_)) => ApiError::Unprocessable(e.to_string()),
        e @ ProviderError::Client(_) => ApiError::internal(e),
        e => ApiError::ProviderRejected(e.to_string()),
    }
}

// ---- GET /api/payments/{id} ------------------------------------------------------------------

fn payment_id(raw: &str) -> Result<PaymentId, ApiError> {
    PaymentId::parse(raw).map_err(|_| ApiError::NotFound(format!("no payment {raw:?}")))
}

async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req, &[Role::Service, Role::Admin])?;
    let id = payment_id(&path)?;
    let payment = payments::Entity::find_by_id(id.into_inner())
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

// ---- POST /api/payments/{id}/refund ----------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    /// Minor units; absent = everything not yet refunded.
    #[serde(default)]
    amount_minor: Option<i64>,
    #[serde(default)]
    reason: Option<String>,
    /// Who asked, for the record (e.g. an admin's Telegram id).
    #[serde(default)]
    requested_by: Option<String>,
}

#[derive(Debug, Serialize)]
struct RefundView {
    refund_id: Uuid,
    payment_id: Uuid,
    provider: String,
    provider_refund_id: Option<String>,
    status: RefundStatus,
    amount: MoneyView,
    reason: Option<String>,
    requested_by: String,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<&refunds::Model> for RefundView {
    fn from(r: &refunds::Model) -> Self {
        Self {
            refund_id: r.id,
            payment_id: r.payment_id,
            provider: r.provider.clone(),
            provider_refund_id: r.provider_refund_id.clone(),
            status: r.status,
            amount: r.amount().into(),
            reason: r.reason.clone(),
            requested_by: r.requested_by.clone(),
            failure_reason: r.failure_reason.clone(),
            created_at: r.created_at,
        }
    }
}

fn refund_response(refund: &refunds::Model) -> HttpResponse {
    let view = RefundView::from(refund);
    match refund.status {
        RefundStatus::Succeeded => HttpResponse::Ok().json(view),
        // Accepted by the provider but not final: the result arrives as a notification.
        RefundStatus::Pending => HttpResponse::Accepted().json(view),
        RefundStatus::Failed => HttpResponse::UnprocessableEntity().json(view),
    }
}

async fn refund(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.tokens.check(&req, &[Role::Admin])?;
    let id = payment_id(&path)?;
    let key = idempotency_key(&req)?;
    let raw = read_limited(&req, payload, state.max_body_bytes).await?;
    // An empty body is a full refund; a body must be JSON.
    let body: RefundBody = if raw.is_empty() {
        RefundBody::default()
    } else {
        require_json(&req)?;
        parse_json(&raw)?
    };

    let payment = payments::Entity::find_by_id(id.into_inner())
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no payment {id}")))?;
    if let Some(key) = &key {
        let stored_key = format!("api:{key}");
        if let Some(existing) = refunds::Entity::find()
            .filter(refunds::Column::IdempotencyKey.eq(stored_key.as_str()))
            .one(&state.db)
            .await?
        {
            if existing.payment_id != payment.id {
                return Err(ApiError::IdempotencyMismatch);
            }
            if existing.status != RefundStatus::Pending || existing.provider_refund_id.is_some() {
                return Ok(refund_response(&existing).customize_replayed());
            }
            // The first attempt's result is unknown (timeout, 5xx): ask again with the same
            // refund id, hence the same provider idempotence key — the provider answers with
            // the refund it made, or makes it now, never a second one.
            let (provider_id, provider_payment_id) = refund_target(&payment)?;
            // The same request as the first time: what the other refunds had taken then. (The
            // payment may since show this refund applied, if the provider made it and told us.)
            let others = recorded_refunds(&state, &payment, Some(existing.id)).await?;
            let original = payments::Model {
                status: if others == 0 {
                    PaymentStatus::Succeeded
                } else {
                    PaymentStatus::PartiallyRefunded
                },
                ..payment
            };
            return settle_refund(
                &state,
                &original,
                existing,
                provider_id,
                provider_payment_id,
                others,
            )
            .await
            .map(Replayed::customize_replayed);
        }
    }
    let (provider_id, provider_payment_id) = refund_target(&payment)?;
    if !matches!(
        payment.status,
        PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
    ) {
        return Err(ApiError::Conflict(format!(
            "only succeeded payments can be refunded; this one is {}",
            payment.status
        )));
    }
    // Refunds not yet applied by the worker count too, so two quick refunds cannot exceed
    // the payment.
    let already = payment
        .refunded_minor
        .max(recorded_refunds(&state, &payment, None).await?);
    let amount_minor = body.amount_minor.unwrap_or(payment.amount_minor - already);
    if amount_minor <= 0 {
        return Err(ApiError::Unprocessable(
            "nothing to refund: the amount must be positive".into(),
        ));
    }

    let refund_id = Uuid::now_v7();
    let now = Utc::now().trunc_subsecs(6);
    let record = refunds::Model {
        id: refund_id,
        payment_id: payment.id,
        provider: payment.provider.clone(),
        provider_refund_id: None,
        amount_minor,
        currency: payment.currency,
        status: RefundStatus::Pending,
        reason: body.reason.clone(),
        requested_by: body
            .requested_by
            .as_deref()
            .map_or_else(|| "api".to_owned(), |who| format!("admin:{who}")),
        idempotency_key: key
            .as_ref()
            .map_or_else(|| format!("refund-{refund_id}"), |k| format!("api:{k}")),
        failure_reason: None,
        created_at: now,
        updated_at: now,
        completed_at: None,
    };
    // Recorded before the call: a crash afterwards leaves a pending refund to reconcile, not
    // a refund nobody knows about.
    let active: refunds::ActiveModel = record.clone().into();
    refunds::Entity::insert(active.reset_all())
        .exec_without_returning(&state.db)
        .await
        .map_err(conflict_or)?;

    settle_refund(
        &state,
        &payment,
        record,
        provider_id,
        provider_payment_id,
        already,
    )
    .await
}

/// The provider that took `payment` and its id there: what a refund is asked of.
fn refund_target(payment: &payments::Model) -> Result<(ProviderId, String), ApiError> {
    let provider_id = ProviderId::from_str(&payment.provider)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let provider_payment_id = payment
        .provider_payment_id
        .clone()
        .ok_or_else(|| ApiError::Conflict("the payment has no provider payment yet".into()))?;
    Ok((provider_id, provider_payment_id))
}

/// The refunds of `payment` recorded as pending or succeeded, in minor units; `except` leaves
/// out the refund being settled.
async fn recorded_refunds(
    state: &AppState,
    payment: &payments::Model,
    except: Option<Uuid>,
) -> Result<i64, ApiError> {
    let mut query = refunds::Entity::find()
        .filter(refunds::Column::PaymentId.eq(payment.id))
        .filter(refunds::Column::Status.is_in([RefundStatus::Pending, RefundStatus::Succeeded]));
    if let Some(except) = except {
        query = query.filter(refunds::Column::Id.ne(except));
    }
    Ok(query
        .all(&state.db)
        .await?
        .iter()
        .map(|r| r.amount_minor)
        .sum())
}

/// Asks the provider for the refund `record` (already stored as pending) and records its
/// answer; a result the provider leaves unknown keeps the refund pending, to be asked again
/// by repeating the request with the same `Idempotency-Key`.
async fn settle_refund(
    state: &AppState,
    payment: &payments::Model,
    record: refunds::Model,
    provider_id: ProviderId,
    provider_payment_id: String,
    already: i64,
) -> Result<HttpResponse, ApiError> {
    let refund_id = record.id;
    let id = payment.payment_id();
    let amount = Money::new(record.amount_minor, record.currency);
    let result = state
        .payments
        .refund(
            provider_id,
            &RefundRequest {
                refund_id,
                payment: PaymentRef {
                    payment_id: id,
                    provider_payment_id: provider_payment_id.clone(),
                    amount: payment.amount(),
                },
                payment_status: payment.status,
                already_refunded: Money::new(already, payment.currency),
                amount,
                reason: record.reason.clone(),
            },
        )
        .await;
    match result {
        Ok(done) => {
            let updated =
                record_refund(state, record, &provider_payment_id, provider_id, &done).await?;
            tracing::info!(%refund_id, payment_id = %id, status = %updated.status, "refund accepted by the provider");
            Ok(refund_response(&updated))
        }
        Err(error) if error.is_result_unknown() => {
            tracing::warn!(%refund_id, payment_id = %id, %error, "refund result unknown; stays pending");
            Err(ApiError::ProviderUnavailable(format!(
                "{error}; refund {refund_id} stays pending: repeat the request with the same Idempotency-Key to settle it"
            )))
        }
        Err(error) => {
            let mut failed: refunds::ActiveModel = record.into();
            failed.status = Set(RefundStatus::Failed);
            failed.failure_reason = Set(Some(error.to_string()));
            failed.updated_at = Set(Utc::now());
            failed.update(&state.db).await?;
            Err(provider_error(error))
        }
    }
}

/// Stores the provider's answer and tells the worker, in one transaction: the refund row is
/// updated and a `provider.notification.<provider>` notice (inbox + outbox) asks the worker to
/// re-fetch and apply it — `payment.refunded` is the worker's to emit.
async fn record_refund(
    state: &AppState,
    record: refunds::Model,
    provider_payment_id: &str,
    provider_id: ProviderId,
    done: &ProviderRefund,
) -> Result<refunds::Model, ApiError> {
    let now = Utc::now();
    let txn = service_kit::db::begin_write(&state.db).await?;
    let mut active: refunds::ActiveModel = record.clone().into();
    active.provider_refund_id = Set(Some(done.provider_refund_id.clone()));
    active.status = Set(done.status);
    active.updated_at = Set(now);
    if done.status.is_terminal() {
        active.completed_at = Set(Some(now));
    }
    let updated = active.update(&txn).await?;
    let body = refund_notice_body(provider_id, provider_payment_id, done, now);
    // The provider's own parser names the notice, so its real notification of this refund
    // gets the same key; a provider that parses no notices of ours gets a key of our own.
    let dedupe_key = match state.payments.provider(provider_id) {
        Ok(provider) => provider
            .process_webhook(body.as_bytes())
            .await
            .map(|parsed| parsed.dedupe_key)
            .ok(),
        Err(_) => None,
    }
    .unwrap_or_else(|| format!("refund:{}", done.provider_refund_id));
    inbox::store_in(
        &txn,
        &Notice {
            provider: provider_id.as_str().to_owned(),
            dedupe_key,
            source: "refund_api",
            peer: None,
            body,
            provider_payment_id: Some(provider_payment_id.to_owned()),
            claimed_payment_id: Some(record.payment_id),
        },
    )
    .await?;
    txn.commit().await?;
    state.outbox_nudge.notify_one();
    Ok(updated)
}

/// The refund as the provider's own notification would describe it, so the worker reads it
/// like any webhook, and the provider's real notification of the same event (same dedupe key)
/// is recognised as a duplicate.
fn refund_notice_body(
    provider: ProviderId,
    provider_payment_id: &str,
    refund: &ProviderRefund,
    at: DateTime<Utc>,
) -> String {
    match provider {
        ProviderId::YooKassa => {
            let status = match refund.status {
                RefundStatus::Pending => "pending",
                RefundStatus::Succeeded => "succeeded",
                RefundStatus::Failed => "canceled",
            };
            serde_json::json!({
                "type": "notification",
                "event": format!("refund.{status}"),
                "object": {
                    "id": refund.provider_refund_id,
                    "payment_id": provider_payment_id,
                    "status": status,
                    "amount": {
                        "value": refund.amount.to_decimal_string(),
                        "currency": refund.amount.currency().code(),
                    },
                    "created_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                }
            })
            .to_string()
        }
        ProviderId::Telegram => {
            payment_core::providers::telegram::refund_notice_body(provider_payment_id, refund)
        }
        // No provider notification format exists for crypto refunds (the provider does not
        // refund); the worker reads this one by its `type`.
        ProviderId::Crypto => serde_json::json!({
            "type": "refund",
            "provider_refund_id": refund.provider_refund_id,
            "provider_payment_id": provider_payment_id,
            "status": refund.status,
            "amount_minor": refund.amount.minor(),
            "currency": refund.amount.currency().code(),
        })
        .to_string(),
    }
}

trait Replayed {
    fn customize_replayed(self) -> HttpResponse;
}

impl Replayed for HttpResponse {
    fn customize_replayed(mut self) -> HttpResponse {
        self.headers_mut().insert(
            header::HeaderName::from_static(REPLAYED),
            header::HeaderValue::from_static("true"),
        );
        self
    }
}
