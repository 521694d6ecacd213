//! Everything the bot says, one module per language. Russian is the default; users whose
//! Telegram language is English (`en`, `en-GB`, …) get English.
//!
//! Templates name their blanks (`{amount}`), filled by [`fill`]; both languages fill the
//! same struct, so a text missing in one language does not compile.

pub mod admin;
mod en;
pub mod promo;
pub mod referral;
mod ru;

use domain::money::{Currency, Money};
use sea_orm::sea_query::{Expr, ExprTrait, Func};

/// The user's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ru,
    En,
}

impl Lang {
    /// From Telegram's `language_code`; anything not English is Russian.
    pub fn from_code(code: Option<&str>) -> Self {
        match code {
            Some(code) if code.to_ascii_lowercase().starts_with("en") => Lang::En,
            _ => Lang::Ru,
        }
    }

    /// [`Lang::from_code`]'s rule as SQL, for a statement that picks the language as it reads
    /// `code` (a `language_code` column): true where the language is English.
    pub fn is_english_sql(code: Expr) -> Expr {
        Expr::expr(Func::lower(code)).like("en%")
    }

    /// The code of the language's rows in `tariff_texts`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ru => "ru",
            Lang::En => "en",
        }
    }

    pub fn texts(self) -> &'static Texts {
        match self {
            Lang::Ru => &ru::TEXTS,
            Lang::En => &en::TEXTS,
        }
    }
}

/// The texts of one language.
#[derive(Debug)]
pub struct Texts {
    /// The language these texts are in.
    pub lang: Lang,
    /// `{name}`.
    pub welcome: &'static str,
    pub btn_buy: &'static str,
    pub btn_subscription: &'static str,
    pub btn_help: &'static str,
    pub btn_menu: &'static str,
    pub help: &'static str,
    pub choose_tariff: &'static str,
    pub no_tariffs: &'static str,
    /// `{title}`, `{prices}`.
    pub tariff_button: &'static str,
    /// `{title}`, `{days}`, `{description}` (empty, or a line break and the tariff's
    /// description).
    pub choose_provider: &'static str,
    pub no_providers: &'static str,
    pub provider_yookassa: &'static str,
    pub provider_stars: &'static str,
    pub provider_telegram_card: &'static str,
    pub provider_crypto: &'static str,
    /// `{amount}`.
    pub pay_redirect: &'static str,
    pub btn_pay: &'static str,
    /// `{amount}`, `{address}`, `{network}`, `{expires}`.
    pub pay_transfer: &'static str,
    /// `{title}` (≤ 32 characters once filled).
    pub invoice_title: &'static str,
    /// `{days}`.
    pub invoice_description: &'static str,
    pub invoice_sent: &'static str,
    pub payment_busy: &'static str,
    pub payment_unavailable: &'static str,
    /// The customer holds as many open payments as the gateway allows.
    pub too_many_open_payments: &'static str,
    pub precheckout_unknown: &'static str,
    pub precheckout_not_pending: &'static str,
    pub precheckout_mismatch: &'static str,
    pub precheckout_expired: &'static str,
    pub precheckout_price_changed: &'static str,
    pub precheckout_unavailable: &'static str,
    pub payment_received: &'static str,
    /// `{amount}`.
    pub payment_completed: &'static str,
    /// `{reason}`.
    pub payment_failed: &'static str,
    /// `{amount}`.
    pub payment_refunded: &'static str,
    /// `{received}` (all so far), `{shortfall}`, `{expires}`.
    pub payment_underpaid: &'static str,
    /// Caption of the address's QR code at the crypto checkout: `{address}`.
    pub qr_address: &'static str,
    /// `{expires}`, `{link}`.
    pub subscription_activated: &'static str,
    /// `{expires}`.
    pub subscription_revoked: &'static str,
    pub btn_open_link: &'static str,
    pub no_subscription: &'static str,
    /// `{status}`, `{expires}`, `{link}`.
    pub subscription: &'static str,
    pub status_active: &'static str,
    pub status_expired: &'static str,
    pub admin_help: &'static str,
    pub refund_usage: &'static str,
    /// `{id}`.
    pub refund_not_found: &'static str,
    /// `{id}`, `{amount}`, `{provider}`, `{status}`, `{user}`.
    pub refund_confirm: &'static str,
    pub btn_refund_yes: &'static str,
    pub btn_refund_no: &'static str,
    pub refund_cancelled: &'static str,
    /// `{id}`, `{status}`.
    pub refund_done: &'static str,
    /// A card payment inside Telegram: recorded, access revoked, the money is the admin's to
    /// return in the payment provider's cabinet. `{id}`, `{amount}`.
    pub refund_outside: &'static str,
    /// `{reason}`.
    pub refund_failed: &'static str,
    pub refund_disabled: &'static str,
    /// `/grant` without a Telegram id, a whole number of days in range and a reason: `{max}`.
    pub grant_usage: &'static str,
    /// `{days}` (e.g. "7 days"), `{user}`, `{id}`.
    pub grant_done: &'static str,
    /// The same `/grant` again: nothing granted twice. `{id}`.
    pub grant_repeated: &'static str,
    /// `{user}`.
    pub grant_unknown_user: &'static str,
    /// `{reason}`.
    pub grant_failed: &'static str,
    pub grant_disabled: &'static str,
    pub btn_news_off: &'static str,
    pub btn_news_on: &'static str,
    pub news_are_on: &'static str,
    pub news_are_off: &'static str,
    /// `{segments}`.
    pub broadcast_usage: &'static str,
    /// `{reason}`.
    pub broadcast_refused: &'static str,
    /// `{segment}`, `{recipients}`, `{opted_out}`.
    pub broadcast_preview: &'static str,
    pub btn_broadcast_send: &'static str,
    pub btn_broadcast_cancel: &'static str,
    /// `{id}`.
    pub broadcast_confirmed: &'static str,
    /// `{id}`.
    pub broadcast_canceled: &'static str,
    /// `{id}`, `{status}`.
    pub broadcast_not_draft: &'static str,
    pub broadcast_list: &'static str,
    /// `{id}`, `{segment}`, `{status}`, `{sent}`, `{recipients}`, `{blocked}`, `{failed}`, `{pending}`.
    pub broadcast_line: &'static str,
    /// `{id}`, `{segment}`, `{sent}`, `{blocked}`, `{failed}`, `{skipped}`, `{opted_out}`.
    pub broadcast_report: &'static str,
    /// The main menu's trial button: `{days}` (e.g. "3 days").
    pub btn_trial: &'static str,
    /// The trial was granted and is being set up: `{days}`.
    pub trial_started: &'static str,
    /// The trial is on the panel: `{days}`, `{expires}`, `{link}`.
    pub trial_active: &'static str,
    /// A second press: the trial was had.
    pub trial_taken: &'static str,
    /// The user has paid before or has a subscription.
    pub trial_not_eligible: &'static str,
    /// marzban-sync refused the trial (`grant.refused`): the panel already has the user, a
    /// customer from before this bot.
    pub trial_existing_account: &'static str,
    /// `TRIAL_DAYS` is 0.
    pub trial_off: &'static str,
    /// The gateway did not answer: `{reason}`.
    pub trial_failed: &'static str,
    /// Over the per-user rate limit: `{secs}`.
    pub rate_limited: &'static str,
    /// An expiry reminder before the expiry: `{left}` (e.g. "3 days"), `{expires}`.
    pub reminder_before: &'static str,
    /// On the day of the expiry: `{expires}`.
    pub reminder_today: &'static str,
    /// After the expiry: `{expires}`.
    pub reminder_after: &'static str,
    /// Renew with the last paid plan and method: `{title}`.
    pub btn_renew_tariff: &'static str,
    pub btn_renew: &'static str,
    pub btn_other_tariff: &'static str,
    pub btn_reminders_off: &'static str,
    pub btn_reminders_on: &'static str,
    /// A line of "My subscription".
    pub reminders_are_on: &'static str,
    pub reminders_are_off: &'static str,
    /// The provider button of a monthly Stars subscription (a 30-day tariff with a Stars
    /// price), before its price.
    pub provider_stars_subscription: &'static str,
    /// The subscription invoice link's message: `{title}`, `{amount}`.
    pub pay_subscription: &'static str,
    pub btn_subscribe: &'static str,
    /// Lines of "My subscription" about a Stars subscription: `{date}`.
    pub star_subscription_on: &'static str,
    pub star_subscription_canceled: &'static str,
    pub btn_star_cancel: &'static str,
    pub btn_star_resume: &'static str,
    /// The checkout button of a card saved for automatic renewal, before its price.
    pub provider_autopay: &'static str,
    /// Lines of "My subscription" about the saved card: `{card}`; a decline's `{reason}`.
    pub autopay_on: &'static str,
    pub autopay_off: &'static str,
    pub autopay_declined: &'static str,
    pub btn_autopay_on: &'static str,
    pub btn_autopay_off: &'static str,
    pub btn_card_remove: &'static str,
    /// An automatic renewal was declined: `{reason}`.
    pub autopay_failed: &'static str,
}

/// Replaces each `{name}` of `template` with its value.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// `199.00 ₽`, `150 ⭐`, `2.500000 USDT`.
pub fn money(amount: Money) -> String {
    let symbol = match amount.currency() {
        Currency::Rub => "₽",
        Currency::Xtr => "⭐",
        Currency::Usdt => "USDT",
    };
    format!("{} {symbol}", amount.to_decimal_string())
}

/// `3 days`, `1 день`, `3 дня`, `5 дней`.
pub fn days(lang: Lang, n: i64) -> String {
    let word = match lang {
        Lang::En if n == 1 => "day",
        Lang::En => "days",
        Lang::Ru => match (n % 10, n % 100) {
            (1, r) if r != 11 => "день",
            (2..=4, r) if !(12..=14).contains(&r) => "дня",
            _ => "дней",
        },
    };
    format!("{n} {word}")
}

/// `2026-12-29 10:00 UTC`.
pub fn date(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_from_telegram() {
        assert_eq!(Lang::from_code(Some("en")), Lang::En);
        assert_eq!(Lang::from_code(Some("en-GB")), Lang::En);
        assert_eq!(Lang::from_code(Some("ru")), Lang::Ru);
        assert_eq!(Lang::from_code(Some("de")), Lang::Ru);
        assert_eq!(Lang::from_code(None), Lang::Ru);
    }

    #[test]
    fn blanks_are_filled() {
        for lang in [Lang::Ru, Lang::En] {
            let t = lang.texts();
            let text = fill(
                t.subscription_activated,
                &[("expires", "2027-01-01"), ("link", "https://x/sub")],
            );
            assert!(
                text.contains("2027-01-01") && text.contains("https://x/sub"),
                "{text}"
            );
            assert!(!text.contains('{'), "{text}");
        }
        for lang in [Lang::Ru, Lang::En] {
            let text = fill(
                lang.texts().payment_underpaid,
                &[
                    ("received", &money(Money::new(1_500_000, Currency::Usdt))),
                    ("shortfall", &money(Money::new(1_000_417, Currency::Usdt))),
                    ("expires", "2027-01-01 10:30 UTC"),
                ],
            );
            assert!(
                text.contains("1.500000 USDT")
                    && text.contains("1.000417 USDT")
                    && text.contains("2027-01-01 10:30 UTC"),
                "{text}"
            );
            assert!(!text.contains('{'), "{text}");
        }
        assert_eq!(money(Money::new(19900, Currency::Rub)), "199.00 ₽");
        assert_eq!(money(Money::new(150, Currency::Xtr)), "150 ⭐");
    }

    #[test]
    fn days_in_both_languages() {
        assert_eq!(days(Lang::En, 1), "1 day");
        assert_eq!(days(Lang::En, 3), "3 days");
        assert_eq!(days(Lang::Ru, 1), "1 день");
        assert_eq!(days(Lang::Ru, 3), "3 дня");
        assert_eq!(days(Lang::Ru, 5), "5 дней");
        assert_eq!(days(Lang::Ru, 11), "11 дней");
        assert_eq!(days(Lang::Ru, 21), "21 день");
    }
}
