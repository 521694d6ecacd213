//! Promo codes in the bot (issue 23).
//!
//! A customer sends `/promo CODE`: the bot checks the code against the database as the
//! gateway will ([`domain::promo`]: enabled, in its window, not used up, not used by them)
//! and answers with the tariffs it is good for; their buttons carry the code
//! (`t:<tariff>:<CODE>`), so does every payment button of the tariff card
//! (`p:<tariff>:<provider>:<currency>:<CODE>`, priced with the code), and the Pay press sends
//! it to the gateway as `promo_code`, which decides (a refusal is told with its reason).
//!
//! Admins: `/promo` lists the codes with their numbers, `/promo new CODE percent 20|fixed 100
//! RUB|days 7 [uses=N] [once] [from=YYYY-MM-DD] [until=YYYY-MM-DD] [tariffs=a,b]
//! [providers=x,y]` makes one, `/promo off CODE` disables one — through the gateway's
//! `/api/admin/promos` (admin token). An admin's `/promo CODE` applies the code like a
//! customer's.

use chrono::{DateTime, Days, NaiveDate, Utc};
use domain::entities::promo_codes;
use domain::money::{Currency, Money};
use domain::promo::{self, Benefit, Refusal};
use frankenstein::types::User;
use serde_json::{Value, json};

use super::App;
use super::ui::{button, keyboard, user_id};
use crate::gateway::{GatewayError, PromoView};
use crate::store;
use crate::texts::promo::{PromoTexts, texts as promo_texts};
use crate::texts::{self, Lang, Texts, fill};

/// What an admin's `/promo` asks.
#[derive(Debug, Clone, PartialEq)]
enum AdminCommand {
    List,
    Help,
    /// The API body of the code to make.
    New(Value),
    Off(String),
}

/// An admin's `/promo` arguments: `None` when they are not an admin command (a code to apply),
/// `Some(Err(why))` when they are a malformed one.
fn admin_command(arg: &str, admin: i64) -> Option<Result<AdminCommand, String>> {
    let words: Vec<&str> = arg.split_whitespace().collect();
    match words.first().map(|w| w.to_ascii_lowercase()).as_deref() {
        None | Some("list") => Some(Ok(AdminCommand::List)),
        Some("help") => Some(Ok(AdminCommand::Help)),
        Some("off") | Some("disable") => Some(match words.as_slice() {
            [_, code] => Ok(AdminCommand::Off((*code).to_owned())),
            _ => Err("/promo off CODE".to_owned()),
        }),
        Some("new") => Some(new_code(&words[1..], admin).map(AdminCommand::New)),
        Some(_) => None,
    }
}

/// `CODE kind value [currency] [options]` → the body of `POST /api/admin/promos`.
fn new_code(words: &[&str], admin: i64) -> Result<Value, String> {
    let [code, kind, value, rest @ ..] = words else {
        return Err("/promo new CODE percent|fixed|days VALUE …".to_owned());
    };
    let mut body = json!({"code": code, "created_by": admin});
    let options = match kind.to_ascii_lowercase().as_str() {
        "percent" | "%" => {
            let percent: i64 = value
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("percent: {value:?} is not a whole number"))?;
            body["kind"] = json!("percent");
            body["percent"] = json!(percent);
            rest
        }
        "fixed" => {
            let [currency, rest @ ..] = rest else {
                return Err("/promo new CODE fixed 100 RUB".to_owned());
            };
            let currency: Currency = currency
                .to_ascii_uppercase()
                .parse()
                .map_err(|_| format!("unknown currency {currency:?}"))?;
            let amount = Money::parse(value, currency).map_err(|e| e.to_string())?;
            body["kind"] = json!("fixed");
            body["amount_minor"] = json!(amount.minor());
            body["currency"] = json!(currency.code());
            rest
        }
        "days" => {
            let days: i64 = value
                .parse()
                .map_err(|_| format!("days: {value:?} is not a whole number"))?;
            body["kind"] = json!("days");
            body["days"] = json!(days);
            rest
        }
        other => return Err(format!("unknown kind {other:?}: percent, fixed or days")),
    };
    for option in options {
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        match name.to_ascii_lowercase().as_str() {
            "once" if value.is_empty() => body["once_per_user"] = json!(true),
            "uses" => {
                let uses: i64 = value
                    .parse()
                    .map_err(|_| format!("uses: {value:?} is not a whole number"))?;
                body["max_uses"] = json!(uses);
            }
            "from" => body["starts_at"] = json!(day(value, 0)?),
            "until" => body["ends_at"] = json!(day(value, 1)?),
            "tariffs" | "providers" => {
                let items: Vec<&str> = value.split(',').filter(|s| !s.is_empty()).collect();
                if items.is_empty() {
                    return Err(format!("{name}= needs a list: {name}=a,b"));
                }
                body[name.to_ascii_lowercase()] = json!(items);
            }
            _ => return Err(format!("unknown option {option:?}")),
        }
    }
    Ok(body)
}

/// The midnight (UTC) `later` days after the date `value`.
fn day(value: &str, later: u64) -> Result<DateTime<Utc>, String> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.checked_add_days(Days::new(later)))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .ok_or_else(|| format!("{value:?} is not a date like 2027-01-31"))
}

/// What the code gives, in the customer's words.
fn benefit_text(p: &PromoTexts, lang: Lang, benefit: Benefit) -> String {
    match benefit {
        Benefit::Percent(percent) => fill(p.benefit_percent, &[("percent", &percent.to_string())]),
        Benefit::Fixed(amount) => fill(p.benefit_fixed, &[("amount", &texts::money(amount))]),
        Benefit::Days(days) => fill(
            p.benefit_days,
            &[("days", &texts::days(lang, i64::from(days)))],
        ),
    }
}

/// The benefit of a code the API showed.
fn view_benefit(view: &PromoView) -> Option<Benefit> {
    match view.kind.as_str() {
        "percent" => Some(Benefit::Percent(view.value)),
        "fixed" => {
            let amount = view.amount.as_ref()?;
            let currency: Currency = amount.currency.parse().ok()?;
            Some(Benefit::Fixed(Money::new(amount.minor, currency)))
        }
        "days" => i32::try_from(view.value).ok().map(Benefit::Days),
        _ => None,
    }
}

/// A code's limits, one sentence.
fn limits_text(p: &PromoTexts, view: &PromoView) -> String {
    let mut parts = Vec::new();
    if let Some(n) = view.max_uses {
        parts.push(fill(p.limit_uses, &[("n", &n.to_string())]));
    }
    if view.once_per_user {
        parts.push(p.limit_once.to_owned());
    }
    if let Some(start) = view.starts_at {
        parts.push(fill(
            p.limit_from,
            &[("date", &start.format("%Y-%m-%d").to_string())],
        ));
    }
    if let Some(end) = view.ends_at {
        // Exclusive: the last day it works is the day before.
        let last = end - chrono::Duration::seconds(1);
        parts.push(fill(
            p.limit_until,
            &[("date", &last.format("%Y-%m-%d").to_string())],
        ));
    }
    if !view.tariffs.is_empty() {
        parts.push(fill(p.limit_tariffs, &[("list", &view.tariffs.join(", "))]));
    }
    if !view.providers.is_empty() {
        parts.push(fill(
            p.limit_providers,
            &[("list", &view.providers.join(", "))],
        ));
    }
    if parts.is_empty() {
        p.no_limits.to_owned()
    } else {
        let mut text = parts.join(", ");
        text.push('.');
        text
    }
}

impl App {
    /// `/promo [arg]` from anyone: admin commands for admins, else applying a code.
    pub(super) async fn promo_command(
        &self,
        chat: i64,
        from: &User,
        t: &Texts,
        admin: bool,
        arg: &str,
    ) {
        let p = promo_texts(t.lang);
        if admin && let Some(command) = admin_command(arg, user_id(from)) {
            let text = match command {
                Ok(command) => self.promo_admin(t.lang, command).await,
                Err(why) => format!(
                    "{}\n\n{}",
                    fill(p.admin_failed, &[("reason", &why)]),
                    p.admin_usage
                ),
            };
            return self.send(chat, text, None).await;
        }
        match arg.split_whitespace().next() {
            Some(code) => self.apply_promo(chat, from, t, code).await,
            None => self.send(chat, p.ask.to_owned(), Some(Self::back(t))).await,
        }
    }

    async fn promo_admin(&self, lang: Lang, command: AdminCommand) -> String {
        let p = promo_texts(lang);
        if !self.gateway.can_refund() {
            return p.admin_no_token.to_owned();
        }
        let failed = |error: GatewayError| match error {
            GatewayError::Rejected { status: 409, .. } => p.admin_exists.to_owned(),
            GatewayError::Rejected { message, .. } => {
                let reason = serde_json::from_str::<Value>(&message)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or(message);
                fill(p.admin_failed, &[("reason", &reason)])
            }
            other => fill(p.admin_failed, &[("reason", &other.to_string())]),
        };
        match command {
            AdminCommand::Help => p.admin_usage.to_owned(),
            AdminCommand::List => match self.gateway.promos().await {
                Ok(views) if views.is_empty() => p.admin_none.to_owned(),
                Ok(views) => {
                    let mut text = p.admin_list_title.to_owned();
                    for view in &views {
                        text.push_str("\n\n");
                        text.push_str(&self.promo_line(lang, view));
                    }
                    text
                }
                Err(error) => failed(error),
            },
            AdminCommand::New(body) => match self.gateway.create_promo(&body).await {
                Ok(view) => {
                    tracing::info!(code = %view.code, "promo code made from the bot");
                    let benefit = view_benefit(&view)
                        .map(|b| benefit_text(p, lang, b))
                        .unwrap_or_default();
                    fill(
                        p.admin_created,
                        &[
                            ("code", &view.code),
                            ("benefit", &benefit),
                            ("limits", &limits_text(p, &view)),
                        ],
                    )
                }
                Err(error) => failed(error),
            },
            AdminCommand::Off(code) => match self.gateway.disable_promo(&code).await {
                Ok(view) => fill(p.admin_disabled, &[("code", &view.code)]),
                Err(GatewayError::Rejected { status: 404, .. }) => {
                    fill(p.admin_unknown, &[("code", &code)])
                }
                Err(error) => failed(error),
            },
        }
    }

    fn promo_line(&self, lang: Lang, view: &PromoView) -> String {
        let p = promo_texts(lang);
        let benefit = view_benefit(view)
            .map(|b| benefit_text(p, lang, b))
            .unwrap_or_default();
        let revenue = if view.stats.revenue.is_empty() {
            "—".to_owned()
        } else {
            view.stats
                .revenue
                .iter()
                .filter_map(|m| Some(texts::money(Money::new(m.minor, m.currency.parse().ok()?))))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        fill(
            p.admin_line,
            &[
                ("code", &view.code),
                ("benefit", &benefit),
                (
                    "state",
                    if view.active {
                        p.admin_active
                    } else {
                        p.admin_off
                    },
                ),
                ("limits", &limits_text(p, view)),
                ("uses", &view.stats.uses.to_string()),
                ("payments", &view.stats.payments.to_string()),
                ("paid", &view.stats.paid.to_string()),
                ("conversion", &format!("{:.1}%", view.stats.conversion_pct)),
                ("revenue", &revenue),
            ],
        )
    }

    /// The code `code` for this customer now: the row, or why not (told to them already).
    pub(super) async fn usable_promo(
        &self,
        chat: i64,
        user: i64,
        t: &Texts,
        code: &str,
        tariff: Option<&str>,
    ) -> Option<promo_codes::Model> {
        let p = promo_texts(t.lang);
        let checked = async {
            let Some(row) = promo::find(&self.db, code).await? else {
                return Ok(Err(Refusal::Unknown));
            };
            if let Some(refusal) = promo::offer_refusal(&row, tariff, None, Utc::now()) {
                return Ok(Err(refusal));
            }
            let user_id = store::user(&self.db, user).await?.map(|u| u.id);
            Ok::<_, sea_orm::DbErr>(match promo::limit_refusal(&self.db, &row, user_id).await? {
                Some(refusal) => Err(refusal),
                None => Ok(row),
            })
        };
        match checked.await {
            Ok(Ok(row)) => Some(row),
            Ok(Err(refusal)) => {
                tracing::info!(user, code, reason = refusal.as_str(), "promo code refused");
                let text = fill(p.refused, &[("reason", p.refusal(refusal))]);
                self.send(chat, text, Some(Self::back(t))).await;
                None
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the promo code");
                self.send(chat, t.payment_unavailable.to_owned(), Some(Self::back(t)))
                    .await;
                None
            }
        }
    }

    /// A customer's `/promo CODE`: the tariffs the code is good for, their buttons carrying
    /// the code.
    async fn apply_promo(&self, chat: i64, from: &User, t: &Texts, code: &str) {
        let p = promo_texts(t.lang);
        let Some(row) = self.usable_promo(chat, user_id(from), t, code, None).await else {
            return;
        };
        let Some(benefit) = Benefit::of(&row) else {
            return self
                .send(chat, t.payment_unavailable.to_owned(), Some(Self::back(t)))
                .await;
        };
        let tariffs = store::active_tariffs(&self.db, t.lang)
            .await
            .unwrap_or_default();
        let allowed = promo::list(&row.tariffs);
        let mut rows: Vec<_> = tariffs
            .iter()
            .filter(|local| allowed.is_empty() || allowed.contains(&local.tariff.code.as_str()))
            .filter_map(|local| {
                let data = format!("t:{}:{}", local.tariff.code, row.code);
                (data.len() <= 64).then(|| vec![button(local.title.clone(), data)])
            })
            .collect();
        if rows.is_empty() {
            let text = fill(p.refused, &[("reason", p.tariff)]);
            return self.send(chat, text, Some(Self::back(t))).await;
        }
        tracing::info!(user = user_id(from), code = %row.code, "promo code shown to a customer");
        let text = fill(
            p.applied,
            &[
                ("code", &row.code),
                ("benefit", &benefit_text(p, t.lang, benefit)),
            ],
        );
        rows.push(vec![button(t.btn_menu, "menu")]);
        self.send(chat, text, Some(keyboard(rows))).await;
    }
}

/// The template of a price with a code: `{price}`, `{list}`.
pub(super) fn price_text(t: &Texts) -> &'static str {
    promo_texts(t.lang).price
}

/// The tariff card's line for a code.
pub(super) fn card_line(t: &Texts, row: &promo_codes::Model) -> String {
    let p = promo_texts(t.lang);
    let benefit = Benefit::of(row)
        .map(|b| benefit_text(p, t.lang, b))
        .unwrap_or_default();
    fill(p.on_card, &[("code", &row.code), ("benefit", &benefit)])
}

/// The customer's message for a gateway refusal of the code (`422 promo_rejected`), if it is
/// one.
pub(super) fn refusal_of(t: &Texts, error: &GatewayError) -> Option<(String, &'static str)> {
    let GatewayError::Rejected {
        status: 422,
        message,
    } = error
    else {
        return None;
    };
    let body: Value = serde_json::from_str(message).ok()?;
    if body["error"] != "promo_rejected" {
        return None;
    }
    let refusal = Refusal::from_message(body["message"].as_str()?)?;
    let p = promo_texts(t.lang);
    let reason = p.refusal(refusal);
    Some((fill(p.refused, &[("reason", reason)]), reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_commands() {
        assert_eq!(admin_command("", 1), Some(Ok(AdminCommand::List)));
        assert_eq!(
            admin_command("off spring20", 1),
            Some(Ok(AdminCommand::Off("spring20".into())))
        );
        assert_eq!(admin_command("SPRING20", 1), None, "a code to apply");
        let Some(Ok(AdminCommand::New(body))) = admin_command(
            "new SPRING20 percent 20 uses=100 once from=2026-12-01 until=2027-01-31 tariffs=month_1,month_3 providers=yookassa",
            42,
        ) else {
            panic!("parsed");
        };
        assert_eq!(
            body,
            json!({"code": "SPRING20", "created_by": 42, "kind": "percent", "percent": 20,
                   "max_uses": 100, "once_per_user": true,
                   "starts_at": "2026-12-01T00:00:00Z", "ends_at": "2027-02-01T00:00:00Z",
                   "tariffs": ["month_1", "month_3"], "providers": ["yookassa"]})
        );
        let Some(Ok(AdminCommand::New(fixed))) = admin_command("new MINUS fixed 99.50 rub", 42)
        else {
            panic!("parsed");
        };
        assert_eq!(
            (&fixed["amount_minor"], &fixed["currency"]),
            (&json!(9950), &json!("RUB"))
        );
        let Some(Ok(AdminCommand::New(days))) = admin_command("new WEEK days 7", 42) else {
            panic!("parsed");
        };
        assert_eq!(days["days"], 7);
        for bad in [
            "new",
            "new X percent",
            "new X percent twenty",
            "new X fixed 100",
            "new X fixed 100 EUR",
            "new X fixed 1.999 RUB",
            "new X gift 5",
            "new X days 7 until=tomorrow",
            "new X days 7 color=red",
            "new X days 7 tariffs=",
            "off",
            "off A B",
        ] {
            assert!(matches!(admin_command(bad, 1), Some(Err(_))), "{bad:?}");
        }
    }

    #[test]
    fn every_refusal_has_a_text_in_both_languages() {
        for lang in [Lang::Ru, Lang::En] {
            let p = promo_texts(lang);
            for refusal in Refusal::ALL {
                assert!(!p.refusal(refusal).is_empty());
            }
        }
        let t = Lang::En.texts();
        let error = GatewayError::Rejected {
            status: 422,
            message:
                r#"{"error":"promo_rejected","message":"expired: the promo code has expired"}"#
                    .into(),
        };
        assert_eq!(refusal_of(t, &error).map(|r| r.1), Some(EN_EXPIRED));
        let other = GatewayError::Rejected {
            status: 422,
            message: r#"{"error":"unprocessable","message":"expired: x"}"#.into(),
        };
        assert_eq!(refusal_of(t, &other), None);
    }

    const EN_EXPIRED: &str = crate::texts::promo::EN.expired;
}
