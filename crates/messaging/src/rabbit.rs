//! RabbitMQ transport (lapin 4, plain AMQP): topology declaration, a confirming publisher,
//! consumer subscriptions and the parking-queue operations.
//!
//! One connection per [`RabbitBus`], reopened on demand after it drops. Publishing (events,
//! retries, parking, replay) shares one channel in confirm mode; each subscription and each
//! ops call uses a channel of its own, because a failed passive declare closes its channel.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
};
use tokio::sync::Mutex;

use crate::bus::{
    Bus, BusError, Delivery, DeliverySource, DeliveryStream, Message, OutgoingMessage,
    ParkedMessage, PublishError, Publisher, Settle,
};
use crate::topology::{ConsumerSpec, Names};

/// Header: attempts that failed so far (integer).
pub const HEADER_ATTEMPT: &str = "x-acp-attempt";
/// Header: the routing key the event was published with (dead-lettering replaces it).
pub const HEADER_ROUTING_KEY: &str = "x-acp-routing-key";
/// Header: the last handler error.
pub const HEADER_ERROR: &str = "x-acp-error";
/// Header: when the message was parked (RFC 3339).
pub const HEADER_PARKED_AT: &str = "x-acp-parked-at";
/// Header: the consumer that parked the message.
pub const HEADER_CONSUMER: &str = "x-acp-consumer";
/// Header: id of the replay run that last moved the message out of parking.
pub const HEADER_REPLAY: &str = "x-acp-replay";

/// Redeliveries (by nack/requeue or a consumer dying mid-message) after which the broker
/// itself parks a message: a guard against a message that crashes its consumer every time.
pub const DELIVERY_LIMIT: i64 = 20;

/// Errors recorded in headers are cut to this many bytes.
const MAX_ERROR_BYTES: usize = 2048;

/// The type of the work and parking queues.
///
/// Quorum queues (the default) are replicated in a cluster and park a message that crashed
/// its consumer [`DELIVERY_LIMIT`] times. Classic durable queues are the lighter choice for a
/// single node; the test suite runs on them because RabbitMQ 3.10 stopped answering under the
/// declare/delete churn of hundreds of short-lived quorum queues (see the README).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    #[default]
    Quorum,
    Classic,
}

impl std::str::FromStr for QueueType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            other => Err(format!(
                "unknown queue type {other:?}: use quorum or classic"
            )),
        }
    }
}

impl QueueType {
    /// `AMQP_QUEUE_TYPE` from the environment, `quorum` when unset or unknown.
    pub fn from_env() -> Self {
        std::env::var("AMQP_QUEUE_TYPE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    }

    fn arguments(self) -> FieldTable {
        let mut args = FieldTable::default();
        if self == Self::Quorum {
            args.insert("x-queue-type".into(), long_string("quorum"));
        }
        args
    }
}

/// RabbitMQ connection settings.
#[derive(Clone)]
pub struct RabbitConfig {
    /// `amqp://user:pass@host:5672/%2f`.
    pub url: String,
    /// Prefix of every exchange and queue name.
    pub prefix: String,
    /// Shown in the management UI.
    pub connection_name: String,
    /// Type of the work and parking queues.
    pub queue_type: QueueType,
}

impl RabbitConfig {
    /// Settings with a connection name derived from the prefix and the queue type from
    /// `AMQP_QUEUE_TYPE` (default quorum).
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self {
            url: url.into(),
            connection_name: format!("{prefix}-messaging"),
            prefix,
            queue_type: QueueType::from_env(),
        }
    }

    /// Sets the queue type.
    #[must_use]
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Sets the connection name (e.g. the service name).
    #[must_use]
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }
}

/// The RabbitMQ bus. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RabbitBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("prefix", &self.inner.names.prefix())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: RabbitConfig,
    names: Names,
    connection: Mutex<Option<Connection>>,
    confirm_channel: Mutex<Option<Channel>>,
}

impl RabbitBus {
    /// Connects and declares the events exchange, so a wrong URL fails at start-up.
    pub async fn connect(config: RabbitConfig) -> Result<Self, BusError> {
        let bus = Self {
            inner: Arc::new(Inner {
                names: Names::new(config.prefix.clone()),
                config,
                connection: Mutex::new(None),
                confirm_channel: Mutex::new(None),
            }),
        };
        bus.declare_exchange().await?;
        Ok(bus)
    }

    /// The naming scheme in use.
    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// A new channel on the (re)opened connection, for operations this type does not cover.
    pub async fn channel(&self) -> Result<Channel, BusError> {
        let mut guard = self.inner.connection.lock().await;
        if let Some(connection) = guard.as_ref()
            && connection.status().connected()
        {
            return Ok(connection.create_channel().await?);
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(self.inner.config.connection_name.clone().into());
        let connection =
            Connection::connect_uri(connection_uri(&self.inner.config.url)?, properties).await?;
        let channel = connection.create_channel().await?;
        *guard = Some(connection);
        Ok(channel)
    }

    async fn confirming_channel(&self) -> Result<Channel, BusError> {
        let mut guard = self.inner.confirm_channel.lock().await;
        if let Some(channel) = guard.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *guard = Some(channel.clone());
        Ok(channel)
    }

    /// Declares `<prefix>.events`, a durable topic exchange.
    pub async fn declare_exchange(&self) -> Result<(), BusError> {
        let channel = self.channel().await?;
        channel
            .exchange_declare(
                self.inner.names.exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        close(channel).await;
        Ok(())
    }

    /// Declares the exchange and every consumer of `consumers`: what a service does at
    /// start-up for the consumers it runs.
    pub async fn declare_topology(&self, consumers: &[ConsumerSpec]) -> Result<(), BusError> {
        self.declare_exchange().await?;
        for consumer in consumers {
            self.declare(consumer).await?;
        }
        Ok(())
    }

    /// Deletes the consumer's queues (tests and decommissioning). Messages in them are lost.
    pub async fn delete_consumer(&self, consumer: &ConsumerSpec) -> Result<(), BusError> {
        let names = &self.inner.names;
        let channel = self.channel().await?;
        let mut queues = vec![
            names.queue(&consumer.name),
            names.parking_queue(&consumer.name),
        ];
        queues.extend(
            consumer
                .distinct_delays()
                .into_iter()
                .map(|delay| names.retry_queue(&consumer.name, delay)),
        );
        for queue in queues {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        close(channel).await;
        Ok(())
    }

    /// Deletes the events exchange (tests).
    pub async fn delete_exchange(&self) -> Result<(), BusError> {
        let channel = self.channel().await?;
        channel
            .exchange_delete(
                self.inner.names.exchange().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
        close(channel).await;
        Ok(())
    }

    /// Closes the connection (pending confirms fail).
    pub async fn close(&self) {
        if let Some(channel) = self.inner.confirm_channel.lock().await.take() {
            close(channel).await;
        }
        if let Some(connection) = self.inner.connection.lock().await.take() {
            connection.close(200, "bye".into()).await.ok();
        }
    }

    /// Sends one message with `mandatory` and persistent delivery; the returned future
    /// resolves to the broker's confirmation.
    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm, PublishError> {
        let channel = self.confirming_channel().await.map_err(|err| match err {
            BusError::Broker(err) => PublishError::Broker(err),
            _ => PublishError::Closed,
        })?;
        Ok(channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await?)
    }

    /// Publishes to the default exchange straight into `queue` and waits for the confirm.
    async fn send_to_queue(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirm = self.send("", queue, body, properties).await?;
        confirmed(confirm, queue).await
    }

    fn event_properties(message_id: &str) -> BasicProperties {
        BasicProperties::default()
            .with_message_id(message_id.into())
            .with_content_type("application/json".into())
            .with_timestamp(u64::try_from(Utc::now().timestamp()).unwrap_or_default())
    }

    async fn queue_size(&self, queue: String) -> Result<u64, BusError> {
        let channel = self.channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        close(channel).await;
        Ok(u64::from(declared.message_count()))
    }
}

async fn confirmed(confirm: PublisherConfirm, routing_key: &str) -> Result<(), PublishError> {
    match confirm.await? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
            routing_key: routing_key.to_owned(),
        }),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked {
            routing_key: routing_key.to_owned(),
        }),
    }
}

async fn close(channel: Channel) {
    // Best effort: a channel that is already closed has nothing left to release.
    channel.close(200, "done".into()).await.ok();
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn header_string(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header_u32(headers: Option<&FieldTable>, key: &str) -> Option<u32> {
    let value: i128 = match headers?.inner().get(key)? {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::Timestamp(v) => (*v).into(),
        _ => return None,
    };
    u32::try_from(value).ok()
}

fn truncate(error: &str) -> &str {
    if error.len() <= MAX_ERROR_BYTES {
        return error;
    }
    let mut end = MAX_ERROR_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

/// Reads what we need from a lapin delivery's properties.
fn message_from(delivery: &lapin::message::Delivery) -> Message {
    let headers = delivery.properties.headers().as_ref();
    Message {
        body: delivery.data.clone(),
        routing_key: header_string(headers, HEADER_ROUTING_KEY)
            .unwrap_or_else(|| delivery.routing_key.as_str().to_owned()),
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned()),
        failed_attempts: header_u32(headers, HEADER_ATTEMPT).unwrap_or(0),
        redelivered: delivery.redelivered,
    }
}

/// Copies the delivery's properties for a republish, with updated headers.
fn republish_properties(
    original: &BasicProperties,
    message: &Message,
    extra: &[(&str, AMQPValue)],
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(HEADER_ROUTING_KEY.into(), long_string(&message.routing_key));
    for (key, value) in extra {
        headers.insert(ShortString::from(*key), value.clone());
    }
    let mut properties = original.clone().with_headers(headers);
    if original.message_id().is_none()
        && let Some(id) = &message.message_id
    {
        properties = properties.with_message_id(id.as_str().into());
    }
    properties
}

struct RabbitSettle {
    bus: RabbitBus,
    consumer: String,
    acker: lapin::Acker,
    properties: BasicProperties,
}

impl RabbitSettle {
    /// Confirmed copy into `queue` first, then ack: a crash in between duplicates, never
    /// loses. If the copy fails the original goes back to the queue rather than sitting
    /// unacknowledged on a live channel.
    async fn move_to(
        self: Box<Self>,
        queue: &str,
        message: &Message,
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        if let Err(err) = self
            .bus
            .send_to_queue(queue, &message.body, properties)
            .await
        {
            self.acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
                .ok();
            return Err(err.into());
        }
        self.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    async fn retry(
        self: Box<Self>,
        message: &Message,
        failed_attempts: u32,
        delay: Duration,
        error: &str,
    ) -> Result<(), BusError> {
        let queue = self.bus.names().retry_queue(&self.consumer, delay);
        let properties = republish_properties(
            &self.properties,
            message,
            &[
                (
                    HEADER_ATTEMPT,
                    AMQPValue::LongLongInt(failed_attempts.into()),
                ),
                (HEADER_ERROR, long_string(truncate(error))),
            ],
        );
        self.move_to(&queue, message, properties).await
    }

    async fn park(
        self: Box<Self>,
        message: &Message,
        failed_attempts: u32,
        error: &str,
    ) -> Result<(), BusError> {
        let queue = self.bus.names().parking_queue(&self.consumer);
        let parked_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let properties = republish_properties(
            &self.properties,
            message,
            &[
                (
                    HEADER_ATTEMPT,
                    AMQPValue::LongLongInt(failed_attempts.into()),
                ),
                (HEADER_ERROR, long_string(truncate(error))),
                (HEADER_PARKED_AT, long_string(&parked_at)),
                (HEADER_CONSUMER, long_string(&self.consumer)),
            ],
        );
        self.move_to(&queue, message, properties).await
    }

    async fn requeue(self: Box<Self>) -> Result<(), BusError> {
        self.acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Publisher for RabbitBus {
    async fn publish(&self, message: &OutgoingMessage) -> Result<(), PublishError> {
        let confirm = self
            .send(
                &self.inner.names.exchange(),
                &message.routing_key,
                &message.body,
                Self::event_properties(&message.message_id),
            )
            .await?;
        confirmed(confirm, &message.routing_key).await
    }

    /// Sends every message first and then collects the confirms, so a batch costs about one
    /// round trip instead of one per message.
    async fn publish_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        let exchange = self.inner.names.exchange();
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            pending.push(
                self.send(
                    &exchange,
                    &message.routing_key,
                    &message.body,
                    Self::event_properties(&message.message_id),
                )
                .await,
            );
        }
        let mut answers = Vec::with_capacity(messages.len());
        for sent in pending {
            answers.push(match sent {
                Ok(confirm) => confirm.await.map_err(PublishError::from),
                Err(err) => Err(err),
            });
        }
        // lapin hands a returned (unroutable) message to whichever confirm it resolves next,
        // and RabbitMQ may confirm a batch out of order (an unroutable message at once, a
        // persisted one after its fsync): so a return is matched to the batch's messages by
        // its message id, not by the confirm it came with.
        let returned: std::collections::HashSet<String> = answers
            .iter()
            .filter_map(|answer| match answer {
                Ok(Confirmation::Ack(Some(returned))) => returned
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned()),
                _ => None,
            })
            .collect();
        answers
            .into_iter()
            .zip(messages)
            .map(|(answer, message)| match answer? {
                Confirmation::Ack(_) if returned.contains(&message.message_id) => {
                    Err(PublishError::Unroutable {
                        routing_key: message.routing_key.clone(),
                    })
                }
                Confirmation::Ack(_) => Ok(()),
                Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked {
                    routing_key: message.routing_key.clone(),
                }),
            })
            .collect()
    }
}

#[async_trait]
impl DeliverySource for RabbitBus {
    /// The work queue (quorum, bound to the patterns, parking as its own dead-letter target
    /// once [`DELIVERY_LIMIT`] is hit), one classic durable delay queue per distinct retry
    /// delay (TTL, dead-lettering back into the work queue through the default exchange, so
    /// only this consumer sees the retry) and the parking queue (quorum).
    async fn declare(&self, consumer: &ConsumerSpec) -> Result<(), BusError> {
        let names = &self.inner.names;
        let queue = names.queue(&consumer.name);
        let parking = names.parking_queue(&consumer.name);
        let queue_type = self.inner.config.queue_type;
        let channel = self.channel().await?;

        channel
            .queue_declare(parking.as_str().into(), durable(), queue_type.arguments())
            .await?;

        let mut args = queue_type.arguments();
        if queue_type == QueueType::Quorum {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
        }
        args.insert("x-dead-letter-exchange".into(), long_string(""));
        args.insert("x-dead-letter-routing-key".into(), long_string(&parking));
        channel
            .queue_declare(queue.as_str().into(), durable(), args)
            .await?;
        for pattern in &consumer.bindings {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    names.exchange().into(),
                    pattern.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }

        for delay in consumer.distinct_delays() {
            // Classic durable queues: a quorum queue with at-least-once dead-lettering per
            // delay made RabbitMQ 3.10's dead-letter worker supervisor give up under the
            // declare/delete churn of parallel test runs (the node stopped answering AMQP
            // handshakes). The price is at-most-once dead-lettering from here back to the work
            // queue: a broker crash in the instant a delay expires can drop that one retry.
            let mut args = FieldTable::default();
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            args.insert("x-dead-letter-exchange".into(), long_string(""));
            args.insert("x-dead-letter-routing-key".into(), long_string(&queue));
            channel
                .queue_declare(
                    names.retry_queue(&consumer.name, delay).into(),
                    durable(),
                    args,
                )
                .await?;
        }
        close(channel).await;
        Ok(())
    }

    async fn subscribe(
        &self,
        consumer: &ConsumerSpec,
        prefetch: u16,
    ) -> Result<DeliveryStream, BusError> {
        self.declare(consumer).await?;
        let channel = self.channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let deliveries = channel
            .basic_consume(
                self.inner.names.queue(&consumer.name).into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let bus = self.clone();
        let name = consumer.name.clone();
        Ok(deliveries
            .map(move |delivery| {
                // The stream owns the channel: dropping the subscription closes it, and the
                // broker requeues whatever was delivered but not settled.
                let _channel = &channel;
                let delivery = delivery?;
                let message = message_from(&delivery);
                let settle = RabbitSettle {
                    bus: bus.clone(),
                    consumer: name.clone(),
                    acker: delivery.acker,
                    properties: delivery.properties,
                };
                Ok(Delivery::new(message, Box::new(settle)))
            })
            .boxed())
    }

    async fn parking_count(&self, consumer: &str) -> Result<u64, BusError> {
        self.queue_size(self.inner.names.parking_queue(consumer))
            .await
    }

    async fn queue_count(&self, consumer: &str) -> Result<Option<u64>, BusError> {
        self.queue_size(self.inner.names.queue(consumer))
            .await
            .map(Some)
    }

    async fn peek_parked(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<ParkedMessage>, BusError> {
        let parking = self.inner.names.parking_queue(consumer);
        let channel = self.channel().await?;
        let mut parked = Vec::new();
        // Unacked gets stay invisible to further gets; closing the channel returns them all
        // (the broker applies the return asynchronously, so a count right after may lag).
        while parked.len() < limit {
            let Some(got) = channel
                .basic_get(parking.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            let delivery = got.delivery;
            let headers = delivery.properties.headers().as_ref();
            parked.push(ParkedMessage {
                attempts: header_u32(headers, HEADER_ATTEMPT).unwrap_or(0),
                error: header_string(headers, HEADER_ERROR),
                parked_at: header_string(headers, HEADER_PARKED_AT),
                message: message_from(&delivery),
            });
        }
        close(channel).await;
        Ok(parked)
    }

    async fn replay_parked(&self, consumer: &str, limit: Option<u64>) -> Result<u64, BusError> {
        let names = &self.inner.names;
        let parking = names.parking_queue(consumer);
        let queue = names.queue(consumer);
        // Each replayed copy carries this run's id; meeting one again means it failed and was
        // parked again during this replay, so the run stops instead of looping.
        let run = uuid::Uuid::now_v7().to_string();
        let budget = limit.unwrap_or(u64::MAX);
        let channel = self.channel().await?;
        let mut moved = 0;
        while moved < budget {
            let Some(got) = channel
                .basic_get(parking.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            let headers = got.delivery.properties.headers().as_ref();
            if header_string(headers, HEADER_REPLAY).as_deref() == Some(run.as_str()) {
                break;
            }
            if let Err(err) = self.unpark(&queue, got.delivery, &run).await {
                close(channel).await;
                return Err(err);
            }
            moved += 1;
        }
        close(channel).await;
        Ok(moved)
    }

    async fn replay_parked_message(
        &self,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, BusError> {
        let names = &self.inner.names;
        let parking = names.parking_queue(consumer);
        let queue = names.queue(consumer);
        let run = uuid::Uuid::now_v7().to_string();
        let channel = self.channel().await?;
        // The messages looked at on the way stay unacknowledged on this channel, so each is
        // seen once; closing the channel returns them to the parking queue.
        let mut found = false;
        while let Some(got) = channel
            .basic_get(parking.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            let id = got.delivery.properties.message_id().as_ref();
            if id.map(|id| id.as_str()) == Some(message_id) {
                if let Err(err) = self.unpark(&queue, got.delivery, &run).await {
                    close(channel).await;
                    return Err(err);
                }
                found = true;
                break;
            }
        }
        close(channel).await;
        Ok(found)
    }
}

impl RabbitBus {
    /// Copies a parked delivery into `queue` with a fresh attempt count, tagged with the replay
    /// run, keeping its message id and headers; acknowledges (removes) the parked one only
    /// after the broker confirmed the copy. On failure the parked one stays (the caller closes
    /// the channel, which returns it).
    async fn unpark(
        &self,
        queue: &str,
        delivery: lapin::message::Delivery,
        run: &str,
    ) -> Result<(), BusError> {
        let message = message_from(&delivery);
        let properties = republish_properties(
            &delivery.properties,
            &message,
            &[
                (HEADER_ATTEMPT, AMQPValue::LongLongInt(0)),
                (HEADER_REPLAY, long_string(run)),
            ],
        );
        self.send_to_queue(queue, &message.body, properties).await?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

#[async_trait]
impl Bus for RabbitBus {
    async fn ready(&self) -> Result<(), BusError> {
        self.confirming_channel().await.map(|_| ())
    }
}

/// The AMQP frame size asked of the broker unless `AMQP_URL` sets `frame_max`. lapin keeps 32
/// frames of buffer in each direction, allocated and touched when the connection opens: at
/// RabbitMQ's default (128 KiB) that is 8 MiB per process. Our envelopes are about 1 KiB, so
/// 16 KiB frames cost nothing in throughput and leave 1 MiB.
pub const FRAME_MAX: u32 = 16 * 1024;

/// `url` with [`FRAME_MAX`] unless it names its own `frame_max`.
pub fn connection_uri(url: &str) -> Result<lapin::uri::AMQPUri, BusError> {
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(BusError::InvalidUrl)?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_frames_unless_the_url_names_its_own() {
        let uri = connection_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.frame_max, Some(FRAME_MAX));
        let uri = connection_uri("amqp://127.0.0.1/%2f?frame_max=131072").unwrap();
        assert_eq!(uri.query.frame_max, Some(131_072));
        assert!(matches!(
            connection_uri("not a url"),
            Err(BusError::InvalidUrl(_))
        ));
    }

    #[test]
    fn truncates_on_char_boundaries() {
        let long = "é".repeat(MAX_ERROR_BYTES);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_ERROR_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn reads_integer_headers_of_any_width() {
        let mut headers = FieldTable::default();
        headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongInt(3));
        assert_eq!(header_u32(Some(&headers), HEADER_ATTEMPT), Some(3));
        headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(-1));
        assert_eq!(header_u32(Some(&headers), HEADER_ATTEMPT), None);
        assert_eq!(header_u32(None, HEADER_ATTEMPT), None);
    }
}
