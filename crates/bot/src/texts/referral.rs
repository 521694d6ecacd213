//! The texts of referrals (`/start ref_<code>`, `/ref`, the bonus notices) and of the admin's
//! `/user` look-up, both languages side by side. Templates name their blanks (`{link}`),
//! filled by [`super::fill`].

use super::Lang;

#[derive(Debug)]
pub struct ReferralTexts {
    /// A new user came through a friend's link.
    pub welcome: &'static str,
    /// `/start ref_…` whose code is malformed or nobody's.
    pub bad_link: &'static str,
    /// The user opened their own link.
    pub own_link: &'static str,
    /// The user has paid before, or has a referrer already.
    pub not_new: &'static str,
    /// `/ref`: `{link}`, `{days}` (e.g. "7 days"), `{referred}`, `{rewarded}`.
    pub info: &'static str,
    /// `/ref` while `REFERRAL_BONUS_DAYS` is 0.
    pub off: &'static str,
    /// `/ref` could not be answered: `{reason}`.
    pub failed: &'static str,
    /// To the referrer, once the bonus is on the panel: `{days}`, `{expires}`, `{link}`.
    pub bonus_active: &'static str,
    /// To the referred user at the same time: `{days}`.
    pub friend_rewarded: &'static str,
    /// `/user` without a Telegram id or @username.
    pub user_usage: &'static str,
    /// `/user` for nobody we know: `{user}`.
    pub user_unknown: &'static str,
    /// `/user` could not be answered: `{reason}`.
    pub user_failed: &'static str,
    /// The look-up's lines.
    /// `{telegram_id}`, `{username}`, `{name}`, `{lang}`, `{since}`.
    pub user_title: &'static str,
    /// `{expires}`, `{state}` (active/expired), `{panel_user}`, `{synced}`.
    pub user_subscription: &'static str,
    pub user_no_subscription: &'static str,
    pub active: &'static str,
    pub expired: &'static str,
    pub never: &'static str,
    /// The panel is behind: `{error}`.
    pub user_sync_error: &'static str,
    /// `{shown}`, `{total}`.
    pub user_payments: &'static str,
    pub user_no_payments: &'static str,
    /// `{ledger}` entries.
    pub user_ledger: &'static str,
    pub user_no_ledger: &'static str,
    /// `{reminders}` (on/off), `{autopay}`.
    pub user_settings: &'static str,
    pub on: &'static str,
    pub off_word: &'static str,
    pub no_card: &'static str,
    /// A Stars subscription in the autopay part: `{date}`.
    pub stars_on: &'static str,
    pub stars_canceled: &'static str,
    /// `{referred_by}`, `{referred}`, `{rewarded}`, `{days}`.
    pub user_referrals: &'static str,
    pub nobody: &'static str,
    /// Said under the subscription line: what the expiry is.
    pub user_panel_note: &'static str,
    pub blocked: &'static str,
}

pub const RU: ReferralTexts = ReferralTexts {
    welcome: "🤝 Вы пришли по приглашению друга. Когда вы оплатите подписку, он получит бонусные дни.",
    bad_link: "Эта пригласительная ссылка недействительна — ничего страшного, вот меню.",
    own_link: "Это ваша собственная пригласительная ссылка: отправьте её друзьям.",
    not_new: "Пригласительные ссылки действуют только для новых пользователей — вы уже с нами.",
    info: "🤝 Приглашайте друзей: за первую оплату каждого приглашённого вы получите {days}.\n\nВаша ссылка:\n{link}\n\nПриглашено: {referred} · оплатили: {rewarded}",
    off: "Реферальная программа сейчас не действует.",
    failed: "Не удалось показать ссылку: {reason}. Попробуйте позже.",
    bonus_active: "🎁 Ваш друг оплатил подписку — вам начислено {days}. Подписка активна до {expires}.\n{link}",
    friend_rewarded: "🤝 Спасибо! Друг, который вас пригласил, получил {days} за вашу первую оплату.",
    user_usage: "Использование: /user <Telegram id или @username>",
    user_unknown: "Пользователь {user} не найден.",
    user_failed: "Не удалось найти пользователя: {reason}",
    user_title: "👤 {telegram_id} {username} {name} · язык {lang} · с {since}",
    user_subscription: "Подписка до {expires} ({state}), на панели: {panel_user}, синхронизация: {synced}",
    user_no_subscription: "Подписки нет.",
    active: "активна",
    expired: "истекла",
    never: "никогда",
    user_sync_error: "⚠️ Панель отстаёт: {error}",
    user_payments: "Платежи ({shown} из {total}):",
    user_no_payments: "Платежей нет.",
    user_ledger: "Журнал дней ({ledger}):",
    user_no_ledger: "Журнал дней пуст.",
    user_settings: "Напоминания: {reminders} · автопродление: {autopay}",
    on: "вкл",
    off_word: "выкл",
    no_card: "карта не сохранена",
    stars_on: "подписка Stars до {date}",
    stars_canceled: "подписка Stars отменена (до {date})",
    user_referrals: "Пригласил его: {referred_by} · он пригласил: {referred}, оплатили: {rewarded}, бонусов: {days}",
    nobody: "никто",
    user_panel_note: "(срок — по журналу; состояние панели — последняя синхронизация, панель не опрашивается)",
    blocked: "⛔ бот заблокирован пользователем",
};

pub const EN: ReferralTexts = ReferralTexts {
    welcome: "🤝 You came with a friend's invitation. When you pay for a subscription, they get bonus days.",
    bad_link: "This invitation link is not valid — never mind, here is the menu.",
    own_link: "This is your own invitation link: send it to your friends.",
    not_new: "Invitation links are for new users only — you are already with us.",
    info: "🤝 Invite friends: for each friend's first payment you get {days}.\n\nYour link:\n{link}\n\nInvited: {referred} · paid: {rewarded}",
    off: "The referral program is not running at the moment.",
    failed: "Cannot show your link: {reason}. Please try again later.",
    bonus_active: "🎁 Your friend paid for a subscription — you got {days}. Your subscription is active until {expires}.\n{link}",
    friend_rewarded: "🤝 Thank you! The friend who invited you got {days} for your first payment.",
    user_usage: "Usage: /user <Telegram id or @username>",
    user_unknown: "User {user} not found.",
    user_failed: "Cannot look the user up: {reason}",
    user_title: "👤 {telegram_id} {username} {name} · language {lang} · since {since}",
    user_subscription: "Subscription until {expires} ({state}), panel user {panel_user}, synced {synced}",
    user_no_subscription: "No subscription.",
    active: "active",
    expired: "expired",
    never: "never",
    user_sync_error: "⚠️ The panel is behind: {error}",
    user_payments: "Payments ({shown} of {total}):",
    user_no_payments: "No payments.",
    user_ledger: "Ledger ({ledger}):",
    user_no_ledger: "The ledger is empty.",
    user_settings: "Reminders: {reminders} · autopay: {autopay}",
    on: "on",
    off_word: "off",
    no_card: "no saved card",
    stars_on: "Stars subscription until {date}",
    stars_canceled: "Stars subscription canceled (until {date})",
    user_referrals: "Invited by: {referred_by} · invited: {referred}, paid: {rewarded}, bonus days: {days}",
    nobody: "nobody",
    user_panel_note: "(expiry from the ledger; panel state is the last sync, the panel is not queried)",
    blocked: "⛔ the user blocked the bot",
};

/// The referral and look-up texts of `lang`.
pub fn texts(lang: Lang) -> &'static ReferralTexts {
    match lang {
        Lang::Ru => &RU,
        Lang::En => &EN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::texts::fill;

    #[test]
    fn both_languages_fill_the_same_blanks() {
        for lang in [Lang::Ru, Lang::En] {
            let t = texts(lang);
            let info = fill(
                t.info,
                &[
                    ("link", "https://t.me/b?start=ref_abcdefgh"),
                    ("days", "7"),
                    ("referred", "2"),
                    ("rewarded", "1"),
                ],
            );
            let bonus = fill(
                t.bonus_active,
                &[
                    ("days", "7"),
                    ("expires", "2027-01-01"),
                    ("link", "https://x"),
                ],
            );
            for text in [info, bonus, fill(t.friend_rewarded, &[("days", "7")])] {
                assert!(!text.contains('{'), "{text}");
            }
        }
    }
}
