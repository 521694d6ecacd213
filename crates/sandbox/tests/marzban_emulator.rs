//! The Marzban emulator over real HTTP on loopback: the panel's rules and quirks (§4, §4b) and
//! the fault controls that the client tests rely on.

use std::time::Duration;

use reqwest::StatusCode;
use sandbox::marzban::{self, Config, Fault, Handle, UserStatus, route};
use serde_json::{Value, json};

async fn spawn() -> Handle {
    marzban::spawn(Config::default()).await.unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn login(emu: &Handle) -> String {
    let response = http()
        .post(format!("{}/api/admin/token", emu.base_url))
        .form(&[("username", "admin"), ("password", "admin-password")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    body["access_token"].as_str().unwrap().to_owned()
}

/// An authenticated request; returns status and JSON body (Null when not JSON).
async fn call(
    emu: &Handle,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = http()
        .request(method, format!("{}{path}", emu.base_url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn create_body(username: &str) -> Value {
    json!({
        "username": username,
        "proxies": {"vless": {"flow": "xtls-rprx-vision"}},
        "inbounds": {"vless": ["VLESS TCP REALITY"]},
        "expire": future(30),
        "data_limit": 10_737_418_240_i64,
        "data_limit_reset_strategy": "no_reset",
        "status": "active",
        "note": "order 72",
    })
}

fn future(days: i64) -> i64 {
    chrono::Utc::now().timestamp() + days * 86_400
}

async fn create(emu: &Handle, token: &str, body: Value) -> (StatusCode, Value) {
    call(emu, token, reqwest::Method::POST, "/api/user", Some(body)).await
}

#[tokio::test]
async fn token_endpoint_takes_form_data_only() {
    let emu = spawn().await;
    let url = format!("{}/api/admin/token", emu.base_url);

    let json = http()
        .post(&url)
        .json(&json!({"username": "admin", "password": "admin-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = json.json().await.unwrap();
    assert_eq!(
        body,
        json!({"detail": {"username": "Field required", "password": "Field required"}})
    );

    let wrong = http()
        .post(&url)
        .form(&[("username", "admin"), ("password", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["detail"], "Incorrect username or password");

    let token = login(&emu).await;
    assert_eq!(token.split('.').count(), 3, "JWT-shaped");
    assert_eq!(emu.count(route::TOKEN), 3);
}

#[tokio::test]
async fn bearer_auth_is_required_and_tokens_can_be_revoked() {
    let emu = spawn().await;
    let url = format!("{}/api/user/nobody", emu.base_url);

    let missing = http().get(&url).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["detail"],
        "Not authenticated"
    );

    let (status, body) = call(
        &emu,
        "garbage",
        reqwest::Method::GET,
        "/api/user/nobody",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "Could not validate credentials");

    let token = login(&emu).await;
    let (status, body) = call(&emu, &token, reqwest::Method::GET, "/api/user/nobody", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"detail": "User not found"}))
    );

    emu.revoke_tokens();
    let (status, body) = call(&emu, &token, reqwest::Method::GET, "/api/user/nobody", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "Could not validate credentials");
}

#[tokio::test]
async fn create_answers_200_with_a_full_user_response_and_409_on_duplicates() {
    let emu = spawn().await;
    let token = login(&emu).await;

    let (status, user) = create(&emu, &token, create_body("tg_1")).await;
    assert_eq!(status, StatusCode::OK);
    for field in [
        "username",
        "status",
        "used_traffic",
        "lifetime_used_traffic",
        "created_at",
        "expire",
        "data_limit",
        "data_limit_reset_strategy",
        "proxies",
        "inbounds",
        "excluded_inbounds",
        "note",
        "sub_updated_at",
        "sub_last_user_agent",
        "online_at",
        "on_hold_expire_duration",
        "on_hold_timeout",
        "auto_delete_in_days",
        "next_plan",
        "links",
        "subscription_url",
        "admin",
    ] {
        assert!(user.get(field).is_some(), "missing {field}");
    }
    assert_eq!(user["status"], "active");
    assert_eq!(user["data_limit"], 10_737_418_240_i64);
    assert_eq!(user["proxies"]["vless"]["flow"], "xtls-rprx-vision");
    let id = user["proxies"]["vless"]["id"].as_str().unwrap();
    assert_eq!(emu.vless_id("tg_1").as_deref(), Some(id));
    assert_eq!(user["inbounds"], json!({"vless": ["VLESS TCP REALITY"]}));
    assert_eq!(
        user["excluded_inbounds"],
        json!({"vless": ["VLESS GRPC REALITY"]})
    );
    assert_eq!(user["links"].as_array().unwrap().len(), 1);
    assert!(
        !user["created_at"].as_str().unwrap().ends_with('Z'),
        "naive UTC"
    );

    let (status, body) = create(&emu, &token, create_body("tg_1")).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::CONFLICT,
            json!({"detail": "User already exists"})
        )
    );
    assert_eq!(emu.count(route::CREATE_USER), 2);
    assert_eq!(emu.users().len(), 1);
}

#[tokio::test]
async fn usernames_are_case_sensitive_and_checked() {
    let emu = spawn().await;
    let token = login(&emu).await;
    assert_eq!(
        create(&emu, &token, create_body("abc")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        create(&emu, &token, create_body("ABC")).await.0,
        StatusCode::OK
    );
    assert!(emu.user("abc").is_some() && emu.user("ABC").is_some());
    let (status, _) = call(&emu, &token, reqwest::Method::GET, "/api/user/Abc", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = create(&emu, &token, create_body("ab")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"]["username"]
            .as_str()
            .unwrap()
            .contains("3 to 32")
    );
}

#[tokio::test]
async fn expire_and_data_limit_are_integers_and_zero_means_unlimited() {
    let emu = spawn().await;
    let token = login(&emu).await;

    let mut body = create_body("zero");
    body["expire"] = json!(0);
    body["data_limit"] = json!(0);
    let (status, user) = create(&emu, &token, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (user["expire"].clone(), user["data_limit"].clone()),
        (Value::Null, Value::Null)
    );

    for (field, value) in [
        ("expire", json!(1_767_225_600.5)),
        ("expire", json!("2026-01-01T00:00:00")),
        ("data_limit", json!(1.5)),
        ("data_limit", json!("100")),
        ("data_limit", json!(-1)),
    ] {
        let mut body = create_body("bad_number");
        body[field] = value.clone();
        let (status, body) = create(&emu, &token, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}={value}");
        assert!(body["detail"][field].is_string(), "{field}={value}: {body}");
    }
    assert!(emu.user("bad_number").is_none());
}

#[tokio::test]
async fn proxies_are_required_and_need_an_enabled_protocol() {
    let emu = spawn().await;
    let token = login(&emu).await;

    let mut body = create_body("empty_proxies");
    body["proxies"] = json!({});
    let (status, body) = create(&emu, &token, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"]["proxies"].is_string());

    let mut body = create_body("trojan_user");
    body["proxies"] = json!({"trojan": {}});
    body["inbounds"] = json!({});
    let (status, body) = create(&emu, &token, body).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"detail": "Protocol trojan is disabled on your server"})
        )
    );

    let mut body = create_body("no_proxies");
    body.as_object_mut().unwrap().remove("proxies");
    let (status, _) = create(&emu, &token, body).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        emu.user("no_proxies").is_none(),
        "the emulator stores nothing"
    );

    let mut body = create_body("bad_inbound");
    body["inbounds"] = json!({"vless": ["Nope"]});
    let (status, body) = create(&emu, &token, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["detail"]["inbounds"],
        "Value error, Inbound Nope doesn't exist"
    );
}

#[tokio::test]
async fn inbounds_decide_access() {
    let emu = spawn().await;
    let token = login(&emu).await;

    let mut body = create_body("no_inbounds");
    body.as_object_mut().unwrap().remove("inbounds");
    let (status, user) = create(&emu, &token, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["links"], json!([]), "no inbounds, no access");
    assert_eq!(
        user["excluded_inbounds"]["vless"],
        json!(["VLESS TCP REALITY", "VLESS GRPC REALITY"])
    );

    let mut body = create_body("all_inbounds");
    body["inbounds"] = json!({});
    let (_, user) = create(&emu, &token, body).await;
    assert_eq!(user["links"].as_array().unwrap().len(), 2);
    assert_eq!(user["excluded_inbounds"]["vless"], json!([]));
}

#[tokio::test]
async fn put_is_partial_but_proxies_regenerate_the_key() {
    let emu = spawn().await;
    let token = login(&emu).await;
    let mut body = create_body("tg_2");
    body["next_plan"] = json!({"expire": 0, "data_limit": 0});
    create(&emu, &token, body).await;
    let original = emu.vless_id("tg_2").unwrap();

    let new_expire = future(60);
    let (status, user) = call(
        &emu,
        &token,
        reqwest::Method::PUT,
        "/api/user/tg_2",
        Some(json!({"expire": new_expire})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["expire"], new_expire);
    assert_eq!(user["data_limit"], 10_737_418_240_i64, "unchanged");
    assert_eq!(user["note"], "order 72", "unchanged");
    assert_eq!(
        user["next_plan"],
        Value::Null,
        "omitting next_plan deletes it"
    );
    assert_eq!(emu.vless_id("tg_2").unwrap(), original);

    let (status, _) = call(
        &emu,
        &token,
        reqwest::Method::PUT,
        "/api/user/tg_2",
        Some(json!({"proxies": {"vless": {}}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(emu.vless_id("tg_2").unwrap(), original, "a new UUID");
    assert_eq!(
        emu.requests_to(route::MODIFY_USER)[1].body,
        Some(json!({"proxies": {"vless": {}}}))
    );

    let (status, body) = call(
        &emu,
        &token,
        reqwest::Method::PUT,
        "/api/user/tg_2",
        Some(json!({"status": "limited"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"]["status"].is_string());

    let (status, user) = call(
        &emu,
        &token,
        reqwest::Method::PUT,
        "/api/user/tg_2",
        Some(json!({"expire": 0})),
    )
    .await;
    assert_eq!(
        (status, user["expire"].clone()),
        (StatusCode::OK, Value::Null)
    );
}

#[tokio::test]
async fn status_follows_marzbans_rules() {
    let emu = spawn().await;
    let token = login(&emu).await;
    let put = |name: &'static str, body: Value| {
        let (emu, token) = (&emu, token.clone());
        async move {
            let (status, user) = call(
                emu,
                &token,
                reqwest::Method::PUT,
                &format!("/api/user/{name}"),
                Some(body),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{user}");
            user["status"].as_str().unwrap().to_owned()
        }
    };

    // A past expire is accepted; the review job marks the user expired; a future expire revives.
    let mut body = create_body("late");
    body["expire"] = json!(chrono::Utc::now().timestamp() - 60);
    let (_, user) = create(&emu, &token, body).await;
    assert_eq!(user["status"], "active");
    let (_, user) = call(&emu, &token, reqwest::Method::GET, "/api/user/late", None).await;
    assert_eq!(user["status"], "expired");
    assert_eq!(put("late", json!({"expire": future(30)})).await, "active");

    // Limited keeps its status when only extended; raising data_limit or status revives it.
    create(&emu, &token, create_body("heavy")).await;
    emu.set_used_traffic("heavy", 10_737_418_240).unwrap();
    assert_eq!(emu.user("heavy").unwrap().status, UserStatus::Limited);
    assert_eq!(put("heavy", json!({"expire": future(60)})).await, "limited");
    assert_eq!(
        put("heavy", json!({"data_limit": 20_000_000_000_i64})).await,
        "active"
    );

    // Disabled keeps its status when extended, until `status` is sent.
    create(&emu, &token, create_body("off")).await;
    emu.set_status("off", UserStatus::Disabled).unwrap();
    assert_eq!(
        put("off", json!({"expire": future(60), "data_limit": 0})).await,
        "disabled"
    );
    assert_eq!(put("off", json!({"status": "active"})).await, "active");

    // Reset clears the traffic and reactivates a limited user.
    create(&emu, &token, create_body("reset_me")).await;
    emu.set_used_traffic("reset_me", 20_000_000_000).unwrap();
    let (status, user) = call(
        &emu,
        &token,
        reqwest::Method::POST,
        "/api/user/reset_me/reset",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (user["status"].as_str(), user["used_traffic"].as_i64()),
        (Some("active"), Some(0))
    );
}

#[tokio::test]
async fn subscription_urls_are_relative_change_every_time_and_stay_valid() {
    let emu = spawn().await;
    let token = login(&emu).await;
    let (_, created) = create(&emu, &token, create_body("subs")).await;
    let (_, fetched) = call(&emu, &token, reqwest::Method::GET, "/api/user/subs", None).await;
    let first = created["subscription_url"].as_str().unwrap();
    let second = fetched["subscription_url"].as_str().unwrap();
    assert!(first.starts_with("/sub/") && second.starts_with("/sub/"));
    assert_ne!(first, second);

    for url in [first, second] {
        let response = http()
            .get(format!("{}{url}/", emu.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["subscription-userinfo"]
                .to_str()
                .unwrap()
                .contains("total=10737418240")
        );
    }
    let info: Value = http()
        .get(format!("{}{first}/info", emu.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["username"], "subs");

    let (status, _) = call(
        &emu,
        &token,
        reqwest::Method::POST,
        "/api/user/subs/revoke_sub",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let response = http()
        .get(format!("{}{first}/", emu.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let prefixed = marzban::spawn(Config {
        subscription_url_prefix: Some("https://sub.example.com/".into()),
        ..Config::default()
    })
    .await
    .unwrap();
    let token = login(&prefixed).await;
    let (_, user) = create(&prefixed, &token, create_body("subs")).await;
    assert!(
        user["subscription_url"]
            .as_str()
            .unwrap()
            .starts_with("https://sub.example.com/sub/")
    );
}

#[tokio::test]
async fn delete_then_404_and_listing() {
    let emu = spawn().await;
    let token = login(&emu).await;
    for name in ["list_a", "list_b", "list_c"] {
        create(&emu, &token, create_body(name)).await;
    }
    let (status, list) = call(
        &emu,
        &token,
        reqwest::Method::GET,
        "/api/users?offset=1&limit=1&sort=-username",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 3);
    assert_eq!(list["users"][0]["username"], "list_b");
    let (_, list) = call(
        &emu,
        &token,
        reqwest::Method::GET,
        "/api/users?username=list_a&username=list_c",
        None,
    )
    .await;
    assert_eq!(list["total"], 2);

    let (status, body) = call(
        &emu,
        &token,
        reqwest::Method::DELETE,
        "/api/user/list_a",
        None,
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"detail": "User successfully deleted"})
        )
    );
    let (status, _) = call(
        &emu,
        &token,
        reqwest::Method::DELETE,
        "/api/user/list_a",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn faults_outages_and_request_counts() {
    let emu = spawn().await;
    let token = login(&emu).await;

    emu.push_fault(Fault::InternalError, 2);
    for _ in 0..2 {
        let (status, _) = create(&emu, &token, create_body("faulty")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert!(emu.user("faulty").is_none(), "nothing happened");
    assert_eq!(
        create(&emu, &token, create_body("faulty")).await.0,
        StatusCode::OK
    );

    emu.push_fault(Fault::InternalErrorAfterProcessing, 1);
    assert_eq!(
        create(&emu, &token, create_body("done_anyway")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert!(emu.user("done_anyway").is_some());

    emu.set_down(true);
    let (status, _) = call(&emu, &token, reqwest::Method::GET, "/api/user/faulty", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    emu.set_down(false);

    emu.push_fault(Fault::hang(Duration::from_secs(5)), 1);
    let hung = http()
        .get(format!("{}/api/user/faulty", emu.base_url))
        .bearer_auth(&token)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());

    emu.disconnect().await;
    let refused = http()
        .get(format!("{}/api/user/faulty", emu.base_url))
        .send()
        .await;
    assert!(refused.unwrap_err().is_connect());
    emu.reconnect().await.unwrap();
    let (status, _) = call(&emu, &token, reqwest::Method::GET, "/api/user/faulty", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "state and tokens survive the outage"
    );

    assert_eq!(emu.count(route::CREATE_USER), 4);
    let gets = emu.requests_to(route::GET_USER);
    assert_eq!(gets.len(), 3);
    assert_eq!(gets[0].status, Some(502));
    assert_eq!(
        gets[1].status, None,
        "still hanging when the caller gave up"
    );
    assert_eq!(gets[2].status, Some(200));
}

/// A stopped panel answers nothing: a client's kept-alive connections die with it, so no
/// request reaches the panel between `disconnect` and `reconnect`, however warm the pool.
#[tokio::test]
async fn a_disconnect_closes_kept_alive_connections() {
    let emu = spawn().await;
    let token = login(&emu).await;
    assert_eq!(
        create(&emu, &token, create_body("pooled")).await.0,
        StatusCode::OK
    );
    let client = http();
    let get = || {
        client
            .get(format!("{}/api/user/pooled", emu.base_url))
            .bearer_auth(&token)
            .send()
    };
    for cycle in 0..20 {
        // Several connections at once, so each worker holds one kept alive.
        for response in futures::future::join_all((0..4).map(|_| get())).await {
            assert_eq!(response.unwrap().status(), StatusCode::OK, "cycle {cycle}");
        }
        let served = emu.count(route::GET_USER);
        emu.disconnect().await;
        for answer in futures::future::join_all((0..4).map(|_| get())).await {
            let error = answer.map(|r| r.status()).unwrap_err();
            assert!(!error.is_timeout(), "cycle {cycle}: {error:?}");
        }
        assert_eq!(emu.count(route::GET_USER), served, "cycle {cycle}");
        emu.reconnect().await.unwrap();
    }
}

#[tokio::test]
async fn a_hang_does_nothing_but_a_slow_answer_does_the_work() {
    let emu = spawn().await;
    let token = login(&emu).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let send = |name: &str| {
        client
            .post(format!("{}/api/user", emu.base_url))
            .bearer_auth(&token)
            .json(&create_body(name))
            .send()
    };

    emu.push_fault(Fault::hang(Duration::from_millis(600)), 1);
    assert!(send("hung").await.unwrap_err().is_timeout());
    emu.push_fault(Fault::slow_answer(Duration::from_millis(600)), 1);
    assert!(send("slow").await.unwrap_err().is_timeout());

    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(emu.user("hung").is_none(), "a hang does nothing");
    assert!(emu.user("slow").is_some(), "done before the delay");
}

#[tokio::test]
async fn latency_delays_every_request_and_slow_work_lands_after_a_later_request() {
    let emu = spawn().await;
    let token = login(&emu).await;
    let send = |name: String| {
        let url = format!("{}/api/user", emu.base_url);
        let token = token.clone();
        async move {
            http()
                .post(url)
                .bearer_auth(token)
                .json(&create_body(&name))
                .send()
                .await
                .unwrap()
                .status()
        }
    };

    // Recorded on arrival, handled and answered only after the latency.
    emu.set_latency(Duration::from_millis(400));
    let started = std::time::Instant::now();
    let pending = tokio::spawn(send("slow_panel".to_owned()));
    while emu.count(route::CREATE_USER) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(emu.user("slow_panel").is_none(), "not handled yet");
    assert_eq!(pending.await.unwrap(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(400));
    emu.set_latency(Duration::ZERO);

    // The first request arrives first and takes effect last.
    emu.push_fault(Fault::slow_work(Duration::from_millis(400)), 1);
    let first = tokio::spawn(send("first_in".to_owned()));
    while emu.count(route::CREATE_USER) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(send("second_in".to_owned()).await, StatusCode::OK);
    assert!(emu.user("first_in").is_none());
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    let users: Vec<String> = emu.users().into_iter().map(|u| u.username).collect();
    assert_eq!(users, ["slow_panel", "second_in", "first_in"]);
}

/// Marzban 0.8.4 on SQLite (the default): names are case-sensitive, so a look-up in another
/// case misses and a create in another case makes a second user; `search` finds both.
#[tokio::test]
async fn sqlite_usernames_are_case_sensitive_and_search_is_ilike() {
    let emu = spawn().await;
    let token = login(&emu).await;
    assert_eq!(
        create(&emu, &token, create_body("TG_900004")).await.0,
        StatusCode::OK
    );
    let get = |path: &'static str| call(&emu, &token, reqwest::Method::GET, path, None);
    assert_eq!(get("/api/user/tg_900004").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get("/api/user/TG_900004").await.0, StatusCode::OK);
    // `_` is a LIKE wildcard: the search also finds a look-alike.
    create(&emu, &token, create_body("tgX900004")).await;
    let (status, found) = get("/api/users?search=tg_900004").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = found["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["TG_900004", "tgX900004"]);

    assert_eq!(
        create(&emu, &token, create_body("tg_900004")).await.0,
        StatusCode::OK,
        "a second user"
    );
    assert_eq!(emu.users().len(), 3);
}

/// The same panel on MySQL with a case-insensitive collation: every look-up finds the stored
/// spelling and a create in another case is a duplicate.
#[tokio::test]
async fn mysql_usernames_are_case_insensitive() {
    let emu = marzban::spawn(Config {
        usernames: marzban::Usernames::CaseInsensitive,
        ..Config::default()
    })
    .await
    .unwrap();
    let token = login(&emu).await;
    create(&emu, &token, create_body("TG_900004")).await;
    let (status, user) = call(
        &emu,
        &token,
        reqwest::Method::GET,
        "/api/user/tg_900004",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["username"], "TG_900004", "the stored spelling");
    let (status, body) = create(&emu, &token, create_body("tg_900004")).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::CONFLICT,
            json!({"detail": "User already exists"})
        )
    );
    let (status, user) = call(
        &emu,
        &token,
        reqwest::Method::PUT,
        "/api/user/Tg_900004",
        Some(json!({"expire": future(60)})),
    )
    .await;
    assert_eq!(
        (status, user["expire"].clone()),
        (StatusCode::OK, json!(future(60)))
    );
    assert_eq!(emu.users().len(), 1);
    assert!(emu.user("tg_900004").is_some());
}

/// A `PUT` with `proxies` keeps the ids it is given, generates one only for a protocol sent
/// without it, and deletes the protocols it does not name.
#[tokio::test]
async fn put_with_proxies_keeps_the_given_ids() {
    let emu = spawn().await;
    let token = login(&emu).await;
    let mut body = create_body("tg_3");
    body["proxies"] = json!({"vmess": {}});
    body["inbounds"] = json!({"vmess": []});
    create(&emu, &token, body).await;
    let vmess = emu.user("tg_3").unwrap().proxies["vmess"]["id"].clone();

    let (status, user) = call(
        &emu,
        &token,
        reqwest::Method::PUT,
        "/api/user/tg_3",
        Some(json!({"proxies": {"vmess": {"id": vmess}, "vless": {"flow": "xtls-rprx-vision"}}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["proxies"]["vmess"]["id"], vmess, "the given id kept");
    let vless = user["proxies"]["vless"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        user["inbounds"]["vless"],
        json!(["VLESS TCP REALITY", "VLESS GRPC REALITY"])
    );
    assert_eq!(user["inbounds"]["vmess"], json!(["VMess TCP"]));
    assert_eq!(user["links"].as_array().unwrap().len(), 3);

    call(
        &emu,
        &token,
        reqwest::Method::PUT,
        "/api/user/tg_3",
        Some(json!({"proxies": {"vless": {"id": vless}}})),
    )
    .await;
    let stored = emu.user("tg_3").unwrap();
    assert_eq!(stored.vless_id(), Some(vless.as_str()));
    assert!(!stored.proxies.contains_key("vmess"), "not named, deleted");
}

/// A fault aimed at one route lets the others pass, and untargeted faults pass readiness
/// probes (`GET /api/admin`) by.
#[tokio::test]
async fn faults_can_aim_at_one_route_and_spare_readiness_probes() {
    let emu = spawn().await;
    let token = login(&emu).await;
    emu.push_fault_on(route::CREATE_USER, Fault::InternalError, 1);
    emu.push_fault(Fault::Status { status: 503 }, 1);
    let get = |path: &'static str| call(&emu, &token, reqwest::Method::GET, path, None);
    assert_eq!(
        get("/api/admin").await.0,
        StatusCode::OK,
        "the probe passes"
    );
    assert_eq!(
        get("/api/users").await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "the untargeted fault"
    );
    assert_eq!(get("/api/users").await.0, StatusCode::OK);
    assert_eq!(
        create(&emu, &token, create_body("tg_4")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        create(&emu, &token, create_body("tg_4")).await.0,
        StatusCode::OK
    );
}
