//! `RemnawaveClient` against the sandbox's Remnawave emulator, over real HTTP on loopback; and
//! the emulator refusing what the real panel refuses.

use std::time::Duration;

use chrono::Utc;
use marzban_sync::panel::{
    self, MarzbanUsername, ModifyStatus, ModifyUser, PAST_EXPIRY_SLACK_SECS, Panel, PanelError,
    UserStatus,
};
use marzban_sync::remnawave::{RemnawaveClient, RemnawaveSettings};
use sandbox::remnawave::{self as emulator, Handle, route};
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

mod common;

use common::{GIB, assert_near, desired, in_days, name};

async fn spawn() -> Handle {
    spawn_with(emulator::Config::default()).await
}

async fn spawn_with(config: emulator::Config) -> Handle {
    emulator::spawn(config).await.unwrap()
}

fn squad() -> Uuid {
    Uuid::parse_str(emulator::DEFAULT_SQUAD).unwrap()
}

fn client_with(emu: &Handle, token: &str, squads: Vec<Uuid>) -> RemnawaveClient {
    let mut settings =
        RemnawaveSettings::new(emu.base_url.clone(), SecretString::from(token), squads);
    settings.timeout = Duration::from_secs(2);
    RemnawaveClient::new(settings).unwrap()
}

fn client(emu: &Handle) -> RemnawaveClient {
    client_with(emu, emulator::DEFAULT_TOKEN, vec![squad()])
}

/// A raw call with the proxy headers and the token, for what our client never sends.
async fn raw(
    emu: &Handle,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    common::raw_call(&emu.base_url, method, path, body, |request| {
        request
            .bearer_auth(emulator::DEFAULT_TOKEN)
            .header("X-Forwarded-For", "127.0.0.1")
            .header("X-Forwarded-Proto", "https")
    })
    .await
}

#[tokio::test]
async fn create_extend_and_refund_keep_the_customers_key_and_link() {
    let emu = spawn().await;
    let rw = client(&emu);
    let created = rw
        .create_user(&desired("tg_100", in_days(30)), "telegram 100")
        .await
        .unwrap();
    assert_eq!(created.status, UserStatus::Active);
    assert_near(created.expire, in_days(30));
    assert_eq!(created.data_limit, Some(10 * GIB));
    assert!(
        created
            .subscription_url
            .starts_with("https://sub.example.com/")
    );
    let stored = emu.user("tg_100").unwrap();
    assert_eq!(stored.active_internal_squads, vec![squad()]);
    assert_eq!(stored.description.as_deref(), Some("telegram 100"));
    let create = &emu.gate().requests_to(route::CREATE_USER)[0];
    assert_eq!(create.status, Some(201));
    let body = create.body.clone().unwrap();
    assert!(body["expireAt"].as_str().unwrap().ends_with('Z'), "{body}");

    let extended = rw
        .modify_user(
            &name("tg_100"),
            &ModifyUser {
                expire: in_days(60),
                data_limit: None,
                status: Some(ModifyStatus::Active),
            },
        )
        .await
        .unwrap();
    assert_near(extended.expire, in_days(60));
    assert_eq!(extended.data_limit, None, "0 bytes on the wire = unlimited");
    assert_eq!(
        extended.key, created.key,
        "the VLESS key survives an extension"
    );
    assert_eq!(extended.subscription_url, created.subscription_url);
    let patch = emu.gate().requests_to(route::UPDATE_USER)[0]
        .body
        .clone()
        .unwrap();
    assert_eq!(
        patch["uuid"],
        json!(stored.uuid),
        "updates name the user by uuid"
    );
    assert!(patch.get("vlessUuid").is_none() && patch.get("activeInternalSquads").is_none());

    // A refund of everything: the panel refuses a past expireAt on update, so the user is
    // disabled with an expiry just ahead, which the drift check accepts.
    let now = Utc::now();
    let refunded = panel::shorten(&rw, &desired("tg_100", now.timestamp() - 10), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refunded.status, UserStatus::Disabled);
    assert!(refunded.expire.unwrap() <= now.timestamp() + PAST_EXPIRY_SLACK_SECS);
    assert_eq!(refunded.key, created.key);
    assert_eq!(
        panel::plan_repair(
            &desired("tg_100", now.timestamp() - 10),
            Some(&refunded),
            now
        ),
        panel::Repair::None
    );
}

#[tokio::test]
async fn duplicates_are_conflicts_and_missing_users_not_found() {
    let emu = spawn().await;
    let rw = client(&emu);
    rw.create_user(&desired("tg_1", in_days(1)), "n")
        .await
        .unwrap();
    let error = rw
        .create_user(&desired("tg_1", in_days(1)), "n")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PanelError::Conflict { detail } if detail.contains("A019")),
        "{error:?}"
    );
    assert_eq!(
        emu.gate().requests_to(route::CREATE_USER)[1].status,
        Some(400)
    );
    // Case-sensitive: another spelling is another user.
    let mut other = desired("tg_1", in_days(1));
    other.username = MarzbanUsername::adopted("TG_1").unwrap();
    rw.create_user(&other, "n").await.unwrap();
    assert_eq!(emu.users().len(), 2);

    assert!(rw.get_user(&name("tg_2")).await.unwrap().is_none());
    let change = ModifyUser {
        expire: in_days(2),
        data_limit: None,
        status: None,
    };
    let error = rw.modify_user(&name("tg_2"), &change).await.unwrap_err();
    assert!(matches!(error, PanelError::NotFound { .. }), "{error:?}");
    // activate re-creates a user that vanished.
    let user = panel::activate(&rw, &desired("tg_2", in_days(3)), true, "n")
        .await
        .unwrap();
    assert_near(user.expire, in_days(3));
}

#[tokio::test]
async fn without_the_forwarded_pair_the_panel_drops_the_connection() {
    let emu = spawn().await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/users/by-username/tg_1", emu.base_url);
    for headers in [
        vec![],
        vec![("X-Forwarded-For", "127.0.0.1")],
        vec![("X-Forwarded-Proto", "https")],
        vec![
            ("X-Forwarded-For", "127.0.0.1"),
            ("X-Forwarded-Proto", "http"),
        ],
    ] {
        let mut request = http.get(&url).bearer_auth(emulator::DEFAULT_TOKEN);
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let error = request.send().await.expect_err("no answer at all");
        assert!(
            !error.is_status() && error.status().is_none(),
            "{headers:?}: {error:?}"
        );
    }
    // Our client sends the pair over http:// and is answered.
    assert!(
        client(&emu)
            .get_user(&name("tg_1"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_refused_token_says_to_renew_it() {
    let emu = spawn().await;
    let rw = client(&emu);
    rw.check().await.unwrap();

    emu.revoke_tokens();
    let error = rw.check().await.unwrap_err();
    assert!(
        matches!(error, PanelError::Unauthorized { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("REMNAWAVE_TOKEN") && text.contains("401"),
        "{text}"
    );
    assert!(error.stops_everything());

    emu.renew_token();
    emu.delete_token();
    let text = rw.get_user(&name("tg_1")).await.unwrap_err().to_string();
    assert!(
        text.contains("REMNAWAVE_TOKEN") && text.contains("403"),
        "{text}"
    );

    let wrong = client_with(&emu, "someone-elses-token", vec![squad()]);
    let text = wrong.check().await.unwrap_err().to_string();
    assert!(
        text.contains("REMNAWAVE_TOKEN") && text.contains("401"),
        "{text}"
    );
}

#[tokio::test]
async fn a_token_without_the_scope_or_a_missing_squad_is_not_ready() {
    let emu = spawn_with(emulator::Config {
        token_scopes: vec!["users:*".to_owned()],
        ..emulator::Config::default()
    })
    .await;
    let text = client(&emu).check().await.unwrap_err().to_string();
    assert!(
        text.contains("REMNAWAVE_TOKEN") && text.contains("scope"),
        "{text}"
    );
    // The users scope is enough for the work itself.
    client(&emu)
        .create_user(&desired("tg_1", in_days(1)), "n")
        .await
        .unwrap();

    let emu = spawn_with(emulator::Config {
        token_scopes: vec!["users:read".to_owned(), "internal-squads:read".to_owned()],
        ..emulator::Config::default()
    })
    .await;
    let rw = client(&emu);
    rw.check().await.unwrap();
    let error = rw
        .create_user(&desired("tg_1", in_days(1)), "n")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("403"), "{error}");

    let emu = spawn().await;
    let missing = Uuid::new_v4();
    let rw = client_with(&emu, emulator::DEFAULT_TOKEN, vec![squad(), missing]);
    let text = rw.check().await.unwrap_err().to_string();
    assert!(
        text.contains("REMNAWAVE_SQUADS") && text.contains(&missing.to_string()),
        "{text}"
    );
    // A create with it is the panel's 500 A018, retried, and names the setting.
    let error = rw
        .create_user(&desired("tg_1", in_days(1)), "n")
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("REMNAWAVE_SQUADS"), "{error}");
}

#[tokio::test]
async fn bad_answers_are_clear_retried_errors() {
    let emu = spawn().await;
    common::bad_answers_are_clear_retried_errors(&emu, &client(&emu), route::CREATE_USER).await;
}

#[tokio::test]
async fn a_limited_user_that_pays_is_reset_and_an_adopted_one_gets_our_squad() {
    let emu = spawn().await;
    let rw = client(&emu);
    rw.create_user(&desired("tg_7", in_days(5)), "n")
        .await
        .unwrap();
    assert!(emu.set_used_traffic("tg_7", 11 * GIB));
    assert_eq!(
        emu.user("tg_7").unwrap().status,
        emulator::UserStatus::Limited
    );
    let user = panel::activate(&rw, &desired("tg_7", in_days(35)), true, "n")
        .await
        .unwrap();
    assert_eq!(user.status, UserStatus::Active);
    assert_eq!(user.used_traffic, 0);
    assert_eq!(emu.gate().count(route::RESET_TRAFFIC), 1, "reset once");

    // A user someone else made, in another squad only.
    let other = Uuid::new_v4();
    let emu = spawn_with(emulator::Config {
        squads: vec![
            emulator::Squad {
                uuid: squad(),
                name: "Ours".to_owned(),
            },
            emulator::Squad {
                uuid: other,
                name: "Theirs".to_owned(),
            },
        ],
        ..emulator::Config::default()
    })
    .await;
    let rw = client(&emu);
    let before = emu.insert_user("tg_8", Utc::now() + chrono::Duration::days(3), vec![other]);
    let found = rw.find_user(&name("tg_8")).await.unwrap().unwrap();
    let user = panel::adopt(&rw, &desired("tg_8", in_days(33)), "n")
        .await
        .unwrap();
    assert_eq!(found.key, user.key);
    let after = emu.user("tg_8").unwrap();
    assert_eq!(after.active_internal_squads, vec![other, squad()]);
    assert_eq!(after.vless_uuid, before.vless_uuid);
    assert_eq!(after.short_uuid, before.short_uuid);
    assert_near(user.expire, in_days(33));
}

#[tokio::test]
async fn the_emulator_refuses_what_remnawave_refuses() {
    let emu = spawn().await;
    let user = |name: &str| json!({"username": name, "expireAt": "2030-01-01T00:00:00.000Z"});
    let post = reqwest::Method::POST;
    // Usernames: 3–36 of [A-Za-z0-9_-].
    for bad in ["ab", "a.b.c", "user@host", &"x".repeat(37)] {
        let (status, body) = raw(&emu, post.clone(), "/api/users", Some(user(bad))).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["message"], "Validation failed");
        assert_eq!(body["errors"][0]["path"], json!(["username"]));
    }
    let (status, _) = raw(
        &emu,
        post.clone(),
        "/api/users",
        Some(user(&"x".repeat(36))),
    )
    .await;
    assert_eq!(status, 201);
    // expireAt is required, ISO with offset; there is no "never".
    for bad in [
        json!({"username": "tg_1"}),
        json!({"username": "tg_1", "expireAt": 0}),
        json!({"username": "tg_1", "expireAt": "never"}),
        json!({"username": "tg_1", "expireAt": "2030-01-01 00:00:00"}),
        json!({"username": "tg_1", "expireAt": "2030-01-01T00:00:00.000Z", "trafficLimitBytes": -1}),
        json!({"username": "tg_1", "expireAt": "2030-01-01T00:00:00.000Z", "trafficLimitStrategy": "YEAR"}),
        json!({"username": "tg_1", "expireAt": "2030-01-01T00:00:00.000Z", "activeInternalSquads": ["x"]}),
    ] {
        let (status, body) = raw(&emu, post.clone(), "/api/users", Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Unknown fields are stripped, not refused; the answer is wrapped.
    let (status, body) = raw(
        &emu,
        post.clone(),
        "/api/users",
        Some(json!({"username": "tg_1", "expireAt": "2030-01-01T00:00:00+03:00", "inbounds": {}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["response"]["expireAt"], "2029-12-31T21:00:00.000Z");
    assert_eq!(
        body["response"]["activeInternalSquads"],
        json!([]),
        "no squad by default"
    );
    let uuid = body["response"]["uuid"].as_str().unwrap().to_owned();

    let patch = reqwest::Method::PATCH;
    for (bad, status_wanted) in [
        (
            json!({"uuid": uuid, "expireAt": "2001-01-01T00:00:00.000Z"}),
            400,
        ),
        (json!({"uuid": uuid, "status": "LIMITED"}), 400),
        (json!({"expireAt": "2030-01-01T00:00:00.000Z"}), 400),
        (
            json!({"username": "tg_404", "expireAt": "2030-01-01T00:00:00.000Z"}),
            404,
        ),
    ] {
        let (status, body) = raw(&emu, patch.clone(), "/api/users", Some(bad.clone())).await;
        assert_eq!(status, status_wanted, "{bad}: {body}");
    }
    let (_, body) = raw(
        &emu,
        patch,
        "/api/users",
        Some(json!({"username": "tg_404", "status": "ACTIVE"})),
    )
    .await;
    assert_eq!(body["errorCode"], "A025");
    let get = reqwest::Method::GET;
    let (status, body) = raw(&emu, get.clone(), "/api/users/by-username/tg_404", None).await;
    assert_eq!((status, body["errorCode"].as_str()), (404, Some("A063")));
    let (status, _) = raw(&emu, get.clone(), "/api/users/not-a-uuid", None).await;
    assert_eq!(status, 400);
    let (status, body) = raw(
        &emu,
        post.clone(),
        &format!("/api/users/{uuid}/actions/enable"),
        None,
    )
    .await;
    assert_eq!((status, body["errorCode"].as_str()), (400, Some("A030")));
    let (status, body) = raw(
        &emu,
        reqwest::Method::DELETE,
        &format!("/api/users/{uuid}"),
        None,
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"response": {"isDeleted": true}}))
    );

    // An admin login token is refused for API calls without the browser header.
    let (status, body) = raw(
        &emu,
        post,
        "/api/auth/login",
        Some(json!({"username": "admin", "password": "admin-password"})),
    )
    .await;
    assert_eq!(status, 200);
    let admin = body["response"]["accessToken"].as_str().unwrap().to_owned();
    let response = reqwest::Client::new()
        .get(format!("{}/api/users", emu.base_url))
        .bearer_auth(&admin)
        .header("X-Forwarded-For", "127.0.0.1")
        .header("X-Forwarded-Proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}
