//! Conntrack and fragment tracking helpers: updating a live entry, building a fragment key.

use weft_datapath_common::*;

use crate::maps::WEFT_SCRATCH;
use crate::parse::{Pkt, TCP_FIN, TCP_RST};

/// Updates a live entry; returns true when FIN/RST appear for the first time.
#[inline(always)]
pub(crate) fn ct_touch(e: *mut CtValue, p: &Pkt, now: u64, reply: bool) -> bool {
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

/// The fragment-map key of `p`, built in per-CPU scratch space.
#[inline(always)]
pub(crate) fn frag_key(p: &Pkt, dir: u8) -> Option<&'static FragKey> {
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
