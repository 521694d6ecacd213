//! The consumer: `payment.completed` grants days, `payment.refunded` takes them back,
//! `grant.created` gives the days of a manual grant (an admin's, a trial, a referral bonus)
//! without a payment; each brings the panel in line with the ledger and announces the result
//! (a manual grant's as `grant.activated`: the `subscription.*` events name a payment).
//!
//! No panel call happens inside a database transaction. Each message goes through three
//! steps — record the intent, call the panel, record the result:
//!
//! 1. [`Handler::prepare`], first a short transaction of its own: lock (or create) the
//!    subscription row, write the ledger entry — the grant of `payment.completed`, the
//!    revocation of `payment.refunded`; both are unique per payment, so a repeat writes
//!    nothing — replay the ledger into the desired panel state (an absolute expiry and the
//!    data limit), store it on the subscription row as its intent, and commit.
//! 2. Still in `prepare`, with no transaction open and no row locked: bring the panel to that
//!    state (modify, reset, as [`panel::activate`] and [`panel::shorten`] do). Absolute
//!    values, so repeating the call is harmless. Until the panel has confirmed the user once,
//!    it is first looked for as the panel may spell it ([`Panel::find_user`]); what was found
//!    is recorded in a short transaction — the panel's spelling of the name, and once per
//!    subscription the *adoption decision*: an opening-balance grant carrying the time the
//!    user had left, or nothing when there was no user (so a user we create ourselves is never
//!    mistaken for one we adopt) — then it is adopted ([`panel::adopt`]: missing protocols
//!    added, existing keys kept) or created; a create that meets 409 looks again.
//! 3. [`Handler::handle`], in the runner's transaction (the one that inserts the
//!    `processed_messages` marker): lock the subscription row and read its intent, which every
//!    change of the ledger rewrites in its transaction. If
//!    the desired state is no longer what step 2 sent — another payment or refund of the same
//!    user committed in between, and its panel call may have landed before ours — fail
//!    transiently: the retry sends the newer state, so the panel converges on the ledger, never
//!    on a stale value. Otherwise record the synced state on the subscription and enqueue
//!    `subscription.activated` / `subscription.revoked` / `grant.activated` — once per grant or revocation, keyed
//!    in `processed_messages` under [`ANNOUNCED`], so a copy of the message under another event
//!    id, or a concurrent copy, announces nothing twice.
//!
//! A free trial (`grant.created` of kind `trial`) for a user we have never pushed to the panel
//! is screened first (`SubscriptionSync::screen_trial`): a user the panel already has (a
//! customer from an older bot) gets no trial — nothing in the ledger, the panel untouched,
//! and step 3 records the refusal once (`processed_messages` under [`REFUSED`], a
//! `system_logs` row, `grant.refused`).
//!
//! What a failure leaves: a panel failure in step 2 (or a crash after step 1) leaves the
//! ledger entry and the intent committed with the panel behind and nothing announced. The
//! message is retried (redelivered after a crash); the retry finds the entry, writes nothing,
//! and sends the same absolute state again — days are never counted twice, the ledger's unique
//! keys decide. A message that is parked leaves the panel behind until the drift check
//! ([`crate::drift`], which repairs the panel to the intent) or a replay of the message, which
//! also announces. A crash after step 2 repeats step 2 on redelivery.
//!
//! Within one process the messages of one user take turns (an in-memory lock from step 1 to
//! the end of step 3, never held across a database transaction), so prefetched copies and
//! concurrent payments of one user do not race each other to the panel; across processes the
//! check in step 3 keeps the result right.

use domain::PaymentId;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::entities::{
    manual_grants, payment_promos, payments, processed_messages, subscription_grants,
    subscriptions, system_logs, tariffs, users,
};
use domain::ids::{MarzbanUsername, TelegramUserId};
use domain::status::PaymentStatus;
use messaging::events::{
    GrantActivated, GrantCreated, GrantRefused, PaymentCompleted, PaymentRefunded,
    SubscriptionActivated, SubscriptionChange, SubscriptionRevoked,
};
use messaging::{Envelope, Event, Handler, HandlerError, OutboxError, Prepared};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TryInsertResult,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::ledger::{self, Entry};
use crate::panel::{self, Desired, Panel, PanelError, PanelUser};

/// The consumer name: queue `<prefix>.marzban-sync` and the `processed_messages` key.
pub const CONSUMER: &str = "marzban-sync";

/// Counter: grants written for payments and manual grants.
pub const METRIC_GRANTS: &str = "marzban_sync_grants_total";
/// Counter: refunds that took days back.
pub const METRIC_REVOCATIONS: &str = "marzban_sync_revocations_total";

/// `subscription_grants.kind` of a paid grant.
pub const KIND_PURCHASE: &str = "purchase";
/// `subscription_grants.kind` of the time an adopted panel user had left (at most one per
/// subscription: unique index `uq_subscription_grants_opening_balance`).
pub const KIND_OPENING_BALANCE: &str = "opening_balance";

/// `processed_messages.consumer` of the manual grants in the ledger: one row per
/// `manual_grants` row (`manual_grant:<id>`), written in the transaction that writes its
/// ledger entry, so a grant is counted once whatever copies of `grant.created` arrive.
pub const GRANTED: &str = "marzban-sync:granted";

/// `processed_messages.consumer` of the adoption decisions: one row per subscription
/// (`subscription:<id>`), written when the panel was first looked at for it, in the
/// transaction that writes its opening balance, if any.
pub const ADOPTED: &str = "marzban-sync:adopted";

/// `processed_messages.consumer` of the refused trials: one row per `manual_grants` row
/// (`manual_grant:<id>`), written with the refusal's `system_logs` row and `grant.refused`
/// event, so a trial is refused once whatever copies of `grant.created` arrive, and never both
/// refused and granted (both decisions are taken under the user's row lock).
pub const REFUSED: &str = domain::trial::REFUSED_MARK;

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("panel: {0}")]
    Panel(#[from] PanelError),
    /// The event cannot be applied now but may be later (e.g. a refund before its grant).
    #[error("{0}")]
    NotYet(String),
    /// The ledger changed while the panel was being called; the retry sends the newer state.
    #[error("{0}")]
    Overtaken(String),
    /// The event makes no sense against our data; retrying will not help.
    #[error("{0}")]
    Invalid(String),
}

impl From<SyncError> for HandlerError {
    fn from(error: SyncError) -> Self {
        let permanent = match &error {
            SyncError::Db(_)
            | SyncError::Outbox(_)
            | SyncError::NotYet(_)
            | SyncError::Overtaken(_) => false,
            // Refused credentials may be a panel restart or a fix on its way: retry, then park.
            SyncError::Panel(e) => !e.stops_everything(),
            SyncError::Invalid(_) => true,
        };
        if permanent {
            HandlerError::permanent(error)
        } else {
            HandlerError::transient(error)
        }
    }
}

/// `processed_messages.consumer` of the announcements: one row per `subscription.*` event
/// enqueued (`activated:<payment id>`, `revoked:<payment id>:<days revoked>`), written in the
/// transaction that enqueues it.
pub const ANNOUNCED: &str = "marzban-sync:announced";

/// Turns per process: the users' messages are spread over this many in-memory locks.
const TURNS: usize = 64;

/// The `marzban-sync` [`Handler`].
#[derive(Clone)]
pub struct SubscriptionSync {
    client: Arc<dyn Panel>,
    db: DatabaseConnection,
    turns: Arc<Vec<Arc<Mutex<()>>>>,
    /// `MARZBAN_ADOPT_REMAINING`: carry an adopted user's remaining time into the ledger.
    adopt_remaining: bool,
}

impl std::fmt::Debug for SubscriptionSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionSync")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// What `prepare` did, handed to `handle` through [`Prepared`].
struct Prepare {
    step: Step,
    /// The user's turn in this process, released when `handle` is done with it.
    _turn: OwnedMutexGuard<()>,
}

enum Step {
    /// Already in the ledger and announced (a copy of the message), or a refund that a later
    /// one already covers.
    Nothing,
    /// The panel was brought to `sent`.
    Synced(Box<Synced>),
    /// A trial the panel already has the user of: nothing written, the panel untouched.
    Refused(Box<Refused>),
}

/// A free trial refused because the panel already has the user, for step 3.
struct Refused {
    grant_id: i64,
    user_id: i64,
    telegram_id: i64,
    kind: String,
    /// The panel's spelling of the user found.
    panel_username: String,
}

/// The result of steps 1 and 2, for step 3.
struct Synced {
    announcement: Announcement,
    subscription_id: i64,
    telegram_id: i64,
    /// The desired state sent to the panel.
    sent: Desired,
    /// The panel user as it answered; `None`: not on the panel (after a refund).
    user: Option<PanelUser>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Announcement {
    Activated(PaymentId),
    Revoked {
        payment_id: PaymentId,
        days_revoked: i32,
    },
    /// A manual grant (`manual_grants`: an admin's, a trial) is on the panel: `grant.activated`
    /// (the `subscription.*` events name the payment that caused them, and a grant has none).
    Granted {
        grant_id: i64,
    },
}

impl Announcement {
    fn key(self) -> String {
        match self {
            Self::Activated(payment_id) => format!("activated:{payment_id}"),
            Self::Revoked {
                payment_id,
                days_revoked,
            } => format!("revoked:{payment_id}:{days_revoked}"),
            Self::Granted { grant_id } => format!("granted:{grant_id}"),
        }
    }
}

/// Step 1's outcome: the state to send, or nothing to do.
#[derive(Debug)]
struct Intent {
    subscription_id: i64,
    telegram_id: i64,
    desired: Desired,
    /// Whether we have pushed this user to the panel before.
    known_on_panel: bool,
}

impl SubscriptionSync {
    /// The handler; an adopted user's remaining time is kept (see
    /// [`SubscriptionSync::adopt_remaining`]).
    pub fn new(client: Arc<dyn Panel>, db: DatabaseConnection) -> Self {
        Self {
            client,
            db,
            turns: Arc::new((0..TURNS).map(|_| Arc::new(Mutex::new(()))).collect()),
            adopt_remaining: true,
        }
    }

    /// `MARZBAN_ADOPT_REMAINING` (default on): whether adopting a panel user that still has
    /// time writes that time into the ledger as an opening balance, so the new expiry is the
    /// old one plus the paid days. Off: the ledger starts at the first payment.
    pub fn adopt_remaining(mut self, on: bool) -> Self {
        self.adopt_remaining = on;
        self
    }

    /// Waits for `user_id`'s turn in this process.
    async fn turn(&self, user_id: i64) -> OwnedMutexGuard<()> {
        let index = usize::try_from(user_id.rem_euclid(TURNS as i64)).unwrap_or(0);
        self.turns[index].clone().lock_owned().await
    }

    /// Steps 1 and 2 of `payment.completed`: the grant (once per payment) and the intent
    /// committed, then the panel user active until the ledger's expiry.
    async fn prepare_completed(&self, event: &PaymentCompleted) -> Result<Step, SyncError> {
        let payment_id = event.payment.payment_id;
        let tx = service_kit::db::begin_write(&self.db).await?;
        let intent = record_grant(&tx, event).await?;
        tx.commit().await?;
        let Some(mut intent) = intent else {
            return Ok(Step::Nothing);
        };
        let user = self.push_active(&mut intent).await?;
        Ok(Step::Synced(Box::new(Synced {
            announcement: Announcement::Activated(payment_id),
            subscription_id: intent.subscription_id,
            telegram_id: intent.telegram_id,
            sent: intent.desired,
            user: Some(user),
        })))
    }

    /// Steps 1 and 2 of `grant.created` (an admin's grant, a trial): the ledger entry (once
    /// per grant) and the intent committed, then the panel user active until the ledger's
    /// expiry — the path of a paid grant, so the drift check sees it like any other time.
    async fn prepare_granted(&self, event: &GrantCreated) -> Result<Step, SyncError> {
        if let Some(step) = self.screen_trial(event.grant_id).await? {
            return Ok(step);
        }
        let tx = service_kit::db::begin_write(&self.db).await?;
        let intent = record_manual_grant(&tx, event).await?;
        tx.commit().await?;
        let Some(mut intent) = intent else {
            return Ok(Step::Nothing);
        };
        let user = self.push_active(&mut intent).await?;
        Ok(Step::Synced(Box::new(Synced {
            announcement: Announcement::Granted {
                grant_id: event.grant_id,
            },
            subscription_id: intent.subscription_id,
            telegram_id: intent.telegram_id,
            sent: intent.desired,
            user: Some(user),
        })))
    }

    /// Before step 1 of a free trial (issue 23: "never for a user who already has a panel
    /// user"): for a user we have never pushed to the panel, look the user up as the panel may
    /// spell it ([`Panel::find_user`]); a user there already (a customer from an older bot) gets
    /// no trial — step 3 records the refusal, nothing goes in the ledger and the panel user is
    /// not touched. A panel that does not answer fails the message (retried as any panel
    /// failure): a trial is never granted blind. `None`: go on as for any grant (another kind,
    /// a trial decided before, or a user the panel has not got).
    async fn screen_trial(&self, grant_id: i64) -> Result<Option<Step>, SyncError> {
        let grant = manual_grants::Entity::find_by_id(grant_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| SyncError::Invalid(format!("unknown manual grant {grant_id}")))?;
        if grant.kind != domain::trial::KIND {
            return Ok(None);
        }
        let key = grant_key(grant.id);
        if is_marked(&self.db, REFUSED, &key).await? {
            tracing::info!(grant_id, "trial refused before; nothing to do");
            return Ok(Some(Step::Nothing));
        }
        if is_marked(&self.db, GRANTED, &key).await? {
            return Ok(None);
        }
        let telegram_id = telegram_id_of(&self.db, grant.user_id).await?;
        let subscription = subscriptions::Entity::find()
            .filter(subscriptions::Column::UserId.eq(grant.user_id))
            .one(&self.db)
            .await?;
        let username = match &subscription {
            // Pushed before (or its panel user decided on): whatever the panel has is ours.
            Some(s)
                if s.synced_at.is_some()
                    || is_marked(&self.db, ADOPTED, &format!("subscription:{}", s.id)).await? =>
            {
                return Ok(None);
            }
            Some(s) => username(s)?,
            None => {
                let telegram = TelegramUserId::parse(telegram_id).map_err(|e| {
                    SyncError::Invalid(format!("user {}: telegram id: {e}", grant.user_id))
                })?;
                MarzbanUsername::from_telegram_id(telegram)
            }
        };
        let Some(found) = self.client.find_user(&username).await? else {
            return Ok(None);
        };
        tracing::info!(grant_id, telegram_id, panel = %found.username, "the panel already has the user: no free trial");
        Ok(Some(Step::Refused(Box::new(Refused {
            grant_id,
            user_id: grant.user_id,
            telegram_id,
            kind: grant.kind,
            panel_username: found.username,
        }))))
    }

    /// Step 2 of a grant: the panel user active until the intent's expiry (adopted or
    /// created on the first push).
    async fn push_active(&self, intent: &mut Intent) -> Result<PanelUser, SyncError> {
        let note = format!("telegram {}", intent.telegram_id);
        if intent.known_on_panel {
            let user = panel::activate(self.client.as_ref(), &intent.desired, true, &note).await;
            self.sent(intent.subscription_id, user).await
        } else {
            self.first_push(intent, &note).await
        }
    }

    /// Steps 1 and 2 of `payment.refunded`: the revocation and the intent committed, then the
    /// panel user shortened to the ledger's expiry (disabled when nothing is left).
    async fn prepare_refunded(&self, event: &PaymentRefunded) -> Result<Step, SyncError> {
        let payment_id = event.payment.payment_id;
        let tx = service_kit::db::begin_write(&self.db).await?;
        let recorded = record_revocation(&tx, event).await?;
        tx.commit().await?;
        let Some((intent, days_revoked)) = recorded else {
            return Ok(Step::Nothing);
        };
        let now = ledger::whole_seconds(Utc::now());
        let user = panel::shorten(self.client.as_ref(), &intent.desired, now).await;
        let user = self.sent(intent.subscription_id, user).await?;
        Ok(Step::Synced(Box::new(Synced {
            announcement: Announcement::Revoked {
                payment_id,
                days_revoked,
            },
            subscription_id: intent.subscription_id,
            telegram_id: intent.telegram_id,
            sent: intent.desired,
            user,
        })))
    }

    /// Step 2 for a user the panel has not confirmed yet: look for it in any letter case,
    /// record what was found (the spelling, the adoption decision and opening balance, the new
    /// intent), then adopt it or create it. A create that meets 409 (someone created the user
    /// after our look-up) looks again, once.
    async fn first_push(&self, intent: &mut Intent, note: &str) -> Result<PanelUser, SyncError> {
        let id = intent.subscription_id;
        let mut looked_again = false;
        loop {
            let found = self
                .sent(id, self.client.find_user(&intent.desired.username).await)
                .await?;
            let tx = service_kit::db::begin_write(&self.db).await?;
            *intent = record_adoption(&tx, intent, found.as_ref(), self.adopt_remaining).await?;
            tx.commit().await?;
            let answer = match &found {
                Some(_) => panel::adopt(self.client.as_ref(), &intent.desired, note).await,
                None => self.client.create_user(&intent.desired, note).await,
            };
            match answer {
                Err(PanelError::Conflict { .. }) if found.is_none() && !looked_again => {
                    tracing::info!(username = %intent.desired.username, "the user appeared on the panel after our look-up; looking again");
                    looked_again = true;
                }
                answer => return self.sent(id, answer).await,
            }
        }
    }

    /// The panel's answer; a failure is also noted on the subscription (`sync_error`, best
    /// effort) for whoever looks at a customer whose panel is behind.
    async fn sent<T>(
        &self,
        subscription_id: i64,
        answer: Result<T, PanelError>,
    ) -> Result<T, SyncError> {
        match answer {
            Ok(answer) => Ok(answer),
            Err(error) => {
                let noted = subscriptions::Entity::update_many()
                    .col_expr(
                        subscriptions::Column::SyncError,
                        Expr::value(Some(format!("panel behind the ledger: {error}"))),
                    )
                    .filter(subscriptions::Column::Id.eq(subscription_id))
                    .exec(&self.db)
                    .await;
                if let Err(db_error) = noted {
                    tracing::warn!(subscription_id, %db_error, "could not note the panel failure");
                }
                Err(error.into())
            }
        }
    }

    /// Step 3, in the runner's transaction: the panel got what the ledger still wants, so
    /// record it and announce it (once).
    async fn record(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        synced: Synced,
    ) -> Result<(), SyncError> {
        let Synced {
            announcement,
            subscription_id,
            telegram_id,
            sent,
            user,
        } = synced;
        let subscription = subscriptions::Entity::find_by_id(subscription_id)
            .lock_exclusive()
            .one(tx)
            .await?
            .ok_or_else(|| {
                SyncError::Invalid(format!("subscription {subscription_id} vanished"))
            })?;
        // The announcement's marker first: one statement tells a copy of the message (the
        // marker is there) and claims the announcement; an overtaken sync below fails and
        // rolls the marker back with everything else.
        let key = announcement.key();
        if !mark_announced(tx, &key).await? {
            tracing::info!(key, "announced by another copy of the message");
            return Ok(());
        }
        let desired = stored_intent(&subscription)?;
        if desired != sent {
            return Err(SyncError::Overtaken(format!(
                "the ledger of {} moved on while the panel was called: sent expire {} / data limit {:?}, now wants {} / {:?}; sending again",
                sent.username, sent.expire, sent.data_limit, desired.expire, desired.data_limit
            )));
        }

        let now = ledger::whole_seconds(Utc::now());
        let expires_at = expiry_of(&desired);
        let url = save_sync(
            tx,
            subscription,
            expires_at,
            desired.data_limit,
            user.as_ref(),
            now,
        )
        .await?
        .unwrap_or_default();
        let change =
            |payment_id| change(telegram_id, payment_id, &desired, expires_at, url.clone());
        let envelope = match announcement {
            Announcement::Granted { grant_id } => {
                let grant = manual_grants::Entity::find_by_id(grant_id)
                    .one(tx)
                    .await?
                    .ok_or_else(|| SyncError::Invalid(format!("manual grant {grant_id} vanished")))?;
                tracing::info!(grant_id, kind = grant.kind, username = %desired.username, expires_at = %expires_at, "manual grant on the panel");
                Envelope::caused_by(
                    &GrantActivated {
                        grant_id,
                        telegram_id,
                        kind: grant.kind,
                        days: grant.days,
                        marzban_username: desired.username.as_str().to_owned(),
                        expires_at,
                        subscription_url: url,
                    },
                    envelope,
                )
            }
            Announcement::Activated(payment_id) => {
                tracing::info!(%payment_id, username = %desired.username, expires_at = %expires_at, "subscription extended");
                Envelope::caused_by(
                    &SubscriptionActivated {
                        subscription: change(payment_id),
                    },
                    envelope,
                )
            }
            Announcement::Revoked {
                payment_id,
                days_revoked,
            } => {
                tracing::info!(%payment_id, username = %desired.username, days_revoked, expires_at = %expires_at, paid = desired.is_paid_at(now), "days revoked");
                Envelope::caused_by(
                    &SubscriptionRevoked {
                        subscription: change(payment_id),
                    },
                    envelope,
                )
            }
        }
        .map_err(OutboxError::from)?;
        messaging::outbox::enqueue(tx, &envelope).await?;
        Ok(())
    }
}

/// Step 1 of `payment.completed`, in its own short transaction: the payment's grant (written
/// once) and the subscription's intent. `None`: granted and announced before.
async fn record_grant(
    tx: &DatabaseTransaction,
    event: &PaymentCompleted,
) -> Result<Option<Intent>, SyncError> {
    let payment_id = event.payment.payment_id;
    // The payment, its tariff and its promo code (issue 23), in one statement.
    let (payment, tariff, promo) = payments::Entity::find_by_id(payment_id)
        .find_also_related(tariffs::Entity)
        .find_also_related(payment_promos::Entity)
        .one(tx)
        .await?
        .ok_or_else(|| SyncError::Invalid(format!("unknown payment {payment_id}")))?;
    if !matches!(
        payment.status,
        PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
    ) {
        return Err(SyncError::Invalid(format!(
            "payment {payment_id} is {}, not paid",
            payment.status.as_str()
        )));
    }
    let tariff = tariff
        .ok_or_else(|| SyncError::Invalid(format!("payment {payment_id}: unknown tariff")))?;
    if tariff.duration_days <= 0 {
        return Err(SyncError::Invalid(format!(
            "tariff {} grants {} days",
            tariff.code, tariff.duration_days
        )));
    }
    // The event names the payer's Telegram id (from the same rows): no look-up of the user.
    let known = (event.payment.user_id == payment.user_id).then_some(event.payment.telegram_id);
    let (subscription, telegram_id) =
        lock_or_create_subscription(tx, payment.user_id, known).await?;

    // Under the subscription lock, so a concurrent copy of the message waits here and then
    // sees the grant. The ledger is the subscription's grants; the payment's grant, if there
    // is one, is among them (the payer's one subscription; `payment_id` is unique).
    let grants = grants_of(tx, subscription.id).await?;
    let ledger: Vec<Entry> = grants.iter().map(entry).collect();
    let granted = grants.iter().find(|g| g.payment_id == Some(payment_id));
    let (data_limit, ledger) = if let Some(grant) = granted {
        if is_announced(tx, &Announcement::Activated(payment_id).key()).await? {
            tracing::info!(%payment_id, grant_id = grant.id, "payment already granted; nothing to do");
            return Ok(None);
        }
        tracing::info!(%payment_id, grant_id = grant.id, "payment granted before, not yet confirmed by the panel; sending the ledger's state again");
        (subscription.data_limit_bytes, ledger)
    } else {
        // The tariff's days, and those of the payment's promo code (issue 23), in one entry:
        // a refund takes back its share of both.
        let days = tariff
            .duration_days
            .saturating_add(promo.map_or(0, |promo| promo.extra_days.max(0)));
        let (expires_at, ledger) = append_grant(
            tx,
            subscription.id,
            ledger,
            Some(payment_id),
            KIND_PURCHASE,
            days,
        )
        .await?;
        tracing::info!(%payment_id, expires_at = %expires_at, days, "grant recorded");
        (tariff.data_limit_bytes, ledger)
    };
    let intent = write_intent(tx, subscription, telegram_id, data_limit, &ledger).await?;
    Ok(Some(intent))
}

/// Appends `days` to the subscription's `ledger` (read under its row lock) and returns the
/// expiry they lead to — after the ledger's expiry so far, or from now when that has passed —
/// and the ledger with the new entry.
async fn append_grant(
    tx: &DatabaseTransaction,
    subscription_id: i64,
    mut ledger: Vec<Entry>,
    payment_id: Option<PaymentId>,
    kind: &str,
    days: i32,
) -> Result<(DateTime<Utc>, Vec<Entry>), DbErr> {
    let now = ledger::whole_seconds(Utc::now());
    let expires_at = ledger::extend(ledger::replay(&ledger), now, days);
    let grant = subscription_grants::ActiveModel {
        id: NotSet,
        subscription_id: Set(subscription_id),
        payment_id: Set(payment_id),
        kind: Set(kind.to_owned()),
        days_granted: Set(days),
        days_revoked: Set(0),
        expires_at_after: Set(expires_at),
        created_at: Set(now),
        revoked_at: Set(None),
    }
    .insert(tx)
    .await?;
    ledger.push(entry(&grant));
    metrics::counter!(METRIC_GRANTS).increment(1);
    Ok((expires_at, ledger))
}

/// Step 1 of `grant.created`, in its own short transaction: the manual grant's ledger entry
/// (kind `admin`, `trial` or `referral`, no payment; written once, keyed under [`GRANTED`]) and the
/// subscription's intent. `None`: granted and on the panel before.
async fn record_manual_grant(
    tx: &DatabaseTransaction,
    event: &GrantCreated,
) -> Result<Option<Intent>, SyncError> {
    let grant = manual_grants::Entity::find_by_id(event.grant_id)
        .one(tx)
        .await?
        .ok_or_else(|| SyncError::Invalid(format!("unknown manual grant {}", event.grant_id)))?;
    if grant.days <= 0 {
        return Err(SyncError::Invalid(format!(
            "manual grant {} gives {} days",
            grant.id, grant.days
        )));
    }
    let key = grant_key(grant.id);
    if grant.kind == domain::trial::KIND {
        // Decided under the user's lock, as a refusal is (see [`record_refusal`]).
        lock_user(tx, grant.user_id).await?;
        if is_marked(tx, REFUSED, &key).await? {
            tracing::info!(grant_id = grant.id, "trial refused; nothing to grant");
            return Ok(None);
        }
    }
    let (subscription, telegram_id) = lock_or_create_subscription(tx, grant.user_id, None).await?;
    // Under the subscription lock, so a concurrent copy of the message waits here and then
    // sees the mark.
    let (data_limit, ledger) = if is_marked(tx, GRANTED, &key).await? {
        let announced = Announcement::Granted { grant_id: grant.id }.key();
        if is_announced(tx, &announced).await? {
            tracing::info!(
                grant_id = grant.id,
                "manual grant already applied; nothing to do"
            );
            return Ok(None);
        }
        tracing::info!(
            grant_id = grant.id,
            "manual grant recorded before, not yet confirmed by the panel; sending the ledger's state again"
        );
        (
            subscription.data_limit_bytes,
            entries(tx, subscription.id).await?,
        )
    } else {
        mark(tx, GRANTED, &key).await?;
        let ledger = entries(tx, subscription.id).await?;
        let (expires_at, ledger) =
            append_grant(tx, subscription.id, ledger, None, &grant.kind, grant.days).await?;
        tracing::info!(grant_id = grant.id, kind = grant.kind, expires_at = %expires_at, days = grant.days, "manual grant recorded");
        (
            grant.data_limit_bytes.or(subscription.data_limit_bytes),
            ledger,
        )
    };
    let intent = write_intent(tx, subscription, telegram_id, data_limit, &ledger).await?;
    Ok(Some(intent))
}

/// Step 3 of a refused trial, in the runner's transaction: under the user's row lock, unless
/// a copy refused it already, the refusal's mark, its `system_logs` row
/// ([`domain::trial::REFUSED_LOG`]) and its `grant.refused` event — once per grant. A copy that
/// granted the trial meanwhile (its panel user is what we found) wins: this one fails
/// transiently and its retry takes the grant's path, which finds nothing more to do.
async fn record_refusal(
    tx: &DatabaseTransaction,
    envelope: &Envelope,
    refused: Refused,
) -> Result<(), SyncError> {
    lock_user(tx, refused.user_id).await?;
    let key = grant_key(refused.grant_id);
    if is_marked(tx, REFUSED, &key).await? {
        tracing::info!(
            grant_id = refused.grant_id,
            "trial refused by another copy of the message"
        );
        return Ok(());
    }
    if is_marked(tx, GRANTED, &key).await? {
        return Err(SyncError::Overtaken(format!(
            "trial {} was granted by another copy while the panel was looked at",
            refused.grant_id
        )));
    }
    mark(tx, REFUSED, &key).await?;
    let reason = domain::trial::REASON_PANEL_USER;
    let event = GrantRefused {
        grant_id: refused.grant_id,
        user_id: refused.user_id,
        telegram_id: refused.telegram_id,
        kind: refused.kind.clone(),
        reason: reason.to_owned(),
    };
    let outgoing = Envelope::caused_by(&event, envelope).map_err(OutboxError::from)?;
    messaging::outbox::enqueue(tx, &outgoing).await?;
    system_logs::ActiveModel {
        id: NotSet,
        event_type: Set(domain::trial::REFUSED_LOG.to_owned()),
        user_id: Set(Some(refused.user_id)),
        payment_id: Set(None),
        provider: Set(None),
        amount_minor: Set(None),
        currency: Set(None),
        status: Set(Some(reason.to_owned())),
        message: Set(Some(format!(
            "free trial refused: the panel already has the user {}",
            refused.panel_username
        ))),
        metadata: Set(Some(serde_json::json!({
            "event_id": outgoing.event_id,
            "grant_id": refused.grant_id,
            "telegram_id": refused.telegram_id,
            "kind": refused.kind,
            "reason": reason,
            "panel_username": refused.panel_username,
        }))),
        created_at: Set(Utc::now()),
    }
    .insert(tx)
    .await?;
    tracing::info!(grant_id = refused.grant_id, telegram_id = refused.telegram_id, panel = %refused.panel_username, "free trial refused: the panel already has the user");
    Ok(())
}

/// The `processed_messages` key of a manual grant under [`GRANTED`] and [`REFUSED`] (the one
/// the bot reads, [`domain::trial::refused_key`]).
fn grant_key(grant_id: i64) -> String {
    domain::trial::refused_key(grant_id)
}

/// Locks `users.id` = `user_id` for this transaction: a trial's grant and its refusal are
/// decided under it, so only one of them is ever recorded.
async fn lock_user(tx: &DatabaseTransaction, user_id: i64) -> Result<(), SyncError> {
    users::Entity::find_by_id(user_id)
        .lock_exclusive()
        .one(tx)
        .await?
        .ok_or_else(|| SyncError::Invalid(format!("unknown user {user_id}")))?;
    Ok(())
}

/// Step 1 of `payment.refunded`, in its own short transaction: the payment's grant loses days
/// in proportion to what was refunded (from the running total, so a repeat computes the same
/// number), and the subscription's intent follows. `None`: nothing (more) to revoke or
/// announce. Also returns the grant's revoked days, which key the announcement.
async fn record_revocation(
    tx: &DatabaseTransaction,
    event: &PaymentRefunded,
) -> Result<Option<(Intent, i32)>, SyncError> {
    let payment_id = event.payment.payment_id;
    let Some(grant) = find_grant(tx, payment_id).await? else {
        // payment.completed may still be on its way; its grant comes first.
        return Err(SyncError::NotYet(format!(
            "payment {payment_id} refunded but not granted yet"
        )));
    };
    let subscription = subscriptions::Entity::find_by_id(grant.subscription_id)
        .lock_exclusive()
        .one(tx)
        .await?
        .ok_or_else(|| SyncError::Invalid(format!("grant {} has no subscription", grant.id)))?;
    // Read again under the lock: a concurrent refund of the same payment may have won.
    let grant = find_grant(tx, payment_id)
        .await?
        .ok_or_else(|| SyncError::Invalid(format!("grant of {payment_id} vanished")))?;
    let revoke = ledger::days_to_revoke(
        grant.days_granted,
        event.payment.amount_minor,
        event.total_refunded_minor,
    );
    let key = Announcement::Revoked {
        payment_id,
        days_revoked: revoke,
    }
    .key();
    if revoke > grant.days_revoked {
        let now = ledger::whole_seconds(Utc::now());
        let days = revoke - grant.days_revoked;
        let mut revoked: subscription_grants::ActiveModel = grant.into();
        revoked.days_revoked = Set(revoke);
        revoked.revoked_at = Set(Some(now));
        revoked.update(tx).await?;
        metrics::counter!(METRIC_REVOCATIONS).increment(1);
        tracing::info!(%payment_id, days, days_revoked = revoke, "revocation recorded");
    } else if revoke == 0 || revoke < grant.days_revoked || is_announced(tx, &key).await? {
        tracing::info!(%payment_id, days_revoked = grant.days_revoked, "refund already applied; nothing to do");
        return Ok(None);
    } else {
        tracing::info!(%payment_id, days_revoked = revoke, "days revoked before, not yet confirmed by the panel; sending the ledger's state again");
    }
    let telegram_id = telegram_id_of(tx, subscription.user_id).await?;
    let data_limit = subscription.data_limit_bytes;
    let ledger = entries(tx, subscription.id).await?;
    let intent = write_intent(tx, subscription, telegram_id, data_limit, &ledger).await?;
    Ok(Some((intent, revoke)))
}

/// What the first look at the panel found, recorded under the subscription's row lock:
///
/// - the panel's spelling of the user's name (a panel on SQLite may have `TG_1` for our
///   `tg_1`; every later call must use it);
/// - once per subscription, the adoption decision (`processed_messages` under [`ADOPTED`]):
///   with `adopt_remaining`, a found user's remaining time becomes an opening-balance grant
///   ([`KIND_OPENING_BALANCE`]). Recorded also when nothing was found, so that a user we then
///   create — and find again on a retry whose create answer was lost — is never counted as
///   time the customer brought;
///
/// and the intent replayed again. Returns the new intent.
async fn record_adoption(
    tx: &DatabaseTransaction,
    intent: &Intent,
    found: Option<&PanelUser>,
    adopt_remaining: bool,
) -> Result<Intent, SyncError> {
    let subscription = subscriptions::Entity::find_by_id(intent.subscription_id)
        .lock_exclusive()
        .one(tx)
        .await?
        .ok_or_else(|| {
            SyncError::Invalid(format!("subscription {} vanished", intent.subscription_id))
        })?;
    let now = ledger::whole_seconds(Utc::now());
    let mut subscription = subscription;
    if let Some(user) = found
        && user.username != subscription.marzban_username
    {
        match MarzbanUsername::adopted(user.username.as_str()) {
            Ok(name) => {
                tracing::info!(subscription_id = subscription.id, ours = %subscription.marzban_username, panel = %name, "adopting the panel's spelling of the user");
                let mut row: subscriptions::ActiveModel = subscription.into();
                row.marzban_username = Set(name.into_inner());
                row.updated_at = Set(now);
                subscription = row.update(tx).await?;
            }
            Err(error) => {
                tracing::warn!(subscription_id = subscription.id, %error, "keeping our spelling of the user")
            }
        }
    }
    let decision = format!("subscription:{}", subscription.id);
    // Decided here, once: the marker's insert tells whether it is (a decision of another
    // copy was committed before our lock was granted).
    let mut ledger_changed = false;
    if claim_marker(tx, ADOPTED, &decision).await? {
        let balance = found
            .filter(|_| adopt_remaining)
            // A user already at exactly the ledger's expiry is one we created (a create whose
            // answer was lost before this decision existed): its time is ours.
            .filter(|user| user.expire != Some(intent.desired.expire))
            .and_then(|user| ledger::opening_balance(user.expire, now));
        match balance {
            Some((until, days)) => {
                subscription_grants::ActiveModel {
                    id: NotSet,
                    subscription_id: Set(subscription.id),
                    payment_id: Set(None),
                    kind: Set(KIND_OPENING_BALANCE.to_owned()),
                    days_granted: Set(days),
                    days_revoked: Set(0),
                    expires_at_after: Set(until),
                    created_at: Set(now),
                    revoked_at: Set(None),
                }
                .insert(tx)
                .await?;
                restate_grants(tx, subscription.id).await?;
                ledger_changed = true;
                tracing::info!(subscription_id = subscription.id, username = %subscription.marzban_username, until = %until, days, "adopted a panel user; its remaining time is the opening balance");
            }
            None => {
                tracing::info!(subscription_id = subscription.id, username = %subscription.marzban_username, found = found.is_some(), "adoption decided: no opening balance");
            }
        }
    }
    if !ledger_changed {
        // The intent on the locked row is the ledger replayed (see [`stored_intent`]); only
        // the name may have changed above.
        return Ok(Intent {
            subscription_id: subscription.id,
            telegram_id: intent.telegram_id,
            desired: stored_intent(&subscription)?,
            known_on_panel: subscription.synced_at.is_some(),
        });
    }
    let data_limit = intent.desired.data_limit;
    let ledger = entries(tx, subscription.id).await?;
    write_intent(tx, subscription, intent.telegram_id, data_limit, &ledger).await
}

/// Rewrites every grant's `expires_at_after` to the replay up to it, after an opening balance
/// was put in front of grants written before it.
async fn restate_grants(tx: &DatabaseTransaction, subscription_id: i64) -> Result<(), DbErr> {
    let grants = grants_of(tx, subscription_id).await?;
    let entries: Vec<Entry> = grants.iter().map(entry).collect();
    let opening: Vec<Entry> = entries
        .iter()
        .filter(|e| e.carried_until.is_some())
        .copied()
        .collect();
    let mut so_far = opening;
    for (grant, entry) in grants.into_iter().zip(entries) {
        if entry.carried_until.is_some() {
            continue;
        }
        so_far.push(entry);
        let Some(after) = ledger::replay(&so_far) else {
            continue;
        };
        if grant.expires_at_after != after {
            let mut row: subscription_grants::ActiveModel = grant.into();
            row.expires_at_after = Set(after);
            row.update(tx).await?;
        }
    }
    Ok(())
}

/// Replays the subscription's `ledger` (read under its row lock) into the desired panel state
/// and stores it on the subscription row (`expires_at`, `data_limit_bytes`), which the drift
/// check repairs the panel to.
async fn write_intent(
    tx: &DatabaseTransaction,
    subscription: subscriptions::Model,
    telegram_id: i64,
    data_limit: Option<i64>,
    ledger: &[Entry],
) -> Result<Intent, SyncError> {
    let now = ledger::whole_seconds(Utc::now());
    let expires_at = ledger::replay(ledger).unwrap_or(now);
    let desired = Desired::new(username(&subscription)?, expires_at, data_limit);
    let intent = Intent {
        subscription_id: subscription.id,
        telegram_id,
        desired,
        known_on_panel: subscription.synced_at.is_some(),
    };
    let expires_at = expiry_of(&intent.desired);
    if subscription.expires_at != expires_at
        || subscription.data_limit_bytes != intent.desired.data_limit
    {
        let mut row: subscriptions::ActiveModel = subscription.into();
        row.expires_at = Set(expires_at);
        row.data_limit_bytes = Set(intent.desired.data_limit);
        row.updated_at = Set(now);
        row.update(tx).await?;
    }
    Ok(intent)
}

/// The panel state the ledger wants now: the intent on the subscription row. Every change of
/// the ledger writes it in the same transaction, under the row's lock ([`write_intent`]), so
/// read under that lock it is the replayed ledger without reading the ledger again (as the
/// drift check reads it).
fn stored_intent(subscription: &subscriptions::Model) -> Result<Desired, SyncError> {
    Ok(Desired::new(
        username(subscription)?,
        subscription.expires_at,
        subscription.data_limit_bytes,
    ))
}

/// The subscription's ledger in insertion order, which the subscription lock makes the order
/// of the grants.
async fn entries(conn: &impl ConnectionTrait, subscription_id: i64) -> Result<Vec<Entry>, DbErr> {
    Ok(grants_of(conn, subscription_id)
        .await?
        .iter()
        .map(entry)
        .collect())
}

async fn grants_of(
    conn: &impl ConnectionTrait,
    subscription_id: i64,
) -> Result<Vec<subscription_grants::Model>, DbErr> {
    subscription_grants::Entity::find()
        .filter(subscription_grants::Column::SubscriptionId.eq(subscription_id))
        .order_by_asc(subscription_grants::Column::Id)
        .all(conn)
        .await
}

fn entry(grant: &subscription_grants::Model) -> Entry {
    Entry {
        carried_until: (grant.kind == KIND_OPENING_BALANCE).then_some(grant.expires_at_after),
        ..Entry::grant(grant.created_at, grant.days_granted, grant.days_revoked)
    }
}

async fn is_announced(conn: &impl ConnectionTrait, key: &str) -> Result<bool, DbErr> {
    is_marked(conn, ANNOUNCED, key).await
}

/// Marks `key` announced; `false` if it was already (see [`claim_marker`]).
async fn mark_announced(conn: &impl ConnectionTrait, key: &str) -> Result<bool, DbErr> {
    claim_marker(conn, ANNOUNCED, key).await
}

/// Inserts the marker `(consumer, key)`; `false` if it was there already (`INSERT … ON
/// CONFLICT DO NOTHING`: a copy of the message in another transaction waits for that one's
/// commit, then sees it).
async fn claim_marker(
    conn: &impl ConnectionTrait,
    consumer: &str,
    key: &str,
) -> Result<bool, DbErr> {
    let inserted = processed_messages::Entity::insert(marker(consumer, key))
        .on_conflict_do_nothing()
        .exec_without_returning(conn)
        .await?;
    Ok(matches!(inserted, TryInsertResult::Inserted(1)))
}

/// Whether `processed_messages` holds `(consumer, key)`.
async fn is_marked(conn: &impl ConnectionTrait, consumer: &str, key: &str) -> Result<bool, DbErr> {
    Ok(
        processed_messages::Entity::find_by_id((consumer.to_owned(), key.to_owned()))
            .one(conn)
            .await?
            .is_some(),
    )
}

/// Inserts the marker `(consumer, key)`; one already there is an error (a concurrent copy
/// committed it after our look: the transaction fails and is retried).
async fn mark(conn: &impl ConnectionTrait, consumer: &str, key: &str) -> Result<(), DbErr> {
    processed_messages::Entity::insert(marker(consumer, key))
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

fn marker(consumer: &str, key: &str) -> processed_messages::ActiveModel {
    processed_messages::ActiveModel {
        consumer: Set(consumer.to_owned()),
        message_id: Set(key.to_owned()),
        processed_at: Set(Utc::now()),
    }
}

fn expiry_of(desired: &Desired) -> DateTime<Utc> {
    DateTime::from_timestamp(desired.expire, 0).unwrap_or_default()
}

#[async_trait]
impl Handler for SubscriptionSync {
    fn consumer(&self) -> &str {
        CONSUMER
    }

    fn bindings(&self) -> Vec<String> {
        vec![
            PaymentCompleted::EVENT_TYPE.to_owned(),
            PaymentRefunded::EVENT_TYPE.to_owned(),
            GrantCreated::EVENT_TYPE.to_owned(),
        ]
    }

    fn prepares(&self) -> bool {
        true
    }

    /// Step 1 finds a grant or revocation recorded and announced (and a trial refused) under
    /// the subscription's lock, and then calls no panel.
    fn prepare_spots_done_work(&self) -> bool {
        true
    }

    /// Steps 1 and 2: the ledger entry and intent committed, then the panel call, with no
    /// transaction open.
    async fn prepare(&self, envelope: &Envelope) -> Result<Prepared, HandlerError> {
        let step = if envelope.is::<PaymentCompleted>() {
            let event: PaymentCompleted = envelope.decode()?;
            let turn = self.turn(event.payment.user_id).await;
            (self.prepare_completed(&event).await?, turn)
        } else if envelope.is::<PaymentRefunded>() {
            let event: PaymentRefunded = envelope.decode()?;
            let turn = self.turn(event.payment.user_id).await;
            (self.prepare_refunded(&event).await?, turn)
        } else if envelope.is::<GrantCreated>() {
            let event: GrantCreated = envelope.decode()?;
            let turn = self.turn(event.user_id).await;
            (self.prepare_granted(&event).await?, turn)
        } else {
            return Ok(Prepared::none());
        };
        let (step, turn) = step;
        Ok(Prepared::new(Prepare { step, _turn: turn }))
    }

    /// Step 3: the result recorded and announced, in the runner's transaction.
    async fn handle(
        &self,
        tx: &DatabaseTransaction,
        envelope: &Envelope,
        prepared: Prepared,
    ) -> Result<(), HandlerError> {
        if !envelope.is::<PaymentCompleted>()
            && !envelope.is::<PaymentRefunded>()
            && !envelope.is::<GrantCreated>()
        {
            return Ok(());
        }
        let Some(prepare) = prepared.take::<Prepare>() else {
            return Err(HandlerError::transient(SyncError::NotYet(
                "the panel step did not run for this message".to_owned(),
            )));
        };
        match prepare.step {
            Step::Nothing => Ok(()),
            Step::Synced(synced) => Ok(self.record(tx, envelope, *synced).await?),
            Step::Refused(refused) => Ok(record_refusal(tx, envelope, *refused).await?),
        }
    }
}

/// The user's subscription row, locked for this transaction; created (expiring now, never
/// synced) on the first payment. Also returns the user's Telegram id: `known`, else read.
async fn lock_or_create_subscription(
    tx: &DatabaseTransaction,
    user_id: i64,
    known: Option<i64>,
) -> Result<(subscriptions::Model, i64), SyncError> {
    let telegram_id = match known {
        Some(telegram_id) => telegram_id,
        None => telegram_id_of(tx, user_id).await?,
    };
    let telegram = TelegramUserId::parse(telegram_id)
        .map_err(|e| SyncError::Invalid(format!("user {user_id}: telegram id: {e}")))?;
    if let Some(subscription) = find_locked(tx, user_id).await? {
        return Ok((subscription, telegram_id));
    }
    let now = ledger::whole_seconds(Utc::now());
    // A concurrent first payment of the same user waits on the unique index here, then
    // skips its insert and locks the other's row. A row we insert is ours until we commit.
    let inserted = subscriptions::Entity::insert(subscriptions::ActiveModel {
        id: NotSet,
        user_id: Set(user_id),
        marzban_username: Set(MarzbanUsername::from_telegram_id(telegram).into_inner()),
        expires_at: Set(now),
        data_limit_bytes: Set(None),
        status: Set("new".to_owned()),
        subscription_url: Set(None),
        panel_key: Set(None),
        synced_at: Set(None),
        sync_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict_do_nothing_on([subscriptions::Column::UserId])
    .exec_with_returning(tx)
    .await;
    if let Some(subscription) = service_kit::db::inserted(inserted)? {
        return Ok((subscription, telegram_id));
    }
    let subscription = find_locked(tx, user_id)
        .await?
        .ok_or_else(|| SyncError::Invalid(format!("no subscription row for user {user_id}")))?;
    Ok((subscription, telegram_id))
}

async fn find_locked(
    tx: &DatabaseTransaction,
    user_id: i64,
) -> Result<Option<subscriptions::Model>, DbErr> {
    subscriptions::Entity::find()
        .filter(subscriptions::Column::UserId.eq(user_id))
        .lock_exclusive()
        .one(tx)
        .await
}

async fn telegram_id_of(conn: &impl ConnectionTrait, user_id: i64) -> Result<i64, SyncError> {
    users::Entity::find_by_id(user_id)
        .one(conn)
        .await?
        .map(|user| user.telegram_id)
        .ok_or_else(|| SyncError::Invalid(format!("unknown user {user_id}")))
}

async fn find_grant(
    conn: &impl ConnectionTrait,
    payment_id: PaymentId,
) -> Result<Option<subscription_grants::Model>, DbErr> {
    subscription_grants::Entity::find()
        .filter(subscription_grants::Column::PaymentId.eq(payment_id))
        .one(conn)
        .await
}

/// The subscription's panel user: ours (`tg_<id>`) or the spelling of an adopted one.
pub(crate) fn username(subscription: &subscriptions::Model) -> Result<MarzbanUsername, SyncError> {
    MarzbanUsername::adopted(subscription.marzban_username.as_str()).map_err(|e| {
        SyncError::Invalid(format!(
            "subscription {}: marzban username: {e}",
            subscription.id
        ))
    })
}

/// Records a successful push to the panel on the subscription row; returns the customer's
/// subscription link as stored ([`link`]).
pub(crate) async fn save_sync(
    conn: &impl ConnectionTrait,
    subscription: subscriptions::Model,
    expires_at: DateTime<Utc>,
    data_limit: Option<i64>,
    user: Option<&PanelUser>,
    now: DateTime<Utc>,
) -> Result<Option<String>, DbErr> {
    let status = user.map_or("absent", |u| panel::status_str(u.status));
    let fresh = user.and_then(|u| link(&subscription, u));
    let mut row: subscriptions::ActiveModel = subscription.into();
    row.expires_at = Set(expires_at);
    row.data_limit_bytes = Set(data_limit);
    row.status = Set(status.to_owned());
    if let Some((url, key)) = fresh {
        row.subscription_url = Set(Some(url));
        row.panel_key = Set(key);
    }
    row.synced_at = Set(Some(now));
    row.sync_error = Set(None);
    row.updated_at = Set(now);
    Ok(row.update(conn).await?.subscription_url)
}

/// The link and key to store from the panel's answer `user`, or `None` to keep the stored
/// ones. Marzban and PasarGuard answer every call with a new subscription URL (its token
/// embeds the time), and each stays valid until the subscription is revoked — which also
/// gives the user new keys. So the stored link is kept while the panel user has the key it
/// came with and the panel's link differs from it only in its last segment (the token; the
/// same panel and path): the customer keeps one link, and the bot resends its QR code by
/// `file_id`. A new key (revoked, or the user made anew), a link elsewhere (another panel
/// after a migration, a new subscription domain) or a panel user without a key, about whom
/// nothing can be told, brings the panel's link. An empty URL (a list answer of PasarGuard
/// without `load_sub`) is no link.
fn link(stored: &subscriptions::Model, user: &PanelUser) -> Option<(String, Option<String>)> {
    let fresh = user.subscription_url.as_str();
    if fresh.is_empty() {
        return None;
    }
    fn base(url: &str) -> Option<&str> {
        url.rsplit_once('/').map(|(base, _)| base)
    }
    let unrevoked = user.key.is_some() && stored.panel_key == user.key;
    let same_place = stored
        .subscription_url
        .as_deref()
        .is_some_and(|kept| base(kept) == base(fresh));
    if unrevoked && same_place {
        return None;
    }
    Some((fresh.to_owned(), user.key.clone()))
}

fn change(
    telegram_id: i64,
    payment_id: PaymentId,
    desired: &Desired,
    expires_at: DateTime<Utc>,
    subscription_url: String,
) -> SubscriptionChange {
    SubscriptionChange {
        telegram_id,
        payment_id,
        marzban_username: desired.username.as_str().to_owned(),
        expires_at,
        subscription_url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::panel::UserStatus;

    fn stored(url: Option<&str>, key: Option<&str>) -> subscriptions::Model {
        subscriptions::Model {
            id: 1,
            user_id: 1,
            marzban_username: "tg_1".into(),
            expires_at: Utc::now(),
            data_limit_bytes: None,
            status: "active".into(),
            subscription_url: url.map(str::to_owned),
            panel_key: key.map(str::to_owned),
            synced_at: None,
            sync_error: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn answer(url: &str, key: Option<&str>) -> PanelUser {
        PanelUser {
            username: "tg_1".into(),
            status: UserStatus::Active,
            expire: None,
            data_limit: None,
            used_traffic: 0,
            subscription_url: url.into(),
            key: key.map(str::to_owned),
        }
    }

    const KEPT: &str = "https://panel.example/sub/dGdfMSwxNzY0.aaaa";
    const FRESH: &str = "https://panel.example/sub/dGdfMSwxNzY1.bbbb";

    #[test]
    fn the_stored_link_stays_while_the_key_and_the_place_are_the_same() {
        assert_eq!(
            link(&stored(Some(KEPT), Some("k1")), &answer(FRESH, Some("k1"))),
            None
        );
    }

    #[test]
    fn a_new_key_a_new_place_or_no_key_brings_the_panels_link() {
        let fresh = |key: Option<&str>| Some((FRESH.to_owned(), key.map(str::to_owned)));
        // Revoked: the panel gave the user new keys.
        assert_eq!(
            link(&stored(Some(KEPT), Some("k1")), &answer(FRESH, Some("k2"))),
            fresh(Some("k2"))
        );
        // Another panel (a migration that kept the keys) or another subscription domain.
        let elsewhere = "https://sub.other.example/Xk3pQ9abcdEFGH12";
        assert_eq!(
            link(
                &stored(Some(KEPT), Some("k1")),
                &answer(elsewhere, Some("k1"))
            ),
            Some((elsewhere.to_owned(), Some("k1".to_owned())))
        );
        // Nothing to tell by: no key on the panel, or none stored (a row from before).
        assert_eq!(
            link(&stored(Some(KEPT), None), &answer(FRESH, None)),
            fresh(None)
        );
        assert_eq!(
            link(&stored(Some(KEPT), None), &answer(FRESH, Some("k1"))),
            fresh(Some("k1"))
        );
        // No link yet.
        assert_eq!(
            link(&stored(None, Some("k1")), &answer(FRESH, Some("k1"))),
            fresh(Some("k1"))
        );
    }

    #[test]
    fn an_empty_url_keeps_what_is_stored() {
        assert_eq!(
            link(&stored(Some(KEPT), Some("k1")), &answer("", Some("k2"))),
            None
        );
    }
}
