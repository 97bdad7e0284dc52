//! `weft observe`: the flows API client, its filters and the flow formats. Everything
//! about the flows contract lives here, so a change of the API touches one module:
//!
//! - `GET /v1/tenants/{t}/flows?<filters>&limit&cursor` → `{"items": [Flow…],
//!   "next_cursor"}`, newest first; with `last=N`, the newest N and no cursor;
//! - `GET /v1/tenants/{t}/flows/stream?<filters>`: Server-Sent Events, `event: flow`,
//!   data one Flow (`last=N` first sends the newest N stored, oldest first); `event:
//!   skipped` when the server dropped some for a slow reader.
//!
//! Filters are query parameters: a repeated one is OR, different ones AND, and each has a
//! `not_` form.

use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Duration, Utc};
use clap::{Arg, ArgAction, ArgMatches, Command};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{encode_query, Client};

/// (query parameter, its negation, flag, negated flag, help).
type FilterDef = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

pub const FILTERS: &[FilterDef] = &[
    (
        "from_label",
        "not_from_label",
        "from-label",
        "not-from-label",
        "Source labels match this selector (app=web,tier!=db)",
    ),
    (
        "to_label",
        "not_to_label",
        "to-label",
        "not-to-label",
        "Destination labels match this selector",
    ),
    (
        "from_identity",
        "not_from_identity",
        "from-identity",
        "not-from-identity",
        "Source security identity (number)",
    ),
    (
        "to_identity",
        "not_to_identity",
        "to-identity",
        "not-to-identity",
        "Destination security identity (number)",
    ),
    (
        "from_endpoint",
        "not_from_endpoint",
        "from-endpoint",
        "not-from-endpoint",
        "Source endpoint (name or id)",
    ),
    (
        "to_endpoint",
        "not_to_endpoint",
        "to-endpoint",
        "not-to-endpoint",
        "Destination endpoint (name or id)",
    ),
    (
        "from_ip",
        "not_from_ip",
        "from-ip",
        "not-from-ip",
        "Source IP or CIDR",
    ),
    (
        "to_ip",
        "not_to_ip",
        "to-ip",
        "not-to-ip",
        "Destination IP or CIDR",
    ),
    (
        "port",
        "not_port",
        "port",
        "not-port",
        "Source or destination port",
    ),
    (
        "from_port",
        "not_from_port",
        "from-port",
        "not-from-port",
        "Source port",
    ),
    (
        "to_port",
        "not_to_port",
        "to-port",
        "not-to-port",
        "Destination port",
    ),
    (
        "protocol",
        "not_protocol",
        "protocol",
        "not-protocol",
        "L4 protocol: tcp, udp or icmp",
    ),
    (
        "verdict",
        "not_verdict",
        "verdict",
        "not-verdict",
        "FORWARDED, DROPPED, REDIRECTED, TRANSLATED or ERROR",
    ),
    (
        "drop_reason",
        "not_drop_reason",
        "drop-reason",
        "not-drop-reason",
        "Why it was dropped: POLICY_DENIED, DENY_RULE, NO_BACKEND, CT_FULL, …",
    ),
    ("node", "not_node", "node", "not-node", "Node name"),
    (
        "cluster",
        "not_cluster",
        "cluster",
        "not-cluster",
        "Cluster name",
    ),
    (
        "service",
        "not_service",
        "service",
        "not-service",
        "Service name",
    ),
    (
        "tcp_flags",
        "not_tcp_flags",
        "tcp-flags",
        "not-tcp-flags",
        "TCP flags that must all be set, comma-separated (SYN,ACK; FIN, RST, PSH, URG)",
    ),
    (
        "type",
        "not_type",
        "type",
        "not-type",
        "L3_L4 (the datapath's) or L7 (HTTP requests and DNS queries the proxies judged)",
    ),
    (
        "http_method",
        "not_http_method",
        "http-method",
        "not-http-method",
        "HTTP method of L7 records",
    ),
    (
        "http_path",
        "not_http_path",
        "http-path",
        "not-http-path",
        "Regular expression found in the URL path of L7 records",
    ),
    (
        "http_status",
        "not_http_status",
        "http-status",
        "not-http-status",
        "HTTP status of L7 records: a code (403) or a class (5+)",
    ),
    (
        "dns_query",
        "not_dns_query",
        "dns-query",
        "not-dns-query",
        "Regular expression found in the query name of DNS records (names end with '.')",
    ),
];

const VERDICTS: [&str; 5] = ["FORWARDED", "DROPPED", "REDIRECTED", "TRANSLATED", "ERROR"];

/// The filters given on the command line, as query parameters in flag order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowFilters {
    pub pairs: Vec<(String, String)>,
}

impl clap::FromArgMatches for FlowFilters {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut indexed: Vec<(usize, String, String)> = Vec::new();
        for (param, not_param, ..) in FILTERS {
            for id in [*param, *not_param] {
                let (Some(vals), Some(idx)) = (m.get_many::<String>(id), m.indices_of(id)) else {
                    continue;
                };
                for (v, i) in vals.zip(idx) {
                    let v = if param == &"verdict" {
                        v.to_uppercase()
                    } else {
                        v.clone()
                    };
                    indexed.push((i, id.to_string(), v));
                }
            }
        }
        indexed.sort_by_key(|(i, ..)| *i);
        Ok(FlowFilters {
            pairs: indexed.into_iter().map(|(_, k, v)| (k, v)).collect(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for FlowFilters {
    fn augment_args(mut cmd: Command) -> Command {
        for (param, not_param, flag, not_flag, help) in FILTERS {
            let mut a = Arg::new(*param)
                .long(*flag)
                .action(ArgAction::Append)
                .value_name("VALUE")
                .help(*help)
                .help_heading("Filters (repeat = OR, different = AND)");
            let mut n = Arg::new(*not_param)
                .long(*not_flag)
                .action(ArgAction::Append)
                .value_name("VALUE")
                .help(format!("Exclude flows that --{flag} would match"))
                .help_heading("Filters (repeat = OR, different = AND)");
            if *param == "verdict" {
                a = a.value_parser(VERDICTS).ignore_case(true);
                n = n.value_parser(VERDICTS).ignore_case(true);
            }
            cmd = cmd.arg(a).arg(n);
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// `since` / `until`: RFC 3339 as is, or a duration ago (`30s`, `5m`, `2h`, `1d`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc).to_rfc3339());
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .with_context(|| format!("{s:?} is neither RFC 3339 time nor a duration like 5m"))?;
    let d = match unit {
        "s" => Duration::seconds(n),
        "m" => Duration::minutes(n),
        "h" => Duration::hours(n),
        "d" => Duration::days(n),
        _ => bail!("{s:?}: the unit of a duration is s, m, h or d"),
    };
    Ok((now - d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The query string of a flows request; `last` asks for the newest N.
pub fn query(
    filters: &FlowFilters,
    since: Option<&str>,
    until: Option<&str>,
    last: Option<usize>,
) -> String {
    let mut q: Vec<(&str, String)> = filters
        .pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    if let Some(s) = since {
        q.push(("since", s.to_string()));
    }
    if let Some(u) = until {
        q.push(("until", u.to_string()));
    }
    if let Some(n) = last {
        q.push(("last", n.to_string()));
    }
    encode_query(&q)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// One flow record; unknown fields are kept so `-o json` shows all the API sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    #[serde(default)]
    pub time: String,
    #[serde(default)]
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    #[serde(default)]
    pub source: Peer,
    #[serde(default)]
    pub destination: Peer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observation_point: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowFormat {
    Compact,
    Table,
    Json,
    Jsonl,
}

pub use print::{compact, table_row, TABLE_HEADERS};

/// Incremental Server-Sent Events parser: feed text, get complete (event, data) pairs.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, text: &str) -> Vec<(String, String)> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.find('\n') {
            let line: String = self.buf.drain(..=nl).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    let event = if self.event.is_empty() {
                        "message".to_string()
                    } else {
                        std::mem::take(&mut self.event)
                    };
                    out.push((event, self.data.join("\n")));
                }
                self.data.clear();
                self.event.clear();
                continue;
            }
            if line.starts_with(':') {
                continue; // comment / keep-alive
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = value.to_string(),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
        out
    }
}

/// The newest flows matching (the query says how many), oldest first.
pub async fn recent(client: &Client, q: &str) -> Result<Vec<Flow>> {
    let path = format!("{}?{q}", client.tpath("/flows")?);
    let page = client.get(&path).await?.body;
    let mut flows: Vec<Flow> = serde_json::from_value(page["items"].clone())
        .context("the flows API answered items that are not flows")?;
    flows.reverse();
    Ok(flows)
}

/// Follows the stream, calling `each` per flow until the server closes it; skipped
/// flows are told on stderr.
pub async fn follow(
    client: &Client,
    q: &str,
    mut each: impl FnMut(Flow) -> Result<()>,
) -> Result<()> {
    let path = format!("{}?{q}", client.tpath("/flows/stream")?);
    let mut resp = client
        .builder(reqwest::Method::GET, &path)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .timeout(std::time::Duration::from_secs(365 * 86_400))
        .send()
        .await
        .with_context(|| format!("cannot reach {}", client.base()))?;
    if !resp.status().is_success() {
        // Same error shape as every other call.
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        let problem = serde_json::from_slice(&bytes).unwrap_or_default();
        return Err(crate::client::ApiError {
            status,
            problem,
            what: format!("GET {path}"),
        }
        .into());
    }
    let mut parser = SseParser::default();
    let mut pending = Vec::new();
    while let Some(chunk) = resp.chunk().await.context("reading the flow stream")? {
        pending.extend_from_slice(&chunk);
        // Only whole UTF-8 goes to the parser.
        let upto = match std::str::from_utf8(&pending) {
            Ok(_) => pending.len(),
            Err(e) => e.valid_up_to(),
        };
        let text = String::from_utf8_lossy(&pending[..upto]).into_owned();
        pending.drain(..upto);
        for (event, data) in parser.push(&text) {
            match event.as_str() {
                "flow" => {
                    let flow: Flow = serde_json::from_str(&data)
                        .with_context(|| format!("a streamed flow is not a Flow: {data}"))?;
                    each(flow)?;
                }
                "skipped" => eprintln!("{}", skipped_notice(&data)),
                _ => {}
            }
        }
    }
    Ok(())
}

/// `{"skipped": n}` (or `null` when unknown) as a line for people.
pub fn skipped_notice(data: &str) -> String {
    let n = serde_json::from_str::<Value>(data)
        .ok()
        .and_then(|v| v["skipped"].as_u64());
    match n {
        Some(n) => format!("… {n} flows skipped (reading too slowly; narrow the filters)"),
        None => "… some flows skipped (reading too slowly; narrow the filters)".to_string(),
    }
}

mod print;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{FromArgMatches, Parser};
    use serde_json::json;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        f: FlowFilters,
    }

    fn parse(args: &[&str]) -> FlowFilters {
        let m = <T as clap::CommandFactory>::command()
            .try_get_matches_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap();
        FlowFilters::from_arg_matches(&m).unwrap()
    }

    #[test]
    fn flags_map_to_query_parameters() {
        let f = parse(&[
            "--from-label",
            "app=web",
            "--verdict",
            "dropped",
            "--verdict",
            "ERROR",
            "--not-to-ip",
            "10.0.0.0/8",
            "--tcp-flags",
            "SYN",
            "--to-port",
            "80",
        ]);
        assert_eq!(
            query(&f, Some("2026-11-26T14:00:00+00:00"), None, Some(20)),
            "from_label=app%3Dweb&verdict=DROPPED&verdict=ERROR&not_to_ip=10.0.0.0%2F8\
             &tcp_flags=SYN&to_port=80&since=2026-11-26T14%3A00%3A00%2B00%3A00&last=20"
        );
        assert_eq!(parse(&[]).pairs, vec![]);
        let bad = <T as clap::CommandFactory>::command().try_get_matches_from([
            "t",
            "--verdict",
            "MAYBE",
        ]);
        assert!(bad.is_err());
        // Every filter has a flag and a negated flag.
        for (p, np, ..) in FILTERS {
            assert_eq!(format!("not_{p}"), *np);
        }
    }

    #[test]
    fn times_are_absolute_or_ago() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T14:20:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_time("5m", now).unwrap(), "2026-11-26T14:15:00Z");
        assert_eq!(parse_time("1d", now).unwrap(), "2026-11-25T14:20:00Z");
        assert_eq!(
            parse_time("2026-11-26T15:00:00+01:00", now).unwrap(),
            "2026-11-26T14:00:00+00:00"
        );
        assert!(parse_time("5 minutes", now).is_err());
        assert!(parse_time("yesterday", now).is_err());
    }

    fn flow(v: Value) -> Flow {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn compact_reads_like_hubble() {
        let f = flow(json!({
            "time": "2026-11-26T14:20:01.123456Z", "verdict": "FORWARDED",
            "source": {"endpoint": "web", "identity": 4101, "ip": "10.0.1.5", "port": 43122},
            "destination": {"endpoint": "api", "ip": "10.0.2.7", "port": 80},
            "protocol": "TCP", "observation_point": "to-endpoint", "tcp_flags": ["SYN"],
            "node": "n1", "count": 1
        }));
        assert_eq!(
            compact(&f),
            "Nov 26 14:20:01.123: 10.0.1.5:43122 (web) -> 10.0.2.7:80 (api) to-endpoint FORWARDED (TCP Flags: SYN)"
        );
        let d = flow(json!({
            "time": "2026-11-26T14:20:02Z", "verdict": "DROPPED", "drop_reason": "POLICY_DENIED",
            "source": {"identity": 70000, "ip": "fd00::1", "port": 5353},
            "destination": {"ip": "10.0.2.7", "port": 53}, "protocol": "UDP",
            "observation_point": "to-endpoint", "count": 3, "future_field": true
        }));
        assert_eq!(
            compact(&d),
            "Nov 26 14:20:02.000: [fd00::1]:5353 (ID:70000) -> 10.0.2.7:53 policy-denied DROPPED (UDP) ×3"
        );
        assert_eq!(
            table_row(&d),
            vec![
                "Nov 26 14:20:02.000",
                "[fd00::1]:5353 (ID:70000)",
                "10.0.2.7:53",
                "policy-denied",
                "DROPPED",
                "UDP"
            ]
        );
        // Unknown fields survive for -o json.
        assert_eq!(serde_json::to_value(&d).unwrap()["future_field"], true);
        let icmp = flow(json!({"time": "x", "verdict": "FORWARDED",
            "source": {"ip": "10.0.0.1"}, "destination": {"ip": "10.0.0.2"}, "protocol": "ICMPv4"}));
        assert_eq!(
            compact(&icmp),
            "x: 10.0.0.1 -> 10.0.0.2  FORWARDED (ICMPv4)"
        );
        let l7 = flow(json!({
            "time": "2026-11-26T14:20:03Z", "verdict": "DROPPED", "drop_reason": "POLICY_DENIED",
            "type": "L7", "observation_point": "l7-proxy", "protocol": "TCP",
            "source": {"endpoint": "client", "ip": "10.0.1.1", "port": 40000},
            "destination": {"endpoint": "web", "ip": "10.0.1.2", "port": 8080},
            "l7": {"http": {"method": "DELETE", "url": "http://web/items/1", "protocol": "HTTP/1.1",
                            "code": 403, "latency_ms": 0.04}}
        }));
        assert_eq!(
            compact(&l7),
            "Nov 26 14:20:03.000: 10.0.1.1:40000 (client) -> 10.0.1.2:8080 (web) http-request DROPPED (HTTP/1.1 DELETE http://web/items/1 => 403 0.0ms)"
        );
        let dns = |verdict: &str, rcode: u32, ips: Value| {
            flow(json!({
                "time": "x", "verdict": verdict, "type": "L7", "protocol": "UDP",
                "source": {"endpoint": "client", "ip": "10.0.1.1", "port": 5353},
                "destination": {"ip": "10.96.0.10", "port": 53},
                "l7": {"dns": {"query": "api.example.test.", "qtypes": ["A"], "rcode": rcode,
                               "ips": ips, "ttl": 60}}
            }))
        };
        assert_eq!(
            compact(&dns("FORWARDED", 0, json!(["192.0.2.1", "192.0.2.2"]))),
            "x: 10.0.1.1:5353 (client) -> 10.96.0.10:53 dns-response FORWARDED (DNS Answer \"192.0.2.1,192.0.2.2\" TTL: 60 (Proxy api.example.test. A))"
        );
        assert_eq!(
            compact(&dns("DROPPED", 5, json!([]))),
            "x: 10.0.1.1:5353 (client) -> 10.96.0.10:53 dns-request DROPPED (DNS Query api.example.test. A => REFUSED)"
        );
    }

    #[test]
    fn sse_events_split_across_chunks() {
        assert_eq!(
            skipped_notice("{\"skipped\": 7}"),
            "… 7 flows skipped (reading too slowly; narrow the filters)"
        );
        assert!(skipped_notice("{\"skipped\": null}").starts_with("… some flows"));
        let mut p = SseParser::default();
        assert!(p.push(": keep-alive\n\nevent: fl").is_empty());
        assert!(p.push("ow\ndata: {\"a\":").is_empty());
        let got = p.push("1}\r\n\r\nevent: flow\ndata: 2\n\ndata: x\n\n");
        assert_eq!(
            got,
            vec![
                ("flow".to_string(), "{\"a\":1}".to_string()),
                ("flow".to_string(), "2".to_string()),
                ("message".to_string(), "x".to_string()),
            ]
        );
    }
}
