//! `acpctl payment show ID|PROVIDER_ID` and `acpctl user show TELEGRAM_ID`: what the database
//! and the panel say, read only.

use chrono::{DateTime, Utc};
use domain::TelegramUserId;
use domain::entities::{
    outbox, payments, processed_messages, provider_notifications, subscription_grants,
    subscriptions, system_logs, users,
};
use std::sync::Arc;

use marzban_sync::Panel;
use marzban_sync::panel::{self, Desired, Repair};
use marzban_sync::panel::{MarzbanUsername, PanelUser};
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use service_kit::settings::Source;

use crate::{CtlError, Output, connect_db, db_failed, time};

/// The longest id we look up; anything longer is a typo or a paste accident.
const MAX_ID_CHARS: usize = 128;

/// Checks the shape of a payment id given on the command line (ours is a UUID, a provider's
/// is any short printable token).
pub fn payment_key(key: &str) -> Result<&str, CtlError> {
    let key = key.trim();
    if key.is_empty()
        || key.chars().count() > MAX_ID_CHARS
        || key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(CtlError::Usage(format!(
            "malformed payment id {key:?}: expected our payment id (a UUID) or the provider's \
             payment id"
        )));
    }
    Ok(key)
}

/// The payment with our id `key`, or else with provider payment id `key`.
pub async fn find_payment(db: &DatabaseConnection, key: &str) -> Result<payments::Model, CtlError> {
    let key = payment_key(key)?;
    if let Ok(id) = uuid::Uuid::parse_str(key)
        && let Some(payment) = payments::Entity::find_by_id(id)
            .one(db)
            .await
            .map_err(db_failed)?
    {
        return Ok(payment);
    }
    let mut found = payments::Entity::find()
        .filter(payments::Column::ProviderPaymentId.eq(key))
        .all(db)
        .await
        .map_err(db_failed)?;
    match found.len() {
        0 => Err(CtlError::Failed(format!(
            "no payment with id or provider payment id `{key}`"
        ))),
        1 => Ok(found.remove(0)),
        n => Err(CtlError::Failed(format!(
            "`{key}` is the provider payment id of {n} payments ({}): use our id",
            found
                .iter()
                .map(|p| format!("{} {}", p.provider, p.id))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// One line of a payment's timeline.
struct Entry {
    at: DateTime<Utc>,
    source: &'static str,
    what: String,
    detail: Value,
}

pub async fn payment(source: &Source, key: &str) -> Result<Output, CtlError> {
    payment_key(key)?;
    let panel = PanelAccess::load(source)?;
    let db = connect_db(source).await?;
    let result = payment_on(&db, &panel, key).await;
    db.close().await.ok();
    result
}

async fn payment_on(
    db: &DatabaseConnection,
    panel: &PanelAccess,
    key: &str,
) -> Result<Output, CtlError> {
    let payment = find_payment(db, key).await?;
    let id = payment.id;
    let mut timeline = Vec::new();

    let logs = system_logs::Entity::find()
        .filter(system_logs::Column::PaymentId.eq(id))
        .order_by_asc(system_logs::Column::Id)
        .all(db)
        .await
        .map_err(db_failed)?;
    for log in logs {
        timeline.push(Entry {
            at: log.created_at,
            source: "log",
            what: format!(
                "{}{}{}",
                log.event_type,
                log.status.map(|s| format!(" [{s}]")).unwrap_or_default(),
                log.message.map(|m| format!(" {m}")).unwrap_or_default()
            ),
            detail: log.metadata.unwrap_or(Value::Null),
        });
    }

    // Every event of the payment carries its id as the envelope's correlation id.
    let events = outbox::Entity::find()
        .filter(outbox::Column::Envelope.contains(id.to_string()))
        .order_by_asc(outbox::Column::Id)
        .all(db)
        .await
        .map_err(db_failed)?;
    for event in events {
        let consumers: Vec<String> = processed_messages::Entity::find()
            .filter(processed_messages::Column::MessageId.eq(event.event_id.to_string()))
            .all(db)
            .await
            .map_err(db_failed)?
            .into_iter()
            .map(|p| p.consumer)
            .collect();
        let state = match event.published_at {
            Some(at) => format!("published {}", time(at)),
            None => format!(
                "not published yet (attempts {}{})",
                event.attempts,
                event
                    .last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default()
            ),
        };
        let handled = if consumers.is_empty() {
            String::new()
        } else {
            format!("; handled by {}", consumers.join(", "))
        };
        timeline.push(Entry {
            at: event.created_at,
            source: "outbox",
            what: format!("{} {} {state}{handled}", event.routing_key, event.event_id),
            detail: json!({
                "event_id": event.event_id,
                "routing_key": event.routing_key,
                "published_at": event.published_at,
                "attempts": event.attempts,
                "last_error": event.last_error,
                "handled_by": consumers,
            }),
        });
    }

    let mut notices = Condition::any().add(provider_notifications::Column::PaymentId.eq(id));
    if let Some(provider_id) = &payment.provider_payment_id {
        notices = notices.add(
            Condition::all()
                .add(provider_notifications::Column::Provider.eq(payment.provider.clone()))
                .add(provider_notifications::Column::ProviderPaymentId.eq(provider_id.clone())),
        );
    }
    let notices = provider_notifications::Entity::find()
        .filter(notices)
        .order_by_asc(provider_notifications::Column::Id)
        .all(db)
        .await
        .map_err(db_failed)?;
    for notice in notices {
        let outcome = match (&notice.outcome, notice.processed_at) {
            (Some(outcome), Some(at)) => format!("{outcome} at {}", time(at)),
            (Some(outcome), None) => outcome.clone(),
            (None, _) => "not processed yet".to_owned(),
        };
        timeline.push(Entry {
            at: notice.received_at,
            source: "inbox",
            what: format!(
                "{} notice from {}{} -> {outcome}",
                notice.provider,
                notice.source,
                notice
                    .peer
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            ),
            detail: json!({
                "id": notice.id,
                "dedupe_key": notice.dedupe_key,
                "outcome": notice.outcome,
                "processed_at": notice.processed_at,
            }),
        });
    }

    let grants = subscription_grants::Entity::find()
        .filter(subscription_grants::Column::PaymentId.eq(id))
        .all(db)
        .await
        .map_err(db_failed)?;
    for grant in &grants {
        timeline.push(Entry {
            at: grant.created_at,
            source: "ledger",
            what: format!(
                "{} {} days -> expires {}",
                grant.kind,
                grant.days_granted,
                time(grant.expires_at_after)
            ),
            detail: grant_json(grant),
        });
        if let Some(at) = grant.revoked_at {
            timeline.push(Entry {
                at,
                source: "ledger",
                what: format!(
                    "{} of {} days revoked",
                    grant.days_revoked, grant.days_granted
                ),
                detail: grant_json(grant),
            });
        }
    }
    timeline.sort_by_key(|entry| entry.at);

    let user = users::Entity::find_by_id(payment.user_id)
        .one(db)
        .await
        .map_err(db_failed)?;
    let subscription = subscriptions::Entity::find()
        .filter(subscriptions::Column::UserId.eq(payment.user_id))
        .one(db)
        .await
        .map_err(db_failed)?;
    let panel_state = panel.state(subscription.as_ref()).await;

    let mut text = format!(
        "payment {}  {} {}  {}  status {}{}\n",
        payment.id,
        payment.provider,
        payment
            .provider_payment_id
            .as_deref()
            .unwrap_or("(no provider id)"),
        payment.amount(),
        payment.status.as_str(),
        if payment.flagged {
            format!(
                " FLAGGED: {}",
                payment.flag_reason.as_deref().unwrap_or("-")
            )
        } else {
            String::new()
        }
    );
    if let Some(user) = &user {
        text.push_str(&format!(
            "user {} (Telegram {})\n",
            user.id, user.telegram_id
        ));
    }
    text.push_str("timeline:\n");
    for entry in &timeline {
        text.push_str(&format!(
            "  {}  {:<6}  {}\n",
            time(entry.at),
            entry.source,
            entry.what
        ));
    }
    text.push_str(&panel_state.text);

    let json = json!({
        "payment": payment_json(&payment),
        "user": user.as_ref().map(|u| json!({"id": u.id, "telegram_id": u.telegram_id, "username": u.username})),
        "timeline": timeline.iter().map(|e| json!({
            "at": time(e.at),
            "source": e.source,
            "what": e.what,
            "detail": e.detail,
        })).collect::<Vec<_>>(),
        "ledger": grants.iter().map(grant_json).collect::<Vec<_>>(),
        "subscription": subscription.as_ref().map(subscription_json),
        "panel": panel_state.json,
    });
    Ok(Output::new(json, text))
}

pub async fn user(source: &Source, telegram_id: &str) -> Result<Output, CtlError> {
    let telegram_id = telegram_id
        .trim()
        .parse::<TelegramUserId>()
        .map_err(|error| CtlError::Usage(format!("malformed Telegram id: {error}")))?;
    let panel = PanelAccess::load(source)?;
    let db = connect_db(source).await?;
    let result = user_on(&db, &panel, telegram_id.into_inner()).await;
    db.close().await.ok();
    result
}

async fn user_on(
    db: &DatabaseConnection,
    panel: &PanelAccess,
    telegram_id: i64,
) -> Result<Output, CtlError> {
    let Some(user) = users::Entity::find()
        .filter(users::Column::TelegramId.eq(telegram_id))
        .one(db)
        .await
        .map_err(db_failed)?
    else {
        return Err(CtlError::Failed(format!(
            "no user with Telegram id {telegram_id}"
        )));
    };
    let payments = payments::Entity::find()
        .filter(payments::Column::UserId.eq(user.id))
        .order_by_asc(payments::Column::CreatedAt)
        .all(db)
        .await
        .map_err(db_failed)?;
    let subscription = subscriptions::Entity::find()
        .filter(subscriptions::Column::UserId.eq(user.id))
        .one(db)
        .await
        .map_err(db_failed)?;
    let grants = match &subscription {
        Some(s) => subscription_grants::Entity::find()
            .filter(subscription_grants::Column::SubscriptionId.eq(s.id))
            .order_by_asc(subscription_grants::Column::Id)
            .all(db)
            .await
            .map_err(db_failed)?,
        None => Vec::new(),
    };
    let panel_state = panel.state(subscription.as_ref()).await;

    let mut text = format!(
        "user {} (Telegram {}{})\n",
        user.id,
        user.telegram_id,
        user.username
            .as_deref()
            .map(|u| format!(", @{u}"))
            .unwrap_or_default()
    );
    text.push_str(&format!("payments ({}):\n", payments.len()));
    for p in &payments {
        text.push_str(&format!(
            "  {}  {}  {:<9} {:<18} {}\n",
            time(p.created_at),
            p.id,
            p.provider,
            p.status.as_str(),
            p.amount()
        ));
    }
    text.push_str(&format!("ledger ({} entries):\n", grants.len()));
    for g in &grants {
        text.push_str(&format!(
            "  {}  {:<8} +{} days{}  -> {}  payment {}\n",
            time(g.created_at),
            g.kind,
            g.days_granted,
            if g.days_revoked > 0 {
                format!(" (-{} revoked)", g.days_revoked)
            } else {
                String::new()
            },
            time(g.expires_at_after),
            g.payment_id.map(|id| id.to_string()).unwrap_or_default()
        ));
    }
    match &subscription {
        Some(s) => {
            let panel_user = panel_state.user.as_ref();
            text.push_str(&format!(
                "subscription {} on the panel as {}\n",
                s.id, s.marzban_username
            ));
            text.push_str(&format!(
                "  {:<12}{:<28}{}\n",
                "", "ledger (intent)", "panel"
            ));
            let panel_value = |f: &dyn Fn(&PanelUser) -> String| {
                panel_user.map_or_else(|| panel_state.absent.clone(), f)
            };
            text.push_str(&format!(
                "  {:<12}{:<28}{}\n",
                "expires",
                time(s.expires_at),
                panel_value(&|u| u.expire.map_or("never".to_owned(), unix_time))
            ));
            text.push_str(&format!(
                "  {:<12}{:<28}{}\n",
                "data limit",
                limit(s.data_limit_bytes),
                panel_value(&|u| limit(u.data_limit))
            ));
            text.push_str(&format!(
                "  {:<12}{:<28}{}\n",
                "status",
                s.status,
                panel_value(&|u| panel::status_str(u.status).to_owned())
            ));
            text.push_str(&format!(
                "  {:<12}{:<28}{}\n",
                "synced",
                s.synced_at.map_or("never".to_owned(), time),
                s.sync_error.as_deref().unwrap_or("")
            ));
            text.push_str(&panel_state.verdict_line());
        }
        None => text.push_str("no subscription yet\n"),
    }

    let json = json!({
        "user": {"id": user.id, "telegram_id": user.telegram_id, "username": user.username},
        "payments": payments.iter().map(payment_json).collect::<Vec<_>>(),
        "subscription": subscription.as_ref().map(subscription_json),
        "ledger": grants.iter().map(grant_json).collect::<Vec<_>>(),
        "panel": panel_state.json,
    });
    Ok(Output::new(json, text))
}

/// The panel client (`PANEL_KIND`), when its URL is set.
pub struct PanelAccess(Option<Arc<dyn Panel>>);

impl PanelAccess {
    pub fn load(source: &Source) -> Result<Self, CtlError> {
        let settings: marzban_sync::ServiceSettings = source.load()?;
        let client = settings
            .panel
            .map(|p| p.connect().map_err(|e| CtlError::Usage(e.to_string())))
            .transpose()?;
        Ok(Self(client))
    }

    pub fn client(&self) -> Option<&dyn Panel> {
        self.0.as_deref()
    }

    /// The panel user of `subscription`, compared with its intent. A panel that does not
    /// answer is reported, not fatal: the rest of the picture is still worth seeing.
    async fn state(&self, subscription: Option<&subscriptions::Model>) -> PanelState {
        let Some(subscription) = subscription else {
            return PanelState::note(json!({"state": "no subscription"}), "(no subscription)");
        };
        let Some(client) = &self.0 else {
            return PanelState::note(
                json!({"state": "not configured", "note": "PANEL_URL is not set"}),
                "(PANEL_URL not set)",
            );
        };
        let username = match MarzbanUsername::adopted(subscription.marzban_username.clone()) {
            Ok(name) => name,
            Err(error) => {
                return PanelState::note(
                    json!({"state": "error", "error": error.to_string()}),
                    "(bad username)",
                );
            }
        };
        match client.get_user(&username).await {
            Ok(user) => {
                let desired = Desired::new(
                    username,
                    subscription.expires_at,
                    subscription.data_limit_bytes,
                );
                let differences = match panel::plan_repair(&desired, user.as_ref(), Utc::now()) {
                    Repair::None => Vec::new(),
                    Repair::Create => vec!["paid user missing on the panel".to_owned()],
                    Repair::Modify { differences, .. } => differences,
                };
                let json = match &user {
                    Some(u) => json!({
                        "state": "found",
                        "username": u.username,
                        "status": panel::status_str(u.status),
                        "expire": u.expire,
                        "expires_at": u.expire.map(unix_time),
                        "data_limit": u.data_limit,
                        "used_traffic": u.used_traffic,
                        "in_sync": differences.is_empty(),
                        "differences": differences,
                    }),
                    None => json!({
                        "state": "missing",
                        "in_sync": differences.is_empty(),
                        "differences": differences,
                    }),
                };
                let absent = "(missing)".to_owned();
                let text = match &user {
                    Some(u) => format!(
                        "panel: {} {} until {}, data limit {}, used {} bytes\n",
                        u.username,
                        panel::status_str(u.status),
                        u.expire.map_or("never".to_owned(), unix_time),
                        limit(u.data_limit),
                        u.used_traffic
                    ),
                    None => format!(
                        "panel: {} is not on the panel\n",
                        subscription.marzban_username
                    ),
                };
                PanelState {
                    json,
                    text,
                    absent,
                    user,
                    differences: Some(differences),
                }
            }
            Err(error) => PanelState::note(
                json!({"state": "unavailable", "error": error.to_string()}),
                &format!("(unavailable: {error})"),
            ),
        }
    }
}

struct PanelState {
    json: Value,
    text: String,
    /// What the side-by-side view shows when there is no panel user to show.
    absent: String,
    user: Option<PanelUser>,
    /// `None` when the panel could not be compared.
    differences: Option<Vec<String>>,
}

impl PanelState {
    fn note(json: Value, absent: &str) -> Self {
        Self {
            json,
            text: format!("panel: {absent}\n"),
            absent: absent.to_owned(),
            user: None,
            differences: None,
        }
    }

    fn verdict_line(&self) -> String {
        match &self.differences {
            Some(d) if d.is_empty() => "  panel matches the ledger\n".to_owned(),
            Some(d) => format!("  DRIFT: {} (acpctl drift repair)\n", d.join(", ")),
            None => String::new(),
        }
    }
}

fn payment_json(p: &payments::Model) -> Value {
    json!({
        "id": p.id,
        "user_id": p.user_id,
        "tariff_id": p.tariff_id,
        "provider": p.provider,
        "provider_payment_id": p.provider_payment_id,
        "amount_minor": p.amount_minor,
        "amount": p.amount().to_string(),
        "currency": p.currency.to_string(),
        "status": p.status.as_str(),
        "refunded_minor": p.refunded_minor,
        "flagged": p.flagged,
        "flag_reason": p.flag_reason,
        "failure_reason": p.failure_reason,
        "created_at": time(p.created_at),
        "completed_at": p.completed_at.map(time),
        "expires_at": p.expires_at.map(time),
        "next_check_at": p.next_check_at.map(time),
        "check_attempts": p.check_attempts,
    })
}

fn grant_json(g: &subscription_grants::Model) -> Value {
    json!({
        "id": g.id,
        "payment_id": g.payment_id,
        "kind": g.kind,
        "days_granted": g.days_granted,
        "days_revoked": g.days_revoked,
        "expires_at_after": time(g.expires_at_after),
        "created_at": time(g.created_at),
        "revoked_at": g.revoked_at.map(time),
    })
}

fn subscription_json(s: &subscriptions::Model) -> Value {
    json!({
        "id": s.id,
        "marzban_username": s.marzban_username,
        "expires_at": time(s.expires_at),
        "data_limit_bytes": s.data_limit_bytes,
        "status": s.status,
        "subscription_url": s.subscription_url,
        "synced_at": s.synced_at.map(time),
        "sync_error": s.sync_error,
    })
}

fn unix_time(seconds: i64) -> String {
    DateTime::from_timestamp(seconds, 0).map_or_else(|| seconds.to_string(), time)
}

fn limit(bytes: Option<i64>) -> String {
    match bytes {
        Some(b) if b > 0 => format!("{b} bytes"),
        _ => "unlimited".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_keys() {
        assert!(payment_key("019a0000-0000-7000-8000-000000000000").is_ok());
        assert!(payment_key("2d3b5c2a-000f-5000-8000-1b2c3d4e5f60").is_ok());
        for bad in ["", "  ", "a b", "x\u{7}", &"x".repeat(200)] {
            assert!(
                matches!(payment_key(bad), Err(CtlError::Usage(_))),
                "{bad:?}"
            );
        }
    }
}
