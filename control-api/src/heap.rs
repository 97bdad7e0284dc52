//! The process's live heap, counted: RSS also holds what the allocator keeps after a burst
//! (the joining snapshots of a fleet), so it overstates what each connected agent costs.
//! The binary installs [`Counting`] as its global allocator; the count is exported as
//! `weft_heap_live_bytes`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// Counters a thread adds to, one each (threads past [`SLOTS`] share): one counter for the
/// process, its cache line bounced between cores on every allocation, took a quarter of
/// the replicas' CPU samples during a 5,000-agent fan-out.
const SLOTS: usize = 64;

/// A counter on a cache line of its own.
#[repr(align(128))]
struct Slot(AtomicI64);

static LIVE: [Slot; SLOTS] = [const { Slot(AtomicI64::new(0)) }; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialized and without a destructor: usable inside the allocator, at any
    // point of a thread's life.
    static MY_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn count(bytes: i64) {
    let slot = MY_SLOT
        .try_with(|mine| {
            if mine.get() == usize::MAX {
                mine.set(NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS);
            }
            mine.get()
        })
        .unwrap_or(0);
    LIVE[slot].0.fetch_add(bytes, Ordering::Relaxed);
}

/// The system allocator, counting the bytes it has handed out and not had back.
pub struct Counting;

// SAFETY: every call is passed unchanged to `System`, which upholds `GlobalAlloc`'s
// contract; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Bytes allocated and not yet freed; `None` where [`Counting`] is not the global allocator
/// (a library user's process, or tests).
pub fn live_bytes() -> Option<u64> {
    let live: i64 = LIVE.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
    u64::try_from(live).ok().filter(|&b| b > 0)
}
