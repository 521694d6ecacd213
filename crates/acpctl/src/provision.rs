//! `acpctl drift check | repair` (marzban-sync's drift check) and `acpctl reconcile PAYMENT`
//! (payment-worker's reconciliation check, run now for one payment).

use std::sync::Arc;

use domain::entities::payments;
use marzban_sync::drift::{self, DriftError};
use payment_worker::Reconciler;
use sea_orm::{DatabaseConnection, EntityTrait};
use serde_json::json;
use service_kit::settings::Source;
use tokio::sync::Notify;

use crate::show::{PanelAccess, find_payment, payment_key};
use crate::{CtlError, DriftCommand, Output, PanelCommand, connect_db, db_failed};

pub async fn drift(source: &Source, command: &DriftCommand) -> Result<Output, CtlError> {
    let panel = PanelAccess::load(source)?;
    let Some(client) = panel.client() else {
        return Err(CtlError::Usage("setting PANEL_URL is missing".to_owned()));
    };
    let db = connect_db(source).await?;
    let result = match command {
        DriftCommand::Check => drift::find_drift(&db, client)
            .await
            .map(|(checked, found)| {
                let mut text = format!("drift check: checked={checked} drifted={}\n", found.len());
                for d in &found {
                    text.push_str(&format!(
                        "  {} (subscription {}): {}\n",
                        d.username,
                        d.subscription_id,
                        d.differences.join(", ")
                    ));
                }
                if !found.is_empty() {
                    text.push_str("repair with: acpctl drift repair\n");
                }
                let json = json!({
                    "checked": checked,
                    "drifted": found.len(),
                    "drift": found.iter().map(|d| json!({
                        "subscription_id": d.subscription_id,
                        "username": d.username,
                        "differences": d.differences,
                    })).collect::<Vec<_>>(),
                });
                Output {
                    ok: found.is_empty(),
                    ..Output::new(json, text)
                }
            }),
        DriftCommand::Repair => drift::check_drift(&db, client).await.map(|report| {
            let json = json!({
                "checked": report.checked,
                "repaired": report.repaired,
                "failed": report.failed,
            });
            let text = format!(
                "drift repair: checked={} repaired={} failed={}\n",
                report.checked, report.repaired, report.failed
            );
            Output {
                ok: report.failed == 0,
                ..Output::new(json, text)
            }
        }),
    };
    db.close().await.ok();
    result.map_err(drift_failed)
}

fn drift_failed(error: DriftError) -> CtlError {
    match error {
        DriftError::Db(error) => db_failed(error),
        panel @ DriftError::Panel { .. } => CtlError::Failed(panel.to_string()),
    }
}

/// `acpctl panel check | migrate`.
pub async fn panel(source: &Source, command: &PanelCommand) -> Result<Output, CtlError> {
    let panel = PanelAccess::load(source)?;
    let Some(client) = panel.client() else {
        return Err(CtlError::Usage("setting PANEL_URL is missing".to_owned()));
    };
    let kind = client.kind();
    match command {
        PanelCommand::Check => match client.check().await {
            Ok(()) => Ok(Output::new(
                json!({"panel": kind.as_str(), "ready": true}),
                format!("panel {kind}: ready\n"),
            )),
            Err(error) => Ok(Output {
                ok: false,
                ..Output::new(
                    json!({"panel": kind.as_str(), "ready": false, "error": error.to_string()}),
                    format!("panel {kind}: not ready: {error}\n"),
                )
            }),
        },
        PanelCommand::Migrate => {
            // Refuse a panel that is not configured right before touching anything.
            client
                .check()
                .await
                .map_err(|error| CtlError::Failed(format!("panel {kind}: {error}")))?;
            let db = connect_db(source).await?;
            let result = drift::migrate(&db, client).await;
            db.close().await.ok();
            let report = result.map_err(drift_failed)?;
            let json = json!({
                "panel": kind.as_str(),
                "checked": report.checked,
                "moved": report.repaired,
                "failed": report.failed,
            });
            let text = format!(
                "panel migrate ({kind}): checked={} moved={} failed={}\n",
                report.checked, report.repaired, report.failed
            );
            Ok(Output {
                ok: report.failed == 0,
                ..Output::new(json, text)
            })
        }
    }
}

pub async fn reconcile(source: &Source, key: &str) -> Result<Output, CtlError> {
    payment_key(key)?;
    let settings = payment_worker::ServiceSettings::load(source)?;
    let db = connect_db(source).await?;
    let result = reconcile_on(&db, &settings, key).await;
    db.close().await.ok();
    result
}

async fn reconcile_on(
    db: &DatabaseConnection,
    settings: &payment_worker::ServiceSettings,
    key: &str,
) -> Result<Output, CtlError> {
    let before = find_payment(db, key).await?;
    let providers = payment_worker::payment_service(settings, db)
        .map_err(|error| CtlError::Usage(error.to_string()))?;
    if providers.provider_named(&before.provider).is_none() {
        return Err(CtlError::Failed(format!(
            "payment {}: provider `{}` is not configured here (give acpctl the provider \
             settings the worker has, e.g. YOOKASSA_SHOP_ID and YOOKASSA_SECRET_KEY)",
            before.id, before.provider
        )));
    }
    let reconciler = Reconciler::new(
        db.clone(),
        Arc::new(providers),
        settings.reconcile.clone(),
        Arc::new(Notify::new()),
    );
    let outcome = reconciler
        .check_now(before.id)
        .await
        .map_err(db_failed)?
        .ok_or_else(|| CtlError::Failed(format!("payment {} vanished", before.id)))?;
    let after = payments::Entity::find_by_id(before.id)
        .one(db)
        .await
        .map_err(db_failed)?
        .unwrap_or_else(|| before.clone());
    let mut text = format!(
        "payment {} ({} {}): {} -> {} ({outcome})\n",
        before.id,
        before.provider,
        before.provider_payment_id.as_deref().unwrap_or("-"),
        before.status.as_str(),
        after.status.as_str(),
    );
    if after.flagged && !before.flagged {
        text.push_str(&format!(
            "FLAGGED: {}\n",
            after.flag_reason.as_deref().unwrap_or("-")
        ));
    }
    if outcome == "applied" || outcome == "expired" {
        text.push_str("its event waits in the outbox; the services' relays publish it\n");
    }
    let json = json!({
        "payment_id": before.id,
        "provider": before.provider,
        "provider_payment_id": before.provider_payment_id,
        "before": before.status.as_str(),
        "after": after.status.as_str(),
        "outcome": outcome,
        "flagged": after.flagged,
    });
    Ok(Output {
        ok: outcome != "error",
        ..Output::new(json, text)
    })
}
