//! The payments API: the provider list, creating a payment (with `Idempotency-Key`), reading
//! one, and refunds.

use std::str::FromStr;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, SubsecRound, Utc};
use domain::entities::{payments, provider_notifications, refunds, tariffs, users};
use domain::money::{Currency, Money};
use domain::{IdempotencyKey, PaymentId, PaymentStatus, RefundStatus, TelegramUserId};
use messaging::events::{PaymentCreated, PaymentSnapshot};
use messaging::{Envelope, Event};
use payment_core::{
    CheckoutError, CreatePaymentRequest, CreatedPayment, PaymentProvider, PaymentRef,
    ProviderError, ProviderId, ProviderRefund, RefundNotice, RefundRequest, RefundRoute,
};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait,
    DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QuerySelect, SqlErr,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::Role;
use crate::body::{parse_json, read_limited, require_json};
use crate::checkout;
use crate::error::ApiError;
use crate::state::AppState;
use service_kit::inbox::{self, Notice};

/// Header of the caller's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// Set (`true`) when a press answers with the customer's open checkout of the same tariff,
/// provider and currency instead of a new payment (see [`crate::checkout`]).
pub const CHECKOUT_REUSED: &str = "checkout-reused";
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
        .providers()
        .map(|provider| {
            let d = provider.descriptor();
            let mut capabilities = vec!["payments"];
            // Only providers that notify this gateway over HTTP (Telegram talks to the bot).
            if provider.accepts_webhooks() {
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

pub use domain::entities::payments::{
    CREATION_IN_PROGRESS, CREATION_REFUSED, CREATION_WINDOW, META_CREATION,
};

fn creation_window() -> chrono::Duration {
    chrono::Duration::from_std(CREATION_WINDOW).unwrap_or(chrono::Duration::MAX)
}

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

/// Record the intent, call the provider, record the result — no transaction is open while
/// the provider is asked.
///
/// 1. A short transaction stores the payment row (`pending`, no provider id, marked
///    [`CREATION_IN_PROGRESS`]) under the UNIQUE idempotency key; a crypto invoice is reserved
///    in it too.
/// 2. The provider is asked with the row's payment id, from which its idempotence key derives.
/// 3. A short transaction stores the answer with a conditional UPDATE (only the first writer
///    wins) together with the `payment.created` outbox row and its log row.
///
/// A repeat of the key replays a finished row, and finishes an unfinished one by asking the
/// provider again with the same payment id — the provider answers with the payment it made.
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

    // Same key twice at once on this replica: the second waits for nothing and gets 409. On
    // other replicas the UNIQUE key and the provider's idempotence make a second caller safe.
    let _claim = state.in_flight.claim(&key).ok_or(ApiError::InFlight)?;
    let request = Create {
        state: &state,
        body: &body,
        key: &key,
        request_hash: &request_hash,
    };
    let intent = match request.existing().await? {
        Some(row) => request.resume(row).await?,
        None => match request.record_intent().await? {
            Recorded::New(intent) => Resumed::Unfinished(Box::new(intent)),
            Recorded::Reuse(intent) if intent.payment.is_half_made() => {
                Resumed::Unfinished(Box::new(intent))
            }
            Recorded::Reuse(intent) => Resumed::Replay(reused(&intent)?),
            // Another replica stored the key a moment ago: continue from its row.
            Recorded::KeyTaken => {
                let row = request.existing().await?.ok_or(ApiError::InFlight)?;
                request.resume(row).await?
            }
        },
    };
    let intent = match intent {
        Resumed::Replay(response) => return Ok(response),
        Resumed::Unfinished(intent) => intent,
    };
    match request.call_provider(&intent).await {
        Ok(created) => request.finish(&intent, created).await,
        Err(CallFailure::Unfinished(error)) => {
            tracing::warn!(payment_id = %intent.payment.id, %error, "no definite answer from the provider; the payment stays unfinished");
            Err(error)
        }
        Err(CallFailure::Refused(error)) => Err(request.refuse(&intent, error).await),
    }
}

/// One create request, between parsing and answering.
struct Create<'a> {
    state: &'a AppState,
    body: &'a CreateBody,
    key: &'a str,
    request_hash: &'a str,
}

/// What a stored row of the key means for this request.
enum Resumed {
    Replay(HttpResponse),
    Unfinished(Box<Intent>),
}

/// A stored payment row whose provider answer is not stored yet.
struct Intent {
    payment: payments::Model,
    telegram_id: TelegramUserId,
    tariff: tariffs::Model,
    /// The request hash stored with the row (that of the key that made it): the answer is
    /// stored for that key, whichever press finishes the row.
    request_hash: String,
    /// Found as the customer's open checkout by a press with another key.
    reused: bool,
}

/// What transaction 1 did.
enum Recorded {
    /// A new intent row.
    New(Intent),
    /// The customer's open checkout of the same tariff, provider and currency (half-made or
    /// finished); nothing new was stored.
    Reuse(Intent),
    /// Another request stored this key first.
    KeyTaken,
}

/// Why the provider call gave no payment.
enum CallFailure {
    /// No definite answer: the row stays unfinished, a repeat of the key asks again.
    Unfinished(ApiError),
    /// A definite refusal: stored as the key's answer.
    Refused(ApiError),
}

impl Create<'_> {
    async fn existing(&self) -> Result<Option<payments::Model>, ApiError> {
        Ok(payments::Entity::find()
            .filter(payments::Column::IdempotencyKey.eq(self.key))
            .one(&self.state.db)
            .await?)
    }

    /// A finished (or refused) row is replayed; an unfinished one is continued while its
    /// creation window is open.
    async fn resume(&self, row: payments::Model) -> Result<Resumed, ApiError> {
        let stored = row.metadata.get(META_IDEMPOTENCY).ok_or_else(|| {
            ApiError::Conflict("this Idempotency-Key belongs to another payment".into())
        })?;
        if stored.get("request_hash").and_then(|h| h.as_str()) != Some(self.request_hash) {
            return Err(ApiError::IdempotencyMismatch);
        }
        if stored.get("response").is_some() {
            return replay(&row, self.request_hash).map(Resumed::Replay);
        }
        if row.status != PaymentStatus::Pending
            || row.provider_payment_id.is_some()
            || Utc::now() >= row.created_at + creation_window()
        {
            return Err(ApiError::Conflict(format!(
                "payment {} of this Idempotency-Key was not created within {} minutes ({}); \
                 send the request again with a new Idempotency-Key",
                row.id,
                CREATION_WINDOW.as_secs() / 60,
                row.status
            )));
        }
        let telegram_id = users::Entity::find_by_id(row.user_id)
            .one(&self.state.db)
            .await?
            .and_then(|u| TelegramUserId::parse(u.telegram_id).ok())
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("payment {} has no user", row.id)))?;
        let tariff = tariffs::Entity::find_by_id(row.tariff_id)
            .one(&self.state.db)
            .await?
            .ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("payment {} has no tariff", row.id))
            })?;
        Ok(Resumed::Unfinished(Box::new(Intent {
            payment: row,
            telegram_id,
            tariff,
            request_hash: self.request_hash.to_owned(),
            reused: false,
        })))
    }

    /// Validates the request and prices it: the Telegram user, the provider, the tariff and
    /// the amount.
    async fn validate(
        &self,
    ) -> Result<(TelegramUserId, ProviderId, tariffs::Model, Money), ApiError> {
        let body = self.body;
        let telegram_id = TelegramUserId::parse(body.telegram_id)
            .map_err(|e| ApiError::Unprocessable(format!("telegram_id: {e}")))?;
        let provider_id = ProviderId::from_str(&body.provider)
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        let provider = self
            .state
            .payments
            .provider(provider_id)
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        let descriptor = provider.descriptor();
        let tariff = tariffs::Entity::find()
            .filter(tariffs::Column::Code.eq(body.tariff_code.as_str()))
            .filter(tariffs::Column::Active.eq(true))
            .one(&self.state.db)
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
        let amount = provider
            .quote(&tariff, currencies)
            .map_err(ApiError::Unprocessable)?;
        Ok((telegram_id, provider_id, tariff, amount))
    }

    /// Transaction 1: upserts the user, locks it, and answers with the customer's open
    /// checkout of the same tariff, provider and currency if there is one; otherwise checks
    /// the cap on open payments and stores the payment row as an intent (and, for crypto,
    /// reserves its invoice). See [`crate::checkout`].
    async fn record_intent(&self) -> Result<Recorded, ApiError> {
        let (telegram_id, provider_id, tariff, amount) = self.validate().await?;
        let now = Utc::now().trunc_subsecs(6);
        let txn = service_kit::db::begin_write(&self.state.db).await?;
        let user_id = upsert_user(&txn, telegram_id, self.body).await?;
        let policy = &self.state.checkout;
        policy.lock_user(&txn, user_id).await?;
        let wanted = checkout::Wanted {
            user_id,
            tariff_id: tariff.id,
            provider: provider_id,
            price: &amount,
        };
        if let Some(open) = policy.find_reusable(&txn, &wanted, now).await? {
            txn.commit().await?;
            tracing::info!(payment_id = %open.id, telegram_id = %telegram_id, "a press answered with the customer's open checkout");
            let request_hash = open
                .metadata
                .get(META_IDEMPOTENCY)
                .and_then(|m| m.get("request_hash"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            return Ok(Recorded::Reuse(Intent {
                payment: open,
                telegram_id,
                tariff,
                request_hash,
                reused: true,
            }));
        }
        let open = policy.count_open(&txn, user_id, now).await?;
        if open >= u64::from(policy.max_open) {
            return Err(ApiError::TooManyOpenPayments {
                limit: policy.max_open,
            });
        }
        let mut payment = payments::Model {
            id: PaymentId::new().into_inner(),
            user_id,
            tariff_id: tariff.id,
            provider: provider_id.as_str().to_owned(),
            amount_minor: amount.minor(),
            currency: amount.currency(),
            status: PaymentStatus::Pending,
            provider_payment_id: None,
            idempotency_key: self.key.to_owned(),
            confirmation_url: None,
            failure_reason: None,
            metadata: serde_json::json!({
                META_CREATION: CREATION_IN_PROGRESS,
                META_IDEMPOTENCY: { "request_hash": self.request_hash },
            }),
            created_at: now,
            updated_at: now,
            completed_at: None,
            expires_at: None,
            refunded_minor: 0,
            flagged: false,
            flag_reason: None,
            // Reconciliation looks at it once the creation window has passed.
            next_check_at: Some(now + creation_window()),
            check_attempts: 0,
        };
        let active: payments::ActiveModel = payment.clone().into();
        if let Err(error) = payments::Entity::insert(active.reset_all())
            .exec_without_returning(&txn)
            .await
        {
            return match error.sql_err() {
                Some(SqlErr::UniqueConstraintViolation(_)) => Ok(Recorded::KeyTaken),
                _ => Err(ApiError::internal(error)),
            };
        }
        // The row goes in first: what the provider reserves may refer to it (crypto: the
        // invoice's unique amount, price + tag, is what the payer is asked for).
        let asked = self
            .state
            .payments
            .provider(provider_id)
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?
            .reserve_checkout(&txn, payment.payment_id(), amount)
            .await
            .map_err(checkout_error)?;
        if asked != amount {
            payment.amount_minor = asked.minor();
            payment.currency = asked.currency();
            payments::ActiveModel {
                id: Set(payment.id),
                amount_minor: Set(payment.amount_minor),
                currency: Set(payment.currency),
                ..Default::default()
            }
            .update(&txn)
            .await?;
        }
        match txn.commit().await {
            Ok(()) => {}
            Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Ok(Recorded::KeyTaken);
            }
            Err(error) => return Err(ApiError::internal(error)),
        }
        tracing::debug!(payment_id = %payment.id, "payment intent stored");
        Ok(Recorded::New(Intent {
            payment,
            telegram_id,
            tariff,
            request_hash: self.request_hash.to_owned(),
            reused: false,
        }))
    }

    /// The enabled provider a stored payment went through.
    fn provider_of(
        &self,
        payment: &payments::Model,
    ) -> Result<&std::sync::Arc<dyn PaymentProvider>, ProviderError> {
        let id = ProviderId::from_str(&payment.provider)
            .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
        self.state.payments.provider(id)
    }

    /// Asks the provider for the intent's payment, outside any transaction. The provider's
    /// idempotence key derives from the payment id, so asking again for the same row gives the
    /// same provider payment. Crypto calls nobody: its invoice was reserved with the intent.
    async fn call_provider(&self, intent: &Intent) -> Result<CreatedPayment, CallFailure> {
        let payment = &intent.payment;
        let provider_id = ProviderId::from_str(&payment.provider)
            .map_err(|e| CallFailure::Refused(ApiError::Unprocessable(e.to_string())))?;
        let request = self.provider_request(intent);
        let answer = self
            .state
            .payments
            .create_payment(provider_id, &request)
            .await;
        let created = answer.map_err(|error| match error {
            e if e.is_result_unknown() => {
                CallFailure::Unfinished(ApiError::ProviderUnavailable(format!(
                    "{e}; payment {} is not created yet: repeat the request with the same \
                     Idempotency-Key to finish it",
                    payment.id
                )))
            }
            e @ ProviderError::Client(_) => CallFailure::Unfinished(ApiError::internal(e)),
            e => CallFailure::Refused(provider_error(e)),
        })?;
        if created.amount != payment.amount() {
            tracing::error!(
                payment_id = %payment.id,
                expected = %payment.amount(),
                actual = %created.amount,
                "provider changed the amount"
            );
            return Err(CallFailure::Refused(ApiError::ProviderRejected(format!(
                "the provider answered with amount {}, expected {}",
                created.amount,
                payment.amount()
            ))));
        }
        Ok(created)
    }

    fn provider_request(&self, intent: &Intent) -> CreatePaymentRequest {
        CreatePaymentRequest {
            payment_id: intent.payment.payment_id(),
            amount: intent.payment.amount(),
            description: format!("VPN subscription: {}", intent.tariff.title),
            metadata: [
                ("telegram_id".to_owned(), intent.telegram_id.to_string()),
                ("tariff_code".to_owned(), intent.tariff.code.clone()),
            ]
            .into(),
            return_url: self.body.return_url.clone(),
            receipt_email: self.body.email.clone(),
        }
    }

    /// Transaction 2: stores the provider's answer on the intent row — a conditional UPDATE
    /// that only the first writer wins — with the `payment.created` outbox row and its log
    /// row. A request that loses the race answers with the winner's stored response.
    async fn finish(
        &self,
        intent: &Intent,
        created: CreatedPayment,
    ) -> Result<HttpResponse, ApiError> {
        let now = Utc::now().trunc_subsecs(6);
        let confirmation = created
            .confirmation
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(ApiError::internal)?;
        let mut model = intent.payment.clone();
        model.provider_payment_id = Some(created.provider_payment_id.clone());
        model.confirmation_url = match &created.confirmation {
            Some(payment_core::Confirmation::Redirect { url }) => Some(url.clone()),
            _ => None,
        };
        model.expires_at = created.expires_at;
        model.updated_at = now;
        // Back on reconciliation's normal schedule (the first check after creation).
        model.next_check_at = None;
        model.check_attempts = 0;
        model.metadata = serde_json::json!({
            "confirmation": confirmation,
            "test": created.test,
        });
        let response = serde_json::to_string(&PaymentView::new(
            &model,
            intent.telegram_id.into_inner(),
            intent.tariff.code.clone(),
        ))
        .map_err(ApiError::internal)?;
        model.metadata[META_IDEMPOTENCY] = serde_json::json!({
            "request_hash": intent.request_hash,
            "status": 201,
            "response": response,
        });

        let txn = service_kit::db::begin_write(&self.state.db).await?;
        let stored = payments::Entity::update_many()
            .set(payments::ActiveModel {
                provider_payment_id: Set(model.provider_payment_id.clone()),
                confirmation_url: Set(model.confirmation_url.clone()),
                expires_at: Set(model.expires_at),
                updated_at: Set(model.updated_at),
                next_check_at: Set(None),
                check_attempts: Set(0),
                metadata: Set(model.metadata.clone()),
                ..Default::default()
            })
            .filter(unfinished(model.id))
            .exec(&txn)
            .await?;
        if stored.rows_affected == 0 {
            // Finished by another request (or expired meanwhile): answer with what is stored.
            drop(txn);
            if intent.reused {
                return self.reused_after_race(intent).await;
            }
            let row = self.existing().await?.ok_or(ApiError::InFlight)?;
            return match self.resume(row).await? {
                Resumed::Replay(response) => Ok(response),
                Resumed::Unfinished(_) => Err(ApiError::InFlight),
            };
        }
        let payment_id = model.payment_id();
        let event = PaymentCreated {
            payment: PaymentSnapshot {
                payment_id: model.id,
                user_id: model.user_id,
                telegram_id: intent.telegram_id.into_inner(),
                tariff_code: intent.tariff.code.clone(),
                provider: model.provider.clone(),
                amount_minor: model.amount_minor,
                currency: model.currency.code().to_owned(),
            },
        };
        let envelope = Envelope::new(&event, model.id, None)?.with_occurred_at(now);
        messaging::outbox::enqueue(&txn, &envelope).await?;
        domain::payment_log::record(
            &txn,
            domain::payment_log::Entry {
                event_type: PaymentCreated::EVENT_TYPE,
                payment: &model,
                status: model.status.as_str(),
                message: format!("payment created: {}", created.amount),
                metadata: serde_json::json!({
                    "event_id": envelope.event_id,
                    "telegram_id": intent.telegram_id.into_inner(),
                    "tariff_code": intent.tariff.code,
                    "provider_payment_id": model.provider_payment_id,
                    "expires_at": model.expires_at,
                    "test": created.test,
                }),
                at: now,
            },
        )
        .await?;
        txn.commit().await?;
        crate::observability::payment_created(&model.provider, model.currency.code());
        tracing::info!(
            %payment_id,
            provider = %model.provider,
            amount = %created.amount,
            "payment created"
        );
        self.state.outbox_nudge.notify_one();
        if intent.reused {
            return reused(&Intent {
                payment: model,
                telegram_id: intent.telegram_id,
                tariff: intent.tariff.clone(),
                request_hash: intent.request_hash.clone(),
                reused: true,
            });
        }
        Ok(HttpResponse::Created()
            .content_type("application/json")
            .insert_header((header::LOCATION, format!("/api/payments/{payment_id}")))
            .body(response))
    }

    /// A reused half-made checkout that the press which made it (or another) finished
    /// first: answers with the row as it is now, if finished.
    async fn reused_after_race(&self, intent: &Intent) -> Result<HttpResponse, ApiError> {
        let row = payments::Entity::find_by_id(intent.payment.id)
            .one(&self.state.db)
            .await?
            .ok_or(ApiError::InFlight)?;
        if row.status != PaymentStatus::Pending || row.provider_payment_id.is_none() {
            return Err(ApiError::InFlight);
        }
        reused(&Intent {
            payment: row,
            telegram_id: intent.telegram_id,
            tariff: intent.tariff.clone(),
            request_hash: intent.request_hash.clone(),
            reused: true,
        })
    }

    /// Marks the intent row `failed` with the provider's refusal as the key's stored answer,
    /// so a repeat gets the same error instead of asking again. Returns that error.
    async fn refuse(&self, intent: &Intent, error: ApiError) -> ApiError {
        let payment = &intent.payment;
        tracing::warn!(payment_id = %payment.id, %error, "the provider refused the payment");
        let body = serde_json::json!({ "error": error.code(), "message": error.to_string() });
        let metadata = serde_json::json!({
            META_CREATION: CREATION_REFUSED,
            META_IDEMPOTENCY: {
                "request_hash": intent.request_hash,
                "status": actix_web::ResponseError::status_code(&error).as_u16(),
                "response": body.to_string(),
            },
        });
        let now = Utc::now().trunc_subsecs(6);
        let stored = async {
            let txn = service_kit::db::begin_write(&self.state.db).await?;
            let updated = payments::Entity::update_many()
                .set(payments::ActiveModel {
                    status: Set(PaymentStatus::Failed),
                    failure_reason: Set(Some(error.to_string())),
                    metadata: Set(metadata),
                    updated_at: Set(now),
                    next_check_at: Set(None),
                    ..Default::default()
                })
                .filter(unfinished(payment.id))
                .exec(&txn)
                .await?;
            if updated.rows_affected == 1 {
                // Nobody can pay a refused payment: what its checkout reserved is free at once.
                if let Ok(provider) = self.provider_of(payment) {
                    provider
                        .release_checkout(&txn, payment.payment_id(), now)
                        .await
                        .map_err(|e| DbErr::Custom(e.to_string()))?;
                }
                let failed = payments::Model {
                    status: PaymentStatus::Failed,
                    ..payment.clone()
                };
                domain::payment_log::record(
                    &txn,
                    domain::payment_log::Entry {
                        event_type: "payment.create_refused",
                        payment: &failed,
                        status: failed.status.as_str(),
                        message: format!("the provider refused the payment: {error}"),
                        metadata: body.clone(),
                        at: now,
                    },
                )
                .await?;
            }
            txn.commit().await
        };
        if let Err(db) = stored.await {
            tracing::error!(payment_id = %payment.id, error = %db, "could not record the refusal; the payment stays unfinished");
        }
        error
    }
}

/// The answer to a press that found the customer's open, finished checkout: the payment as
/// it is now (200, [`CHECKOUT_REUSED`]).
fn reused(intent: &Intent) -> Result<HttpResponse, ApiError> {
    let view = PaymentView::new(
        &intent.payment,
        intent.telegram_id.into_inner(),
        intent.tariff.code.clone(),
    );
    Ok(HttpResponse::Ok()
        .insert_header((CHECKOUT_REUSED, "true"))
        .insert_header((
            header::LOCATION,
            format!("/api/payments/{}", intent.payment.id),
        ))
        .json(view))
}

/// The intent row `id` while its creation is unfinished: the condition of the UPDATE that
/// stores the outcome, so only the first writer stores one.
fn unfinished(id: Uuid) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(payments::Column::Id.eq(id))
        .add(payments::Column::Status.eq(PaymentStatus::Pending))
        .add(payments::Column::ProviderPaymentId.is_null())
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
    let mut response = HttpResponse::build(status);
    response
        .content_type("application/json")
        .insert_header((REPLAYED, "true"));
    if status.is_success() {
        response.insert_header((header::LOCATION, format!("/api/payments/{}", existing.id)));
    }
    Ok(response.body(body))
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

fn checkout_error(error: CheckoutError) -> ApiError {
    match error {
        CheckoutError::Database(e) => ApiError::internal(anyhow::anyhow!(e)),
        CheckoutError::Contended(_) => ApiError::InFlight,
        CheckoutError::Refused(reason) => ApiError::Unprocessable(reason),
    }
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
    /// The refund was not made through the provider's API (fiat Telegram payments): the
    /// access is revoked and the money must be returned in the payment provider's cabinet.
    outside_provider: bool,
    /// What the admin still has to do, when something is left (see `outside_provider`).
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_action: Option<String>,
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
            outside_provider: r.outside_provider,
            admin_action: r.outside_provider.then(|| {
                format!(
                    "Telegram has no refund for card payments: the access is revoked and this \
                     refund is recorded as made outside Telegram. Return {} to the payer in \
                     the payment provider's cabinet (Telegram charge {}).",
                    r.amount(),
                    r.provider_refund_id.as_deref().unwrap_or("unknown")
                )
            }),
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

/// The key a caller repeats to settle the refund stored under `stored`: the API key it sent,
/// or for a refund asked without one, its own `refund-<id>` key.
fn repeat_key(stored: &str) -> &str {
    stored.strip_prefix("api:").unwrap_or(stored)
}

/// Record the intent, call the provider, record the result — one refund at a time per
/// payment.
///
/// 1. A short transaction re-reads the payment (row-locked on PostgreSQL; SQLite's write
///    transaction is exclusive), answers 409 naming a refund still in progress, checks what is
///    left to refund and stores the refund as `pending`. The partial unique index
///    `uq_refunds_one_pending` (one pending refund per payment) backs this up.
/// 2. The provider is asked outside any transaction (our refund id is its idempotence key).
/// 3. A short transaction records the answer with the notice for the worker.
///
/// Fiat Telegram payments have no Bot API refund: step 2 is skipped, the refund is recorded
/// as made outside Telegram, and the answer tells the admin to return the money in the
/// payment provider's cabinet; the worker revokes the access as for any refund.
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
    if let Some(key) = &key
        && let Some(existing) = refund_by_key(&state, key.as_str()).await?
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
        let others = recorded_refunds(&state.db, payment.id, Some(existing.id)).await?;
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
    let (provider_id, provider_payment_id) = refund_target(&payment)?;
    let route = state
        .payments
        .provider(provider_id)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?
        .refund_route(&PaymentRef {
            payment_id: payment.payment_id(),
            provider_payment_id: provider_payment_id.clone(),
            amount: payment.amount(),
        });
    let outside = route == RefundRoute::OutsideProvider;
    let (payment, record, already) =
        record_refund_intent(&state, payment.id, &body, key.as_ref(), outside).await?;
    if outside {
        return settle_outside(&state, &payment, record, &provider_payment_id).await;
    }
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

/// A refund stored under the caller's key (`api:<key>`), or a key-less refund repeated with
/// its own `refund-<id>` key.
async fn refund_by_key(state: &AppState, key: &str) -> Result<Option<refunds::Model>, ApiError> {
    let mut keys = vec![format!("api:{key}")];
    if key.starts_with("refund-") {
        keys.push(key.to_owned());
    }
    Ok(refunds::Entity::find()
        .filter(refunds::Column::IdempotencyKey.is_in(keys))
        .one(&state.db)
        .await?)
}

/// The 409 for a payment whose refund `pending` is still in progress.
fn refund_in_progress(pending: &refunds::Model) -> ApiError {
    ApiError::RefundInProgress {
        refund_id: pending.id,
        key: repeat_key(&pending.idempotency_key).to_owned(),
    }
}

async fn pending_refund<C: ConnectionTrait>(
    conn: &C,
    payment_id: Uuid,
) -> Result<Option<refunds::Model>, DbErr> {
    refunds::Entity::find()
        .filter(refunds::Column::PaymentId.eq(payment_id))
        .filter(refunds::Column::Status.eq(RefundStatus::Pending))
        .one(conn)
        .await
}

/// Transaction 1 of a refund: stores it as `pending` unless another refund of the payment is
/// in progress (409 naming it), after checking what is left to refund. Returns the payment as
/// read in the transaction, the refund and what other refunds had taken.
async fn record_refund_intent(
    state: &AppState,
    payment_id: Uuid,
    body: &RefundBody,
    key: Option<&IdempotencyKey>,
    outside: bool,
) -> Result<(payments::Model, refunds::Model, i64), ApiError> {
    let txn = service_kit::db::begin_write(&state.db).await?;
    // Refunds of one payment queue here on PostgreSQL for the few milliseconds of this
    // transaction; SQLite's write transaction is exclusive already (the lock is not emitted).
    let payment = payments::Entity::find_by_id(payment_id)
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no payment {payment_id}")))?;
    if let Some(pending) = pending_refund(&txn, payment.id).await? {
        return Err(refund_in_progress(&pending));
    }
    if !matches!(
        payment.status,
        PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
    ) {
        return Err(ApiError::Conflict(format!(
            "only succeeded payments can be refunded; this one is {}",
            payment.status
        )));
    }
    // Refunds not yet applied by the worker count too, so two refunds cannot exceed the
    // payment.
    let already = payment
        .refunded_minor
        .max(recorded_refunds(&txn, payment.id, None).await?);
    let amount_minor = body.amount_minor.unwrap_or(payment.amount_minor - already);
    if amount_minor <= 0 {
        return Err(ApiError::Unprocessable(
            "nothing to refund: the amount must be positive".into(),
        ));
    }
    if outside && (already != 0 || amount_minor != payment.amount_minor) {
        return Err(ApiError::Unprocessable(
            "Telegram card payments are refunded in full only (the access is revoked)".into(),
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
        idempotency_key: key.map_or_else(|| format!("refund-{refund_id}"), |k| format!("api:{k}")),
        failure_reason: None,
        created_at: now,
        updated_at: now,
        completed_at: None,
        outside_provider: outside,
    };
    // Recorded before the call: a crash afterwards leaves a pending refund to settle, not a
    // refund nobody knows about.
    let active: refunds::ActiveModel = record.clone().into();
    let inserted = refunds::Entity::insert(active.reset_all())
        .exec_without_returning(&txn)
        .await;
    let committed = match inserted {
        Ok(_) => txn.commit().await,
        Err(error) => Err(error),
    };
    if let Err(error) = committed {
        if !matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
            return Err(ApiError::internal(error));
        }
        // The last guard: another refund of the payment (partial unique index), or the same
        // key, got in first.
        return Err(match pending_refund(&state.db, payment.id).await? {
            Some(pending) => refund_in_progress(&pending),
            None => ApiError::InFlight,
        });
    }
    Ok((payment, record, already))
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

/// The refunds of `payment_id` recorded as pending or succeeded, in minor units; `except`
/// leaves out the refund being settled.
async fn recorded_refunds<C: ConnectionTrait>(
    conn: &C,
    payment_id: Uuid,
    except: Option<Uuid>,
) -> Result<i64, ApiError> {
    let mut query = refunds::Entity::find()
        .filter(refunds::Column::PaymentId.eq(payment_id))
        .filter(refunds::Column::Status.is_in([RefundStatus::Pending, RefundStatus::Succeeded]));
    if let Some(except) = except {
        query = query.filter(refunds::Column::Id.ne(except));
    }
    Ok(query.all(conn).await?.iter().map(|r| r.amount_minor).sum())
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
                "{error}; refund {refund_id} stays pending: repeat the request with the same \
                 Idempotency-Key ({}) to settle it",
                repeat_key(&record.idempotency_key)
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

/// A fiat Telegram refund: nobody is asked (there is no Bot API refund for fiat). The refund
/// is recorded as succeeded outside Telegram, with a `refunded_payment` notice so the worker
/// moves the payment and `payment.refunded` revokes the access; the answer tells the admin to
/// return the money in the payment provider's cabinet.
async fn settle_outside(
    state: &AppState,
    payment: &payments::Model,
    record: refunds::Model,
    provider_payment_id: &str,
) -> Result<HttpResponse, ApiError> {
    let charge = telegram_charge_id(state, payment.id)
        .await?
        .unwrap_or_else(|| format!("outside-{}", record.id));
    let done = ProviderRefund {
        provider_refund_id: charge,
        status: RefundStatus::Succeeded,
        amount: record.amount(),
    };
    let refund_id = record.id;
    let updated = record_refund(
        state,
        record,
        provider_payment_id,
        ProviderId::Telegram,
        &done,
    )
    .await?;
    tracing::info!(%refund_id, payment_id = %payment.id, "fiat Telegram refund recorded as made outside Telegram");
    Ok(refund_response(&updated))
}

/// The `telegram_payment_charge_id` of the payment's stored `successful_payment`.
async fn telegram_charge_id(
    state: &AppState,
    payment_id: Uuid,
) -> Result<Option<String>, ApiError> {
    use payment_core::providers::telegram::transformers::{PaymentMessage, payment_message};
    let notices = provider_notifications::Entity::find()
        .filter(provider_notifications::Column::PaymentId.eq(payment_id))
        .filter(provider_notifications::Column::Provider.eq(ProviderId::Telegram.as_str()))
        .all(&state.db)
        .await?;
    Ok(notices
        .iter()
        .find_map(|n| match payment_message(n.body.as_bytes()) {
            Ok(PaymentMessage::Successful(paid)) => Some(paid.telegram_payment_charge_id),
            _ => None,
        }))
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
    // The provider words the notice and its own parser names it, so its real notification of
    // this refund gets the same key; a provider that parses no notices of ours gets a key of
    // our own.
    let provider = state.payments.provider(provider_id).ok();
    let txn = service_kit::db::begin_write(&state.db).await?;
    let mut active: refunds::ActiveModel = record.clone().into();
    active.provider_refund_id = Set(Some(done.provider_refund_id.clone()));
    active.status = Set(done.status);
    active.updated_at = Set(now);
    if done.status.is_terminal() {
        active.completed_at = Set(Some(now));
    }
    let updated = active.update(&txn).await?;
    let notice = RefundNotice {
        provider_payment_id,
        refund: done,
        total_refunded: Money::new(
            refunded_so_far(&txn, record.payment_id).await?,
            done.amount.currency(),
        ),
        at: now,
    };
    let body = match &provider {
        Some(provider) => provider.refund_notice(&notice),
        None => payment_core::provider::generic_refund_notice(&notice),
    };
    let dedupe_key = match &provider {
        Some(provider) => provider
            .process_webhook(body.as_bytes())
            .await
            .map(|parsed| parsed.dedupe_key)
            .ok(),
        None => None,
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

/// The sum of the payment's succeeded refunds (this transaction's writes included).
async fn refunded_so_far(txn: &DatabaseTransaction, payment_id: Uuid) -> Result<i64, DbErr> {
    let amounts: Vec<i64> = refunds::Entity::find()
        .select_only()
        .column(refunds::Column::AmountMinor)
        .filter(refunds::Column::PaymentId.eq(payment_id))
        .filter(refunds::Column::Status.eq(RefundStatus::Succeeded))
        .into_tuple()
        .all(txn)
        .await?;
    Ok(amounts.iter().sum())
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
