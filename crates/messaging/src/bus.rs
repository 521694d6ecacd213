//! The two sides of a message bus, implemented by [`crate::rabbit::RabbitBus`] and
//! [`crate::memory::InProcessBus`]: [`Publisher`] (used by the outbox relay) and
//! [`DeliverySource`] (used by the [`crate::consumer::ConsumerRunner`]).

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::envelope::{Envelope, EnvelopeError};
use crate::topology::ConsumerSpec;

/// A message to publish to the events exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Routing key (`payment.completed`, `provider.notification.yookassa`).
    pub routing_key: String,
    /// The envelope's `event_id`; consumers deduplicate on it.
    pub message_id: String,
    /// The envelope JSON.
    pub body: Vec<u8>,
}

impl OutgoingMessage {
    /// The message for an envelope.
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, EnvelopeError> {
        Ok(Self {
            routing_key: envelope.routing_key().to_owned(),
            message_id: envelope.message_id(),
            body: envelope.to_json()?.into_bytes(),
        })
    }
}

/// Why a publish was not confirmed. Every variant means "not known to be delivered": the
/// caller keeps the message and tries again.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No queue is bound to the routing key, so the broker returned the message.
    #[error("unroutable: no queue is bound to routing key `{routing_key}`")]
    Unroutable {
        /// The routing key.
        routing_key: String,
    },
    /// The broker refused to take responsibility for the message.
    #[error("the broker nacked the message with routing key `{routing_key}`")]
    Nacked {
        /// The routing key.
        routing_key: String,
    },
    /// The broker connection or channel failed.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// The envelope could not be serialised.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The bus was shut down.
    #[error("the bus is closed")]
    Closed,
}

impl PublishError {
    /// `true` for failures of the connection rather than of this message: further publishes
    /// will most likely fail too, so callers back off.
    pub fn is_connection_failure(&self) -> bool {
        matches!(self, Self::Broker(_) | Self::Closed)
    }
}

/// Failures of the consuming side and of bus operations.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker connection or channel failed.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// Moving a message to a retry or parking queue was not confirmed.
    #[error("republishing failed: {0}")]
    Publish(#[from] PublishError),
    /// The consumer has never been declared on this bus.
    #[error("unknown consumer `{0}`")]
    UnknownConsumer(String),
    /// The bus was shut down.
    #[error("the bus is closed")]
    Closed,
    /// `AMQP_URL` cannot be parsed.
    #[error("not a valid AMQP URL: {0}")]
    InvalidUrl(String),
}

/// A received message: what the handler needs, without the means to settle it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The envelope JSON (or whatever was published).
    pub body: Vec<u8>,
    /// The routing key it was originally published with (kept across retries).
    pub routing_key: String,
    /// The publisher's `message_id`, if any.
    pub message_id: Option<String>,
    /// How many attempts to handle it have failed so far (0 on first delivery).
    pub failed_attempts: u32,
    /// The broker delivered it before and it was not acknowledged.
    pub redelivered: bool,
}

/// How a transport settles one delivery. Implemented by each bus; used through [`Delivery`].
#[async_trait]
pub trait Settle: Send + Sync {
    /// Done: remove the message.
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// Deliver it again to the same consumer after `delay`, recording the failure count and
    /// error; then remove this copy.
    async fn retry(
        self: Box<Self>,
        message: &Message,
        failed_attempts: u32,
        delay: Duration,
        error: &str,
    ) -> Result<(), BusError>;
    /// Move it to the consumer's parking queue with the failure count and error; then remove
    /// this copy.
    async fn park(
        self: Box<Self>,
        message: &Message,
        failed_attempts: u32,
        error: &str,
    ) -> Result<(), BusError>;
    /// Give it back to the queue untouched (e.g. when it could not be moved elsewhere).
    async fn requeue(self: Box<Self>) -> Result<(), BusError>;
}

/// A received message and the handle that settles it. Exactly one of the settling methods
/// should be called; a delivery dropped unsettled is redelivered eventually.
pub struct Delivery {
    /// The message.
    pub message: Message,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Pairs a message with its transport's settle handle.
    pub fn new(message: Message, settle: Box<dyn Settle>) -> Self {
        Self { message, settle }
    }

    /// See [`Settle::ack`].
    pub async fn ack(self) -> Result<(), BusError> {
        self.settle.ack().await
    }

    /// See [`Settle::retry`].
    pub async fn retry(
        self,
        failed_attempts: u32,
        delay: Duration,
        error: &str,
    ) -> Result<(), BusError> {
        self.settle
            .retry(&self.message, failed_attempts, delay, error)
            .await
    }

    /// See [`Settle::park`].
    pub async fn park(self, failed_attempts: u32, error: &str) -> Result<(), BusError> {
        self.settle
            .park(&self.message, failed_attempts, error)
            .await
    }

    /// See [`Settle::requeue`].
    pub async fn requeue(self) -> Result<(), BusError> {
        self.settle.requeue().await
    }
}

/// Deliveries of one subscription. Ends when the transport closes (the runner then
/// subscribes again).
pub type DeliveryStream = BoxStream<'static, Result<Delivery, BusError>>;

/// A message in a parking queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedMessage {
    /// The message as it was last delivered.
    pub message: Message,
    /// Attempts made before parking.
    pub attempts: u32,
    /// The last error.
    pub error: Option<String>,
    /// When it was parked (RFC 3339).
    pub parked_at: Option<String>,
}

/// Sends messages to the events exchange, returning only once the bus has taken
/// responsibility for them (publisher confirms).
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message; `Ok` means the broker confirmed that it was routed to at least
    /// one queue and stored.
    async fn publish(&self, message: &OutgoingMessage) -> Result<(), PublishError>;

    /// Publishes several messages, waiting for all confirmations; one result per message,
    /// in order. Transports override it to pipeline the confirms.
    async fn publish_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            results.push(self.publish(message).await);
        }
        results
    }

    /// Publishes an envelope directly (bypassing the outbox; for events that need not be
    /// atomic with a database change).
    async fn publish_envelope(&self, envelope: &Envelope) -> Result<(), PublishError> {
        self.publish(&OutgoingMessage::from_envelope(envelope)?)
            .await
    }
}

/// Where consumers get their messages from, plus the operations on parking queues.
#[async_trait]
pub trait DeliverySource: Send + Sync + 'static {
    /// Creates the consumer's queue, bindings, delay and parking queues (idempotent).
    async fn declare(&self, consumer: &ConsumerSpec) -> Result<(), BusError>;

    /// Declares the consumer and starts receiving, at most `prefetch` unsettled messages at
    /// a time. Several subscriptions to one consumer compete for its messages.
    async fn subscribe(
        &self,
        consumer: &ConsumerSpec,
        prefetch: u16,
    ) -> Result<DeliveryStream, BusError>;

    /// Number of messages waiting in the consumer's parking queue.
    async fn parking_count(&self, consumer: &str) -> Result<u64, BusError>;

    /// Number of messages ready in the consumer's work queue, where the source can tell
    /// (RabbitMQ can; the in-process bus answers `None`).
    async fn queue_count(&self, _consumer: &str) -> Result<Option<u64>, BusError> {
        Ok(None)
    }

    /// Up to `limit` parked messages, left in place (on RabbitMQ they return to the queue
    /// asynchronously, so a count taken right after may briefly miss them).
    async fn peek_parked(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<ParkedMessage>, BusError>;

    /// Moves up to `limit` (all, if `None`) parked messages back to the consumer's queue with
    /// a fresh attempt count; returns how many were moved.
    async fn replay_parked(&self, consumer: &str, limit: Option<u64>) -> Result<u64, BusError>;

    /// Moves the parked message whose `message_id` is `message_id` back to the consumer's
    /// queue, like [`DeliverySource::replay_parked`]: the copy keeps the original message id
    /// (so the consumer's idempotency still recognises it) and the parked one is removed only
    /// after the copy is confirmed. `false` when no parked message has that id.
    async fn replay_parked_message(
        &self,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, BusError>;
}

/// A complete bus: both sides plus a readiness probe.
#[async_trait]
pub trait Bus: Publisher + DeliverySource {
    /// `Ok` when the bus can take messages now (broker reachable).
    async fn ready(&self) -> Result<(), BusError>;
}
