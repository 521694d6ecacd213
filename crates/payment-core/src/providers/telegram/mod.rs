//! Telegram Payments: Telegram Stars (`XTR`) and, when `TELEGRAM_PAYMENT_PROVIDER_TOKEN` is
//! set, fiat invoices through the payment provider connected in @BotFather.
//!
//! The payer pays inside Telegram, so `create_payment` calls nothing: its confirmation is the
//! invoice payload (our payment id) that the bot puts into `sendInvoice`. The money is proven
//! by `successful_payment`, which the bot stores in the inbox before it confirms the update.
//! For Stars the Bot API itself answers the status look-up and the refund:
//! `getStarTransactions` lists the bot's Star transactions (the payment is the incoming one
//! carrying our payload; its refund is an outgoing one with the same id), and
//! `refundStarPayment` returns the Stars. Fiat payments have no such API: their status comes
//! from the stored `successful_payment` ([`payment_from_notification`]) and refunds are made
//! in the provider's dashboard.
//!
//! Star subscriptions: a subscription invoice link (`subscription_period`, 30 days) is paid
//! like any invoice, and Telegram then charges the subscriber every 30 days on its own; each
//! such charge is a `successful_payment` with `is_recurring` and a new charge id, carrying the
//! first payment's payload. [`PaymentProvider::recurring_charge`] reads it as a
//! [`RecurringCharge`]: the worker records a renewal payment whose `provider_payment_id` is the
//! charge id, and its status is the Star transaction with that id.
//!
//! Telegram invoices never expire by themselves, so ours do: a payment is payable for
//! `TELEGRAM_INVOICE_TTL_MINUTES` (default 60) after it was created — the bot's pre-checkout
//! answer refuses it afterwards, and reconciliation expires it.

pub mod transformers;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use domain::env::Vars;
use domain::money::{Currency, Money};
use domain::{PaymentId, PaymentStatus, RefundStatus};
use outbound::{Classify, Exchange, HttpRetry, Transient, Transport, Verdict};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::ProviderId;
use crate::error::{
    Mismatch, ProviderError, RefundRefusal, Rejection, RejectionCode, SettingsError,
    TransientFailure, WebhookError,
};
use crate::provider::{
    Confirmation, CreatePaymentRequest, CreatedPayment, PaymentProvider, PaymentRef,
    ProviderDescriptor, ProviderPayment, ProviderRefund, RecurringCharge, RefundNotice,
    RefundRequest, RefundRoute, StatusQuery,
};
use crate::providers::crypto::AttachedDatabase;
use crate::webhook::{WebhookNotification, WebhookRequest, WebhookSubject};
use transformers::{PaymentMessage, StarTransactions, TransactionPartner};

/// Telegram's Bot API.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";
/// `getStarTransactions` pages (of 100) searched for a payment by default.
pub const DEFAULT_SCAN_PAGES: u32 = 50;
/// How long an invoice is payable by default.
pub const DEFAULT_INVOICE_TTL: Duration = Duration::from_secs(60 * 60);
const PAGE: i64 = 100;

static STARS: &[Currency] = &[Currency::Xtr];
static STARS_AND_RUB: &[Currency] = &[Currency::Xtr, Currency::Rub];

/// This provider's id: Telegram Payments: Stars, or fiat through a BotFather payment provider.
pub const ID: ProviderId = ProviderId::from_static("telegram");

/// Enabled exactly when `TELEGRAM_BOT_TOKEN` is set (and `TELEGRAM_PAYMENTS_ENABLED` is not
/// false).
#[derive(Debug, Clone)]
pub struct TelegramSettings {
    /// `TELEGRAM_BOT_TOKEN`.
    pub bot_token: SecretString,
    /// `TELEGRAM_API_URL` (default [`DEFAULT_API_URL`]), without `/bot<token>`.
    pub api_url: String,
    /// `TELEGRAM_PAYMENT_PROVIDER_TOKEN`: enables fiat (RUB) invoices.
    pub provider_token: Option<SecretString>,
    /// `TELEGRAM_TIMEOUT_MS` (default 10 000).
    pub timeout: Duration,
    /// `TELEGRAM_STAR_SCAN_PAGES` (default [`DEFAULT_SCAN_PAGES`]).
    pub scan_pages: u32,
    /// `TELEGRAM_INVOICE_TTL_MINUTES` (default 60): how long after its creation a payment may
    /// be paid; the pre-checkout answer refuses it afterwards.
    pub invoice_ttl: Duration,
    /// Where Star transactions already read are recorded (see
    /// [`TelegramSettings::with_database`]); not from the environment.
    pub database: Option<AttachedDatabase>,
}

impl TelegramSettings {
    pub fn new(bot_token: impl Into<String>) -> Self {
        Self {
            bot_token: SecretString::from(bot_token.into()),
            api_url: DEFAULT_API_URL.to_owned(),
            provider_token: None,
            timeout: Duration::from_secs(10),
            scan_pages: DEFAULT_SCAN_PAGES,
            invoice_ttl: DEFAULT_INVOICE_TTL,
            database: None,
        }
    }

    /// Star payments are then found incrementally: each look-up reads only the transactions
    /// added since the last one and records them in `db` (tables `star_transactions`,
    /// `star_scan_cursors`). Without a database each look-up pages from the newest end.
    pub fn with_database(mut self, db: DatabaseConnection) -> Self {
        self.database = Some(AttachedDatabase(db));
        self
    }

    pub(crate) fn from_vars(vars: &Vars) -> Result<Option<Self>, SettingsError> {
        let Some(token) = vars.get("TELEGRAM_BOT_TOKEN") else {
            return Ok(None);
        };
        if vars.flag("TELEGRAM_PAYMENTS_ENABLED")? == Some(false) {
            return Ok(None);
        }
        let mut s = Self::new(token);
        if let Some(url) = vars.url("TELEGRAM_API_URL")? {
            s.api_url = url.to_owned();
        }
        s.provider_token = vars.secret("TELEGRAM_PAYMENT_PROVIDER_TOKEN");
        if let Some(ms) = vars.parse::<u64>("TELEGRAM_TIMEOUT_MS")? {
            s.timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(pages) = vars.parse::<u32>("TELEGRAM_STAR_SCAN_PAGES")? {
            s.scan_pages = pages.max(1);
        }
        if let Some(minutes) = vars.parse::<u64>("TELEGRAM_INVOICE_TTL_MINUTES")? {
            if minutes == 0 {
                return Err(SettingsError::Invalid {
                    var: "TELEGRAM_INVOICE_TTL_MINUTES",
                    reason: "an invoice must be payable for at least a minute".to_owned(),
                });
            }
            s.invoice_ttl = Duration::from_secs(minutes.saturating_mul(60));
        }
        Ok(Some(s))
    }
}

/// A Star payment as `getStarTransactions` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StarPayment {
    pub telegram_payment_charge_id: String,
    pub user_id: i64,
    pub amount: i64,
    pub paid_at: Option<DateTime<Utc>>,
    pub refunded: bool,
}

pub struct TelegramProvider {
    settings: TelegramSettings,
    descriptor: ProviderDescriptor,
    transport: Transport,
}

impl std::fmt::Debug for TelegramProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramProvider")
            .field("api_url", &self.settings.api_url)
            .field("currencies", &self.descriptor.currencies)
            .finish_non_exhaustive()
    }
}

impl TelegramProvider {
    pub fn new(settings: TelegramSettings) -> Result<Self, SettingsError> {
        // One attempt (a refund is not repeated blindly); one budget for the process's
        // Telegram calls (TELEGRAM_API_LIMIT).
        let transport = Transport::new(
            "telegram",
            HttpRetry::once(settings.timeout),
            Some(&ratelimit::TELEGRAM),
        )
        .map_err(|e| SettingsError::Invalid {
            var: "TELEGRAM_API_URL",
            reason: e.to_string(),
        })?;
        let descriptor = ProviderDescriptor {
            id: ID,
            title: "Telegram",
            currencies: if settings.provider_token.is_some() {
                STARS_AND_RUB
            } else {
                STARS
            },
            supports_refunds: true,
        };
        Ok(Self {
            settings,
            descriptor,
            transport,
        })
    }

    /// Calls a Bot API method; Telegram's `{"ok":false}` answers become typed errors.
    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, ProviderError> {
        let url = format!(
            "{}/bot{}/{method}",
            self.settings.api_url,
            self.settings.bot_token.expose_secret()
        );
        let (status, bytes) = self
            .transport
            .send(&BotApiAnswers, |http| http.post(&url).json(&params))
            .await?;
        let answer: transformers::ApiAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::MalformedResponse(format!("{method}: {e}")))?;
        if !answer.ok {
            let http_status = answer.error_code.unwrap_or(status);
            return Err(ProviderError::Rejected(Rejection {
                http_status,
                code: match http_status {
                    400 => RejectionCode::InvalidRequest,
                    401 => RejectionCode::InvalidCredentials,
                    403 => RejectionCode::Forbidden,
                    404 => RejectionCode::NotFound,
                    _ => RejectionCode::Unknown,
                },
                description: answer.description,
                parameter: None,
                error_id: None,
            }));
        }
        serde_json::from_value(answer.result.unwrap_or(Value::Null))
            .map_err(|e| ProviderError::MalformedResponse(format!("{method}: {e}")))
    }

    async fn star_page(&self, offset: i64, limit: i64) -> Result<StarTransactions, ProviderError> {
        self.call(
            "getStarTransactions",
            json!({"offset": offset, "limit": limit}),
        )
        .await
    }

    /// How many Star transactions the bot has. The list is oldest first and has no count, so
    /// probe forward exponentially for an empty page, then bisect with one-item pages.
    async fn star_count(&self) -> Result<i64, ProviderError> {
        let (mut lo, mut hi) = (0_i64, PAGE);
        while !self.star_page(hi, 1).await?.transactions.is_empty() {
            lo = hi;
            hi = hi.saturating_mul(2);
            if hi >= 1 << 40 {
                break;
            }
        }
        // The first empty offset lies in (lo, hi]: page(lo) is non-empty unless lo = 0.
        if self.star_page(lo, 1).await?.transactions.is_empty() {
            return Ok(lo);
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.star_page(mid, 1).await?.transactions.is_empty() {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(hi)
    }

    /// Finds the Star payment whose invoice payload is `payload` — the first one carrying it,
    /// since a subscription's later charges carry it too — or whose charge id is `payload` (a
    /// subscription's renewal), and whether it was refunded: from the recorded transactions
    /// after reading the new ones when a database is attached
    /// ([`TelegramSettings::with_database`]), else by a scan from the newest end (which meets a
    /// subscription's latest charge first; every service attaches its database).
    pub async fn find_star_payment(
        &self,
        payload: &str,
    ) -> Result<Option<StarPayment>, ProviderError> {
        match &self.settings.database {
            Some(AttachedDatabase(db)) => {
                let ledger = StarLedger {
                    db,
                    bot: self.bot_id(),
                };
                let cursor = ledger.cursor().await.map_err(database_unknown)?;
                let start = match cursor {
                    Some(scanned) => scanned,
                    // First use: the newest `scan_pages` pages, as the scan would read.
                    None => (self.star_count().await? - PAGE * i64::from(self.settings.scan_pages))
                        .max(0),
                };
                self.read_new_star_transactions(&ledger, start).await?;
                ledger.find(payload).await.map_err(database_unknown)
            }
            None => self.scan_star_payments(payload).await,
        }
    }

    /// The bot's id (the token's part before `:`), which keys its scan cursor.
    fn bot_id(&self) -> String {
        let token = self.settings.bot_token.expose_secret();
        token.split(':').next().unwrap_or_default().to_owned()
    }

    /// Reads the transactions from offset `start` to the end of the list, recording each and
    /// moving the cursor after every page (a later look-up, here or in another process,
    /// continues from there; recording a transaction twice changes nothing).
    async fn read_new_star_transactions(
        &self,
        ledger: &StarLedger<'_>,
        start: i64,
    ) -> Result<(), ProviderError> {
        let mut offset = start;
        loop {
            let page = self.star_page(offset, PAGE).await?;
            let read = i64::try_from(page.transactions.len()).unwrap_or(PAGE);
            for tx in page.transactions {
                ledger.record(tx).await.map_err(database_unknown)?;
            }
            offset += read;
            ledger.advance(offset).await.map_err(database_unknown)?;
            if read < PAGE {
                return Ok(());
            }
        }
    }

    /// Searches newest first — a payment being checked is recent — through at most
    /// `scan_pages` pages of 100; a refund is newer than its payment, so it is seen first.
    async fn scan_star_payments(
        &self,
        payload: &str,
    ) -> Result<Option<StarPayment>, ProviderError> {
        let mut refunds: Vec<String> = Vec::new();
        let mut end = self.star_count().await?;
        for _ in 0..self.settings.scan_pages {
            if end <= 0 {
                break;
            }
            let start = (end - PAGE).max(0);
            let page = self.star_page(start, end - start).await?;
            for tx in page.transactions.into_iter().rev() {
                if matches!(tx.receiver, Some(TransactionPartner::User { .. })) {
                    refunds.push(tx.id);
                    continue;
                }
                if let Some(TransactionPartner::User {
                    user,
                    invoice_payload,
                }) = &tx.source
                    && (invoice_payload.as_deref() == Some(payload) || tx.id == payload)
                {
                    return Ok(Some(StarPayment {
                        refunded: refunds.contains(&tx.id),
                        telegram_payment_charge_id: tx.id,
                        user_id: user.id,
                        amount: tx.amount,
                        paid_at: Utc.timestamp_opt(tx.date, 0).single(),
                    }));
                }
            }
            end = start;
        }
        Ok(None)
    }

    fn check_stars(&self, payment: &PaymentRef, what: &'static str) -> Result<(), ProviderError> {
        if payment.amount.currency() == Currency::Xtr {
            Ok(())
        } else {
            Err(ProviderError::Unsupported(what))
        }
    }
}

/// The Bot API's answers for the transport: 429, 5xx and no answer leave the result unknown;
/// any other answer is read (`{"ok":false}` is a typed refusal). Errors never print the URL,
/// which holds the token.
struct BotApiAnswers;

impl Classify for BotApiAnswers {
    type Output = (u16, Vec<u8>);
    type Error = ProviderError;

    fn classify(&self, exchange: Exchange) -> Verdict<(u16, Vec<u8>), ProviderError> {
        match exchange {
            Exchange::Failed(e) => Verdict::Retry(Transient::from_wire(&e.without_url())),
            Exchange::Answered(answer) if answer.status == 429 || answer.status >= 500 => {
                Verdict::Retry(Transient::from_status(&answer))
            }
            Exchange::Answered(answer) => Verdict::Done((answer.status, answer.body)),
        }
    }

    fn exhausted(&self, attempts: u32, last: Transient) -> ProviderError {
        ProviderError::ResultUnknown {
            attempts,
            last: last.failure,
        }
    }
}

#[async_trait]
impl PaymentProvider for TelegramProvider {
    fn descriptor(&self) -> &ProviderDescriptor {
        &self.descriptor
    }

    /// No update ever says an invoice was abandoned: pending at the deadline is expired.
    fn expires_pending_at_deadline(&self) -> bool {
        true
    }

    /// A Star subscription's later charge (`is_recurring`, not `is_first_recurring`).
    fn recurring_charge(&self, notice: &[u8]) -> Option<RecurringCharge> {
        let Ok(PaymentMessage::Successful(paid)) = transformers::payment_message(notice) else {
            return None;
        };
        if !paid.is_renewal() {
            return None;
        }
        let currency = paid.currency.parse::<Currency>().ok()?;
        Some(RecurringCharge {
            provider_payment_id: paid.telegram_payment_charge_id,
            renews: paid.invoice_payload,
            amount: Money::new(paid.total_amount, currency),
        })
    }

    /// A `refunded_payment` names the charge it returns, which is a renewal's own id.
    fn notice_charge(&self, notice: &[u8]) -> Option<String> {
        match transformers::payment_message(notice) {
            Ok(PaymentMessage::Refunded(refunded)) => Some(refunded.telegram_payment_charge_id),
            _ => None,
        }
    }

    /// A fiat refund the admin made in the payment provider's cabinet carries the payment's
    /// `telegram_payment_charge_id` (from its stored `successful_payment`), like a Stars refund.
    async fn refund_made_outside(
        &self,
        payment: &domain::entities::payments::Model,
        refund_id: uuid::Uuid,
        amount: Money,
    ) -> Result<ProviderRefund, ProviderError> {
        let charge = match &self.settings.database {
            Some(AttachedDatabase(db)) => stored_messages(db, payment)
                .await
                .map_err(database_unknown)?
                .iter()
                .find_map(|n| match transformers::payment_message(n.body.as_bytes()) {
                    Ok(transformers::PaymentMessage::Successful(paid)) => {
                        Some(paid.telegram_payment_charge_id)
                    }
                    _ => None,
                }),
            None => None,
        };
        Ok(ProviderRefund {
            provider_refund_id: charge.unwrap_or_else(|| format!("outside-{refund_id}")),
            status: domain::RefundStatus::Succeeded,
            amount,
        })
    }

    /// A `refunded_payment` message, as Telegram sends one after `refundStarPayment`.
    fn refund_notice(&self, notice: &RefundNotice<'_>) -> String {
        refund_notice_body(notice.provider_payment_id, notice.refund)
    }

    /// Fiat payments (a currency other than Stars): no Bot API method refunds them.
    fn refund_route(&self, payment: &PaymentRef) -> RefundRoute {
        if payment.amount.currency() == Currency::Xtr {
            RefundRoute::Provider
        } else {
            RefundRoute::OutsideProvider
        }
    }

    /// Stars through the Bot API (`getStarTransactions`); card payments (a provider token)
    /// through the stored `successful_payment`, the only proof Telegram gives of them (no Bot
    /// API method looks up or refunds a fiat payment, reference §2b): the notification's body,
    /// or for reconciliation the payment's stored Telegram messages, checked for payload,
    /// payer, currency and amount against the payment.
    async fn current_status(
        &self,
        query: StatusQuery<'_>,
    ) -> Result<ProviderPayment, ProviderError> {
        let payment = query.payment;
        if payment.currency == Currency::Xtr {
            return self.get_payment_status(&query.reference()?).await;
        }
        let reference = PaymentRef {
            payment_id: payment.id,
            provider_payment_id: payment
                .provider_payment_id
                .clone()
                .unwrap_or_else(|| payment.id.to_string()),
            amount: payment.amount(),
        };
        let Some(AttachedDatabase(db)) = &self.settings.database else {
            return Err(ProviderError::Unsupported(
                "card payment status without a database (TelegramSettings::with_database)",
            ));
        };
        let stored = match query.notification {
            Some(row) => vec![row.clone()],
            None => stored_messages(db, payment)
                .await
                .map_err(database_unknown)?,
        };
        let Some(proof) = stored.first() else {
            // Nothing paid (yet): `successful_payment` is the only way we learn of a payment.
            return Ok(ProviderPayment {
                provider_payment_id: reference.provider_payment_id,
                status: PaymentStatus::Pending,
                amount: reference.amount,
                refunded: Money::new(0, reference.amount.currency()),
                paid_at: None,
                failure_reason: None,
                confirmation: None,
                test: false,
                saved_method: None,
            });
        };
        let payer = payer(db, payment).await?;
        payment_from_notification(&reference, payer, proof.body.as_bytes())
    }

    async fn create_payment(
        &self,
        request: &CreatePaymentRequest,
    ) -> Result<CreatedPayment, ProviderError> {
        let amount = request.amount;
        if !self.descriptor.currencies.contains(&amount.currency()) {
            return Err(ProviderError::InvalidRequest(format!(
                "Telegram Payments here charge in {:?}, not {}",
                self.descriptor
                    .currencies
                    .iter()
                    .map(|c| c.code())
                    .collect::<Vec<_>>(),
                amount.currency()
            )));
        }
        if amount.minor() <= 0 || u32::try_from(amount.minor()).is_err() {
            return Err(ProviderError::InvalidRequest(format!(
                "amount {amount} is out of range for a Telegram invoice"
            )));
        }
        let payload = request.payment_id.to_string();
        let ttl =
            chrono::Duration::from_std(self.settings.invoice_ttl).unwrap_or(chrono::Duration::MAX);
        Ok(CreatedPayment {
            provider_payment_id: payload.clone(),
            status: PaymentStatus::Pending,
            amount,
            confirmation: Some(Confirmation::Invoice { payload }),
            expires_at: Utc::now().checked_add_signed(ttl),
            test: false,
        })
    }

    async fn get_payment_status(
        &self,
        payment: &PaymentRef,
    ) -> Result<ProviderPayment, ProviderError> {
        self.check_stars(
            payment,
            "status look-up of fiat Telegram payments (the stored successful_payment is the proof)",
        )?;
        let zero = Money::new(0, Currency::Xtr);
        let Some(found) = self.find_star_payment(&payment.provider_payment_id).await? else {
            return Ok(ProviderPayment {
                provider_payment_id: payment.provider_payment_id.clone(),
                status: PaymentStatus::Pending,
                amount: payment.amount,
                refunded: zero,
                paid_at: None,
                failure_reason: None,
                confirmation: None,
                test: false,
                saved_method: None,
            });
        };
        let paid = Money::new(found.amount, Currency::Xtr);
        if paid != payment.amount {
            return Err(Mismatch::Amount {
                expected: payment.amount,
                actual: paid,
            }
            .into());
        }
        Ok(ProviderPayment {
            provider_payment_id: payment.provider_payment_id.clone(),
            status: if found.refunded {
                PaymentStatus::Refunded
            } else {
                PaymentStatus::Succeeded
            },
            amount: paid,
            refunded: if found.refunded { paid } else { zero },
            paid_at: found.paid_at,
            failure_reason: None,
            confirmation: None,
            test: false,
            saved_method: None,
        })
    }

    async fn verify_webhook(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
        // Telegram sends updates to the bot, never to the gateway's webhook endpoint.
        Err(WebhookError::ForbiddenSource(request.peer))
    }

    async fn process_webhook(&self, body: &[u8]) -> Result<WebhookNotification, WebhookError> {
        notification_from_body(body)
    }

    async fn refund(&self, request: &RefundRequest) -> Result<ProviderRefund, ProviderError> {
        let payment = &request.payment;
        self.check_stars(
            payment,
            "refund of fiat Telegram payments (refund them in the payment provider's dashboard)",
        )?;
        if request.payment_status != PaymentStatus::Succeeded {
            return Err(RefundRefusal::NotSucceeded(request.payment_status).into());
        }
        if request.amount.currency() != payment.amount.currency() {
            return Err(RefundRefusal::CurrencyMismatch {
                payment: payment.amount.currency(),
                refund: request.amount.currency(),
            }
            .into());
        }
        if request.amount != payment.amount || request.already_refunded.minor() != 0 {
            return Err(ProviderError::InvalidRequest(
                "Telegram Stars are refunded in full only".to_owned(),
            ));
        }
        let Some(found) = self.find_star_payment(&payment.provider_payment_id).await? else {
            return Err(ProviderError::Rejected(Rejection {
                http_status: 404,
                code: RejectionCode::NotFound,
                description: Some(format!(
                    "no Star transaction carries the payload {}",
                    payment.payment_id
                )),
                parameter: None,
                error_id: None,
            }));
        };
        let done = ProviderRefund {
            provider_refund_id: found.telegram_payment_charge_id.clone(),
            status: RefundStatus::Succeeded,
            amount: request.amount,
        };
        if found.refunded {
            return Ok(done);
        }
        let answer: Result<bool, ProviderError> = self
            .call(
                "refundStarPayment",
                json!({
                    "user_id": found.user_id,
                    "telegram_payment_charge_id": found.telegram_payment_charge_id,
                }),
            )
            .await;
        match answer {
            Ok(_) => Ok(done),
            // An earlier call whose answer was lost did it already.
            Err(ProviderError::Rejected(rejection))
                if rejection
                    .description
                    .as_deref()
                    .is_some_and(|d| d.contains("CHARGE_ALREADY_REFUNDED")) =>
            {
                Ok(done)
            }
            Err(error) => Err(error),
        }
    }
}

/// The bot's Star transactions as read so far (tables `star_transactions`,
/// `star_scan_cursors`): payments by invoice payload, a refund as a flag on the payment it
/// returns (it carries the payment's id).
struct StarLedger<'a> {
    db: &'a DatabaseConnection,
    bot: String,
}

impl StarLedger<'_> {
    async fn cursor(&self) -> Result<Option<i64>, DbErr> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                self.db.get_database_backend(),
                "SELECT scanned FROM star_scan_cursors WHERE bot = $1",
                [self.bot.clone().into()],
            ))
            .await?;
        row.map(|r| r.try_get::<i64>("", "scanned")).transpose()
    }

    /// Moves the cursor forward to `scanned` (never back: a slower concurrent reader does not
    /// undo a faster one).
    async fn advance(&self, scanned: i64) -> Result<(), DbErr> {
        self.db
            .execute_raw(Statement::from_sql_and_values(
                self.db.get_database_backend(),
                "INSERT INTO star_scan_cursors (bot, scanned) VALUES ($1, $2) \
                 ON CONFLICT (bot) DO UPDATE SET scanned = CASE \
                 WHEN excluded.scanned > star_scan_cursors.scanned THEN excluded.scanned \
                 ELSE star_scan_cursors.scanned END",
                [self.bot.clone().into(), scanned.into()],
            ))
            .await?;
        Ok(())
    }

    async fn record(&self, tx: transformers::StarTransaction) -> Result<(), DbErr> {
        let backend = self.db.get_database_backend();
        let statement = if matches!(tx.receiver, Some(TransactionPartner::User { .. })) {
            // A refund: the payment it returns carries the same id.
            Statement::from_sql_and_values(
                backend,
                "INSERT INTO star_transactions (id, amount, refunded) VALUES ($1, $2, TRUE) \
                 ON CONFLICT (id) DO UPDATE SET refunded = TRUE",
                [tx.id.into(), tx.amount.into()],
            )
        } else if let Some(TransactionPartner::User {
            user,
            invoice_payload: Some(payload),
        }) = tx.source
        {
            Statement::from_sql_and_values(
                backend,
                "INSERT INTO star_transactions (id, invoice_payload, user_id, amount, paid_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
                 invoice_payload = excluded.invoice_payload, user_id = excluded.user_id, \
                 amount = excluded.amount, paid_at = excluded.paid_at",
                [
                    tx.id.into(),
                    payload.into(),
                    user.id.into(),
                    tx.amount.into(),
                    tx.date.into(),
                ],
            )
        } else {
            // Not a payment of ours (Fragment, ads, …).
            return Ok(());
        };
        self.db.execute_raw(statement).await?;
        Ok(())
    }

    async fn find(&self, payload: &str) -> Result<Option<StarPayment>, DbErr> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                self.db.get_database_backend(),
                "SELECT id, user_id, amount, paid_at, refunded FROM star_transactions \
                 WHERE invoice_payload = $1 OR id = $1 ORDER BY paid_at, id LIMIT 1",
                [payload.into()],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let paid_at: Option<i64> = row.try_get("", "paid_at")?;
        Ok(Some(StarPayment {
            telegram_payment_charge_id: row.try_get("", "id")?,
            user_id: row
                .try_get::<Option<i64>>("", "user_id")?
                .unwrap_or_default(),
            amount: row.try_get("", "amount")?,
            paid_at: paid_at.and_then(|secs| Utc.timestamp_opt(secs, 0).single()),
            refunded: row.try_get("", "refunded")?,
        }))
    }
}

/// A database error while reading what Telegram told us: no answer yet, ask again.
/// The payment's stored Telegram messages, newest first (a refund notice is newer than the
/// payment it refunds).
async fn stored_messages(
    db: &DatabaseConnection,
    payment: &domain::entities::payments::Model,
) -> Result<Vec<domain::entities::provider_notifications::Model>, DbErr> {
    use domain::entities::provider_notifications;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
    provider_notifications::Entity::find()
        .filter(provider_notifications::Column::PaymentId.eq(payment.id))
        .filter(provider_notifications::Column::Provider.eq(ID.as_str()))
        .order_by_desc(provider_notifications::Column::Id)
        .all(db)
        .await
}

/// The Telegram id of the payment's customer.
async fn payer(
    db: &DatabaseConnection,
    payment: &domain::entities::payments::Model,
) -> Result<i64, ProviderError> {
    use sea_orm::EntityTrait;
    let user = domain::entities::users::Entity::find_by_id(payment.user_id)
        .one(db)
        .await
        .map_err(database_unknown)?
        .ok_or_else(|| {
            ProviderError::InvalidRequest(format!(
                "payment {} names user {} who does not exist",
                payment.id, payment.user_id
            ))
        })?;
    Ok(user.telegram_id)
}

fn database_unknown(error: DbErr) -> ProviderError {
    ProviderError::ResultUnknown {
        attempts: 1,
        last: TransientFailure::Connection(format!("database: {error}")),
    }
}

/// Reads a stored `successful_payment` / `refunded_payment` update (the inbox body the bot
/// writes, or one the gateway builds with [`refund_notice_body`]).
pub fn notification_from_body(body: &[u8]) -> Result<WebhookNotification, WebhookError> {
    match transformers::payment_message(body).map_err(WebhookError::MalformedBody)? {
        PaymentMessage::Successful(paid) => Ok(WebhookNotification {
            provider: ID,
            event: "successful_payment".to_owned(),
            dedupe_key: payment_dedupe_key(&paid.telegram_payment_charge_id),
            subject: WebhookSubject::Payment {
                payment_id: PaymentId::parse(&paid.invoice_payload).ok(),
                provider_payment_id: paid.invoice_payload,
            },
            claimed_status: Some("succeeded".to_owned()),
        }),
        PaymentMessage::Refunded(refunded) => Ok(WebhookNotification {
            provider: ID,
            event: "refunded_payment".to_owned(),
            dedupe_key: refund_dedupe_key(&refunded.telegram_payment_charge_id),
            subject: WebhookSubject::Refund {
                provider_refund_id: refunded.telegram_payment_charge_id,
                provider_payment_id: refunded.invoice_payload,
            },
            claimed_status: Some("refunded".to_owned()),
        }),
    }
}

/// The inbox key of a `successful_payment`: Telegram's charge id, which it sends once.
pub fn payment_dedupe_key(telegram_payment_charge_id: &str) -> String {
    format!("payment:{telegram_payment_charge_id}")
}

/// The inbox key of a refund of that charge.
pub fn refund_dedupe_key(telegram_payment_charge_id: &str) -> String {
    format!("refund:{telegram_payment_charge_id}")
}

/// A `refunded_payment` message as Telegram sends it after `refundStarPayment`, for a refund
/// made through the admin API (same dedupe key, so Telegram's own message is a duplicate).
pub fn refund_notice_body(provider_payment_id: &str, refund: &ProviderRefund) -> String {
    json!({
        "message": {
            "refunded_payment": {
                "currency": refund.amount.currency().code(),
                "total_amount": refund.amount.minor(),
                "invoice_payload": provider_payment_id,
                "telegram_payment_charge_id": refund.provider_refund_id,
            }
        }
    })
    .to_string()
}

/// The status a stored `successful_payment` proves, checked against `payment` (payload,
/// amount, currency) and its payer (`payer`: the Telegram id of our payment's user, who must
/// be the message's sender) — the status source for fiat Telegram payments, which have no
/// look-up API (reference §2b: the update, received over the bot's own authenticated
/// connection, is the only proof). A `refunded_payment` notice proves a refund.
pub fn payment_from_notification(
    payment: &PaymentRef,
    payer: i64,
    body: &[u8],
) -> Result<ProviderPayment, ProviderError> {
    let message = transformers::payment_message(body).map_err(ProviderError::MalformedResponse)?;
    let update: Value = serde_json::from_slice(body).unwrap_or_default();
    let sent = update.get("message").unwrap_or(&update);
    if matches!(message, PaymentMessage::Successful(_)) {
        let from = sent.pointer("/from/id").and_then(Value::as_i64);
        if from != Some(payer) {
            return Err(Mismatch::Payer {
                expected: payer,
                actual: from,
            }
            .into());
        }
    }
    let paid_at = sent
        .get("date")
        .and_then(Value::as_i64)
        .and_then(|secs| Utc.timestamp_opt(secs, 0).single());
    let (currency, total, payload, refunded) = match &message {
        PaymentMessage::Successful(p) => (&p.currency, p.total_amount, &p.invoice_payload, false),
        PaymentMessage::Refunded(r) => (&r.currency, r.total_amount, &r.invoice_payload, true),
    };
    if *payload != payment.payment_id.to_string() {
        return Err(Mismatch::PaymentId {
            expected: payment.payment_id,
            actual: Some(payload.clone()),
        }
        .into());
    }
    let expected = payment.amount;
    if currency != expected.currency().code() {
        return Err(Mismatch::Currency {
            expected: expected.currency(),
            actual: currency.clone(),
        }
        .into());
    }
    let amount = Money::new(total, expected.currency());
    if amount != expected {
        return Err(Mismatch::Amount {
            expected,
            actual: amount,
        }
        .into());
    }
    Ok(ProviderPayment {
        provider_payment_id: payment.provider_payment_id.clone(),
        status: if refunded {
            PaymentStatus::Refunded
        } else {
            PaymentStatus::Succeeded
        },
        amount,
        refunded: Money::new(if refunded { total } else { 0 }, expected.currency()),
        paid_at,
        failure_reason: None,
        confirmation: None,
        test: false,
        saved_method: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::PaymentSettings;

    fn settings(vars: &[(&str, &str)]) -> Result<PaymentSettings, SettingsError> {
        PaymentSettings::from_vars(&vars.iter().copied().collect())
    }

    #[test]
    fn enabled_by_the_bot_token() {
        assert!(settings(&[]).expect("ok").telegram.is_none());
        let s = settings(&[
            ("TELEGRAM_BOT_TOKEN", "1:x"),
            ("TELEGRAM_API_URL", "http://127.0.0.1:1/"),
        ])
        .expect("ok")
        .telegram
        .expect("enabled");
        assert_eq!(s.api_url, "http://127.0.0.1:1");
        assert!(s.provider_token.is_none());
        assert!(
            !format!("{s:?}").contains("1:x"),
            "the token is not printed"
        );
        assert!(
            settings(&[
                ("TELEGRAM_BOT_TOKEN", "1:x"),
                ("TELEGRAM_PAYMENTS_ENABLED", "false")
            ])
            .expect("ok")
            .telegram
            .is_none()
        );
    }

    fn payment(minor: i64, currency: Currency) -> (PaymentId, PaymentRef) {
        let id = PaymentId::new();
        (
            id,
            PaymentRef {
                payment_id: id,
                provider_payment_id: id.to_string(),
                amount: Money::new(minor, currency),
            },
        )
    }

    #[tokio::test]
    async fn invoices_carry_our_payment_id() {
        let provider = TelegramProvider::new(TelegramSettings::new("1:x")).expect("provider");
        assert_eq!(provider.descriptor().currencies, &[Currency::Xtr]);
        let id = PaymentId::new();
        let request = |amount| CreatePaymentRequest {
            payment_id: id,
            amount,
            description: "VPN".into(),
            metadata: Default::default(),
            return_url: None,
            receipt_email: None,
            recurring: Default::default(),
        };
        let created = provider
            .create_payment(&request(Money::new(150, Currency::Xtr)))
            .await
            .expect("created");
        assert_eq!(
            created.confirmation,
            Some(Confirmation::Invoice {
                payload: id.to_string()
            })
        );
        assert_eq!(created.status, PaymentStatus::Pending);
        let expires = created.expires_at.expect("an invoice expires");
        let ttl = expires - Utc::now();
        assert!(
            ttl > chrono::Duration::minutes(59) && ttl <= chrono::Duration::minutes(60),
            "payable for the default hour: {ttl}"
        );
        let rub = provider
            .create_payment(&request(Money::new(19900, Currency::Rub)))
            .await;
        assert!(
            matches!(rub, Err(ProviderError::InvalidRequest(_))),
            "no provider token"
        );
    }

    /// A Bot API whose bot has `count` Star transactions: payment `i` carries payload `p-i`
    /// from user 1000 + i; the last one refunds payment 7.
    async fn star_api(count: usize) -> wiremock::MockServer {
        let server = wiremock::MockServer::start().await;
        let mut transactions: Vec<Value> = (0..count - 1)
            .map(|i| {
                json!({"id": format!("stx{i}"), "amount": 150, "date": 1_700_000_000 + i,
                    "source": {"type": "user", "user": {"id": 1000 + i, "is_bot": false, "first_name": "U"},
                        "invoice_payload": format!("p-{i}")}})
            })
            .collect();
        transactions.push(json!({"id": "stx7", "amount": 150, "date": 1_800_000_000,
            "receiver": {"type": "user", "user": {"id": 1007, "is_bot": false, "first_name": "U"}}}));
        wiremock::Mock::given(wiremock::matchers::path("/bot1:x/getStarTransactions"))
            .respond_with(move |request: &wiremock::Request| {
                let params: Value = serde_json::from_slice(&request.body).unwrap_or_default();
                let offset = params["offset"].as_u64().unwrap_or(0) as usize;
                let limit = params["limit"].as_u64().unwrap_or(100) as usize;
                let page: Vec<Value> = transactions
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .cloned()
                    .collect();
                wiremock::ResponseTemplate::new(200)
                    .set_body_json(json!({"ok": true, "result": {"transactions": page}}))
            })
            .mount(&server)
            .await;
        server
    }

    #[tokio::test]
    async fn star_payments_are_found_newest_first() {
        let server = star_api(251).await;
        let mut settings = TelegramSettings::new("1:x");
        settings.api_url = server.uri();
        let provider = TelegramProvider::new(settings.clone()).expect("provider");
        assert_eq!(provider.star_count().await.expect("count"), 251);
        let old = provider
            .find_star_payment("p-7")
            .await
            .expect("ok")
            .expect("found");
        assert_eq!(
            (
                old.telegram_payment_charge_id.as_str(),
                old.user_id,
                old.refunded
            ),
            ("stx7", 1007, true)
        );
        let recent = provider
            .find_star_payment("p-249")
            .await
            .expect("ok")
            .expect("found");
        assert!(!recent.refunded);
        assert!(
            provider
                .find_star_payment("nope")
                .await
                .expect("ok")
                .is_none()
        );
        settings.scan_pages = 1;
        let shallow = TelegramProvider::new(settings).expect("provider");
        assert!(
            shallow
                .find_star_payment("p-249")
                .await
                .expect("ok")
                .is_some()
        );
        assert!(
            shallow
                .find_star_payment("p-7")
                .await
                .expect("ok")
                .is_none(),
            "beyond the scan"
        );

        let empty = star_api(1).await;
        let mut settings = TelegramSettings::new("1:x");
        settings.api_url = empty.uri();
        let provider = TelegramProvider::new(settings).expect("provider");
        assert_eq!(provider.star_count().await.expect("count"), 1);
    }

    #[test]
    fn stored_payments_are_checked_against_ours() {
        let (id, ours) = payment(150, Currency::Xtr);
        let body = |amount: i64, payload: &str| {
            json!({"update_id": 1, "message": {"date": 1_767_225_600, "from": {"id": 42},
                "successful_payment": {
                "currency": "XTR", "total_amount": amount, "invoice_payload": payload,
                "telegram_payment_charge_id": "stx1", "provider_payment_charge_id": ""}}})
            .to_string()
        };
        let ok = payment_from_notification(&ours, 42, body(150, &id.to_string()).as_bytes())
            .expect("matches");
        assert_eq!(ok.status, PaymentStatus::Succeeded);
        assert_eq!(ok.paid_at, Utc.timestamp_opt(1_767_225_600, 0).single());
        assert!(matches!(
            payment_from_notification(&ours, 42, body(149, &id.to_string()).as_bytes()),
            Err(ProviderError::Mismatch(Mismatch::Amount { .. }))
        ));
        assert!(matches!(
            payment_from_notification(&ours, 42, body(150, "other").as_bytes()),
            Err(ProviderError::Mismatch(Mismatch::PaymentId { .. }))
        ));
        assert!(
            matches!(
                payment_from_notification(&ours, 43, body(150, &id.to_string()).as_bytes()),
                Err(ProviderError::Mismatch(Mismatch::Payer {
                    expected: 43,
                    actual: Some(42)
                }))
            ),
            "someone else's payment message proves nothing about ours"
        );
        let notice = notification_from_body(body(150, &id.to_string()).as_bytes()).expect("ok");
        assert_eq!(notice.dedupe_key, "payment:stx1");
        assert_eq!(notice.provider_payment_id(), Some(id.to_string().as_str()));
        let refund = ProviderRefund {
            provider_refund_id: "stx1".into(),
            status: RefundStatus::Succeeded,
            amount: Money::new(150, Currency::Xtr),
        };
        let notice =
            notification_from_body(refund_notice_body(&id.to_string(), &refund).as_bytes())
                .expect("ok");
        assert_eq!(notice.dedupe_key, "refund:stx1");
    }
}
