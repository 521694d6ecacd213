//! Localised tariffs (issue 23): titles and descriptions from the tariffs file in the user's
//! language, Russian by default; a file without translations shows its title to everyone.

use sandbox::telegram::{SentMessage, TestUser};
use serde_json::Value;

use crate::helpers::{World, world};

/// /start → Buy: the tariff list, then the tariff `code`'s providers message.
async fn menus(w: &World, user: &TestUser, code: &str) -> (SentMessage, SentMessage) {
    let providers = w
        .providers_menu(user, code, &format!("p:{code}:telegram:XTR"))
        .await;
    let list =
        w.tg.messages(user.id)
            .into_iter()
            .rev()
            .find(|m| m.callback_data().contains(&format!("t:{code}")))
            .expect("the tariff list");
    (list, providers)
}

/// The texts of the message's inline buttons, one a line.
fn buttons(message: &SentMessage) -> String {
    let rows = message
        .reply_markup
        .as_ref()
        .and_then(|markup| markup.get("inline_keyboard"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    rows.iter()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|button| button.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What one user should see of one tariff.
struct Seen {
    user: TestUser,
    code: &'static str,
    button: &'static str,
    title: &'static str,
    description: &'static str,
    invoice: &'static str,
    /// A word of the other language, never shown to this user.
    foreign: &'static str,
}

#[tokio::test]
async fn tariffs_speak_the_users_language() {
    let w = world().await;
    let cases = [
        Seen {
            user: TestUser::new(5_230_001, "Анна", "ru"),
            code: "month_1",
            button: "1 месяц — 199.00 ₽",
            title: "«1 месяц»",
            description: "30 дней VPN без ограничений трафика.",
            invoice: "VPN: 1 месяц",
            foreign: "month",
        },
        Seen {
            user: TestUser::new(5_230_002, "Bob", "en-GB"),
            code: "month_3",
            button: "3 months — 549.00 ₽",
            title: "“3 months”",
            description: "90 days of VPN, unlimited traffic.",
            invoice: "VPN: 3 months",
            foreign: "месяц",
        },
    ];
    for seen in cases {
        let (list, providers) = menus(&w, &seen.user, seen.code).await;
        let labels = buttons(&list);
        assert!(labels.contains(seen.button), "{labels}");
        assert!(labels.contains("12 "), "every tariff is listed: {labels}");
        assert!(!labels.contains(seen.foreign), "{labels}");
        let text = providers.text.clone().unwrap_or_default();
        assert!(text.contains(seen.title), "{text}");
        assert!(text.contains(seen.description), "{text}");
        let (invoice, _) = w.checkout(&seen.user, seen.code, "telegram", "XTR").await;
        assert_eq!(invoice.invoice.expect("invoice").title, seen.invoice);
    }
}

#[tokio::test]
async fn a_tariffs_file_without_translations_keeps_working() {
    let w = world().await;
    // The gateway stored the default file's translations; a file without any replaces them.
    let plain = "[[tariff]]\ncode = \"month_1\"\ntitle = \"Month\"\nduration_days = 30\n\
                 price_xtr = \"150\"\n";
    let list = api_gateway::tariffs::parse(plain).expect("a plain file parses");
    api_gateway::tariffs::upsert(&w.db.conn, &list)
        .await
        .expect("upsert");

    for user in [
        TestUser::new(5_230_003, "Вера", "ru"),
        TestUser::new(5_230_004, "Eve", "en"),
    ] {
        let (list, providers) = menus(&w, &user, "month_1").await;
        let labels = buttons(&list);
        assert!(labels.contains("Month — 150 ⭐"), "{labels}");
        // The other tariffs of the default file are deactivated, their texts unused.
        assert!(
            !list.callback_data().contains(&"t:month_3".to_owned()) && !labels.contains("1 month"),
            "{list:#?}"
        );
        let text = providers.text.unwrap_or_default();
        assert!(text.contains("Month") && !text.contains("VPN"), "{text}");
    }
}
