//! Weft's eBPF datapath.
//!
//! - `weft_from_endpoint` / `weft_to_endpoint`: tc programs on an endpoint's host-side veth
//!   (ingress hook = packets the endpoint sends, egress hook = packets it receives): identity
//!   policy with conntrack, flow events and per-CPU counters.
//! - `weft_connect4` / `weft_sendmsg4` / `weft_recvmsg4` / `weft_getpeername4`: socket-level
//!   east-west load balancing on a cgroup v2 (VIP:port -> backend at connect time).
//! - `weft_pass`: tc pass-through (benchmark floor).
//!
//! Fail closed: any classification error drops the packet and counts the drop.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, classifier, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{SockAddrContext, TcContext},
    EbpfContext,
};
use weft_datapath_common::*;

// ---- maps (sizes are defaults; the agent overrides them at load time) ----

#[map]
static WEFT_ENDPOINTS: HashMap<EndpointKey, EndpointValue> = HashMap::pinned(4096, 0);
#[map]
static WEFT_IPCACHE: LpmTrie<IpcacheKey, IpcacheValue> = LpmTrie::pinned(65536, 0);
#[map]
static WEFT_POLICY: HashMap<PolicyHashKey, PolicyValue> = HashMap::pinned(262144, 0);
#[map]
static WEFT_POLICY_ALLOW: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(65536, 0);
#[map]
static WEFT_POLICY_DENY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(65536, 0);
#[map]
/// A plain hash (not LRU): a live connection is never evicted to make room; when full, new
/// connections drop with `CT_FULL` until the agent's sweep collects expired entries.
static WEFT_CT: HashMap<CtKey, CtValue> = HashMap::pinned(262144, 0);
#[map]
static WEFT_CONFIG: Array<Config> = Array::pinned(1, 0);
#[map]
static WEFT_METRICS: PerCpuArray<MetricValue> = PerCpuArray::pinned(METRICS_LEN, 0);
#[map]
static WEFT_EVENTS: RingBuf = RingBuf::pinned(1 << 20, 0);
#[map]
static WEFT_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(65536, 0);
#[map]
static WEFT_BACKEND_SLOTS: HashMap<BackendSlotKey, u32> = HashMap::pinned(262144, 0);
#[map]
static WEFT_BACKENDS: HashMap<u32, BackendValue> = HashMap::pinned(262144, 0);
/// Per-service Maglev tables; allocated on insert (BPF_F_NO_PREALLOC = 1).
#[map]
static WEFT_MAGLEV: HashMap<u32, MaglevTable> = HashMap::pinned(1024, 1);
#[map]
static WEFT_AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(65536, 0);
#[map]
static WEFT_LB_CT: LruHashMap<CtKey, LbCtValue> = LruHashMap::pinned(262144, 0);
/// First fragments that passed, so that the later fragments of their datagram follow them.
#[map]
static WEFT_FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(8192, 0);
#[map]
static WEFT_SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> = LruHashMap::pinned(262144, 0);

/// Per-CPU scratch space for the conntrack keys of the packet being handled (the BPF stack
/// is 512 bytes; keys live here instead).
#[repr(C)]
struct CtScratch {
    fwd: CtKey,
    rev: CtKey,
    frag: FragKey,
    /// The tuple quoted by an ICMP error (filled by `parse`).
    inner: CtKey,
}

#[map]
static WEFT_SCRATCH: PerCpuArray<CtScratch> = PerCpuArray::with_max_entries(1, 0);

const NS_PER_S: u64 = 1_000_000_000;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// ---- helpers ----

#[inline(always)]
fn config() -> Config {
    match WEFT_CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}

#[inline(always)]
fn count(verdict: u8, reason: u8, bytes: u64) {
    if let Some(m) = WEFT_METRICS.get_ptr_mut(metric_index(verdict, reason)) {
        // Per-CPU slot: no other writer.
        unsafe {
            (*m).packets += 1;
            (*m).bytes += bytes;
        }
    }
}

#[inline(always)]
fn lost_event() {
    if let Some(m) = WEFT_METRICS.get_ptr_mut(METRIC_LOST_EVENTS) {
        unsafe { (*m).packets += 1 };
    }
}

/// A parsed IPv4 or IPv6 packet (addresses and ports as on the wire).
#[derive(Clone, Copy, Default)]
struct Pkt {
    /// `FAMILY_IPV4` / `FAMILY_IPV6`.
    family: u8,
    saddr: Addr,
    daddr: Addr,
    /// Ports in network byte order.
    sport: u16,
    dport: u16,
    /// Port used for policy (host order): TCP/UDP dport, ICMP type.
    policy_port: u16,
    proto: u8,
    tcp_flags: u8,
    bytes: u32,
    /// Offset of the L4 header.
    l4_off: u32,
    /// `FRAG_*`.
    frag: u8,
    /// IP identification of a fragment.
    frag_id: u32,
    /// 1: an ICMP/ICMPv6 error quoting a packet whose tuple is in `CtScratch::inner`.
    icmp_err: u8,
}

/// Not a fragment.
#[allow(dead_code)]
const FRAG_NONE: u8 = 0;
/// First fragment of a datagram (offset 0, more to come): carries the L4 header.
const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header; follows the verdict of its first fragment.
const FRAG_LATER: u8 = 2;

/// What `parse` found.
#[derive(PartialEq, Eq)]
enum Parsed {
    /// IPv4/IPv6: the `Pkt` was filled in.
    Ip,
    /// ARP, or IPv6 neighbour discovery / multicast listener messages: link-local control
    /// traffic, not subject to L3/L4 policy, passed explicitly.
    LinkControl,
    /// Any other frame (VLAN, MPLS, PPPoE...): dropped when an endpoint sends it.
    Other,
}

/// Reads `N` bytes at `off`: direct packet access when the bytes are in the linear part,
/// else `bpf_skb_load_bytes`.
#[inline(always)]
fn read<const N: usize>(ctx: &TcContext, off: usize) -> Result<[u8; N], u8> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + N <= end {
        // SAFETY: bounds checked against data_end just above (the verifier checks it too).
        Ok(unsafe { core::ptr::read_unaligned((start + off) as *const [u8; N]) })
    } else {
        ctx.load::<[u8; N]>(off).map_err(|_| DROP_INVALID_PACKET)
    }
}

/// Reads `N` bytes at `off` with direct packet access, first pulling them into the linear
/// part of the skb when they are not there yet.
#[inline(always)]
fn read_linear<const N: usize>(ctx: &TcContext, off: usize) -> Result<[u8; N], u8> {
    if ctx.data() + off + N > ctx.data_end() {
        ctx.pull_data((off + N) as u32)
            .map_err(|_| DROP_INVALID_PACKET)?;
    }
    let start = ctx.data();
    if start + off + N > ctx.data_end() {
        return Err(DROP_INVALID_PACKET);
    }
    // SAFETY: bounds checked against data_end just above (the verifier checks it too).
    Ok(unsafe { core::ptr::read_unaligned((start + off) as *const [u8; N]) })
}

/// Parses the frame into `p`.
#[inline(always)]
fn parse(ctx: &TcContext, p: &mut Pkt) -> Result<Parsed, u8> {
    match parse_code(ctx, p) {
        0 => Ok(Parsed::Ip),
        1 => Ok(Parsed::LinkControl),
        2 => Ok(Parsed::Other),
        code => Err(code as u8),
    }
}

/// A separate BPF function: its temporaries do not add to the callers' frames (the callers
/// are close to the 512-byte stack limit). Returns a plain scalar (0 IP, 1 link control,
/// 2 other, else `0x100 | drop reason`): the verifier refuses a returned pointer.
#[inline(never)]
fn parse_code(ctx: &TcContext, p: &mut Pkt) -> u32 {
    match parse_frame(ctx, p) {
        Ok(Parsed::Ip) => 0,
        Ok(Parsed::LinkControl) => 1,
        Ok(Parsed::Other) => 2,
        Err(reason) => 0x100 | reason as u32,
    }
}

#[inline(always)]
fn parse_frame(ctx: &TcContext, p: &mut Pkt) -> Result<Parsed, u8> {
    let eth: [u8; 2] = read(ctx, 12)?;
    let ethertype = u16::from_be_bytes(eth);
    if ethertype == ETH_P_IPV6 {
        return parse_v6(ctx, p);
    }
    if ethertype == ETH_P_ARP {
        return Ok(Parsed::LinkControl);
    }
    if ethertype != ETH_P_IP {
        return Ok(Parsed::Other);
    }
    let ip: [u8; 20] = read(ctx, ETH_HLEN)?;
    if ip[0] >> 4 != 4 {
        return Err(DROP_INVALID_PACKET);
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(DROP_INVALID_PACKET);
    }
    let l4 = ETH_HLEN + (ihl & 0x3c);
    p.family = FAMILY_IPV4;
    p.saddr = addr_v4([ip[12], ip[13], ip[14], ip[15]]);
    p.daddr = addr_v4([ip[16], ip[17], ip[18], ip[19]]);
    p.proto = ip[9];
    p.bytes = ctx.len();
    p.l4_off = l4 as u32;
    p.frag_id = u16::from_ne_bytes([ip[4], ip[5]]) as u32;
    if (ip[6] & 0x1f) != 0 || ip[7] != 0 {
        // A later fragment: no L4 header here.
        p.frag = FRAG_LATER;
        return Ok(Parsed::Ip);
    }
    if ip[6] & 0x20 != 0 {
        p.frag = FRAG_FIRST;
    }
    parse_l4(ctx, p, l4)?;
    Ok(Parsed::Ip)
}

/// ICMPv6 neighbour discovery (router/neighbour solicitation/advertisement, redirect):
/// link-local control traffic, passed like ARP.
const ICMPV6_ND_FIRST: u8 = 133;
const ICMPV6_ND_LAST: u8 = 137;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Multicast listener query/report/done (MLDv1) and MLDv2 report.
const ICMPV6_MLD_QUERY: u8 = 130;
const ICMPV6_MLD_DONE: u8 = 132;
const ICMPV6_MLD2_REPORT: u8 = 143;
const IPV6_NH_HOP: u8 = 0;
const IPV6_NH_ROUTING: u8 = 43;
const IPV6_NH_FRAGMENT: u8 = 44;
const IPV6_NH_AUTH: u8 = 51;
const IPV6_NH_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up (fail closed).
const IPV6_MAX_EXT: usize = 8;
/// Furthest L4 offset accepted (keeps offsets bounded for the verifier).
const IPV6_MAX_L4_OFF: usize = 512;

/// IPv6: the extension headers (hop-by-hop, routing, destination options, fragment,
/// authentication) are walked to the L4 header, so none of them hides the ports from a port
/// rule. Too many or too long extension headers: dropped as invalid.
#[inline(always)]
fn parse_v6(ctx: &TcContext, p: &mut Pkt) -> Result<Parsed, u8> {
    let head: [u8; 8] = read(ctx, ETH_HLEN)?;
    if head[0] >> 4 != 6 {
        return Err(DROP_INVALID_PACKET);
    }
    let mut nh = head[6];
    let mut l4 = ETH_HLEN + 40;
    p.family = FAMILY_IPV6;
    // Direct access only (pulling the bytes into the linear part if needed): a helper
    // fallback would double the stack use.
    p.saddr = read_linear(ctx, ETH_HLEN + 8)?;
    p.daddr = read_linear(ctx, ETH_HLEN + 24)?;
    p.bytes = ctx.len();
    for _ in 0..IPV6_MAX_EXT {
        if nh == IPV6_NH_FRAGMENT {
            let f: [u8; 8] = read(ctx, l4)?;
            nh = f[0];
            l4 += 8;
            p.frag_id = u32::from_ne_bytes([f[4], f[5], f[6], f[7]]);
            if u16::from_be_bytes([f[2], f[3]]) & 0xfff8 != 0 {
                p.frag = FRAG_LATER;
                p.proto = nh;
                p.l4_off = l4 as u32;
                return Ok(Parsed::Ip);
            }
            if f[3] & 1 != 0 {
                p.frag = FRAG_FIRST;
            }
        } else if nh == IPV6_NH_HOP
            || nh == IPV6_NH_ROUTING
            || nh == IPV6_NH_DSTOPTS
            || nh == IPV6_NH_AUTH
        {
            let h: [u8; 2] = read(ctx, l4)?;
            let len = if nh == IPV6_NH_AUTH {
                (h[1] as usize + 2) * 4
            } else {
                (h[1] as usize + 1) * 8
            };
            nh = h[0];
            l4 += len;
        } else {
            break;
        }
        if l4 > IPV6_MAX_L4_OFF {
            return Err(DROP_INVALID_PACKET);
        }
    }
    if nh == IPV6_NH_HOP
        || nh == IPV6_NH_ROUTING
        || nh == IPV6_NH_DSTOPTS
        || nh == IPV6_NH_AUTH
        || nh == IPV6_NH_FRAGMENT
    {
        return Err(DROP_INVALID_PACKET);
    }
    let l4 = l4 & 0x3ff;
    p.proto = nh;
    p.l4_off = l4 as u32;
    if nh == PROTO_ICMPV6 {
        let i: [u8; 8] = read(ctx, l4)?;
        if (ICMPV6_ND_FIRST..=ICMPV6_ND_LAST).contains(&i[0])
            || (ICMPV6_MLD_QUERY..=ICMPV6_MLD_DONE).contains(&i[0])
            || i[0] == ICMPV6_MLD2_REPORT
        {
            return Ok(Parsed::LinkControl);
        }
        if i[0] == ICMPV6_ECHO_REQUEST || i[0] == ICMPV6_ECHO_REPLY {
            p.sport = u16::from_ne_bytes([i[4], i[5]]);
            p.dport = p.sport;
        }
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        if (1..=4).contains(&i[0]) {
            icmp_inner_v6(ctx, p, (l4 + 8) & 0x7ff);
        }
        p.policy_port = i[0] as u16;
        return Ok(Parsed::Ip);
    }
    parse_l4(ctx, p, l4)?;
    Ok(Parsed::Ip)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, p: &mut Pkt, l4: usize) -> Result<(), u8> {
    let proto = p.proto;
    if proto == PROTO_TCP {
        let t: [u8; 14] = read(ctx, l4)?;
        p.sport = u16::from_ne_bytes([t[0], t[1]]);
        p.dport = u16::from_ne_bytes([t[2], t[3]]);
        p.policy_port = u16::from_be_bytes([t[2], t[3]]);
        p.tcp_flags = t[13];
    } else if proto == PROTO_UDP || proto == PROTO_SCTP {
        // SCTP's common header starts with the two ports, as UDP's.
        let u: [u8; 8] = read(ctx, l4)?;
        p.sport = u16::from_ne_bytes([u[0], u[1]]);
        p.dport = u16::from_ne_bytes([u[2], u[3]]);
        p.policy_port = u16::from_be_bytes([u[2], u[3]]);
    } else if proto == PROTO_ICMP {
        let i: [u8; 8] = read(ctx, l4)?;
        // Echo request/reply: the identifier stands for both ports so replies match.
        if i[0] == 8 || i[0] == 0 {
            p.sport = u16::from_ne_bytes([i[4], i[5]]);
            p.dport = p.sport;
        }
        // Destination unreachable (incl. fragmentation needed), time exceeded, parameter
        // problem.
        if i[0] == 3 || i[0] == 11 || i[0] == 12 {
            icmp_inner_v4(ctx, p, (l4 + 8) & 0xff);
        }
        p.policy_port = i[0] as u16;
    }
    Ok(())
}

/// Fills the quoted tuple's ports from the first 8 bytes of the quoted L4 header; false when
/// the quoted protocol is not one conntrack tracks.
#[inline(always)]
fn inner_ports(k: &mut CtKey, proto: u8, l4: &[u8; 8], echo_request: u8) -> bool {
    if proto == PROTO_TCP || proto == PROTO_UDP || proto == PROTO_SCTP {
        k.sport = u16::from_ne_bytes([l4[0], l4[1]]);
        k.dport = u16::from_ne_bytes([l4[2], l4[3]]);
        true
    } else if l4[0] == echo_request {
        k.sport = u16::from_ne_bytes([l4[4], l4[5]]);
        k.dport = k.sport;
        true
    } else {
        false
    }
}

/// An ICMPv4 error: the quoted IPv4 header + 8 bytes of its L4 header become the tuple to look
/// up (`CtScratch::inner`). Anything unreadable leaves the packet an ordinary ICMP message.
#[inline(always)]
fn icmp_inner_v4(ctx: &TcContext, p: &mut Pkt, off: usize) {
    let Ok(ip) = read::<20>(ctx, off) else {
        return;
    };
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 {
        return;
    }
    let proto = ip[9];
    let Ok(l4) = read::<8>(ctx, off + (ihl & 0x3c)) else {
        return;
    };
    let Some(s) = WEFT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, only this program invocation uses it.
    let k = unsafe { &mut (*s).inner };
    if proto == PROTO_ICMP {
        if !inner_ports(k, 0xff, &l4, 8) {
            return;
        }
    } else if !inner_ports(k, proto, &l4, 0xff) {
        return;
    }
    k.saddr = addr_v4([ip[12], ip[13], ip[14], ip[15]]);
    k.daddr = addr_v4([ip[16], ip[17], ip[18], ip[19]]);
    k.proto = proto;
    k.family = FAMILY_IPV4;
    k.dir = 0;
    k._pad = 0;
    p.icmp_err = 1;
}

/// An ICMPv6 error: the quoted IPv6 header (no extension headers) + 8 bytes of L4.
#[inline(always)]
fn icmp_inner_v6(ctx: &TcContext, p: &mut Pkt, off: usize) {
    let Ok(h) = read::<8>(ctx, off) else {
        return;
    };
    if h[0] >> 4 != 6 {
        return;
    }
    let proto = h[6];
    let Ok(l4) = read::<8>(ctx, off + 40) else {
        return;
    };
    let Some(s) = WEFT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, only this program invocation uses it.
    let k = unsafe { &mut (*s).inner };
    if proto == PROTO_ICMPV6 {
        if !inner_ports(k, 0xff, &l4, ICMPV6_ECHO_REQUEST) {
            return;
        }
    } else if !inner_ports(k, proto, &l4, 0xff) {
        return;
    }
    let Ok(sa) = read_linear::<16>(ctx, off + 8) else {
        return;
    };
    k.saddr = sa;
    let Ok(da) = read_linear::<16>(ctx, off + 24) else {
        return;
    };
    k.daddr = da;
    k.proto = proto;
    k.family = FAMILY_IPV6;
    k.dir = 0;
    k._pad = 0;
    p.icmp_err = 1;
}

struct EventInfo {
    verdict: u8,
    reason: u8,
    direction: u8,
    obs: u8,
    ep_id: u32,
    src_identity: u32,
    dst_identity: u32,
}

/// Writes a flow event straight into the ring buffer (no stack copy: stack is scarce).
#[inline(always)]
fn emit(p: &Pkt, info: &EventInfo) {
    match WEFT_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            // SAFETY: `ev` points to reserved ring-buffer memory of FlowEvent size; every
            // field (all plain integers) is written before submit.
            unsafe {
                (*ev).ts_ns = bpf_ktime_get_ns();
                (*ev).bytes = p.bytes as u64;
                (*ev).saddr = p.saddr;
                (*ev).daddr = p.daddr;
                (*ev).sport = u16::from_be(p.sport);
                (*ev).dport = u16::from_be(p.dport);
                (*ev).proto = p.proto;
                (*ev).family = p.family;
                (*ev).verdict = info.verdict;
                (*ev).drop_reason = info.reason;
                (*ev).direction = info.direction;
                (*ev).obs_point = info.obs;
                (*ev).tcp_flags = p.tcp_flags;
                (*ev)._pad = 0;
                (*ev).ep_id = info.ep_id;
                (*ev).src_identity = info.src_identity;
                (*ev).dst_identity = info.dst_identity;
                (*ev).svc_id = 0;
                (*ev)._pad2 = 0;
            }
            entry.submit(0);
        }
        None => lost_event(),
    }
}

/// `EP_POLICY_GEN` shifted onto `POLICY_DIR_GEN`.
const GEN_SHIFT: u32 = POLICY_DIR_GEN.trailing_zeros() - EP_POLICY_GEN.trailing_zeros();

/// Result of a policy lookup.
struct Decision {
    action: u8,
    proxy_port: u16,
    reason: u8,
}

#[inline(always)]
fn policy_key(ep_id: u32, identity: u32, dir: u8, p: &Pkt) -> Key<PolicyKey> {
    Key::new(
        POLICY_PREFIX_FULL_BITS,
        PolicyKey {
            ep_id,
            identity,
            direction: dir,
            proto: p.proto,
            dport: p.policy_port.to_be_bytes(),
        },
    )
}

#[inline(always)]
fn hash_key(ep_id: u32, identity: u32, dir: u8, proto: u8, port: u16, flags: u8) -> PolicyHashKey {
    PolicyHashKey {
        ep_id,
        identity,
        direction: dir,
        proto,
        dport: port,
        flags,
        _pad: [0; 3],
    }
}

const DENIED_BY_RULE: Decision = Decision {
    action: ACTION_DENY,
    proxy_port: 0,
    reason: DROP_DENY_RULE,
};

/// Deny rules win over allow rules; among allows the most specific wins (exact identity over
/// any identity, then exact port over any port over any protocol, then port ranges).
/// Six hash lookups, plus four LPM lookups only for endpoints with port-range entries.
#[inline(always)]
fn decide(ep: &EndpointValue, dir: u8, peer_identity: u32, p: &Pkt) -> Decision {
    let enforce = if dir == DIR_INGRESS {
        EP_ENFORCE_INGRESS
    } else {
        EP_ENFORCE_EGRESS
    };
    if ep.flags & enforce == 0 {
        return Decision {
            action: ACTION_ALLOW,
            proxy_port: 0,
            reason: DROP_NONE,
        };
    }
    // The endpoint's current policy generation: its entries are complete before the agent
    // flips to it, and stay untouched until no program can still be reading them.
    // Branch-free, so the verifier does not walk the rest of the decision once per generation.
    let dir = dir | (((ep.flags & EP_POLICY_GEN) as u8) << GEN_SHIFT);
    let mut allow: Option<PolicyValue> = None;
    // An entry of a rule Weft does not enforce matched: allows nothing, names the drop.
    let mut unsupported = false;
    // One key on the stack, rewritten for each of the six candidates (stack is scarce).
    let mut k = hash_key(ep.ep_id, peer_identity, dir, p.proto, p.policy_port, 0);
    for i in 0..6u32 {
        if i == 3 {
            k.identity = IDENTITY_ANY;
        }
        match i % 3 {
            0 => {
                k.proto = p.proto;
                k.dport = p.policy_port;
                k.flags = 0;
            }
            1 => {
                k.dport = 0;
                k.flags = POLICY_ANY_PORT;
            }
            _ => {
                k.proto = 0;
                k.flags = POLICY_ANY_PORT | POLICY_ANY_PROTO;
            }
        }
        // Copied at once (no entry of the current generation is deleted while programs
        // may read it, but copying keeps the value a snapshot).
        if let Some(v) = unsafe { WEFT_POLICY.get(&k) }.copied() {
            if v.action == ACTION_DENY {
                return DENIED_BY_RULE;
            }
            if v.action == ACTION_UNSUPPORTED {
                unsupported = true;
            } else if allow.is_none() {
                allow = Some(v);
            }
        }
    }
    if ep.flags & EP_HAS_PORT_RANGES != 0 {
        let exact = policy_key(ep.ep_id, peer_identity, dir, p);
        let any = policy_key(ep.ep_id, IDENTITY_ANY, dir, p);
        if WEFT_POLICY_DENY.get(&exact).is_some() || WEFT_POLICY_DENY.get(&any).is_some() {
            return DENIED_BY_RULE;
        }
        if allow.is_none() {
            allow = match WEFT_POLICY_ALLOW.get(&exact) {
                Some(v) => Some(*v),
                None => WEFT_POLICY_ALLOW.get(&any).copied(),
            };
        }
    }
    match allow {
        Some(v) if v.action == ACTION_ALLOW || v.action == ACTION_REDIRECT => Decision {
            action: v.action,
            proxy_port: v.proxy_port,
            reason: DROP_NONE,
        },
        Some(_) => DENIED_BY_RULE,
        None => Decision {
            action: ACTION_DENY,
            proxy_port: 0,
            reason: if unsupported {
                DROP_UNSUPPORTED_RULE
            } else {
                DROP_POLICY_DENIED
            },
        },
    }
}

/// Updates a live entry; returns true when FIN/RST appear for the first time.
#[inline(always)]
fn ct_touch(e: *mut CtValue, p: &Pkt, now: u64, reply: bool) -> bool {
    unsafe {
        (*e).last_seen_ns = now;
        (*e).packets += 1;
        (*e).bytes += p.bytes as u64;
        let new_flags = p.tcp_flags & !(*e).tcp_flags;
        (*e).tcp_flags |= p.tcp_flags;
        if reply {
            (*e).flags |= CT_F_SEEN_REPLY;
        }
        if p.tcp_flags & TCP_FIN != 0 {
            (*e).flags |= if reply { CT_F_FIN_REV } else { CT_F_FIN_FWD };
        }
        // RST, or FIN both ways: the connection is over, the entry lives the close timeout.
        if p.tcp_flags & TCP_RST != 0
            || (*e).flags & (CT_F_FIN_FWD | CT_F_FIN_REV) == CT_F_FIN_FWD | CT_F_FIN_REV
        {
            (*e).flags |= CT_F_CLOSING;
        }
        new_flags & (TCP_FIN | TCP_RST) != 0
    }
}

#[inline(always)]
fn drop_pkt(p: &Pkt, cfg: &Config, info: &EventInfo) -> i32 {
    count(VERDICT_DROPPED, info.reason, p.bytes as u64);
    if cfg.event_flags & EVENTS_ON_DROP != 0 {
        emit(p, info);
    }
    TC_ACT_SHOT
}

/// The fragment-map key of `p`, built in per-CPU scratch space.
#[inline(always)]
fn frag_key(p: &Pkt, dir: u8) -> Option<&'static FragKey> {
    let scratch = WEFT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value, only this program invocation uses it.
    let k = unsafe { &mut (*scratch).frag };
    k.saddr = p.saddr;
    k.daddr = p.daddr;
    k.id = p.frag_id;
    k.proto = p.proto;
    k.family = p.family;
    k.dir = dir;
    k._pad = 0;
    Some(k)
}

#[inline(always)]
fn pass_pkt(ctx: &mut TcContext, p: &Pkt, dir: u8, proxy_port: u16) -> i32 {
    if p.frag == FRAG_FIRST {
        // The later fragments of this datagram follow this verdict.
        if let Some(k) = frag_key(p, dir) {
            let v = FragValue {
                created_ns: unsafe { bpf_ktime_get_ns() },
                sport: p.sport,
                dport: p.dport,
                _pad: 0,
            };
            let _ = WEFT_FRAGS.insert(k, &v, 0);
        }
    }
    if proxy_port != 0 {
        ctx.set_mark(MARK_PROXY | ((proxy_port as u32) << 16));
        count(VERDICT_REDIRECTED, DROP_NONE, p.bytes as u64);
    } else {
        count(VERDICT_FORWARDED, DROP_NONE, p.bytes as u64);
    }
    TC_ACT_OK
}

/// Security identity of a peer address: longest prefix in the ipcache, else world.
#[inline(always)]
fn peer_identity_of(family: u8, addr: &Addr) -> u32 {
    let bits = if family == FAMILY_IPV6 { 128 } else { 32 };
    match WEFT_IPCACHE.get(&Key::new(
        IPCACHE_PREFIX_HEADER_BITS + bits,
        IpcacheKey {
            family,
            _pad: [0; 3],
            addr: *addr,
        },
    )) {
        Some(v) => v.identity,
        None => IDENTITY_WORLD,
    }
}

/// Policy + conntrack for one packet seen at an endpoint's interface.
#[inline(always)]
fn handle(ctx: &mut TcContext, obs: u8) -> i32 {
    let cfg = config();
    let mut p = Pkt::default();
    // A VLAN tag the kernel already took out of the frame (skb metadata) counts as VLAN.
    // SAFETY: the context of a tc program is a valid __sk_buff.
    let vlan = unsafe { (*(ctx.as_ptr() as *const aya_ebpf::bindings::__sk_buff)).vlan_present };
    let parsed = if vlan != 0 {
        Ok(Parsed::Other)
    } else {
        parse(ctx, &mut p)
    };
    match parsed {
        Ok(Parsed::Ip) => {}
        Ok(Parsed::LinkControl) => return TC_ACT_OK,
        Ok(Parsed::Other) => {
            if obs == OBS_FROM_ENDPOINT {
                // VLAN, MPLS, ... from an endpoint: nothing to judge them by, fail closed.
                count(VERDICT_DROPPED, DROP_UNSUPPORTED_L3, ctx.len() as u64);
                return TC_ACT_SHOT;
            }
            return TC_ACT_OK;
        }
        Err(reason) => {
            let len = ctx.len() as u64;
            count(VERDICT_DROPPED, reason, len);
            return TC_ACT_SHOT;
        }
    };
    let dir = if obs == OBS_FROM_ENDPOINT {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    };
    let (ep_addr, peer_addr) = if dir == DIR_EGRESS {
        (p.saddr, p.daddr)
    } else {
        (p.daddr, p.saddr)
    };
    let mut info = EventInfo {
        verdict: VERDICT_DROPPED,
        reason: DROP_NONE,
        direction: dir,
        obs,
        ep_id: 0,
        src_identity: IDENTITY_UNKNOWN,
        dst_identity: IDENTITY_UNKNOWN,
    };
    let ep_key = EndpointKey {
        family: p.family,
        _pad: [0; 3],
        addr: ep_addr,
    };
    let ep = match unsafe { WEFT_ENDPOINTS.get(&ep_key) } {
        Some(ep) => *ep,
        None => {
            info.reason = DROP_UNKNOWN_ENDPOINT;
            return drop_pkt(&p, &cfg, &info);
        }
    };
    info.ep_id = ep.ep_id;
    // Source validation: what an endpoint sends carries its own address (the endpoint map
    // records the endpoint's interface; 0 = not known to the agent, not checked).
    if dir == DIR_EGRESS && ep.ifindex != 0 {
        // SAFETY: the context of a tc program is a valid __sk_buff.
        let ifindex = unsafe { (*(ctx.as_ptr() as *const aya_ebpf::bindings::__sk_buff)).ifindex };
        if ifindex != ep.ifindex {
            info.reason = DROP_SPOOFED_SOURCE;
            return drop_pkt(&p, &cfg, &info);
        }
    }
    // Later fragments have no L4 header: they follow their first fragment's verdict. An
    // endpoint that does not enforce this direction is never affected.
    if p.frag == FRAG_LATER {
        let enforce = if dir == DIR_INGRESS {
            EP_ENFORCE_INGRESS
        } else {
            EP_ENFORCE_EGRESS
        };
        let followed = ep.flags & enforce == 0
            || frag_key(&p, dir).is_some_and(|k| unsafe { WEFT_FRAGS.get(k) }.is_some());
        if !followed {
            info.reason = DROP_FRAGMENT;
            return drop_pkt(&p, &cfg, &info);
        }
        count(VERDICT_FORWARDED, DROP_NONE, p.bytes as u64);
        return TC_ACT_OK;
    }
    // Identities for events: the endpoint's own is known; the peer's comes from conntrack
    // (established) or the ipcache (new connections, re-checks).
    let set_ids = |info: &mut EventInfo, peer_identity: u32| {
        if dir == DIR_EGRESS {
            info.src_identity = ep.identity;
            info.dst_identity = peer_identity;
        } else {
            info.src_identity = peer_identity;
            info.dst_identity = ep.identity;
        }
    };

    let now = unsafe { bpf_ktime_get_ns() };
    let Some(scratch) = WEFT_SCRATCH.get_ptr_mut(0) else {
        info.reason = DROP_INTERNAL;
        return drop_pkt(&p, &cfg, &info);
    };
    // ICMP errors (destination unreachable incl. fragmentation needed / packet too big, time
    // exceeded, parameter problem) quoting a tracked connection pass as related, whatever
    // the policy: PMTU discovery works under default deny. Unrelated ones face the policy
    // as ICMP of their type, and open no connection.
    if p.icmp_err != 0 {
        // SAFETY: per-CPU map value, only this program invocation uses it.
        let inner = unsafe { &mut (*scratch).inner };
        let rev = unsafe { &mut (*scratch).rev };
        // The quoted packet went the other way through this endpoint: its connection is the
        // quoted tuple admitted by the other direction, or the reversed tuple admitted by
        // this one.
        inner.dir = if dir == DIR_EGRESS {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        };
        rev.saddr = inner.daddr;
        rev.daddr = inner.saddr;
        rev.sport = inner.dport;
        rev.dport = inner.sport;
        rev.proto = inner.proto;
        rev.family = inner.family;
        rev.dir = dir;
        rev._pad = 0;
        let related = match unsafe { WEFT_CT.get(&*inner) } {
            Some(e) => Some(*e),
            None => unsafe { WEFT_CT.get(&*rev) }.copied(),
        };
        if let Some(e) = related {
            if !ct_expired(&cfg, &e, now) && e.flags & CT_F_REVOKED == 0 {
                set_ids(&mut info, e.peer_identity);
                info.verdict = VERDICT_FORWARDED;
                if cfg.event_flags & EVENTS_ALL != 0 {
                    emit(&p, &info);
                }
                return pass_pkt(ctx, &p, dir, 0);
            }
        }
        let peer_identity = peer_identity_of(p.family, &peer_addr);
        set_ids(&mut info, peer_identity);
        let d = decide(&ep, dir, peer_identity, &p);
        if d.action == ACTION_DENY {
            info.reason = d.reason;
            return drop_pkt(&p, &cfg, &info);
        }
        return pass_pkt(ctx, &p, dir, d.proxy_port);
    }
    // SAFETY: per-CPU map value, only this program invocation uses it (no preemption
    // within a BPF program on this CPU).
    let fwd = unsafe { &mut (*scratch).fwd };
    fwd.saddr = p.saddr;
    fwd.daddr = p.daddr;
    fwd.sport = p.sport;
    fwd.dport = p.dport;
    fwd.proto = p.proto;
    fwd.family = p.family;
    fwd.dir = dir;
    fwd._pad = 0;
    let fwd = &*fwd;
    // 1. Forward packet of a connection this direction's policy already allowed.
    if let Some(e) = WEFT_CT.get_ptr_mut(fwd) {
        let entry = unsafe { *e };
        if !ct_expired(&cfg, &entry, now) {
            let mut proxy_port = entry.proxy_port;
            set_ids(&mut info, entry.peer_identity);
            if entry.policy_rev != ep.policy_rev || entry.flags & CT_F_REVOKED != 0 {
                let peer_identity = peer_identity_of(p.family, &peer_addr);
                set_ids(&mut info, peer_identity);
                // Policy changed since this connection was admitted: re-check. Denied now:
                // the connection is revoked, its packets both ways drop from here on (the
                // entry stays, so that a reply cannot open it again from the other side,
                // and lives the close timeout after its last packet). A later change that
                // allows it again lets it resume.
                let d = decide(&ep, dir, peer_identity, &p);
                if d.action == ACTION_DENY {
                    unsafe {
                        (*e).policy_rev = ep.policy_rev;
                        (*e).flags |= CT_F_REVOKED;
                        (*e).last_seen_ns = now;
                    }
                    info.reason = d.reason;
                    return drop_pkt(&p, &cfg, &info);
                }
                proxy_port = d.proxy_port;
                unsafe {
                    (*e).policy_rev = ep.policy_rev;
                    (*e).flags &= !CT_F_REVOKED;
                    (*e).proxy_port = d.proxy_port;
                    (*e).peer_identity = peer_identity;
                }
            }
            let closing = ct_touch(e, &p, now, false);
            info.verdict = if proxy_port != 0 {
                VERDICT_REDIRECTED
            } else {
                VERDICT_FORWARDED
            };
            if cfg.event_flags & EVENTS_ALL != 0
                || (closing && cfg.event_flags & EVENTS_ON_TCP_FLAGS != 0)
            {
                emit(&p, &info);
            }
            return pass_pkt(ctx, &p, dir, proxy_port);
        }
        let _ = WEFT_CT.remove(fwd);
    }
    // 2. Reply of a connection admitted in the other direction: no policy lookup.
    // SAFETY: as for `fwd`.
    let rev = unsafe { &mut (*scratch).rev };
    rev.saddr = p.daddr;
    rev.daddr = p.saddr;
    rev.sport = p.dport;
    rev.dport = p.sport;
    rev.proto = p.proto;
    rev.family = p.family;
    rev.dir = if dir == DIR_EGRESS {
        DIR_INGRESS
    } else {
        DIR_EGRESS
    };
    rev._pad = 0;
    let rev = &*rev;
    if let Some(e) = WEFT_CT.get_ptr_mut(rev) {
        let entry = unsafe { *e };
        if !ct_expired(&cfg, &entry, now) {
            set_ids(&mut info, entry.peer_identity);
            if entry.flags & CT_F_REVOKED != 0 {
                // Reply of a connection a policy change revoked.
                unsafe { (*e).last_seen_ns = now };
                info.reason = DROP_POLICY_DENIED;
                return drop_pkt(&p, &cfg, &info);
            }
            let closing = ct_touch(e, &p, now, true);
            info.verdict = VERDICT_FORWARDED;
            if cfg.event_flags & EVENTS_ALL != 0
                || (closing && cfg.event_flags & EVENTS_ON_TCP_FLAGS != 0)
            {
                emit(&p, &info);
            }
            return pass_pkt(ctx, &p, dir, 0);
        }
        let _ = WEFT_CT.remove(rev);
    }
    // 3. New connection: policy decides.
    let peer_identity = peer_identity_of(p.family, &peer_addr);
    set_ids(&mut info, peer_identity);
    let d = decide(&ep, dir, peer_identity, &p);
    if d.action == ACTION_DENY {
        info.reason = d.reason;
        return drop_pkt(&p, &cfg, &info);
    }
    let entry = CtValue {
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: p.bytes as u64,
        ep_id: ep.ep_id,
        policy_rev: ep.policy_rev,
        tcp_flags: p.tcp_flags,
        flags: if p.tcp_flags & TCP_RST != 0 {
            CT_F_CLOSING
        } else if p.tcp_flags & TCP_FIN != 0 {
            CT_F_FIN_FWD
        } else {
            0
        },
        proxy_port: d.proxy_port,
        peer_identity,
    };
    if WEFT_CT.insert(fwd, &entry, 0).is_err() {
        info.reason = DROP_CT_FULL;
        return drop_pkt(&p, &cfg, &info);
    }
    info.verdict = if d.proxy_port != 0 {
        VERDICT_REDIRECTED
    } else {
        VERDICT_FORWARDED
    };
    if cfg.event_flags & (EVENTS_ON_START | EVENTS_ALL) != 0 {
        emit(&p, &info);
    }
    pass_pkt(ctx, &p, dir, d.proxy_port)
}

#[classifier]
pub fn weft_from_endpoint(mut ctx: TcContext) -> i32 {
    handle(&mut ctx, OBS_FROM_ENDPOINT)
}

#[classifier]
pub fn weft_to_endpoint(mut ctx: TcContext) -> i32 {
    handle(&mut ctx, OBS_TO_ENDPOINT)
}

#[classifier]
pub fn weft_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

// ---- socket-level load balancing ----

/// 64-bit finalizer (murmur3 fmix64): spreads the client/service key over the Maglev table.
#[inline(always)]
fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Flow hash used for Maglev: must match `node_agent::datapath::maglev_slot`.
#[inline(always)]
fn client_hash(seed: u32, client: u64, svc_id: u32) -> u64 {
    mix64(client ^ ((seed as u64) << 32 | svc_id as u64))
}

/// Chooses a backend id for a new connection; `None` = no usable backend.
#[inline(always)]
fn select_backend(svc: &ServiceValue, client: u64, cfg: &Config, now: u64) -> Option<u32> {
    let aff_key = AffinityKey {
        client,
        svc_id: svc.svc_id,
        _pad: 0,
    };
    if svc.flags & SVC_F_AFFINITY != 0 {
        if let Some(a) = unsafe { WEFT_AFFINITY.get(&aff_key) } {
            let fresh =
                now.saturating_sub(a.last_used_ns) <= svc.affinity_timeout_s as u64 * NS_PER_S;
            let backend_id = a.backend_id;
            if fresh {
                if let Some(b) = unsafe { WEFT_BACKENDS.get(&backend_id) } {
                    if b.state == BACKEND_ACTIVE {
                        return Some(backend_id);
                    }
                }
            }
        }
    }
    let id = if svc.flags & SVC_F_MAGLEV != 0 {
        let m = svc.maglev_m as u64;
        if m == 0 {
            return None;
        }
        let table = unsafe { WEFT_MAGLEV.get(&svc.svc_id) }?;
        let idx = (client_hash(cfg.hash_seed, client, svc.svc_id) % m) as usize;
        if idx >= MAGLEV_MAX_M {
            return None;
        }
        table.backends[idx]
    } else {
        let slot = unsafe { bpf_get_prandom_u32() }.checked_rem(svc.count)?;
        *unsafe {
            WEFT_BACKEND_SLOTS.get(&BackendSlotKey {
                svc_id: svc.svc_id,
                slot,
            })
        }?
    };
    if svc.flags & SVC_F_AFFINITY != 0 {
        let _ = WEFT_AFFINITY.insert(
            &aff_key,
            &AffinityValue {
                last_used_ns: now,
                backend_id: id,
                _pad: 0,
            },
            0,
        );
    }
    Some(id)
}

#[inline(always)]
fn sock_event(
    sa: &aya_ebpf::bindings::bpf_sock_addr,
    verdict: u8,
    reason: u8,
    obs: u8,
    svc_id: u32,
    orig: (Addr, u16),
) {
    match WEFT_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            let ip = sa.user_ip4.to_ne_bytes();
            entry.write(FlowEvent {
                ts_ns: unsafe { bpf_ktime_get_ns() },
                bytes: 0,
                saddr: [0; 16],
                daddr: if verdict == VERDICT_TRANSLATED {
                    addr_v4(ip)
                } else {
                    orig.0
                },
                sport: 0,
                dport: if verdict == VERDICT_TRANSLATED {
                    u16::from_be(sa.user_port as u16)
                } else {
                    u16::from_be(orig.1)
                },
                proto: sa.protocol as u8,
                family: FAMILY_IPV4,
                verdict,
                drop_reason: reason,
                direction: DIR_EGRESS,
                obs_point: obs,
                tcp_flags: 0,
                _pad: 0,
                ep_id: 0,
                src_identity: 0,
                dst_identity: 0,
                svc_id,
                _pad2: 0,
            });
            entry.submit(0);
        }
        None => lost_event(),
    }
}

/// VIP -> backend translation for connect4/sendmsg4. Returns 1 (continue) or 0 (reject).
#[inline(always)]
fn sock_translate(ctx: &SockAddrContext, obs: u8) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let vip = addr_v4(sa.user_ip4.to_ne_bytes());
    let vport = sa.user_port as u16;
    let proto = sa.protocol as u8;
    let key = ServiceKey {
        vip,
        port: vport,
        proto,
        family: FAMILY_IPV4,
    };
    let svc = match unsafe { WEFT_SERVICES.get(&key) } {
        Some(s) => *s,
        None => return 1,
    };
    let cfg = config();
    if svc.count == 0 {
        count(VERDICT_DROPPED, DROP_NO_BACKEND, 0);
        if cfg.event_flags & EVENTS_ON_DROP != 0 {
            sock_event(
                sa,
                VERDICT_DROPPED,
                DROP_NO_BACKEND,
                obs,
                svc.svc_id,
                (vip, vport),
            );
        }
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let client = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let backend = match select_backend(&svc, client, &cfg, now) {
        Some(id) => unsafe { WEFT_BACKENDS.get(&id) }.copied(),
        None => None,
    };
    let b = match backend {
        Some(b) => b,
        None => {
            count(VERDICT_DROPPED, DROP_NO_BACKEND, 0);
            if cfg.event_flags & EVENTS_ON_DROP != 0 {
                sock_event(
                    sa,
                    VERDICT_DROPPED,
                    DROP_NO_BACKEND,
                    obs,
                    svc.svc_id,
                    (vip, vport),
                );
            }
            return 0;
        }
    };
    sa.user_ip4 = u32::from_ne_bytes([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]);
    sa.user_port = b.port as u32;
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = WEFT_SOCK_REVNAT.insert(
        &SockRevNatKey {
            cookie,
            addr: b.addr,
            port: b.port,
            family: FAMILY_IPV4,
            _pad: [0; 5],
        },
        &SockRevNatValue {
            vip,
            port: vport,
            _pad: [0; 2],
            svc_id: svc.svc_id,
        },
        0,
    );
    count(VERDICT_TRANSLATED, DROP_NONE, 0);
    if cfg.event_flags & EVENTS_ON_TRANSLATE != 0 {
        sock_event(
            sa,
            VERDICT_TRANSLATED,
            DROP_NONE,
            obs,
            svc.svc_id,
            (vip, vport),
        );
    }
    1
}

/// Backend -> VIP for recvmsg4/getpeername4 of sockets we translated.
#[inline(always)]
fn sock_reverse(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = SockRevNatKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: addr_v4(sa.user_ip4.to_ne_bytes()),
        port: sa.user_port as u16,
        family: FAMILY_IPV4,
        _pad: [0; 5],
    };
    if let Some(v) = unsafe { WEFT_SOCK_REVNAT.get(&key) } {
        sa.user_ip4 = u32::from_ne_bytes([v.vip[0], v.vip[1], v.vip[2], v.vip[3]]);
        sa.user_port = v.port as u32;
    }
    1
}

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    sock_translate(&ctx, OBS_SOCK_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn weft_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_translate(&ctx, OBS_SOCK_SENDMSG)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn weft_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock_reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn weft_getpeername4(ctx: SockAddrContext) -> i32 {
    sock_reverse(&ctx)
}

// ---- north-south load balancing on the uplink (tc) ----

/// Flow hash of a north-south connection (Maglev slot choice).
#[inline(always)]
fn tuple_hash(seed: u32, p: &Pkt) -> u64 {
    let s = u32::from_ne_bytes([p.saddr[0], p.saddr[1], p.saddr[2], p.saddr[3]]) as u64;
    let d = u32::from_ne_bytes([p.daddr[0], p.daddr[1], p.daddr[2], p.daddr[3]]) as u64;
    let ports = ((p.sport as u64) << 16) | p.dport as u64;
    mix64((s << 32 | d) ^ mix64(ports << 8 | p.proto as u64 ^ (seed as u64) << 40))
}

/// Rewrites the destination (ingress) or source (egress) address and port, fixing the IPv4
/// and L4 checksums.
#[inline(always)]
fn rewrite(ctx: &mut TcContext, p: &Pkt, dst: bool, addr: &Addr, port: u16) -> Result<(), u8> {
    let old_addr = if dst { p.daddr } else { p.saddr };
    let old = u32::from_ne_bytes([old_addr[0], old_addr[1], old_addr[2], old_addr[3]]);
    let new = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
    let old_port = if dst { p.dport } else { p.sport };
    let l4 = p.l4_off as usize;
    let (csum_off, pseudo) = match p.proto {
        PROTO_TCP => (l4 + 16, true),
        PROTO_UDP => (l4 + 6, true),
        _ => (0, false),
    };
    let addr_off = ETH_HLEN + if dst { 16 } else { 12 };
    let port_off = l4 + if dst { 2 } else { 0 };
    // BPF_F_PSEUDO_HDR (0x10) | size 4; BPF_F_MARK_MANGLED_0 (0x20) keeps a zero UDP checksum.
    let mangled0: u64 = if p.proto == PROTO_UDP { 0x20 } else { 0 };
    if pseudo {
        ctx.l4_csum_replace(csum_off, old as u64, new as u64, 0x10 | 4 | mangled0)
            .map_err(|_| DROP_INVALID_PACKET)?;
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, 2 | mangled0)
            .map_err(|_| DROP_INVALID_PACKET)?;
    }
    ctx.l3_csum_replace(ETH_HLEN + 10, old as u64, new as u64, 4)
        .map_err(|_| DROP_INVALID_PACKET)?;
    ctx.store(addr_off, &new, 0)
        .map_err(|_| DROP_INVALID_PACKET)?;
    if pseudo {
        ctx.store(port_off, &port, 0)
            .map_err(|_| DROP_INVALID_PACKET)?;
    }
    Ok(())
}

#[inline(always)]
fn lb_drop(p: &Pkt, cfg: &Config, reason: u8, obs: u8, svc_id: u32) -> i32 {
    count(VERDICT_DROPPED, reason, p.bytes as u64);
    if cfg.event_flags & EVENTS_ON_DROP != 0 {
        emit(
            p,
            &EventInfo {
                verdict: VERDICT_DROPPED,
                reason,
                direction: DIR_INGRESS,
                obs,
                ep_id: 0,
                src_identity: IDENTITY_WORLD,
                dst_identity: svc_id,
            },
        );
    }
    TC_ACT_SHOT
}

/// Client -> VIP: pick (or keep) a backend and DNAT to it; record the reverse entry.
#[inline(always)]
fn lb_ingress(ctx: &mut TcContext) -> i32 {
    let mut p = Pkt::default();
    match parse(ctx, &mut p) {
        Ok(Parsed::Ip) => {}
        Ok(_) => return TC_ACT_OK,
        Err(reason) => {
            count(VERDICT_DROPPED, reason, ctx.len() as u64);
            return TC_ACT_SHOT;
        }
    };
    // North-south LB is IPv4 only for now (and later fragments carry no ports).
    if p.family != FAMILY_IPV4
        || p.frag == FRAG_LATER
        || (p.proto != PROTO_TCP && p.proto != PROTO_UDP)
    {
        return TC_ACT_OK;
    }
    let key = ServiceKey {
        vip: p.daddr,
        port: p.dport,
        proto: p.proto,
        family: FAMILY_IPV4,
    };
    let svc = match unsafe { WEFT_SERVICES.get(&key) } {
        Some(s) => *s,
        None => return TC_ACT_OK,
    };
    let cfg = config();
    let now = unsafe { bpf_ktime_get_ns() };
    let fwd = CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        family: FAMILY_IPV4,
        dir: LB_CT_FORWARD,
        _pad: 0,
    };
    // Established: stay on the backend chosen at the first packet while it exists.
    let mut chosen: Option<(u32, BackendValue)> = None;
    if let Some(e) = WEFT_LB_CT.get_ptr_mut(&fwd) {
        let entry = unsafe { *e };
        let timeout = if p.proto == PROTO_TCP {
            cfg.ct_tcp_timeout_s
        } else {
            cfg.ct_udp_timeout_s
        } as u64;
        if now.saturating_sub(entry.last_seen_ns) <= timeout * NS_PER_S {
            if let Some(b) = unsafe { WEFT_BACKENDS.get(&entry.backend_id) } {
                unsafe { (*e).last_seen_ns = now };
                chosen = Some((entry.backend_id, *b));
            }
        }
    }
    let (backend_id, b) = match chosen {
        Some(c) => c,
        None => {
            if svc.count == 0 {
                return lb_drop(&p, &cfg, DROP_NO_BACKEND, OBS_UPLINK_INGRESS, svc.svc_id);
            }
            let client =
                u32::from_ne_bytes([p.saddr[0], p.saddr[1], p.saddr[2], p.saddr[3]]) as u64;
            let id = if svc.flags & SVC_F_AFFINITY != 0 {
                select_backend(&svc, client, &cfg, now)
            } else if svc.flags & SVC_F_MAGLEV != 0 {
                let m = svc.maglev_m as u64;
                match unsafe { WEFT_MAGLEV.get(&svc.svc_id) } {
                    Some(t) if m > 0 => {
                        let idx = (tuple_hash(cfg.hash_seed, &p) % m) as usize;
                        if idx < MAGLEV_MAX_M {
                            Some(t.backends[idx])
                        } else {
                            None
                        }
                    }
                    _ => None,
                }
            } else {
                select_backend(&svc, client, &cfg, now)
            };
            let b = match id {
                Some(id) => unsafe { WEFT_BACKENDS.get(&id) }.map(|b| (id, *b)),
                None => None,
            };
            let Some((id, b)) = b else {
                return lb_drop(&p, &cfg, DROP_NO_BACKEND, OBS_UPLINK_INGRESS, svc.svc_id);
            };
            let v = LbCtValue {
                last_seen_ns: now,
                addr: b.addr,
                port: b.port,
                _pad: [0; 2],
                backend_id: id,
                svc_id: svc.svc_id,
                _pad2: 0,
            };
            let rev = CtKey {
                saddr: b.addr,
                daddr: p.saddr,
                sport: b.port,
                dport: p.sport,
                proto: p.proto,
                family: FAMILY_IPV4,
                dir: LB_CT_REVERSE,
                _pad: 0,
            };
            let rv = LbCtValue {
                addr: p.daddr,
                port: p.dport,
                ..v
            };
            // Reverse first: a reply can never arrive before it is translatable.
            if WEFT_LB_CT.insert(&rev, &rv, 0).is_err() || WEFT_LB_CT.insert(&fwd, &v, 0).is_err() {
                return lb_drop(&p, &cfg, DROP_CT_FULL, OBS_UPLINK_INGRESS, svc.svc_id);
            }
            if cfg.event_flags & EVENTS_ON_TRANSLATE != 0 {
                emit(
                    &p,
                    &EventInfo {
                        verdict: VERDICT_TRANSLATED,
                        reason: DROP_NONE,
                        direction: DIR_INGRESS,
                        obs: OBS_UPLINK_INGRESS,
                        ep_id: 0,
                        src_identity: IDENTITY_WORLD,
                        dst_identity: svc.svc_id,
                    },
                );
            }
            (id, b)
        }
    };
    let _ = backend_id;
    if let Err(reason) = rewrite(ctx, &p, true, &b.addr, b.port) {
        return lb_drop(&p, &cfg, reason, OBS_UPLINK_INGRESS, svc.svc_id);
    }
    count(VERDICT_TRANSLATED, DROP_NONE, p.bytes as u64);
    TC_ACT_OK
}

/// Backend -> client replies: SNAT back to the VIP.
#[inline(always)]
fn lb_egress(ctx: &mut TcContext) -> i32 {
    let mut p = Pkt::default();
    if parse(ctx, &mut p) != Ok(Parsed::Ip) || p.family != FAMILY_IPV4 || p.frag == FRAG_LATER {
        return TC_ACT_OK;
    }
    let rev = CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        family: FAMILY_IPV4,
        dir: LB_CT_REVERSE,
        _pad: 0,
    };
    let Some(e) = WEFT_LB_CT.get_ptr_mut(&rev) else {
        return TC_ACT_OK;
    };
    let v = unsafe { *e };
    unsafe { (*e).last_seen_ns = bpf_ktime_get_ns() };
    if rewrite(ctx, &p, false, &v.addr, v.port).is_err() {
        count(VERDICT_DROPPED, DROP_INVALID_PACKET, p.bytes as u64);
        return TC_ACT_SHOT;
    }
    count(VERDICT_TRANSLATED, DROP_NONE, p.bytes as u64);
    TC_ACT_OK
}

#[classifier]
pub fn weft_lb_ingress(mut ctx: TcContext) -> i32 {
    lb_ingress(&mut ctx)
}

#[classifier]
pub fn weft_lb_egress(mut ctx: TcContext) -> i32 {
    lb_egress(&mut ctx)
}
