//! The admins' analytics in the chat (admins only: `App` dispatches here for
//! `ADMIN_TELEGRAM_IDS`, everyone else gets the ordinary menu).
//!
//! - `/stats` — today, 7 and 30 days at a glance: counts, conversion, net revenue.
//! - `/admin` — the last 30 days in detail: totals, revenue and average check per currency,
//!   time to pay, new paying users versus renewals, a table per provider, and a chart of
//!   net revenue per day and provider ([`crate::chart`]) sent as a photo.
//!
//! The figures and their rules are `domain::analytics`; this module only words them.

use chrono::{DateTime, Utc};
use domain::Money;
use domain::analytics::{self, Figures, Period, Report, Timing};
use frankenstein::AsyncTelegramApi;
use frankenstein::ParseMode;
use frankenstein::client_reqwest::Bot as Api;
use frankenstein::methods::SendMessageParams;
use sea_orm::{DatabaseConnection, DbErr};

use crate::chart;
use crate::texts::admin::{self as admin_texts, AdminTexts};
use crate::texts::{self, Lang, fill};

/// The days of `/admin` and its chart.
pub const DAYS: u32 = 30;

/// Answers `/stats`.
pub async fn stats(api: &Api, db: &DatabaseConnection, chat: i64, lang: Lang) {
    let now = Utc::now();
    let reports = async {
        Ok::<_, DbErr>([
            analytics::report(db, Period::today(now), None).await?,
            analytics::report(db, Period::last_days(7, now), None).await?,
            analytics::report(db, Period::last_days(DAYS, now), None).await?,
        ])
    };
    match reports.await {
        Ok(reports) => send(api, chat, overview(admin_texts::texts(lang), &reports)).await,
        Err(error) => unavailable(api, chat, lang, &error).await,
    }
}

/// Answers `/admin`: the text, then the chart.
pub async fn admin(api: &Api, db: &DatabaseConnection, chat: i64, lang: Lang) {
    let period = Period::last_days(DAYS, Utc::now());
    let figures = async {
        Ok::<_, DbErr>((
            analytics::report(db, period, None).await?,
            analytics::daily_revenue(db, period).await?,
        ))
    };
    let (report, series) = match figures.await {
        Ok(figures) => figures,
        Err(error) => return unavailable(api, chat, lang, &error).await,
    };
    let t = admin_texts::texts(lang);
    send(api, chat, detail(t, lang.texts().admin_help, &report)).await;
    let Some(first) = period.from.map(|from| from.date_naive()) else {
        return;
    };
    match chart::daily_revenue(&series, first, DAYS) {
        Ok(png) => send_photo(api, chat, png, t.chart).await,
        Err(error) => tracing::error!(%error, "cannot draw the revenue chart"),
    }
}

async fn unavailable(api: &Api, chat: i64, lang: Lang, error: &DbErr) {
    tracing::error!(%error, "cannot compute the payment figures");
    send(api, chat, escape(lang.texts().payment_unavailable)).await;
}

/// The `/stats` text (HTML) of today's, the 7 days' and the 30 days' reports.
pub fn overview(t: &AdminTexts, [today, week, month]: &[Report; 3]) -> String {
    let mut lines = vec![escape(t.stats_title)];
    for (name, report) in [(t.today, today), (t.days_7, week), (t.days_30, month)] {
        let f = &report.total;
        lines.push(escape(&fill(
            t.stats_line,
            &[
                ("period", name),
                ("created", &f.counts.created.to_string()),
                ("succeeded", &f.counts.succeeded.to_string()),
                ("conversion", &percent(f)),
                ("refunded", &f.counts.refunded.to_string()),
                ("failed", &f.counts.failed.to_string()),
                ("pending", &f.counts.pending.to_string()),
            ],
        )));
        let revenue: Vec<String> = f
            .revenue
            .iter()
            .map(|r| texts::money(Money::new(r.net_minor, r.currency)))
            .collect();
        lines.push(escape(&if revenue.is_empty() {
            t.no_revenue.to_owned()
        } else {
            fill(t.stats_revenue, &[("revenue", &revenue.join(" · "))])
        }));
    }
    lines.join("\n")
}

/// The `/admin` text (HTML) of the 30 days' report, ending with `help`.
pub fn detail(t: &AdminTexts, help: &str, report: &Report) -> String {
    let f = &report.total;
    let from = report.period.from.map_or_else(String::new, day);
    let mut out = vec![
        escape(&fill(
            t.admin_title,
            &[("created", &f.counts.created.to_string()), ("from", &from)],
        )),
        escape(&fill(
            t.admin_summary,
            &[
                ("succeeded", &f.counts.succeeded.to_string()),
                ("conversion", &percent(f)),
                ("failed", &f.counts.failed.to_string()),
                ("refunded", &f.counts.refunded.to_string()),
                ("pending", &f.counts.pending.to_string()),
                ("new", &f.new_paying_users.to_string()),
                ("renewals", &f.renewals.to_string()),
                ("p50", &timing(t, f.processing, |p| p.p50_ms)),
                ("p95", &timing(t, f.processing, |p| p.p95_ms)),
            ],
        )),
    ];
    let r = &report.retention;
    let declines = if r.autopay_declines.is_empty() {
        "—".to_owned()
    } else {
        r.autopay_declines
            .iter()
            .map(|(reason, n)| format!("{reason} × {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push(escape(&fill(
        t.retention,
        &[
            ("charges", &r.autopay_charges.to_string()),
            ("succeeded", &r.autopay_succeeded.to_string()),
            ("success", &ratio(r.autopay_success)),
            ("declines", &declines),
            ("churned", &r.churned.to_string()),
            ("subscribers", &r.subscribers.to_string()),
            ("churn", &ratio(r.churn)),
        ],
    )));
    if !f.revenue.is_empty() {
        out.push(escape(t.revenue_header));
        for r in &f.revenue {
            let money = |minor| texts::money(Money::new(minor, r.currency));
            out.push(escape(&fill(
                t.revenue_line,
                &[
                    ("currency", r.currency.code()),
                    ("net", &money(r.net_minor)),
                    ("gross", &money(r.gross_minor)),
                    ("refunded", &money(r.refunded_minor)),
                    ("average", &money(r.average_check_minor)),
                ],
            )));
        }
    }
    if !report.providers.is_empty() {
        out.push(escape(t.by_provider));
        out.push(format!("<pre>{}</pre>", escape(&table(t, report))));
        for (name, p) in &report.providers {
            for r in &p.revenue {
                let money = |minor| texts::money(Money::new(minor, r.currency));
                out.push(escape(&fill(
                    t.provider_revenue,
                    &[
                        ("provider", name),
                        ("currency", r.currency.code()),
                        ("net", &money(r.net_minor)),
                        ("average", &money(r.average_check_minor)),
                    ],
                )));
            }
        }
    }
    out.push(String::new());
    out.push(escape(help));
    out.join("\n")
}

/// The per-provider table, in fixed-width columns.
fn table(t: &AdminTexts, report: &Report) -> String {
    let [provider, created, paid, conversion, p50, p95] = t.columns;
    let mut rows = vec![format!(
        "{provider:<9}{created:>5}{paid:>5}{conversion:>8}{p50:>8}{p95:>8}"
    )];
    for (name, f) in &report.providers {
        let name: String = name.chars().take(9).collect();
        rows.push(format!(
            "{name:<9}{:>5}{:>5}{:>8}{:>8}{:>8}",
            f.counts.created,
            f.counts.succeeded,
            f.conversion
                .percent()
                .map_or_else(|| "—".to_owned(), |p| format!("{p}%")),
            timing(t, f.processing, |p| p.p50_ms).replace(' ', ""),
            timing(t, f.processing, |p| p.p95_ms).replace(' ', ""),
        ));
    }
    rows.join("\n")
}

fn percent(f: &Figures) -> String {
    ratio(f.conversion)
}

/// `66.67 %`, or `—` for an empty ratio.
fn ratio(r: domain::analytics::Ratio) -> String {
    r.percent()
        .map_or_else(|| "—".to_owned(), |p| format!("{p} %"))
}

/// `850 ms`, `2.5 s` (tenths, rounded down); `—` without succeeded payments.
fn timing(t: &AdminTexts, timing: Option<Timing>, pick: fn(&Timing) -> i64) -> String {
    match timing.as_ref().map(pick) {
        None => "—".to_owned(),
        Some(ms) if ms < 1_000 => format!("{ms} {}", t.ms),
        Some(ms) => format!("{}.{} {}", ms / 1_000, ms % 1_000 / 100, t.s),
    }
}

fn day(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// Escapes text for Telegram's HTML parse mode.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn send(api: &Api, chat: i64, html: String) {
    let params = SendMessageParams::builder()
        .chat_id(chat)
        .text(html)
        .parse_mode(ParseMode::Html)
        .build();
    // Telegram allows a bot about 30 messages a second: wait for a slot (TELEGRAM_API_LIMIT).
    ratelimit::TELEGRAM.wait().await;
    if let Err(error) = api.send_message(&params).await {
        tracing::warn!(chat, %error, "sendMessage failed");
    }
}

/// Sends the chart with `sendPhoto` (a multipart upload, [`crate::qr::send_photo`]).
async fn send_photo(api: &Api, chat: i64, png: Vec<u8>, caption: &str) {
    if let Err(error) =
        crate::qr::send_photo(api, chat, &png, "revenue.png", Some(caption), None).await
    {
        tracing::warn!(chat, %error, "sendPhoto failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_escaping() {
        let t = &admin_texts::EN;
        let timing_of = |ms| {
            Some(Timing {
                count: 1,
                p50_ms: ms,
                p95_ms: ms,
            })
        };
        assert_eq!(timing(t, timing_of(850), |p| p.p50_ms), "850 ms");
        assert_eq!(timing(t, timing_of(2_590), |p| p.p50_ms), "2.5 s");
        assert_eq!(timing(t, timing_of(60_000), |p| p.p95_ms), "60.0 s");
        assert_eq!(timing(t, None, |p| p.p95_ms), "—");
        assert_eq!(escape("/refund <id> & co"), "/refund &lt;id&gt; &amp; co");
    }
}
