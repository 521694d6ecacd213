#![doc = include_str!("../README.md")]

pub mod bus;
pub mod consumer;
pub mod envelope;
pub mod events;
pub mod memory;
pub mod outbox;
pub mod pattern;
pub mod rabbit;
pub mod redact;
pub mod retry;
pub mod topology;

pub use bus::{
    Bus, BusError, Delivery, DeliverySource, DeliveryStream, Message, OutgoingMessage,
    ParkedMessage, PublishError, Publisher,
};
pub use consumer::{ConsumerRunner, ConsumerStats, Handler, HandlerError, Prepared, RunnerConfig};
pub use envelope::{Envelope, EnvelopeError, Event};
pub use memory::InProcessBus;
pub use outbox::{OutboxError, OutboxRelay, RelayConfig};
pub use rabbit::{QueueType, RabbitBus, RabbitConfig};
pub use retry::RetryPolicy;
pub use topology::{ConsumerSpec, Names};
