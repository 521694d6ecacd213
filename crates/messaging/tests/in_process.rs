//! The same scenarios on the in-process bus (single-process mode), on SQLite as in the
//! standalone binary, and on PostgreSQL where relays compete.

mod common;

use common::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_outbox_row_is_never_published() {
    common::rolled_back_row_is_never_published(Fixture::memory_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_dying_before_its_commit_causes_a_duplicate_that_is_skipped() {
    common::relay_death_duplicate_is_skipped(Fixture::memory_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_handler_ends_in_parking_and_replays() {
    common::always_failing_handler_is_parked_then_replayed(Fixture::memory_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_failing_twice_then_succeeding_applies_once() {
    common::fails_twice_then_succeeds_once(Fixture::memory_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_message_is_parked_at_once() {
    common::undecodable_message_is_parked_at_once(Fixture::memory_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reaches_only_the_failing_consumer() {
    common::retry_reaches_only_the_failing_consumer(Fixture::memory_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_relays_on_postgres_never_lose_or_double_apply() {
    common::concurrent_relays_lose_nothing(Fixture::memory_pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_event_is_closed_and_does_not_block() {
    common::unroutable_event_is_closed_and_does_not_block(Fixture::memory_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_commit_wakes_the_relay() {
    common::handler_commit_wakes_the_relay(Fixture::memory_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_runs_before_and_outside_the_transaction() {
    common::prepare_runs_outside_the_transaction(Fixture::memory_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_that_spots_done_work_replaces_the_runners_look_up() {
    common::prepare_that_spots_done_work_replaces_the_runners_look_up(
        Fixture::memory_sqlite().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_on_postgres_is_handled_in_batches() {
    common::backlog_is_handled_in_batches(Fixture::memory_pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_a_batch_on_postgres_fails_only_its_message() {
    common::a_failure_in_a_batch_fails_only_its_message(Fixture::memory_pg().await).await;
}

/// SQLite has one writer: its transactions hold one message each, and all is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_failure_among_many_fails_only_its_message() {
    common::a_failure_in_a_batch_fails_only_its_message(Fixture::memory_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_leaves_its_row_open() {
    common::a_failed_publish_leaves_its_row_open(Fixture::memory_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_failed_publish_leaves_its_row_open() {
    common::a_failed_publish_leaves_its_row_open(Fixture::memory_pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_answers_the_nudges_before_it() {
    common::a_claim_answers_the_nudges_before_it(Fixture::memory_sqlite().await).await;
}
