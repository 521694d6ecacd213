//! Sends notifications to the webhook URL, applying the scripted [`NotificationMode`]s.
//!
//! Notifications go out one at a time in event order, so only the scripted modes change the
//! order the receiver sees. A non-200 answer is retried on the configured redelivery schedule
//! in the background, like YooKassa does for 24 hours.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use super::state::Outgoing;
use super::{Delivery, DeliveryOutcome, NotificationMode, Shared, lock};

pub(crate) async fn run(
    shared: Arc<Shared>,
    client: reqwest::Client,
    mut rx: UnboundedReceiver<Outgoing>,
) {
    let mut held: Option<(Outgoing, Instant)> = None;
    loop {
        let next = match &held {
            Some((_, deadline)) => match tokio::time::timeout_at(*deadline, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    if let Some((late, _)) = held.take() {
                        deliver(&shared, &client, late).await;
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(note) = next else {
            break;
        };
        match shared.take_mode() {
            NotificationMode::Normal => {
                deliver(&shared, &client, note).await;
                flush(&shared, &client, &mut held).await;
            }
            NotificationMode::Duplicate => {
                deliver(&shared, &client, note.clone()).await;
                deliver(&shared, &client, note).await;
                flush(&shared, &client, &mut held).await;
            }
            NotificationMode::Late { delay_ms } => {
                let (shared, client) = (shared.clone(), client.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    deliver(&shared, &client, note).await;
                });
            }
            NotificationMode::Dropped => {
                let body = body(&note);
                shared.record_delivery(record(&note, 0, DeliveryOutcome::Dropped, body));
            }
            NotificationMode::Reordered => {
                flush(&shared, &client, &mut held).await;
                held = Some((note, Instant::now() + shared.config.reorder_hold));
            }
        }
    }
    flush(&shared, &client, &mut held).await;
}

async fn flush(
    shared: &Arc<Shared>,
    client: &reqwest::Client,
    held: &mut Option<(Outgoing, Instant)>,
) {
    if let Some((note, _)) = held.take() {
        deliver(shared, client, note).await;
    }
}

fn body(note: &Outgoing) -> Value {
    json!({"type": "notification", "event": note.event, "object": note.object})
}

fn record(note: &Outgoing, attempt: u32, outcome: DeliveryOutcome, body: Value) -> Delivery {
    Delivery {
        seq: note.seq,
        event: note.event.clone(),
        object_id: note
            .object
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        attempt,
        outcome,
        body,
    }
}

/// First attempt inline; redeliveries in the background so later notifications are not held up.
async fn deliver(shared: &Arc<Shared>, client: &reqwest::Client, note: Outgoing) {
    if attempt(shared, client, &note, 1).await {
        return;
    }
    let schedule = shared.config.redelivery.clone();
    if schedule.is_empty() {
        return;
    }
    let (shared, client) = (shared.clone(), client.clone());
    tokio::spawn(async move {
        for (n, pause) in (2u32..).zip(schedule) {
            tokio::time::sleep(pause).await;
            if attempt(&shared, &client, &note, n).await {
                return;
            }
        }
    });
}

/// Returns true when no further attempt is needed.
async fn attempt(shared: &Shared, client: &reqwest::Client, note: &Outgoing, n: u32) -> bool {
    let body = body(note);
    let url = lock(&shared.webhook_url).clone();
    let Some(url) = url else {
        shared.record_delivery(record(note, n, DeliveryOutcome::NoWebhook, body));
        return true;
    };
    let outcome = match client.post(&url).json(&body).send().await {
        Ok(response) if response.status().as_u16() == 200 => {
            DeliveryOutcome::Delivered { status: 200 }
        }
        Ok(response) => DeliveryOutcome::Rejected {
            status: response.status().as_u16(),
        },
        Err(error) => DeliveryOutcome::Error {
            message: error.to_string(),
        },
    };
    let done = matches!(outcome, DeliveryOutcome::Delivered { .. });
    if !done {
        tracing::debug!(event = %note.event, attempt = n, ?outcome, "notification not accepted");
    }
    shared.record_delivery(record(note, n, outcome, body));
    done
}
