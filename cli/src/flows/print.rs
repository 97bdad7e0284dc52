//! Flows as `hubble observe` prints them: one compact line, or a table row.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Flow, Peer};

fn addr(p: &Peer) -> String {
    let ip = p.ip.clone().unwrap_or_else(|| "?".into());
    let ip = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    match p.port {
        Some(port) if port != 0 => format!("{ip}:{port}"),
        _ => ip.trim_start_matches('[').trim_end_matches(']').to_string(),
    }
}

/// The name of a reserved identity (`world`, `host`, …), as hubble shows it.
fn reserved_name(id: u64) -> Option<&'static str> {
    use weft_model::identity as i;
    let id = u32::try_from(id).ok()?;
    Some(match id {
        i::HOST => "host",
        i::WORLD => "world",
        i::UNMANAGED => "unmanaged",
        i::HEALTH => "health",
        i::INIT => "init",
        i::REMOTE_NODE => "remote-node",
        i::KUBE_APISERVER => "kube-apiserver",
        i::INGRESS => "ingress",
        _ => return None,
    })
}

/// Who a peer is: its endpoint, else its reserved identity's name, else `ID:n`.
fn who(p: &Peer) -> String {
    match (&p.endpoint, p.identity) {
        (Some(e), _) if !e.is_empty() => format!(" ({e})"),
        (_, Some(id)) => match reserved_name(id) {
            Some(name) => format!(" ({name})"),
            None if id == 0 => String::new(),
            None => format!(" (ID:{id})"),
        },
        _ => String::new(),
    }
}

fn time(t: &str) -> String {
    DateTime::parse_from_rfc3339(t)
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%b %d %H:%M:%S%.3f")
                .to_string()
        })
        .unwrap_or_else(|_| t.to_string())
}

/// The HTTP request of an L7 record.
fn http(f: &Flow) -> Option<&serde_json::Map<String, Value>> {
    f.other.get("l7")?.get("http")?.as_object()
}

/// The DNS query of an L7 record.
fn dns(f: &Flow) -> Option<&serde_json::Map<String, Value>> {
    f.other.get("l7")?.get("dns")?.as_object()
}

/// What happened, as hubble words it: `http-request` for HTTP records, `dns-response` for
/// answered DNS queries (`dns-request` for refused ones), the drop reason for drops
/// (`POLICY_DENIED` reads `policy-denied`), else where it was seen.
fn kind(f: &Flow) -> String {
    if http(f).is_some() {
        return "http-request".into();
    }
    if dns(f).is_some() {
        let refused = f.verdict == "DROPPED";
        return if refused {
            "dns-request"
        } else {
            "dns-response"
        }
        .into();
    }
    match (&f.drop_reason, &f.observation_point) {
        (Some(r), _) if f.verdict == "DROPPED" && !r.is_empty() => {
            r.to_ascii_lowercase().replace('_', "-")
        }
        (_, Some(o)) => o.clone(),
        _ => f.direction.clone().unwrap_or_default(),
    }
}

fn summary(f: &Flow) -> String {
    if let Some(h) = http(f) {
        let s = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("?");
        let code = h.get("code").and_then(Value::as_u64).unwrap_or(0);
        let ms = h.get("latency_ms").and_then(Value::as_f64).unwrap_or(0.0);
        return format!(
            "{} {} {} => {code} {ms:.1}ms",
            s("protocol"),
            s("method"),
            s("url")
        );
    }
    if let Some(d) = dns(f) {
        let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("?");
        let list = |k: &str| -> Vec<String> {
            d.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let qtypes = list("qtypes").join(",");
        return match d.get("rcode").and_then(Value::as_u64).unwrap_or(0) {
            0 => format!(
                "DNS Answer \"{}\" TTL: {} (Proxy {} {qtypes})",
                list("ips").join(","),
                d.get("ttl").and_then(Value::as_u64).unwrap_or(0),
                s("query")
            ),
            rcode => format!(
                "DNS Query {} {qtypes} => {}",
                s("query"),
                weft_model::flow::rcode_name(u16::try_from(rcode).unwrap_or(u16::MAX))
            ),
        };
    }
    if !f.tcp_flags.is_empty() {
        format!("TCP Flags: {}", f.tcp_flags.join(", "))
    } else {
        f.protocol.clone().unwrap_or_default()
    }
}

/// One line, like `hubble observe --compact`.
pub fn compact(f: &Flow) -> String {
    let mut line = format!(
        "{}: {}{} -> {}{} {} {}",
        time(&f.time),
        addr(&f.source),
        who(&f.source),
        addr(&f.destination),
        who(&f.destination),
        kind(f),
        f.verdict
    );
    let s = summary(f);
    if !s.is_empty() {
        line.push_str(&format!(" ({s})"));
    }
    if let Some(n) = f.count.filter(|n| *n > 1) {
        line.push_str(&format!(" ×{n}"));
    }
    line
}

pub const TABLE_HEADERS: [&str; 6] = [
    "time",
    "source",
    "destination",
    "type",
    "verdict",
    "summary",
];

pub fn table_row(f: &Flow) -> Vec<String> {
    vec![
        time(&f.time),
        format!("{}{}", addr(&f.source), who(&f.source)),
        format!("{}{}", addr(&f.destination), who(&f.destination)),
        kind(f),
        f.verdict.clone(),
        summary(f),
    ]
}
