//! `PasarguardClient` against the sandbox's PasarGuard emulator, over real HTTP on loopback;
//! and the emulator refusing what the real panel refuses.

use std::time::Duration;

use chrono::Utc;
use marzban_sync::panel::{
    self, MarzbanUsername, ModifyStatus, ModifyUser, Panel, PanelError, UserStatus,
};
use marzban_sync::pasarguard::{PasarguardAuth, PasarguardClient, PasarguardSettings};
use sandbox::pasarguard::{self as emulator, Handle, route};
use secrecy::SecretString;
use serde_json::{Value, json};

mod common;

use common::{GIB, assert_near, desired, in_days, name};

async fn spawn_with(config: emulator::Config) -> Handle {
    emulator::spawn(config).await.unwrap()
}

async fn spawn() -> Handle {
    spawn_with(emulator::Config::default()).await
}

fn client_with(emu: &Handle, auth: PasarguardAuth, groups: Vec<i64>) -> PasarguardClient {
    let mut settings = PasarguardSettings::new(emu.base_url.clone(), auth, groups);
    settings.timeout = Duration::from_secs(2);
    PasarguardClient::new(settings).unwrap()
}

fn key(value: &str) -> PasarguardAuth {
    PasarguardAuth::ApiKey(SecretString::from(value))
}

fn client(emu: &Handle) -> PasarguardClient {
    client_with(emu, key(emulator::DEFAULT_API_KEY), vec![1])
}

async fn raw(
    emu: &Handle,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    common::raw_call(&emu.base_url, method, path, body, |request| {
        request.header("X-Api-Key", emulator::DEFAULT_API_KEY)
    })
    .await
}

#[tokio::test]
async fn create_and_extend_keep_the_keys_and_the_sellers_next_plan() {
    let emu = spawn().await;
    let pg = client(&emu);
    let created = pg
        .create_user(&desired("tg_100", in_days(30)), "telegram 100")
        .await
        .unwrap();
    assert_eq!(created.status, UserStatus::Active);
    assert_near(created.expire, in_days(30));
    assert!(
        created
            .subscription_url
            .starts_with("https://sub.example.com/sub/")
    );
    let create = &emu.gate().requests_to(route::CREATE_USER)[0];
    assert_eq!(create.status, Some(201));
    let body = create.body.clone().unwrap();
    assert_eq!(body["group_ids"], json!([1]));
    assert!(
        body["expire"].as_str().unwrap().ends_with('Z'),
        "ISO, not Unix: {body}"
    );
    assert!(body.get("proxy_settings").is_none());

    // The seller sets a next plan in the dashboard; our extension must not delete it.
    let plan = json!({"user_template_id": 3, "data_limit": 0, "expire": 2_592_000, "add_remaining_traffic": false});
    assert!(emu.edit_user("tg_100", |u| u.next_plan = Some(plan.clone())));
    let extended = pg
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
    assert_eq!(extended.data_limit, None);
    assert_eq!(extended.key, created.key, "keys kept on extension");
    let stored = emu.user("tg_100").unwrap();
    assert_eq!(
        stored.next_plan,
        Some(plan),
        "the seller's next plan survives"
    );
    let put = emu.gate().requests_to(route::MODIFY_USER)[0]
        .body
        .clone()
        .unwrap();
    assert!(put.get("proxy_settings").is_none() && put.get("group_ids").is_none());
    assert_eq!(
        emu.gate().requests_to(route::MODIFY_USER)[0].path,
        format!("/api/user/by-id/{}", stored.id),
        "by id, not the deprecated username route"
    );
    assert_eq!(emu.gate().count(route::BY_USERNAME), 0);

    // A refund of everything: an exact past expiry and disabled.
    let now = Utc::now();
    let refunded = panel::shorten(&pg, &desired("tg_100", now.timestamp() - 10), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refunded.status, UserStatus::Disabled);
    assert_eq!(refunded.expire, Some(now.timestamp() - 10));

    pg.delete_user(&name("tg_100")).await.unwrap();
    assert_eq!(
        emu.gate().requests_to(route::DELETE_USER)[0].status,
        Some(204)
    );
    assert!(pg.get_user(&name("tg_100")).await.unwrap().is_none());
}

#[tokio::test]
async fn expiry_is_read_with_an_offset_too_and_duplicates_are_conflicts() {
    let emu = spawn_with(emulator::Config {
        utc_suffix: "+00:00",
        ..emulator::Config::default()
    })
    .await;
    let pg = client(&emu);
    let expire = in_days(3);
    let user = pg.create_user(&desired("tg_1", expire), "n").await.unwrap();
    assert_eq!(user.expire, Some(expire));
    let error = pg
        .create_user(&desired("tg_1", in_days(3)), "n")
        .await
        .unwrap_err();
    assert!(matches!(error, PanelError::Conflict { .. }), "{error:?}");
    // Case-sensitive names.
    let mut other = desired("tg_1", in_days(3));
    other.username = MarzbanUsername::adopted("TG_1").unwrap();
    pg.create_user(&other, "n").await.unwrap();
    assert_eq!(emu.users().len(), 2);
    assert_eq!(
        pg.get_user(&name("tg_1")).await.unwrap().unwrap().username,
        "tg_1"
    );
}

#[tokio::test]
async fn the_admin_login_works_and_wrong_credentials_name_the_setting() {
    let emu = spawn().await;
    let admin = PasarguardAuth::Admin {
        username: "admin".to_owned(),
        password: SecretString::from("admin-password"),
    };
    let pg = client_with(&emu, admin, vec![1]);
    pg.check().await.unwrap();
    pg.create_user(&desired("tg_1", in_days(3)), "n")
        .await
        .unwrap();
    assert_eq!(emu.gate().count(route::TOKEN), 1);

    let wrong = client_with(
        &emu,
        key("pg_key_00000000-0000-4000-8000-000000000000"),
        vec![1],
    );
    let error = wrong.check().await.unwrap_err();
    assert!(
        matches!(error, PanelError::Unauthorized { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("PASARGUARD_API_KEY"), "{error}");

    let missing_group = client_with(&emu, key(emulator::DEFAULT_API_KEY), vec![1, 7]);
    let text = missing_group.check().await.unwrap_err().to_string();
    assert!(
        text.contains("PASARGUARD_GROUP_IDS") && text.contains('7'),
        "{text}"
    );

    let emu = spawn_with(emulator::Config {
        api_key_permissions: vec!["users.read".to_owned()],
        ..emulator::Config::default()
    })
    .await;
    let pg = client(&emu);
    pg.check().await.unwrap();
    let text = pg
        .create_user(&desired("tg_1", in_days(3)), "n")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("PASARGUARD_API_KEY") && text.contains("403"),
        "{text}"
    );
}

#[tokio::test]
async fn a_limited_user_is_reset_and_an_adopted_one_gets_our_group() {
    let emu = spawn_with(emulator::Config {
        groups: vec![
            emulator::Group {
                id: 1,
                name: "ours".to_owned(),
                inbound_tags: vec![],
            },
            emulator::Group {
                id: 2,
                name: "theirs".to_owned(),
                inbound_tags: vec![],
            },
        ],
        ..emulator::Config::default()
    })
    .await;
    let pg = client(&emu);
    pg.create_user(&desired("tg_7", in_days(5)), "n")
        .await
        .unwrap();
    assert!(emu.set_used_traffic("tg_7", 11 * GIB));
    let user = panel::activate(&pg, &desired("tg_7", in_days(35)), true, "n")
        .await
        .unwrap();
    assert_eq!(user.status, UserStatus::Active);
    assert_eq!(emu.gate().count(route::RESET_USER), 1);

    // A Marzban user after the in-place upgrade: in group 2 only, with its old keys.
    let before = emu.insert_user(
        "tg_8",
        Some(Utc::now() + chrono::Duration::days(3)),
        vec![2],
    );
    let user = panel::adopt(&pg, &desired("tg_8", in_days(33)), "n")
        .await
        .unwrap();
    let after = emu.user("tg_8").unwrap();
    assert_eq!(after.group_ids, vec![2, 1]);
    assert_eq!(after.proxy_settings, before.proxy_settings, "keys kept");
    assert_near(user.expire, in_days(33));
}

#[tokio::test]
async fn bad_answers_are_clear_retried_errors() {
    let emu = spawn().await;
    common::bad_answers_are_clear_retried_errors(&emu, &client(&emu), route::CREATE_USER).await;
}

#[tokio::test]
async fn the_emulator_refuses_what_pasarguard_refuses() {
    let emu = spawn().await;
    let post = reqwest::Method::POST;
    let user =
        |name: &str| json!({"username": name, "expire": "2030-01-01T00:00:00Z", "group_ids": [1]});
    for bad in ["ab", "a..b", "a_-b", "has space", &"x".repeat(129)] {
        let (status, body) = raw(&emu, post.clone(), "/api/user", Some(user(bad))).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body["detail"]["username"].is_string(), "{body}");
    }
    let (status, _) = raw(&emu, post.clone(), "/api/user", Some(user("a.b@c-d_e"))).await;
    assert_eq!(status, 201);
    for (bad, wanted) in [
        (json!({"username": "tg_1", "group_ids": []}), 422),
        (json!({"username": "tg_1", "group_ids": null}), 422),
        (json!({"username": "tg_1", "group_ids": [99]}), 404),
        (json!({"username": "tg_1", "expire": "soon"}), 422),
        (json!({"username": "tg_1", "data_limit": -1}), 422),
        (json!({"username": "tg_1", "status": "disabled"}), 422),
    ] {
        let (status, body) = raw(&emu, post.clone(), "/api/user", Some(bad.clone())).await;
        assert_eq!(status, wanted, "{bad}: {body}");
    }
    // Unix seconds are accepted and answered as ISO; 0 is never.
    let (status, body) = raw(
        &emu,
        post.clone(),
        "/api/user",
        Some(json!({"username": "tg_2", "expire": 1_798_761_599, "group_ids": [1]})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body["expire"], "2026-12-31T23:59:59Z");
    let id = body["id"].as_i64().unwrap();
    let put = reqwest::Method::PUT;
    let (status, _) = raw(
        &emu,
        put.clone(),
        &format!("/api/user/by-id/{id}"),
        Some(json!({"status": "limited"})),
    )
    .await;
    assert_eq!(status, 422);
    let (status, body) = raw(
        &emu,
        put,
        &format!("/api/user/by-id/{id}"),
        Some(json!({"expire": 0})),
    )
    .await;
    assert_eq!((status, body["expire"].clone()), (200, Value::Null));
    let (status, _) = raw(&emu, reqwest::Method::GET, "/api/user/by-id/9999", None).await;
    assert_eq!(status, 404);
    // The list leaves subscription_url empty unless load_sub=true.
    let (_, list) = raw(&emu, reqwest::Method::GET, "/api/users?username=tg_2", None).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["users"][0]["subscription_url"], "");

    // An API key sent as a bearer token is refused; `ApiKey` in any case works.
    for (scheme, wanted) in [("Bearer", 401), ("ApiKey", 200), ("apikey", 200)] {
        let response = reqwest::Client::new()
            .get(format!("{}/api/users", emu.base_url))
            .header(
                "Authorization",
                format!("{scheme} {}", emulator::DEFAULT_API_KEY),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), wanted, "{scheme}");
    }
}
