//! The texts of the admin commands `/stats` and `/admin`, both languages side by side.
//! Templates name their blanks (`{created}`), filled by [`super::fill`].

use super::Lang;

#[derive(Debug)]
pub struct AdminTexts {
    pub stats_title: &'static str,
    pub today: &'static str,
    pub days_7: &'static str,
    pub days_30: &'static str,
    /// `{period}`, `{created}`, `{succeeded}`, `{conversion}`, `{refunded}`, `{failed}`, `{pending}`.
    pub stats_line: &'static str,
    /// `{revenue}`.
    pub stats_revenue: &'static str,
    pub no_revenue: &'static str,
    /// `{created}`, `{from}`.
    pub admin_title: &'static str,
    /// `{succeeded}`, `{conversion}`, `{failed}`, `{refunded}`, `{pending}`, `{new}`,
    /// `{renewals}`, `{p50}`, `{p95}`.
    pub admin_summary: &'static str,
    pub revenue_header: &'static str,
    /// `{currency}`, `{net}`, `{gross}`, `{refunded}`, `{average}`.
    pub revenue_line: &'static str,
    pub by_provider: &'static str,
    /// The provider table's column names: provider, created, paid, conversion, p50, p95.
    pub columns: [&'static str; 6],
    /// `{provider}`, `{currency}`, `{net}`, `{average}`.
    pub provider_revenue: &'static str,
    /// `{charges}`, `{succeeded}`, `{success}`, `{declines}` (reason × count, or `—`),
    /// `{churned}`, `{subscribers}`, `{churn}`.
    pub retention: &'static str,
    /// The chart's caption.
    pub chart: &'static str,
    pub ms: &'static str,
    pub s: &'static str,
}

pub const RU: AdminTexts = AdminTexts {
    stats_title: "📊 Платежи (UTC)",
    today: "Сегодня",
    days_7: "7 дней",
    days_30: "30 дней",
    stats_line: "{period}: создано {created}, оплачено {succeeded} ({conversion}), с возвратом {refunded}, неудачных {failed}, в ожидании {pending}",
    stats_revenue: "  выручка {revenue}",
    no_revenue: "  выручки нет",
    admin_title: "📊 Платежи: {created} за 30 дней (с {from} UTC)",
    admin_summary: "Оплачено {succeeded} ({conversion}) · неудачных {failed} · с возвратом {refunded} · в ожидании {pending}\nНовых плательщиков {new} · продлений {renewals}\nВремя до оплаты: p50 {p50} · p95 {p95}",
    revenue_header: "Выручка за вычетом возвратов (средний чек):",
    revenue_line: "  {currency}: {net} = {gross} − {refunded} (средний чек {average})",
    by_provider: "По способам оплаты:",
    columns: ["способ", "созд", "опл", "конв", "p50", "p95"],
    provider_revenue: "  {provider} {currency}: {net} (средний чек {average})",
    retention: "Автопродление: списаний {charges}, успешно {succeeded} ({success}), отказы: {declines}\nОтток: {churned} из {subscribers} подписчиков ({churn}) не продлили за 7 дней",
    chart: "Выручка по дням и способам оплаты за 30 дней (UTC)",
    ms: "мс",
    s: "с",
};

pub const EN: AdminTexts = AdminTexts {
    stats_title: "📊 Payments (UTC)",
    today: "Today",
    days_7: "7 days",
    days_30: "30 days",
    stats_line: "{period}: {created} created, {succeeded} paid ({conversion}), {refunded} refunded, {failed} failed, {pending} pending",
    stats_revenue: "  revenue {revenue}",
    no_revenue: "  no revenue",
    admin_title: "📊 Payments: {created} in 30 days (from {from} UTC)",
    admin_summary: "Paid {succeeded} ({conversion}) · failed {failed} · refunded {refunded} · pending {pending}\nNew paying users {new} · renewals {renewals}\nTime to pay: p50 {p50} · p95 {p95}",
    revenue_header: "Revenue net of refunds (average check):",
    revenue_line: "  {currency}: {net} = {gross} − {refunded} (average check {average})",
    by_provider: "By provider:",
    columns: ["provider", "made", "paid", "conv", "p50", "p95"],
    provider_revenue: "  {provider} {currency}: {net} (average check {average})",
    retention: "Auto-renewal: {charges} charges, {succeeded} paid ({success}), declines: {declines}\nChurn: {churned} of {subscribers} subscribers ({churn}) did not renew within 7 days",
    chart: "Net revenue per day and provider, last 30 days (UTC)",
    ms: "ms",
    s: "s",
};

/// The admin texts of `lang`.
pub fn texts(lang: Lang) -> &'static AdminTexts {
    match lang {
        Lang::Ru => &RU,
        Lang::En => &EN,
    }
}
