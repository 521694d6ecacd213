//! TronGrid's JSON (shared/reference/external-apis.md §3), kept apart from our types.

use serde::Deserialize;

/// One page of `GET /v1/accounts/{address}/transactions/trc20`.
#[derive(Debug, Clone, Deserialize)]
pub struct Trc20Page {
    #[serde(default)]
    pub data: Vec<Trc20Transfer>,
    #[serde(default)]
    pub success: bool,
    #[serde(default)]
    pub meta: Option<Meta>,
}

/// A TRC20 event row. `value` is a decimal string in the token's base units.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Trc20Transfer {
    pub transaction_id: String,
    pub token_info: TokenInfo,
    /// Milliseconds.
    pub block_timestamp: i64,
    pub from: String,
    pub to: String,
    /// `Transfer` normally (`Approval` rows may appear).
    #[serde(rename = "type", default)]
    pub kind: String,
    pub value: String,
}

impl Trc20Transfer {
    /// `value` in base units, when it is a positive amount that fits our minor units.
    pub fn amount_minor(&self) -> Option<i64> {
        self.value
            .parse::<u128>()
            .ok()
            .and_then(|v| i64::try_from(v).ok())
            .filter(|v| *v > 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenInfo {
    #[serde(default)]
    pub symbol: Option<String>,
    /// The token contract, base58.
    pub address: String,
    #[serde(default)]
    pub decimals: Option<u32>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub at: Option<i64>,
    #[serde(default)]
    pub page_size: Option<u32>,
    /// Absent on the last page.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// TronGrid's error body (`{"success":false,"error":"…","statusCode":403}`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(rename = "statusCode", default)]
    pub status_code: Option<u16>,
}

/// `POST /walletsolidity/gettransactioninfobyid`: `{}` when unknown or not yet solidified.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TransactionInfo {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "blockNumber", default)]
    pub block_number: Option<i64>,
    #[serde(rename = "blockTimeStamp", default)]
    pub block_timestamp: Option<i64>,
    #[serde(default)]
    pub receipt: Option<Receipt>,
    /// `FAILED` on failure.
    #[serde(default)]
    pub result: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Receipt {
    /// `SUCCESS`, `REVERT`, `OUT_OF_ENERGY`, …
    #[serde(default)]
    pub result: Option<String>,
}
