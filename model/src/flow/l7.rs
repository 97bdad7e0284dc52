//! The L7 side of flow records: what the agent's proxies report of each HTTP request and
//! DNS query, and the filters over it (`type`, `http_method`, `http_path`, `http_status`,
//! `dns_query`).

use serde::{Deserialize, Serialize};

named_enum!(
    /// What a flow record describes: packets the datapath saw (`L3_L4`), or one request the
    /// agent's L7 proxy judged (`L7`, with `l7`).
    FlowType {
        L3L4 = "L3_L4",
        L7 = "L7",
    }
);

#[allow(clippy::derivable_impls)] // the enum comes from `named_enum!`
impl Default for FlowType {
    fn default() -> Self {
        FlowType::L3L4
    }
}

/// An HTTP request the L7 proxy judged (Hubble's `l7.http`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HttpInfo {
    /// The request method (`GET`).
    pub method: String,
    /// `http://<host><path>`, as the client asked.
    pub url: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// The response's status: `403` for a request the policy denied; 0 when no response
    /// came.
    pub code: u16,
    /// From the request's head to the response's head.
    pub latency_ms: f64,
    /// The request's headers that the port's HTTP rules name, as Hubble shows them; a value
    /// that may be a credential (an `Authorization`, `Cookie` or `*-Token`-like name, or
    /// one a rule compares with a value) reads `[redacted]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeader>,
}

/// One request header of an L7 record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HttpHeader {
    /// Lower case.
    pub key: String,
    pub value: String,
}

impl HttpInfo {
    /// The path of `url` (without scheme, host and query).
    pub fn path(&self) -> &str {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        path.split_once('?').map_or(path, |(p, _)| p)
    }
}

/// A DNS query the DNS proxy judged (Hubble's `l7.dns`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DnsInfo {
    /// The name asked, with its final dot (`api.example.com.`), as Hubble writes it.
    pub query: String,
    /// The question's record types (`A`, `AAAA`, or the type's number).
    pub qtypes: Vec<String>,
    /// The answer's response code: 0 NOERROR, 3 NXDOMAIN, 5 REFUSED (a name no DNS rule
    /// allows is answered so by the proxy).
    pub rcode: u16,
    /// The addresses the answer gave.
    pub ips: Vec<String>,
    /// The least TTL of those addresses, in seconds (0 without addresses).
    pub ttl: u32,
}

/// The L7 part of an `L7` record: one HTTP request or one DNS query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct L7Info {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsInfo>,
}

/// A regular expression over HTTP paths (`http_path=`), compared by its text.
#[derive(Debug, Clone)]
pub struct PathPattern(pub regex::Regex);

impl PartialEq for PathPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// An HTTP status filter (`http_status=`): one code (`403`) or a class (`5+`), as Hubble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Code(u16),
    Class(u16),
}

impl StatusMatch {
    pub fn parse(v: &str) -> Result<StatusMatch, String> {
        let bad = || format!("{v:?} is not an HTTP status (`403`) or class (`4+`)");
        match v.strip_suffix('+') {
            Some(c) if c.len() == 1 => match c.parse::<u16>() {
                Ok(c @ 1..=5) => Ok(StatusMatch::Class(c)),
                _ => Err(bad()),
            },
            Some(_) => Err(bad()),
            None => match v.parse::<u16>() {
                Ok(code @ 100..=599) if v.len() == 3 => Ok(StatusMatch::Code(code)),
                _ => Err(bad()),
            },
        }
    }

    pub fn matches(self, code: u16) -> bool {
        match self {
            StatusMatch::Code(c) => c == code,
            StatusMatch::Class(c) => code / 100 == c,
        }
    }
}

/// The names an endpoint resolved through its node's DNS proxy, with the addresses the
/// answers gave (`GET …/endpoints/{e}/fqdn-cache`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FqdnCache {
    /// By name.
    pub items: Vec<FqdnCacheEntry>,
}

/// One resolved name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FqdnCacheEntry {
    /// The name, without its final dot.
    pub name: String,
    /// When the endpoint last got an answer for it.
    pub last_lookup: chrono::DateTime<chrono::Utc>,
    /// The addresses not yet expired, by address.
    pub ips: Vec<FqdnCacheIp>,
}

/// An address a name resolved to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FqdnCacheIp {
    pub ip: String,
    /// The latest answer's time plus its TTL (the agent keeps it allowed for
    /// `toFQDNs` at least its `--fqdn-min-ttl-secs`, plus a grace).
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// The cache from DNS flow records (any order): answered queries' addresses, the latest
/// expiry per name and address, without what expired before `now`.
pub fn fqdn_cache<'a>(
    records: impl IntoIterator<Item = &'a super::FlowRecord>,
    now: chrono::DateTime<chrono::Utc>,
) -> FqdnCache {
    use std::collections::BTreeMap;
    type Name = (
        chrono::DateTime<chrono::Utc>,
        BTreeMap<String, chrono::DateTime<chrono::Utc>>,
    );
    let mut names: BTreeMap<String, Name> = BTreeMap::new();
    for f in records {
        let Some(d) = f.l7.as_ref().and_then(|l| l.dns.as_ref()) else {
            continue;
        };
        if d.rcode != 0 || d.ips.is_empty() {
            continue;
        }
        let expires = f.time + chrono::Duration::seconds(i64::from(d.ttl));
        let name = d.query.trim_end_matches('.').to_string();
        let (last, ips) = names.entry(name).or_insert((f.time, BTreeMap::new()));
        *last = (*last).max(f.time);
        for ip in &d.ips {
            let e = ips.entry(ip.clone()).or_insert(expires);
            *e = (*e).max(expires);
        }
    }
    let items = names
        .into_iter()
        .filter_map(|(name, (last_lookup, ips))| {
            let ips: Vec<FqdnCacheIp> = ips
                .into_iter()
                .filter(|(_, e)| *e > now)
                .map(|(ip, expires_at)| FqdnCacheIp { ip, expires_at })
                .collect();
            (!ips.is_empty()).then_some(FqdnCacheEntry {
                name,
                last_lookup,
                ips,
            })
        })
        .collect();
    FqdnCache { items }
}

/// A DNS response code as resolvers name it (`NOERROR`, `NXDOMAIN`, `REFUSED`, …).
pub fn rcode_name(rcode: u16) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => format!("RCODE {other}"),
    }
}
