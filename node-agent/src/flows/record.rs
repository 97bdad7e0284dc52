//! A datapath flow event as a `weft_proto::v1::Flow` record, and aggregation of repeats.

use std::collections::HashMap;
use std::net::IpAddr;

use weft_datapath_common as c;
use weft_model::desired::HOST_ENDPOINT_ID;
use weft_proto::v1 as pb;

use crate::datapath::{
    addr_ip, direction_name, drop_reason_name, observation_point_name, verdict_name,
};
use crate::names::Names;

/// `CLOCK_REALTIME - CLOCK_MONOTONIC` in nanoseconds: what turns an event's
/// `bpf_ktime_get_ns` into unix time.
pub fn monotonic_to_unix_offset() -> i64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    let real = read(libc::CLOCK_REALTIME);
    let mono = read(libc::CLOCK_MONOTONIC);
    real - mono
}

/// The desired-state id of the node's endpoint at `ip`, or of datapath endpoint `ep_id`
/// when the event was seen on that endpoint's side. The host endpoint is left out: its
/// identity (`host`) already says it, and its id is not an endpoint of the tenant's.
fn endpoint_of(names: &Names, ip: IpAddr, ep_id: Option<u32>) -> String {
    names
        .endpoint_by_ip(ip)
        .map(|e| e.id.clone())
        .or_else(|| ep_id.and_then(|id| names.endpoint_ids.get(&id).cloned()))
        .filter(|id| id != HOST_ENDPOINT_ID)
        .unwrap_or_default()
}

/// One ring-buffer event as a flow record (`count` 1, `packets` 1).
pub fn to_flow(e: &c::FlowEvent, unix_offset_ns: i64, names: &Names) -> pb::Flow {
    let src = addr_ip(e.family, &e.saddr);
    let dst = addr_ip(e.family, &e.daddr);
    // The event's endpoint is the source of what it sends (egress) and the destination of
    // what it receives (ingress).
    let ep = (e.ep_id != 0).then_some(e.ep_id);
    let (src_ep, dst_ep) = match e.direction {
        c::DIR_EGRESS => (ep, None),
        c::DIR_INGRESS => (None, ep),
        _ => (None, None),
    };
    pb::Flow {
        time_unix_nanos: i64::try_from(e.ts_ns)
            .unwrap_or(i64::MAX)
            .saturating_add(unix_offset_ns),
        src_ip: src.to_string(),
        dst_ip: dst.to_string(),
        src_port: u32::from(e.sport),
        dst_port: u32::from(e.dport),
        proto: u32::from(e.proto),
        src_identity: e.src_identity,
        dst_identity: e.dst_identity,
        verdict: verdict_name(e.verdict).to_string(),
        drop_reason: drop_reason_name(e.drop_reason).to_string(),
        direction: direction_name(e.direction).to_string(),
        tcp_flags: u32::from(e.tcp_flags),
        bytes: e.bytes,
        packets: 1,
        src_endpoint: endpoint_of(names, src, src_ep),
        dst_endpoint: endpoint_of(names, dst, dst_ep),
        service: if e.svc_id == 0 {
            String::new()
        } else {
            names
                .service_ids
                .get(&e.svc_id)
                .cloned()
                .unwrap_or_default()
        },
        observation_point: observation_point_name(e.obs_point).to_string(),
        count: 1,
        http: None,
        dns: None,
    }
}

/// Merges records that differ only in time, bytes, packets and count (the first time is
/// kept): one record per distinct flow and outcome within a batch.
pub fn aggregate(flows: Vec<pb::Flow>) -> Vec<pb::Flow> {
    let mut out: Vec<pb::Flow> = Vec::with_capacity(flows.len());
    let mut index: HashMap<FlowKey, usize> = HashMap::new();
    for f in flows {
        // Each L7 record is one request of its own.
        if f.http.is_some() || f.dns.is_some() {
            out.push(f);
            continue;
        }
        match index.get(&flow_key(&f)) {
            Some(&i) => {
                let o = &mut out[i];
                o.bytes = o.bytes.saturating_add(f.bytes);
                o.packets = o.packets.saturating_add(f.packets);
                o.count = o.count.saturating_add(f.count.max(1));
            }
            None => {
                index.insert(flow_key(&f), out.len());
                out.push(f);
            }
        }
    }
    out
}

/// Everything of a flow record but time, bytes, packets and count.
type FlowKey = ([String; 9], [u32; 6]);

fn flow_key(f: &pb::Flow) -> FlowKey {
    (
        [
            f.src_ip.clone(),
            f.dst_ip.clone(),
            f.verdict.clone(),
            f.drop_reason.clone(),
            f.direction.clone(),
            f.src_endpoint.clone(),
            f.dst_endpoint.clone(),
            f.service.clone(),
            f.observation_point.clone(),
        ],
        [
            f.src_port,
            f.dst_port,
            f.proto,
            f.src_identity,
            f.dst_identity,
            f.tcp_flags,
        ],
    )
}
