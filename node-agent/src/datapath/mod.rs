//! The datapath library: loads Weft's eBPF programs, pins their maps, attaches them to the
//! interfaces and cgroup it is given, and programs the maps through a typed, idempotent API.
//!
//! Every change is a handful of single-entry map operations ordered so that no intermediate
//! state allows what both the old and the new state deny. Maps live under a bpffs directory
//! (`pin_path`); a restarted agent reuses them (traffic keeps flowing) and rebuilds its caches
//! from their contents.

pub mod policy;
pub mod ring;
pub mod sys;

use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray};
use aya::programs::{CgroupSockAddr, ProgramError, SchedClassifier};
use aya::{Ebpf, EbpfLoader};
use weft_datapath_common as c;
use weft_datapath_common::maps as m;

pub use policy::{Action, Direction, PolicyEntry, PolicyEntryError};

/// The eBPF object embedded at build time (empty when built without `WEFT_BPF_OBJ`).
pub static EMBEDDED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-datapath.bpf.o"));

/// Errors of the datapath library.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("no eBPF object: node-agent was built without WEFT_BPF_OBJ (run `cargo xtask test`, which builds it)")]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("endpoint {0} is unknown")]
    UnknownEndpoint(u32),
    #[error("policy entry for endpoint {ep}: {source}")]
    Policy { ep: u32, source: PolicyEntryError },
    #[error("service {svc}: {reason}")]
    Service { svc: u32, reason: String },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Io { what, source }
}

/// Map sizes (max entries); applied when the maps are created (not to reused pinned maps).
#[derive(Debug, Clone)]
pub struct MapSizes {
    pub endpoints: u32,
    pub ipcache: u32,
    /// Single-port/wildcard policy entries (all endpoints).
    pub policy: u32,
    /// Port-range blocks, per range map (allow, deny).
    pub policy_ranges: u32,
    pub conntrack: u32,
    pub services: u32,
    pub backends: u32,
    pub maglev_services: u32,
    pub events_bytes: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            endpoints: 4096,
            ipcache: 65536,
            policy: 262_144,
            policy_ranges: 65536,
            conntrack: 262_144,
            services: 65536,
            backends: 262_144,
            maglev_services: 1024,
            events_bytes: 1 << 20,
        }
    }
}

/// Datapath configuration.
#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// bpffs directory for maps and links (default `/sys/fs/bpf/weft`).
    pub pin_path: PathBuf,
    pub sizes: MapSizes,
    /// Conntrack timeouts and event aggregation, written to the config map.
    pub runtime: c::Config,
    /// Seed of the Maglev permutations (the same on every node).
    pub maglev_seed: u64,
    /// eBPF object to load; `None` = the embedded one.
    pub object: Option<PathBuf>,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            pin_path: PathBuf::from("/sys/fs/bpf/weft"),
            sizes: MapSizes::default(),
            runtime: c::Config::default(),
            maglev_seed: 0x5745_4654,
            object: None,
        }
    }
}

/// An endpoint (pod) on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: u32,
    pub ip: Ipv4Addr,
    /// Optional IPv6 address (dual stack).
    pub ip6: Option<std::net::Ipv6Addr>,
    pub identity: u32,
    /// Host-side interface index (informational).
    pub ifindex: u32,
    /// Some policy selects the endpoint with an ingress section: default deny for ingress.
    pub enforce_ingress: bool,
    pub enforce_egress: bool,
}

/// Backend choice of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbAlgorithm {
    Random,
    /// Maglev with a table of `m` entries (prime).
    Maglev {
        m: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    Active,
    /// Keeps existing connections, receives no new ones.
    Terminating,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Node-wide unique backend id.
    pub id: u32,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
}

/// A load-balanced service (VIP:port/proto).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub id: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub algorithm: LbAlgorithm,
    /// Client affinity timeout; `None` = no affinity.
    pub affinity: Option<Duration>,
    pub backends: Vec<Backend>,
}

/// Packet/byte counters by verdict and drop reason, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// (verdict, drop reason) -> (packets, bytes); only non-zero rows.
    pub rows: BTreeMap<(u8, u8), (u64, u64)>,
    /// Ring-buffer events that could not be written.
    pub lost_events: u64,
}

impl Counters {
    pub fn packets(&self, verdict: u8, reason: u8) -> u64 {
        self.rows.get(&(verdict, reason)).map_or(0, |r| r.0)
    }
}

// Stable names of the datapath's enums: the one mapping from the eBPF numbers to the strings
// flow records carry (`weft_proto::v1::Flow`), the debug CLI prints and control-api stores.
// Names are never changed or reused; a new number gets a new name.
//
// | field | values |
// |---|---|
// | verdict | FORWARDED, DROPPED, REDIRECTED, TRANSLATED; ERROR for a number we do not know |
// | drop reason | "" (none), POLICY_DENIED, DENY_RULE, NO_BACKEND, CT_FULL, INVALID_PACKET, FRAGMENT, UNSUPPORTED_L3, INTERNAL, UNKNOWN_ENDPOINT, SPOOFED_SOURCE (11), UNSUPPORTED_RULE (15); UNKNOWN otherwise (`weft_model::flow::DropReason`) |
// | direction (seen from the endpoint) | INGRESS, EGRESS; UNKNOWN otherwise |
// | observation point | endpoint-egress (tc on the host-side veth, packets from the pod), endpoint-ingress (packets to the pod), socket-lb (connect/sendmsg hooks), uplink (north-south LB); unknown otherwise |

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        c::VERDICT_FORWARDED => "FORWARDED",
        c::VERDICT_DROPPED => "DROPPED",
        c::VERDICT_REDIRECTED => "REDIRECTED",
        c::VERDICT_TRANSLATED => "TRANSLATED",
        _ => "ERROR",
    }
}

/// The model's table (`weft_model::flow::DropReason`), so the agent, the API and the debug
/// CLI spell every reason the same way.
pub fn drop_reason_name(r: u8) -> &'static str {
    if r == c::DROP_NONE {
        return "";
    }
    weft_model::flow::DropReason::from_code(u32::from(r)).as_str()
}

pub fn direction_name(d: u8) -> &'static str {
    match d {
        c::DIR_INGRESS => "INGRESS",
        c::DIR_EGRESS => "EGRESS",
        _ => "UNKNOWN",
    }
}

pub fn observation_point_name(o: u8) -> &'static str {
    match o {
        c::OBS_FROM_ENDPOINT => "endpoint-egress",
        c::OBS_TO_ENDPOINT => "endpoint-ingress",
        c::OBS_SOCK_CONNECT | c::OBS_SOCK_SENDMSG => "socket-lb",
        c::OBS_UPLINK_INGRESS | c::OBS_UPLINK_EGRESS => "uplink",
        _ => "unknown",
    }
}

/// Typed handles on every map; built from a loaded object or from pins alone (debug CLI).
pub struct Maps {
    pub endpoints: HashMap<MapData, c::EndpointKey, c::EndpointValue>,
    pub ipcache: LpmTrie<MapData, c::IpcacheKey, c::IpcacheValue>,
    /// Single-port and wildcard policy entries.
    pub policy: HashMap<MapData, c::PolicyHashKey, c::PolicyValue>,
    /// Port-range policy entries (consulted only for endpoints flagged `EP_HAS_PORT_RANGES`).
    pub policy_allow: LpmTrie<MapData, c::PolicyKey, c::PolicyValue>,
    pub policy_deny: LpmTrie<MapData, c::PolicyKey, c::PolicyValue>,
    pub ct: HashMap<MapData, c::CtKey, c::CtValue>,
    pub config: Array<MapData, c::Config>,
    pub metrics: PerCpuArray<MapData, c::MetricValue>,
    pub services: HashMap<MapData, c::ServiceKey, c::ServiceValue>,
    pub backend_slots: HashMap<MapData, c::BackendSlotKey, u32>,
    pub backends: HashMap<MapData, u32, c::BackendValue>,
    /// Raw: its values (`MaglevTable`, 256 KiB) are moved through heap buffers only.
    pub maglev: MapData,
    pub affinity: HashMap<MapData, c::AffinityKey, c::AffinityValue>,
    pub sock_revnat: HashMap<MapData, c::SockRevNatKey, c::SockRevNatValue>,
    /// North-south LB conntrack (forward and reverse entries).
    pub lb_ct: HashMap<MapData, c::CtKey, c::LbCtValue>,
    /// The event ring buffer, taken by [`Datapath::flow_events`] / [`Maps::flow_events`].
    pub events: Option<MapData>,
}

fn typed<T>(name: &'static str, map: Map) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(map_err(name))
}

impl Maps {
    fn from_source(mut get: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            endpoints: typed(m::ENDPOINTS, get(m::ENDPOINTS)?)?,
            ipcache: typed(m::IPCACHE, get(m::IPCACHE)?)?,
            policy: typed(m::POLICY, get(m::POLICY)?)?,
            policy_allow: typed(m::POLICY_ALLOW, get(m::POLICY_ALLOW)?)?,
            policy_deny: typed(m::POLICY_DENY, get(m::POLICY_DENY)?)?,
            ct: typed(m::CT, get(m::CT)?)?,
            config: typed(m::CONFIG, get(m::CONFIG)?)?,
            metrics: typed(m::METRICS, get(m::METRICS)?)?,
            services: typed(m::SERVICES, get(m::SERVICES)?)?,
            backend_slots: typed(m::BACKEND_SLOTS, get(m::BACKEND_SLOTS)?)?,
            backends: typed(m::BACKENDS, get(m::BACKENDS)?)?,
            maglev: match get(m::MAGLEV)? {
                Map::HashMap(data) => data,
                _ => return Err(DatapathError::MissingMap(m::MAGLEV)),
            },
            affinity: typed(m::AFFINITY, get(m::AFFINITY)?)?,
            sock_revnat: typed(m::SOCK_REVNAT, get(m::SOCK_REVNAT)?)?,
            lb_ct: typed(m::LB_CT, get(m::LB_CT)?)?,
            events: match get(m::EVENTS)? {
                Map::RingBuf(data) => Some(data),
                _ => return Err(DatapathError::MissingMap(m::EVENTS)),
            },
        })
    }

    /// Opens the maps pinned under `pin_path` without loading any program (debug CLI).
    pub fn open_pinned(pin_path: &Path) -> Result<Self> {
        Self::from_source(|name| {
            let data = MapData::from_pin(pin_path.join(name)).map_err(map_err(name))?;
            Ok(match name {
                m::IPCACHE | m::POLICY_ALLOW | m::POLICY_DENY => Map::LpmTrie(data),
                m::AFFINITY | m::SOCK_REVNAT | m::LB_CT => Map::LruHashMap(data),
                m::CONFIG => Map::Array(data),
                m::METRICS => Map::PerCpuArray(data),
                m::EVENTS => Map::RingBuf(data),
                _ => Map::HashMap(data),
            })
        })
    }

    /// Takes the flow-event reader (one consumer per ring buffer).
    pub fn flow_events(&mut self) -> Result<Option<FlowEvents>> {
        match self.events.take() {
            None => Ok(None),
            Some(map) => ring::Ring::new(map)
                .map(|ring| Some(FlowEvents { ring }))
                .map_err(io_err("mapping the event ring buffer")),
        }
    }

    pub fn counters(&self) -> Result<Counters> {
        let mut out = Counters::default();
        for idx in 0..c::METRICS_LEN {
            let per_cpu = self.metrics.get(&idx, 0).map_err(map_err(m::METRICS))?;
            let (p, b) = per_cpu
                .iter()
                .fold((0u64, 0u64), |(p, b), v| (p + v.packets, b + v.bytes));
            if idx == c::METRIC_LOST_EVENTS {
                out.lost_events = p;
            } else if p > 0 {
                let verdict = (idx / c::DROP_REASON_COUNT) as u8;
                let reason = (idx % c::DROP_REASON_COUNT) as u8;
                out.rows.insert((verdict, reason), (p, b));
            }
        }
        Ok(out)
    }

    pub fn list_endpoints(&self) -> Result<Vec<(c::EndpointKey, c::EndpointValue)>> {
        let mut v: Vec<_> = self
            .endpoints
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(m::ENDPOINTS))?;
        v.sort_by_key(|(_, e)| e.ep_id);
        Ok(v)
    }

    pub fn list_ipcache(&self) -> Result<Vec<(Key<c::IpcacheKey>, c::IpcacheValue)>> {
        self.ipcache
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(m::IPCACHE))
    }

    /// (map, prefix, key, value) of the endpoint's policy entries; hash entries are shown
    /// with the prefix they are equivalent to (72 any protocol, 80 any port, 96 one port).
    pub fn list_policy(
        &self,
        ep_id: u32,
    ) -> Result<Vec<(&'static str, u32, c::PolicyKey, c::PolicyValue)>> {
        // Only the generation in force (an endpoint not in the map: whichever there is);
        // shown without the generation bit.
        let gen = self
            .list_endpoints()?
            .into_iter()
            .find(|(_, v)| v.ep_id == ep_id)
            .map(|(_, v)| v.flags & c::EP_POLICY_GEN != 0);
        let shown = |dir: u8| gen.is_none_or(|g| (dir & c::POLICY_DIR_GEN != 0) == g);
        let plain = |dir: u8| dir & !c::POLICY_DIR_GEN;
        let mut out = Vec::new();
        for kv in self.policy.iter() {
            let (k, v) = kv.map_err(map_err(m::POLICY))?;
            if k.ep_id != ep_id || !shown(k.direction) {
                continue;
            }
            let prefix = if k.flags & c::POLICY_ANY_PROTO != 0 {
                c::POLICY_PREFIX_FIXED_BITS
            } else if k.flags & c::POLICY_ANY_PORT != 0 {
                c::POLICY_PREFIX_PROTO_BITS
            } else {
                c::POLICY_PREFIX_FULL_BITS
            };
            let key = c::PolicyKey {
                ep_id,
                identity: k.identity,
                direction: plain(k.direction),
                proto: k.proto,
                dport: k.dport.to_be_bytes(),
            };
            out.push(("hash", prefix, key, v));
        }
        for (name, map) in [
            ("range-deny", &self.policy_deny),
            ("range-allow", &self.policy_allow),
        ] {
            for kv in map.iter() {
                let (k, v) = kv.map_err(map_err(m::POLICY_ALLOW))?;
                let mut d = k.data();
                if d.ep_id == ep_id && shown(d.direction) {
                    d.direction = plain(d.direction);
                    out.push((name, k.prefix_len(), d, v));
                }
            }
        }
        out.sort_by_key(|(name, prefix, k, _)| (k.direction, k.identity, *prefix, *name));
        Ok(out)
    }

    pub fn list_services(&self) -> Result<Vec<(c::ServiceKey, c::ServiceValue)>> {
        let mut v: Vec<_> = self
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(m::SERVICES))?;
        v.sort_by_key(|(_, s)| s.svc_id);
        Ok(v)
    }

    /// Active backend ids of a service, in slot order.
    pub fn service_slots(&self, svc: &c::ServiceValue) -> Result<Vec<u32>> {
        (0..svc.count)
            .map(|slot| {
                self.backend_slots
                    .get(
                        &c::BackendSlotKey {
                            svc_id: svc.svc_id,
                            slot,
                        },
                        0,
                    )
                    .map_err(map_err(m::BACKEND_SLOTS))
            })
            .collect()
    }

    pub fn backend(&self, id: u32) -> Result<c::BackendValue> {
        self.backends.get(&id, 0).map_err(map_err(m::BACKENDS))
    }

    /// The first `m` entries of a service's Maglev table (backend ids).
    pub fn maglev_table(&self, svc_id: u32, m_size: u32) -> Result<Vec<u32>> {
        let mut buf = vec![0u8; 4 * c::MAGLEV_MAX_M];
        let found = sys::map_lookup(self.maglev.fd().as_fd(), &svc_id.to_ne_bytes(), &mut buf)
            .map_err(io_err(format!(
                "reading the Maglev table of service {svc_id}"
            )))?;
        if !found {
            return Ok(Vec::new());
        }
        Ok(buf
            .chunks_exact(4)
            .take((m_size as usize).min(c::MAGLEV_MAX_M))
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn maglev_write(&self, svc_id: u32, table: &[u32]) -> Result<()> {
        let mut buf = vec![0u8; 4 * c::MAGLEV_MAX_M];
        for (slot, id) in table.iter().take(c::MAGLEV_MAX_M).enumerate() {
            buf[4 * slot..4 * slot + 4].copy_from_slice(&id.to_ne_bytes());
        }
        sys::map_update(self.maglev.fd().as_fd(), &svc_id.to_ne_bytes(), &buf).map_err(io_err(
            format!("writing the Maglev table of service {svc_id}"),
        ))
    }

    fn maglev_remove(&self, svc_id: u32) -> Result<()> {
        sys::map_delete(self.maglev.fd().as_fd(), &svc_id.to_ne_bytes()).map_err(io_err(format!(
            "removing the Maglev table of service {svc_id}"
        )))
    }

    /// Removes the conntrack entries that have expired (the kernel drops an expired entry only
    /// when a packet of its flow comes by; the table is not an LRU, so the rest is collected
    /// here). Each candidate is read again just before it goes, so an entry that a packet
    /// refreshed meanwhile stays. Returns how many were removed.
    pub fn ct_gc(&mut self) -> Result<usize> {
        let cfg = self.config.get(&0, 0).map_err(map_err(m::CONFIG))?;
        let now = monotonic_ns();
        let expired: Vec<c::CtKey> = self
            .ct
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(_, v)| c::ct_expired(&cfg, v, now))
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for k in &expired {
            let still = self
                .ct
                .get(k, 0)
                .is_ok_and(|v| c::ct_expired(&cfg, &v, monotonic_ns()));
            if still {
                ignore_missing(self.ct.remove(k)).map_err(map_err(m::CT))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn list_ct(&self) -> Result<Vec<(c::CtKey, c::CtValue)>> {
        self.ct
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(m::CT))
    }
}

/// One endpoint's policy as written: the generation in force and its entries (slots without
/// the generation bit).
#[derive(Debug, Clone, Default)]
struct EpPolicy {
    gen: bool,
    entries: BTreeMap<policy::PolicySlot, c::PolicyValue>,
}

impl EpPolicy {
    fn has_ranges(&self) -> bool {
        self.entries.keys().any(policy::PolicySlot::is_range)
    }
}

impl Cache {
    /// Queues an endpoint's entries of generation `gen` for [`Datapath::settle_policy`].
    fn retire(
        &mut self,
        ep_id: u32,
        gen: bool,
        entries: &BTreeMap<policy::PolicySlot, c::PolicyValue>,
    ) {
        if !entries.is_empty() {
            let slots = self.policy_garbage.entry(ep_id).or_default();
            slots.extend(entries.keys().map(|s| s.in_gen(gen)));
        }
    }
}

/// What the agent last wrote, rebuilt from the maps at load (reconcile after restart).
#[derive(Default)]
struct Cache {
    /// ep_id -> the policy in force (its generation and entries).
    policy: StdHashMap<u32, EpPolicy>,
    /// Entries of generations no longer in force (keys with their generation bit), deleted
    /// by [`Datapath::settle_policy`] once no program can be reading them.
    policy_garbage: StdHashMap<u32, Vec<policy::PolicySlot>>,
    /// ep_id -> its endpoint map key.
    /// ep_id -> its endpoint map keys (IPv4 first, then IPv6 if any).
    endpoints: StdHashMap<u32, Vec<c::EndpointKey>>,
    /// svc_id -> (key, backend ids, slot count).
    services: StdHashMap<u32, (c::ServiceKey, BTreeSet<u32>, u32)>,
    /// Endpoint address -> host-side interface it is attached behind (source validation).
    interfaces: StdHashMap<c::EndpointKey, u32>,
    /// An address may have changed identity (ipcache written or removed) since established
    /// connections were last re-checked; see [`Datapath::recheck_connections`].
    identities_changed: bool,
}

/// An endpoint's entries as map slots (without the generation bit) and their values. Two
/// entries on one hash key: deny beats redirect beats allow beats unsupported (which allows
/// nothing).
fn policy_entries(
    ep_id: u32,
    entries: &[PolicyEntry],
) -> Result<BTreeMap<policy::PolicySlot, c::PolicyValue>> {
    let rank = |a: u8| match a {
        c::ACTION_DENY => 3,
        c::ACTION_REDIRECT => 2,
        c::ACTION_ALLOW => 1,
        _ => 0,
    };
    let mut desired: BTreeMap<policy::PolicySlot, c::PolicyValue> = BTreeMap::new();
    for e in entries {
        let (slots, value) = policy::expand(ep_id, e)
            .map_err(|source| DatapathError::Policy { ep: ep_id, source })?;
        for slot in slots {
            let keep = desired
                .get(&slot)
                .is_some_and(|old| rank(old.action) >= rank(value.action));
            if !keep {
                desired.insert(slot, value);
            }
        }
    }
    Ok(desired)
}

/// Where the programs are attached, for link pin names.
fn link_pin(pin_path: &Path, name: &str) -> PathBuf {
    pin_path.join("links").join(name)
}

/// The loaded datapath.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: Maps,
    cfg: DatapathConfig,
    cache: Cache,
    /// Waits out programs that may still read retired policy entries.
    barrier: sys::RcuBarrier,
}

fn endpoint_key(family: u8, addr: c::Addr) -> c::EndpointKey {
    c::EndpointKey {
        family,
        _pad: [0; 3],
        addr,
    }
}

fn host_prefix(family: u8) -> u8 {
    if family == c::FAMILY_IPV6 {
        128
    } else {
        32
    }
}

fn ipcache_key(family: u8, addr: c::Addr, prefix: u8) -> Key<c::IpcacheKey> {
    Key::new(
        c::IPCACHE_PREFIX_HEADER_BITS + prefix as u32,
        c::IpcacheKey {
            family,
            _pad: [0; 3],
            addr: mask_addr(addr, prefix),
        },
    )
}

fn ipv4_addr(ip: Ipv4Addr) -> c::Addr {
    c::addr_v4(ip.octets())
}

/// Which link hook a tc program goes on.
#[derive(Debug, Clone, Copy)]
enum TcHook {
    Ingress,
    Egress,
}

impl Datapath {
    /// Loads the programs, creating or reusing the pinned maps under `cfg.pin_path`.
    pub fn load(cfg: DatapathConfig) -> Result<Self> {
        let bytes;
        let object: &[u8] = match &cfg.object {
            Some(path) => {
                bytes =
                    std::fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
                &bytes
            }
            None => EMBEDDED_OBJECT,
        };
        if object.is_empty() {
            return Err(DatapathError::NoObject);
        }
        std::fs::create_dir_all(cfg.pin_path.join("links"))
            .map_err(io_err(format!("creating {}", cfg.pin_path.display())))?;
        let s = &cfg.sizes;
        let mut ebpf = EbpfLoader::new()
            .map_pin_path(&cfg.pin_path)
            .set_max_entries(m::ENDPOINTS, s.endpoints)
            .set_max_entries(m::IPCACHE, s.ipcache)
            .set_max_entries(m::POLICY, s.policy)
            .set_max_entries(m::POLICY_ALLOW, s.policy_ranges)
            .set_max_entries(m::POLICY_DENY, s.policy_ranges)
            .set_max_entries(m::CT, s.conntrack)
            .set_max_entries(m::SERVICES, s.services)
            .set_max_entries(m::BACKEND_SLOTS, s.backends)
            .set_max_entries(m::BACKENDS, s.backends)
            .set_max_entries(m::MAGLEV, s.maglev_services)
            .set_max_entries(m::SOCK_REVNAT, s.conntrack)
            .set_max_entries(m::LB_CT, s.conntrack)
            .set_max_entries(m::EVENTS, s.events_bytes)
            .load(object)?;
        for name in [
            c::progs::FROM_ENDPOINT,
            c::progs::TO_ENDPOINT,
            c::progs::PASS,
            c::progs::LB_INGRESS,
            c::progs::LB_EGRESS,
        ] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            p.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        for name in [
            c::progs::CONNECT4,
            c::progs::SENDMSG4,
            c::progs::RECVMSG4,
            c::progs::GETPEERNAME4,
        ] {
            let p: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            p.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let maps =
            Maps::from_source(|name| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name)))?;
        let mut dp = Datapath {
            ebpf,
            maps,
            cfg,
            cache: Cache::default(),
            barrier: sys::RcuBarrier::new().map_err(io_err("creating the RCU barrier map"))?,
        };
        let runtime = dp.cfg.runtime;
        dp.maps
            .config
            .set(0, runtime, 0)
            .map_err(map_err(m::CONFIG))?;
        dp.reconcile()?;
        tracing::info!(pin_path = %dp.cfg.pin_path.display(), "datapath loaded");
        Ok(dp)
    }

    pub fn config(&self) -> &DatapathConfig {
        &self.cfg
    }

    /// Rebuilds the caches from pinned map contents (after an agent restart).
    fn reconcile(&mut self) -> Result<()> {
        let mut cache = Cache::default();
        // Entries per endpoint and generation; an agent stopped mid-change may leave two.
        let mut found: StdHashMap<(u32, bool), BTreeMap<policy::PolicySlot, c::PolicyValue>> =
            StdHashMap::new();
        for kv in self.maps.policy.iter() {
            let (k, v) = kv.map_err(map_err(m::POLICY))?;
            let slot = policy::PolicySlot::Hash(k);
            found
                .entry((k.ep_id, slot.gen()))
                .or_default()
                .insert(slot.in_gen(false), v);
        }
        for (deny, map) in [
            (false, &self.maps.policy_allow),
            (true, &self.maps.policy_deny),
        ] {
            for kv in map.iter() {
                let (k, v) = kv.map_err(map_err(m::POLICY_ALLOW))?;
                let slot = policy::range_slot(deny, k.prefix_len(), &k.data());
                found
                    .entry((slot.ep_id(), slot.gen()))
                    .or_default()
                    .insert(slot.in_gen(false), v);
            }
        }
        let endpoints = self.maps.list_endpoints()?;
        let in_force = |ep_id: u32, found: &StdHashMap<(u32, bool), _>| match endpoints
            .iter()
            .find(|(_, v)| v.ep_id == ep_id)
        {
            Some((_, v)) => v.flags & c::EP_POLICY_GEN != 0,
            None => !found.contains_key(&(ep_id, false)),
        };
        let gens: Vec<(u32, bool)> = found.keys().copied().collect();
        for (ep_id, gen) in gens {
            let Some(entries) = found.get(&(ep_id, gen)) else {
                continue;
            };
            if gen == in_force(ep_id, &found) {
                cache.policy.insert(
                    ep_id,
                    EpPolicy {
                        gen,
                        entries: entries.clone(),
                    },
                );
            } else {
                cache.retire(ep_id, gen, entries);
            }
        }
        for (k, v) in endpoints {
            if v.ifindex != 0 {
                cache.interfaces.insert(k, v.ifindex);
            }
            let keys = cache.endpoints.entry(v.ep_id).or_default();
            keys.push(k);
            keys.sort_by_key(|k| k.family);
        }
        for (key, svc) in self.maps.list_services()? {
            let slots = self.maps.service_slots(&svc).unwrap_or_default();
            let mut ids: BTreeSet<u32> = slots.iter().copied().collect();
            // Terminating backends are not in slots; find them in the Maglev table too.
            if svc.flags & c::SVC_F_MAGLEV != 0 {
                if let Ok(t) = self.maps.maglev_table(svc.svc_id, svc.maglev_m) {
                    ids.extend(t.into_iter().collect::<HashSet<_>>());
                }
            }
            let n_slots = slots.len() as u32;
            cache.services.insert(svc.svc_id, (key, ids, n_slots));
        }
        self.cache = cache;
        self.settle_policy()
    }

    fn program_fd(&self, name: &'static str) -> Result<std::os::fd::OwnedFd> {
        let prog = self
            .ebpf
            .program(name)
            .ok_or(DatapathError::MissingProgram(name))?;
        let fd = prog
            .fd()
            .map_err(|source| DatapathError::Program { name, source })?;
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(io_err(format!("dup fd of {name}")))
    }

    /// Attaches `prog` through a pinned link: reuses (atomically updates) an existing pinned
    /// link, else creates and pins one. Pinned links outlive the agent process.
    fn attach_pinned(
        &self,
        prog: &'static str,
        pin_name: &str,
        target: u32,
        attach_type: u32,
    ) -> Result<()> {
        let prog_fd = self.program_fd(prog)?;
        let pin = link_pin(&self.cfg.pin_path, pin_name);
        if pin.exists() {
            let reused =
                sys::obj_get(&pin).and_then(|link| sys::link_update(link.as_fd(), prog_fd.as_fd()));
            match reused {
                Ok(()) => {
                    tracing::info!(link = %pin.display(), "reused pinned link");
                    return Ok(());
                }
                Err(e) => {
                    // The link's target is gone (interface or cgroup deleted): start afresh.
                    tracing::warn!(link = %pin.display(), error = %e, "stale pinned link, re-attaching");
                    std::fs::remove_file(&pin)
                        .map_err(io_err(format!("removing {}", pin.display())))?;
                }
            }
        }
        let link = sys::link_create(prog_fd.as_fd(), target, attach_type)
            .map_err(io_err(format!("attaching {prog} ({pin_name})")))?;
        sys::obj_pin(link.as_fd(), &pin).map_err(io_err(format!("pinning {}", pin.display())))?;
        tracing::info!(link = %pin.display(), "attached");
        Ok(())
    }

    /// Attaches the policy programs to an endpoint's host-side interface (tcx, both
    /// directions). The interface name is resolved in the calling thread's network namespace.
    pub fn attach_endpoint_interface(&self, ifname: &str) -> Result<u32> {
        let ifindex = ifindex(ifname)?;
        for (prog, hook) in [
            (c::progs::FROM_ENDPOINT, TcHook::Ingress),
            (c::progs::TO_ENDPOINT, TcHook::Egress),
        ] {
            let (attach, tag) = match hook {
                TcHook::Ingress => (sys::BPF_TCX_INGRESS, "ingress"),
                TcHook::Egress => (sys::BPF_TCX_EGRESS, "egress"),
            };
            self.attach_pinned(
                prog,
                &format!("tc-{ifindex}-{ifname}-{tag}"),
                ifindex,
                attach,
            )?;
        }
        Ok(ifindex)
    }

    /// Attaches the north-south load balancer to the node's uplink (tcx ingress: VIP DNAT,
    /// egress: reverse translation). Resolved in the calling thread's network namespace.
    pub fn attach_uplink(&self, ifname: &str) -> Result<u32> {
        let ifindex = ifindex(ifname)?;
        self.attach_pinned(
            c::progs::LB_INGRESS,
            &format!("uplink-{ifindex}-{ifname}-ingress"),
            ifindex,
            sys::BPF_TCX_INGRESS,
        )?;
        self.attach_pinned(
            c::progs::LB_EGRESS,
            &format!("uplink-{ifindex}-{ifname}-egress"),
            ifindex,
            sys::BPF_TCX_EGRESS,
        )?;
        Ok(ifindex)
    }

    /// Detaches the policy programs from an interface: removes its pinned links, whatever
    /// ifindex they were made for, also when the interface is already gone.
    pub fn detach_endpoint_interface(&self, ifname: &str) -> Result<()> {
        let dir = self.cfg.pin_path.join("links");
        let entries = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
        };
        for e in entries.flatten() {
            if is_tc_pin_of(&e.file_name().to_string_lossy(), ifname) {
                let pin = e.path();
                match std::fs::remove_file(&pin) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_err(format!("removing {}", pin.display()))(err))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Attaches the socket load balancer to a cgroup v2 directory the caller owns.
    pub fn attach_cgroup(&self, cgroup: &Path) -> Result<()> {
        let dir = std::fs::File::open(cgroup)
            .map_err(io_err(format!("opening cgroup {}", cgroup.display())))?;
        let tag: String = cgroup
            .to_string_lossy()
            .chars()
            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
            .collect();
        for (prog, attach, hook) in [
            (
                c::progs::CONNECT4,
                sys::BPF_CGROUP_INET4_CONNECT,
                "connect4",
            ),
            (c::progs::SENDMSG4, sys::BPF_CGROUP_UDP4_SENDMSG, "sendmsg4"),
            (c::progs::RECVMSG4, sys::BPF_CGROUP_UDP4_RECVMSG, "recvmsg4"),
            (
                c::progs::GETPEERNAME4,
                sys::BPF_CGROUP_INET4_GETPEERNAME,
                "getpeername4",
            ),
        ] {
            self.attach_pinned(
                prog,
                &format!("cg-{tag}-{hook}"),
                dir.as_raw_fd() as u32,
                attach,
            )?;
        }
        Ok(())
    }

    /// Program fd for `BPF_PROG_TEST_RUN` (tests, benchmark).
    pub fn test_run(&self, prog: &'static str, packet: &[u8], repeat: u32) -> Result<sys::TestRun> {
        let fd = self.program_fd(prog)?;
        sys::prog_test_run_skb(fd.as_fd(), packet, repeat)
            .map_err(io_err(format!("test run of {prog}")))
    }

    /// Writes the runtime config (timeouts, event aggregation).
    pub fn set_runtime_config(&mut self, runtime: c::Config) -> Result<()> {
        self.maps
            .config
            .set(0, runtime, 0)
            .map_err(map_err(m::CONFIG))?;
        self.cfg.runtime = runtime;
        Ok(())
    }

    // ---- endpoints and ipcache ----

    /// Creates or updates an endpoint (endpoint map + its /32 in the ipcache). Idempotent;
    /// keeps the endpoint's policy revision.
    pub fn apply_endpoint(&mut self, ep: &Endpoint) -> Result<()> {
        let mut keys = vec![endpoint_key(c::FAMILY_IPV4, ipv4_addr(ep.ip))];
        if let Some(ip6) = ep.ip6 {
            keys.push(endpoint_key(c::FAMILY_IPV6, ip6.octets()));
        }
        let existing = self.maps.endpoints.get(&keys[0], 0).ok();
        let rev = existing.map_or(0, |v| v.policy_rev);
        // The port-range flag follows the endpoint's policy (which may have been applied
        // before the endpoint itself), not its description.
        let pol = self.cache.policy.get(&ep.id);
        let mut flags = 0;
        if pol.is_some_and(EpPolicy::has_ranges) {
            flags |= c::EP_HAS_PORT_RANGES;
        }
        if pol.is_some_and(|p| p.gen) {
            flags |= c::EP_POLICY_GEN;
        }
        if ep.enforce_ingress {
            flags |= c::EP_ENFORCE_INGRESS;
        }
        if ep.enforce_egress {
            flags |= c::EP_ENFORCE_EGRESS;
        }
        let value = c::EndpointValue {
            ep_id: ep.id,
            identity: ep.identity,
            ifindex: ep.ifindex,
            flags,
            policy_rev: rev,
            _pad: 0,
        };
        for key in &keys {
            // The interface: given, else the one the address was bound to at attach time.
            let ifindex = match ep.ifindex {
                0 => self.cache.interfaces.get(key).copied().unwrap_or(0),
                i => i,
            };
            self.apply_ipcache_family(key.family, key.addr, host_prefix(key.family), ep.identity)?;
            self.maps
                .endpoints
                .insert(key, c::EndpointValue { ifindex, ..value }, 0)
                .map_err(map_err(m::ENDPOINTS))?;
        }
        // The endpoint moved to other addresses: its old entries go.
        if let Some(old) = self.cache.endpoints.insert(ep.id, keys.clone()) {
            for key in old.iter().filter(|k| !keys.contains(k)) {
                ignore_missing(self.maps.endpoints.remove(key)).map_err(map_err(m::ENDPOINTS))?;
                self.remove_ipcache_family(key.family, key.addr, host_prefix(key.family))?;
            }
        }
        Ok(())
    }

    /// Records that the endpoint owning `ip` sits behind interface `ifindex` (where its
    /// packets enter the node): packets from that address arriving on another interface are
    /// dropped as spoofed. Updates the endpoint entry if it exists already.
    pub fn bind_endpoint_interface(&mut self, ip: std::net::IpAddr, ifindex: u32) -> Result<()> {
        let key = match ip {
            std::net::IpAddr::V4(v4) => endpoint_key(c::FAMILY_IPV4, ipv4_addr(v4)),
            std::net::IpAddr::V6(v6) => endpoint_key(c::FAMILY_IPV6, v6.octets()),
        };
        self.cache.interfaces.insert(key, ifindex);
        if let Ok(mut v) = self.maps.endpoints.get(&key, 0) {
            if v.ifindex != ifindex {
                v.ifindex = ifindex;
                self.maps
                    .endpoints
                    .insert(key, v, 0)
                    .map_err(map_err(m::ENDPOINTS))?;
            }
        }
        Ok(())
    }

    /// Removes an endpoint (all its addresses), its ipcache entries and its policy entries.
    pub fn remove_endpoint(&mut self, ep_id: u32, ip: Ipv4Addr) -> Result<()> {
        let mut keys = self.cache.endpoints.remove(&ep_id).unwrap_or_default();
        let given = endpoint_key(c::FAMILY_IPV4, ipv4_addr(ip));
        if !keys.contains(&given) {
            keys.push(given);
        }
        for key in &keys {
            ignore_missing(self.maps.endpoints.remove(key)).map_err(map_err(m::ENDPOINTS))?;
            self.remove_ipcache_family(key.family, key.addr, host_prefix(key.family))?;
        }
        self.apply_policy(ep_id, &[])?;
        // Its entries are gone when this returns (endpoint removals are rare: one grace
        // period each is cheap).
        self.settle_policy()
    }

    /// Maps an IPv4 CIDR to an identity (longest prefix wins; a more specific entry is how a
    /// CIDR "except" is expressed).
    pub fn apply_ipcache(&mut self, addr: c::Addr, prefix: u8, identity: u32) -> Result<()> {
        self.apply_ipcache_family(c::FAMILY_IPV4, addr, prefix, identity)
    }

    pub fn apply_ipcache_v4(&mut self, ip: Ipv4Addr, prefix: u8, identity: u32) -> Result<()> {
        self.apply_ipcache(ipv4_addr(ip), prefix, identity)
    }

    /// Maps an IPv4 or IPv6 CIDR to an identity.
    pub fn apply_ipcache_ip(
        &mut self,
        ip: std::net::IpAddr,
        prefix: u8,
        identity: u32,
    ) -> Result<()> {
        match ip {
            std::net::IpAddr::V4(v4) => {
                self.apply_ipcache_family(c::FAMILY_IPV4, ipv4_addr(v4), prefix, identity)
            }
            std::net::IpAddr::V6(v6) => {
                self.apply_ipcache_family(c::FAMILY_IPV6, v6.octets(), prefix, identity)
            }
        }
    }

    fn apply_ipcache_family(
        &mut self,
        family: u8,
        addr: c::Addr,
        prefix: u8,
        identity: u32,
    ) -> Result<()> {
        let key = ipcache_key(family, addr, prefix);
        let unchanged = self
            .maps
            .ipcache
            .get(&key, 0)
            .is_ok_and(|v| v.identity == identity);
        if !unchanged {
            // A new prefix or a new identity can change what an established peer is.
            self.cache.identities_changed = true;
        }
        self.maps
            .ipcache
            .insert(&key, c::IpcacheValue { identity, flags: 0 }, 0)
            .map_err(map_err(m::IPCACHE))
    }

    pub fn remove_ipcache(&mut self, addr: c::Addr, prefix: u8) -> Result<()> {
        self.remove_ipcache_family(c::FAMILY_IPV4, addr, prefix)
    }

    /// Removes an IPv4 or IPv6 CIDR.
    pub fn remove_ipcache_ip(&mut self, ip: std::net::IpAddr, prefix: u8) -> Result<()> {
        match ip {
            std::net::IpAddr::V4(v4) => {
                self.remove_ipcache_family(c::FAMILY_IPV4, ipv4_addr(v4), prefix)
            }
            std::net::IpAddr::V6(v6) => {
                self.remove_ipcache_family(c::FAMILY_IPV6, v6.octets(), prefix)
            }
        }
    }

    fn remove_ipcache_family(&mut self, family: u8, addr: c::Addr, prefix: u8) -> Result<()> {
        let key = ipcache_key(family, addr, prefix);
        if self.maps.ipcache.get(&key, 0).is_ok() {
            self.cache.identities_changed = true;
        }
        ignore_missing(self.maps.ipcache.remove(&key)).map_err(map_err(m::IPCACHE))
    }

    /// After ipcache changes (a peer relabelled, added or gone), bumps every local endpoint's
    /// policy revision once, so the kernel re-checks each established connection against the
    /// peer's current identity on its next packet, as it does after a policy change. One map
    /// write per endpoint per batch of changes, not per ipcache entry.
    pub fn recheck_connections(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.cache.identities_changed) {
            return Ok(());
        }
        let ids: Vec<u32> = self.cache.endpoints.keys().copied().collect();
        for id in ids {
            if let Err(e) =
                self.update_endpoint(id, |v| v.policy_rev = v.policy_rev.wrapping_add(1))
            {
                self.cache.identities_changed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    // ---- policy ----

    /// Sets the complete policy of an endpoint, atomically for the packets it judges: the
    /// new entries are written complete into the endpoint's unused generation (keys with
    /// the other `POLICY_DIR_GEN` bit), then one write per endpoint address flips
    /// `EP_POLICY_GEN` and bumps the policy revision (established connections are
    /// re-checked once). A packet is judged by the old policy or the new one, never by a
    /// mix. Writing in place could not promise that: a program reads several keys per
    /// packet, and a vCPU stalled between two of them sees keys from two policies; and the
    /// kernel reuses a deleted hash element for the next insert while a program may still
    /// be reading it. The old generation's entries are retired, and deleted by
    /// [`Datapath::settle_policy`] after an RCU grace period (the agent calls it once per
    /// batch of changes; the endpoint's next change calls it first). A write that fails
    /// (a full map) removes what it wrote and leaves the old policy in force. Idempotent:
    /// the same set writes nothing. A change needs room for both generations of the
    /// endpoint in the maps for a moment.
    pub fn apply_policy(&mut self, ep_id: u32, entries: &[PolicyEntry]) -> Result<()> {
        let desired = policy_entries(ep_id, entries)?;
        let current = self.cache.policy.get(&ep_id).cloned().unwrap_or_default();
        if desired == current.entries {
            return Ok(());
        }
        // The unused generation must be empty: this endpoint's last retired entries go first.
        if self.cache.policy_garbage.contains_key(&ep_id) {
            self.settle_policy()?;
        }
        let next = EpPolicy {
            gen: !current.gen,
            entries: desired,
        };
        let mut written = Vec::with_capacity(next.entries.len());
        for (slot, value) in &next.entries {
            let slot = slot.in_gen(next.gen);
            if let Err(e) = self.write_policy_slot(&slot, value) {
                // No program reads this generation yet: undo at once.
                for s in &written {
                    let _ = self.remove_policy_slot(s);
                }
                return Err(e);
            }
            written.push(slot);
        }
        let (gen, ranges) = (next.gen, next.has_ranges());
        let flipped = self.update_endpoint(ep_id, |v| {
            v.flags &= !(c::EP_POLICY_GEN | c::EP_HAS_PORT_RANGES);
            if gen {
                v.flags |= c::EP_POLICY_GEN;
            }
            if ranges {
                v.flags |= c::EP_HAS_PORT_RANGES;
            }
            v.policy_rev = v.policy_rev.wrapping_add(1);
        });
        // Even if an address failed to flip, the new generation is the one to keep: the
        // next change retries, and a stale address meanwhile judges by the old entries until
        // they are settled, then by none (fail closed).
        self.cache.retire(ep_id, current.gen, &current.entries);
        if next.entries.is_empty() {
            self.cache.policy.remove(&ep_id);
        } else {
            self.cache.policy.insert(ep_id, next);
        }
        flipped.map(|_| ())
    }

    /// Deletes the entries of retired policy generations, once no program can still be
    /// reading them (one RCU grace period for the whole batch).
    pub fn settle_policy(&mut self) -> Result<()> {
        if self.cache.policy_garbage.is_empty() {
            return Ok(());
        }
        self.barrier
            .wait()
            .map_err(io_err("waiting for running BPF programs"))?;
        let garbage = std::mem::take(&mut self.cache.policy_garbage);
        let mut first_err = None;
        for (ep_id, slots) in garbage {
            for slot in slots {
                if let Err(e) = self.remove_policy_slot(&slot) {
                    self.cache
                        .policy_garbage
                        .entry(ep_id)
                        .or_default()
                        .push(slot);
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn write_policy_slot(
        &mut self,
        slot: &policy::PolicySlot,
        value: &c::PolicyValue,
    ) -> Result<()> {
        use policy::PolicySlot;
        match slot {
            PolicySlot::Hash(k) => self
                .maps
                .policy
                .insert(k, value, 0)
                .map_err(map_err(m::POLICY)),
            PolicySlot::RangeAllow(prefix, b) => {
                let key = Key::new(*prefix, policy::lpm_key_from_bytes(b));
                self.maps
                    .policy_allow
                    .insert(&key, value, 0)
                    .map_err(map_err(m::POLICY_ALLOW))
            }
            PolicySlot::RangeDeny(prefix, b) => {
                let key = Key::new(*prefix, policy::lpm_key_from_bytes(b));
                self.maps
                    .policy_deny
                    .insert(&key, value, 0)
                    .map_err(map_err(m::POLICY_DENY))
            }
        }
    }

    fn remove_policy_slot(&mut self, slot: &policy::PolicySlot) -> Result<()> {
        use policy::PolicySlot;
        match slot {
            PolicySlot::Hash(k) => {
                ignore_missing(self.maps.policy.remove(k)).map_err(map_err(m::POLICY))
            }
            PolicySlot::RangeAllow(prefix, b) => {
                let key = Key::new(*prefix, policy::lpm_key_from_bytes(b));
                ignore_missing(self.maps.policy_allow.remove(&key))
                    .map_err(map_err(m::POLICY_ALLOW))
            }
            PolicySlot::RangeDeny(prefix, b) => {
                let key = Key::new(*prefix, policy::lpm_key_from_bytes(b));
                ignore_missing(self.maps.policy_deny.remove(&key)).map_err(map_err(m::POLICY_DENY))
            }
        }
    }

    /// Rewrites the endpoint's map values (one per address) with `change`, where it changes
    /// something. Returns whether it wrote.
    fn update_endpoint(
        &mut self,
        ep_id: u32,
        change: impl Fn(&mut c::EndpointValue),
    ) -> Result<bool> {
        let Some(keys) = self.cache.endpoints.get(&ep_id).cloned() else {
            return Ok(false);
        };
        let mut wrote = false;
        for key in keys {
            let Ok(mut v) = self.maps.endpoints.get(&key, 0) else {
                continue;
            };
            let old = v;
            change(&mut v);
            if v != old {
                self.maps
                    .endpoints
                    .insert(key, v, 0)
                    .map_err(map_err(m::ENDPOINTS))?;
                wrote = true;
            }
        }
        Ok(wrote)
    }

    // ---- services ----

    /// Creates or updates a service and its backends. New backends are written before the
    /// tables that reference them, the service entry (active count) switches last when
    /// growing and first when shrinking, then stale slots/backends are removed.
    pub fn apply_service(&mut self, svc: &Service) -> Result<()> {
        let svc_err = |reason: String| DatapathError::Service {
            svc: svc.id,
            reason,
        };
        let key = c::ServiceKey {
            vip: ipv4_addr(svc.vip),
            port: svc.port.to_be(),
            proto: svc.proto,
            family: c::FAMILY_IPV4,
        };
        let mut ids = HashSet::new();
        for b in &svc.backends {
            if !ids.insert(b.id) {
                return Err(svc_err(format!("duplicate backend id {}", b.id)));
            }
        }
        // 1. Backends.
        for b in &svc.backends {
            let v = c::BackendValue {
                addr: ipv4_addr(b.ip),
                port: b.port.to_be(),
                proto: svc.proto,
                family: c::FAMILY_IPV4,
                state: match b.state {
                    BackendState::Active => c::BACKEND_ACTIVE,
                    BackendState::Terminating => c::BACKEND_TERMINATING,
                },
                _pad: [0; 3],
            };
            self.maps
                .backends
                .insert(b.id, v, 0)
                .map_err(map_err(m::BACKENDS))?;
        }
        let active: Vec<&Backend> = svc
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active && b.weight > 0)
            .collect();
        // 2. Slots for random choice: a backend of weight w takes w slots (capped).
        let mut slots: Vec<u32> = Vec::new();
        for b in &active {
            for _ in 0..b.weight.min(64) {
                slots.push(b.id);
            }
        }
        for (i, id) in slots.iter().enumerate() {
            self.maps
                .backend_slots
                .insert(
                    c::BackendSlotKey {
                        svc_id: svc.id,
                        slot: i as u32,
                    },
                    *id,
                    0,
                )
                .map_err(map_err(m::BACKEND_SLOTS))?;
        }
        // 3. Maglev table (one map write).
        let (flags_lb, m_size) = match svc.algorithm {
            LbAlgorithm::Random => (0, 0),
            LbAlgorithm::Maglev { m: m_size } => {
                let list: Vec<weft_model::maglev::MaglevBackend> = active
                    .iter()
                    .map(|b| {
                        weft_model::maglev::MaglevBackend::new(
                            backend_hash_key(b, svc.proto),
                            b.weight,
                        )
                    })
                    .collect();
                let table = weft_model::maglev::build_table(&list, m_size, self.cfg.maglev_seed)
                    .map_err(|e| svc_err(e.to_string()))?;
                if !table.is_empty() {
                    let ids: Vec<u32> = table.iter().map(|idx| active[*idx as usize].id).collect();
                    self.maps.maglev_write(svc.id, &ids)?;
                }
                (c::SVC_F_MAGLEV, m_size)
            }
        };
        // 4. The service entry: the switch.
        let value = c::ServiceValue {
            svc_id: svc.id,
            count: slots.len() as u32,
            flags: flags_lb
                | if svc.affinity.is_some() {
                    c::SVC_F_AFFINITY
                } else {
                    0
                },
            maglev_m: m_size,
            affinity_timeout_s: svc
                .affinity
                .map_or(0, |d| d.as_secs().min(u32::MAX as u64) as u32),
            _pad: 0,
        };
        self.maps
            .services
            .insert(key, value, 0)
            .map_err(map_err(m::SERVICES))?;
        // 5. Clean up what the old version had and the new one does not.
        let new_ids: BTreeSet<u32> = svc.backends.iter().map(|b| b.id).collect();
        if let Some((old_key, old_ids, old_slots)) = self.cache.services.get(&svc.id).cloned() {
            if old_key != key {
                ignore_missing(self.maps.services.remove(&old_key))
                    .map_err(map_err(m::SERVICES))?;
            }
            for slot in slots.len() as u32..old_slots {
                ignore_missing(self.maps.backend_slots.remove(&c::BackendSlotKey {
                    svc_id: svc.id,
                    slot,
                }))
                .map_err(map_err(m::BACKEND_SLOTS))?;
            }
            for id in old_ids.difference(&new_ids) {
                if !self.backend_used_elsewhere(svc.id, *id) {
                    ignore_missing(self.maps.backends.remove(id)).map_err(map_err(m::BACKENDS))?;
                }
            }
        }
        if flags_lb == 0 || active.is_empty() {
            self.maps.maglev_remove(svc.id)?;
        }
        self.cache
            .services
            .insert(svc.id, (key, new_ids, slots.len() as u32));
        Ok(())
    }

    pub fn remove_service(&mut self, svc_id: u32) -> Result<()> {
        let Some((key, ids, n_slots)) = self.cache.services.remove(&svc_id) else {
            return Ok(());
        };
        ignore_missing(self.maps.services.remove(&key)).map_err(map_err(m::SERVICES))?;
        for slot in 0..n_slots {
            ignore_missing(
                self.maps
                    .backend_slots
                    .remove(&c::BackendSlotKey { svc_id, slot }),
            )
            .map_err(map_err(m::BACKEND_SLOTS))?;
        }
        self.maps.maglev_remove(svc_id)?;
        for id in ids {
            if !self.backend_used_elsewhere(svc_id, id) {
                ignore_missing(self.maps.backends.remove(&id)).map_err(map_err(m::BACKENDS))?;
            }
        }
        Ok(())
    }

    /// Whether a service other than `svc_id` references backend `id` (backends may be shared).
    fn backend_used_elsewhere(&self, svc_id: u32, id: u32) -> bool {
        self.cache
            .services
            .iter()
            .any(|(other, (_, ids, _))| *other != svc_id && ids.contains(&id))
    }

    // ---- observation ----

    pub fn counters(&self) -> Result<Counters> {
        self.maps.counters()
    }

    /// Collects expired conntrack entries (see [`Maps::ct_gc`]).
    pub fn ct_gc(&mut self) -> Result<usize> {
        self.maps.ct_gc()
    }

    /// Fill of every map (see [`map_fill`]).
    pub fn map_fill(&self) -> Result<BTreeMap<String, f64>> {
        map_fill(&self.cfg.pin_path)
    }

    /// Takes the flow-event reader (one consumer per ring buffer).
    pub fn flow_events(&mut self) -> Option<FlowEvents> {
        match self.maps.flow_events() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "no flow events");
                None
            }
        }
    }

    /// Removes every pin (maps and links) under the pin path: detaches everything once the
    /// last fd is closed. For tests and `node-agent` uninstall; a restart must NOT call it.
    pub fn unpin_all(pin_path: &Path) -> std::io::Result<()> {
        match std::fs::remove_dir_all(pin_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `bpf_ktime_get_ns`'s clock (`CLOCK_MONOTONIC`), in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The fill (entries / max entries, 0..=1) of every keyed map pinned under `pin_path`, by map
/// name (`WEFT_CT`, ...): what the agent's health report carries as `map_fill`. Arrays (config,
/// metrics) and the event ring buffer have no fill.
pub fn map_fill(pin_path: &Path) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for name in m::ALL {
        if matches!(name, m::CONFIG | m::METRICS | m::EVENTS) {
            continue;
        }
        let data = MapData::from_pin(pin_path.join(name)).map_err(map_err(name))?;
        let info = data.info().map_err(map_err(name))?;
        let n = sys::map_count(data.fd().as_fd(), info.key_size() as usize)
            .map_err(io_err(format!("counting the entries of {name}")))?;
        let max = info.max_entries().max(1) as f64;
        out.insert(name.to_string(), n as f64 / max);
    }
    Ok(out)
}

/// The Maglev permutation key of a backend: the same string on every node.
pub fn backend_hash_key(b: &Backend, proto: u8) -> String {
    format!("{}:{}/{}", b.ip, b.port, proto)
}

/// Flow hash of the socket load balancer (mirror of the eBPF `client_hash`): which Maglev
/// slot a client (network namespace cookie) uses for a service.
pub fn maglev_slot(hash_seed: u32, client_cookie: u64, svc_id: u32, m_size: u32) -> usize {
    fn mix64(mut h: u64) -> u64 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    }
    (mix64(client_cookie ^ (((hash_seed as u64) << 32) | svc_id as u64)) % m_size as u64) as usize
}

/// Reads flow events from the ring buffer.
pub struct FlowEvents {
    ring: ring::Ring,
}

/// Most events one [`FlowEvents::drain`] returns (the rest waits for the next call).
pub const DRAIN_MAX: usize = 4096;

impl FlowEvents {
    /// Returns the events available now (at most [`DRAIN_MAX`]), without waiting.
    pub fn drain(&mut self) -> Vec<c::FlowEvent> {
        let mut out = Vec::new();
        self.ring.consume(DRAIN_MAX, |item| {
            if item.len() >= std::mem::size_of::<c::FlowEvent>() {
                // SAFETY: the kernel wrote a FlowEvent (repr(C), Pod) here; read unaligned.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const c::FlowEvent) });
            }
        });
        out
    }

    /// Records skipped because the ring held something that was not a record.
    pub fn corrupt(&self) -> u64 {
        self.ring.corrupt
    }
}

/// Async stream of flow events (tokio): waits on the ring buffer's fd.
pub struct FlowEventStream {
    fd: tokio::io::unix::AsyncFd<FlowEvents>,
    pending: std::collections::VecDeque<c::FlowEvent>,
}

impl FlowEventStream {
    /// Must be called inside a tokio runtime with I/O enabled.
    pub fn new(events: FlowEvents) -> std::io::Result<Self> {
        // SAFETY: `FlowEvents` owns the ring buffer's map fd; it stays open and unchanged for
        // as long as the `FlowEvents` lives, i.e. for the whole life of the `AsyncFd`.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
        }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            fd,
            pending: Default::default(),
        })
    }

    /// The next event, waiting for one if none is buffered.
    pub async fn next(&mut self) -> std::io::Result<c::FlowEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let mut guard = self.fd.readable_mut().await?;
            let batch = guard.get_inner_mut().drain();
            let full = batch.len() >= DRAIN_MAX;
            if batch.is_empty() {
                guard.clear_ready();
            }
            drop(guard);
            self.pending.extend(batch);
            if full {
                // A busy ring must not keep this worker thread to itself.
                tokio::task::yield_now().await;
            }
        }
    }
}

impl AsRawFd for FlowEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn mask_addr(addr: c::Addr, prefix: u8) -> c::Addr {
    let mut out = [0u8; 16];
    for (i, byte) in addr.iter().enumerate() {
        let bits = (prefix as i32 - 8 * i as i32).clamp(0, 8) as u32;
        let mask = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        out[i] = byte & mask;
    }
    out
}

/// Whether a link pin name (`tc-<ifindex>-<ifname>-<ingress|egress>`) is one of `ifname`'s.
fn is_tc_pin_of(pin: &str, ifname: &str) -> bool {
    let Some((idx, rest)) = pin.strip_prefix("tc-").and_then(|r| r.split_once('-')) else {
        return false;
    };
    !idx.is_empty()
        && idx.bytes().all(|b| b.is_ascii_digit())
        && rest
            .strip_prefix(ifname)
            .is_some_and(|t| t == "-ingress" || t == "-egress")
}

/// Interface index in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Result<u32> {
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| io_err(ifname.to_string())(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(io_err(format!("interface {ifname}"))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_names_follow_the_datapath_codes() {
        let named = [
            (c::DROP_NONE, ""),
            (c::DROP_POLICY_DENIED, "POLICY_DENIED"),
            (c::DROP_DENY_RULE, "DENY_RULE"),
            (c::DROP_NO_BACKEND, "NO_BACKEND"),
            (c::DROP_CT_FULL, "CT_FULL"),
            (c::DROP_INVALID_PACKET, "INVALID_PACKET"),
            (c::DROP_FRAGMENT, "FRAGMENT"),
            (c::DROP_UNSUPPORTED_L3, "UNSUPPORTED_L3"),
            (c::DROP_INTERNAL, "INTERNAL"),
            (c::DROP_UNKNOWN_ENDPOINT, "UNKNOWN_ENDPOINT"),
            (c::DROP_UNSUPPORTED_RULE, "UNSUPPORTED_RULE"),
            (c::DROP_SPOOFED_SOURCE, "SPOOFED_SOURCE"),
            (200, "UNKNOWN"),
        ];
        for (code, name) in named {
            assert_eq!(drop_reason_name(code), name, "code {code}");
        }
    }

    #[test]
    fn link_pins_are_matched_by_interface_name() {
        assert!(is_tc_pin_of("tc-12-lxc0-ingress", "lxc0"));
        assert!(is_tc_pin_of("tc-7-lxc0-egress", "lxc0"));
        assert!(!is_tc_pin_of("tc-12-lxc01-ingress", "lxc0"));
        assert!(!is_tc_pin_of("tc-12-xlxc0-ingress", "lxc0"));
        assert!(!is_tc_pin_of("uplink-12-lxc0-ingress", "lxc0"));
        assert!(!is_tc_pin_of("tc--lxc0-ingress", "lxc0"));
    }

    #[test]
    fn masks_cidrs() {
        let a = c::addr_v4([10, 1, 2, 3]);
        assert_eq!(&mask_addr(a, 8)[..4], &[10, 0, 0, 0]);
        assert_eq!(&mask_addr(a, 20)[..4], &[10, 1, 0, 0]);
        assert_eq!(&mask_addr(a, 32)[..4], &[10, 1, 2, 3]);
        assert_eq!(&mask_addr(a, 0)[..4], &[0, 0, 0, 0]);
    }
}
