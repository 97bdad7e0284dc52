//! Flow records as the API shows them, and the filter over them in the spirit of
//! `hubble observe`: parsed from query parameters, matched in memory (the live stream) and
//! translated to SQL by the control plane (stored flows). Both must agree; the control
//! plane's tests check them against each other on a table of cases.
//!
//! Filter semantics: the same parameter repeated is OR, different parameters AND, and every
//! filter parameter has a `not_` twin that excludes what it would match.
//!
//! Stable names. Verdicts: `FORWARDED`, `DROPPED`, `REDIRECTED`, `TRANSLATED`, `ERROR`.
//! Drop reasons (datapath-bpf `DROP_*` codes): 1 `POLICY_DENIED`, 2 `DENY_RULE`,
//! 3 `NO_BACKEND`, 4 `CT_FULL`, 5 `INVALID_PACKET`, 6 `FRAGMENT`, 7 `UNSUPPORTED_L3`,
//! 8 `INTERNAL`, 9 `UNKNOWN_ENDPOINT`, 11 `SPOOFED_SOURCE`, 15 `UNSUPPORTED_RULE` (nothing allowed the flow and a
//! rule Weft does not enforce would have), anything else `UNKNOWN`. Agents may send the name,
//! node-agent's human form (`policy denied`, `CT full`, `internal error`) or the number;
//! [`DropReason::from_agent`] maps all of them.

use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::labels::Labels;
use crate::selector::LabelSelector;

mod l7;
pub use l7::*;

named_enum!(
    /// What the datapath did with a flow.
    Verdict {
        Forwarded = "FORWARDED",
        Dropped = "DROPPED",
        Redirected = "REDIRECTED",
        Translated = "TRANSLATED",
        Error = "ERROR",
    }
);

named_enum!(
    /// Why a flow was dropped (datapath-bpf `DROP_*`, see the module documentation).
    DropReason {
        PolicyDenied = "POLICY_DENIED",
        DenyRule = "DENY_RULE",
        NoBackend = "NO_BACKEND",
        CtFull = "CT_FULL",
        InvalidPacket = "INVALID_PACKET",
        Fragment = "FRAGMENT",
        UnsupportedL3 = "UNSUPPORTED_L3",
        Internal = "INTERNAL",
        UnknownEndpoint = "UNKNOWN_ENDPOINT",
        UnsupportedRule = "UNSUPPORTED_RULE",
        SpoofedSource = "SPOOFED_SOURCE",
        Unknown = "UNKNOWN",
    }
);

impl Verdict {
    /// What an agent sent, in any case; unrecognised verdicts are `ERROR`.
    pub fn from_agent(s: &str) -> Verdict {
        s.trim().parse().unwrap_or(Verdict::Error)
    }
}

impl DropReason {
    /// The datapath's numeric code.
    pub fn from_code(code: u32) -> DropReason {
        match code {
            1 => DropReason::PolicyDenied,
            2 => DropReason::DenyRule,
            3 => DropReason::NoBackend,
            4 => DropReason::CtFull,
            5 => DropReason::InvalidPacket,
            6 => DropReason::Fragment,
            7 => DropReason::UnsupportedL3,
            8 => DropReason::Internal,
            9 => DropReason::UnknownEndpoint,
            15 => DropReason::UnsupportedRule,
            11 => DropReason::SpoofedSource,
            _ => DropReason::Unknown,
        }
    }

    /// What an agent sent: the stable name, node-agent's human form, or the code. `None`
    /// for "no reason" (empty or code 0).
    pub fn from_agent(s: &str) -> Option<DropReason> {
        let s = s.trim();
        if s.is_empty() || s == "0" {
            return None;
        }
        if let Ok(code) = s.parse::<u32>() {
            return Some(DropReason::from_code(code));
        }
        let norm = s.to_ascii_uppercase().replace([' ', '-'], "_");
        Some(match norm.as_str() {
            "INTERNAL_ERROR" => DropReason::Internal,
            other => other.parse().unwrap_or(DropReason::Unknown),
        })
    }
}

/// IP protocol; ICMPv6 counts as ICMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Other(u8),
}

impl Protocol {
    pub fn from_number(n: u32) -> Protocol {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            1 | 58 => Protocol::Icmp,
            n => Protocol::Other(u8::try_from(n).unwrap_or(u8::MAX)),
        }
    }

    /// The number stored (ICMP as 1 whatever the family).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::Other(n) => n,
        }
    }

    pub fn name(self) -> String {
        match self {
            Protocol::Tcp => "TCP".into(),
            Protocol::Udp => "UDP".into(),
            Protocol::Icmp => "ICMP".into(),
            Protocol::Other(n) => format!("IP-{n}"),
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmp" | "icmpv6" => Ok(Protocol::Icmp),
            _ => Err(format!("{s:?} is not one of tcp, udp, icmp")),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(n) = s.strip_prefix("IP-") {
            return n
                .parse::<u8>()
                .map(Protocol::Other)
                .map_err(serde::de::Error::custom);
        }
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// TCP flag bits as the datapath reports them (the TCP header's order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const NAMES: [(&'static str, u8); 6] = [
        ("FIN", 0x01),
        ("SYN", 0x02),
        ("RST", 0x04),
        ("PSH", 0x08),
        ("ACK", 0x10),
        ("URG", 0x20),
    ];

    /// A comma-separated list such as `SYN,ACK`.
    pub fn parse_list(s: &str) -> Result<TcpFlags, String> {
        let mut bits = 0u8;
        for name in s
            .split(',')
            .map(|n| n.trim_matches(crate::contract::is_query_ws))
        {
            let bit = Self::NAMES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, b)| *b)
                .ok_or_else(|| format!("{name:?} is not one of SYN, ACK, FIN, RST, PSH, URG"))?;
            bits |= bit;
        }
        Ok(TcpFlags(bits))
    }

    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(_, b)| self.0 & b != 0)
            .map(|(n, _)| *n)
            .collect()
    }

    /// True when every flag of `wanted` is set here.
    pub fn contains(self, wanted: TcpFlags) -> bool {
        self.0 & wanted.0 == wanted.0
    }
}

impl Serialize for TcpFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl<'de> Deserialize<'de> for TcpFlags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        if names.is_empty() {
            return Ok(TcpFlags(0));
        }
        TcpFlags::parse_list(&names.join(",")).map_err(serde::de::Error::custom)
    }
}

/// One side of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Peer {
    /// The endpoint's name, when the address belongs to a known endpoint.
    pub endpoint: Option<String>,
    /// Security identity (numbers below 256 are reserved: 1 host, 2 world, ...).
    pub identity: u32,
    /// The identity's labels.
    #[schema(value_type = Object)]
    pub labels: Labels,
    #[schema(value_type = String)]
    pub ip: IpAddr,
    pub port: u16,
}

/// A flow as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowRecord {
    pub time: DateTime<Utc>,
    pub verdict: Verdict,
    /// Set only for dropped flows.
    pub drop_reason: Option<DropReason>,
    pub source: Peer,
    pub destination: Peer,
    /// `TCP`, `UDP`, `ICMP` or `IP-<number>`.
    #[schema(value_type = String)]
    pub protocol: Protocol,
    pub node: String,
    pub cluster: String,
    /// The load-balanced service's name for translated flows.
    pub service: Option<String>,
    /// As the agent reports it (`ingress`, `egress`).
    pub direction: String,
    /// Where the datapath saw it: `endpoint-ingress`, `endpoint-egress`, `socket-lb`, `uplink`.
    pub observation_point: String,
    #[schema(value_type = Vec<String>, example = json!(["SYN", "ACK"]))]
    pub tcp_flags: TcpFlags,
    pub bytes: u64,
    pub packets: u64,
    /// Datapath events this record aggregates (at least 1).
    pub count: u64,
    /// `L3_L4` (the datapath's) or `L7` (one request the L7 proxy judged).
    #[serde(rename = "type", default)]
    pub kind: FlowType,
    /// Set on `L7` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7Info>,
}

/// Which side of a flow a criterion looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
    /// Either side (`port`).
    Either,
}

/// One filter parameter with all its values (OR).
#[derive(Debug, Clone, PartialEq)]
pub enum Criterion {
    Label(Side, Vec<LabelSelector>),
    Identity(Side, Vec<u32>),
    Endpoint(Side, Vec<String>),
    Ip(Side, Vec<IpNet>),
    Port(Side, Vec<u16>),
    Protocol(Vec<Protocol>),
    Verdict(Vec<Verdict>),
    DropReason(Vec<DropReason>),
    Node(Vec<String>),
    Cluster(Vec<String>),
    Service(Vec<String>),
    /// Each entry matches a flow that has all its flags.
    TcpFlags(Vec<TcpFlags>),
    Type(Vec<FlowType>),
    /// Case-insensitive.
    HttpMethod(Vec<String>),
    /// Regular expressions, found anywhere in the URL's path (as Hubble's `--http-path`).
    HttpPath(Vec<PathPattern>),
    HttpStatus(Vec<StatusMatch>),
    /// Regular expressions, found anywhere in the query's name (`dns_query`).
    DnsQuery(Vec<PathPattern>),
}

impl Criterion {
    /// True when any of the values matches.
    pub fn matches(&self, f: &FlowRecord) -> bool {
        fn sides(side: Side, f: &FlowRecord) -> Vec<&Peer> {
            match side {
                Side::Source => vec![&f.source],
                Side::Destination => vec![&f.destination],
                Side::Either => vec![&f.source, &f.destination],
            }
        }
        match self {
            Criterion::Label(side, sels) => sides(*side, f)
                .iter()
                .any(|p| sels.iter().any(|s| s.matches(&p.labels))),
            Criterion::Identity(side, ids) => {
                sides(*side, f).iter().any(|p| ids.contains(&p.identity))
            }
            Criterion::Endpoint(side, names) => sides(*side, f)
                .iter()
                .any(|p| p.endpoint.as_ref().is_some_and(|e| names.contains(e))),
            Criterion::Ip(side, nets) => sides(*side, f)
                .iter()
                .any(|p| nets.iter().any(|n| n.contains(&p.ip))),
            Criterion::Port(side, ports) => sides(*side, f).iter().any(|p| ports.contains(&p.port)),
            Criterion::Protocol(ps) => ps.contains(&f.protocol),
            Criterion::Verdict(vs) => vs.contains(&f.verdict),
            Criterion::DropReason(rs) => f.drop_reason.is_some_and(|r| rs.contains(&r)),
            Criterion::Node(ns) => ns.contains(&f.node),
            Criterion::Cluster(cs) => cs.contains(&f.cluster),
            Criterion::Service(ss) => f.service.as_ref().is_some_and(|s| ss.contains(s)),
            Criterion::TcpFlags(fs) => fs.iter().any(|w| f.tcp_flags.contains(*w)),
            Criterion::Type(ts) => ts.contains(&f.kind),
            Criterion::HttpMethod(_) | Criterion::HttpPath(_) | Criterion::HttpStatus(_) => {
                f.l7.as_ref()
                    .and_then(|l7| l7.http.as_ref())
                    .is_some_and(|h| self.matches_http(h))
            }
            Criterion::DnsQuery(_) => {
                f.l7.as_ref()
                    .and_then(|l7| l7.dns.as_ref())
                    .is_some_and(|d| self.matches_dns(d))
            }
        }
    }

    /// For the HTTP criteria: whether one of the values matches the request.
    pub fn matches_http(&self, h: &HttpInfo) -> bool {
        match self {
            Criterion::HttpMethod(ms) => ms.iter().any(|m| m.eq_ignore_ascii_case(&h.method)),
            Criterion::HttpPath(ps) => ps.iter().any(|p| p.0.is_match(h.path())),
            Criterion::HttpStatus(ss) => ss.iter().any(|s| s.matches(h.code)),
            _ => false,
        }
    }

    /// For the DNS criterion: whether one of the patterns matches the query.
    pub fn matches_dns(&self, d: &DnsInfo) -> bool {
        match self {
            Criterion::DnsQuery(ps) => ps.iter().any(|p| p.0.is_match(&d.query)),
            _ => false,
        }
    }
}

/// A parsed flow query: criteria that must all match, criteria none of which may match,
/// a time window and an optional "newest N".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowFilter {
    pub include: Vec<Criterion>,
    pub exclude: Vec<Criterion>,
    /// Inclusive.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive.
    pub until: Option<DateTime<Utc>>,
    pub last: Option<u32>,
}

/// A bad filter parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct FilterError {
    pub param: String,
    pub message: String,
}

/// Largest `last`.
pub const MAX_LAST: u32 = 1000;

/// Every filter parameter (each also as `not_<name>`), for documentation and errors.
pub const FILTER_PARAMS: &[&str] = &[
    "from_label",
    "to_label",
    "from_identity",
    "to_identity",
    "from_endpoint",
    "to_endpoint",
    "from_ip",
    "to_ip",
    "port",
    "from_port",
    "to_port",
    "protocol",
    "verdict",
    "drop_reason",
    "node",
    "cluster",
    "service",
    "tcp_flags",
    "type",
    "http_method",
    "http_path",
    "http_status",
    "dns_query",
];

impl FlowFilter {
    /// Parses query parameters (name, value) in order. `now` resolves relative times
    /// (`since=5m`). Unknown parameters are errors naming them.
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        now: DateTime<Utc>,
    ) -> Result<FlowFilter, FilterError> {
        let mut f = FlowFilter::default();
        for (name, value) in pairs {
            let err = |message: String| FilterError {
                param: name.to_string(),
                message,
            };
            // Names and values are matched against stored text, which cannot hold NUL.
            if value.contains('\0') {
                return Err(err("contains a NUL character".to_string()));
            }
            match name {
                "since" => f.since = Some(parse_time(value, now).map_err(err)?),
                "until" => f.until = Some(parse_time(value, now).map_err(err)?),
                "last" => {
                    let n: u32 = value
                        .parse()
                        .map_err(|_| err(format!("{value:?} is not a number")))?;
                    if !(1..=MAX_LAST).contains(&n) {
                        return Err(err(format!("must be between 1 and {MAX_LAST}")));
                    }
                    f.last = Some(n);
                }
                _ => {
                    let (negated, base) = match name.strip_prefix("not_") {
                        Some(b) => (true, b),
                        None => (false, name),
                    };
                    let c =
                        parse_criterion(base, value)
                            .map_err(err)?
                            .ok_or_else(|| FilterError {
                                param: name.to_string(),
                                message: format!(
                                    "unknown parameter; filters are {} (each also as not_<name>), \
                                 since, until, last",
                                    FILTER_PARAMS.join(", ")
                                ),
                            })?;
                    let list = if negated {
                        &mut f.exclude
                    } else {
                        &mut f.include
                    };
                    merge(list, c);
                }
            }
        }
        if let (Some(s), Some(u)) = (f.since, f.until) {
            if s >= u {
                return Err(FilterError {
                    param: "until".into(),
                    message: "must be after since".into(),
                });
            }
        }
        Ok(f)
    }

    /// True when the flow passes every criterion and no excluded one, and lies in the
    /// time window (`last` is a property of a query, not of one flow).
    pub fn matches(&self, f: &FlowRecord) -> bool {
        self.since.is_none_or(|s| f.time >= s)
            && self.until.is_none_or(|u| f.time < u)
            && self.include.iter().all(|c| c.matches(f))
            && !self.exclude.iter().any(|c| c.matches(f))
    }
}

/// Adds a value to the criterion of the same parameter, if any (repeats are OR).
fn merge(list: &mut Vec<Criterion>, c: Criterion) {
    use Criterion as C;
    for existing in list.iter_mut() {
        match (existing, &c) {
            (C::Label(a, x), C::Label(b, y)) if a == b => return x.extend(y.iter().cloned()),
            (C::Identity(a, x), C::Identity(b, y)) if a == b => return x.extend(y),
            (C::Endpoint(a, x), C::Endpoint(b, y)) if a == b => return x.extend(y.iter().cloned()),
            (C::Ip(a, x), C::Ip(b, y)) if a == b => return x.extend(y),
            (C::Port(a, x), C::Port(b, y)) if a == b => return x.extend(y),
            (C::Protocol(x), C::Protocol(y)) => return x.extend(y),
            (C::Verdict(x), C::Verdict(y)) => return x.extend(y),
            (C::DropReason(x), C::DropReason(y)) => return x.extend(y),
            (C::Node(x), C::Node(y)) => return x.extend(y.iter().cloned()),
            (C::Cluster(x), C::Cluster(y)) => return x.extend(y.iter().cloned()),
            (C::Service(x), C::Service(y)) => return x.extend(y.iter().cloned()),
            (C::TcpFlags(x), C::TcpFlags(y)) => return x.extend(y),
            (C::Type(x), C::Type(y)) => return x.extend(y),
            (C::HttpMethod(x), C::HttpMethod(y)) => return x.extend(y.iter().cloned()),
            (C::HttpPath(x), C::HttpPath(y)) => return x.extend(y.iter().cloned()),
            (C::HttpStatus(x), C::HttpStatus(y)) => return x.extend(y),
            (C::DnsQuery(x), C::DnsQuery(y)) => return x.extend(y.iter().cloned()),
            _ => {}
        }
    }
    list.push(c);
}

fn side_of(name: &str) -> Option<(Side, &str)> {
    if let Some(rest) = name.strip_prefix("from_") {
        Some((Side::Source, rest))
    } else if let Some(rest) = name.strip_prefix("to_") {
        Some((Side::Destination, rest))
    } else {
        None
    }
}

/// `Ok(None)`: not a filter parameter.
fn parse_criterion(name: &str, value: &str) -> Result<Option<Criterion>, String> {
    let non_empty = || {
        if value.is_empty() {
            Err("must not be empty".to_string())
        } else {
            Ok(value.to_string())
        }
    };
    if let Some((side, what)) = side_of(name) {
        return Ok(Some(match what {
            "label" => Criterion::Label(
                side,
                vec![LabelSelector::parse_query(value).map_err(|e| e.message)?],
            ),
            "identity" => Criterion::Identity(
                side,
                vec![value
                    .parse()
                    .map_err(|_| format!("{value:?} is not an identity number"))?],
            ),
            "endpoint" => Criterion::Endpoint(side, vec![non_empty()?]),
            "ip" => Criterion::Ip(side, vec![parse_net(value)?]),
            "port" => Criterion::Port(side, vec![parse_port(value)?]),
            _ => return Ok(None),
        }));
    }
    Ok(Some(match name {
        "port" => Criterion::Port(Side::Either, vec![parse_port(value)?]),
        "protocol" => Criterion::Protocol(vec![value.parse()?]),
        "verdict" => Criterion::Verdict(vec![value.parse()?]),
        "drop_reason" => Criterion::DropReason(vec![value.parse()?]),
        "node" => Criterion::Node(vec![non_empty()?]),
        "cluster" => Criterion::Cluster(vec![non_empty()?]),
        "service" => Criterion::Service(vec![non_empty()?]),
        "tcp_flags" => Criterion::TcpFlags(vec![TcpFlags::parse_list(value)?]),
        "type" => Criterion::Type(vec![value.parse()?]),
        "http_method" => {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(format!("{value:?} is not an HTTP method"));
            }
            Criterion::HttpMethod(vec![value.to_string()])
        }
        "http_path" => Criterion::HttpPath(vec![pattern(&non_empty()?)?]),
        "http_status" => Criterion::HttpStatus(vec![StatusMatch::parse(value)?]),
        "dns_query" => Criterion::DnsQuery(vec![pattern(&non_empty()?)?]),
        _ => return Ok(None),
    }))
}

/// A regular expression filter. Text that is no regular expression (or too large a one)
/// matches literally: the contract cannot tell regular expressions apart, so none is
/// refused.
fn pattern(value: &str) -> Result<PathPattern, String> {
    regex::RegexBuilder::new(value)
        .size_limit(1 << 20)
        .build()
        .or_else(|_| regex::Regex::new(&regex::escape(value)))
        .map(PathPattern)
        .map_err(|e| format!("{value:?}: {e}"))
}

fn parse_port(v: &str) -> Result<u16, String> {
    v.parse()
        .map_err(|_| format!("{v:?} is not a port (0-65535)"))
}

/// An address (a /32 or /128) or a CIDR.
fn parse_net(v: &str) -> Result<IpNet, String> {
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    v.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("{v:?} is not an IP address or CIDR"))
}

/// An IPv4 CIDR as `parse_net` accepts it.
pub const IPV4_CIDR_PATTERN: &str = "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])/0*(3[0-2]|[12]?[0-9])$";

/// An IPv6 CIDR that `parse_net` accepts: the RFC 4291 text forms (full, `::`-compressed,
/// with an embedded IPv4 address in the common forms) and a prefix of 0–128 (leading zeros
/// allowed, as the parser allows them). Composed from its parts, since one literal would be unreadable.
pub fn ipv6_cidr_pattern() -> String {
    format!(
        "^({})/0*(12[0-8]|1[01][0-9]|[1-9]?[0-9])$",
        ipv6_address_body()
    )
}

/// An IPv6 address in the RFC 4291 text forms `Ipv6Addr` parses, unanchored, for patterns
/// that embed one.
pub fn ipv6_address_body() -> String {
    const H: &str = "[0-9a-fA-F]{1,4}";
    const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    let v4 = format!("{OCTET}(\\.{OCTET}){{3}}");
    let forms = [
        format!("({H}:){{7}}{H}"),
        format!("({H}:){{1,7}}:"),
        format!("({H}:){{1,6}}:{H}"),
        format!("({H}:){{1,5}}(:{H}){{1,2}}"),
        format!("({H}:){{1,4}}(:{H}){{1,3}}"),
        format!("({H}:){{1,3}}(:{H}){{1,4}}"),
        format!("({H}:){{1,2}}(:{H}){{1,5}}"),
        format!("{H}:(:{H}){{1,6}}"),
        format!(":((:{H}){{1,7}}|:)"),
        format!("({H}:){{6}}{v4}"),
        format!("({H}:){{1,5}}:{v4}"),
        format!("({H}:){{1,4}}:{H}:{v4}"),
        format!("::({H}:){{0,5}}{v4}"),
    ];
    forms.join("|")
}

crate::contract_schema! {
    /// An address or CIDR, as `parse_net` accepts it.
    IpOrCidr => crate::contract::ip_address_any_of()
        .item(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .pattern(Some(IPV4_CIDR_PATTERN)),
        )
        .item(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .pattern(Some(ipv6_cidr_pattern())),
        )
        .description(Some("An IPv4 or IPv6 address or CIDR."))
        .examples(["10.0.0.0/8", "2001:db8::/32"])
}

#[cfg(test)]
mod cidr_pattern_tests {
    use super::*;

    /// The IPv6 CIDR pattern accepts only what `parse_net` accepts.
    #[test]
    fn ipv6_cidr_pattern_agrees_with_the_parser() {
        let re = regex::Regex::new(&ipv6_cidr_pattern()).expect("pattern compiles");
        let cases = [
            ("2001:db8::/32", true),
            ("::/0", true),
            ("::1/128", true),
            ("fe80::1/64", true),
            ("1:2:3:4:5:6:7:8/128", true),
            ("1:2:3:4:5:6:7::/64", true),
            ("::2:3:4:5:6:7:8/64", true),
            ("::ffff:10.0.0.0/104", true),
            ("1:2:3:4:5:6:1.2.3.4/96", true),
            ("1::2:1.2.3.4/120", true),
            ("2001:db8::/129", false),
            ("2001:db8::/064", true),
            ("1:2:3:4:5:6:7:8:9/128", false),
            ("1::2::3/64", false),
            ("fe80::1%eth0/64", false),
            (":/0", false),
            ("2001:db8::", false),
            ("10.0.0.0/8", false),
            ("::ffff:256.0.0.0/104", false),
        ];
        for (text, want) in cases {
            assert_eq!(re.is_match(text), want, "pattern on {text}");
            if want {
                assert!(parse_net(text).is_ok(), "parse_net refuses {text}");
            }
        }
    }
}

/// The duration form of [`parse_time`] as a regular expression.
pub const DURATION_PATTERN: &str = "^[0-9]{1,6}[smhd]$";

crate::contract_schema! {
    /// A time as [`parse_time`] accepts it.
    TimeOrDuration => utoipa::openapi::schema::AnyOfBuilder::new()
        .item(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::DateTime,
                ))),
        )
        .item(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .pattern(Some(DURATION_PATTERN)),
        )
        .description(Some(
            "An RFC 3339 time, or a duration ago: 1 to 6 digits and s, m, h or d (`30s`, \
             `5m`, `2h`, `7d`).",
        ))
        .examples(["5m"])
}

/// RFC 3339, or a duration before `now`: `30s`, `5m`, `2h`, `7d`.
pub fn parse_time(v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || format!("{v:?} is neither an RFC 3339 time nor a duration like 30s, 5m, 2h, 7d");
    // The unit is the last character, whatever its width (`"5é"` must not panic).
    let (unit_at, _) = v.char_indices().last().ok_or_else(bad)?;
    let (num, unit) = v.split_at(unit_at);
    if num.is_empty() || num.len() > 6 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: i64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "s" => Duration::try_seconds(n),
        "m" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        _ => None,
    }
    .ok_or_else(bad)?;
    now.checked_sub_signed(d).ok_or_else(bad)
}

#[cfg(test)]
mod tests;
