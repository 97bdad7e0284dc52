//! Our own consumer of the `BPF_MAP_TYPE_RINGBUF` event map.
//!
//! Why not aya's `RingBuf`: aya 0.13.1 starts its cached producer position at 0 while it
//! takes the consumer position from the map. For a pinned ring buffer that an earlier agent
//! already consumed from (every restart), the two never meet: `next()` walks the data pages
//! forever, returning garbage. This reader loads the producer position before every walk
//! and never runs past it.
//!
//! Layout (kernel `kernel/bpf/ringbuf.c`): page 0 holds the consumer position (read-write
//! for us), page 1 the producer position, then the data pages, mapped twice in a row so a
//! record that wraps around the end reads contiguously. A record is an 8-byte header (u32
//! length with the BUSY and DISCARD bits, u32 page offset) followed by the data, padded to 8
//! bytes. Positions only grow; the offset in the data area is `pos & (size - 1)`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use aya::maps::MapData;

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: u64 = 8;

struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks prot and length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A consumer of one ring buffer (there must be one per ring at a time).
pub struct Ring {
    map: MapData,
    consumer: Mapping,
    producer: Mapping,
    page: usize,
    size: u64,
    /// Records skipped because their header made no sense (counted, never fatal).
    pub corrupt: u64,
}

// SAFETY: the mappings are plain shared memory owned by this value; access goes through
// atomics, and `Ring` is used by one thread at a time (`&mut self`).
unsafe impl Send for Ring {}

impl Ring {
    pub fn new(map: MapData) -> io::Result<Ring> {
        let size = u64::from(
            map.info()
                .map_err(|e| io::Error::other(e.to_string()))?
                .max_entries(),
        );
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("page size"))?;
        if !size.is_power_of_two() || size < page as u64 {
            return Err(io::Error::other(format!("unexpected ring size {size}")));
        }
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + 2 * size as usize, libc::PROT_READ, page)?;
        Ok(Ring {
            map,
            consumer,
            producer,
            page,
            size,
            corrupt: 0,
        })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first word of the consumer page, 8-aligned (page-aligned mapping).
        unsafe { &*(self.consumer.ptr as *const AtomicU64) }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as above, on the producer page.
        unsafe { &*(self.producer.ptr as *const AtomicU64) }
    }

    /// Calls `f` with each committed record (at most `max`), consuming them.
    pub fn consume(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let mask = self.size - 1;
        let mut cons = self.consumer_pos().load(Ordering::Acquire);
        let prod = self.producer_pos().load(Ordering::Acquire);
        let mut n = 0;
        // SAFETY: the data pages start one page into the producer mapping.
        let data = unsafe { (self.producer.ptr as *const u8).add(self.page) };
        while cons < prod && n < max {
            let off = (cons & mask) as usize;
            // SAFETY: `off + 8 <= size`, inside the (double) data mapping; 8-aligned.
            let hdr = unsafe { &*(data.add(off) as *const AtomicU32) }.load(Ordering::Acquire);
            if hdr & BUSY != 0 {
                break;
            }
            let len = u64::from(hdr & !(BUSY | DISCARD));
            let step = (len + HEADER).div_ceil(8) * 8;
            if len > self.size - HEADER || cons + step > prod {
                // Not a record we can trust: skip to what the producer committed.
                self.corrupt += 1;
                cons = prod;
                break;
            }
            if hdr & DISCARD == 0 {
                // SAFETY: `len` bytes after the header, contiguous thanks to the double
                // mapping (`off + 8 + len <= 2 * size`).
                let bytes = unsafe {
                    std::slice::from_raw_parts(data.add(off + HEADER as usize), len as usize)
                };
                f(bytes);
                n += 1;
            }
            cons += step;
            // Hand the space back as we go (the kernel reads this to find free room).
            self.consumer_pos().store(cons, Ordering::Release);
        }
        self.consumer_pos().store(cons, Ordering::Release);
        n
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}
