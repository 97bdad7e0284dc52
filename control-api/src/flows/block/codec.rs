//! Packing a node's batch into one block's columns, and unpacking what a filter accepts.

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use weft_model::flow::{
    Criterion, DnsInfo, DropReason, FlowFilter, FlowRecord, FlowType, HttpHeader, HttpInfo, L7Info,
    Peer, Protocol, Side, TcpFlags, Verdict,
};
use weft_model::labels::Labels;

use super::edges::{EdgeAgg, EdgeInput, EdgeMap};
use super::keys::KeySet;
use super::NewFlow;
use super::{record_id, MAX_FLOWS};

/// The packed columns. Indexes into `dict` are plain for required strings and `+ 1` for
/// optional ones (0 is "none").
#[derive(Clone, PartialEq, prost::Message)]
struct Packed {
    #[prost(string, repeated, tag = "1")]
    dict: Vec<String>,
    /// Microseconds since `base_us`.
    #[prost(int64, tag = "2")]
    base_us: i64,
    #[prost(sint64, repeated, tag = "3")]
    time_us: Vec<i64>,
    #[prost(uint32, repeated, tag = "4")]
    src_ip: Vec<u32>,
    #[prost(uint32, repeated, tag = "5")]
    src_port: Vec<u32>,
    #[prost(uint32, repeated, tag = "6")]
    src_endpoint_id: Vec<u32>,
    #[prost(uint32, repeated, tag = "7")]
    src_endpoint: Vec<u32>,
    #[prost(uint32, repeated, tag = "8")]
    src_identity: Vec<u32>,
    #[prost(uint32, repeated, tag = "9")]
    src_labels: Vec<u32>,
    #[prost(uint32, repeated, tag = "10")]
    dst_ip: Vec<u32>,
    #[prost(uint32, repeated, tag = "11")]
    dst_port: Vec<u32>,
    #[prost(uint32, repeated, tag = "12")]
    dst_endpoint_id: Vec<u32>,
    #[prost(uint32, repeated, tag = "13")]
    dst_endpoint: Vec<u32>,
    #[prost(uint32, repeated, tag = "14")]
    dst_identity: Vec<u32>,
    #[prost(uint32, repeated, tag = "15")]
    dst_labels: Vec<u32>,
    #[prost(uint32, repeated, tag = "16")]
    service_id: Vec<u32>,
    #[prost(uint32, repeated, tag = "17")]
    service: Vec<u32>,
    #[prost(uint32, repeated, tag = "18")]
    protocol: Vec<u32>,
    #[prost(uint32, repeated, tag = "19")]
    verdict: Vec<u32>,
    #[prost(uint32, repeated, tag = "20")]
    drop_reason: Vec<u32>,
    #[prost(uint32, repeated, tag = "21")]
    direction: Vec<u32>,
    #[prost(uint32, repeated, tag = "22")]
    observation_point: Vec<u32>,
    #[prost(uint32, repeated, tag = "23")]
    tcp_flags: Vec<u32>,
    #[prost(uint64, repeated, tag = "24")]
    bytes: Vec<u64>,
    #[prost(uint64, repeated, tag = "25")]
    packets: Vec<u64>,
    #[prost(uint64, repeated, tag = "26")]
    count: Vec<u64>,
    /// L7 columns: empty when no flow of the block is an L7 record (and in blocks written
    /// before they existed); else one per flow, `l7_method` 0 for an L3/L4 record.
    #[prost(uint32, repeated, tag = "27")]
    l7_method: Vec<u32>,
    #[prost(uint32, repeated, tag = "28")]
    l7_url: Vec<u32>,
    #[prost(uint32, repeated, tag = "29")]
    l7_protocol: Vec<u32>,
    #[prost(uint32, repeated, tag = "30")]
    l7_code: Vec<u32>,
    #[prost(uint64, repeated, tag = "31")]
    l7_latency_us: Vec<u64>,
    /// DNS columns: empty when no flow of the block is a DNS record; else one per flow,
    /// `dns_query` 0 for any other record. Lists are stored joined by ','.
    #[prost(uint32, repeated, tag = "32")]
    dns_query: Vec<u32>,
    #[prost(uint32, repeated, tag = "33")]
    dns_qtypes: Vec<u32>,
    #[prost(uint32, repeated, tag = "34")]
    dns_rcode: Vec<u32>,
    #[prost(uint32, repeated, tag = "35")]
    dns_ips: Vec<u32>,
    #[prost(uint32, repeated, tag = "36")]
    dns_ttl: Vec<u32>,
    /// With the L7 columns, when any request of the block has headers recorded: each
    /// flow's as `key: value` lines (`\n`-joined; header values have no line breaks).
    #[prost(uint32, repeated, tag = "37")]
    l7_headers: Vec<u32>,
}

/// Interns strings into a block's dictionary.
#[derive(Default)]
struct Dict {
    index: HashMap<String, u32>,
    list: Vec<String>,
}

impl Dict {
    fn put(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.list.len() as u32;
        self.list.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }

    fn opt(&mut self, s: Option<&str>) -> u32 {
        s.map_or(0, |s| self.put(s) + 1)
    }

    /// Interns a value by its display form, formatting it once per block.
    fn put_display<T: std::hash::Hash + Eq + Copy + ToString>(
        &mut self,
        seen: &mut HashMap<T, u32>,
        v: T,
    ) -> u32 {
        if let Some(&i) = seen.get(&v) {
            return i;
        }
        let i = self.put(&v.to_string());
        seen.insert(v, i);
        i
    }
}

/// A block ready to store.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub min_time: DateTime<Utc>,
    pub max_time: DateTime<Utc>,
    pub flows: usize,
    pub keys: Vec<String>,
    pub edges: Vec<EdgeAgg>,
    pub data: Vec<u8>,
}

/// Packs flows (at most [`MAX_FLOWS`]; none gives `None`).
/// A request's headers as one dictionary string: `key: value` lines.
fn join_headers(h: &[HttpHeader]) -> String {
    h.iter()
        .map(|x| format!("{}: {}", x.key, x.value))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The reverse of [`join_headers`]; a line without `": "` is a corrupt block.
fn split_headers(s: &str) -> Result<Vec<HttpHeader>, ()> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split('\n')
        .map(|l| {
            let (k, v) = l.split_once(": ").ok_or(())?;
            Ok(HttpHeader {
                key: k.to_string(),
                value: v.to_string(),
            })
        })
        .collect()
}

pub fn encode(flows: &[NewFlow]) -> Option<Encoded> {
    debug_assert!(flows.len() <= MAX_FLOWS);
    let min_time = flows.iter().map(|f| f.time).min()?;
    let max_time = flows.iter().map(|f| f.time).max()?;
    let base_us = min_time.timestamp_micros();
    let mut d = Dict::default();
    let mut ips: HashMap<IpAddr, u32> = HashMap::new();
    let mut uuids: HashMap<Uuid, u32> = HashMap::new();
    let mut uuid =
        |d: &mut Dict, u: Option<Uuid>| u.map_or(0, |u| d.put_display(&mut uuids, u) + 1);
    let mut labels_idx: HashMap<*const Labels, u32> = HashMap::new();
    let mut labels = |d: &mut Dict, l: &std::sync::Arc<Labels>| -> u32 {
        // The enrichment cache shares label sets: serialize each once per block.
        *labels_idx
            .entry(std::sync::Arc::as_ptr(l))
            .or_insert_with(|| d.put(&serde_json::to_string(&**l).unwrap_or_default()))
    };
    let mut p = Packed {
        base_us,
        ..Default::default()
    };
    let mut keys = KeySet::default();
    let mut edges = EdgeMap::default();
    let any = |kind: fn(&L7Info) -> bool| flows.iter().any(|f| f.l7.as_ref().is_some_and(kind));
    let any_http = any(|l| l.http.is_some());
    let any_dns = any(|l| l.dns.is_some());
    let any_headers = any(|l| l.http.as_ref().is_some_and(|h| !h.headers.is_empty()));
    for f in flows {
        if any_dns {
            match f.l7.as_ref().and_then(|l| l.dns.as_ref()) {
                Some(q) => {
                    p.dns_query.push(d.put(&q.query) + 1);
                    p.dns_qtypes.push(d.put(&q.qtypes.join(",")));
                    p.dns_rcode.push(u32::from(q.rcode));
                    p.dns_ips.push(d.put(&q.ips.join(",")));
                    p.dns_ttl.push(q.ttl);
                }
                None => {
                    for col in [
                        &mut p.dns_query,
                        &mut p.dns_qtypes,
                        &mut p.dns_rcode,
                        &mut p.dns_ips,
                        &mut p.dns_ttl,
                    ] {
                        col.push(0);
                    }
                }
            }
        }
        if any_http {
            match f.l7.as_ref().and_then(|l| l.http.as_ref()) {
                Some(h) => {
                    p.l7_method.push(d.put(&h.method) + 1);
                    p.l7_url.push(d.put(&h.url));
                    p.l7_protocol.push(d.put(&h.protocol));
                    p.l7_code.push(u32::from(h.code));
                    p.l7_latency_us
                        .push((h.latency_ms * 1000.0).round().max(0.0) as u64);
                    if any_headers {
                        p.l7_headers.push(d.put(&join_headers(&h.headers)));
                    }
                }
                None => {
                    p.l7_method.push(0);
                    p.l7_url.push(0);
                    p.l7_protocol.push(0);
                    p.l7_code.push(0);
                    p.l7_latency_us.push(0);
                    if any_headers {
                        p.l7_headers.push(d.put(""));
                    }
                }
            }
        }
        p.time_us.push(f.time.timestamp_micros() - base_us);
        p.src_ip.push(d.put_display(&mut ips, f.src.ip));
        p.src_port.push(u32::from(f.src.port));
        p.src_endpoint_id.push(uuid(&mut d, f.src.endpoint_id));
        p.src_endpoint.push(d.opt(f.src.endpoint_name.as_deref()));
        p.src_identity.push(f.src.identity);
        p.src_labels.push(labels(&mut d, &f.src.labels));
        p.dst_ip.push(d.put_display(&mut ips, f.dst.ip));
        p.dst_port.push(u32::from(f.dst.port));
        p.dst_endpoint_id.push(uuid(&mut d, f.dst.endpoint_id));
        p.dst_endpoint.push(d.opt(f.dst.endpoint_name.as_deref()));
        p.dst_identity.push(f.dst.identity);
        p.dst_labels.push(labels(&mut d, &f.dst.labels));
        p.service_id.push(uuid(&mut d, f.service_id));
        p.service.push(d.opt(f.service_name.as_deref()));
        p.protocol.push(u32::from(f.protocol));
        p.verdict.push(d.put(f.verdict.as_str()));
        p.drop_reason.push(d.opt(f.drop_reason.map(|r| r.as_str())));
        p.direction.push(d.put(&f.direction));
        p.observation_point.push(d.put(&f.observation_point));
        p.tcp_flags.push(u32::from(f.tcp_flags));
        p.bytes.push(f.bytes.unsigned_abs());
        p.packets.push(f.packets.unsigned_abs());
        p.count.push(f.count.unsigned_abs());
        keys.add_new(f);
        edges.add(&EdgeInput {
            src_identity: f.src.identity,
            src_labels: &f.src.labels,
            src_name: f.src.endpoint_name.as_deref(),
            dst_identity: f.dst.identity,
            dst_labels: &f.dst.labels,
            dst_name: f.dst.endpoint_name.as_deref(),
            service: f.service_id.map(|id| (id, f.service_name.as_deref())),
            verdict: f.verdict,
            dst_port: f.dst.port,
            count: f.count.unsigned_abs(),
            bytes: f.bytes.unsigned_abs(),
        });
    }
    p.dict = d.list;
    Some(Encoded {
        min_time,
        max_time,
        flows: flows.len(),
        keys: keys.into_keys(),
        edges: edges.into_edges(),
        data: prost::Message::encode_to_vec(&p),
    })
}

/// A stored flow unpacked: the API's record, its id, and the service's id (the service
/// map's vertex for flows through a load-balanced service).
#[derive(Debug, Clone)]
pub struct Decoded {
    pub record: FlowRecord,
    pub id: i64,
    pub service_id: Option<Uuid>,
}

/// A block that does not unpack (corrupt or from an incompatible writer).
#[derive(Debug, thiserror::Error)]
#[error("flow block {block}: {what}")]
pub struct CorruptBlock {
    pub block: i64,
    pub what: String,
}

/// Unpacks block `block` of `node` in `cluster`: the flows `filter` accepts and `admit`
/// (given each flow's time and id) lets through. Both are decided on the packed columns,
/// so only flows that pass are built into records: the filter is evaluated once per
/// distinct value of the block (label set, endpoint, address, ...), not once per flow.
pub fn decode(
    block: i64,
    node: &str,
    cluster: &str,
    data: &[u8],
    filter: &FlowFilter,
    mut admit: impl FnMut(DateTime<Utc>, i64) -> bool,
) -> Result<Vec<Decoded>, CorruptBlock> {
    let p: Packed = prost::Message::decode(data).map_err(|e| CorruptBlock {
        block,
        what: e.to_string(),
    })?;
    let mut b = Unpacked {
        block,
        node,
        cluster,
        p: &p,
        ips: HashMap::new(),
        labels: HashMap::new(),
        memo: HashMap::new(),
    };
    b.check()?;
    let mut out = Vec::new();
    for i in 0..p.time_us.len() {
        let time = b.time(i)?;
        let id = record_id(block, i);
        if filter.since.is_some_and(|s| time < s) || filter.until.is_some_and(|u| time >= u) {
            continue;
        }
        if !admit(time, id) {
            continue;
        }
        let mut pass = true;
        for (n, c) in filter.include.iter().enumerate() {
            if !b.matches(n, c, i)? {
                pass = false;
                break;
            }
        }
        if !pass {
            continue;
        }
        for (n, c) in filter.exclude.iter().enumerate() {
            if b.matches(filter.include.len() + n, c, i)? {
                pass = false;
                break;
            }
        }
        if pass {
            out.push(b.record(i, time, id)?);
        }
    }
    Ok(out)
}

/// Which column of a side a memoized answer is about.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Col {
    Labels,
    Endpoint,
    Ip,
    Verdict,
    Reason,
    Service,
}

/// A block being read: its columns, and what was parsed or decided per dictionary entry.
struct Unpacked<'a> {
    block: i64,
    node: &'a str,
    cluster: &'a str,
    p: &'a Packed,
    ips: HashMap<u32, IpAddr>,
    labels: HashMap<u32, Labels>,
    /// (criterion, column, dictionary index) -> does the value match.
    memo: HashMap<(usize, Col, u32), bool>,
}

impl Unpacked<'_> {
    fn bad(&self, what: impl Into<String>) -> CorruptBlock {
        CorruptBlock {
            block: self.block,
            what: what.into(),
        }
    }

    fn check(&self) -> Result<(), CorruptBlock> {
        let p = self.p;
        let n = p.time_us.len();
        let columns = [
            p.src_ip.len(),
            p.src_port.len(),
            p.src_endpoint_id.len(),
            p.src_endpoint.len(),
            p.src_identity.len(),
            p.src_labels.len(),
            p.dst_ip.len(),
            p.dst_port.len(),
            p.dst_endpoint_id.len(),
            p.dst_endpoint.len(),
            p.dst_identity.len(),
            p.dst_labels.len(),
            p.service_id.len(),
            p.service.len(),
            p.protocol.len(),
            p.verdict.len(),
            p.drop_reason.len(),
            p.direction.len(),
            p.observation_point.len(),
            p.tcp_flags.len(),
            p.bytes.len(),
            p.packets.len(),
            p.count.len(),
        ];
        if n > MAX_FLOWS || columns.iter().any(|&c| c != n) {
            return Err(self.bad(format!("columns of unequal length ({n} times)")));
        }
        let l7 = [
            p.l7_method.len(),
            p.l7_url.len(),
            p.l7_protocol.len(),
            p.l7_code.len(),
            p.l7_latency_us.len(),
        ];
        if l7.iter().any(|&c| c != l7[0]) || (l7[0] != 0 && l7[0] != n) {
            return Err(self.bad(format!("L7 columns of unequal length ({n} times)")));
        }
        if !p.l7_headers.is_empty() && p.l7_headers.len() != l7[0] {
            return Err(self.bad(format!("L7 header column of unequal length ({n} times)")));
        }
        let dns = [
            p.dns_query.len(),
            p.dns_qtypes.len(),
            p.dns_rcode.len(),
            p.dns_ips.len(),
            p.dns_ttl.len(),
        ];
        if dns.iter().any(|&c| c != dns[0]) || (dns[0] != 0 && dns[0] != n) {
            return Err(self.bad(format!("DNS columns of unequal length ({n} times)")));
        }
        Ok(())
    }

    /// The DNS query of flow `i`, if it is a DNS record.
    fn dns(&self, i: usize) -> Result<Option<DnsInfo>, CorruptBlock> {
        let p = self.p;
        let Some(query) = self.opt(p.dns_query.get(i).copied().unwrap_or(0))? else {
            return Ok(None);
        };
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        Ok(Some(DnsInfo {
            query: query.to_string(),
            qtypes: list(self.dict(p.dns_qtypes[i])?),
            rcode: u16::try_from(p.dns_rcode[i]).map_err(|_| self.bad("DNS rcode"))?,
            ips: list(self.dict(p.dns_ips[i])?),
            ttl: p.dns_ttl[i],
        }))
    }

    /// The HTTP request of flow `i`, if it is an L7 record.
    fn http(&self, i: usize) -> Result<Option<HttpInfo>, CorruptBlock> {
        let p = self.p;
        let Some(method) = self.opt(p.l7_method.get(i).copied().unwrap_or(0))? else {
            return Ok(None);
        };
        Ok(Some(HttpInfo {
            method: method.to_string(),
            url: self.dict(p.l7_url[i])?.to_string(),
            protocol: self.dict(p.l7_protocol[i])?.to_string(),
            code: u16::try_from(p.l7_code[i]).map_err(|_| self.bad("HTTP status"))?,
            latency_ms: p.l7_latency_us[i] as f64 / 1000.0,
            headers: match p.l7_headers.get(i) {
                Some(&h) => split_headers(self.dict(h)?).map_err(|()| self.bad("HTTP header"))?,
                None => Vec::new(),
            },
        }))
    }

    fn time(&self, i: usize) -> Result<DateTime<Utc>, CorruptBlock> {
        DateTime::from_timestamp_micros(self.p.base_us.saturating_add(self.p.time_us[i]))
            .ok_or_else(|| self.bad("time out of range"))
    }

    fn dict(&self, i: u32) -> Result<&str, CorruptBlock> {
        self.p
            .dict
            .get(i as usize)
            .map(String::as_str)
            .ok_or_else(|| self.bad(format!("dictionary index {i} out of range")))
    }

    /// An optional string (index + 1, 0 for none).
    fn opt(&self, i: u32) -> Result<Option<&str>, CorruptBlock> {
        if i == 0 {
            Ok(None)
        } else {
            self.dict(i - 1).map(Some)
        }
    }

    fn ip(&mut self, i: u32) -> Result<IpAddr, CorruptBlock> {
        if let Some(a) = self.ips.get(&i) {
            return Ok(*a);
        }
        let s = self.dict(i)?;
        let a: IpAddr = s.parse().map_err(|_| self.bad(format!("address {s:?}")))?;
        self.ips.insert(i, a);
        Ok(a)
    }

    fn labels(&mut self, i: u32) -> Result<&Labels, CorruptBlock> {
        if !self.labels.contains_key(&i) {
            let l: Labels = serde_json::from_str(self.dict(i)?)
                .map_err(|e| self.bad(format!("labels: {e}")))?;
            self.labels.insert(i, l);
        }
        self.labels
            .get(&i)
            .ok_or_else(|| self.bad("labels vanished"))
    }

    /// Whether criterion `c` (number `n` of the filter) matches flow `i`, with the same
    /// meaning as [`Criterion::matches`] on the record.
    fn matches(&mut self, n: usize, c: &Criterion, i: usize) -> Result<bool, CorruptBlock> {
        let p = self.p;
        let sides = |side: Side| -> &'static [bool] {
            // true: source.
            match side {
                Side::Source => &[true],
                Side::Destination => &[false],
                Side::Either => &[true, false],
            }
        };
        Ok(match c {
            Criterion::Label(side, sels) => {
                let mut any = false;
                for &src in sides(*side) {
                    let d = if src {
                        p.src_labels[i]
                    } else {
                        p.dst_labels[i]
                    };
                    any |= self.memo_of(n, Col::Labels, d, |b| {
                        let l = b.labels(d)?;
                        Ok(sels.iter().any(|s| s.matches(l)))
                    })?;
                }
                any
            }
            Criterion::Identity(side, ids) => sides(*side).iter().any(|&src| {
                ids.contains(&if src {
                    p.src_identity[i]
                } else {
                    p.dst_identity[i]
                })
            }),
            Criterion::Endpoint(side, names) => {
                let mut any = false;
                for &src in sides(*side) {
                    let d = if src {
                        p.src_endpoint[i]
                    } else {
                        p.dst_endpoint[i]
                    };
                    any |= self.memo_of(n, Col::Endpoint, d, |b| {
                        Ok(b.opt(d)?.is_some_and(|e| names.iter().any(|x| x == e)))
                    })?;
                }
                any
            }
            Criterion::Ip(side, nets) => {
                let mut any = false;
                for &src in sides(*side) {
                    let d = if src { p.src_ip[i] } else { p.dst_ip[i] };
                    any |= self.memo_of(n, Col::Ip, d, |b| {
                        let a = b.ip(d)?;
                        Ok(nets.iter().any(|net| net.contains(&a)))
                    })?;
                }
                any
            }
            Criterion::Port(side, ports) => sides(*side).iter().any(|&src| {
                let port = if src { p.src_port[i] } else { p.dst_port[i] };
                u16::try_from(port).is_ok_and(|port| ports.contains(&port))
            }),
            Criterion::Protocol(ps) => ps.contains(&Protocol::from_number(p.protocol[i])),
            Criterion::Verdict(vs) => {
                let d = p.verdict[i];
                self.memo_of(n, Col::Verdict, d, |b| {
                    Ok(b.dict(d)?.parse::<Verdict>().is_ok_and(|v| vs.contains(&v)))
                })?
            }
            Criterion::DropReason(rs) => {
                let d = p.drop_reason[i];
                self.memo_of(n, Col::Reason, d, |b| {
                    Ok(b.opt(d)?
                        .and_then(|r| r.parse::<DropReason>().ok())
                        .is_some_and(|r| rs.contains(&r)))
                })?
            }
            Criterion::Node(ns) => ns.iter().any(|x| x == self.node),
            Criterion::Cluster(cs) => cs.iter().any(|x| x == self.cluster),
            Criterion::Service(ss) => {
                let d = p.service[i];
                self.memo_of(n, Col::Service, d, |b| {
                    Ok(b.opt(d)?.is_some_and(|s| ss.iter().any(|x| x == s)))
                })?
            }
            Criterion::TcpFlags(fs) => {
                let flags = TcpFlags(p.tcp_flags[i] as u8);
                fs.iter().any(|w| flags.contains(*w))
            }
            Criterion::Type(ts) => {
                let l7 = p.l7_method.get(i).is_some_and(|&m| m != 0)
                    || p.dns_query.get(i).is_some_and(|&q| q != 0);
                ts.contains(if l7 { &FlowType::L7 } else { &FlowType::L3L4 })
            }
            Criterion::HttpMethod(_) | Criterion::HttpPath(_) | Criterion::HttpStatus(_) => {
                self.http(i)?.is_some_and(|h| c.matches_http(&h))
            }
            Criterion::DnsQuery(_) => self.dns(i)?.is_some_and(|d| c.matches_dns(&d)),
        })
    }

    fn memo_of(
        &mut self,
        n: usize,
        col: Col,
        d: u32,
        decide: impl FnOnce(&mut Self) -> Result<bool, CorruptBlock>,
    ) -> Result<bool, CorruptBlock> {
        if let Some(&m) = self.memo.get(&(n, col, d)) {
            return Ok(m);
        }
        let m = decide(self)?;
        self.memo.insert((n, col, d), m);
        Ok(m)
    }

    fn record(&mut self, i: usize, time: DateTime<Utc>, id: i64) -> Result<Decoded, CorruptBlock> {
        let p = self.p;
        let port = |v: u32| u16::try_from(v).map_err(|_| self.bad(format!("port {v}")));
        let (src_port, dst_port) = (port(p.src_port[i])?, port(p.dst_port[i])?);
        let source = Peer {
            endpoint: self.opt(p.src_endpoint[i])?.map(str::to_string),
            identity: p.src_identity[i],
            labels: self.labels(p.src_labels[i])?.clone(),
            ip: self.ip(p.src_ip[i])?,
            port: src_port,
        };
        let destination = Peer {
            endpoint: self.opt(p.dst_endpoint[i])?.map(str::to_string),
            identity: p.dst_identity[i],
            labels: self.labels(p.dst_labels[i])?.clone(),
            ip: self.ip(p.dst_ip[i])?,
            port: dst_port,
        };
        let record = FlowRecord {
            time,
            verdict: self
                .dict(p.verdict[i])?
                .parse()
                .map_err(|_| self.bad("verdict"))?,
            drop_reason: self
                .opt(p.drop_reason[i])?
                .map(str::parse)
                .transpose()
                .map_err(|_| self.bad("drop reason"))?,
            source,
            destination,
            protocol: Protocol::from_number(p.protocol[i]),
            node: self.node.to_string(),
            cluster: self.cluster.to_string(),
            service: self.opt(p.service[i])?.map(str::to_string),
            direction: self.dict(p.direction[i])?.to_string(),
            observation_point: self.dict(p.observation_point[i])?.to_string(),
            tcp_flags: TcpFlags(p.tcp_flags[i] as u8),
            bytes: p.bytes[i],
            packets: p.packets[i],
            count: p.count[i],
            kind: FlowType::L3L4,
            l7: None,
        };
        let mut record = record;
        let (http, dns) = (self.http(i)?, self.dns(i)?);
        if http.is_some() || dns.is_some() {
            record.kind = FlowType::L7;
            record.l7 = Some(L7Info { http, dns });
        }
        let service_id = self
            .opt(p.service_id[i])?
            .map(str::parse::<Uuid>)
            .transpose()
            .map_err(|_| self.bad("service id"))?;
        Ok(Decoded {
            record,
            id,
            service_id,
        })
    }
}
