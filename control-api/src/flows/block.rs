//! The stored form of flows: one node's batch is one *block*, a single row whose flows are
//! packed column by column (protobuf packed varints, strings and label sets once per block
//! in a dictionary). Postgres then pays its per-row costs (heap tuple, index entries, WAL
//! record header, row-level security check) once per block instead of once per flow,
//! which is what lets one 2-core machine ingest over 100,000 flows/s; a row per flow
//! tops out near 25,000 with the indexes a query needs.
//!
//! Each block also carries what lets a query skip it without unpacking it ([`keys`]) and
//! its share of the service map ([`EdgeAgg`]). Everything here is pure: the store
//! ([`super::pg`]) moves blocks in and out of Postgres.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use weft_model::flow::{
    Criterion, DropReason, FlowFilter, FlowRecord, Peer, Protocol, Side, TcpFlags, Verdict,
};
use weft_model::labels::Labels;

use super::NewFlow;

/// Flows a block holds at most; a record's id is `block << INDEX_BITS | index`.
pub const MAX_FLOWS: usize = 1 << INDEX_BITS;
const INDEX_BITS: u32 = 16;

/// A record's id, unique across the tenant's flows and growing with ingest order.
pub fn record_id(block: i64, index: usize) -> i64 {
    (block << INDEX_BITS) | index as i64
}

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
    for f in flows {
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
        Ok(())
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
        };
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

/// Distinct values of one kind a block lists before it gives up and lists the kind's
/// wildcard instead (then every query on that kind reads the block).
const MAX_KEYS_PER_KIND: usize = 256;

/// What a block's flows contain, for skipping blocks a filter cannot match: keys
/// `<kind>:<value>`, kinds `v` verdict, `r` drop reason, `p` protocol number, `se`/`de`
/// source/destination endpoint, `si`/`di` identities, `dp` destination port, `svc` service.
/// Values are collected typed and formatted once per block.
#[derive(Default)]
struct KeySet<'a> {
    v: BTreeSet<&'static str>,
    r: BTreeSet<&'static str>,
    p: BTreeSet<u8>,
    se: BTreeSet<&'a str>,
    de: BTreeSet<&'a str>,
    si: BTreeSet<u32>,
    di: BTreeSet<u32>,
    dp: BTreeSet<u16>,
    svc: BTreeSet<&'a str>,
}

/// Inserts unless the set is already past the limit (it then stands for its wildcard).
fn add_capped<T: Ord>(set: &mut BTreeSet<T>, v: T) {
    if set.len() <= MAX_KEYS_PER_KIND {
        set.insert(v);
    }
}

impl<'a> KeySet<'a> {
    fn add_new(&mut self, f: &'a NewFlow) {
        add_capped(&mut self.v, f.verdict.as_str());
        if let Some(r) = f.drop_reason {
            add_capped(&mut self.r, r.as_str());
        }
        add_capped(&mut self.p, f.protocol);
        if let Some(e) = &f.src.endpoint_name {
            add_capped(&mut self.se, e.as_str());
        }
        if let Some(e) = &f.dst.endpoint_name {
            add_capped(&mut self.de, e.as_str());
        }
        add_capped(&mut self.si, f.src.identity);
        add_capped(&mut self.di, f.dst.identity);
        add_capped(&mut self.dp, f.dst.port);
        if let Some(s) = &f.service_name {
            add_capped(&mut self.svc, s.as_str());
        }
    }

    fn into_keys(self) -> Vec<String> {
        fn kind<T: ToString>(out: &mut Vec<String>, kind: &str, set: BTreeSet<T>) {
            if set.len() > MAX_KEYS_PER_KIND {
                out.push(wildcard(kind));
            } else {
                out.extend(set.into_iter().map(|v| format!("{kind}:{}", v.to_string())));
            }
        }
        let mut out = Vec::new();
        kind(&mut out, "v", self.v);
        kind(&mut out, "r", self.r);
        kind(&mut out, "p", self.p);
        kind(&mut out, "se", self.se);
        kind(&mut out, "de", self.de);
        kind(&mut out, "si", self.si);
        kind(&mut out, "di", self.di);
        kind(&mut out, "dp", self.dp);
        kind(&mut out, "svc", self.svc);
        out
    }
}

fn wildcard(kind: &str) -> String {
    format!("{kind}:*")
}

/// For each criterion a block can be skipped by, the keys of which a matching block has
/// at least one (wildcards included). A block lacking all the keys of any one list has
/// no flow the filter accepts. Criteria without keys (labels, addresses, source ports,
/// TCP flags, exclusions) are decided on the unpacked flows only.
pub fn required_keys(include: &[Criterion]) -> Vec<Vec<String>> {
    fn list(kinds: &[&'static str], values: Vec<String>) -> Vec<String> {
        let mut out: Vec<String> = kinds.iter().map(|k| wildcard(k)).collect();
        for k in kinds {
            out.extend(values.iter().map(|v| format!("{k}:{v}")));
        }
        out
    }
    fn sided(side: Side, src: &'static str, dst: &'static str) -> Vec<&'static str> {
        match side {
            Side::Source => vec![src],
            Side::Destination => vec![dst],
            Side::Either => vec![src, dst],
        }
    }
    let strings = |v: &[String]| v.to_vec();
    include
        .iter()
        .filter_map(|c| match c {
            Criterion::Verdict(vs) => Some(list(
                &["v"],
                vs.iter().map(|v| v.as_str().to_string()).collect(),
            )),
            Criterion::DropReason(rs) => Some(list(
                &["r"],
                rs.iter().map(|r| r.as_str().to_string()).collect(),
            )),
            Criterion::Protocol(ps) => Some(list(
                &["p"],
                ps.iter().map(|p| p.number().to_string()).collect(),
            )),
            Criterion::Endpoint(side, names) => {
                Some(list(&sided(*side, "se", "de"), strings(names)))
            }
            Criterion::Identity(side, ids) => Some(list(
                &sided(*side, "si", "di"),
                ids.iter().map(u32::to_string).collect(),
            )),
            Criterion::Port(Side::Destination, ports) => {
                Some(list(&["dp"], ports.iter().map(u16::to_string).collect()))
            }
            Criterion::Service(ss) => Some(list(&["svc"], strings(ss))),
            _ => None,
        })
        .collect()
}

/// One flow's contribution to the service map.
pub struct EdgeInput<'a> {
    pub src_identity: u32,
    pub src_labels: &'a Labels,
    pub src_name: Option<&'a str>,
    pub dst_identity: u32,
    pub dst_labels: &'a Labels,
    pub dst_name: Option<&'a str>,
    pub service: Option<(Uuid, Option<&'a str>)>,
    pub verdict: Verdict,
    pub dst_port: u16,
    pub count: u64,
    pub bytes: u64,
}

/// Traffic from one service-map vertex to another, summed over flows. Workloads are keyed
/// by identity (same labels, same vertex), reserved identities collapse to `host` (1) and
/// `world` (everything else below 256), and a flow through a load-balanced service goes
/// to the service's vertex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeAgg {
    pub s: String,
    pub d: String,
    pub connections: u64,
    pub bytes: u64,
    pub forwarded: u64,
    pub dropped: u64,
    pub ports: BTreeSet<u16>,
    pub src_identity: u32,
    pub src_labels: Labels,
    pub src_name: Option<String>,
    pub via_service: bool,
    pub dst_identity: u32,
    pub dst_labels: Labels,
    pub dst_name: Option<String>,
}

fn vertex_id(identity: u32) -> String {
    match identity {
        n if n >= 256 => format!("identity:{n}"),
        weft_model::identity::HOST => "host".into(),
        _ => "world".into(),
    }
}

/// Edges keyed by (source vertex, destination vertex).
#[derive(Default)]
pub struct EdgeMap {
    edges: BTreeMap<(String, String), EdgeAgg>,
    /// (source identity, destination identity, service) -> the edge's key, so a flow
    /// costs a lookup, not two formatted strings.
    keys: HashMap<(u32, u32, Option<Uuid>), (String, String)>,
}

/// The smaller of two optional names (a vertex is named after its first endpoint).
fn min_name(a: &mut Option<String>, b: Option<&str>) {
    if let Some(b) = b {
        if a.as_deref().is_none_or(|a| b < a) {
            *a = Some(b.to_string());
        }
    }
}

impl EdgeMap {
    pub fn add(&mut self, f: &EdgeInput<'_>) {
        let key = self
            .keys
            .entry((f.src_identity, f.dst_identity, f.service.map(|s| s.0)))
            .or_insert_with(|| {
                let d = match f.service {
                    Some((id, _)) => format!("service:{id}"),
                    None => vertex_id(f.dst_identity),
                };
                (vertex_id(f.src_identity), d)
            });
        let dst_name = match f.service {
            Some((_, name)) => name,
            None => f.dst_name,
        };
        if !self.edges.contains_key(key) {
            self.edges.insert(
                key.clone(),
                EdgeAgg {
                    s: key.0.clone(),
                    d: key.1.clone(),
                    connections: 0,
                    bytes: 0,
                    forwarded: 0,
                    dropped: 0,
                    ports: BTreeSet::new(),
                    src_identity: f.src_identity,
                    src_labels: f.src_labels.clone(),
                    src_name: None,
                    via_service: false,
                    dst_identity: f.dst_identity,
                    dst_labels: f.dst_labels.clone(),
                    dst_name: None,
                },
            );
        }
        let Some(e) = self.edges.get_mut(key) else {
            return;
        };
        e.connections += f.count;
        e.bytes += f.bytes;
        match f.verdict {
            Verdict::Dropped => e.dropped += f.count,
            Verdict::Forwarded | Verdict::Redirected | Verdict::Translated => {
                e.forwarded += f.count
            }
            _ => {}
        }
        e.ports.insert(f.dst_port);
        e.src_identity = e.src_identity.min(f.src_identity);
        e.dst_identity = e.dst_identity.min(f.dst_identity);
        e.via_service |= f.service.is_some();
        min_name(&mut e.src_name, f.src_name);
        min_name(&mut e.dst_name, dst_name);
    }

    /// Adds a stored flow.
    pub fn add_decoded(&mut self, f: &Decoded) {
        let r = &f.record;
        self.add(&EdgeInput {
            src_identity: r.source.identity,
            src_labels: &r.source.labels,
            src_name: r.source.endpoint.as_deref(),
            dst_identity: r.destination.identity,
            dst_labels: &r.destination.labels,
            dst_name: r.destination.endpoint.as_deref(),
            service: f.service_id.map(|id| (id, r.service.as_deref())),
            verdict: r.verdict,
            dst_port: r.destination.port,
            count: r.count,
            bytes: r.bytes,
        });
    }

    /// Adds a block's edges (computed at ingest).
    pub fn merge(&mut self, edges: Vec<EdgeAgg>) {
        for e in edges {
            match self.edges.entry((e.s.clone(), e.d.clone())) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(e);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let a = o.get_mut();
                    a.connections += e.connections;
                    a.bytes += e.bytes;
                    a.forwarded += e.forwarded;
                    a.dropped += e.dropped;
                    a.ports.extend(e.ports);
                    a.src_identity = a.src_identity.min(e.src_identity);
                    a.dst_identity = a.dst_identity.min(e.dst_identity);
                    a.via_service |= e.via_service;
                    min_name(&mut a.src_name, e.src_name.as_deref());
                    min_name(&mut a.dst_name, e.dst_name.as_deref());
                }
            }
        }
    }

    /// The edges, by source then destination vertex.
    pub fn into_edges(self) -> Vec<EdgeAgg> {
        self.edges.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::flows::NewPeer;

    fn flow(i: usize) -> NewFlow {
        let web: Arc<Labels> = Arc::new([("app".into(), "web".into())].into());
        let client: Arc<Labels> = Arc::new([("app".into(), "client".into())].into());
        let dropped = i.is_multiple_of(3);
        NewFlow {
            time: DateTime::from_timestamp_micros(1_764_158_400_000_000 + i as i64 * 1000).unwrap(),
            src: NewPeer {
                ip: format!("10.0.0.{}", i % 4 + 1).parse().unwrap(),
                port: 40000 + i as u16,
                endpoint_id: Some(Uuid::from_u128(i as u128 % 4)),
                endpoint_name: Some(format!("client-{}", i % 4)),
                identity: 300,
                labels: client,
            },
            dst: NewPeer {
                ip: if i == 5 {
                    "2001:db8::1".parse().unwrap()
                } else {
                    "10.0.1.1".parse().unwrap()
                },
                port: 8080,
                endpoint_id: None,
                endpoint_name: (i != 5).then(|| "web".to_string()),
                identity: if i == 5 { 2 } else { 301 },
                labels: if i == 5 { Arc::default() } else { web },
            },
            service_id: (i == 4).then(|| Uuid::from_u128(99)),
            service_name: (i == 4).then(|| "web-svc".to_string()),
            protocol: 6,
            verdict: if dropped {
                Verdict::Dropped
            } else {
                Verdict::Forwarded
            },
            drop_reason: dropped.then_some(DropReason::PolicyDenied),
            direction: "egress".into(),
            observation_point: "endpoint-egress".into(),
            tcp_flags: 2,
            bytes: 60 + i as i64,
            packets: 1,
            count: 1 + (i % 2) as i64,
        }
    }

    fn expected(f: &NewFlow) -> FlowRecord {
        let peer = |p: &NewPeer| Peer {
            endpoint: p.endpoint_name.clone(),
            identity: p.identity,
            labels: (*p.labels).clone(),
            ip: p.ip,
            port: p.port,
        };
        FlowRecord {
            time: f.time,
            verdict: f.verdict,
            drop_reason: f.drop_reason,
            source: peer(&f.src),
            destination: peer(&f.dst),
            protocol: Protocol::from_number(u32::from(f.protocol)),
            node: "node-1".into(),
            cluster: "prod".into(),
            service: f.service_name.clone(),
            direction: f.direction.clone(),
            observation_point: f.observation_point.clone(),
            tcp_flags: TcpFlags(f.tcp_flags),
            bytes: f.bytes as u64,
            packets: f.packets as u64,
            count: f.count as u64,
        }
    }

    #[test]
    fn a_block_unpacks_to_exactly_the_flows_packed() {
        let flows: Vec<NewFlow> = (0..10).map(flow).collect();
        let b = encode(&flows).unwrap();
        assert_eq!(
            (b.flows, b.min_time, b.max_time),
            (10, flows[0].time, flows[9].time)
        );
        let back = decode(
            7,
            "node-1",
            "prod",
            &b.data,
            &FlowFilter::default(),
            |_, _| true,
        )
        .unwrap();
        assert_eq!(back.len(), 10);
        for (i, (d, f)) in back.iter().zip(&flows).enumerate() {
            assert_eq!(d.record, expected(f), "flow {i}");
            assert_eq!(d.id, record_id(7, i));
            assert_eq!(d.service_id, f.service_id);
        }
        // Ids order by block, then position.
        assert!(record_id(7, MAX_FLOWS - 1) < record_id(8, 0));
        assert!(encode(&[]).is_none());
    }

    #[test]
    fn decoding_keeps_only_what_the_filter_accepts_and_rejects_corrupt_blocks() {
        let flows: Vec<NewFlow> = (0..9).map(flow).collect();
        let b = encode(&flows).unwrap();
        let filter =
            FlowFilter::parse([("verdict", "DROPPED")], Utc::now()).expect("filter parses");
        let back = decode(1, "n", "c", &b.data, &filter, |_, _| true).unwrap();
        assert_eq!(
            back.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![record_id(1, 0), record_id(1, 3), record_id(1, 6)]
        );
        let err = decode(1, "n", "c", &b.data[..b.data.len() / 2], &filter, |_, _| {
            true
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("flow block 1:"), "{err}");
    }

    #[test]
    fn filters_on_packed_columns_mean_what_they_mean_on_records() {
        let flows: Vec<NewFlow> = (0..12).map(flow).collect();
        let b = encode(&flows).unwrap();
        let all = decode(
            3,
            "node-1",
            "prod",
            &b.data,
            &FlowFilter::default(),
            |_, _| true,
        )
        .unwrap();
        for q in [
            "verdict=DROPPED",
            "not_verdict=DROPPED&protocol=tcp",
            "from_endpoint=client-1&from_endpoint=client-2",
            "to_endpoint=web&not_from_endpoint=client-0",
            "from_label=app%3Dclient&to_label=app%3Dweb",
            "to_label=app",
            "from_ip=10.0.0.0/30&to_ip=10.0.1.0/24",
            "to_ip=2001:db8::/32",
            "port=8080&from_port=40003",
            "to_identity=2",
            "drop_reason=POLICY_DENIED",
            "service=web-svc",
            "node=node-1&cluster=prod",
            "node=node-2",
            "tcp_flags=SYN",
            "tcp_flags=ACK",
        ] {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).unwrap();
            let f = FlowFilter::parse(
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                Utc::now(),
            )
            .unwrap();
            let want: Vec<i64> = all
                .iter()
                .filter(|d| f.matches(&d.record))
                .map(|d| d.id)
                .collect();
            let got: Vec<i64> = decode(3, "node-1", "prod", &b.data, &f, |_, _| true)
                .unwrap()
                .iter()
                .map(|d| d.id)
                .collect();
            assert_eq!(got, want, "{q}");
        }
        // `admit` sees each flow's time and id before it is built.
        let some = decode(
            3,
            "node-1",
            "prod",
            &b.data,
            &FlowFilter::default(),
            |_, id| id % 2 == 0,
        )
        .unwrap();
        assert_eq!(some.len(), 6);
    }

    #[test]
    fn keys_list_what_the_flows_contain_and_skip_only_blocks_that_cannot_match() {
        let flows: Vec<NewFlow> = (0..6).map(flow).collect();
        let keys = encode(&flows).unwrap().keys;
        for k in [
            "v:DROPPED",
            "v:FORWARDED",
            "r:POLICY_DENIED",
            "p:6",
            "se:client-3",
        ] {
            assert!(keys.contains(&k.to_string()), "{k} in {keys:?}");
        }
        for k in ["de:web", "di:301", "di:2", "dp:8080", "svc:web-svc"] {
            assert!(keys.contains(&k.to_string()), "{k} in {keys:?}");
        }
        let can_match = |q: &str| {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).unwrap();
            let f = FlowFilter::parse(
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                Utc::now(),
            )
            .unwrap();
            required_keys(&f.include)
                .iter()
                .all(|any| any.iter().any(|k| keys.contains(k)))
        };
        for q in [
            "verdict=DROPPED",
            "from_endpoint=client-1&to_endpoint=web",
            "port=8080",
            "to_port=8080&protocol=tcp",
            "service=web-svc",
            "to_identity=2&to_identity=9",
            "from_label=app%3Dnope",
        ] {
            assert!(can_match(q), "{q} must read the block");
        }
        for q in [
            "verdict=TRANSLATED",
            "from_endpoint=web",
            "to_port=53",
            "protocol=udp",
            "drop_reason=CT_FULL",
            "service=other",
        ] {
            assert!(!can_match(q), "{q} must skip the block");
        }
    }

    #[test]
    fn too_many_values_of_a_kind_become_its_wildcard() {
        let flows: Vec<NewFlow> = (0..600)
            .map(|i| {
                let mut f = flow(i);
                f.dst.port = i as u16;
                f
            })
            .collect();
        let keys = encode(&flows).unwrap().keys;
        assert!(keys.contains(&"dp:*".to_string()));
        assert!(
            !keys.iter().any(|k| k.starts_with("dp:1")),
            "no single ports"
        );
        let f = FlowFilter::parse([("to_port", "5")], Utc::now()).unwrap();
        let need = required_keys(&f.include);
        assert!(need[0].iter().any(|k| keys.contains(k)));
    }

    #[test]
    fn edges_from_a_block_equal_edges_from_its_flows_and_merge_by_summing() {
        let flows: Vec<NewFlow> = (0..10).map(flow).collect();
        let b = encode(&flows).unwrap();
        let mut from_flows = EdgeMap::default();
        for d in decode(1, "n", "c", &b.data, &FlowFilter::default(), |_, _| true).unwrap() {
            from_flows.add_decoded(&d);
        }
        let from_flows = from_flows.into_edges();
        assert_eq!(b.edges, from_flows);
        let names: Vec<(&str, &str)> = b
            .edges
            .iter()
            .map(|e| (e.s.as_str(), e.d.as_str()))
            .collect();
        let svc = format!("service:{}", Uuid::from_u128(99));
        assert_eq!(
            names,
            vec![
                ("identity:300", "identity:301"),
                ("identity:300", svc.as_str()),
                ("identity:300", "world"),
            ]
        );
        let main = &b.edges[0];
        // Flows 0..10 but 4 (service) and 5 (world); 0, 3, 6, 9 dropped; counts 1 or 2.
        assert_eq!((main.forwarded, main.dropped), (6, 6), "{main:?}");
        assert_eq!(main.src_name.as_deref(), Some("client-0"));
        assert_eq!(b.edges[1].dst_name.as_deref(), Some("web-svc"));
        let mut twice = EdgeMap::default();
        twice.merge(b.edges.clone());
        twice.merge(b.edges.clone());
        let twice = twice.into_edges();
        assert_eq!(twice[0].connections, 2 * main.connections);
        assert_eq!(twice[0].ports, main.ports);
    }
}
