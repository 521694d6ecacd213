//! Helpers shared by the panel client tests: fixtures, a raw request and the scenarios every
//! panel plays the same.
#![allow(dead_code)]

use chrono::Utc;
use marzban_sync::panel::{self, Desired, MarzbanUsername, Panel, PanelError};
use sandbox::marzban::Fault;
use sandbox::panel_kit::{Handle, PanelState};
use serde_json::Value;

pub const GIB: i64 = 1 << 30;

pub fn name(s: &str) -> MarzbanUsername {
    MarzbanUsername::parse(s).unwrap()
}

/// `actual` is `expected` give or take the second the test's clock may have moved on.
pub fn assert_near(actual: Option<i64>, expected: i64) {
    let actual = actual.expect("an expiry");
    assert!((actual - expected).abs() <= 2, "{actual} != {expected}");
}

pub fn in_days(days: i64) -> i64 {
    Utc::now().timestamp() + days * 86_400
}

/// `username` paid until `expire`, with a 10 GiB limit.
pub fn desired(username: &str, expire: i64) -> Desired {
    Desired {
        username: name(username),
        expire,
        data_limit: Some(10 * GIB),
    }
}

/// A raw call to the emulator at `base_url`, with the credentials `authorize` adds, for what
/// our client never sends: the status and the JSON answer (`null` when there is none).
pub async fn raw_call(
    base_url: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    authorize: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> (u16, Value) {
    let mut request =
        authorize(reqwest::Client::new().request(method, format!("{base_url}{path}")));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A 500, an outage and a create applied before its 500 are retried errors that say what
/// happened; the retry of the create sends the same absolute state.
pub async fn bad_answers_are_clear_retried_errors<S: PanelState>(
    emu: &Handle<S>,
    client: &impl Panel,
    create_route: &str,
) {
    emu.gate().push_fault(Fault::InternalError, 1);
    let error = client.get_user(&name("tg_1")).await.unwrap_err();
    assert!(
        matches!(
            error,
            PanelError::Unavailable {
                status: Some(500),
                ..
            }
        ),
        "{error:?}"
    );
    emu.gate().set_down(true);
    let error = client.get_user(&name("tg_1")).await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("502 Bad Gateway"), "{error}");
    emu.gate().set_down(false);

    // Applied, then a 500: the retry sends the same absolute state.
    emu.gate()
        .push_fault_on(create_route, Fault::InternalErrorAfterProcessing, 1);
    let d = desired("tg_5", in_days(30));
    assert!(
        panel::activate(client, &d, false, "n")
            .await
            .unwrap_err()
            .is_retryable()
    );
    let user = panel::activate(client, &d, false, "n").await.unwrap();
    assert_eq!(user.expire, Some(d.expire));
    assert_eq!(emu.users().len(), 1);
}
