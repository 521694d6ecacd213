//! `/stats` and `/admin` after a real Stars purchase: the figures in the text and the chart
//! as a photo (a PNG of the expected size); others get neither.

use sandbox::telegram::{PhotoSent, TestUser};

use crate::helpers::{ADMIN_ID, world};

#[tokio::test]
async fn admins_get_the_figures_and_the_chart() {
    let w = world().await;
    let buyer = TestUser::new(5_000_020, "Gus", "en");
    let admin = TestUser::new(ADMIN_ID, "Root", "en");
    w.buy_with_stars(&buyer).await;

    let sent = w.tg.send_text(&admin, "/stats");
    let stats = w.wait_new(admin.id, sent, |_| true).await;
    let text = stats.text.unwrap_or_default();
    for line in [
        "Today: 1 created, 1 paid (100.00 %), 0 refunded, 0 failed, 0 pending",
        "7 days: 1 created, 1 paid (100.00 %), 0 refunded, 0 failed, 0 pending",
        "30 days: 1 created, 1 paid (100.00 %), 0 refunded, 0 failed, 0 pending",
        "  revenue 150 ⭐",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }

    // Someone else's /admin: the ordinary menu, no figures, no chart.
    let photos = w.tg.calls("sendPhoto");
    let sent = w.tg.send_text(&buyer, "/admin");
    // The payment's notification comes through the sending queue and may arrive after the
    // command: the answer is the message with a keyboard.
    let menu = w
        .wait_new(buyer.id, sent, |m| m.reply_markup.is_some())
        .await;
    assert!(menu.callback_data().contains(&"buy".into()), "{menu:?}");

    let sent = w.tg.send_text(&admin, "/admin");
    let detail = w
        .wait_new(admin.id, sent, |m| m.method == "sendMessage")
        .await;
    let text = detail.text.unwrap_or_default();
    for line in [
        "Payments: 1 in 30 days",
        "Paid 1 (100.00 %) · failed 0 · refunded 0 · pending 0",
        "New paying users 1 · renewals 0",
        "Auto-renewal: 0 charges, 0 paid (—), declines: —",
        "  XTR: 150 ⭐ = 150 ⭐ − 0 ⭐ (average check 150 ⭐)",
        "<pre>provider  made paid    conv     p50     p95\ntelegram     1    1 100.00%",
        "  telegram XTR: 150 ⭐ (average check 150 ⭐)",
        "/refund &lt;payment id&gt;",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    let chart = w
        .wait_new(admin.id, detail.message_id, |m| m.method == "sendPhoto")
        .await;
    assert_eq!(
        w.tg.calls("sendPhoto"),
        photos + 1,
        "one chart, the admin's"
    );
    assert!(chart.caption.unwrap_or_default().contains("30 days"));
    let Some(PhotoSent::Upload { data, .. }) = chart.photo else {
        panic!("the chart is uploaded: {:?}", chart.photo);
    };
    let reader = png::Decoder::new(std::io::Cursor::new(data))
        .read_info()
        .expect("a PNG");
    let info = reader.info();
    assert_eq!(
        (info.width, info.height),
        (bot::chart::WIDTH, bot::chart::HEIGHT)
    );
}
