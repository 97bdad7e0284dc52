//! The datapath library: loads Weft's eBPF programs, pins their maps, attaches them to the
//! interfaces and cgroup it is given, and programs the maps through a typed, idempotent API.
//!
//! Every change is a handful of single-entry map operations ordered so that no intermediate
//! state allows what both the old and the new state deny. Maps live under a bpffs directory
//! (`pin_path`); a restarted agent reuses them (traffic keeps flowing) and rebuilds its caches
//! from their contents.

mod endpoints;
mod events;
pub mod fqdn;
mod load;
mod maps;
pub mod policy;
mod policy_apply;
pub mod ring;
mod services;
pub mod sys;

use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray};
use aya::programs::{CgroupSockAddr, ProgramError, SchedClassifier};
use aya::{Ebpf, EbpfLoader};
use weft_datapath_common as c;
use weft_datapath_common::maps as m;

pub use endpoints::addr_ip;
use endpoints::*;
pub use events::*;
pub use maps::*;
pub use policy::{Action, Direction, PolicyEntry, PolicyEntryError};
pub use services::*;

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
    /// A write the map had no room for (a hash map's `E2BIG`, a trie's `ENOSPC`).
    #[error("map {name} is full: raise its size with `node-agent run --map-entries` and restart the agent")]
    MapFull { name: &'static str },
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
    #[error("L7 proxy: {0}")]
    L7Proxy(String),
}

/// A set of L7 rules a proxy listener enforces: HTTP rules of one direction, or DNS rules
/// (egress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L7Rules<'a> {
    Http(Direction, &'a [weft_model::desired::HttpMatch]),
    Dns(&'a [weft_model::policy::FqdnSelector]),
}

/// The agent's L7 proxy as the datapath sees it: the port of the listener that enforces a
/// set of L7 rules (redirect entries carry it).
pub trait L7Proxy: Send {
    fn port_for(&mut self, rules: L7Rules<'_>) -> std::result::Result<u16, String>;
    /// Stops the listeners of rule sets not in `in_use`.
    fn retain(&mut self, in_use: &BTreeSet<L7Rules<'_>>);
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| match &source {
        MapError::SyscallError(e)
            if matches!(e.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)) =>
        {
            DatapathError::MapFull { name }
        }
        _ => DatapathError::Map { name, source },
    }
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

impl MapSizes {
    /// The sizes `--map-entries` may set, by the name it takes.
    pub const NAMES: [&'static str; 9] = [
        "endpoints",
        "ipcache",
        "policy",
        "policy-ranges",
        "conntrack",
        "services",
        "backends",
        "maglev-services",
        "events-bytes",
    ];

    /// Sets the size named `name` (one of [`MapSizes::NAMES`]).
    pub fn set(&mut self, name: &str, entries: u32) -> std::result::Result<(), String> {
        let slot = match name {
            "endpoints" => &mut self.endpoints,
            "ipcache" => &mut self.ipcache,
            "policy" => &mut self.policy,
            "policy-ranges" => &mut self.policy_ranges,
            "conntrack" => &mut self.conntrack,
            "services" => &mut self.services,
            "backends" => &mut self.backends,
            "maglev-services" => &mut self.maglev_services,
            "events-bytes" => &mut self.events_bytes,
            _ => {
                return Err(format!(
                    "no map size {name:?}: one of {}",
                    Self::NAMES.join(", ")
                ))
            }
        };
        *slot = entries;
        Ok(())
    }
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
    /// Of the service's VIP's family.
    pub ip: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
}

/// A load-balanced service (VIP:port/proto).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub id: u32,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub algorithm: LbAlgorithm,
    /// Client affinity timeout; `None` = no affinity.
    pub affinity: Option<Duration>,
    pub backends: Vec<Backend>,
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

/// The loaded datapath.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: Maps,
    cfg: DatapathConfig,
    cache: Cache,
    /// Waits out programs that may still read retired policy entries.
    barrier: sys::RcuBarrier,
    /// Where L7 redirect entries point (none: such entries cannot be programmed).
    l7: Option<Box<dyn L7Proxy>>,
    /// Addresses learned from DNS, and the entries `toFQDNs` expands to.
    fqdn: fqdn::Fqdn,
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
