//! Random tenants and packets: labels, selectors, rules with ports, CIDRs and entities, and probes
//! that hit them.

use super::*;

const LABEL_KEYS: [&str; 2] = ["app", "tier"];
const LABEL_VALUES: [&str; 3] = ["a", "b", "c"];
/// Outside prefixes the rules pick from (nested, overlapping, and one that covers the pods).
const CIDRS: [&str; 12] = [
    "2001:db8::/32",
    "2001:db8:5::/48",
    "fd00::/8",
    "::/0",
    "192.168.0.0/16",
    "192.168.5.0/24",
    "192.168.5.128/25",
    "192.168.5.7/32",
    "203.0.113.0/24",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "198.51.100.0/22",
];
const ENTITIES: [&str; 8] = [
    "world-ipv6",
    "world",
    "cluster",
    "host",
    "remote-node",
    "all",
    "world-ipv4",
    "world",
];
const PORTS: [u16; 8] = [22, 53, 80, 443, 1000, 8080, 8443, 65535];

pub(super) fn labels(rng: &mut StdRng) -> Labels {
    let mut l = Labels::new();
    for k in LABEL_KEYS {
        if rng.gen_bool(0.8) {
            l.insert(k.to_string(), LABEL_VALUES[rng.gen_range(0..3)].to_string());
        }
    }
    l
}

pub(super) fn selector(rng: &mut StdRng) -> Value {
    if rng.gen_bool(0.15) {
        return json!({});
    }
    if rng.gen_bool(0.2) {
        let vals: Vec<&str> = LABEL_VALUES
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(0.5))
            .collect();
        let op = if rng.gen_bool(0.5) { "In" } else { "NotIn" };
        return json!({"matchExpressions": [{"key": LABEL_KEYS[rng.gen_range(0..2)], "operator": op, "values": if vals.is_empty() { vec!["a"] } else { vals }}]});
    }
    let l = labels(rng);
    let l: BTreeMap<_, _> = l.into_iter().take(rng.gen_range(1..=2)).collect();
    json!({ "matchLabels": l })
}

pub(super) fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    xs[rng.gen_range(0..xs.len())]
}

pub(super) fn port_rule(rng: &mut StdRng) -> Value {
    let n = rng.gen_range(0..=2);
    let ports: Vec<Value> = (0..n)
        .map(|_| {
            let mut p = serde_json::Map::new();
            let port = if rng.gen_bool(0.1) {
                0
            } else if rng.gen_bool(0.7) {
                pick(rng, &PORTS)
            } else {
                rng.gen_range(1..=65535)
            };
            p.insert("port".into(), json!(port.to_string()));
            if rng.gen_bool(0.3) && port != 0 {
                let end = if rng.gen_bool(0.15) {
                    port.saturating_sub(1) // an unusable range: the single port
                } else {
                    port.saturating_add(rng.gen_range(1..2000))
                };
                p.insert("endPort".into(), json!(end));
            }
            let proto = pick(rng, &["TCP", "UDP", "SCTP", "ANY", "TCP"]);
            if proto != "ANY" || rng.gen_bool(0.5) {
                p.insert("protocol".into(), json!(proto));
            }
            Value::Object(p)
        })
        .collect();
    json!({ "ports": ports })
}

pub(super) fn icmp_rule(rng: &mut StdRng) -> Value {
    let ty = pick(rng, &[0u8, 8, 3, 11]);
    json!({"fields": [{"type": ty}]})
}

pub(super) fn rule(rng: &mut StdRng, ingress: bool) -> Value {
    let (ep, cidr, set, ent) = if ingress {
        ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities")
    } else {
        ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities")
    };
    let mut r = serde_json::Map::new();
    match rng.gen_range(0..6) {
        0 | 1 => {
            let n = rng.gen_range(1..=2);
            r.insert(ep.into(), (0..n).map(|_| selector(rng)).collect());
        }
        2 => {
            r.insert(cidr.into(), json!([pick(rng, &CIDRS)]));
        }
        3 => {
            let base = pick(rng, &CIDRS);
            let except: Vec<&str> = CIDRS
                .iter()
                .copied()
                .filter(|c| *c != base && rng.gen_bool(0.3))
                .filter(|c| {
                    let (b, e): (ipnet::IpNet, ipnet::IpNet) =
                        (base.parse().unwrap(), c.parse().unwrap());
                    b.contains(&e)
                })
                .collect();
            let mut s = json!({ "cidr": base });
            if !except.is_empty() {
                s["except"] = json!(except);
            }
            r.insert(set.into(), json!([s]));
        }
        4 => {
            r.insert(ent.into(), json!([pick(rng, &ENTITIES)]));
        }
        _ => {} // L4 only: any peer
    }
    if rng.gen_bool(0.1) && r.len() == 1 {
        // A second peer field (peers add up).
        r.insert(ent.into(), json!([pick(rng, &ENTITIES)]));
    }
    let l4 = rng.gen_range(0..10);
    if l4 < 5 || r.is_empty() {
        let n = rng.gen_range(1..=2);
        r.insert("toPorts".into(), (0..n).map(|_| port_rule(rng)).collect());
    }
    if l4 == 9 {
        r.insert("icmps".into(), json!([icmp_rule(rng)]));
    }
    Value::Object(r)
}

pub(super) fn spec(rng: &mut StdRng) -> Value {
    let mut s = serde_json::Map::new();
    s.insert("endpointSelector".into(), selector(rng));
    for (key, ingress, p) in [
        ("ingress", true, 0.6),
        ("ingressDeny", true, 0.3),
        ("egress", false, 0.6),
        ("egressDeny", false, 0.3),
    ] {
        if rng.gen_bool(p) {
            let n = rng.gen_range(1..=3);
            s.insert(key.into(), (0..n).map(|_| rule(rng, ingress)).collect());
        }
    }
    if rng.gen_bool(0.25) {
        let mut d = serde_json::Map::new();
        for k in ["ingress", "egress"] {
            if rng.gen_bool(0.6) {
                d.insert(k.into(), json!(rng.gen_bool(0.5)));
            }
        }
        s.insert("enableDefaultDeny".into(), Value::Object(d));
    }
    Value::Object(s)
}

pub(super) fn tenant(rng: &mut StdRng) -> Tenant {
    let mut endpoints = Vec::new();
    for (n, (node, _)) in NODES.iter().enumerate() {
        let count = if n == 0 {
            rng.gen_range(1..=4)
        } else {
            rng.gen_range(0..=3)
        };
        for i in 0..count {
            endpoints.push(Ep {
                id: format!("{node}-e{i}"),
                node: node.to_string(),
                labels: labels(rng),
                ip: Ipv4Addr::new(10, 0, n as u8 + 1, i as u8 + 1),
                ip6: rng
                    .gen_bool(0.5)
                    .then(|| Ipv6Addr::new(0xfd00, n as u16 + 1, 0, 0, 0, 0, 0, i as u16 + 1)),
            });
        }
    }
    let policies = (0..rng.gen_range(0..=3)).map(|_| spec(rng)).collect();
    Tenant {
        endpoints,
        policies,
    }
}

/// An address of the family outside the cluster, often inside (or at the edge of) a rule CIDR.
pub(super) fn outside_ip(rng: &mut StdRng, t: &Tenant, v6: bool) -> IpAddr {
    let nets: Vec<ipnet::IpNet> = CIDRS
        .iter()
        .map(|c| c.parse::<ipnet::IpNet>().unwrap())
        .filter(|n| matches!(n, ipnet::IpNet::V6(_)) == v6)
        .collect();
    loop {
        let ip = if rng.gen_bool(0.8) {
            let net = nets[rng.gen_range(0..nets.len())];
            let (base, bits) = match net {
                ipnet::IpNet::V4(n) => (u128::from(u32::from(n.network())), 32 - n.prefix_len()),
                ipnet::IpNet::V6(n) => (u128::from(n.network()), 128 - n.prefix_len()),
            };
            let size = if bits >= 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            };
            let off = match rng.gen_range(0..4) {
                0 => 0,
                1 => size,
                2 => size.wrapping_add(1), // just past the end
                _ => rng.gen::<u128>() & size,
            };
            let a = base.wrapping_add(off);
            if v6 {
                IpAddr::V6(Ipv6Addr::from(a))
            } else {
                IpAddr::V4(Ipv4Addr::from(a as u32))
            }
        } else if v6 {
            IpAddr::V6(Ipv6Addr::from(rng.gen::<u128>()))
        } else {
            IpAddr::V4(Ipv4Addr::from(rng.gen::<u32>()))
        };
        let in_cluster = t
            .endpoints
            .iter()
            .any(|e| IpAddr::V4(e.ip) == ip || e.ip6.map(IpAddr::V6) == Some(ip))
            || NODES.iter().any(|n| IpAddr::V4(n.1) == ip)
            || NODES6.iter().any(|n| IpAddr::V6(*n) == ip);
        // BPF_PROG_TEST_RUN sends nothing anywhere, but keep out of addresses that mean
        // other things to a kernel (loopback, multicast, unspecified, link-local).
        let special = match ip {
            IpAddr::V4(a) => a.is_loopback() || a.is_multicast() || a.is_unspecified(),
            IpAddr::V6(a) => {
                a.is_loopback()
                    || a.is_multicast()
                    || a.is_unspecified()
                    || a.segments()[0] & 0xffc0 == 0xfe80
            }
        };
        if !in_cluster && !special {
            return ip;
        }
    }
}

pub(super) fn probe(rng: &mut StdRng, t: &Tenant) -> Option<Probe> {
    let local: Vec<&Ep> = t.endpoints.iter().filter(|e| e.node == "n1").collect();
    let subject = local.get(rng.gen_range(0..local.len().max(1)))?;
    let v6 = subject.ip6.is_some() && rng.gen_bool(0.4);
    let peer = match rng.gen_range(0..10) {
        0..=3 => {
            let others: Vec<&Ep> = t
                .endpoints
                .iter()
                .filter(|e| e.id != subject.id && (!v6 || e.ip6.is_some()))
                .collect();
            if others.is_empty() {
                PeerRef::Outside(outside_ip(rng, t, v6))
            } else {
                PeerRef::Endpoint(others[rng.gen_range(0..others.len())].id.clone())
            }
        }
        4 => PeerRef::Node(pick(rng, &["n1", "n2"]).to_string()),
        _ => PeerRef::Outside(outside_ip(rng, t, v6)),
    };
    // Ports from the rules, their neighbours, and anything.
    let rule_ports: Vec<u16> = t
        .policies
        .iter()
        .flat_map(|p| {
            let s = p.to_string();
            s.match_indices("\"port\":\"")
                .filter_map(|(i, m)| {
                    let rest = &s[i + m.len()..];
                    rest[..rest.find('"')?].parse().ok()
                })
                .chain(s.match_indices("\"endPort\":").filter_map(|(i, m)| {
                    let rest = &s[i + m.len()..];
                    let end = rest.find([',', '}']).unwrap_or(rest.len());
                    rest[..end].parse().ok()
                }))
                .collect::<Vec<u16>>()
        })
        .collect();
    let proto = match pick(rng, &[6u8, 6, 17, 132, 1]) {
        1 if v6 => 58,
        p => p,
    };
    let port = if proto == 1 {
        pick(rng, &[0u16, 8, 3, 11, 5])
    } else if proto == 58 {
        pick(rng, &[128u16, 129, 1, 3, 2])
    } else if !rule_ports.is_empty() && rng.gen_bool(0.7) {
        let p = pick(rng, &rule_ports);
        match rng.gen_range(0..4) {
            0 => p.saturating_sub(1),
            1 => p.saturating_add(1),
            _ => p,
        }
    } else {
        rng.gen_range(1..=65535)
    };
    Some(Probe {
        subject: subject.id.clone(),
        direction: if rng.gen_bool(0.5) {
            "ingress"
        } else {
            "egress"
        }
        .into(),
        peer,
        proto,
        port,
        v6,
    })
}
