//! The JSON Schemas in `proto-schemas/` against the Rust event types.
//!
//! Every example event must validate against its schema, and the schema must describe the
//! Rust type exactly: the same keys, required where the Rust type always writes them, nullable
//! exactly where the Rust type accepts `null`, and never optional where the Rust type needs the
//! key. A field added to, removed from or made optional in a Rust type without the matching
//! schema change fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use jsonschema::{Retrieve, Uri, Validator};
use messaging::events::{
    ALL, GrantActivated, GrantCreated, GrantRefused, PaymentCompleted, PaymentCreated,
    PaymentFailed, PaymentRefunded, PaymentSnapshot, PaymentUnderpaid,
    ProviderNotificationReceived, SubscriptionActivated, SubscriptionChange, SubscriptionRevoked,
};
use messaging::{Envelope, Event};
use serde_json::{Value, json};
use uuid::Uuid;

const BASE: &str = "https://schemas.anomaly-connect.invalid/events/";

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto-schemas")
}

fn load(file: &str) -> Value {
    let path = schema_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{file} is not JSON: {err}"))
}

/// Resolves `$ref`s to sibling schema files from disk (no network).
struct FromDisk;

impl Retrieve for FromDisk {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let file = uri
            .as_str()
            .strip_prefix(BASE)
            .ok_or_else(|| format!("unexpected reference {uri}"))?;
        Ok(load(file))
    }
}

fn validator(file: &str) -> Validator {
    jsonschema::options()
        .with_retriever(FromDisk)
        .should_validate_formats(true)
        .build(&load(file))
        .unwrap_or_else(|err| panic!("{file} does not compile: {err}"))
}

fn schema_file<E: Event>() -> String {
    format!("{}.v{}.json", E::EVENT_TYPE, E::SCHEMA_VERSION)
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn payment() -> PaymentSnapshot {
    PaymentSnapshot {
        payment_id: domain::PaymentId::new(),
        user_id: 17,
        telegram_id: 123_456_789,
        tariff_code: "month_3".into(),
        provider: domain::ProviderId::from_static("yookassa"),
        amount_minor: 49_900,
        currency: "RUB".into(),
    }
}

fn subscription() -> SubscriptionChange {
    SubscriptionChange {
        telegram_id: 123_456_789,
        payment_id: domain::PaymentId::new(),
        marzban_username: "tg_123456789".into(),
        expires_at: at("2025-09-01T10:00:00Z"),
        subscription_url: "https://panel.example.com/sub/tg_123456789".into(),
    }
}

fn envelope<E: Event>(event: &E, causation: Option<Uuid>) -> Value {
    let env = Envelope::new(event, Uuid::now_v7(), causation).unwrap();
    serde_json::from_str(&env.to_json().unwrap()).unwrap()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

fn names(value: &Value) -> BTreeSet<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect(),
        Value::Object(map) => map.keys().cloned().collect(),
        _ => panic!("expected an array or object, got {value}"),
    }
}

/// Checks one object level of a message against its schema node and the Rust decoder.
///
/// `object` is the path to the object inside `message`; `decodes` says whether Rust reads a
/// whole message.
fn check_object(
    label: &str,
    validator: &Validator,
    schema_node: &Value,
    message: &Value,
    object: &[&str],
    decodes: &dyn Fn(&Value) -> bool,
) {
    let get = |m: &Value| object.iter().fold(m.clone(), |v, k| v[*k].clone());
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut m = message.clone();
        let mut node = &mut m;
        for k in object {
            node = node.get_mut(*k).unwrap();
        }
        f(node.as_object_mut().unwrap());
        m
    };

    assert_eq!(
        schema_node["additionalProperties"],
        json!(false),
        "{label}: schema must set additionalProperties: false"
    );
    let properties = names(&schema_node["properties"]);
    let required = names(&schema_node["required"]);
    let written = keys(&get(message));
    assert_eq!(
        written, properties,
        "{label}: the Rust type writes other keys than the schema's properties"
    );
    assert_eq!(
        required, properties,
        "{label}: the Rust type always writes every key, so the schema must require all"
    );

    for key in &written {
        let nulled = with(&|o| {
            o.insert(key.clone(), Value::Null);
        });
        assert_eq!(
            validator.is_valid(&nulled),
            decodes(&nulled),
            "{label}.{key}: schema and Rust disagree on whether null is allowed"
        );
        let removed = with(&|o| {
            o.remove(key);
        });
        assert!(
            !validator.is_valid(&removed),
            "{label}.{key}: schema accepts a message without it"
        );
    }

    let extra = with(&|o| {
        o.insert("unexpected_field".into(), json!(1));
    });
    assert!(
        !validator.is_valid(&extra),
        "{label}: schema accepts unknown fields"
    );
}

/// Validates examples of `E` and checks the schema describes `E` exactly.
fn check_event<E: Event + PartialEq + std::fmt::Debug>(examples: &[E]) {
    let file = schema_file::<E>();
    let validator = validator(&file);
    let schema = load(&file);
    let payload_schema = &schema["$defs"]["payload"];

    for (i, example) in examples.iter().enumerate() {
        let message = envelope(example, Some(Uuid::now_v7()));
        if let Err(err) = validator.validate(&message) {
            panic!("{file}: example {i} is invalid: {err}\n{message:#}");
        }
        let back = Envelope::from_json(message.to_string().as_bytes()).unwrap();
        assert_eq!(&back.decode::<E>().unwrap(), example, "{file}: round trip");
    }

    let full = envelope(&examples[0], None);
    assert!(validator.is_valid(&full), "{file}: null causation_id");
    let decodes = |m: &Value| {
        Envelope::from_json(m.to_string().as_bytes())
            .and_then(|env| env.decode::<E>())
            .is_ok()
    };
    check_object(
        &format!("{file} payload"),
        &validator,
        payload_schema,
        &full,
        &["payload"],
        &decodes,
    );

    let mut other_type = full.clone();
    other_type["event_type"] = json!("payment.unknown");
    assert!(!validator.is_valid(&other_type), "{file}: event_type const");
    let mut other_version = full;
    other_version["schema_version"] = json!(E::SCHEMA_VERSION + 1);
    assert!(
        !validator.is_valid(&other_version),
        "{file}: schema_version const"
    );
}

#[test]
fn envelope_schema_matches_the_envelope_type() {
    let validator = validator("envelope.v1.json");
    let schema = load("envelope.v1.json");
    let message = envelope(&PaymentCreated { payment: payment() }, Some(Uuid::now_v7()));
    validator.validate(&message).unwrap();
    check_object(
        "envelope",
        &validator,
        &schema,
        &message,
        &[],
        &|m: &Value| Envelope::from_json(m.to_string().as_bytes()).is_ok(),
    );

    let mut v4 = message.clone();
    v4["event_id"] = json!(Uuid::new_v4().to_string());
    assert!(!validator.is_valid(&v4), "event_id must be a UUID v7");
    let mut local_time = message;
    local_time["occurred_at"] = json!("2025-06-01T15:00:00+03:00");
    assert!(!validator.is_valid(&local_time), "occurred_at must be UTC");
}

#[test]
fn payment_created() {
    check_event(&[PaymentCreated { payment: payment() }]);
}

#[test]
fn payment_completed() {
    check_event(&[PaymentCompleted {
        payment: payment(),
        paid_at: at("2025-06-01T12:00:03.250Z"),
        processing_ms: 3_250,
    }]);
}

#[test]
fn payment_failed() {
    check_event(&[PaymentFailed {
        payment: PaymentSnapshot {
            provider: domain::ProviderId::from_static("telegram"),
            currency: "XTR".into(),
            amount_minor: 250,
            ..payment()
        },
        failure_reason: "expired".into(),
    }]);
}

#[test]
fn payment_refunded() {
    check_event(&[PaymentRefunded {
        payment: PaymentSnapshot {
            provider: domain::ProviderId::from_static("crypto"),
            currency: "USDT".into(),
            amount_minor: 4_990_017,
            ..payment()
        },
        refunded_minor: 2_000_000,
        total_refunded_minor: 4_990_017,
    }]);
}

#[test]
fn payment_underpaid() {
    check_event(&[PaymentUnderpaid {
        payment: PaymentSnapshot {
            provider: domain::ProviderId::from_static("crypto"),
            currency: "USDT".into(),
            amount_minor: 2_500_417,
            ..payment()
        },
        received_minor: 1_500_000,
        shortfall_minor: 1_000_417,
        tx_id: "77ff0c0819cc39b3d24c98a3e94c1789f9e4376509aaadc82894896474c0e6b2".into(),
        pay_before: at("2025-06-01T12:30:00.000001Z"),
    }]);
}

#[test]
fn subscription_activated() {
    check_event(&[SubscriptionActivated {
        subscription: subscription(),
    }]);
}

#[test]
fn subscription_revoked() {
    check_event(&[SubscriptionRevoked {
        subscription: subscription(),
    }]);
}

#[test]
fn grant_created() {
    let admin = GrantCreated {
        grant_id: 3,
        user_id: 17,
        telegram_id: 123_456_789,
        kind: "admin".into(),
        days: 7,
    };
    let referral = GrantCreated {
        kind: "referral".into(),
        ..admin.clone()
    };
    check_event(&[admin, referral]);
}

#[test]
fn grant_activated() {
    check_event(&[GrantActivated {
        grant_id: 3,
        telegram_id: 123_456_789,
        kind: "trial".into(),
        days: 3,
        marzban_username: "tg_123456789".into(),
        expires_at: at("2026-12-09T18:00:00Z"),
        subscription_url: "https://panel.example/sub/abc".into(),
    }]);
}

#[test]
fn grant_refused() {
    check_event(&[GrantRefused {
        grant_id: 3,
        user_id: 17,
        telegram_id: 123_456_789,
        kind: "trial".into(),
        reason: "panel_user_exists".into(),
    }]);
}

#[test]
fn provider_notification() {
    let known = ProviderNotificationReceived {
        provider: domain::ProviderId::from_static("yookassa"),
        notification_id: 981,
        dedupe_key: "payment.succeeded:2f1c0b1e-000f-5000-9000-1b2c3d4e5f60".into(),
        payment_id: Some(domain::PaymentId::new()),
    };
    assert_eq!(known.routing_key(), "provider.notification.yookassa");
    let unknown = ProviderNotificationReceived {
        payment_id: None,
        ..known.clone()
    };
    check_event(&[known, unknown]);
}

#[test]
fn every_event_has_a_schema_and_every_schema_an_event() {
    let mut on_disk: BTreeSet<String> = std::fs::read_dir(schema_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".json"))
        .collect();
    for shared in ["common.v1.json", "envelope.v1.json"] {
        assert!(on_disk.remove(shared), "{shared} is missing");
    }
    let defined: BTreeSet<String> = ALL
        .iter()
        .map(|(event_type, version)| format!("{event_type}.v{version}.json"))
        .collect();
    assert_eq!(on_disk, defined);
    for file in &defined {
        let schema = load(file);
        assert_eq!(schema["$id"], json!(format!("{BASE}{file}")), "{file}: $id");
        assert_eq!(
            schema["$schema"],
            json!("https://json-schema.org/draft/2020-12/schema"),
            "{file}: draft"
        );
        assert!(
            jsonschema::meta::is_valid(&schema),
            "{file}: not a valid schema"
        );
    }
}
