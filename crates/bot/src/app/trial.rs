//! The free trial (issue 23): the main menu offers "Free trial (N days)" to a user who may
//! take it — `TRIAL_DAYS` > 0, no trial before, never paid, no subscription
//! ([`domain::trial::refusal`]) — and a press asks the gateway for it (`POST /api/trials`).
//! The gateway's UNIQUE key makes a second trial impossible; a second press, or a user who may
//! not have one, is told why and nothing changes. The notice that the trial is active comes
//! from marzban-sync's `grant.activated` ([`crate::notify`]).

use domain::trial::{self, Refusal};
use frankenstein::types::User;

use super::App;
use crate::gateway::{GatewayError, StartTrial};
use crate::store;
use crate::texts::{self, Texts, fill};

impl App {
    /// The trial's days if the main menu should offer it to `telegram_id`.
    pub(super) async fn trial_offer(&self, telegram_id: u64) -> Option<i32> {
        if !self.trial.enabled() {
            return None;
        }
        match self.trial_refusal(telegram_id).await {
            Ok(None) => Some(self.trial.days),
            Ok(Some(_)) => None,
            Err(error) => {
                tracing::warn!(%error, "cannot tell whether the trial may be offered");
                None
            }
        }
    }

    /// Why `telegram_id` may not have a trial; a user the gateway has not seen may.
    async fn trial_refusal(&self, telegram_id: u64) -> Result<Option<Refusal>, sea_orm::DbErr> {
        let Ok(telegram_id) = i64::try_from(telegram_id) else {
            return Ok(None);
        };
        match store::user(&self.db, telegram_id).await? {
            Some(user) => trial::refusal(&self.db, user.id).await,
            None => Ok(None),
        }
    }

    /// The Free trial press.
    pub(super) async fn start_trial(&self, chat: i64, from: &User, t: &Texts) {
        let text = self.trial_answer(from, t).await;
        self.send(chat, text, Some(Self::back(t))).await;
    }

    async fn trial_answer(&self, from: &User, t: &Texts) -> String {
        if !self.trial.enabled() {
            return t.trial_off.to_owned();
        }
        match self.trial_refusal(from.id).await {
            Ok(Some(refusal)) => return self.refusal_answer(from.id, t, refusal).await,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot read the trial's eligibility; asking the gateway")
            }
        }
        let Ok(telegram_id) = i64::try_from(from.id) else {
            return t.trial_not_eligible.to_owned();
        };
        let body = StartTrial {
            telegram_id,
            username: from.username.clone(),
            first_name: Some(from.first_name.clone()),
            language_code: from.language_code.clone(),
        };
        match self.gateway.start_trial(&body).await {
            Ok(grant) => {
                tracing::info!(
                    telegram_id,
                    grant_id = grant.grant_id,
                    days = grant.days,
                    "free trial started"
                );
                fill(
                    t.trial_started,
                    &[("days", &texts::days(t.lang, i64::from(grant.days)))],
                )
            }
            // A concurrent press won, or the user paid in between: the gateway says which.
            Err(GatewayError::Rejected {
                status: 409,
                message,
            }) => {
                let refusal = [Refusal::Taken, Refusal::PaidBefore, Refusal::Subscribed]
                    .into_iter()
                    .find(|r| message.contains(r.as_str()))
                    .unwrap_or(Refusal::Taken);
                self.refusal_answer(from.id, t, refusal).await
            }
            Err(GatewayError::Rejected { status: 404, .. }) => t.trial_off.to_owned(),
            Err(error) => {
                tracing::warn!(%error, telegram_id, "free trial failed");
                fill(t.trial_failed, &[("reason", &error.to_string())])
            }
        }
    }
}

impl App {
    /// What to tell a user refused a trial: a trial marzban-sync refused because the panel
    /// already had the user ([`trial::refused_for_panel_user`]) is not one they had.
    async fn refusal_answer(&self, telegram_id: u64, t: &Texts, refusal: Refusal) -> String {
        if refusal == Refusal::Taken
            && let Ok(telegram_id) = i64::try_from(telegram_id)
        {
            let refused = match store::user(&self.db, telegram_id).await {
                Ok(Some(user)) => trial::refused_for_panel_user(&self.db, user.id).await,
                Ok(None) => Ok(false),
                Err(error) => Err(error),
            };
            match refused {
                Ok(true) => return t.trial_existing_account.to_owned(),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "cannot tell why the trial was refused"),
            }
        }
        refusal_text(t, refusal).to_owned()
    }
}

fn refusal_text(t: &Texts, refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Taken => t.trial_taken,
        Refusal::PaidBefore | Refusal::Subscribed => t.trial_not_eligible,
    }
}
