//! Every map the programs share, and the per-CPU scratch space for conntrack keys.
//!
//! The static names are the ELF map names the agent looks up (and pins): do not rename them.
//! Sizes are defaults; the agent overrides them at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use weft_datapath_common::*;

#[map]
pub(crate) static WEFT_ENDPOINTS: HashMap<EndpointKey, EndpointValue> = HashMap::pinned(4096, 0);
#[map]
pub(crate) static WEFT_IPCACHE: LpmTrie<IpcacheKey, IpcacheValue> = LpmTrie::pinned(65536, 0);
#[map]
pub(crate) static WEFT_POLICY: HashMap<PolicyHashKey, PolicyValue> = HashMap::pinned(262144, 0);
#[map]
pub(crate) static WEFT_POLICY_ALLOW: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(65536, 0);
#[map]
pub(crate) static WEFT_POLICY_DENY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(65536, 0);
#[map]
/// A plain hash (not LRU): a live connection is never evicted to make room; when full, new
/// connections drop with `CT_FULL` until the agent's sweep collects expired entries.
pub(crate) static WEFT_CT: HashMap<CtKey, CtValue> = HashMap::pinned(262144, 0);
#[map]
pub(crate) static WEFT_CONFIG: Array<Config> = Array::pinned(1, 0);
#[map]
pub(crate) static WEFT_METRICS: PerCpuArray<MetricValue> = PerCpuArray::pinned(METRICS_LEN, 0);
#[map]
pub(crate) static WEFT_EVENTS: RingBuf = RingBuf::pinned(1 << 20, 0);
#[map]
pub(crate) static WEFT_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(65536, 0);
#[map]
pub(crate) static WEFT_BACKEND_SLOTS: HashMap<BackendSlotKey, u32> = HashMap::pinned(262144, 0);
#[map]
pub(crate) static WEFT_BACKENDS: HashMap<u32, BackendValue> = HashMap::pinned(262144, 0);
/// Per-service Maglev tables; allocated on insert (BPF_F_NO_PREALLOC = 1).
#[map]
pub(crate) static WEFT_MAGLEV: HashMap<u32, MaglevTable> = HashMap::pinned(1024, 1);
#[map]
pub(crate) static WEFT_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(65536, 0);
#[map]
pub(crate) static WEFT_LB_CT: LruHashMap<CtKey, LbCtValue> = LruHashMap::pinned(262144, 0);
/// First fragments that passed, so that the later fragments of their datagram follow them.
#[map]
pub(crate) static WEFT_FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(8192, 0);
#[map]
pub(crate) static WEFT_SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(262144, 0);

/// Per-CPU scratch space for the conntrack keys of the packet being handled (the BPF stack
/// is 512 bytes; keys live here instead).
#[repr(C)]
pub(crate) struct CtScratch {
    pub(crate) fwd: CtKey,
    pub(crate) rev: CtKey,
    pub(crate) frag: FragKey,
    /// The tuple quoted by an ICMP error (filled by `parse`).
    pub(crate) inner: CtKey,
}

#[map]
pub(crate) static WEFT_SCRATCH: PerCpuArray<CtScratch> = PerCpuArray::with_max_entries(1, 0);
