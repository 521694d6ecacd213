//! `/user <telegram id|@username>` for admins (issue 23): one customer's subscription,
//! recent payments, ledger, reminder and autopay settings and referrals, read from the
//! database ([`domain::customer::overview`], the same data as the gateway's
//! `GET /api/admin/users/{id or @username}`). The panel is not asked: the expiry is the
//! ledger's, the panel state is the last sync marzban-sync recorded.

use domain::customer::{self, Lookup, Overview};
use domain::money::{Currency, Money};
use std::str::FromStr;

use super::App;
use crate::texts::{self, Lang, Texts, fill, referral as referral_texts};

impl App {
    pub(super) async fn user_lookup(&self, chat: i64, t: &Texts, arg: &str) {
        let rt = referral_texts::texts(t.lang);
        let text = match Lookup::parse(arg) {
            Err(_) => rt.user_usage.to_owned(),
            Ok(lookup) => match customer::overview(&self.db, &lookup).await {
                Ok(Some(overview)) => render(t.lang, &overview),
                Ok(None) => fill(rt.user_unknown, &[("user", &lookup.to_string())]),
                Err(error) => {
                    tracing::warn!(%error, "user look-up failed");
                    fill(rt.user_failed, &[("reason", &error.to_string())])
                }
            },
        };
        self.send(chat, text, None).await;
    }
}

fn amount(minor: i64, currency: &str) -> String {
    match Currency::from_str(currency) {
        Ok(c) => texts::money(Money::new(minor, c)),
        Err(_) => format!("{minor} {currency}"),
    }
}

/// The look-up as one message.
pub fn render(lang: Lang, o: &Overview) -> String {
    let rt = referral_texts::texts(lang);
    let dash = "—".to_owned();
    let mut lines = vec![fill(
        rt.user_title,
        &[
            ("telegram_id", &o.user.telegram_id.to_string()),
            (
                "username",
                &o.user
                    .username
                    .as_ref()
                    .map_or(dash.clone(), |u| format!("@{u}")),
            ),
            ("name", o.user.first_name.as_ref().unwrap_or(&dash)),
            ("lang", o.user.language_code.as_ref().unwrap_or(&dash)),
            ("since", &texts::date(o.user.created_at)),
        ],
    )];
    if o.blocked_bot {
        lines.push(rt.blocked.to_owned());
    }
    match &o.subscription {
        Some(s) => {
            lines.push(fill(
                rt.user_subscription,
                &[
                    ("expires", &texts::date(s.expires_at)),
                    ("state", if s.active { rt.active } else { rt.expired }),
                    ("panel_user", &s.panel_username),
                    (
                        "synced",
                        &s.synced_at.map_or(rt.never.to_owned(), texts::date),
                    ),
                ],
            ));
            if let Some(error) = &s.sync_error {
                lines.push(fill(rt.user_sync_error, &[("error", error)]));
            }
            lines.push(rt.user_panel_note.to_owned());
        }
        None => lines.push(rt.user_no_subscription.to_owned()),
    }
    if o.payments.is_empty() {
        lines.push(rt.user_no_payments.to_owned());
    } else {
        lines.push(fill(
            rt.user_payments,
            &[
                ("shown", &o.payments.len().to_string()),
                ("total", &o.payments_total.to_string()),
            ],
        ));
        for p in &o.payments {
            let refunded = if p.refunded_minor > 0 {
                format!(" (−{})", amount(p.refunded_minor, &p.currency))
            } else {
                String::new()
            };
            lines.push(format!(
                "• {} {} {} {} {}{refunded} {}",
                p.id,
                p.tariff,
                p.provider,
                amount(p.amount_minor, &p.currency),
                p.status,
                texts::date(p.created_at),
            ));
        }
    }
    if o.ledger.is_empty() {
        lines.push(rt.user_no_ledger.to_owned());
    } else {
        lines.push(fill(
            rt.user_ledger,
            &[("ledger", &o.ledger.len().to_string())],
        ));
        for g in &o.ledger {
            let revoked = if g.days_revoked > 0 {
                format!(" −{}", g.days_revoked)
            } else {
                String::new()
            };
            lines.push(format!(
                "• {} +{}{revoked} → {}",
                g.kind,
                texts::days(lang, i64::from(g.days_granted)),
                texts::date(g.expires_at_after),
            ));
        }
    }
    let mut autopay = if o.autopay.is_empty() {
        rt.no_card.to_owned()
    } else {
        o.autopay
            .iter()
            .map(|m| {
                format!(
                    "{} {} {}",
                    m.title,
                    if m.autopay { rt.on } else { rt.off_word },
                    m.last_decline.as_deref().unwrap_or_default()
                )
                .trim_end()
                .to_owned()
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(stars) = &o.star_subscription {
        let template = if stars.canceled {
            rt.stars_canceled
        } else {
            rt.stars_on
        };
        let line = fill(template, &[("date", &texts::date(stars.expires_at))]);
        autopay = format!("{autopay}, {line}");
    }
    lines.push(fill(
        rt.user_settings,
        &[
            (
                "reminders",
                if o.reminders_off { rt.off_word } else { rt.on },
            ),
            ("autopay", &autopay),
        ],
    ));
    let r = &o.referral;
    lines.push(fill(
        rt.user_referrals,
        &[
            (
                "referred_by",
                &r.referred_by
                    .map_or(rt.nobody.to_owned(), |id| id.to_string()),
            ),
            ("referred", &r.counts.referred.to_string()),
            ("rewarded", &r.counts.rewarded.to_string()),
            ("days", &r.bonus_days.to_string()),
        ],
    ));
    lines.join("\n")
}
