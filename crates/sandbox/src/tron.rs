//! A stateful, in-memory TronGrid emulator (shared/reference/external-apis.md §3).
//!
//! It serves what the crypto provider uses:
//! - `GET /v1/accounts/{address}/transactions/trc20` with TronGrid's query parameters
//!   (snake_case or camelCase): `only_confirmed` / `only_unconfirmed` (both → 400),
//!   `only_to` / `only_from`, `limit` (default 20, at most 200), `fingerprint` paging,
//!   `order_by` (`block_timestamp,desc` default | `block_timestamp,asc`), `min_timestamp` /
//!   `max_timestamp` (and the `*_block_timestamp` aliases), `contract_address`; the answer is
//!   `{"data": [...], "success": true, "meta": {"at", "page_size", "fingerprint", "links"}}`
//!   with `fingerprint`/`links` absent on the last page;
//! - `POST /walletsolidity/gettransactioninfobyid` (`{"value": "<txid>"}`): a minimal receipt
//!   (`receipt.result = "SUCCESS"`) for a confirmed transaction, `{}` otherwise.
//!
//! Where §3 is silent the emulator is strict, so a client that passes here is safe: a `limit`
//! outside 1..=200, an unknown `order_by`, a bad address, a fingerprint reused with other
//! parameters → 400 `{"success":false,"error":…,"statusCode":400}`; a missing or wrong key when
//! [`Config::api_key`] is set → 401 (TronGrid's exact wording for bad keys is unverified).
//!
//! Tests "send" transfers ([`Emulator::add_transfer`], USDT or any other token, confirmed at
//! once, after a delay, or by [`Emulator::confirm`]), script rate-limit and 5xx answers
//! ([`Fault`]), require an API key ([`Config::api_key`]) and count requests. The same is
//! available over HTTP under `/sandbox/tron/` for the demo.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use sandbox::tron::{self, NewTransfer};
//! let chain = tron::spawn(tron::Config::default()).await?;
//! let tx = chain.add_transfer(NewTransfer::usdt(
//!     "TNtbiqvanUnm4YHK9SYzRGR8ktiHRduDbM",
//!     "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE",
//!     10_000_417,
//! ));
//! let url = &chain.base_url; // the value for TRONGRID_API_URL
//! # let _ = (tx, url); Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::server::{Listen, serve};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// USDT on TRON mainnet.
pub const USDT_MAINNET: &str = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t";
/// The largest `limit` TronGrid accepts.
pub const MAX_LIMIT: usize = 200;
const DEFAULT_LIMIT: usize = 20;
/// Header carrying the API key.
pub const API_KEY_HEADER: &str = "TRON-PRO-API-KEY";
/// Rough mainnet block height at `GENESIS_MS + 3 s × n`, for plausible block numbers.
const GENESIS_MS: i64 = 1_529_891_469_000;

/// Route labels as recorded in [`RequestRecord::route`].
pub mod route {
    pub const TRC20_HISTORY: &str = "GET /v1/accounts/{address}/transactions/trc20";
    pub const TX_INFO: &str = "POST /walletsolidity/gettransactioninfobyid";
}

/// Emulator settings; `Config::default()` suits tests.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free one.
    pub bind: SocketAddr,
    /// When set, every API request must carry `TRON-PRO-API-KEY` with this value (else 401).
    pub api_key: Option<String>,
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: None,
            workers: 1,
        }
    }
}

/// A token as TronGrid describes it in `token_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub symbol: String,
    /// The token contract (base58).
    pub address: String,
    pub decimals: u32,
    pub name: String,
}

impl TokenInfo {
    /// Tether USD on mainnet.
    pub fn usdt() -> Self {
        Self {
            symbol: "USDT".into(),
            address: USDT_MAINNET.into(),
            decimals: 6,
            name: "Tether USD".into(),
        }
    }

    /// A token that calls itself "USDT" from another contract (they exist on mainnet).
    pub fn fake_usdt(contract: impl Into<String>) -> Self {
        Self {
            address: contract.into(),
            ..Self::usdt()
        }
    }
}

/// A transfer to put on the emulated chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTransfer {
    /// Random when absent. Several rows may share one transaction (one tx, many events).
    #[serde(default)]
    pub transaction_id: Option<String>,
    #[serde(default = "TokenInfo::usdt")]
    pub token: TokenInfo,
    pub from: String,
    pub to: String,
    /// Base units as a decimal string (any size: fake tokens send absurd values).
    pub value: String,
    /// Milliseconds; now when absent.
    #[serde(default)]
    pub block_timestamp: Option<i64>,
    /// Confirmed (solidified) at once.
    #[serde(default = "yes")]
    pub confirmed: bool,
    /// When not confirmed at once: confirmed this many milliseconds after it was added
    /// (absent = only by [`Emulator::confirm`]).
    #[serde(default)]
    pub confirm_after_ms: Option<u64>,
    /// `Transfer` normally; `Approval` rows exist too.
    #[serde(default = "transfer_kind", rename = "type")]
    pub kind: String,
}

fn yes() -> bool {
    true
}

fn transfer_kind() -> String {
    "Transfer".into()
}

impl NewTransfer {
    /// A confirmed USDT transfer of `value` micro-USDT, now.
    pub fn usdt(from: impl Into<String>, to: impl Into<String>, value: i64) -> Self {
        Self {
            transaction_id: None,
            token: TokenInfo::usdt(),
            from: from.into(),
            to: to.into(),
            value: value.to_string(),
            block_timestamp: None,
            confirmed: true,
            confirm_after_ms: None,
            kind: transfer_kind(),
        }
    }

    pub fn token(mut self, token: TokenInfo) -> Self {
        self.token = token;
        self
    }

    pub fn at(mut self, block_timestamp_ms: i64) -> Self {
        self.block_timestamp = Some(block_timestamp_ms);
        self
    }

    pub fn tx(mut self, transaction_id: impl Into<String>) -> Self {
        self.transaction_id = Some(transaction_id.into());
        self
    }

    /// Not confirmed yet; confirmed after `delay` (or by [`Emulator::confirm`] if `None`).
    pub fn unconfirmed(mut self, delay: Option<Duration>) -> Self {
        self.confirmed = false;
        self.confirm_after_ms = delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self
    }
}

/// A transfer on the emulated chain.
#[derive(Debug, Clone)]
struct Transfer {
    seq: u64,
    transaction_id: String,
    token: TokenInfo,
    from: String,
    to: String,
    value: String,
    block_timestamp: i64,
    kind: String,
    confirmed_at: Option<Instant>,
}

impl Transfer {
    fn confirmed(&self, now: Instant) -> bool {
        self.confirmed_at.is_some_and(|at| at <= now)
    }

    fn json(&self) -> Value {
        json!({
            "transaction_id": self.transaction_id,
            "token_info": self.token,
            "block_timestamp": self.block_timestamp,
            "from": self.from,
            "to": self.to,
            "type": self.kind,
            "value": self.value,
        })
    }
}

/// A scripted answer for the next API request(s), consumed in order, one per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// TronGrid's rate-limit answer with this status (403 or 429; older docs: 503).
    RateLimited { status: u16 },
    /// A bare server error (500, 502, 503…).
    ServerError { status: u16 },
}

/// One API request as the emulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub route: &'static str,
    /// The raw query string.
    pub query: String,
    pub api_key: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    transfers: Vec<Transfer>,
    next_seq: u64,
    faults: VecDeque<Fault>,
    requests: Vec<RequestRecord>,
}

/// The emulated chain and its scripting; cheap to clone.
#[derive(Debug, Clone)]
pub struct Emulator {
    config: Arc<Config>,
    state: Arc<Mutex<State>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not take the emulator down for the others.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn random_txid() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

impl Emulator {
    pub fn new(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Puts a transfer on the chain and returns its transaction id.
    pub fn add_transfer(&self, new: NewTransfer) -> String {
        let now = Instant::now();
        let confirmed_at = if new.confirmed {
            Some(now)
        } else {
            new.confirm_after_ms
                .map(|ms| now + Duration::from_millis(ms))
        };
        let transaction_id = new
            .transaction_id
            .map(|t| t.to_ascii_lowercase())
            .unwrap_or_else(random_txid);
        let mut state = self.state();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.transfers.push(Transfer {
            seq,
            transaction_id: transaction_id.clone(),
            token: new.token,
            from: new.from,
            to: new.to,
            value: new.value,
            block_timestamp: new.block_timestamp.unwrap_or_else(now_ms),
            kind: new.kind,
            confirmed_at,
        });
        transaction_id
    }

    /// Confirms every row of `transaction_id` now; false if there is none.
    pub fn confirm(&self, transaction_id: &str) -> bool {
        let now = Instant::now();
        let mut found = false;
        for t in self
            .state()
            .transfers
            .iter_mut()
            .filter(|t| t.transaction_id.eq_ignore_ascii_case(transaction_id))
        {
            t.confirmed_at = Some(t.confirmed_at.map_or(now, |at| at.min(now)));
            found = true;
        }
        found
    }

    /// The next `times` API requests meet `fault`.
    pub fn push_fault(&self, fault: Fault, times: usize) {
        self.state()
            .faults
            .extend(std::iter::repeat_n(fault, times));
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Every API request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().requests.clone()
    }

    /// API requests to `route` so far.
    pub fn request_count(&self, route: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.route == route)
            .count()
    }

    /// Registers the API and the control routes on an actix app.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(self.clone()))
            .route(
                "/v1/accounts/{address}/transactions/trc20",
                web::get().to(http::history),
            )
            .route(
                "/walletsolidity/gettransactioninfobyid",
                web::post().to(http::tx_info),
            )
            .service(web::scope("/sandbox/tron").configure(control::routes));
    }

    /// Checks the key and takes the next scripted fault, recording the request.
    fn gate(&self, route: &'static str, req: &HttpRequest) -> Option<HttpResponse> {
        let api_key = req
            .headers()
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut state = self.state();
        let answer = if self
            .config
            .api_key
            .as_ref()
            .is_some_and(|k| api_key.as_deref() != Some(k.as_str()))
        {
            Some(error(StatusCode::UNAUTHORIZED, "ApiKey not exists"))
        } else {
            state.faults.pop_front().map(|fault| match fault {
                Fault::RateLimited { status } => error(status_code(status), &rate_limit_message()),
                Fault::ServerError { status } => HttpResponse::build(status_code(status))
                    .content_type("text/html")
                    .body("<html><body>Server Error</body></html>"),
            })
        };
        state.requests.push(RequestRecord {
            route,
            query: req.query_string().to_owned(),
            api_key,
            status: answer.as_ref().map_or(200, |a| a.status().as_u16()),
        });
        answer
    }

    fn set_last_status(&self, status: StatusCode) {
        if let Some(last) = self.state().requests.last_mut() {
            last.status = status.as_u16();
        }
    }
}

fn rate_limit_message() -> String {
    "The key exceeds the frequency limit(15), and the query server is suspended for 30s".into()
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// TronGrid's error shape.
fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "success": false,
        "error": message,
        "statusCode": status.as_u16(),
    }))
}

/// Base58check (Bitcoin alphabet) as TRON addresses use it.
pub mod address {
    use super::{Digest, Sha256};

    const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

    /// The 21-byte payload (0x41 + 20 bytes) of a valid `T…` address.
    pub fn decode(address: &str) -> Option<Vec<u8>> {
        let mut bytes: Vec<u8> = Vec::new();
        for c in address.bytes() {
            let mut carry = ALPHABET.iter().position(|&a| a == c)? as u32;
            for b in bytes.iter_mut().rev() {
                carry += u32::from(*b) * 58;
                *b = (carry & 0xff) as u8;
                carry >>= 8;
            }
            while carry > 0 {
                bytes.insert(0, (carry & 0xff) as u8);
                carry >>= 8;
            }
        }
        let zeros = address.bytes().take_while(|&c| c == b'1').count();
        let mut full = vec![0u8; zeros];
        full.extend(bytes);
        if full.len() != 25 || full[0] != 0x41 {
            return None;
        }
        let (payload, check) = full.split_at(21);
        (checksum(payload) == check).then(|| payload.to_vec())
    }

    /// Base58check of a 21-byte payload.
    pub fn encode(payload: &[u8]) -> String {
        let mut data = payload.to_vec();
        data.extend_from_slice(&checksum(payload));
        let mut digits: Vec<u8> = Vec::new();
        for &byte in &data {
            let mut carry = u32::from(byte);
            for d in digits.iter_mut() {
                carry += u32::from(*d) << 8;
                *d = (carry % 58) as u8;
                carry /= 58;
            }
            while carry > 0 {
                digits.push((carry % 58) as u8);
                carry /= 58;
            }
        }
        let zeros = data.iter().take_while(|&&b| b == 0).count();
        std::iter::repeat_n('1', zeros)
            .chain(digits.iter().rev().map(|&d| ALPHABET[d as usize] as char))
            .collect()
    }

    fn checksum(payload: &[u8]) -> [u8; 4] {
        let twice = Sha256::digest(Sha256::digest(payload));
        [twice[0], twice[1], twice[2], twice[3]]
    }

    /// A `T…` address, or the base58 form of a `41…` hex address.
    pub fn normalize(address: &str) -> Option<String> {
        if address.len() == 42 && address.starts_with("41") {
            let bytes = (0..21)
                .map(|i| u8::from_str_radix(address.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            return Some(encode(&bytes));
        }
        decode(address).map(|_| address.to_owned())
    }

    /// The `41…` hex form of a valid address.
    pub fn to_hex(address: &str) -> Option<String> {
        decode(address).map(|p| p.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// The history query, parsed with TronGrid's names and aliases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HistoryQuery {
    only_confirmed: bool,
    only_unconfirmed: bool,
    only_to: bool,
    only_from: bool,
    limit: usize,
    ascending: bool,
    min_timestamp: Option<i64>,
    max_timestamp: Option<i64>,
    contract_address: Option<String>,
}

/// Where the next page starts: after this (block_timestamp, seq), for this exact query.
#[derive(Debug, Serialize, Deserialize)]
struct Fingerprint {
    after: (i64, u64),
    query: HistoryQuery,
}

mod http {
    use super::*;

    fn param<'a>(params: &'a HashMap<String, String>, names: &[&str]) -> Option<&'a str> {
        names
            .iter()
            .find_map(|n| params.get(*n))
            .map(String::as_str)
    }

    fn flag(params: &HashMap<String, String>, names: &[&str]) -> Result<bool, String> {
        match param(params, names) {
            None => Ok(false),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" | "" => Ok(false),
                _ => Err(format!("invalid boolean for {}: {v}", names[0])),
            },
        }
    }

    fn int(params: &HashMap<String, String>, names: &[&str]) -> Result<Option<i64>, String> {
        param(params, names)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("invalid number for {}: {v}", names[0]))
            })
            .transpose()
    }

    fn parse_query(params: &HashMap<String, String>) -> Result<HistoryQuery, String> {
        let only_confirmed = flag(params, &["only_confirmed", "onlyConfirmed"])?;
        let only_unconfirmed = flag(params, &["only_unconfirmed", "onlyUnconfirmed"])?;
        if only_confirmed && only_unconfirmed {
            return Err("only_confirmed and only_unconfirmed cannot be both true".into());
        }
        let limit = match int(params, &["limit"])? {
            None => DEFAULT_LIMIT,
            Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => n as usize,
            Some(n) => return Err(format!("limit must be between 1 and {MAX_LIMIT}, got {n}")),
        };
        let ascending = match param(params, &["order_by", "orderBy"]) {
            None | Some("block_timestamp,desc") => false,
            Some("block_timestamp,asc") => true,
            Some(other) => return Err(format!("invalid order_by: {other}")),
        };
        let contract_address = param(params, &["contract_address", "contractAddress"])
            .map(|c| {
                super::address::normalize(c).ok_or_else(|| format!("invalid contract_address: {c}"))
            })
            .transpose()?;
        Ok(HistoryQuery {
            only_confirmed,
            only_unconfirmed,
            only_to: flag(params, &["only_to", "onlyTo"])?,
            only_from: flag(params, &["only_from", "onlyFrom"])?,
            limit,
            ascending,
            min_timestamp: int(
                params,
                &[
                    "min_timestamp",
                    "minTimestamp",
                    "min_block_timestamp",
                    "minBlockTimestamp",
                ],
            )?,
            max_timestamp: int(
                params,
                &[
                    "max_timestamp",
                    "maxTimestamp",
                    "max_block_timestamp",
                    "maxBlockTimestamp",
                ],
            )?,
            contract_address,
        })
    }

    pub(super) async fn history(
        req: HttpRequest,
        path: web::Path<String>,
        params: web::Query<HashMap<String, String>>,
        emulator: web::Data<Emulator>,
    ) -> HttpResponse {
        if let Some(answer) = emulator.gate(route::TRC20_HISTORY, &req) {
            return answer;
        }
        let answer = history_page(&req, &path, &params, &emulator);
        emulator.set_last_status(answer.status());
        answer
    }

    fn history_page(
        req: &HttpRequest,
        account: &str,
        params: &HashMap<String, String>,
        emulator: &Emulator,
    ) -> HttpResponse {
        let Some(account) = super::address::normalize(account) else {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid address: {account}"),
            );
        };
        let query = match parse_query(params) {
            Ok(q) => q,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        let after = match param(params, &["fingerprint"]) {
            None => None,
            Some(fp) => {
                let decoded = URL_SAFE_NO_PAD
                    .decode(fp)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Fingerprint>(&b).ok());
                match decoded {
                    // TronGrid's rule: keep every other parameter unchanged while paging.
                    Some(f) if f.query == query => Some(f.after),
                    _ => return error(StatusCode::BAD_REQUEST, "invalid fingerprint"),
                }
            }
        };
        let now = Instant::now();
        let state = emulator.state();
        let mut rows: Vec<&Transfer> = state
            .transfers
            .iter()
            .filter(|t| t.to == account || t.from == account)
            .filter(|t| !query.only_to || t.to == account)
            .filter(|t| !query.only_from || t.from == account)
            .filter(|t| !query.only_confirmed || t.confirmed(now))
            .filter(|t| !query.only_unconfirmed || !t.confirmed(now))
            .filter(|t| query.min_timestamp.is_none_or(|m| t.block_timestamp >= m))
            .filter(|t| query.max_timestamp.is_none_or(|m| t.block_timestamp <= m))
            .filter(|t| {
                query
                    .contract_address
                    .as_ref()
                    .is_none_or(|c| &t.token.address == c)
            })
            .collect();
        rows.sort_by_key(|t| (t.block_timestamp, t.seq));
        if !query.ascending {
            rows.reverse();
        }
        if let Some(after) = after {
            let key = |t: &&Transfer| (t.block_timestamp, t.seq);
            rows.retain(|t| {
                if query.ascending {
                    key(t) > after
                } else {
                    key(t) < after
                }
            });
        }
        let more = rows.len() > query.limit;
        rows.truncate(query.limit);
        let data: Vec<Value> = rows.iter().map(|t| t.json()).collect();
        let mut meta = json!({ "at": now_ms(), "page_size": data.len() });
        if more && let Some(last) = rows.last() {
            let fingerprint = URL_SAFE_NO_PAD.encode(
                serde_json::to_vec(&Fingerprint {
                    after: (last.block_timestamp, last.seq),
                    query: query.clone(),
                })
                .unwrap_or_default(),
            );
            let host = req.connection_info().host().to_owned();
            let others: String = params
                .iter()
                .filter(|(k, _)| k.as_str() != "fingerprint")
                .map(|(k, v)| format!("{k}={v}&"))
                .collect();
            meta["links"] = json!({
                "next": format!(
                    "http://{host}/v1/accounts/{account}/transactions/trc20?{others}fingerprint={fingerprint}"
                )
            });
            meta["fingerprint"] = json!(fingerprint);
        }
        HttpResponse::Ok().json(json!({ "data": data, "success": true, "meta": meta }))
    }

    #[derive(Debug, Deserialize)]
    pub(super) struct TxInfoBody {
        value: String,
    }

    pub(super) async fn tx_info(
        req: HttpRequest,
        body: web::Bytes,
        emulator: web::Data<Emulator>,
    ) -> HttpResponse {
        if let Some(answer) = emulator.gate(route::TX_INFO, &req) {
            return answer;
        }
        let Ok(body) = serde_json::from_slice::<TxInfoBody>(&body) else {
            emulator.set_last_status(StatusCode::BAD_REQUEST);
            return error(StatusCode::BAD_REQUEST, "expected {\"value\": \"<txid>\"}");
        };
        let now = Instant::now();
        let state = emulator.state();
        let rows: Vec<&Transfer> = state
            .transfers
            .iter()
            .filter(|t| t.transaction_id.eq_ignore_ascii_case(&body.value) && t.confirmed(now))
            .collect();
        let Some(first) = rows.first() else {
            // Unknown or not yet solidified: the node answers an empty object.
            return HttpResponse::Ok().json(json!({}));
        };
        let logs: Vec<Value> = rows
            .iter()
            .map(|t| {
                let topic = |a: &str| {
                    super::address::to_hex(a)
                        .map(|h| format!("{:0>64}", &h[2..]))
                        .unwrap_or_default()
                };
                let value = t.value.parse::<u128>().unwrap_or(0);
                json!({
                    "address": super::address::to_hex(&t.token.address)
                        .map(|h| h[2..].to_owned())
                        .unwrap_or_default(),
                    "topics": [
                        "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
                        topic(&t.from),
                        topic(&t.to),
                    ],
                    "data": format!("{value:064x}"),
                })
            })
            .collect();
        HttpResponse::Ok().json(json!({
            "id": first.transaction_id,
            "fee": 0,
            "blockNumber": (first.block_timestamp - GENESIS_MS).max(0) / 3000,
            "blockTimeStamp": first.block_timestamp,
            "contractResult": [""],
            "contract_address": super::address::to_hex(&first.token.address),
            "receipt": { "energy_usage_total": 14_650, "net_usage": 345, "result": "SUCCESS" },
            "log": logs,
        }))
    }
}

/// `/sandbox/tron/…`: the same scripting over HTTP, for the demo.
mod control {
    use super::*;

    pub(super) fn routes(cfg: &mut web::ServiceConfig) {
        cfg.route("/transfers", web::post().to(add))
            .route("/transfers/{txid}/confirm", web::post().to(confirm))
            .route("/faults", web::post().to(fault))
            .route("/faults", web::delete().to(clear));
    }

    async fn add(body: web::Json<NewTransfer>, emulator: web::Data<Emulator>) -> HttpResponse {
        let transaction_id = emulator.add_transfer(body.into_inner());
        HttpResponse::Ok().json(json!({ "transaction_id": transaction_id }))
    }

    async fn confirm(path: web::Path<String>, emulator: web::Data<Emulator>) -> HttpResponse {
        if emulator.confirm(&path) {
            HttpResponse::NoContent().finish()
        } else {
            error(StatusCode::NOT_FOUND, "no such transaction")
        }
    }

    #[derive(Debug, Deserialize)]
    struct FaultBody {
        #[serde(flatten)]
        fault: Fault,
        #[serde(default = "one")]
        times: usize,
    }

    fn one() -> usize {
        1
    }

    async fn fault(body: web::Json<FaultBody>, emulator: web::Data<Emulator>) -> HttpResponse {
        let body = body.into_inner();
        emulator.push_fault(body.fault, body.times);
        HttpResponse::NoContent().finish()
    }

    async fn clear(emulator: web::Data<Emulator>) -> HttpResponse {
        emulator.clear_faults();
        HttpResponse::NoContent().finish()
    }
}

/// A running emulator; dereferences to its [`Emulator`].
pub struct Handle {
    /// `http://127.0.0.1:<port>`: the value for `TRONGRID_API_URL`.
    pub base_url: String,
    pub addr: SocketAddr,
    emulator: Emulator,
    server: actix_web::dev::ServerHandle,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Deref for Handle {
    type Target = Emulator;
    fn deref(&self) -> &Emulator {
        &self.emulator
    }
}

impl Handle {
    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// Stops the server.
    pub async fn stop(&self) {
        self.server.stop(false).await;
        let task = lock(&self.task).take();
        if let Some(task) = task {
            // The server's own result was logged by the task.
            let _ = task.await;
        }
    }
}

/// Starts the emulator on the current tokio runtime and returns once it is listening.
pub async fn spawn(config: Config) -> std::io::Result<Handle> {
    let listener = std::net::TcpListener::bind(config.bind)?;
    let addr = listener.local_addr()?;
    let workers = config.workers.max(1);
    let emulator = Emulator::new(config);
    let app_emulator = emulator.clone();
    let running = serve("tron", Listen::Socket(listener), workers, move |cfg| {
        app_emulator.configure(cfg)
    })?;
    tracing::info!(%addr, "tron emulator listening");
    Ok(Handle {
        base_url: format!("http://{addr}"),
        addr,
        emulator,
        server: running.handle,
        task: Mutex::new(Some(running.task)),
    })
}

#[cfg(test)]
mod tests {
    use super::address;

    #[test]
    fn base58check_round_trips_known_addresses() {
        for a in [
            USDT,
            "TNtbiqvanUnm4YHK9SYzRGR8ktiHRduDbM",
            "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE",
        ] {
            let payload = address::decode(a).expect("valid");
            assert_eq!(address::encode(&payload), a);
        }
        assert_eq!(
            address::to_hex(USDT).as_deref(),
            Some("41a614f803b6fd780986a42c78ec9c7f77e6ded13c")
        );
        assert_eq!(
            address::normalize("41a614f803b6fd780986a42c78ec9c7f77e6ded13c").as_deref(),
            Some(USDT)
        );
        assert!(address::decode("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6u").is_none());
    }

    const USDT: &str = super::USDT_MAINNET;
}
