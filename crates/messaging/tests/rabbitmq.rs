//! Against the real RabbitMQ and PostgreSQL (`testkit::amqp_url()`, `testkit::TestDb`).
//! Every test uses its own name prefix and database and deletes its queues at the end.

mod common;

use std::time::Duration;

use common::Fixture;
use lapin::options::BasicGetOptions;
use messaging::rabbit::HEADER_ATTEMPT;
use messaging::{
    ConsumerSpec, DeliverySource, OutgoingMessage, PublishError, Publisher, RetryPolicy,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_outbox_row_is_never_published() {
    common::rolled_back_row_is_never_published(Fixture::rabbit_pg("rollback").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_dying_before_its_commit_causes_a_duplicate_that_is_skipped() {
    common::relay_death_duplicate_is_skipped(Fixture::rabbit_pg("relaydeath").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_handler_ends_in_parking_and_replays() {
    common::always_failing_handler_is_parked_then_replayed(Fixture::rabbit_pg("parking").await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_failing_twice_then_succeeding_applies_once() {
    common::fails_twice_then_succeeds_once(Fixture::rabbit_pg("flaky").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_message_is_parked_at_once() {
    common::undecodable_message_is_parked_at_once(Fixture::rabbit_pg("garbage").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reaches_only_the_failing_consumer() {
    common::retry_reaches_only_the_failing_consumer(Fixture::rabbit_pg("retryscope").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_relays_never_lose_or_double_apply() {
    common::concurrent_relays_lose_nothing(Fixture::rabbit_pg("relays").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_runs_before_and_outside_the_transaction() {
    common::prepare_runs_outside_the_transaction(Fixture::rabbit_pg("prepare").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_handled_in_batches() {
    common::backlog_is_handled_in_batches(Fixture::rabbit_pg("batched").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_a_batch_fails_only_its_message() {
    common::a_failure_in_a_batch_fails_only_its_message(Fixture::rabbit_pg("picky").await).await;
}

/// The connection drops (here: closed under the runner's feet); publisher and runner open a
/// new one and carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_runner_survive_a_dropped_connection() {
    let fx = Fixture::rabbit_pg("reconnect").await;
    let (handler, _) = common::TestHandler::new("sturdy", &["payment.completed"]);
    let runner = fx.runner(handler, RetryPolicy::from_millis([50])).await;
    let stats = runner.stats();
    fx.track(runner.spawn(fx.shutdown.clone()));

    fx.bus
        .publish_envelope(&common::payment_completed())
        .await
        .unwrap();
    common::eventually("first handled", || async { stats.handled() == 1 }).await;

    fx.rabbit().unwrap().close().await;
    let second = common::payment_completed();
    fx.bus.publish_envelope(&second).await.unwrap();
    common::eventually("second handled after reconnecting", || async {
        stats.handled() == 2
    })
    .await;
    assert_eq!(fx.effects("sturdy", &second).await, 1);
    fx.finish().await;
}

/// Takes the next message of `consumer`'s queue, which must have one.
async fn take_one(
    channel: &lapin::Channel,
    bus: &messaging::rabbit::RabbitBus,
    consumer: &str,
) -> lapin::message::BasicGetMessage {
    channel
        .basic_get(
            bus.names().queue(consumer).into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the message is in the queue")
}

/// Confirms come back for routed messages, with message_id = event_id and persistent
/// delivery; unroutable messages are errors, also in the middle of a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_confirms_round_trip() {
    let bus = common::rabbit("confirms").await;
    let spec = ConsumerSpec::new("probe", ["payment.completed"])
        .with_retry(RetryPolicy::from_millis([50]));
    bus.declare(&spec).await.unwrap();

    let event = common::payment_completed();
    bus.publish_envelope(&event).await.unwrap();

    let channel = bus.channel().await.unwrap();
    let got = take_one(&channel, &bus, "probe").await;
    let properties = &got.delivery.properties;
    assert_eq!(
        properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned()),
        Some(event.message_id())
    );
    assert_eq!(*properties.delivery_mode(), Some(2));
    assert_eq!(got.delivery.routing_key.as_str(), "payment.completed");
    assert_eq!(got.delivery.data, event.to_json().unwrap().into_bytes());
    assert!(
        properties
            .headers()
            .as_ref()
            .is_none_or(|h| !h.contains_key(HEADER_ATTEMPT))
    );

    let unroutable = OutgoingMessage {
        routing_key: "nobody.listens".into(),
        message_id: "x".into(),
        body: b"{}".to_vec(),
    };
    assert!(matches!(
        bus.publish(&unroutable).await,
        Err(PublishError::Unroutable { .. })
    ));

    let routed = OutgoingMessage::from_envelope(&common::payment_completed()).unwrap();
    let results = bus
        .publish_batch(&[routed.clone(), unroutable, routed])
        .await;
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(PublishError::Unroutable { .. })));
    assert!(results[2].is_ok());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = channel
        .queue_declare(
            bus.names().queue("probe").into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(queued.message_count(), 2);

    bus.delete_consumer(&spec).await.unwrap();
    bus.delete_exchange().await.unwrap();
    bus.close().await;
}

/// The bus asks for small frames (`rabbit::FRAME_MAX`); a message many frames long still
/// arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_many_frames_long_arrives_whole() {
    let bus = common::rabbit("frames").await;
    let spec = ConsumerSpec::new("probe", ["payment.completed"]);
    bus.declare(&spec).await.unwrap();
    let body: Vec<u8> = (0..10 * messaging::rabbit::FRAME_MAX as usize + 7)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let message = OutgoingMessage {
        routing_key: "payment.completed".into(),
        message_id: "big".into(),
        body: body.clone(),
    };
    bus.publish(&message).await.unwrap();
    let got = take_one(&bus.channel().await.unwrap(), &bus, "probe").await;
    assert_eq!(got.delivery.data, body);
    bus.delete_consumer(&spec).await.unwrap();
    bus.delete_exchange().await.unwrap();
    bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_event_is_closed_and_does_not_block() {
    common::unroutable_event_is_closed_and_does_not_block(Fixture::rabbit_pg("unroutable").await)
        .await;
}

/// The production queue type: retries and parking work the same on quorum queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_quorum_queues_an_always_failing_handler_ends_in_parking_and_replays() {
    common::always_failing_handler_is_parked_then_replayed(
        Fixture::rabbit_quorum_pg("parking-quorum").await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_commit_wakes_the_relay() {
    common::handler_commit_wakes_the_relay(Fixture::rabbit_pg("nudge").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_count_is_the_work_queue_depth() {
    let bus = common::rabbit("depth").await;
    let spec = ConsumerSpec::new("probe", ["payment.completed"])
        .with_retry(RetryPolicy::from_millis([50]));
    bus.declare(&spec).await.unwrap();
    assert_eq!(bus.queue_count("probe").await.unwrap(), Some(0));
    for _ in 0..3 {
        bus.publish_envelope(&common::payment_completed())
            .await
            .unwrap();
    }
    // Confirmed publishes are in the queue; poll in case the count lags.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut depth = None;
    while std::time::Instant::now() < deadline {
        depth = bus.queue_count("probe").await.unwrap();
        if depth == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(depth, Some(3));
    // The in-process bus cannot tell.
    assert_eq!(
        messaging::InProcessBus::new()
            .queue_count("probe")
            .await
            .unwrap(),
        None
    );

    bus.delete_consumer(&spec).await.unwrap();
    bus.delete_exchange().await.unwrap();
    bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_leaves_its_row_open() {
    common::a_failed_publish_leaves_its_row_open(Fixture::rabbit_pg("nacked").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_answers_the_nudges_before_it() {
    common::a_claim_answers_the_nudges_before_it(Fixture::rabbit_pg("claim").await).await;
}
