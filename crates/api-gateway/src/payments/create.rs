//! Creating a payment: record the intent, ask the provider, record the answer.

use std::str::FromStr;
use std::sync::Arc;

use actix_web::HttpResponse;
use actix_web::http::{StatusCode, header};
use chrono::{SubsecRound, Utc};
use domain::entities::payments::{
    CREATION_IN_PROGRESS, CREATION_REFUSED, CREATION_WINDOW, META_CREATION,
};
use domain::entities::{payment_promos, payments, promo_codes, tariffs, users};
use domain::money::{Currency, Money};
use domain::promo;
use domain::{IdempotencyKey, PaymentId, PaymentStatus, TelegramUserId};
use messaging::events::{PaymentCreated, PaymentSnapshot};
use messaging::{Envelope, Event};
use payment_core::{
    CheckoutError, CreatePaymentRequest, CreatedPayment, PaymentProvider, ProviderError,
    ProviderId, Recurring,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait,
    DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QuerySelect,
};
use serde::{Deserialize, Serialize};

use super::views::PaymentView;
use super::{CHECKOUT_REUSED, provider_error};
use crate::checkout;
use crate::error::ApiError;
use crate::idempotency::{self, Fingerprint, Lease, META_IDEMPOTENCY, Record, Taken};
use crate::state::AppState;

fn creation_window() -> chrono::Duration {
    chrono::Duration::from_std(CREATION_WINDOW).unwrap_or(chrono::Duration::MAX)
}

/// The bot's request. Serialised again (fields in this order) to hash it, so two bodies that
/// differ only in whitespace or key order are the same request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
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
    /// The payer agreed to automatic renewal: the provider saves the method (if it can).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    autopay: bool,
    /// A promo code (issue 23): checked in the intent transaction; its discounted price is
    /// the payment's amount, and the payment is recorded with it (`payment_promos`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    promo_code: Option<String>,
}

/// A promo code checked for this checkout.
struct AppliedPromo {
    row: promo_codes::Model,
    list_price: Money,
    priced: promo::Priced,
}

/// Record the intent, call the provider, record the result — no transaction is open while
/// the provider is asked.
///
/// 1. A short transaction stores the payment row (`pending`, no provider id, marked
///    [`CREATION_IN_PROGRESS`]) under the UNIQUE idempotency key, held by this request (see
///    [`crate::idempotency`]); a crypto invoice is reserved in it too.
/// 2. The provider is asked with the row's payment id, from which its idempotence key derives.
/// 3. A short transaction stores the answer with a conditional UPDATE (only the first writer
///    wins) together with the `payment.created` outbox row and its log row.
///
/// A repeat of the key replays a finished row; while the row is held by the request working
/// on it the repeat gets 409, and once given back (no definite answer, or the request was
/// dropped) the repeat finishes it by asking the provider again with the same payment id — the
/// provider answers with the payment it made.
pub(super) async fn create(
    state: &AppState,
    key: &IdempotencyKey,
    body: &CreateBody,
) -> Result<HttpResponse, ApiError> {
    let request = Create {
        state,
        body,
        key: idempotency::stored_key(key),
        request_hash: Fingerprint::of(body)?,
    };
    let (intent, lease) = match request.start().await? {
        Started::Answered(response) => return Ok(response),
        Started::Unfinished(intent, lease) => (intent, lease),
    };
    match request.call_provider(&intent).await {
        Ok(created) => {
            let answer = request.finish(&intent, created).await;
            if let (Ok(_), Some(lease)) = (&answer, lease) {
                lease.done();
            }
            answer
        }
        Err(CallFailure::Unfinished(error)) => {
            tracing::warn!(payment_id = %intent.payment.id, %error, "no definite answer from the provider; the payment stays unfinished");
            // A repeat of the key may finish it at once.
            if let Some(lease) = lease {
                lease.release().await;
            }
            Err(error)
        }
        Err(CallFailure::Refused(error)) => {
            let error = request.refuse(&intent, error).await;
            if let Some(lease) = lease {
                lease.release().await;
            }
            Err(error)
        }
    }
}

/// One create request, between parsing and answering.
struct Create<'a> {
    state: &'a AppState,
    body: &'a CreateBody,
    /// The key as stored.
    key: String,
    request_hash: Fingerprint,
}

/// Where a request starts: with the key's answer, or with an unfinished row to ask the
/// provider about (held by this request, unless it is another key's open checkout).
enum Started {
    Answered(HttpResponse),
    Unfinished(Box<Intent>, Option<Lease>),
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
    request_hash: Fingerprint,
    /// Found as the customer's open checkout by a press with another key.
    reused: bool,
}

/// What transaction 1 did.
enum Recorded {
    /// A new intent row, held by this request.
    New(Intent, Lease),
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
    /// The key's answer if it has one, else the unfinished row to continue: the key's own
    /// (held by this request) or the customer's open checkout.
    async fn start(&self) -> Result<Started, ApiError> {
        // The key's look-up is the first statement of transaction 1: a new key, the common
        // case, goes on in it.
        let txn = service_kit::db::begin_write(&self.state.db).await?;
        if let Some(row) = self.existing(&txn).await? {
            drop(txn);
            return self.take_up(row).await;
        }
        match self.record_intent(txn).await? {
            Recorded::New(intent, lease) => Ok(Started::Unfinished(Box::new(intent), Some(lease))),
            // Another key's half-made checkout: provider idempotence makes asking again safe.
            Recorded::Reuse(intent) if intent.payment.is_half_made() => {
                Ok(Started::Unfinished(Box::new(intent), None))
            }
            Recorded::Reuse(intent) => reused(&intent).map(Started::Answered),
            // Another request stored the key a moment ago: continue from its row.
            Recorded::KeyTaken => {
                let row = self
                    .existing(&self.state.db)
                    .await?
                    .ok_or(ApiError::InFlight)?;
                self.take_up(row).await
            }
        }
    }

    /// A stored row of the key: its answer replayed, or the row taken over unless another
    /// request holds it (409 `request_in_flight`).
    async fn take_up(&self, row: payments::Model) -> Result<Started, ApiError> {
        let intent = match self.resume(row).await? {
            Resumed::Replay(response) => return Ok(Started::Answered(response)),
            Resumed::Unfinished(intent) => intent,
        };
        match Lease::take(&self.state.db, intent.payment.id).await? {
            Taken::Held(lease) => Ok(Started::Unfinished(intent, Some(lease))),
            Taken::Busy => Err(ApiError::InFlight),
            // Answered meanwhile.
            Taken::Finished => {
                let row = self
                    .existing(&self.state.db)
                    .await?
                    .ok_or(ApiError::InFlight)?;
                match self.resume(row).await? {
                    Resumed::Replay(response) => Ok(Started::Answered(response)),
                    Resumed::Unfinished(_) => Err(ApiError::InFlight),
                }
            }
        }
    }

    async fn existing(
        &self,
        conn: &impl ConnectionTrait,
    ) -> Result<Option<payments::Model>, ApiError> {
        Ok(payments::Entity::find()
            .filter(payments::Column::IdempotencyKey.eq(self.key.as_str()))
            .one(conn)
            .await?)
    }

    /// A finished (or refused) row is replayed; an unfinished one is continued while its
    /// creation window is open.
    async fn resume(&self, row: payments::Model) -> Result<Resumed, ApiError> {
        let record = Record::of_payment(&row).ok_or_else(|| {
            ApiError::Conflict("this Idempotency-Key belongs to another payment".into())
        })?;
        idempotency::check(&record.request_hash, &self.request_hash)?;
        if let Some(response) = record.replay(|| location(row.id)) {
            return Ok(Resumed::Replay(response));
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
            request_hash: self.request_hash.clone(),
            reused: false,
        })))
    }

    /// Validates the request and prices it: the Telegram user, the provider, the tariff and
    /// the amount.
    async fn validate(
        &self,
        conn: &impl ConnectionTrait,
    ) -> Result<
        (
            TelegramUserId,
            Arc<dyn PaymentProvider>,
            tariffs::Model,
            Money,
        ),
        ApiError,
    > {
        let body = self.body;
        let telegram_id = TelegramUserId::parse(body.telegram_id)
            .map_err(|e| ApiError::Unprocessable(format!("telegram_id: {e}")))?;
        let provider_id = ProviderId::from_str(&body.provider)
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        let provider = self
            .state
            .payments
            .provider(provider_id.clone())
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?
            .clone();
        let descriptor = provider.descriptor();
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
        let amount = provider
            .quote(&tariff, currencies)
            .map_err(ApiError::Unprocessable)?;
        Ok((telegram_id, provider, tariff, amount))
    }

    /// Transaction 1 (`txn`, begun by the key's look-up): validates the request (the tariff),
    /// upserts the user, locks it, and answers with the customer's open checkout of the same
    /// tariff, provider and currency if there is one; otherwise checks the cap on open
    /// payments and stores the payment row as an intent (and, for crypto, reserves its
    /// invoice). See [`crate::checkout`].
    async fn record_intent(&self, txn: DatabaseTransaction) -> Result<Recorded, ApiError> {
        let (telegram_id, provider, tariff, list_price) = self.validate(&txn).await?;
        let now = Utc::now().trunc_subsecs(6);
        let payment_id = PaymentId::new();
        let lease = Lease::fresh(&self.state.db, payment_id);
        let profile = Profile {
            username: &self.body.username,
            first_name: &self.body.first_name,
            language_code: &self.body.language_code,
        };
        let user_id = upsert_and_lock_user(&txn, telegram_id, profile).await?.id;
        let policy = &self.state.checkout;
        // Under the customer's lock: their uses of a once-per-customer code are settled.
        let promo = match self.body.promo_code.as_deref() {
            Some(code) => Some(
                apply_promo(
                    &txn,
                    code,
                    user_id,
                    &tariff,
                    provider.as_ref(),
                    list_price,
                    now,
                )
                .await?,
            ),
            None => None,
        };
        let amount = promo.as_ref().map_or(list_price, |p| p.priced.amount);
        let wanted = checkout::Wanted {
            user_id,
            tariff_id: tariff.id,
            provider: provider.as_ref(),
            price: &amount,
            promo: promo.as_ref().map(|p| p.row.id),
        };
        let found = policy
            .look(&txn, &self.state.payments, &wanted, now)
            .await?;
        if let Some(open) = found.reusable {
            txn.commit().await?;
            tracing::info!(payment_id = %open.id, telegram_id = %telegram_id, "a press answered with the customer's open checkout");
            let request_hash = Record::of_payment(&open)
                .map(|record| record.request_hash)
                .unwrap_or_default();
            return Ok(Recorded::Reuse(Intent {
                payment: open,
                telegram_id,
                tariff,
                request_hash,
                reused: true,
            }));
        }
        if found.open >= u64::from(policy.max_open) {
            return Err(ApiError::TooManyOpenPayments {
                limit: policy.max_open,
            });
        }
        let mut payment = payments::Model {
            id: payment_id,
            user_id,
            tariff_id: tariff.id,
            provider: provider.id(),
            amount_minor: amount.minor(),
            currency: amount.currency(),
            status: PaymentStatus::Pending,
            provider_payment_id: None,
            idempotency_key: self.key.clone(),
            confirmation_url: None,
            failure_reason: None,
            metadata: serde_json::json!({
                META_CREATION: CREATION_IN_PROGRESS,
                META_IDEMPOTENCY: lease.stamp(Record::open(self.request_hash.clone()), now).to_json(),
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
            return if idempotency::key_taken(&error) {
                lease.done();
                Ok(Recorded::KeyTaken)
            } else {
                Err(ApiError::internal(error))
            };
        }
        if let Some(applied) = &promo {
            payment_promos::ActiveModel {
                payment_id: Set(payment.id),
                promo_code_id: Set(applied.row.id),
                user_id: Set(user_id),
                code: Set(applied.row.code.clone()),
                list_price_minor: Set(applied.list_price.minor()),
                discount_minor: Set(applied.priced.discount_minor),
                extra_days: Set(applied.priced.extra_days),
                created_at: Set(now),
                used_at: Set(None),
                returned_at: Set(None),
            }
            .insert(&txn)
            .await?;
        }
        // The row goes in first: what the provider reserves may refer to it (crypto: the
        // invoice's unique amount, price + tag, is what the payer is asked for).
        let asked = provider
            .reserve_checkout(&txn, payment.id, amount)
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
            Err(error) if idempotency::key_taken(&error) => {
                lease.done();
                return Ok(Recorded::KeyTaken);
            }
            Err(error) => return Err(ApiError::internal(error)),
        }
        tracing::debug!(payment_id = %payment.id, "payment intent stored");
        Ok(Recorded::New(
            Intent {
                payment,
                telegram_id,
                tariff,
                request_hash: self.request_hash.clone(),
                reused: false,
            },
            lease,
        ))
    }

    /// The enabled provider a stored payment went through.
    fn provider_of(
        &self,
        payment: &payments::Model,
    ) -> Result<&Arc<dyn PaymentProvider>, ProviderError> {
        self.state.payments.provider(payment.provider.clone())
    }

    /// Asks the provider for the intent's payment, outside any transaction. The provider's
    /// idempotence key derives from the payment id, so asking again for the same row gives the
    /// same provider payment. Crypto calls nobody: its invoice was reserved with the intent.
    async fn call_provider(&self, intent: &Intent) -> Result<CreatedPayment, CallFailure> {
        let payment = &intent.payment;
        let provider_id = payment.provider.clone();
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
            payment_id: intent.payment.id,
            amount: intent.payment.amount(),
            description: format!("VPN subscription: {}", intent.tariff.title),
            metadata: [
                ("telegram_id".to_owned(), intent.telegram_id.to_string()),
                ("tariff_code".to_owned(), intent.tariff.code.clone()),
            ]
            .into(),
            return_url: self.body.return_url.clone(),
            receipt_email: self.body.email.clone(),
            recurring: if self.body.autopay {
                Recurring::SaveMethod
            } else {
                Recurring::No
            },
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
        model.metadata[META_IDEMPOTENCY] = Record::answered(
            intent.request_hash.clone(),
            StatusCode::CREATED,
            response.clone(),
        )
        .to_json();

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
            let row = self
                .existing(&self.state.db)
                .await?
                .ok_or(ApiError::InFlight)?;
            return match self.resume(row).await? {
                Resumed::Replay(response) => Ok(response),
                Resumed::Unfinished(_) => Err(ApiError::InFlight),
            };
        }
        let payment_id = model.id;
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
        messaging::outbox::enqueue_logged(
            &txn,
            &envelope,
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
        crate::observability::payment_created(model.provider.as_str(), model.currency.code());
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
            .insert_header((header::LOCATION, location(model.id)))
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
            META_IDEMPOTENCY: Record::answered(
                intent.request_hash.clone(),
                actix_web::ResponseError::status_code(&error),
                body.to_string(),
            )
            .to_json(),
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
                        .release_checkout(&txn, payment.id, PaymentStatus::Failed, now)
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

/// Checks the promo code `code` for this checkout (see [`domain::promo`]) and prices it;
/// a refusal is 422 `promo_rejected` and the transaction is dropped, so nothing changes.
async fn apply_promo(
    txn: &DatabaseTransaction,
    code: &str,
    user_id: i64,
    tariff: &tariffs::Model,
    provider: &dyn PaymentProvider,
    list_price: Money,
    now: chrono::DateTime<Utc>,
) -> Result<AppliedPromo, ApiError> {
    let row = promo::find(txn, code)
        .await?
        .ok_or(ApiError::PromoRejected(promo::Refusal::Unknown))?;
    let provider_id = provider.id();
    if let Some(refusal) = promo::refusal(
        txn,
        &row,
        Some(user_id),
        Some(&tariff.code),
        Some(provider_id.as_str()),
        now,
    )
    .await?
    {
        return Err(ApiError::PromoRejected(refusal));
    }
    let benefit = promo::Benefit::of(&row).ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "promo code {} has no valid benefit",
            row.code
        ))
    })?;
    let priced = promo::price(benefit, list_price).map_err(ApiError::PromoRejected)?;
    Ok(AppliedPromo {
        row,
        list_price,
        priced,
    })
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
        .insert_header((header::LOCATION, location(intent.payment.id)))
        .json(view))
}

/// The intent row `id` while its creation is unfinished: the condition of the UPDATE that
/// stores the outcome, so only the first writer stores one.
fn unfinished(id: PaymentId) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(payments::Column::Id.eq(id))
        .add(payments::Column::Status.eq(PaymentStatus::Pending))
        .add(payments::Column::ProviderPaymentId.is_null())
}

/// Where the payment `id` is read.
fn location(id: PaymentId) -> String {
    format!("/api/payments/{id}")
}

/// What the bot knows of a Telegram user, kept on their `users` row.
pub(crate) struct Profile<'a> {
    pub username: &'a Option<String>,
    pub first_name: &'a Option<String>,
    pub language_code: &'a Option<String>,
}

/// The `users` row of `telegram_id`, created on first sight and locked for the rest of `txn`
/// (`SELECT … FOR UPDATE`; see [`crate::checkout`]); names are kept up to date.
pub(crate) async fn upsert_and_lock_user(
    txn: &DatabaseTransaction,
    telegram_id: TelegramUserId,
    body: Profile<'_>,
) -> Result<users::Model, ApiError> {
    let locked = || {
        users::Entity::find()
            .filter(users::Column::TelegramId.eq(telegram_id.into_inner()))
            .lock_exclusive()
            .one(txn)
    };
    // A returning customer (the common case) is one locking read; a new one is inserted, and
    // the row it inserts is its transaction's until commit. Of two first presses at once, the
    // second waits on the unique index, inserts nothing and locks the first one's row.
    let user = match locked().await? {
        Some(user) => user,
        None => {
            let row = users::ActiveModel {
                id: NotSet,
                telegram_id: Set(telegram_id.into_inner()),
                username: Set(body.username.clone()),
                first_name: Set(body.first_name.clone()),
                language_code: Set(body.language_code.clone()),
                created_at: Set(Utc::now()),
            };
            let inserted = users::Entity::insert(row)
                .on_conflict_do_nothing_on([users::Column::TelegramId])
                .exec_with_returning(txn)
                .await;
            match service_kit::db::inserted(inserted)? {
                Some(user) => return Ok(user),
                None => locked().await?.ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("user vanished after upsert"))
                })?,
            }
        }
    };
    // Names change; keep the latest the bot saw, never erase one with a missing value.
    let changed = [
        (body.username, &user.username),
        (body.first_name, &user.first_name),
        (body.language_code, &user.language_code),
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
        return Ok(active.update(txn).await?);
    }
    Ok(user)
}

fn checkout_error(error: CheckoutError) -> ApiError {
    match error {
        CheckoutError::Database(e) => ApiError::internal(anyhow::anyhow!(e)),
        CheckoutError::Contended(_) => ApiError::InFlight,
        CheckoutError::Refused(reason) => ApiError::Unprocessable(reason),
    }
}
