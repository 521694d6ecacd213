//! The TronGrid emulator over real HTTP on loopback: the TRC20 history endpoint's query
//! rules, paging and JSON shape (§3), the solidity receipt, and the scripting controls.

use std::time::Duration;

use reqwest::StatusCode;
use sandbox::tron::{self, Config, Fault, Handle, NewTransfer, TokenInfo, USDT_MAINNET, route};
use serde_json::{Value, json};

const WALLET: &str = "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE";
const WALLET_HEX: &str = "41a2726afbecbd8e936000ed684cef5e2f5cf43008";
const PAYER: &str = "TNtbiqvanUnm4YHK9SYzRGR8ktiHRduDbM";
const FAKE: &str = "TG3XXyExBkPp9nzdajDZsozEu4BkaSJozs";

async fn spawn() -> Handle {
    tron::spawn(Config::default()).await.unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn history(chain: &Handle, account: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = http()
        .get(format!(
            "{}/v1/accounts/{account}/transactions/trc20",
            chain.base_url
        ))
        .query(query)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn values(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_owned())
        .collect()
}

/// Three confirmed transfers to the wallet at t0, t0+1s, t0+2s (values 1, 2, 3).
fn three(chain: &Handle) -> i64 {
    let t0 = 1_784_641_290_000;
    for n in 0..3 {
        chain.add_transfer(NewTransfer::usdt(PAYER, WALLET, n + 1).at(t0 + n * 1000));
    }
    t0
}

#[tokio::test]
async fn the_answer_has_trongrid_shape() {
    let chain = spawn().await;
    let tx =
        chain.add_transfer(NewTransfer::usdt(PAYER, WALLET, 195_170_000).at(1_784_641_290_000));
    let (status, body) = history(&chain, WALLET, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
    let row = &body["data"][0];
    assert_eq!(
        *row,
        json!({
            "transaction_id": tx,
            "token_info": {"symbol": "USDT", "address": USDT_MAINNET, "decimals": 6, "name": "Tether USD"},
            "block_timestamp": 1_784_641_290_000_i64,
            "from": PAYER,
            "to": WALLET,
            "type": "Transfer",
            "value": "195170000",
        })
    );
    assert_eq!(body["meta"]["page_size"], 1);
    assert!(body["meta"]["at"].is_i64());
    assert!(
        body["meta"].get("fingerprint").is_none(),
        "last page: no fingerprint"
    );
    assert!(body["meta"].get("links").is_none());
    assert_eq!(tx.len(), 64);
}

#[tokio::test]
async fn confirmed_and_unconfirmed_are_mutually_exclusive() {
    let chain = spawn().await;
    let (status, body) = history(
        &chain,
        WALLET,
        &[("only_confirmed", "true"), ("only_unconfirmed", "true")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["success"], false);
    assert_eq!(body["statusCode"], 400);
    let (status, _) = history(
        &chain,
        WALLET,
        &[("onlyConfirmed", "true"), ("onlyUnconfirmed", "true")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn limit_is_at_most_200() {
    let chain = spawn().await;
    assert_eq!(
        history(&chain, WALLET, &[("limit", "201")]).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        history(&chain, WALLET, &[("limit", "0")]).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        history(&chain, WALLET, &[("limit", "200")]).await.0,
        StatusCode::OK
    );
    assert_eq!(
        history(&chain, "Tnotanaddress", &[]).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn paging_follows_the_fingerprint_with_the_same_parameters() {
    let chain = spawn().await;
    for n in 0..5 {
        chain.add_transfer(NewTransfer::usdt(PAYER, WALLET, n + 1).at(1_784_641_290_000 + n));
    }
    let base = [("limit", "2"), ("order_by", "block_timestamp,asc")];
    let (_, page) = history(&chain, WALLET, &base).await;
    assert_eq!(values(&page), ["1", "2"]);
    let mut seen = values(&page);
    let mut fingerprint = page["meta"]["fingerprint"].as_str().unwrap().to_owned();
    assert!(
        page["meta"]["links"]["next"]
            .as_str()
            .unwrap()
            .contains("fingerprint=")
    );
    loop {
        let mut q = base.to_vec();
        q.push(("fingerprint", &fingerprint));
        let (status, page) = history(&chain, WALLET, &q).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(values(&page));
        match page["meta"]["fingerprint"].as_str() {
            Some(f) => fingerprint = f.to_owned(),
            None => {
                assert!(page["meta"].get("links").is_none());
                break;
            }
        }
    }
    assert_eq!(seen, ["1", "2", "3", "4", "5"]);
    // A fingerprint with other parameters changed is refused.
    let (status, _) = history(
        &chain,
        WALLET,
        &[("limit", "3"), ("fingerprint", &fingerprint)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn order_and_time_window() {
    let chain = spawn().await;
    let t0 = three(&chain);
    let (_, desc) = history(&chain, WALLET, &[]).await;
    assert_eq!(values(&desc), ["3", "2", "1"], "newest first by default");
    let (_, asc) = history(&chain, WALLET, &[("orderBy", "block_timestamp,asc")]).await;
    assert_eq!(values(&asc), ["1", "2", "3"]);
    let min = (t0 + 1000).to_string();
    let max = (t0 + 1000).to_string();
    let (_, from) = history(&chain, WALLET, &[("min_timestamp", &min)]).await;
    assert_eq!(values(&from), ["3", "2"]);
    let (_, camel) = history(
        &chain,
        WALLET,
        &[("minTimestamp", &min), ("maxTimestamp", &max)],
    )
    .await;
    assert_eq!(values(&camel), ["2"]);
    let (_, alias) = history(&chain, WALLET, &[("max_block_timestamp", &max)]).await;
    assert_eq!(values(&alias), ["2", "1"]);
    assert_eq!(
        history(&chain, WALLET, &[("order_by", "value,asc")])
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn direction_contract_and_confirmation_filters() {
    let chain = spawn().await;
    chain.add_transfer(NewTransfer::usdt(PAYER, WALLET, 1));
    chain.add_transfer(NewTransfer::usdt(WALLET, PAYER, 2));
    chain.add_transfer(NewTransfer::usdt(PAYER, WALLET, 3).token(TokenInfo::fake_usdt(FAKE)));
    chain.add_transfer(NewTransfer::usdt(PAYER, WALLET, 4).unconfirmed(None));
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let (_, all) = history(&chain, WALLET, &[]).await;
    assert_eq!(sorted(values(&all)), ["1", "2", "3", "4"]);
    let (_, to) = history(&chain, WALLET, &[("only_to", "true")]).await;
    assert_eq!(sorted(values(&to)), ["1", "3", "4"]);
    let (_, from) = history(&chain, WALLET, &[("onlyFrom", "true")]).await;
    assert_eq!(values(&from), ["2"]);
    let (_, usdt) = history(
        &chain,
        WALLET,
        &[("contract_address", USDT_MAINNET), ("only_to", "true")],
    )
    .await;
    assert_eq!(sorted(values(&usdt)), ["1", "4"]);
    let (_, fake) = history(&chain, WALLET, &[("contractAddress", FAKE)]).await;
    assert_eq!(values(&fake), ["3"]);
    assert_eq!(
        fake["data"][0]["token_info"]["symbol"], "USDT",
        "fakes call themselves USDT"
    );
    let (_, confirmed) = history(
        &chain,
        WALLET,
        &[("only_confirmed", "true"), ("only_to", "true")],
    )
    .await;
    assert_eq!(sorted(values(&confirmed)), ["1", "3"]);
    let (_, unconfirmed) = history(&chain, WALLET, &[("only_unconfirmed", "true")]).await;
    assert_eq!(values(&unconfirmed), ["4"]);
    // The hex form of the address names the same account.
    let (status, hex) = history(&chain, WALLET_HEX, &[("only_to", "true")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sorted(values(&hex)), ["1", "3", "4"]);
}

#[tokio::test]
async fn a_transfer_confirms_after_its_delay() {
    let chain = spawn().await;
    chain.add_transfer(
        NewTransfer::usdt(PAYER, WALLET, 7).unconfirmed(Some(Duration::from_millis(300))),
    );
    let q = [("only_confirmed", "true")];
    assert!(values(&history(&chain, WALLET, &q).await.1).is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(values(&history(&chain, WALLET, &q).await.1), ["7"]);
}

#[tokio::test]
async fn api_key_when_configured() {
    let chain = tron::spawn(Config {
        api_key: Some("k-123".into()),
        ..Config::default()
    })
    .await
    .unwrap();
    let url = format!("{}/v1/accounts/{WALLET}/transactions/trc20", chain.base_url);
    let without = http().get(&url).send().await.unwrap();
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED);
    let wrong = http()
        .get(&url)
        .header("TRON-PRO-API-KEY", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = http()
        .get(&url)
        .header("TRON-PRO-API-KEY", "k-123")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    let seen = chain.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].api_key.as_deref(), Some("k-123"));
    assert_eq!(seen[2].route, route::TRC20_HISTORY);
}

#[tokio::test]
async fn scripted_rate_limits_and_server_errors() {
    let chain = spawn().await;
    chain.push_fault(Fault::RateLimited { status: 403 }, 1);
    chain.push_fault(Fault::RateLimited { status: 429 }, 1);
    chain.push_fault(Fault::ServerError { status: 503 }, 1);
    let (status, body) = history(&chain, WALLET, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({
            "success": false,
            "error": "The key exceeds the frequency limit(15), and the query server is suspended for 30s",
            "statusCode": 403,
        })
    );
    let (status, body) = history(&chain, WALLET, &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["statusCode"], 429);
    let response = http()
        .get(format!(
            "{}/v1/accounts/{WALLET}/transactions/trc20",
            chain.base_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(history(&chain, WALLET, &[]).await.0, StatusCode::OK);
    let statuses: Vec<u16> = chain.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 429, 503, 200]);
}

#[tokio::test]
async fn transaction_info_only_for_confirmed_transactions() {
    let chain = spawn().await;
    let confirmed = chain.add_transfer(NewTransfer::usdt(PAYER, WALLET, 5_000_123));
    let pending = chain.add_transfer(NewTransfer::usdt(PAYER, WALLET, 1).unconfirmed(None));
    let info = |tx: String| {
        let url = format!("{}/walletsolidity/gettransactioninfobyid", chain.base_url);
        async move {
            let r = http()
                .post(url)
                .json(&json!({ "value": tx }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    let body = info(confirmed.clone()).await;
    assert_eq!(body["id"], json!(confirmed));
    assert_eq!(body["receipt"]["result"], "SUCCESS");
    assert_eq!(
        body["contract_address"],
        "41a614f803b6fd780986a42c78ec9c7f77e6ded13c"
    );
    assert_eq!(
        body["log"][0]["topics"][0],
        "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
    );
    assert_eq!(body["log"][0]["data"], json!(format!("{:064x}", 5_000_123)));
    assert_eq!(info(pending.clone()).await, json!({}));
    assert_eq!(info("00".repeat(32)).await, json!({}));
    assert!(chain.confirm(&pending));
    assert_eq!(info(pending).await["receipt"]["result"], "SUCCESS");
    assert_eq!(chain.request_count(route::TX_INFO), 4);
}

#[tokio::test]
async fn the_control_api_sends_transfers_and_faults() {
    let chain = spawn().await;
    let r = http()
        .post(format!("{}/sandbox/tron/transfers", chain.base_url))
        .json(&json!({"from": PAYER, "to": WALLET, "value": "10000417"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let tx = r.json::<Value>().await.unwrap()["transaction_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = history(&chain, WALLET, &[("only_confirmed", "true")]).await;
    assert_eq!(body["data"][0]["transaction_id"], json!(tx));
    assert_eq!(body["data"][0]["token_info"]["address"], USDT_MAINNET);
    let r = http()
        .post(format!("{}/sandbox/tron/faults", chain.base_url))
        .json(&json!({"kind": "rate_limited", "status": 429, "times": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        history(&chain, WALLET, &[]).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    http()
        .delete(format!("{}/sandbox/tron/faults", chain.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(history(&chain, WALLET, &[]).await.0, StatusCode::OK);
    chain.stop().await;
}
