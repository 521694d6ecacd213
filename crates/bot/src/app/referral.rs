//! Referrals (issue 23): `/start ref_<code>` records who brought a new user, `/ref` shows the
//! user's own link and how many friends came and paid ([`domain::referral`]).
//!
//! The bonus itself is written by the payment worker when the referred user's first payment
//! succeeds; both users are told from marzban-sync's `grant.activated` ([`crate::notify`]).
//! A malformed or unknown code, the user's own link, or a user who is not new gets a short
//! explanation, the ordinary menu, and changes nothing.

use domain::referral::{self, Code, Recorded};
use frankenstein::AsyncTelegramApi;
use frankenstein::types::User;

use super::App;
use crate::texts::{self, Texts, fill, referral as referral_texts};

impl App {
    /// `/start <parameter>`: a referral link's parameter is recorded and answered; then the
    /// main menu, as for a plain `/start`.
    pub(super) async fn start_with(&self, chat: i64, from: &User, t: &Texts, parameter: &str) {
        if let Some(text) = self.referral_start(from, t, parameter).await {
            self.send(chat, text, None).await;
        }
        self.main_menu(chat, from).await;
    }

    /// What to say about `parameter` before the menu; `None` for a parameter that is no
    /// referral link, or when referrals are off.
    async fn referral_start(&self, from: &User, t: &Texts, parameter: &str) -> Option<String> {
        if !parameter.starts_with(referral::START_PREFIX) || !self.referrals.enabled() {
            return None;
        }
        let rt = referral_texts::texts(t.lang);
        let Some(code) = Code::from_start(parameter) else {
            tracing::info!(telegram_id = from.id, "malformed referral link ignored");
            return Some(rt.bad_link.to_owned());
        };
        let telegram_id = i64::try_from(from.id).ok()?;
        let recorded = async {
            let user = referral::ensure_user(
                &self.db,
                telegram_id,
                from.username.clone(),
                Some(from.first_name.clone()),
                from.language_code.clone(),
            )
            .await?;
            referral::record(&self.db, user.id, &code, self.referrals.bonus_days).await
        }
        .await;
        let recorded = match recorded {
            Ok(recorded) => recorded,
            Err(error) => {
                tracing::warn!(%error, telegram_id, "cannot record the referral");
                return None;
            }
        };
        tracing::info!(
            telegram_id,
            outcome = recorded.as_str(),
            "referral link opened"
        );
        Some(
            match recorded {
                Recorded::Referred(_) => rt.welcome,
                Recorded::UnknownCode => rt.bad_link,
                Recorded::OwnLink => rt.own_link,
                Recorded::AlreadyReferred | Recorded::NotNew | Recorded::Circular => rt.not_new,
            }
            .to_owned(),
        )
    }

    /// `/ref`: the user's link, the bonus and their counts.
    pub(super) async fn referral_info(&self, chat: i64, from: &User, t: &Texts) {
        let rt = referral_texts::texts(t.lang);
        let text = if self.referrals.enabled() {
            match self.referral_link(from).await {
                Ok((link, counts)) => fill(
                    rt.info,
                    &[
                        ("link", &link),
                        (
                            "days",
                            &texts::days(t.lang, i64::from(self.referrals.bonus_days)),
                        ),
                        ("referred", &counts.referred.to_string()),
                        ("rewarded", &counts.rewarded.to_string()),
                    ],
                ),
                Err(reason) => {
                    tracing::warn!(%reason, "cannot show the referral link");
                    fill(rt.failed, &[("reason", &reason)])
                }
            }
        } else {
            rt.off.to_owned()
        };
        self.send(chat, text, Some(Self::back(t))).await;
    }

    async fn referral_link(&self, from: &User) -> Result<(String, referral::Counts), String> {
        let telegram_id = i64::try_from(from.id).map_err(|e| e.to_string())?;
        let bot = self.bot_username().await?;
        let user = referral::ensure_user(
            &self.db,
            telegram_id,
            from.username.clone(),
            Some(from.first_name.clone()),
            from.language_code.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let code = referral::code_of(&self.db, user.id)
            .await
            .map_err(|e| e.to_string())?;
        let counts = referral::counts(&self.db, user.id)
            .await
            .map_err(|e| e.to_string())?;
        Ok((code.link(&bot), counts))
    }

    /// The bot's @username (`getMe`, asked once).
    async fn bot_username(&self) -> Result<String, String> {
        self.bot_username
            .get_or_try_init(|| async {
                let me = self.api.get_me().await.map_err(|e| match e {
                    frankenstein::Error::Api(e) => e.description,
                    _ => "the Bot API did not answer".to_owned(),
                })?;
                me.result
                    .username
                    .ok_or_else(|| "the bot has no username".to_owned())
            })
            .await
            .cloned()
    }
}
