//! The drift check: compares every subscription in the ledger with its panel user and repairs
//! the panel to match the ledger (an admin's hand edit, a user deleted on the panel, a panel
//! restored from an old backup, a message parked after its ledger entry was committed). Every
//! repair is logged with what differed.
//!
//! The ledger's wish is the subscription row's intent (`expires_at`, `data_limit_bytes`), which
//! the consumer writes together with every ledger entry. No transaction is open while the panel
//! is called: the check reads the intent, compares and repairs the panel, then records the
//! repair under the row lock — unless the intent moved on meanwhile (a payment or refund of
//! the same user committed), in which case its repair may have overtaken the newer state on
//! the panel, so the subscription is checked again.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::entities::subscriptions;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ledger;
use crate::panel::{self, Desired, Panel, PanelError, PanelUser, Repair};
use crate::sync::{SyncError, save_sync, username};

/// Counter: panel users changed or created by the drift check.
pub const METRIC_REPAIRS: &str = "marzban_sync_drift_repairs_total";
/// Counter: subscriptions the drift check could not check or repair.
pub const METRIC_FAILURES: &str = "marzban_sync_drift_failures_total";

/// Subscriptions read per page.
const PAGE: u64 = 100;

/// Checks of one subscription in a pass while its intent keeps moving.
const ATTEMPTS: usize = 3;

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
    #[error("the panel failed after {checked} subscriptions: {source}")]
    Panel {
        checked: u64,
        #[source]
        source: PanelError,
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
    client: &dyn Panel,
) -> Result<DriftReport, DriftError> {
    pass(db, client, Mode::Repair).await
}

/// Moves the ledger onto a new panel, after `PANEL_KIND` (and `PANEL_URL`) changed: every
/// subscription with paid time is made to exist on `client` with the ledger's expiry — a
/// user the panel already has under the subscription's name (the panel's own migration
/// tool, PasarGuard's in-place upgrade) is adopted as on Marzban (the access the settings
/// name added, its keys kept), any other one is created — and a subscription without paid
/// time is disabled there if it exists. Every subscription's status and subscription link
/// are recorded from the new panel. Absolute values only, so a second run changes nothing
/// and nothing is ever extended twice; the ledger is not touched (no opening balance: the
/// time on the new panel is the time our ledger already counts). `repaired` counts the
/// subscriptions moved.
pub async fn migrate(
    db: &DatabaseConnection,
    client: &dyn Panel,
) -> Result<DriftReport, DriftError> {
    pass(db, client, Mode::Migrate).await
}

/// What a pass does to each subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Repair what differs ([`check_drift`]).
    Repair,
    /// Adopt or create everything ([`migrate`]).
    Migrate,
}

async fn pass(
    db: &DatabaseConnection,
    client: &dyn Panel,
    mode: Mode,
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
            match check_one(db, client, id, mode).await {
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
        ?mode,
        panel = %client.kind(),
        checked = report.checked,
        repaired = report.repaired,
        failed = report.failed,
        "drift pass done"
    );
    Ok(report)
}

/// Checks and repairs one subscription; checks again while its intent moves on under it.
async fn check_one(
    db: &DatabaseConnection,
    client: &dyn Panel,
    id: i64,
    mode: Mode,
) -> Result<Outcome, SyncError> {
    for _ in 1..ATTEMPTS {
        if let Some(outcome) = check_once(db, client, id, mode).await? {
            return Ok(outcome);
        }
    }
    Ok(check_once(db, client, id, mode).await?.unwrap_or_else(|| {
        tracing::warn!(
            subscription_id = id,
            "drift check: the subscription keeps changing; next pass"
        );
        Outcome::InSync
    }))
}

/// One comparison and repair, the panel called with no transaction open. `None`: the intent
/// changed while the panel was repaired (check again).
async fn check_once(
    db: &DatabaseConnection,
    client: &dyn Panel,
    id: i64,
    mode: Mode,
) -> Result<Option<Outcome>, SyncError> {
    let Some(subscription) = subscriptions::Entity::find_by_id(id).one(db).await? else {
        return Ok(Some(Outcome::InSync));
    };
    let now = ledger::whole_seconds(Utc::now());
    let desired = Desired::new(
        username(&subscription)?,
        subscription.expires_at,
        subscription.data_limit_bytes,
    );
    let result = match mode {
        Mode::Repair => repair(client, &desired, now).await,
        Mode::Migrate => move_to(client, &desired, now).await,
    };
    match result {
        Ok(None) => Ok(Some(Outcome::InSync)),
        Ok(Some(user)) => {
            let tx = service_kit::db::begin_write(db).await?;
            let Some(current) = locked(&tx, id).await? else {
                return Ok(Some(Outcome::Repaired));
            };
            if !same_intent(&current, &subscription) {
                tx.rollback().await?;
                tracing::info!(
                    subscription_id = id,
                    "intent changed during the drift repair; checking again"
                );
                return Ok(None);
            }
            save_sync(
                &tx,
                current,
                desired_expiry(&desired),
                desired.data_limit,
                user.as_ref(),
                now,
            )
            .await?;
            tx.commit().await?;
            Ok(Some(Outcome::Repaired))
        }
        // Nothing else will get through either: stop the pass.
        Err(error) if error.stops_everything() => Err(error.into()),
        Err(error) => {
            tracing::error!(username = %desired.username, %error, "drift repair failed");
            subscriptions::Entity::update_many()
                .col_expr(
                    subscriptions::Column::SyncError,
                    Expr::value(Some(format!("drift check: {error}"))),
                )
                .filter(subscriptions::Column::Id.eq(id))
                .exec(db)
                .await?;
            Ok(Some(Outcome::Failed))
        }
    }
}

async fn locked(tx: &DatabaseTransaction, id: i64) -> Result<Option<subscriptions::Model>, DbErr> {
    subscriptions::Entity::find_by_id(id)
        .lock_exclusive()
        .one(tx)
        .await
}

fn same_intent(a: &subscriptions::Model, b: &subscriptions::Model) -> bool {
    a.expires_at == b.expires_at && a.data_limit_bytes == b.data_limit_bytes
}

fn desired_expiry(desired: &Desired) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp(desired.expire, 0).unwrap_or_default()
}

/// `Ok(None)`: nothing to do. `Ok(Some(user))`: repaired; `user` is the panel user afterwards
/// (`None` if it is absent and should be).
async fn repair(
    client: &dyn Panel,
    desired: &Desired,
    now: chrono::DateTime<Utc>,
) -> Result<Option<Option<PanelUser>>, PanelError> {
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

/// [`migrate`]'s step for one subscription: `Ok(Some(user))` with the user on the new panel
/// (`None`: absent, and nothing to create), `Ok(None)` never (everything is recorded).
async fn move_to(
    client: &dyn Panel,
    desired: &Desired,
    now: chrono::DateTime<Utc>,
) -> Result<Option<Option<PanelUser>>, PanelError> {
    let note = "moved from the previous panel";
    let found = client.find_user(&desired.username).await?;
    let user = match (found, desired.is_paid_at(now)) {
        (Some(_), true) => {
            tracing::info!(username = %desired.username, expire = desired.expire, "migration: adopting the panel's user");
            Some(panel::adopt(client, desired, note).await?)
        }
        (None, true) => {
            tracing::info!(username = %desired.username, expire = desired.expire, "migration: creating the user");
            Some(panel::activate(client, desired, false, note).await?)
        }
        (Some(_), false) => panel::shorten(client, desired, now).await?,
        (None, false) => None,
    };
    Ok(Some(user))
}

/// A subscription whose panel user differs from the ledger: what [`check_drift`] would repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub subscription_id: i64,
    pub username: String,
    /// How the panel differs (`expire … -> …`, `status … -> …`), or that the user is missing.
    pub differences: Vec<String>,
}

/// Compares every subscription with its panel user and changes nothing (the operator's
/// `acpctl drift check`); returns how many were compared and the ones that differ. Stops at
/// the first sign that the panel is unavailable, like [`check_drift`].
pub async fn find_drift(
    db: &DatabaseConnection,
    client: &dyn Panel,
) -> Result<(u64, Vec<Drift>), DriftError> {
    let now = ledger::whole_seconds(Utc::now());
    let mut found = Vec::new();
    let mut checked = 0;
    let mut after = 0_i64;
    loop {
        let page = subscriptions::Entity::find()
            .filter(subscriptions::Column::Id.gt(after))
            .order_by_asc(subscriptions::Column::Id)
            .limit(PAGE)
            .all(db)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for subscription in page {
            let differences = match username(&subscription) {
                Ok(name) => {
                    let desired =
                        Desired::new(name, subscription.expires_at, subscription.data_limit_bytes);
                    let user = client
                        .get_user(&desired.username)
                        .await
                        .map_err(|source| DriftError::Panel { checked, source })?;
                    match panel::plan_repair(&desired, user.as_ref(), now) {
                        Repair::None => Vec::new(),
                        Repair::Create => vec!["paid user missing on the panel".to_owned()],
                        Repair::Modify { differences, .. } => differences,
                    }
                }
                Err(error) => vec![error.to_string()],
            };
            checked += 1;
            if !differences.is_empty() {
                found.push(Drift {
                    subscription_id: subscription.id,
                    username: subscription.marzban_username,
                    differences,
                });
            }
        }
    }
    Ok((checked, found))
}

/// Runs [`check_drift`] every `interval` until `shutdown` (the first pass after one interval).
pub fn spawn_periodic(
    db: DatabaseConnection,
    client: Arc<dyn Panel>,
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
            if let Err(error) = check_drift(&db, client.as_ref()).await {
                tracing::warn!(%error, "drift check stopped early; next pass in {interval:?}");
            }
        }
    })
}
