//! The datapath library: loads Weft's eBPF programs, pins their maps, attaches them to the
//! interfaces and cgroup it is given, and programs the maps through a typed, idempotent API.
//!
//! Every change is a handful of single-entry map operations ordered so that no intermediate
//! state allows what both the old and the new state deny. Maps live under a bpffs directory
//! (`pin_path`); a restarted agent reuses them (traffic keeps flowing) and rebuilds its caches
//! from their contents.

pub mod policy;
pub mod sys;

use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf};
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
    pub policy_allow: u32,
    pub policy_deny: u32,
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
            policy_allow: 262_144,
            policy_deny: 65536,
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

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        c::VERDICT_FORWARDED => "forwarded",
        c::VERDICT_DROPPED => "dropped",
        c::VERDICT_REDIRECTED => "redirected",
        c::VERDICT_TRANSLATED => "translated",
        _ => "unknown",
    }
}

pub fn drop_reason_name(r: u8) -> &'static str {
    match r {
        c::DROP_NONE => "",
        c::DROP_POLICY_DENIED => "policy denied",
        c::DROP_DENY_RULE => "deny rule",
        c::DROP_NO_BACKEND => "no backend",
        c::DROP_CT_FULL => "CT full",
        c::DROP_INVALID_PACKET => "invalid packet",
        c::DROP_FRAGMENT => "fragment",
        c::DROP_UNSUPPORTED_L3 => "unsupported L3",
        c::DROP_INTERNAL => "internal error",
        c::DROP_UNKNOWN_ENDPOINT => "unknown endpoint",
        _ => "unknown",
    }
}

/// Typed handles on every map; built from a loaded object or from pins alone (debug CLI).
pub struct Maps {
    pub endpoints: HashMap<MapData, c::EndpointKey, c::EndpointValue>,
    pub ipcache: LpmTrie<MapData, c::IpcacheKey, c::IpcacheValue>,
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
    /// Taken by [`Datapath::flow_events`].
    pub events: Option<RingBuf<MapData>>,
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
            events: Some(typed(m::EVENTS, get(m::EVENTS)?)?),
        })
    }

    /// Opens the maps pinned under `pin_path` without loading any program (debug CLI).
    pub fn open_pinned(pin_path: &Path) -> Result<Self> {
        Self::from_source(|name| {
            let data = MapData::from_pin(pin_path.join(name)).map_err(map_err(name))?;
            Ok(match name {
                m::IPCACHE | m::POLICY_ALLOW | m::POLICY_DENY => Map::LpmTrie(data),
                m::CT | m::AFFINITY | m::SOCK_REVNAT | m::LB_CT => Map::LruHashMap(data),
                m::CONFIG => Map::Array(data),
                m::METRICS => Map::PerCpuArray(data),
                m::EVENTS => Map::RingBuf(data),
                _ => Map::HashMap(data),
            })
        })
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

    /// (map, prefix, key, value) of the endpoint's policy entries.
    pub fn list_policy(
        &self,
        ep_id: u32,
    ) -> Result<Vec<(&'static str, u32, c::PolicyKey, c::PolicyValue)>> {
        let mut out = Vec::new();
        for (name, map) in [("deny", &self.policy_deny), ("allow", &self.policy_allow)] {
            for kv in map.iter() {
                let (k, v) = kv.map_err(map_err(m::POLICY_ALLOW))?;
                if k.data().ep_id == ep_id {
                    out.push((name, k.prefix_len(), k.data(), v));
                }
            }
        }
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

    pub fn list_ct(&self) -> Result<Vec<(c::CtKey, c::CtValue)>> {
        self.ct
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(m::CT))
    }
}

/// What the agent last wrote, rebuilt from the maps at load (reconcile after restart).
#[derive(Default)]
struct Cache {
    /// ep_id -> keys in each policy map.
    policy: StdHashMap<u32, BTreeSet<(policy::PolicyMap, u32, [u8; 12])>>,
    /// svc_id -> (key, backend ids, slot count).
    services: StdHashMap<u32, (c::ServiceKey, BTreeSet<u32>, u32)>,
}

fn policy_key_bytes(k: &c::PolicyKey) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&k.ep_id.to_ne_bytes());
    b[4..8].copy_from_slice(&k.identity.to_ne_bytes());
    b[8] = k.direction;
    b[9] = k.proto;
    b[10..12].copy_from_slice(&k.dport);
    b
}

fn policy_key_from_bytes(b: &[u8; 12]) -> c::PolicyKey {
    c::PolicyKey {
        ep_id: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        identity: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        direction: b[8],
        proto: b[9],
        dport: [b[10], b[11]],
    }
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
            .set_max_entries(m::POLICY_ALLOW, s.policy_allow)
            .set_max_entries(m::POLICY_DENY, s.policy_deny)
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
        for (which, map) in [
            (policy::PolicyMap::Allow, &self.maps.policy_allow),
            (policy::PolicyMap::Deny, &self.maps.policy_deny),
        ] {
            for k in map.keys() {
                let k = k.map_err(map_err(m::POLICY_ALLOW))?;
                let d = k.data();
                cache.policy.entry(d.ep_id).or_default().insert((
                    which,
                    k.prefix_len(),
                    policy_key_bytes(&d),
                ));
            }
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
        Ok(())
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
            let link =
                sys::obj_get(&pin).map_err(io_err(format!("opening link {}", pin.display())))?;
            sys::link_update(link.as_fd(), prog_fd.as_fd())
                .map_err(io_err(format!("updating link {}", pin.display())))?;
            tracing::info!(link = %pin.display(), "reused pinned link");
            return Ok(());
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

    /// Detaches the policy programs from an interface (removes the pinned links).
    pub fn detach_endpoint_interface(&self, ifname: &str) -> Result<()> {
        let ifindex = ifindex(ifname)?;
        for tag in ["ingress", "egress"] {
            let pin = link_pin(&self.cfg.pin_path, &format!("tc-{ifindex}-{ifname}-{tag}"));
            if pin.exists() {
                std::fs::remove_file(&pin)
                    .map_err(io_err(format!("removing {}", pin.display())))?;
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
        let key = c::EndpointKey {
            family: c::FAMILY_IPV4,
            _pad: [0; 3],
            addr: ipv4_addr(ep.ip),
        };
        let rev = self
            .maps
            .endpoints
            .get(&key, 0)
            .map(|v| v.policy_rev)
            .unwrap_or(0);
        let mut flags = 0;
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
        self.apply_ipcache(ipv4_addr(ep.ip), 32, ep.identity)?;
        self.maps
            .endpoints
            .insert(key, value, 0)
            .map_err(map_err(m::ENDPOINTS))
    }

    /// Removes an endpoint, its ipcache entry and its policy entries.
    pub fn remove_endpoint(&mut self, ep_id: u32, ip: Ipv4Addr) -> Result<()> {
        let key = c::EndpointKey {
            family: c::FAMILY_IPV4,
            _pad: [0; 3],
            addr: ipv4_addr(ip),
        };
        ignore_missing(self.maps.endpoints.remove(&key)).map_err(map_err(m::ENDPOINTS))?;
        self.remove_ipcache(ipv4_addr(ip), 32)?;
        self.apply_policy(ep_id, &[])
    }

    /// Maps a CIDR to an identity (longest prefix wins; a more specific entry is how a
    /// CIDR "except" is expressed).
    pub fn apply_ipcache(&mut self, addr: c::Addr, prefix: u8, identity: u32) -> Result<()> {
        let key = Key::new(
            c::IPCACHE_PREFIX_HEADER_BITS + prefix as u32,
            c::IpcacheKey {
                family: c::FAMILY_IPV4,
                _pad: [0; 3],
                addr: mask_addr(addr, prefix),
            },
        );
        self.maps
            .ipcache
            .insert(&key, c::IpcacheValue { identity, flags: 0 }, 0)
            .map_err(map_err(m::IPCACHE))
    }

    pub fn apply_ipcache_v4(&mut self, ip: Ipv4Addr, prefix: u8, identity: u32) -> Result<()> {
        self.apply_ipcache(ipv4_addr(ip), prefix, identity)
    }

    pub fn remove_ipcache(&mut self, addr: c::Addr, prefix: u8) -> Result<()> {
        let key = Key::new(
            c::IPCACHE_PREFIX_HEADER_BITS + prefix as u32,
            c::IpcacheKey {
                family: c::FAMILY_IPV4,
                _pad: [0; 3],
                addr: mask_addr(addr, prefix),
            },
        );
        ignore_missing(self.maps.ipcache.remove(&key)).map_err(map_err(m::IPCACHE))
    }

    // ---- policy ----

    /// Sets the complete policy of an endpoint. Only differences are written, one map
    /// operation per key: deny keys are added before allow keys and allow keys are removed
    /// before deny keys. Then the endpoint's policy revision is bumped so established
    /// connections are re-checked once. Idempotent: applying the same set writes nothing.
    pub fn apply_policy(&mut self, ep_id: u32, entries: &[PolicyEntry]) -> Result<()> {
        let mut desired: BTreeMap<(policy::PolicyMap, u32, [u8; 12]), c::PolicyValue> =
            BTreeMap::new();
        for e in entries {
            let (which, keys, value) = policy::expand(ep_id, e)
                .map_err(|source| DatapathError::Policy { ep: ep_id, source })?;
            for k in keys {
                let id = (which, k.prefix_len, policy_key_bytes(&k.key));
                // Two allow entries on one key: the more specific action (redirect) wins.
                let keep = desired
                    .get(&id)
                    .is_some_and(|old| old.action == c::ACTION_REDIRECT);
                if !keep {
                    desired.insert(id, value);
                }
            }
        }
        let current = self.cache.policy.get(&ep_id).cloned().unwrap_or_default();
        let mut changed = false;
        // Add/update: deny map first.
        for which in [policy::PolicyMap::Deny, policy::PolicyMap::Allow] {
            for (id, value) in desired.iter().filter(|(id, _)| id.0 == which) {
                let key = Key::new(id.1, policy_key_from_bytes(&id.2));
                let map = match which {
                    policy::PolicyMap::Allow => &mut self.maps.policy_allow,
                    policy::PolicyMap::Deny => &mut self.maps.policy_deny,
                };
                if current.contains(id) && map.get(&key, 0).ok().as_ref() == Some(value) {
                    continue;
                }
                map.insert(&key, *value, 0)
                    .map_err(map_err(m::POLICY_ALLOW))?;
                changed = true;
            }
        }
        // Remove stale: allow map first.
        for which in [policy::PolicyMap::Allow, policy::PolicyMap::Deny] {
            for id in current
                .iter()
                .filter(|id| id.0 == which && !desired.contains_key(id))
            {
                let key = Key::new(id.1, policy_key_from_bytes(&id.2));
                let map = match which {
                    policy::PolicyMap::Allow => &mut self.maps.policy_allow,
                    policy::PolicyMap::Deny => &mut self.maps.policy_deny,
                };
                ignore_missing(map.remove(&key)).map_err(map_err(m::POLICY_ALLOW))?;
                changed = true;
            }
        }
        if desired.is_empty() {
            self.cache.policy.remove(&ep_id);
        } else {
            self.cache
                .policy
                .insert(ep_id, desired.keys().copied().collect());
        }
        if changed {
            self.bump_policy_revision(ep_id)?;
        }
        Ok(())
    }

    fn bump_policy_revision(&mut self, ep_id: u32) -> Result<()> {
        let found = self
            .maps
            .endpoints
            .iter()
            .filter_map(|kv| kv.ok())
            .find(|(_, v)| v.ep_id == ep_id);
        if let Some((k, mut v)) = found {
            v.policy_rev = v.policy_rev.wrapping_add(1);
            self.maps
                .endpoints
                .insert(k, v, 0)
                .map_err(map_err(m::ENDPOINTS))?;
        }
        Ok(())
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
                ignore_missing(self.maps.backends.remove(id)).map_err(map_err(m::BACKENDS))?;
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
            ignore_missing(self.maps.backends.remove(&id)).map_err(map_err(m::BACKENDS))?;
        }
        Ok(())
    }

    // ---- observation ----

    pub fn counters(&self) -> Result<Counters> {
        self.maps.counters()
    }

    /// Takes the flow-event reader (one consumer per ring buffer).
    pub fn flow_events(&mut self) -> Option<FlowEvents> {
        self.maps.events.take().map(|ring| FlowEvents { ring })
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
    ring: RingBuf<MapData>,
}

impl FlowEvents {
    /// Returns the events available now, without waiting.
    pub fn drain(&mut self) -> Vec<c::FlowEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<c::FlowEvent>() {
                // SAFETY: the kernel wrote a FlowEvent (repr(C), Pod) at this address; the read
                // is unaligned-safe.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const c::FlowEvent) });
            }
        }
        out
    }

    /// Streams events as they arrive (tokio).
    pub async fn next_batch(
        fd: &mut tokio::io::unix::AsyncFd<FlowEvents>,
    ) -> std::io::Result<Vec<c::FlowEvent>> {
        loop {
            let mut guard = fd.readable_mut().await?;
            let batch = guard.get_inner_mut().drain();
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
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
    fn masks_cidrs() {
        let a = c::addr_v4([10, 1, 2, 3]);
        assert_eq!(&mask_addr(a, 8)[..4], &[10, 0, 0, 0]);
        assert_eq!(&mask_addr(a, 20)[..4], &[10, 1, 0, 0]);
        assert_eq!(&mask_addr(a, 32)[..4], &[10, 1, 2, 3]);
        assert_eq!(&mask_addr(a, 0)[..4], &[0, 0, 0, 0]);
    }

    #[test]
    fn policy_key_bytes_round_trip() {
        let k = c::PolicyKey {
            ep_id: 7,
            identity: 1234,
            direction: c::DIR_EGRESS,
            proto: 17,
            dport: 53u16.to_be_bytes(),
        };
        assert_eq!(policy_key_from_bytes(&policy_key_bytes(&k)), k);
    }
}
