//! The envelope every event travels in, and the [`Event`] trait that ties a payload type to
//! its `event_type`, schema version and routing key.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A typed event payload.
///
/// `EVENT_TYPE` and `SCHEMA_VERSION` name the JSON Schema that describes it
/// (`proto-schemas/<EVENT_TYPE>.v<SCHEMA_VERSION>.json`).
pub trait Event: Serialize + DeserializeOwned {
    /// The `event_type` written into the envelope, e.g. `payment.completed`.
    const EVENT_TYPE: &'static str;
    /// Bumped on a breaking change of the payload; consumers refuse versions they don't know.
    const SCHEMA_VERSION: u32;

    /// The routing key the event is published with. The event type unless the event routes
    /// on a finer key (provider notifications add the provider).
    fn routing_key(&self) -> Cow<'static, str> {
        Cow::Borrowed(Self::EVENT_TYPE)
    }
}

/// Why an envelope could not be built, read or turned into a typed event.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The bytes are not a JSON envelope.
    #[error("not a valid event envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The payload does not match the expected event type.
    #[error("payload of {event_type} does not match its type: {source}")]
    Payload {
        /// The envelope's event type.
        event_type: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// [`Envelope::decode`] was asked for another event type.
    #[error("expected event type {expected}, got {actual}")]
    WrongType {
        /// `E::EVENT_TYPE`.
        expected: &'static str,
        /// The envelope's event type.
        actual: String,
    },
    /// The envelope carries a schema version this build does not understand.
    #[error("unsupported schema version {actual} of {event_type} (this build reads {supported})")]
    UnsupportedVersion {
        /// The envelope's event type.
        event_type: String,
        /// The version this build understands.
        supported: u32,
        /// The envelope's version.
        actual: u32,
    },
}

/// The message format on the bus (see `proto-schemas/envelope.v1.json`).
///
/// `correlation_id` is the payment the event is about; `causation_id` is the `event_id` of the
/// event whose handling produced this one (`None` for events caused by an outside request).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUID v7, so ids sort by creation time; also the AMQP `message_id` and the consumers'
    /// idempotency key.
    pub event_id: Uuid,
    /// E.g. `payment.completed`.
    pub event_type: String,
    /// Version of the payload schema.
    pub schema_version: u32,
    /// When the change happened (RFC 3339, UTC).
    #[serde(with = "rfc3339")]
    pub occurred_at: DateTime<Utc>,
    /// The payment this event belongs to.
    pub correlation_id: Uuid,
    /// The event that caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// The event-specific body, always a JSON object.
    #[serde(deserialize_with = "object")]
    pub payload: serde_json::Value,
    /// Not part of the wire format: the key the envelope is (or was) routed with.
    #[serde(skip)]
    routing_key: String,
}

impl Envelope {
    /// Wraps `event` in a new envelope with a fresh UUID v7 and the current time.
    pub fn new<E: Event>(
        event: &E,
        correlation_id: impl Into<Uuid>,
        causation_id: Option<Uuid>,
    ) -> Result<Self, EnvelopeError> {
        let correlation_id = correlation_id.into();
        let payload = serde_json::to_value(event).map_err(|source| EnvelopeError::Payload {
            event_type: E::EVENT_TYPE.to_owned(),
            source,
        })?;
        if !payload.is_object() {
            return Err(EnvelopeError::Payload {
                event_type: E::EVENT_TYPE.to_owned(),
                source: serde::de::Error::custom("an event payload must be a JSON object"),
            });
        }
        Ok(Self {
            event_id: Uuid::now_v7(),
            event_type: E::EVENT_TYPE.to_owned(),
            schema_version: E::SCHEMA_VERSION,
            occurred_at: Utc::now(),
            correlation_id,
            causation_id,
            payload,
            routing_key: event.routing_key().into_owned(),
        })
    }

    /// Wraps `event` as a consequence of `cause`: same correlation, caused by `cause`.
    pub fn caused_by<E: Event>(event: &E, cause: &Envelope) -> Result<Self, EnvelopeError> {
        Self::new(event, cause.correlation_id, Some(cause.event_id))
    }

    /// Sets `occurred_at` (e.g. to the time the change was committed, or in tests).
    #[must_use]
    pub fn with_occurred_at(mut self, occurred_at: DateTime<Utc>) -> Self {
        self.occurred_at = occurred_at;
        self
    }

    /// The typed payload. Fails on another event type, an unknown schema version or a
    /// payload that does not fit `E`.
    pub fn decode<E: Event>(&self) -> Result<E, EnvelopeError> {
        if self.event_type != E::EVENT_TYPE {
            return Err(EnvelopeError::WrongType {
                expected: E::EVENT_TYPE,
                actual: self.event_type.clone(),
            });
        }
        if self.schema_version != E::SCHEMA_VERSION {
            return Err(EnvelopeError::UnsupportedVersion {
                event_type: self.event_type.clone(),
                supported: E::SCHEMA_VERSION,
                actual: self.schema_version,
            });
        }
        E::deserialize(&self.payload).map_err(|source| EnvelopeError::Payload {
            event_type: self.event_type.clone(),
            source,
        })
    }

    /// `true` when this envelope carries an `E`.
    pub fn is<E: Event>(&self) -> bool {
        self.event_type == E::EVENT_TYPE
    }

    /// The routing key: the one given by the event when built, or the one the message
    /// arrived with; falls back to the event type.
    pub fn routing_key(&self) -> &str {
        if self.routing_key.is_empty() {
            &self.event_type
        } else {
            &self.routing_key
        }
    }

    /// Sets the routing key (used when reading a message off the bus).
    #[must_use]
    pub fn with_routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = routing_key.into();
        self
    }

    /// The AMQP `message_id` and idempotency key: the event id as a hyphenated string.
    pub fn message_id(&self) -> String {
        self.event_id.to_string()
    }

    /// The JSON bytes that go on the wire.
    pub fn to_json(&self) -> Result<String, EnvelopeError> {
        serde_json::to_string(self).map_err(EnvelopeError::Malformed)
    }

    /// Parses an envelope from the wire.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        serde_json::from_slice(bytes).map_err(EnvelopeError::Malformed)
    }
}

fn object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(serde::de::Error::custom("payload must be a JSON object"))
    }
}

/// RFC 3339 in UTC with microseconds and a `Z` suffix: the precision PostgreSQL keeps, and one
/// fixed shape for consumers in other languages.
pub mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises as e.g. `2025-06-01T12:00:00.123456Z`.
    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    /// Accepts any RFC 3339 timestamp and converts it to UTC.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|at| at.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{PaymentFailed, PaymentSnapshot, ProviderNotificationReceived};

    fn failed() -> PaymentFailed {
        PaymentFailed {
            payment: PaymentSnapshot {
                payment_id: domain::PaymentId::new(),
                user_id: 7,
                telegram_id: 42,
                tariff_code: "month_1".into(),
                provider: domain::ProviderId::from_static("yookassa"),
                amount_minor: 19_900,
                currency: "RUB".into(),
            },
            failure_reason: "card_expired".into(),
        }
    }

    #[test]
    fn round_trips_through_json_and_decodes() {
        let event = failed();
        let env = Envelope::new(&event, event.payment.payment_id, None).unwrap();
        assert_eq!(env.event_id.get_version_num(), 7);
        assert_eq!(env.routing_key(), "payment.failed");
        let json = env.to_json().unwrap();
        let back = Envelope::from_json(json.as_bytes()).unwrap();
        assert_eq!(back.decode::<PaymentFailed>().unwrap(), event);
        assert_eq!(back.event_id, env.event_id);
        // The routing key is not on the wire; a decoded envelope falls back to the type.
        assert_eq!(back.routing_key(), "payment.failed");
    }

    #[test]
    fn occurred_at_is_utc_with_micros() {
        let event = failed();
        let at = DateTime::parse_from_rfc3339("2025-06-01T15:00:00.123456789+03:00")
            .unwrap()
            .with_timezone(&Utc);
        let env = Envelope::new(&event, Uuid::now_v7(), None)
            .unwrap()
            .with_occurred_at(at);
        let value: serde_json::Value = serde_json::from_str(&env.to_json().unwrap()).unwrap();
        assert_eq!(value["occurred_at"], "2025-06-01T12:00:00.123456Z");
    }

    #[test]
    fn decode_refuses_other_types_and_versions() {
        let event = failed();
        let env = Envelope::new(&event, Uuid::now_v7(), None).unwrap();
        assert!(matches!(
            env.decode::<ProviderNotificationReceived>(),
            Err(EnvelopeError::WrongType { .. })
        ));
        let mut newer = env.clone();
        newer.schema_version = 2;
        assert!(matches!(
            newer.decode::<PaymentFailed>(),
            Err(EnvelopeError::UnsupportedVersion { actual: 2, .. })
        ));
        let mut broken = env;
        broken.payload = serde_json::json!({"payment_id": "nope"});
        assert!(matches!(
            broken.decode::<PaymentFailed>(),
            Err(EnvelopeError::Payload { .. })
        ));
    }

    #[test]
    fn caused_by_keeps_the_correlation() {
        let event = failed();
        let cause = Envelope::new(&event, Uuid::now_v7(), None).unwrap();
        let effect = Envelope::caused_by(&event, &cause).unwrap();
        assert_eq!(effect.correlation_id, cause.correlation_id);
        assert_eq!(effect.causation_id, Some(cause.event_id));
        assert_ne!(effect.event_id, cause.event_id);
    }
}
