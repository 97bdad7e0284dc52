//! What a block's flows contain, so a query skips blocks its filter cannot match without
//! unpacking them.

use std::collections::BTreeSet;

use weft_model::flow::{Criterion, Side};

use super::NewFlow;

/// Distinct values of one kind a block lists before it gives up and lists the kind's
/// wildcard instead (then every query on that kind reads the block).
const MAX_KEYS_PER_KIND: usize = 256;

/// What a block's flows contain, for skipping blocks a filter cannot match: keys
/// `<kind>:<value>`, kinds `v` verdict, `r` drop reason, `p` protocol number, `se`/`de`
/// source/destination endpoint, `si`/`di` identities, `dp` destination port, `svc` service.
/// Values are collected typed and formatted once per block.
#[derive(Default)]
pub(super) struct KeySet<'a> {
    v: BTreeSet<&'static str>,
    r: BTreeSet<&'static str>,
    p: BTreeSet<u8>,
    se: BTreeSet<&'a str>,
    de: BTreeSet<&'a str>,
    si: BTreeSet<u32>,
    di: BTreeSet<u32>,
    dp: BTreeSet<u16>,
    svc: BTreeSet<&'a str>,
}

/// Inserts unless the set is already past the limit (it then stands for its wildcard).
fn add_capped<T: Ord>(set: &mut BTreeSet<T>, v: T) {
    if set.len() <= MAX_KEYS_PER_KIND {
        set.insert(v);
    }
}

impl<'a> KeySet<'a> {
    pub(super) fn add_new(&mut self, f: &'a NewFlow) {
        add_capped(&mut self.v, f.verdict.as_str());
        if let Some(r) = f.drop_reason {
            add_capped(&mut self.r, r.as_str());
        }
        add_capped(&mut self.p, f.protocol);
        if let Some(e) = &f.src.endpoint_name {
            add_capped(&mut self.se, e.as_str());
        }
        if let Some(e) = &f.dst.endpoint_name {
            add_capped(&mut self.de, e.as_str());
        }
        add_capped(&mut self.si, f.src.identity);
        add_capped(&mut self.di, f.dst.identity);
        add_capped(&mut self.dp, f.dst.port);
        if let Some(s) = &f.service_name {
            add_capped(&mut self.svc, s.as_str());
        }
    }

    pub(super) fn into_keys(self) -> Vec<String> {
        fn kind<T: ToString>(out: &mut Vec<String>, kind: &str, set: BTreeSet<T>) {
            if set.len() > MAX_KEYS_PER_KIND {
                out.push(wildcard(kind));
            } else {
                out.extend(set.into_iter().map(|v| format!("{kind}:{}", v.to_string())));
            }
        }
        let mut out = Vec::new();
        kind(&mut out, "v", self.v);
        kind(&mut out, "r", self.r);
        kind(&mut out, "p", self.p);
        kind(&mut out, "se", self.se);
        kind(&mut out, "de", self.de);
        kind(&mut out, "si", self.si);
        kind(&mut out, "di", self.di);
        kind(&mut out, "dp", self.dp);
        kind(&mut out, "svc", self.svc);
        out
    }
}

fn wildcard(kind: &str) -> String {
    format!("{kind}:*")
}

/// For each criterion a block can be skipped by, the keys of which a matching block has
/// at least one (wildcards included). A block lacking all the keys of any one list has
/// no flow the filter accepts. Criteria without keys (labels, addresses, source ports,
/// TCP flags, exclusions) are decided on the unpacked flows only.
pub fn required_keys(include: &[Criterion]) -> Vec<Vec<String>> {
    fn list(kinds: &[&'static str], values: Vec<String>) -> Vec<String> {
        let mut out: Vec<String> = kinds.iter().map(|k| wildcard(k)).collect();
        for k in kinds {
            out.extend(values.iter().map(|v| format!("{k}:{v}")));
        }
        out
    }
    fn sided(side: Side, src: &'static str, dst: &'static str) -> Vec<&'static str> {
        match side {
            Side::Source => vec![src],
            Side::Destination => vec![dst],
            Side::Either => vec![src, dst],
        }
    }
    let strings = |v: &[String]| v.to_vec();
    include
        .iter()
        .filter_map(|c| match c {
            Criterion::Verdict(vs) => Some(list(
                &["v"],
                vs.iter().map(|v| v.as_str().to_string()).collect(),
            )),
            Criterion::DropReason(rs) => Some(list(
                &["r"],
                rs.iter().map(|r| r.as_str().to_string()).collect(),
            )),
            Criterion::Protocol(ps) => Some(list(
                &["p"],
                ps.iter().map(|p| p.number().to_string()).collect(),
            )),
            Criterion::Endpoint(side, names) => {
                Some(list(&sided(*side, "se", "de"), strings(names)))
            }
            Criterion::Identity(side, ids) => Some(list(
                &sided(*side, "si", "di"),
                ids.iter().map(u32::to_string).collect(),
            )),
            Criterion::Port(Side::Destination, ports) => {
                Some(list(&["dp"], ports.iter().map(u16::to_string).collect()))
            }
            Criterion::Service(ss) => Some(list(&["svc"], strings(ss))),
            _ => None,
        })
        .collect()
}
