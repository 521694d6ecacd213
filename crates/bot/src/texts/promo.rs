//! The texts of promo codes (issue 23): a customer's `/promo CODE` and the admins' `/promo`,
//! both languages side by side. Templates name their blanks, filled by [`super::fill`].

use domain::promo::Refusal;

use super::Lang;

#[derive(Debug)]
pub struct PromoTexts {
    /// The tariff list's button that explains how to enter a code.
    pub btn_promo: &'static str,
    /// How a customer enters a code.
    pub ask: &'static str,
    /// The code works: `{code}`, `{benefit}`; the tariffs it is good for follow as buttons.
    pub applied: &'static str,
    /// `{percent}`.
    pub benefit_percent: &'static str,
    /// `{amount}`.
    pub benefit_fixed: &'static str,
    /// `{days}` (e.g. "7 days").
    pub benefit_days: &'static str,
    /// The tariff card's line with a code: `{code}`, `{benefit}`.
    pub on_card: &'static str,
    /// A payment button's price with a code: `{price}` (discounted), `{list}` (before).
    pub price: &'static str,
    /// `{reason}` (one of the refusals below).
    pub refused: &'static str,
    pub unknown: &'static str,
    pub disabled: &'static str,
    pub not_yet: &'static str,
    pub expired: &'static str,
    pub exhausted: &'static str,
    pub already_used: &'static str,
    pub tariff: &'static str,
    pub provider: &'static str,
    pub currency: &'static str,
    pub below_minimum: &'static str,
    /// Admins: the syntax.
    pub admin_usage: &'static str,
    /// Admins: a code made: `{code}`, `{benefit}`, `{limits}`.
    pub admin_created: &'static str,
    /// Admins: `{code}`.
    pub admin_disabled: &'static str,
    pub admin_none: &'static str,
    pub admin_list_title: &'static str,
    /// One code of the list: `{code}`, `{benefit}`, `{state}`, `{limits}`, `{uses}`,
    /// `{payments}`, `{paid}`, `{conversion}`, `{revenue}`.
    pub admin_line: &'static str,
    pub admin_active: &'static str,
    pub admin_off: &'static str,
    /// Limits: `{n}` uses in all.
    pub limit_uses: &'static str,
    pub limit_once: &'static str,
    /// `{date}`.
    pub limit_from: &'static str,
    /// `{date}` (the last day it works).
    pub limit_until: &'static str,
    /// `{list}`.
    pub limit_tariffs: &'static str,
    /// `{list}`.
    pub limit_providers: &'static str,
    pub no_limits: &'static str,
    /// `{reason}`: the gateway's message.
    pub admin_failed: &'static str,
    pub admin_exists: &'static str,
    /// `{code}`.
    pub admin_unknown: &'static str,
    pub admin_no_token: &'static str,
}

impl PromoTexts {
    /// The customer's sentence for `refusal`.
    pub fn refusal(&self, refusal: Refusal) -> &'static str {
        match refusal {
            Refusal::Unknown => self.unknown,
            Refusal::Disabled => self.disabled,
            Refusal::NotYet => self.not_yet,
            Refusal::Expired => self.expired,
            Refusal::Exhausted => self.exhausted,
            Refusal::AlreadyUsed => self.already_used,
            Refusal::Tariff => self.tariff,
            Refusal::Provider => self.provider,
            Refusal::Currency => self.currency,
            Refusal::BelowMinimum => self.below_minimum,
        }
    }
}

pub const RU: PromoTexts = PromoTexts {
    btn_promo: "🎟 Есть промокод?",
    ask: "Отправьте промокод командой:\n/promo КОД",
    applied: "🎟 Промокод {code}: {benefit}.\nВыберите тариф:",
    benefit_percent: "скидка {percent}%",
    benefit_fixed: "скидка {amount}",
    benefit_days: "+{days} к подписке",
    on_card: "🎟 Промокод {code}: {benefit}.",
    price: "{price} (вместо {list})",
    refused: "Промокод не применён: {reason}",
    unknown: "такого промокода нет.",
    disabled: "промокод отключён.",
    not_yet: "промокод ещё не действует.",
    expired: "срок действия промокода истёк.",
    exhausted: "промокод уже использован максимальное число раз.",
    already_used: "вы уже использовали этот промокод.",
    tariff: "промокод не действует для этого тарифа.",
    provider: "промокод не действует для этого способа оплаты.",
    currency: "скидка промокода в другой валюте — выберите другой способ оплаты.",
    below_minimum: "со скидкой сумма меньше минимального платежа.",
    admin_usage: "Промокоды:\n/promo — список со статистикой\n/promo new КОД percent 20 [параметры] — скидка в процентах (1–99)\n/promo new КОД fixed 100 RUB [параметры] — скидка суммой\n/promo new КОД days 7 [параметры] — дополнительные дни\n/promo off КОД — отключить\nПараметры: uses=100 (всего использований), once (один раз на покупателя), from=2026-12-01, until=2027-01-31 (включительно, UTC), tariffs=month_1,month_3, providers=yookassa,telegram",
    admin_created: "✅ Промокод {code} создан: {benefit}. {limits}",
    admin_disabled: "Промокод {code} отключён.",
    admin_none: "Промокодов пока нет.",
    admin_list_title: "🎟 Промокоды:",
    admin_line: "{code} — {benefit}, {state}. {limits}\n  использований {uses}, платежей {payments}, оплачено {paid} ({conversion}), выручка {revenue}",
    admin_active: "активен",
    admin_off: "отключён",
    limit_uses: "до {n} использований",
    limit_once: "один раз на покупателя",
    limit_from: "с {date}",
    limit_until: "по {date}",
    limit_tariffs: "тарифы: {list}",
    limit_providers: "оплата: {list}",
    no_limits: "Без ограничений.",
    admin_failed: "Не получилось: {reason}",
    admin_exists: "Такой промокод уже есть.",
    admin_unknown: "Промокода {code} нет.",
    admin_no_token: "Промокоды недоступны: не задан API_ADMIN_TOKEN.",
};

pub const EN: PromoTexts = PromoTexts {
    btn_promo: "🎟 Have a promo code?",
    ask: "Send your promo code as:\n/promo CODE",
    applied: "🎟 Promo code {code}: {benefit}.\nChoose a plan:",
    benefit_percent: "{percent}% off",
    benefit_fixed: "{amount} off",
    benefit_days: "+{days} to your subscription",
    on_card: "🎟 Promo code {code}: {benefit}.",
    price: "{price} (instead of {list})",
    refused: "The promo code was not applied: {reason}",
    unknown: "there is no such code.",
    disabled: "the code is disabled.",
    not_yet: "the code is not valid yet.",
    expired: "the code has expired.",
    exhausted: "the code has been used up.",
    already_used: "you have used this code already.",
    tariff: "the code is not valid for this plan.",
    provider: "the code is not valid for this payment method.",
    currency: "the code's discount is in another currency — choose another payment method.",
    below_minimum: "the discounted price would be below the smallest payment.",
    admin_usage: "Promo codes:\n/promo — list with numbers\n/promo new CODE percent 20 [options] — percent off (1–99)\n/promo new CODE fixed 100 RUB [options] — an amount off\n/promo new CODE days 7 [options] — extra days\n/promo off CODE — disable\nOptions: uses=100 (uses in all), once (once per customer), from=2026-12-01, until=2027-01-31 (inclusive, UTC), tariffs=month_1,month_3, providers=yookassa,telegram",
    admin_created: "✅ Promo code {code} created: {benefit}. {limits}",
    admin_disabled: "Promo code {code} disabled.",
    admin_none: "No promo codes yet.",
    admin_list_title: "🎟 Promo codes:",
    admin_line: "{code} — {benefit}, {state}. {limits}\n  uses {uses}, payments {payments}, paid {paid} ({conversion}), revenue {revenue}",
    admin_active: "active",
    admin_off: "disabled",
    limit_uses: "up to {n} uses",
    limit_once: "once per customer",
    limit_from: "from {date}",
    limit_until: "until {date}",
    limit_tariffs: "plans: {list}",
    limit_providers: "payment: {list}",
    no_limits: "No limits.",
    admin_failed: "Failed: {reason}",
    admin_exists: "This code exists already.",
    admin_unknown: "No promo code {code}.",
    admin_no_token: "Promo codes are off: API_ADMIN_TOKEN is not set.",
};

/// The promo texts of `lang`.
pub fn texts(lang: Lang) -> &'static PromoTexts {
    match lang {
        Lang::Ru => &RU,
        Lang::En => &EN,
    }
}
