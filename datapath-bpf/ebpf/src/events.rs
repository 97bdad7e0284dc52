//! Configuration, per-CPU counters and flow events: what every program reports through.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use weft_datapath_common::*;

use crate::maps::{WEFT_CONFIG, WEFT_EVENTS, WEFT_METRICS};
use crate::parse::Pkt;

#[inline(always)]
pub(crate) fn config() -> Config {
    match WEFT_CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}

#[inline(always)]
pub(crate) fn count(verdict: u8, reason: u8, bytes: u64) {
    if let Some(m) = WEFT_METRICS.get_ptr_mut(metric_index(verdict, reason)) {
        // Per-CPU slot: no other writer.
        unsafe {
            (*m).packets += 1;
            (*m).bytes += bytes;
        }
    }
}

#[inline(always)]
pub(crate) fn lost_event() {
    if let Some(m) = WEFT_METRICS.get_ptr_mut(METRIC_LOST_EVENTS) {
        unsafe { (*m).packets += 1 };
    }
}

pub(crate) struct EventInfo {
    pub(crate) verdict: u8,
    pub(crate) reason: u8,
    pub(crate) direction: u8,
    pub(crate) obs: u8,
    pub(crate) ep_id: u32,
    pub(crate) src_identity: u32,
    pub(crate) dst_identity: u32,
}

/// Writes a flow event straight into the ring buffer (no stack copy: stack is scarce).
#[inline(always)]
pub(crate) fn emit(p: &Pkt, info: &EventInfo) {
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
