//! `node-agent bpf ...`: prints the pinned maps as tables (compare `cilium-dbg bpf ...`).
//! Reads pins only; never loads or attaches anything.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use weft_datapath_common as c;

use crate::datapath::{
    drop_reason_name, monotonic_ns, observation_point_name, verdict_name, DatapathError, Maps,
};

fn v4(a: &c::Addr) -> Ipv4Addr {
    Ipv4Addr::new(a[0], a[1], a[2], a[3])
}

/// An address of the given family as text.
fn addr(family: u8, a: &c::Addr) -> String {
    if family == c::FAMILY_IPV6 {
        std::net::Ipv6Addr::from(*a).to_string()
    } else {
        v4(a).to_string()
    }
}

/// `addr:port`, bracketed for IPv6.
fn addr_port(family: u8, a: &c::Addr, port: u16) -> String {
    if family == c::FAMILY_IPV6 {
        format!("[{}]:{port}", addr(family, a))
    } else {
        format!("{}:{port}", addr(family, a))
    }
}

fn proto_name(p: u8) -> String {
    match p {
        c::PROTO_TCP => "TCP".into(),
        c::PROTO_UDP => "UDP".into(),
        c::PROTO_ICMP => "ICMP".into(),
        c::PROTO_ICMPV6 => "ICMPv6".into(),
        0 => "ANY".into(),
        other => other.to_string(),
    }
}

fn dir_name(d: u8) -> &'static str {
    match d {
        c::DIR_INGRESS => "ingress",
        c::DIR_EGRESS => "egress",
        _ => "?",
    }
}

/// Renders rows as an aligned table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut first = true;
        for (i, cell) in cells.enumerate() {
            if !first {
                out.push_str("  ");
            }
            first = false;
            let _ = write!(out, "{cell:<w$}", w = widths[i]);
        }
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for r in rows {
        line(&mut out, &mut r.iter().map(String::as_str));
    }
    out
}

pub fn endpoint_list(maps: &Maps) -> Result<String, DatapathError> {
    let rows: Vec<Vec<String>> = maps
        .list_endpoints()?
        .iter()
        .map(|(k, v)| {
            vec![
                v.ep_id.to_string(),
                addr(k.family, &k.addr),
                v.identity.to_string(),
                v.ifindex.to_string(),
                match (
                    v.flags & c::EP_ENFORCE_INGRESS != 0,
                    v.flags & c::EP_ENFORCE_EGRESS != 0,
                ) {
                    (true, true) => "ingress,egress".into(),
                    (true, false) => "ingress".into(),
                    (false, true) => "egress".into(),
                    (false, false) => "none".into(),
                },
                v.policy_rev.to_string(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "ENDPOINT",
            "IP",
            "IDENTITY",
            "IFINDEX",
            "ENFORCING",
            "POLICY-REV",
        ],
        &rows,
    ))
}

pub fn ipcache_list(maps: &Maps) -> Result<String, DatapathError> {
    let mut rows: Vec<Vec<String>> = maps
        .list_ipcache()?
        .iter()
        .map(|(k, v)| {
            let prefix = k.prefix_len().saturating_sub(c::IPCACHE_PREFIX_HEADER_BITS);
            vec![
                format!("{}/{}", v4(&k.data().addr), prefix),
                v.identity.to_string(),
            ]
        })
        .collect();
    rows.sort();
    Ok(table(&["PREFIX", "IDENTITY"], &rows))
}

pub fn policy_get(maps: &Maps, ep_id: u32) -> Result<String, DatapathError> {
    let rows: Vec<Vec<String>> = maps
        .list_policy(ep_id)?
        .iter()
        .map(|(map, prefix, k, v)| {
            let port_bits = prefix.saturating_sub(c::POLICY_PREFIX_PROTO_BITS);
            let port = u16::from_be_bytes(k.dport);
            let ports = if *prefix < c::POLICY_PREFIX_PROTO_BITS || port_bits == 0 {
                "ANY".to_string()
            } else if port_bits == 16 {
                port.to_string()
            } else {
                let span = (1u32 << (16 - port_bits)) - 1;
                format!("{}-{}", port, port as u32 + span)
            };
            let proto = if *prefix < c::POLICY_PREFIX_PROTO_BITS {
                "ANY".to_string()
            } else {
                proto_name(k.proto)
            };
            let action = match v.action {
                c::ACTION_ALLOW => "allow".to_string(),
                c::ACTION_DENY => "deny".to_string(),
                c::ACTION_REDIRECT => format!("redirect:{}", v.proxy_port),
                c::ACTION_UNSUPPORTED => "unsupported".to_string(),
                _ => "?".to_string(),
            };
            vec![
                map.to_string(),
                dir_name(k.direction).into(),
                if k.identity == c::IDENTITY_ANY {
                    "ANY".into()
                } else {
                    k.identity.to_string()
                },
                proto,
                ports,
                action,
                v.rule_id.to_string(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "MAP",
            "DIRECTION",
            "IDENTITY",
            "PROTO",
            "PORTS",
            "ACTION",
            "RULE",
        ],
        &rows,
    ))
}

pub fn lb_list(maps: &Maps) -> Result<String, DatapathError> {
    let mut rows = Vec::new();
    for (k, s) in maps.list_services()? {
        let mut backends = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for id in maps.service_slots(&s)? {
            if seen.insert(id) {
                let b = maps.backend(id)?;
                backends.push(format!("{}:{} (#{id})", v4(&b.addr), u16::from_be(b.port)));
            }
        }
        rows.push(vec![
            s.svc_id.to_string(),
            format!(
                "{}:{}/{}",
                v4(&k.vip),
                u16::from_be(k.port),
                proto_name(k.proto)
            ),
            if s.flags & c::SVC_F_MAGLEV != 0 {
                format!("maglev(M={})", s.maglev_m)
            } else {
                "random".into()
            },
            if s.flags & c::SVC_F_AFFINITY != 0 {
                format!("{}s", s.affinity_timeout_s)
            } else {
                "-".into()
            },
            if backends.is_empty() {
                "(no backend)".into()
            } else {
                backends.join(", ")
            },
        ]);
    }
    Ok(table(
        &[
            "SERVICE",
            "FRONTEND",
            "ALGORITHM",
            "AFFINITY",
            "ACTIVE BACKENDS",
        ],
        &rows,
    ))
}

pub fn maglev_get(maps: &Maps, svc_id: u32) -> Result<String, DatapathError> {
    let svc = maps
        .list_services()?
        .into_iter()
        .map(|(_, s)| s)
        .find(|s| s.svc_id == svc_id && s.flags & c::SVC_F_MAGLEV != 0)
        .ok_or(DatapathError::Service {
            svc: svc_id,
            reason: "no such Maglev service".into(),
        })?;
    let table_ids = maps.maglev_table(svc_id, svc.maglev_m)?;
    let mut counts = std::collections::BTreeMap::new();
    for id in &table_ids {
        *counts.entry(*id).or_insert(0u32) += 1;
    }
    let mut rows = Vec::new();
    for (id, n) in counts {
        let addr = maps
            .backend(id)
            .map(|b| format!("{}:{}", v4(&b.addr), u16::from_be(b.port)))
            .unwrap_or_else(|_| "?".into());
        rows.push(vec![
            id.to_string(),
            addr,
            n.to_string(),
            format!("{:.2}%", 100.0 * n as f64 / svc.maglev_m as f64),
        ]);
    }
    let head: Vec<String> = table_ids.iter().take(32).map(u32::to_string).collect();
    Ok(format!(
        "service {svc_id}: M={}\n{}first entries: {}\n",
        svc.maglev_m,
        table(&["BACKEND", "ADDRESS", "ENTRIES", "SHARE"], &rows),
        head.join(" ")
    ))
}

pub fn ct_list(maps: &Maps) -> Result<String, DatapathError> {
    let now = monotonic_ns();
    let rows: Vec<Vec<String>> = maps
        .list_ct()?
        .iter()
        .map(|(k, v)| {
            vec![
                proto_name(k.proto),
                addr_port(k.family, &k.saddr, u16::from_be(k.sport)),
                addr_port(k.family, &k.daddr, u16::from_be(k.dport)),
                dir_name(k.dir).into(),
                v.ep_id.to_string(),
                v.peer_identity.to_string(),
                v.packets.to_string(),
                v.bytes.to_string(),
                format!("{:#04x}", v.tcp_flags),
                format!("{}s", now.saturating_sub(v.last_seen_ns) / 1_000_000_000),
            ]
        })
        .collect();
    Ok(table(
        &[
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "CREATED-BY",
            "ENDPOINT",
            "PEER-ID",
            "PACKETS",
            "BYTES",
            "TCP-FLAGS",
            "IDLE",
        ],
        &rows,
    ))
}

pub fn metrics(maps: &Maps) -> Result<String, DatapathError> {
    let c = maps.counters()?;
    let mut rows: Vec<Vec<String>> = c
        .rows
        .iter()
        .map(|((v, r), (p, b))| {
            vec![
                verdict_name(*v).into(),
                drop_reason_name(*r).into(),
                p.to_string(),
                b.to_string(),
            ]
        })
        .collect();
    rows.push(vec![
        "lost events".into(),
        "".into(),
        c.lost_events.to_string(),
        "".into(),
    ]);
    Ok(table(&["VERDICT", "REASON", "PACKETS", "BYTES"], &rows))
}

/// One flow event as a line (like `hubble observe`).
pub fn format_event(e: &c::FlowEvent) -> String {
    let reason = drop_reason_name(e.drop_reason);
    format!(
        "{:>14.6}s {:<10}{} {} {} {} -> {} ep={} id={}->{} {}flags={:#04x} bytes={}",
        e.ts_ns as f64 / 1e9,
        verdict_name(e.verdict),
        if reason.is_empty() {
            String::new()
        } else {
            format!(" ({reason})")
        },
        observation_point_name(e.obs_point),
        proto_name(e.proto),
        addr_port(e.family, &e.saddr, e.sport),
        addr_port(e.family, &e.daddr, e.dport),
        e.ep_id,
        e.src_identity,
        e.dst_identity,
        if e.svc_id != 0 {
            format!("svc={} ", e.svc_id)
        } else {
            String::new()
        },
        e.tcp_flags,
        e.bytes
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_align_columns() {
        let t = super::table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }
}
