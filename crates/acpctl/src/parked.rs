//! `acpctl parked list | show ID | replay [ID | --all] [--queue Q]`, on the RabbitMQ parking
//! queues through [`messaging::DeliverySource`].

use messaging::topology::system_consumers;
use messaging::{BusError, DeliverySource, Envelope, ParkedMessage, RabbitBus, RabbitConfig};
use serde_json::{Value, json};
use service_kit::redact_url;
use service_kit::settings::{Source, load_common_with_defaults};

use crate::{CONNECT_TIMEOUT, CtlError, Output, ParkedCommand, QueueArg};

pub async fn run(command: &ParkedCommand, source: &Source) -> Result<Output, CtlError> {
    let (bus, prefix) = connect(source).await?;
    let result = match command {
        ParkedCommand::List { queue, limit } => {
            list(&bus, &consumers(queue, &prefix)?, *limit).await
        }
        ParkedCommand::Show { id, queue } => show(&bus, &consumers(queue, &prefix)?, id).await,
        ParkedCommand::Replay(args) => {
            let consumers = consumers(&args.queue, &prefix)?;
            match &args.id {
                Some(id) => replay_one(&bus, &consumers, id, &prefix).await,
                None => replay_all(&bus, &consumers, &prefix).await,
            }
        }
    };
    bus.close().await;
    result
}

/// The broker of `AMQP_URL` under `AMQP_PREFIX`. The standalone mode has no broker: its
/// in-process bus keeps parked messages in the standalone process's memory.
async fn connect(source: &Source) -> Result<(RabbitBus, String), CtlError> {
    // Parking queues need no database: a placeholder lets the common settings (AMQP_URL,
    // AMQP_PREFIX, AMQP_QUEUE_TYPE) load and validate without DATABASE_URL.
    let common = load_common_with_defaults(source, &[("DATABASE_URL", "sqlite::memory:")])?;
    let Some(url) = common.amqp_url.clone() else {
        return Err(CtlError::Usage(
            "no broker: AMQP_URL is not set. Parked messages live in RabbitMQ; the standalone \
             mode's in-process bus keeps its parked messages inside the standalone process, \
             out of acpctl's reach"
                .to_owned(),
        ));
    };
    let config = RabbitConfig::new(url.clone(), common.amqp_prefix.clone())
        .with_connection_name("acpctl")
        .with_queue_type(common.queue_type()?);
    let unreachable = |error: String| {
        CtlError::Failed(format!(
            "cannot reach the broker at {}: {error}",
            redact_url(&url)
        ))
    };
    let bus = tokio::time::timeout(CONNECT_TIMEOUT, RabbitBus::connect(config))
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|error| unreachable(error.to_string()))?;
    Ok((bus, common.amqp_prefix))
}

/// The consumers `--queue` names (all of them without it). Accepts `marzban-sync`,
/// `<prefix>.marzban-sync` and `<prefix>.marzban-sync.parking`.
fn consumers(queue: &QueueArg, prefix: &str) -> Result<Vec<String>, CtlError> {
    let known: Vec<String> = system_consumers().into_iter().map(|c| c.name).collect();
    let Some(name) = &queue.name else {
        return Ok(known);
    };
    let bare = name.strip_prefix(&format!("{prefix}.")).unwrap_or(name);
    let bare = bare.strip_suffix(".parking").unwrap_or(bare);
    if known.iter().any(|k| k == bare) {
        Ok(vec![bare.to_owned()])
    } else {
        Err(CtlError::Usage(format!(
            "unknown queue `{name}`: use one of {}",
            known.join(", ")
        )))
    }
}

fn broker_failed(error: BusError) -> CtlError {
    CtlError::Failed(format!("broker: {error}"))
}

/// The parking queue's size; `None` when it does not exist (no service declared it yet).
async fn count(bus: &RabbitBus, consumer: &str) -> Result<Option<u64>, CtlError> {
    match bus.parking_count(consumer).await {
        Ok(n) => Ok(Some(n)),
        Err(error) if error.to_string().contains("NOT_FOUND") => Ok(None),
        Err(error) => Err(broker_failed(error)),
    }
}

async fn list(bus: &RabbitBus, consumers: &[String], limit: usize) -> Result<Output, CtlError> {
    let mut queues = Vec::new();
    let mut text = String::new();
    for consumer in consumers {
        let queue = bus.names().parking_queue(consumer);
        let Some(n) = count(bus, consumer).await? else {
            text.push_str(&format!("{queue}: no such queue\n"));
            queues.push(json!({"consumer": consumer, "queue": queue, "exists": false, "count": 0, "messages": []}));
            continue;
        };
        let messages = if n > 0 {
            bus.peek_parked(consumer, limit)
                .await
                .map_err(broker_failed)?
        } else {
            Vec::new()
        };
        text.push_str(&format!("{queue}: {n} parked\n"));
        for message in &messages {
            text.push_str(&format!("  {}\n", summary(message)));
        }
        if n > messages.len() as u64 {
            text.push_str(&format!(
                "  … {} more (--limit)\n",
                n - messages.len() as u64
            ));
        }
        queues.push(json!({
            "consumer": consumer,
            "queue": queue,
            "exists": true,
            "count": n,
            "messages": messages.iter().map(describe).collect::<Vec<_>>(),
        }));
    }
    Ok(Output::new(json!({"queues": queues}), text))
}

async fn show(bus: &RabbitBus, consumers: &[String], id: &str) -> Result<Output, CtlError> {
    for consumer in consumers {
        let Some(n) = count(bus, consumer).await? else {
            continue;
        };
        if n == 0 {
            continue;
        }
        let parked = bus
            .peek_parked(consumer, usize::try_from(n).unwrap_or(usize::MAX))
            .await
            .map_err(broker_failed)?;
        if let Some(message) = parked
            .iter()
            .find(|m| m.message.message_id.as_deref() == Some(id))
        {
            let mut json = describe(message);
            json["consumer"] = json!(consumer);
            json["queue"] = json!(bus.names().parking_queue(consumer));
            json["body"] = body(&message.message.body);
            let body_text = match &json["body"] {
                Value::String(raw) => raw.clone(),
                other => serde_json::to_string_pretty(other).unwrap_or_default(),
            };
            let text = format!(
                "{}\nqueue:     {}\nerror:     {}\nbody:\n{body_text}\n",
                summary(message),
                bus.names().parking_queue(consumer),
                message.error.as_deref().unwrap_or("-"),
            );
            return Ok(Output::new(json, text));
        }
    }
    Err(not_parked(id, consumers))
}

fn not_parked(id: &str, consumers: &[String]) -> CtlError {
    CtlError::Failed(format!(
        "no parked message with id `{id}` in {}",
        consumers.join(", ")
    ))
}

async fn replay_one(
    bus: &RabbitBus,
    consumers: &[String],
    id: &str,
    prefix: &str,
) -> Result<Output, CtlError> {
    for consumer in consumers {
        if count(bus, consumer).await?.unwrap_or(0) == 0 {
            continue;
        }
        if bus
            .replay_parked_message(consumer, id)
            .await
            .map_err(broker_failed)?
        {
            let queue = messaging::Names::new(prefix).queue(consumer);
            return Ok(Output::new(
                json!({"replayed": [{"consumer": consumer, "queue": queue, "count": 1, "ids": [id]}], "total": 1}),
                format!(
                    "replayed {id} to {queue} (confirmed by the broker; the parked copy is removed)\n"
                ),
            ));
        }
    }
    Err(not_parked(id, consumers))
}

async fn replay_all(
    bus: &RabbitBus,
    consumers: &[String],
    prefix: &str,
) -> Result<Output, CtlError> {
    let names = messaging::Names::new(prefix);
    let mut replayed = Vec::new();
    let mut text = String::new();
    let mut total = 0;
    for consumer in consumers {
        if count(bus, consumer).await?.unwrap_or(0) == 0 {
            continue;
        }
        let moved = bus
            .replay_parked(consumer, None)
            .await
            .map_err(broker_failed)?;
        total += moved;
        let queue = names.queue(consumer);
        text.push_str(&format!("replayed {moved} to {queue}\n"));
        replayed.push(json!({"consumer": consumer, "queue": queue, "count": moved}));
    }
    if total == 0 {
        text.push_str("nothing parked\n");
    }
    Ok(Output::new(
        json!({"replayed": replayed, "total": total}),
        text,
    ))
}

/// One line: id, routing key, attempts, when, error.
fn summary(parked: &ParkedMessage) -> String {
    format!(
        "{}  {}  attempts {}  parked {}  error: {}",
        parked.message.message_id.as_deref().unwrap_or("(no id)"),
        parked.message.routing_key,
        parked.attempts,
        parked.parked_at.as_deref().unwrap_or("-"),
        one_line(parked.error.as_deref().unwrap_or("-")),
    )
}

fn describe(parked: &ParkedMessage) -> Value {
    let envelope = Envelope::from_json(&parked.message.body).ok();
    json!({
        "id": parked.message.message_id,
        "routing_key": parked.message.routing_key,
        "attempts": parked.attempts,
        "error": parked.error,
        "parked_at": parked.parked_at,
        "event_type": envelope.as_ref().map(|e| e.event_type.clone()),
        "correlation_id": envelope.as_ref().map(|e| e.correlation_id.to_string()),
    })
}

/// The body as JSON when it is JSON, else as text.
fn body(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn one_line(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 160 {
        format!("{}…", line.chars().take(160).collect::<String>())
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_in_every_spelling() {
        let q = |name: &str| QueueArg {
            name: Some(name.to_owned()),
        };
        for name in [
            "marzban-sync",
            "acp.marzban-sync",
            "acp.marzban-sync.parking",
        ] {
            assert_eq!(consumers(&q(name), "acp").unwrap(), vec!["marzban-sync"]);
        }
        assert!(matches!(
            consumers(&q("nope"), "acp"),
            Err(CtlError::Usage(_))
        ));
        assert_eq!(consumers(&QueueArg { name: None }, "acp").unwrap().len(), 3);
    }
}
