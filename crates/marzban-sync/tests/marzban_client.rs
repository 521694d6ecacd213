//! `MarzbanClient` against the sandbox's Marzban emulator, over real HTTP on loopback.

use std::time::Duration;

use marzban_sync::marzban::{
    CreateUser, MarzbanClient, MarzbanError, MarzbanSettings, MarzbanUsername, ModifyStatus,
    ModifyUser, UserStatus,
};
use sandbox::marzban::{self as emulator, Fault, Handle, route};
use secrecy::SecretString;
use serde_json::json;

const GIB: i64 = 1 << 30;

async fn spawn() -> Handle {
    emulator::spawn(emulator::Config::default()).await.unwrap()
}

fn settings(emu: &Handle) -> MarzbanSettings {
    let mut settings = MarzbanSettings::new(
        emu.base_url.clone(),
        "admin",
        SecretString::from("admin-password"),
    );
    settings.timeout = Duration::from_secs(2);
    settings.proxies = [("vless".to_owned(), json!({"flow": "xtls-rprx-vision"}))].into();
    settings.inbounds = [("vless".to_owned(), vec!["VLESS TCP REALITY".to_owned()])].into();
    settings
}

fn client(emu: &Handle) -> MarzbanClient {
    MarzbanClient::new(settings(emu)).unwrap()
}

fn name(s: &str) -> MarzbanUsername {
    MarzbanUsername::parse(s).unwrap()
}

fn in_days(days: i64) -> i64 {
    unix_now() + days * 86_400
}

fn unix_now() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since_epoch.as_secs()).unwrap()
}

fn new_user(username: &str) -> CreateUser {
    CreateUser {
        username: name(username),
        expire: in_days(30),
        data_limit: Some(10 * GIB),
        note: Some("payment 1".to_owned()),
    }
}

#[tokio::test]
async fn create_get_and_extend_keep_the_customers_key() {
    let emu = spawn().await;
    let client = client(&emu);

    let created = client.create_user(&new_user("tg_100")).await.unwrap();
    assert_eq!(created.username, "tg_100");
    assert_eq!(created.status, UserStatus::Active);
    assert_eq!(created.data_limit, Some(10 * GIB));
    assert_eq!(created.inbounds["vless"], vec!["VLESS TCP REALITY"]);
    assert_eq!(created.links.len(), 1);
    let key = created.vless_id().unwrap().to_owned();
    assert_eq!(emu.vless_id("tg_100").as_deref(), Some(key.as_str()));

    let fetched = client.get_user(&name("tg_100")).await.unwrap().unwrap();
    assert_eq!(fetched.expire, created.expire);

    let extended_to = in_days(60);
    let change = ModifyUser {
        expire: extended_to,
        data_limit: None,
        status: None,
    };
    let modified = client.modify_user(&name("tg_100"), &change).await.unwrap();
    assert_eq!(modified.expire, Some(extended_to));
    assert_eq!(modified.data_limit, None, "None = unlimited, sent as 0");
    assert_eq!(modified.vless_id(), Some(key.as_str()));
    assert_eq!(emu.vless_id("tg_100").as_deref(), Some(key.as_str()));

    // What went over the wire: create with proxies + inbounds, modify with neither.
    let create = emu.requests_to(route::CREATE_USER)[0].body.clone().unwrap();
    assert_eq!(
        create["proxies"],
        json!({"vless": {"flow": "xtls-rprx-vision"}})
    );
    assert_eq!(create["inbounds"], json!({"vless": ["VLESS TCP REALITY"]}));
    assert_eq!(create["data_limit"], 10 * GIB);
    let modify = emu.requests_to(route::MODIFY_USER)[0].body.clone().unwrap();
    assert_eq!(modify, json!({"expire": extended_to, "data_limit": 0}));
    assert_eq!(
        emu.count(route::TOKEN),
        1,
        "one login, then the cached token"
    );

    let url = client.subscription_url(&modified);
    assert!(url.starts_with(&format!("{}/sub/", emu.base_url)), "{url}");
}

#[tokio::test]
async fn duplicate_create_is_a_conflict() {
    let emu = spawn().await;
    let client = client(&emu);
    client.create_user(&new_user("tg_101")).await.unwrap();
    let error = client.create_user(&new_user("tg_101")).await.unwrap_err();
    assert!(
        matches!(&error, MarzbanError::Conflict { detail } if detail == "User already exists"),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert_eq!(emu.users().len(), 1);
}

#[tokio::test]
async fn a_missing_user_is_none_and_delete_reports_not_found() {
    let emu = spawn().await;
    let client = client(&emu);
    assert!(client.get_user(&name("tg_nobody")).await.unwrap().is_none());

    client.create_user(&new_user("tg_102")).await.unwrap();
    client.delete_user(&name("tg_102")).await.unwrap();
    assert!(client.get_user(&name("tg_102")).await.unwrap().is_none());
    let error = client.delete_user(&name("tg_102")).await.unwrap_err();
    assert!(matches!(error, MarzbanError::NotFound { .. }), "{error:?}");
}

#[tokio::test]
async fn validation_errors_become_a_field_map() {
    let emu = spawn().await;
    let mut settings = settings(&emu);
    settings.inbounds = [("vless".to_owned(), vec!["No Such Inbound".to_owned()])].into();
    let client = MarzbanClient::new(settings).unwrap();

    let error = client.create_user(&new_user("tg_103")).await.unwrap_err();
    let MarzbanError::Validation { fields } = error else {
        panic!("expected Validation, got {error:?}");
    };
    assert_eq!(
        fields.get("inbounds").map(String::as_str),
        Some("Value error, Inbound No Such Inbound doesn't exist")
    );
}

#[tokio::test]
async fn other_4xx_are_rejected_with_the_detail() {
    let emu = spawn().await;
    let mut settings = settings(&emu);
    settings.proxies = [("trojan".to_owned(), json!({}))].into();
    settings.inbounds = Default::default();
    let client = MarzbanClient::new(settings).unwrap();

    let error = client.create_user(&new_user("tg_104")).await.unwrap_err();
    assert!(
        matches!(&error, MarzbanError::Rejected { status: 400, detail }
            if detail == "Protocol trojan is disabled on your server"),
        "{error:?}"
    );
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized() {
    let emu = spawn().await;
    let mut settings = settings(&emu);
    settings.password = SecretString::from("wrong");
    let client = MarzbanClient::new(settings).unwrap();
    let error = client.get_user(&name("tg_105")).await.unwrap_err();
    assert!(
        matches!(error, MarzbanError::Unauthorized { .. }),
        "{error:?}"
    );
    assert_eq!(emu.count(route::TOKEN), 1);
    assert_eq!(emu.count(route::GET_USER), 0);
}

#[tokio::test]
async fn a_refused_token_is_renewed_once_and_the_call_retried() {
    let emu = spawn().await;
    let client = client(&emu);
    client.create_user(&new_user("tg_106")).await.unwrap();
    assert_eq!(emu.count(route::TOKEN), 1);

    emu.revoke_tokens();
    let user = client.get_user(&name("tg_106")).await.unwrap();
    assert!(user.is_some());
    assert_eq!(emu.count(route::TOKEN), 2, "exactly one extra login");
    let gets = emu.requests_to(route::GET_USER);
    let statuses: Vec<_> = gets.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Some(401), Some(200)]);

    // Callers that meet the 401 together share one new login.
    emu.revoke_tokens();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let client = client.clone();
        calls.spawn(async move { client.get_user(&name("tg_106")).await });
    }
    for result in calls.join_all().await {
        assert!(result.unwrap().is_some());
    }
    assert_eq!(emu.count(route::TOKEN), 3);
}

#[tokio::test]
async fn server_errors_and_outages_are_unavailable_and_retryable() {
    let emu = spawn().await;
    let client = client(&emu);
    client.create_user(&new_user("tg_107")).await.unwrap();

    emu.push_fault(Fault::InternalError, 1);
    let error = client.get_user(&name("tg_107")).await.unwrap_err();
    assert!(
        matches!(
            error,
            MarzbanError::Unavailable {
                status: Some(500),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert!(client.get_user(&name("tg_107")).await.unwrap().is_some());

    emu.set_down(true);
    let error = client.get_user(&name("tg_107")).await.unwrap_err();
    assert!(
        matches!(
            error,
            MarzbanError::Unavailable {
                status: Some(502),
                ..
            }
        ),
        "{error:?}"
    );
    emu.set_down(false);

    emu.disconnect().await;
    let error = client.get_user(&name("tg_107")).await.unwrap_err();
    assert!(
        matches!(error, MarzbanError::Unavailable { status: None, .. }),
        "{error:?}"
    );
    emu.reconnect().await.unwrap();
    assert!(client.get_user(&name("tg_107")).await.unwrap().is_some());
}

#[tokio::test]
async fn a_timeout_is_unavailable() {
    let emu = spawn().await;
    let mut settings = settings(&emu);
    settings.timeout = Duration::from_millis(300);
    let client = MarzbanClient::new(settings).unwrap();
    client.create_user(&new_user("tg_108")).await.unwrap();

    emu.push_fault(Fault::hang(Duration::from_secs(3)), 1);
    let error = client.get_user(&name("tg_108")).await.unwrap_err();
    let MarzbanError::Unavailable {
        status: None,
        reason,
    } = &error
    else {
        panic!("expected Unavailable, got {error:?}");
    };
    assert!(reason.starts_with("timed out"), "{reason}");
    assert!(client.get_user(&name("tg_108")).await.unwrap().is_some());
}

#[tokio::test]
async fn limited_and_disabled_users_are_reactivated_via_status() {
    let emu = spawn().await;
    let client = client(&emu);
    let extend = |status| ModifyUser {
        expire: in_days(60),
        data_limit: Some(10 * GIB),
        status,
    };

    client.create_user(&new_user("tg_109")).await.unwrap();
    emu.set_used_traffic("tg_109", 10 * GIB).unwrap();
    let user = client.get_user(&name("tg_109")).await.unwrap().unwrap();
    assert_eq!(user.status, UserStatus::Limited);
    // Extending leaves a limited user limited (§4b), and so does `status: active` while the
    // traffic is still over the limit (Marzban re-applies the limit after the status); a
    // reset clears the traffic and reactivates.
    let user = client
        .modify_user(&name("tg_109"), &extend(None))
        .await
        .unwrap();
    assert_eq!(user.status, UserStatus::Limited);
    let user = client
        .modify_user(&name("tg_109"), &extend(Some(ModifyStatus::Active)))
        .await
        .unwrap();
    assert_eq!(user.status, UserStatus::Limited);
    let user = client.reset_user(&name("tg_109")).await.unwrap();
    assert_eq!((user.status, user.used_traffic), (UserStatus::Active, 0));

    client.create_user(&new_user("tg_110")).await.unwrap();
    emu.set_status("tg_110", emulator::UserStatus::Disabled)
        .unwrap();
    let user = client
        .modify_user(&name("tg_110"), &extend(None))
        .await
        .unwrap();
    assert_eq!(
        user.status,
        UserStatus::Disabled,
        "extending keeps disabled"
    );
    let user = client
        .modify_user(&name("tg_110"), &extend(Some(ModifyStatus::Active)))
        .await
        .unwrap();
    assert_eq!(user.status, UserStatus::Active);
    let body = emu.requests_to(route::MODIFY_USER)[3].body.clone().unwrap();
    assert_eq!(body["status"], "active");
    assert!(body.get("proxies").is_none());
}

#[tokio::test]
async fn arguments_marzban_would_misread_are_refused_before_sending() {
    let emu = spawn().await;
    let client = client(&emu);
    let mut user = new_user("tg_111");
    user.expire = 0;
    let error = client.create_user(&user).await.unwrap_err();
    assert!(matches!(error, MarzbanError::InvalidInput(_)), "{error:?}");
    assert!(emu.requests().is_empty());
}

#[tokio::test]
async fn calls_are_timed_and_failures_counted_by_operation() {
    let metrics = service_kit::ops::metrics_handle();
    let emu = spawn().await;
    let client = client(&emu);
    client.create_user(&new_user("metered")).await.unwrap();
    assert!(client.get_user(&name("not_there")).await.unwrap().is_none());
    let text = metrics.render();
    assert!(
        text.contains(
            "marzban_sync_api_call_seconds_bucket{operation=\"create_user\",le=\"0.005\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("marzban_sync_api_errors_total{operation=\"get_user\",error=\"not_found\"}"),
        "{text}"
    );
}
