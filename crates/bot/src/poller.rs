//! Long polling with a durable offset rule.
//!
//! Each `getUpdates` confirms everything before its `offset`. The bot handles a batch, then
//! asks for the next one with `offset = last handled update_id + 1` — so a `successful_payment`
//! is confirmed only after its inbox row and outbox row committed. If storing one fails, the
//! offset stops at that update and it is fetched again after a pause; a crash anywhere before
//! the next `getUpdates` leaves the whole batch unconfirmed, and Telegram sends it again
//! (the inbox's UNIQUE key turns the second copy into a no-op).
//!
//! Only payment messages hold the offset: the batch's payment messages are stored (concurrently)
//! before the next `getUpdates`. Every other update — commands, button presses,
//! `pre_checkout_query` — is answered on its own task and stores nothing that Telegram would
//! have to send again, so a slow gateway call for one user's button press never holds back the
//! next batch, and with it another user's `pre_checkout_query` (10 s deadline). At most
//! [`MAX_IN_FLIGHT`] such tasks run; on shutdown they are finished before the offset is
//! confirmed.

use std::sync::Arc;
use std::time::Duration;

use frankenstein::AsyncTelegramApi;
use frankenstein::methods::{DeleteWebhookParams, GetUpdatesParams};
use frankenstein::response::MethodResponse;
use frankenstein::types::AllowedUpdate;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{App, HandleError, is_payment_message};

/// The update kinds the bot handles; anything else is never sent (and could not be decoded
/// by every client version, see `reference/external-apis.md` §2).
pub fn allowed_updates() -> Vec<AllowedUpdate> {
    vec![
        AllowedUpdate::Message,
        AllowedUpdate::CallbackQuery,
        AllowedUpdate::PreCheckoutQuery,
    ]
}

const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Updates other than payment messages handled at once, at most; the poller waits for some to
/// finish before fetching more.
pub const MAX_IN_FLIGHT: usize = 512;

fn update_id(update: &Value) -> Option<i64> {
    update.get("update_id").and_then(Value::as_i64)
}

/// The offset after a handled batch: the first update that must be fetched again, else the
/// one after the last.
pub fn next_offset(
    current: Option<i64>,
    batch: &[Value],
    results: &[Result<(), HandleError>],
) -> Option<i64> {
    for (update, result) in batch.iter().zip(results) {
        if result.is_err() {
            return update_id(update).or(current);
        }
    }
    batch
        .iter()
        .filter_map(update_id)
        .max()
        .map(|id| id + 1)
        .or(current)
}

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(RETRY_PAUSE) => {}
    }
}

/// Drops a webhook left from webhook mode (getUpdates is refused while one is set); pending
/// updates are kept.
pub async fn delete_webhook(app: &App) {
    let params = DeleteWebhookParams::builder()
        .drop_pending_updates(false)
        .build();
    if let Err(error) = app.api.delete_webhook(&params).await {
        tracing::warn!(%error, "deleteWebhook failed");
    }
}

/// Polls until `shutdown`, then confirms what it handled.
pub async fn run(app: Arc<App>, poll_timeout_secs: u32, shutdown: CancellationToken) {
    delete_webhook(&app).await;
    let mut offset: Option<i64> = None;
    let mut in_flight = JoinSet::new();
    tracing::info!("polling Telegram for updates");
    while !shutdown.is_cancelled() {
        let params = GetUpdatesParams::builder()
            .maybe_offset(offset)
            .timeout(poll_timeout_secs)
            .allowed_updates(allowed_updates())
            .build();
        while in_flight.try_join_next().is_some() {}
        while in_flight.len() >= MAX_IN_FLIGHT {
            in_flight.join_next().await;
        }
        let answer = tokio::select! {
            () = shutdown.cancelled() => break,
            answer = app.api.request::<_, MethodResponse<Vec<Value>>>("getUpdates", Some(&params)) => answer,
        };
        let batch = match answer {
            Ok(answer) => answer.result,
            Err(error) => {
                tracing::warn!(%error, "getUpdates failed");
                pause(&shutdown).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        for update in batch.iter().filter(|u| !is_payment_message(u)) {
            let (app, update) = (app.clone(), update.clone());
            in_flight.spawn(async move { app.handle(&update).await });
        }
        let results = futures::future::join_all(batch.iter().map(|u| async {
            if is_payment_message(u) {
                app.handle(u).await
            } else {
                Ok(())
            }
        }))
        .await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        for (update, result) in batch.iter().zip(&results) {
            if let Err(error) = result {
                tracing::error!(update_id = ?update_id(update), %error, "update not stored; it will be fetched again");
            }
        }
        offset = next_offset(offset, &batch, &results);
        if failed > 0 {
            pause(&shutdown).await;
        }
    }
    // Finish what is in hand, then confirm the handled updates so a restart does not see them
    // again.
    while in_flight.join_next().await.is_some() {}
    if let Some(offset) = offset {
        let params = GetUpdatesParams::builder()
            .offset(offset)
            .timeout(0)
            .limit(1)
            .allowed_updates(allowed_updates())
            .build();
        if let Err(error) = app
            .api
            .request::<_, MethodResponse<Vec<Value>>>("getUpdates", Some(&params))
            .await
        {
            tracing::warn!(%error, "could not confirm the last updates");
        }
    }
    tracing::info!("polling stopped");
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use service_kit::inbox::InboxError;

    #[test]
    fn the_offset_stops_at_the_first_unstored_update() {
        let batch = vec![
            json!({"update_id": 10}),
            json!({"update_id": 11}),
            json!({"update_id": 12}),
        ];
        let ok = || Ok(());
        let failed = || {
            Err(HandleError::Store(InboxError::Db(sea_orm::DbErr::Custom(
                "down".into(),
            ))))
        };
        assert_eq!(next_offset(None, &batch, &[ok(), ok(), ok()]), Some(13));
        assert_eq!(next_offset(None, &batch, &[ok(), failed(), ok()]), Some(11));
        assert_eq!(
            next_offset(Some(10), &batch, &[failed(), ok(), ok()]),
            Some(10)
        );
        assert_eq!(next_offset(Some(7), &[], &[]), Some(7));
    }
}
