//! Map keys, values and events shared by Weft's eBPF programs and `node-agent`.
//!
//! Every type is `#[repr(C)]`, `Copy`, has no implicit padding (explicit `_pad` fields) and no
//! `bool`, so the kernel and userspace agree byte for byte. Addresses are 16 bytes in network
//! byte order (IPv4 in the first 4 bytes) so that IPv6 fits the same layouts later.
//! With the `user` feature every map type implements `aya::Pod`.
#![no_std]

/// Address family tags stored in keys.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_ICMPV6: u8 = 58;

/// Reserved security identities (Cilium-compatible numbering).
pub const IDENTITY_UNKNOWN: u32 = 0;
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;
pub const IDENTITY_UNMANAGED: u32 = 3;
pub const IDENTITY_HEALTH: u32 = 4;
pub const IDENTITY_REMOTE_NODE: u32 = 6;
/// Identity value meaning "any peer" in policy keys.
pub const IDENTITY_ANY: u32 = 0;

/// Policy direction, seen from the endpoint.
pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

/// Map names (must match the `#[map]` statics in the eBPF crate).
pub mod maps {
    pub const ENDPOINTS: &str = "WEFT_ENDPOINTS";
    pub const IPCACHE: &str = "WEFT_IPCACHE";
    pub const POLICY: &str = "WEFT_POLICY";
    pub const POLICY_ALLOW: &str = "WEFT_POLICY_ALLOW";
    pub const POLICY_DENY: &str = "WEFT_POLICY_DENY";
    pub const CT: &str = "WEFT_CT";
    pub const CONFIG: &str = "WEFT_CONFIG";
    pub const METRICS: &str = "WEFT_METRICS";
    pub const EVENTS: &str = "WEFT_EVENTS";
    pub const SERVICES: &str = "WEFT_SERVICES";
    pub const BACKEND_SLOTS: &str = "WEFT_BACKEND_SLOTS";
    pub const BACKENDS: &str = "WEFT_BACKENDS";
    pub const MAGLEV: &str = "WEFT_MAGLEV";
    pub const AFFINITY: &str = "WEFT_AFFINITY";
    pub const SOCK_REVNAT: &str = "WEFT_SOCK_REVNAT";
    pub const LB_CT: &str = "WEFT_LB_CT";
    pub const FRAGS: &str = "WEFT_FRAGS";
    /// Every map, for pinning/cleanup.
    pub const ALL: [&str; 17] = [
        ENDPOINTS,
        IPCACHE,
        POLICY,
        POLICY_ALLOW,
        POLICY_DENY,
        CT,
        CONFIG,
        METRICS,
        EVENTS,
        SERVICES,
        BACKEND_SLOTS,
        BACKENDS,
        MAGLEV,
        AFFINITY,
        SOCK_REVNAT,
        LB_CT,
        FRAGS,
    ];
}

/// Program names (function names in the eBPF crate).
pub mod progs {
    /// tc on the endpoint's host-side veth, ingress hook: packets leaving the endpoint (its egress).
    pub const FROM_ENDPOINT: &str = "weft_from_endpoint";
    /// tc on the endpoint's host-side veth, egress hook: packets entering the endpoint (its ingress).
    pub const TO_ENDPOINT: &str = "weft_to_endpoint";
    /// tc pass-through, the benchmark floor.
    pub const PASS: &str = "weft_pass";
    pub const CONNECT4: &str = "weft_connect4";
    pub const SENDMSG4: &str = "weft_sendmsg4";
    pub const RECVMSG4: &str = "weft_recvmsg4";
    pub const GETPEERNAME4: &str = "weft_getpeername4";
    pub const CONNECT6: &str = "weft_connect6";
    pub const SENDMSG6: &str = "weft_sendmsg6";
    pub const RECVMSG6: &str = "weft_recvmsg6";
    pub const GETPEERNAME6: &str = "weft_getpeername6";
    /// tc on the node's uplink, ingress: north-south VIP DNAT to a backend.
    pub const LB_INGRESS: &str = "weft_lb_ingress";
    /// tc on the node's uplink, egress: reverse translation of backend replies.
    pub const LB_EGRESS: &str = "weft_lb_egress";
    /// tc on the VXLAN device, ingress: the identity a node's packet carries in its VNI.
    pub const FROM_TUNNEL: &str = "weft_from_tunnel";
    /// tc on the VXLAN device, egress: the source endpoint's identity into the VNI.
    pub const TO_TUNNEL: &str = "weft_to_tunnel";
    /// tc on the node's L7 proxy device, ingress: hands redirected connections to the proxy.
    pub const TO_PROXY: &str = "weft_to_proxy";
}

/// A 16-byte address in network byte order; IPv4 lives in `addr[0..4]`.
pub type Addr = [u8; 16];

/// Builds an [`Addr`] from IPv4 octets.
pub const fn addr_v4(o: [u8; 4]) -> Addr {
    [o[0], o[1], o[2], o[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// Key of the endpoint map: an endpoint's own IP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: Addr,
}

/// The endpoint enforces ingress policy (some policy selects it with an ingress section).
pub const EP_ENFORCE_INGRESS: u32 = 1;
/// The endpoint enforces egress policy.
pub const EP_ENFORCE_EGRESS: u32 = 2;
/// The endpoint has port-range entries (in the LPM range maps): consult them too.
pub const EP_HAS_PORT_RANGES: u32 = 4;
/// The endpoint's policy is the generation-1 set of entries (`POLICY_DIR_GEN` set in their
/// `direction`); clear: generation 0. The agent writes a new policy complete into the unused
/// generation, then flips this bit in one endpoint write, so a packet is judged by one whole
/// policy, never a mix of two (see `Datapath::apply_policy`).
pub const EP_POLICY_GEN: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointValue {
    /// Node-local endpoint id (key part of policy entries).
    pub ep_id: u32,
    /// Security identity of the endpoint.
    pub identity: u32,
    /// Host-side interface index.
    pub ifindex: u32,
    /// `EP_ENFORCE_*` flags; a direction without its flag is default-allow.
    pub flags: u32,
    /// Bumped by the agent after it changes this endpoint's policy; conntrack entries made under
    /// an older revision are re-checked against policy on their next forward packet.
    pub policy_rev: u32,
    pub _pad: u32,
}

/// LPM data of the ipcache. The prefix length counts 32 bits of `family`+pad, then address bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: Addr,
}

/// Bits of `IpcacheKey` before the address.
pub const IPCACHE_PREFIX_HEADER_BITS: u32 = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheValue {
    pub identity: u32,
    pub flags: u32,
}

/// Key of the policy hash map (single ports and wildcards): one O(1) lookup per candidate, so
/// the per-packet cost does not depend on the number of entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyHashKey {
    pub ep_id: u32,
    /// Peer identity, `IDENTITY_ANY` for the wildcard.
    pub identity: u32,
    pub direction: u8,
    /// 0 with `POLICY_ANY_PROTO`.
    pub proto: u8,
    /// Host byte order; 0 with `POLICY_ANY_PORT`. ICMP: the type.
    pub dport: u16,
    /// `POLICY_ANY_*`.
    pub flags: u8,
    pub _pad: [u8; 3],
}

pub const POLICY_ANY_PORT: u8 = 1;
pub const POLICY_ANY_PROTO: u8 = 2;

/// Set in a policy key's `direction` for generation-1 entries (`EP_POLICY_GEN`).
pub const POLICY_DIR_GEN: u8 = 0x80;

/// LPM data of the port-range policy maps. Full prefix = 96 bits; `ep_id`, `identity` and `direction`
/// (72 bits) are always matched, then `proto` (8 bits, omitted = any protocol), then `dport`
/// bits (big-endian, omitted bits = a port range aligned on a power of two).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub ep_id: u32,
    /// Peer identity, `IDENTITY_ANY` for the wildcard.
    pub identity: u32,
    pub direction: u8,
    pub proto: u8,
    /// Destination port in network byte order (ICMP: the type, as a port number).
    pub dport: [u8; 2],
}

pub const POLICY_PREFIX_FIXED_BITS: u32 = 72;
pub const POLICY_PREFIX_PROTO_BITS: u32 = 80;
pub const POLICY_PREFIX_FULL_BITS: u32 = 96;

pub const ACTION_ALLOW: u8 = 1;
pub const ACTION_REDIRECT: u8 = 2;
pub const ACTION_DENY: u8 = 3;
/// Allow-map entry that allows nothing: the endpoint has a rule Weft does not enforce for this
/// peer/port, so a drop here is `DROP_UNSUPPORTED_RULE` instead of `DROP_POLICY_DENIED`.
pub const ACTION_UNSUPPORTED: u8 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// `ACTION_*`.
    pub action: u8,
    pub _pad: u8,
    /// Proxy port for `ACTION_REDIRECT` (host byte order).
    pub proxy_port: u16,
    /// Opaque rule reference for flow events / debugging.
    pub rule_id: u32,
}

/// Conntrack entry created by the endpoint's egress policy (tuple: endpoint -> peer).
pub const CT_DIR_EGRESS: u8 = DIR_EGRESS;
/// Conntrack entry created by the endpoint's ingress policy (tuple: peer -> endpoint).
pub const CT_DIR_INGRESS: u8 = DIR_INGRESS;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: Addr,
    pub daddr: Addr,
    /// Ports in network byte order (ICMP echo: the identifier in both).
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    /// `CT_DIR_*`: which policy direction created the entry.
    pub dir: u8,
    pub _pad: u8,
}

/// Conntrack flags. `CLOSING`: an RST was seen, or a FIN in each direction; the entry then
/// lives `ct_close_timeout_s` after its last packet.
pub const CT_F_CLOSING: u8 = 1;
pub const CT_F_SEEN_REPLY: u8 = 2;
/// A FIN went in the entry's own direction.
pub const CT_F_FIN_FWD: u8 = 4;
/// A FIN came back (reply direction).
pub const CT_F_FIN_REV: u8 = 8;
/// A policy change denied the connection: its packets (both ways) drop; the entry lives the
/// close timeout after its last packet, or resumes if a later change allows it again.
pub const CT_F_REVOKED: u8 = 16;

/// How long (seconds) a conntrack entry lives after its last packet: closing (RST, or FIN
/// both ways) < SYN not answered < established TCP; UDP and the rest have their own timeout.
/// Shared by the kernel program (lazy expiry) and the agent's sweep (collection).
#[inline(always)]
pub fn ct_timeout_s(cfg: &Config, e: &CtValue) -> u32 {
    const SYN: u8 = 0x02;
    if e.flags & (CT_F_CLOSING | CT_F_REVOKED) != 0 {
        cfg.ct_close_timeout_s
    } else if e.tcp_flags & SYN != 0 && e.flags & CT_F_SEEN_REPLY == 0 {
        cfg.ct_syn_timeout_s
    } else if e.tcp_flags != 0 {
        cfg.ct_tcp_timeout_s
    } else {
        cfg.ct_udp_timeout_s
    }
}

/// Whether the entry has expired at `now_ns` (`bpf_ktime_get_ns`, i.e. `CLOCK_MONOTONIC`).
#[inline(always)]
pub fn ct_expired(cfg: &Config, e: &CtValue, now_ns: u64) -> bool {
    now_ns.saturating_sub(e.last_seen_ns) > ct_timeout_s(cfg, e) as u64 * 1_000_000_000
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub ep_id: u32,
    /// Endpoint policy revision the entry was last checked against.
    pub policy_rev: u32,
    /// Union of TCP flags seen.
    pub tcp_flags: u8,
    /// `CT_F_*`.
    pub flags: u8,
    /// Proxy port when the connection is redirected to the L7 proxy, else 0.
    pub proxy_port: u16,
    pub peer_identity: u32,
}

/// Key of the fragment map: the datagram a fragment belongs to (RFC 791/8200 reassembly key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: Addr,
    pub daddr: Addr,
    /// IPv4 identification (16 bits) or IPv6 fragment identification.
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    /// `DIR_*` of the endpoint whose program saw the first fragment: a verdict at the
    /// sender's interface must not open the receiver's.
    pub dir: u8,
    pub _pad: u8,
}

/// Value of the fragment map: the first fragment passed (later fragments follow it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub created_ns: u64,
    /// Network byte order, from the first fragment.
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
}

/// Datapath configuration, the only element of the config array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub ct_tcp_timeout_s: u32,
    pub ct_syn_timeout_s: u32,
    pub ct_udp_timeout_s: u32,
    pub ct_close_timeout_s: u32,
    /// `EVENTS_*` flags.
    pub event_flags: u32,
    /// Seed for the in-kernel flow hash (Maglev slot choice).
    pub hash_seed: u32,
    /// The node namespace's L7 proxy device (`weftpx`): connections an endpoint's ingress
    /// rules send to the proxy are redirected into it (0: no proxy; such packets drop).
    pub proxy_ifindex: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ct_tcp_timeout_s: 6 * 3600,
            ct_syn_timeout_s: 60,
            ct_udp_timeout_s: 60,
            ct_close_timeout_s: 10,
            event_flags: EVENTS_ON_START
                | EVENTS_ON_DROP
                | EVENTS_ON_TCP_FLAGS
                | EVENTS_ON_TRANSLATE,
            hash_seed: 0x5eed_4e57,
            proxy_ifindex: 0,
        }
    }
}

/// Emit an event when a connection starts (conntrack entry created).
pub const EVENTS_ON_START: u32 = 1;
/// Emit an event for every drop.
pub const EVENTS_ON_DROP: u32 = 2;
/// Emit an event when new TCP flags (FIN/RST) appear on a connection.
pub const EVENTS_ON_TCP_FLAGS: u32 = 4;
/// Emit an event for every socket-level translation.
pub const EVENTS_ON_TRANSLATE: u32 = 8;
/// Emit an event for every packet (debugging; floods busy nodes).
pub const EVENTS_ALL: u32 = 16;

/// Verdicts (flow events, metrics).
pub const VERDICT_FORWARDED: u8 = 1;
pub const VERDICT_DROPPED: u8 = 2;
pub const VERDICT_REDIRECTED: u8 = 3;
pub const VERDICT_TRANSLATED: u8 = 4;
pub const VERDICT_COUNT: u32 = 5;

/// Drop reasons: a stable enum (values never reused).
pub const DROP_NONE: u8 = 0;
/// No allow rule matched in an enforcing direction.
pub const DROP_POLICY_DENIED: u8 = 1;
/// An explicit deny rule matched.
pub const DROP_DENY_RULE: u8 = 2;
/// Service with no ready backend.
pub const DROP_NO_BACKEND: u8 = 3;
/// Conntrack entry could not be created: the conntrack table is full (a plain hash, not
/// an LRU: live connections are never evicted; the agent sweeps expired entries).
pub const DROP_CT_FULL: u8 = 4;
/// Truncated or malformed headers.
pub const DROP_INVALID_PACKET: u8 = 5;
/// IPv4 fragments after the first (no L4 header to classify).
pub const DROP_FRAGMENT: u8 = 6;
/// L3 protocol not handled yet (IPv6): fail closed.
pub const DROP_UNSUPPORTED_L3: u8 = 7;
/// A map lookup that must succeed failed (datapath inconsistency): fail closed.
pub const DROP_INTERNAL: u8 = 8;
/// Packet on an endpoint interface whose endpoint address is not in the endpoint map.
pub const DROP_UNKNOWN_ENDPOINT: u8 = 9;
/// Nothing allowed the flow, and a rule Weft accepts but does not enforce (L7, `toFQDNs`,
/// entities nothing carries) would have: fail closed, visibly. High value on purpose, so that
/// reasons added in the meantime keep their numbers.
pub const DROP_UNSUPPORTED_RULE: u8 = 15;
/// A packet from an endpoint's interface whose source address is not that endpoint's.
pub const DROP_SPOOFED_SOURCE: u8 = 11;
pub const DROP_REASON_COUNT: u32 = 16;

/// Metrics array index for (verdict, reason).
pub const fn metric_index(verdict: u8, reason: u8) -> u32 {
    verdict as u32 * DROP_REASON_COUNT + reason as u32
}
/// Metrics array slot counting ring-buffer events that could not be written.
pub const METRIC_LOST_EVENTS: u32 = VERDICT_COUNT * DROP_REASON_COUNT;
pub const METRICS_LEN: u32 = METRIC_LOST_EVENTS + 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Observation points.
pub const OBS_FROM_ENDPOINT: u8 = 1;
pub const OBS_TO_ENDPOINT: u8 = 2;
pub const OBS_SOCK_CONNECT: u8 = 3;
pub const OBS_SOCK_SENDMSG: u8 = 4;

/// One flow event, written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (monotonic since boot).
    pub ts_ns: u64,
    pub bytes: u64,
    pub saddr: Addr,
    pub daddr: Addr,
    /// Ports in host byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub verdict: u8,
    pub drop_reason: u8,
    pub direction: u8,
    pub obs_point: u8,
    pub tcp_flags: u8,
    pub _pad: u8,
    pub ep_id: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Service id for translations, 0 otherwise.
    pub svc_id: u32,
    pub _pad2: u32,
}

/// Key of the service map (VIP:port/proto).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub vip: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

pub const SVC_F_MAGLEV: u32 = 1;
pub const SVC_F_AFFINITY: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub svc_id: u32,
    /// Number of active backends (`BACKEND_SLOTS` 0..count); 0 = no backend -> drop.
    pub count: u32,
    /// `SVC_F_*`.
    pub flags: u32,
    /// Maglev table size in use (prime, <= `MAGLEV_MAX_M`).
    pub maglev_m: u32,
    pub affinity_timeout_s: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendSlotKey {
    pub svc_id: u32,
    pub slot: u32,
}

pub const BACKEND_ACTIVE: u8 = 0;
pub const BACKEND_TERMINATING: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    /// `BACKEND_*`.
    pub state: u8,
    pub _pad: [u8; 3],
}

/// Largest Maglev table the datapath accepts (the per-service value is this many u32).
pub const MAGLEV_MAX_M: usize = 65521;

/// A Maglev lookup table: backend ids; only the first `ServiceValue::maglev_m` are used.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MaglevTable {
    pub backends: [u32; MAGLEV_MAX_M],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Client: the network namespace cookie of the connecting socket.
    pub client: u64,
    pub svc_id: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}

/// Reverse translation for socket LB (UDP recvmsg / getpeername).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatKey {
    pub cookie: u64,
    pub addr: Addr,
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNatValue {
    pub vip: Addr,
    pub port: u16,
    pub _pad: [u8; 2],
    pub svc_id: u32,
}

/// North-south LB conntrack: forward entries (client -> VIP, `dir` = `LB_CT_FORWARD`) keep a
/// connection on its backend; reverse entries (backend -> client, `dir` = `LB_CT_REVERSE`) give
/// the VIP back to replies.
pub const LB_CT_FORWARD: u8 = 1;
pub const LB_CT_REVERSE: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbCtValue {
    pub last_seen_ns: u64,
    /// Forward: backend address; reverse: the VIP.
    pub addr: Addr,
    /// Network byte order (backend port / VIP port).
    pub port: u16,
    pub _pad: [u8; 2],
    pub backend_id: u32,
    pub svc_id: u32,
    pub _pad2: u32,
}

/// Observation point of the uplink programs.
pub const OBS_UPLINK_INGRESS: u8 = 5;
pub const OBS_UPLINK_EGRESS: u8 = 6;

/// Mark set on packets redirected to the L7 proxy: `MARK_PROXY | proxy_port << 16`.
pub const MARK_PROXY: u32 = 0x0a00;

/// The bits of a mark that say what it carries.
pub const MARK_MAGIC_MASK: u32 = 0x0f00;

/// Mark carrying a security identity within a node: set by `weft_from_endpoint` on what an
/// endpoint sends (read by `weft_to_tunnel` into the VNI) and by `weft_from_tunnel` on what
/// arrives from another node (read by `weft_to_endpoint` instead of the ipcache). The
/// 24-bit identity: bits 0-15 in the mark's 16-31, bits 16-23 in its 0-7.
pub const MARK_IDENTITY: u32 = 0x0b00;

/// Allocated identities fit 24 bits (a VXLAN VNI); anything else is not carried.
pub const IDENTITY_FIRST_ALLOCATED: u32 = 256;
pub const IDENTITY_CIDR_BASE: u32 = 1 << 24;

/// The mark carrying identity `id` (an allocated one; see [`MARK_IDENTITY`]).
#[inline(always)]
pub fn identity_mark(id: u32) -> u32 {
    MARK_IDENTITY | ((id & 0xffff) << 16) | ((id >> 16) & 0xff)
}

/// Mark the L7 proxy sets on what it forwards to an endpoint after checking the request
/// against that endpoint's ingress L7 rules: carries the client's identity (as
/// [`MARK_IDENTITY`]) and tells `weft_to_endpoint` not to redirect it again.
pub const MARK_PROXIED: u32 = 0x0c00;

/// The mark the L7 proxy forwards an ingress-checked request with (see [`MARK_PROXIED`]).
#[inline(always)]
pub fn proxied_mark(id: u32) -> u32 {
    MARK_PROXIED | (identity_mark(id) & !MARK_MAGIC_MASK)
}

/// The identity a mark carries, if it carries one.
#[inline(always)]
pub fn identity_of_mark(mark: u32) -> Option<u32> {
    let magic = mark & MARK_MAGIC_MASK;
    if magic != MARK_IDENTITY && magic != MARK_PROXIED {
        return None;
    }
    Some((mark >> 16) | ((mark & 0xff) << 16))
}

/// The proxy port a packet redirected to the L7 proxy carries in its mark.
#[inline(always)]
pub fn proxy_port_of_mark(mark: u32) -> Option<u16> {
    if mark & MARK_MAGIC_MASK != MARK_PROXY {
        return None;
    }
    Some((mark >> 16) as u16)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    macro_rules! pod {
        ($($t:ty),*) => { $(unsafe impl aya::Pod for $t {})* };
    }
    pod!(
        EndpointKey,
        EndpointValue,
        IpcacheKey,
        IpcacheValue,
        PolicyKey,
        PolicyHashKey,
        PolicyValue,
        CtKey,
        CtValue,
        Config,
        MetricValue,
        FlowEvent,
        ServiceKey,
        ServiceValue,
        BackendSlotKey,
        BackendValue,
        MaglevTable,
        AffinityKey,
        AffinityValue,
        SockRevNatKey,
        SockRevNatValue,
        LbCtValue,
        FragKey,
        FragValue
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    // Sizes are the sum of the fields: no implicit padding anywhere.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EndpointKey>(), 20);
        assert_eq!(size_of::<EndpointValue>(), 24);
        assert_eq!(size_of::<IpcacheKey>(), 20);
        assert_eq!(size_of::<PolicyKey>(), 12);
        assert_eq!(size_of::<PolicyHashKey>(), 16);
        assert_eq!(size_of::<PolicyValue>(), 8);
        assert_eq!(size_of::<CtKey>(), 40);
        assert_eq!(size_of::<CtValue>(), 48);
        assert_eq!(size_of::<Config>(), 28);
        assert_eq!(size_of::<FlowEvent>(), 80);
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<ServiceValue>(), 24);
        assert_eq!(size_of::<BackendValue>(), 24);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<SockRevNatKey>(), 32);
        assert_eq!(size_of::<SockRevNatValue>(), 24);
        assert_eq!(size_of::<LbCtValue>(), 40);
        assert_eq!(size_of::<FragKey>(), 40);
        assert_eq!(size_of::<FragValue>(), 16);
        assert_eq!(size_of::<MaglevTable>(), 4 * MAGLEV_MAX_M);
        assert_eq!(POLICY_PREFIX_FULL_BITS as usize, 8 * size_of::<PolicyKey>());
    }

    #[test]
    fn an_identity_mark_carries_any_allocated_identity_and_nothing_else_reads_as_one() {
        for id in [
            IDENTITY_FIRST_ALLOCATED,
            300,
            0xffff,
            0x1_0000,
            IDENTITY_CIDR_BASE - 1,
        ] {
            assert_eq!(identity_of_mark(identity_mark(id)), Some(id), "{id:#x}");
        }
        assert_eq!(identity_of_mark(0), None);
        assert_eq!(identity_of_mark(MARK_PROXY | (8080 << 16)), None);
    }

    #[test]
    fn proxied_marks_carry_the_identity_and_proxy_marks_the_port() {
        for id in [256, 0xfffe, 0x10000, 0xabcdef] {
            let m = proxied_mark(id);
            assert_eq!(m & MARK_MAGIC_MASK, MARK_PROXIED);
            assert_eq!(identity_of_mark(m), Some(id), "{id:#x}");
            assert_eq!(proxy_port_of_mark(m), None);
        }
        assert_eq!(proxy_port_of_mark(MARK_PROXY | (15001 << 16)), Some(15001));
        assert_eq!(proxy_port_of_mark(identity_mark(15001)), None);
    }
}
