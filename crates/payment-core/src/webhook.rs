//! Provider-neutral webhook plumbing: the request as the gateway saw it, source-address
//! allow-lists, client-address resolution behind trusted proxies, and the parsed result.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use domain::PaymentId;
use ipnet::IpNet;

use crate::ProviderId;
use crate::error::WebhookError;

/// Request headers as plain strings (names compared case-insensitively), so the gateway can
/// hand them over whatever HTTP library it uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookHeaders {
    entries: Vec<(String, String)>,
}

impl WebhookHeaders {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps repeated headers in order (several `X-Forwarded-For` lines are one list).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut headers = Self::new();
        for (name, value) in pairs {
            headers.insert(name, value);
        }
        headers
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries
            .push((name.into().to_ascii_lowercase(), value.into()));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook call as received: the TCP peer, the headers and the raw body.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    pub peer: IpAddr,
    pub headers: &'a WebhookHeaders,
    pub body: &'a [u8],
}

/// A set of networks; single addresses are /32 or /128 networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpAllowList {
    nets: Vec<IpNet>,
}

/// An entry of an address list that is neither an IP address nor a CIDR network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an IP address or CIDR network: {0:?}")]
pub struct BadNetwork(pub String);

impl IpAllowList {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            nets: nets.into_iter().map(|n| n.trunc()).collect(),
        }
    }

    /// Parses `"185.71.76.0/27, 77.75.156.11, 2a02:5180::/32"` (commas or whitespace).
    pub fn parse_list(list: &str) -> Result<Self, BadNetwork> {
        list.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(parse_network)
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is inside; IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack
    /// socket reports) count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

impl FromStr for IpAllowList {
    type Err = BadNetwork;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_list(s)
    }
}

fn parse_network(s: &str) -> Result<IpNet, BadNetwork> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| BadNetwork(s.to_owned()))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Finds the real client address of a request that may have come through our own proxies.
///
/// Only `X-Forwarded-For` is read, and only when the TCP peer is a configured trusted proxy:
/// then the client is the right-most hop that is not itself a trusted proxy (our proxy
/// appends the address it saw; hops to its left can be written by anyone). A trusted proxy's
/// request without `X-Forwarded-For` is the proxy's own, and from any other peer the header
/// is ignored. `X-Real-IP` is never read: a proxy that does not overwrite it passes the
/// client's own value through, and nothing in the request tells the two apart (issue 18).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIpResolver {
    trusted_proxies: IpAllowList,
}

impl ClientIpResolver {
    pub fn new(trusted_proxies: IpAllowList) -> Self {
        Self { trusted_proxies }
    }

    pub fn client_ip(
        &self,
        peer: IpAddr,
        headers: &WebhookHeaders,
    ) -> Result<IpAddr, WebhookError> {
        let peer = canonical(peer);
        if !self.trusted_proxies.contains(peer) {
            return Ok(peer);
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if let Some(first) = hops.first() {
            for hop in hops.iter().rev() {
                let ip = parse_hop(hop)?;
                if !self.trusted_proxies.contains(ip) {
                    return Ok(ip);
                }
            }
            // Every hop is one of our proxies: the request started inside.
            return parse_hop(first);
        }
        Ok(peer)
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Result<IpAddr, WebhookError> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .ok_or(())
                .and_then(|h| h.parse::<IpAddr>().map_err(|_| ()))
        })
        .map(canonical)
        .map_err(|_| WebhookError::MalformedForwardingHeader(hop.to_owned()))
}

/// What a verified notification is about. The status it claims is not trusted: the worker
/// re-fetches the object from the provider and applies only that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookNotification {
    pub provider: ProviderId,
    /// The provider's event name as sent (e.g. `payment.succeeded`).
    pub event: String,
    pub subject: WebhookSubject,
    /// The status the body claims; informational only.
    pub claimed_status: Option<String>,
    /// Same event about the same object → same key: the inbox's `(provider, dedupe_key)`.
    pub dedupe_key: String,
}

impl WebhookNotification {
    /// The provider's payment this notification concerns, if any.
    pub fn provider_payment_id(&self) -> Option<&str> {
        match &self.subject {
            WebhookSubject::Payment {
                provider_payment_id,
                ..
            }
            | WebhookSubject::Refund {
                provider_payment_id,
                ..
            } => Some(provider_payment_id),
            WebhookSubject::Hint { .. } | WebhookSubject::Other { .. } => None,
        }
    }

    /// Our payment id as the body claims it (unverified), if it names one.
    pub fn claimed_payment_id(&self) -> Option<PaymentId> {
        match &self.subject {
            WebhookSubject::Payment { payment_id, .. } | WebhookSubject::Hint { payment_id } => {
                *payment_id
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookSubject {
    Payment {
        provider_payment_id: String,
        /// Our id as found in the body's metadata (unverified until the re-fetch).
        payment_id: Option<PaymentId>,
    },
    Refund {
        provider_refund_id: String,
        provider_payment_id: String,
    },
    /// A reason to look, about no provider object (a crypto notice: the worker asks the chain).
    Hint {
        /// Our payment, when the sender names it (unverified).
        payment_id: Option<PaymentId>,
    },
    /// An event we do not act on (unknown or irrelevant); recorded and acknowledged.
    Other { object_id: Option<String> },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn parses_lists_and_matches() {
        let list =
            IpAllowList::parse_list("185.71.76.0/27, 77.75.156.11 2a02:5180::/32").expect("list");
        assert!(list.contains(ip("185.71.76.31")));
        assert!(!list.contains(ip("185.71.76.32")));
        assert!(list.contains(ip("77.75.156.11")));
        assert!(!list.contains(ip("77.75.156.12")));
        assert!(list.contains(ip("2a02:5180:0:1509::1")));
        assert!(!list.contains(ip("2a02:5181::1")));
        assert!(
            list.contains(ip("::ffff:185.71.76.1")),
            "v4-mapped v6 counts as v4"
        );
        assert!(IpAllowList::parse_list("10.0.0.0/33").is_err());
        assert!(IpAllowList::parse_list("example.com").is_err());
        assert!(IpAllowList::parse_list("").expect("empty").is_empty());
    }

    #[test]
    fn forwarding_headers_only_from_trusted_proxies() {
        let resolver = ClientIpResolver::new(IpAllowList::parse_list("10.0.0.0/8").expect("list"));
        let xff = WebhookHeaders::from_pairs([("X-Forwarded-For", "185.71.76.5")]);
        assert_eq!(
            resolver.client_ip(ip("203.0.113.9"), &xff),
            Ok(ip("203.0.113.9"))
        );
        assert_eq!(
            resolver.client_ip(ip("10.1.1.1"), &xff),
            Ok(ip("185.71.76.5"))
        );

        // A spoofed left-most hop is skipped: the right-most untrusted hop wins.
        let chain = WebhookHeaders::from_pairs([
            ("x-forwarded-for", "185.71.76.5, 203.0.113.9"),
            ("x-forwarded-for", "10.2.2.2"),
        ]);
        assert_eq!(
            resolver.client_ip(ip("10.1.1.1"), &chain),
            Ok(ip("203.0.113.9"))
        );

        // X-Real-IP is never believed, not even from a trusted proxy: one that does not set
        // it forwards the client's own; without X-Forwarded-For the request is the proxy's.
        let real = WebhookHeaders::from_pairs([("X-Real-IP", "[2a02:5180::7]:443")]);
        assert_eq!(
            resolver.client_ip(ip("10.1.1.1"), &real),
            Ok(ip("10.1.1.1"))
        );
        let garbage_real = WebhookHeaders::from_pairs([("X-Real-IP", "localhost")]);
        assert_eq!(
            resolver.client_ip(ip("10.1.1.1"), &garbage_real),
            Ok(ip("10.1.1.1"))
        );
        let garbage = WebhookHeaders::from_pairs([("X-Forwarded-For", "unknown")]);
        assert!(matches!(
            resolver.client_ip(ip("10.1.1.1"), &garbage),
            Err(WebhookError::MalformedForwardingHeader(_))
        ));
        assert_eq!(
            resolver.client_ip(ip("10.1.1.1"), &WebhookHeaders::new()),
            Ok(ip("10.1.1.1"))
        );
        let all_inside = WebhookHeaders::from_pairs([("X-Forwarded-For", "10.9.9.9, 10.2.2.2")]);
        assert_eq!(
            resolver.client_ip(ip("10.1.1.1"), &all_inside),
            Ok(ip("10.9.9.9"))
        );
    }
}
