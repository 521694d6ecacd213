//! The in-process bus for the single-process mode: the same [`Publisher`] and
//! [`DeliverySource`] contracts as RabbitMQ, on tokio channels.
//!
//! It honours topic bindings (`*`, `#`), refuses unroutable messages, delays retries,
//! parks after the last attempt and replays parked messages, so the relay and the consumer
//! runner behave exactly as on the broker. What it cannot do is outlive the process: messages
//! it holds (queued, waiting for a retry, parked) are gone after a crash or restart.
//! [`InProcessBus::wait_idle`] lets a graceful shutdown drain the queues first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};

use crate::bus::{
    Bus, BusError, Delivery, DeliverySource, DeliveryStream, Message, OutgoingMessage,
    ParkedMessage, PublishError, Publisher, Settle,
};
use crate::pattern::topic_matches;
use crate::topology::ConsumerSpec;

/// The in-process bus. Cheap to clone; clones share the queues.
#[derive(Clone, Default)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus")
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// Messages queued, being handled or waiting for a retry, over all queues.
    in_flight: AtomicUsize,
    idle: Notify,
}

struct Queue {
    name: String,
    bindings: Mutex<Vec<String>>,
    sender: mpsc::UnboundedSender<Message>,
    /// Shared by the queue's subscribers, which compete for messages.
    receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>,
    parking: Mutex<Vec<ParkedMessage>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data under these locks stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InProcessBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages queued, being handled, or waiting for a retry.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no message is queued, in a handler or waiting for a retry, or until
    /// `timeout`; returns whether the bus went idle. Call it after stopping the relay and
    /// before stopping the consumers.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    fn queue(&self, consumer: &str) -> Result<Arc<Queue>, BusError> {
        lock(&self.inner.queues)
            .get(consumer)
            .cloned()
            .ok_or_else(|| BusError::UnknownConsumer(consumer.to_owned()))
    }

    fn enqueue(&self, queue: &Queue, message: Message) -> Result<(), BusError> {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        queue.sender.send(message).map_err(|_| {
            self.done();
            BusError::Closed
        })
    }

    /// One message left the bus (acked, parked, or lost to a closed queue).
    fn done(&self) {
        if self.inner.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// Settles one in-process delivery. Dropped unsettled (e.g. the runner stopped mid-message),
/// it puts the message back, as a broker does when a channel closes.
struct MemorySettle {
    bus: InProcessBus,
    queue: Arc<Queue>,
    unsettled: Option<Message>,
}

impl MemorySettle {
    fn settle(&mut self) -> Option<Message> {
        self.unsettled.take()
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if let Some(mut message) = self.unsettled.take() {
            message.redelivered = true;
            // Still counted in flight: the copy goes back to the queue.
            if self.queue.sender.send(message).is_err() {
                self.bus.done();
            }
        }
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        if self.settle().is_some() {
            self.bus.done();
        }
        Ok(())
    }

    async fn retry(
        mut self: Box<Self>,
        message: &Message,
        failed_attempts: u32,
        delay: Duration,
        _error: &str,
    ) -> Result<(), BusError> {
        if self.settle().is_none() {
            return Ok(());
        }
        let mut again = message.clone();
        again.failed_attempts = failed_attempts;
        again.redelivered = false;
        let bus = self.bus.clone();
        let queue = self.queue.clone();
        // Stays in flight while it waits, so `wait_idle` covers pending retries.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if queue.sender.send(again).is_err() {
                bus.done();
            }
        });
        Ok(())
    }

    async fn park(
        mut self: Box<Self>,
        message: &Message,
        failed_attempts: u32,
        error: &str,
    ) -> Result<(), BusError> {
        if self.settle().is_none() {
            return Ok(());
        }
        let mut parked = message.clone();
        parked.failed_attempts = failed_attempts;
        lock(&self.queue.parking).push(ParkedMessage {
            message: parked,
            attempts: failed_attempts,
            error: Some(error.to_owned()),
            parked_at: Some(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)),
        });
        self.bus.done();
        Ok(())
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), BusError> {
        if let Some(mut message) = self.settle() {
            message.redelivered = true;
            if self.queue.sender.send(message).is_err() {
                self.bus.done();
                return Err(BusError::Closed);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Publisher for InProcessBus {
    /// Copies the message into every queue with a matching binding; unroutable if none.
    async fn publish(&self, message: &OutgoingMessage) -> Result<(), PublishError> {
        let targets: Vec<Arc<Queue>> = lock(&self.inner.queues)
            .values()
            .filter(|queue| {
                lock(&queue.bindings)
                    .iter()
                    .any(|pattern| topic_matches(pattern, &message.routing_key))
            })
            .cloned()
            .collect();
        if targets.is_empty() {
            return Err(PublishError::Unroutable {
                routing_key: message.routing_key.clone(),
            });
        }
        for queue in targets {
            let copy = Message {
                body: message.body.clone(),
                routing_key: message.routing_key.clone(),
                message_id: Some(message.message_id.clone()),
                failed_attempts: 0,
                redelivered: false,
            };
            self.enqueue(&queue, copy)
                .map_err(|_| PublishError::Closed)?;
        }
        Ok(())
    }
}

#[async_trait]
impl DeliverySource for InProcessBus {
    async fn declare(&self, consumer: &ConsumerSpec) -> Result<(), BusError> {
        let mut queues = lock(&self.inner.queues);
        let queue = queues.entry(consumer.name.clone()).or_insert_with(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            Arc::new(Queue {
                name: consumer.name.clone(),
                bindings: Mutex::new(Vec::new()),
                sender,
                receiver: tokio::sync::Mutex::new(receiver),
                parking: Mutex::new(Vec::new()),
            })
        });
        let mut bindings = lock(&queue.bindings);
        for pattern in &consumer.bindings {
            if !bindings.contains(pattern) {
                bindings.push(pattern.clone());
            }
        }
        Ok(())
    }

    /// Prefetch is the runner's concurrency here: a message is taken off the queue only when
    /// the runner asks for the next one.
    async fn subscribe(
        &self,
        consumer: &ConsumerSpec,
        _prefetch: u16,
    ) -> Result<DeliveryStream, BusError> {
        self.declare(consumer).await?;
        let queue = self.queue(&consumer.name)?;
        let bus = self.clone();
        Ok(
            futures::stream::unfold((bus, queue), |(bus, queue)| async move {
                let received = queue.receiver.lock().await.recv().await;
                let message = received?;
                tracing::trace!(queue = %queue.name, "in-process delivery");
                let settle = MemorySettle {
                    bus: bus.clone(),
                    queue: queue.clone(),
                    unsettled: Some(message.clone()),
                };
                Some((Ok(Delivery::new(message, Box::new(settle))), (bus, queue)))
            })
            .boxed(),
        )
    }

    async fn parking_count(&self, consumer: &str) -> Result<u64, BusError> {
        let queue = self.queue(consumer)?;
        let count = lock(&queue.parking).len();
        Ok(u64::try_from(count).unwrap_or(u64::MAX))
    }

    async fn peek_parked(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<ParkedMessage>, BusError> {
        let queue = self.queue(consumer)?;
        let parked = lock(&queue.parking);
        Ok(parked.iter().take(limit).cloned().collect())
    }

    async fn replay_parked(&self, consumer: &str, limit: Option<u64>) -> Result<u64, BusError> {
        let queue = self.queue(consumer)?;
        let replayed: Vec<ParkedMessage> = {
            let mut parked = lock(&queue.parking);
            let take = limit
                .and_then(|limit| usize::try_from(limit).ok())
                .map_or(parked.len(), |limit| limit.min(parked.len()));
            parked.drain(..take).collect()
        };
        let mut moved = 0;
        for parked in replayed {
            let mut message = parked.message;
            message.failed_attempts = 0;
            message.redelivered = false;
            self.enqueue(&queue, message)?;
            moved += 1;
        }
        Ok(moved)
    }

    async fn replay_parked_message(
        &self,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, BusError> {
        let queue = self.queue(consumer)?;
        let found = {
            let mut parked = lock(&queue.parking);
            parked
                .iter()
                .position(|p| p.message.message_id.as_deref() == Some(message_id))
                .map(|at| parked.remove(at))
        };
        let Some(parked) = found else {
            return Ok(false);
        };
        let mut message = parked.message;
        message.failed_attempts = 0;
        message.redelivered = false;
        self.enqueue(&queue, message)?;
        Ok(true)
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn ready(&self) -> Result<(), BusError> {
        Ok(())
    }
}
