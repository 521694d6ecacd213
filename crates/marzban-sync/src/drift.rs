//! The drift check: compares every subscription in the ledger with its panel user and repairs
//! the panel to match the ledger (an admin's hand edit, a user deleted on the panel, a panel
//! restored from an old backup). Every repair is logged with what differed.
//!
//! Each subscription is checked in its own transaction holding its row lock, the same lock the
//! consumer takes, so a check never races a payment being applied.

use std::time::Duration;

use chrono::Utc;
use domain::entities::subscriptions;
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ledger;
use crate::marzban::{MarzbanClient, MarzbanError, UserResponse};
use crate::panel::{self, Desired, Repair};
use crate::sync::{SyncError, save_sync, username};

/// Counter: panel users changed or created by the drift check.
pub const METRIC_REPAIRS: &str = "marzban_sync_drift_repairs_total";
/// Counter: subscriptions the drift check could not check or repair.
pub const METRIC_FAILURES: &str = "marzban_sync_drift_failures_total";

/// Subscriptions read per page.
const PAGE: u64 = 100;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriftReport {
    /// Subscriptions compared with the panel.
    pub checked: u64,
    /// Panel users changed (or created) to match the ledger.
    pub repaired: u64,
    /// Subscriptions that could not be checked or repaired (see their `sync_error`).
    pub failed: u64,
}

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    /// The panel is down or refuses our credentials; the rest waits for the next pass.
    #[error("Marzban failed after {checked} subscriptions: {source}")]
    Panel {
        checked: u64,
        #[source]
        source: MarzbanError,
    },
}

enum Outcome {
    InSync,
    Repaired,
    Failed,
}

/// Checks every subscription once. Stops at the first sign that the panel is unavailable.
pub async fn check_drift(
    db: &DatabaseConnection,
    client: &MarzbanClient,
) -> Result<DriftReport, DriftError> {
    let mut report = DriftReport::default();
    let mut after = 0_i64;
    loop {
        let ids: Vec<i64> = subscriptions::Entity::find()
            .select_only()
            .column(subscriptions::Column::Id)
            .filter(subscriptions::Column::Id.gt(after))
            .order_by_asc(subscriptions::Column::Id)
            .limit(PAGE)
            .into_tuple()
            .all(db)
            .await?;
        let Some(&last) = ids.last() else { break };
        after = last;
        for id in ids {
            match check_one(db, client, id).await {
                Ok(Outcome::InSync) => {}
                Ok(Outcome::Repaired) => {
                    metrics::counter!(METRIC_REPAIRS).increment(1);
                    report.repaired += 1;
                }
                Ok(Outcome::Failed) => {
                    metrics::counter!(METRIC_FAILURES).increment(1);
                    report.failed += 1;
                }
                Err(SyncError::Panel(source)) => {
                    return Err(DriftError::Panel {
                        checked: report.checked,
                        source,
                    });
                }
                Err(SyncError::Db(error)) => return Err(error.into()),
                Err(error) => {
                    // A subscription whose username does not parse: keep going with the rest.
                    tracing::error!(subscription_id = id, %error, "drift check failed");
                    report.failed += 1;
                }
            }
            report.checked += 1;
        }
    }
    tracing::info!(
        checked = report.checked,
        repaired = report.repaired,
        failed = report.failed,
        "drift check done"
    );
    Ok(report)
}

/// Checks and repairs one subscription under its row lock.
async fn check_one(
    db: &DatabaseConnection,
    client: &MarzbanClient,
    id: i64,
) -> Result<Outcome, SyncError> {
    let tx = db.begin().await?;
    let Some(subscription) = subscriptions::Entity::find_by_id(id)
        .lock_exclusive()
        .one(&tx)
        .await?
    else {
        return Ok(Outcome::InSync);
    };
    let now = ledger::whole_seconds(Utc::now());
    let desired = Desired::new(
        username(&subscription)?,
        subscription.expires_at,
        subscription.data_limit_bytes,
    );
    let result = repair(client, &desired, now).await;
    match result {
        Ok(None) => {
            tx.rollback().await?;
            Ok(Outcome::InSync)
        }
        Ok(Some(user)) => {
            let url = user.as_ref().map(|u| client.subscription_url(u));
            save_sync(
                &tx,
                subscription,
                desired_expiry(&desired),
                desired.data_limit,
                user.as_ref(),
                url,
                now,
            )
            .await?;
            tx.commit().await?;
            Ok(Outcome::Repaired)
        }
        // Nothing else will get through either: stop the pass.
        Err(error)
            if error.is_retryable() || matches!(error, MarzbanError::Unauthorized { .. }) =>
        {
            tx.rollback().await?;
            Err(error.into())
        }
        Err(error) => {
            tracing::error!(username = %desired.username, %error, "drift repair failed");
            let mut row: subscriptions::ActiveModel = subscription.into();
            row.sync_error = Set(Some(format!("drift check: {error}")));
            row.update(&tx).await?;
            tx.commit().await?;
            Ok(Outcome::Failed)
        }
    }
}

fn desired_expiry(desired: &Desired) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp(desired.expire, 0).unwrap_or_default()
}

/// `Ok(None)`: nothing to do. `Ok(Some(user))`: repaired; `user` is the panel user afterwards
/// (`None` if it is absent and should be).
async fn repair(
    client: &MarzbanClient,
    desired: &Desired,
    now: chrono::DateTime<Utc>,
) -> Result<Option<Option<UserResponse>>, MarzbanError> {
    let panel_user = client.get_user(&desired.username).await?;
    match panel::plan_repair(desired, panel_user.as_ref(), now) {
        Repair::None => Ok(None),
        Repair::Create => {
            tracing::warn!(username = %desired.username, expire = desired.expire, "drift: paid user missing on the panel; creating it");
            let user =
                panel::activate(client, desired, false, "re-created by the drift check").await?;
            Ok(Some(Some(user)))
        }
        Repair::Modify {
            change,
            differences,
        } => {
            tracing::warn!(username = %desired.username, differences = %differences.join(", "), "drift: panel differs from the ledger; repairing");
            let user = client.modify_user(&desired.username, &change).await?;
            Ok(Some(Some(user)))
        }
    }
}

/// Runs [`check_drift`] every `interval` until `shutdown` (the first pass after one interval).
pub fn spawn_periodic(
    db: DatabaseConnection,
    client: MarzbanClient,
    interval: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
            // A pass is not interrupted half-way: each subscription is its own short transaction.
            if let Err(error) = check_drift(&db, &client).await {
                tracing::warn!(%error, "drift check stopped early; next pass in {interval:?}");
            }
        }
    })
}
