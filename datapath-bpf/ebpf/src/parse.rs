//! Packet parsing: Ethernet, IPv4, IPv6 with its extension headers, the L4 ports, fragments,
//! and the tuple an ICMP error quotes. Fail closed: what cannot be read is an invalid packet.

use aya_ebpf::programs::TcContext;
use weft_datapath_common::*;

use crate::maps::WEFT_SCRATCH;

pub(crate) const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_RST: u8 = 0x04;

/// A parsed IPv4 or IPv6 packet (addresses and ports as on the wire).
#[derive(Clone, Copy, Default)]
pub(crate) struct Pkt {
    /// `FAMILY_IPV4` / `FAMILY_IPV6`.
    pub(crate) family: u8,
    pub(crate) saddr: Addr,
    pub(crate) daddr: Addr,
    /// Ports in network byte order.
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    /// Port used for policy (host order): TCP/UDP dport, ICMP type.
    pub(crate) policy_port: u16,
    pub(crate) proto: u8,
    pub(crate) tcp_flags: u8,
    pub(crate) bytes: u32,
    /// Offset of the L4 header.
    pub(crate) l4_off: u32,
    /// `FRAG_*`.
    pub(crate) frag: u8,
    /// IP identification of a fragment.
    pub(crate) frag_id: u32,
    /// 1: an ICMP/ICMPv6 error quoting a packet whose tuple is in `CtScratch::inner`.
    pub(crate) icmp_err: u8,
}

/// Not a fragment.
#[allow(dead_code)]
const FRAG_NONE: u8 = 0;
/// First fragment of a datagram (offset 0, more to come): carries the L4 header.
pub(crate) const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header; follows the verdict of its first fragment.
pub(crate) const FRAG_LATER: u8 = 2;

/// What `parse` found.
#[derive(PartialEq, Eq)]
pub(crate) enum Parsed {
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
pub(crate) fn parse(ctx: &TcContext, p: &mut Pkt) -> Result<Parsed, u8> {
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
