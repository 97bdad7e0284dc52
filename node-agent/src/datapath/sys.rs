//! The few raw `bpf(2)` commands aya 0.13 does not expose the way we need them:
//! `BPF_PROG_TEST_RUN`, link create/update for links we pin ourselves, object pin/get, and
//! the map-in-map write that waits for running programs ([`RcuBarrier`]).
//! Each builds a zeroed `bpf_attr` and fills the fields of its command (offsets from
//! `include/uapi/linux/bpf.h`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `enum bpf_attach_type` values we use.
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
pub const BPF_CGROUP_UDP4_RECVMSG: u32 = 19;
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;
pub const BPF_CGROUP_UDP6_RECVMSG: u32 = 20;
pub const BPF_CGROUP_INET4_GETPEERNAME: u32 = 29;
pub const BPF_CGROUP_INET6_GETPEERNAME: u32 = 30;
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;

/// A zeroed `union bpf_attr`, larger than any command we use.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(b)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable, zero-initialised bpf_attr of the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr as *mut libc::c_void,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fd_from(ret: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(ret as i32) }
}

fn c_path(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// `BPF_LINK_CREATE`: attaches `prog` to `target` (an ifindex for tcx, a cgroup fd for cgroup
/// hooks) and returns the link.
pub fn link_create(prog: BorrowedFd<'_>, target: u32, attach_type: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, prog.as_raw_fd() as u32);
    a.put_u32(4, target);
    a.put_u32(8, attach_type);
    bpf(BPF_LINK_CREATE, &mut a).map(fd_from)
}

/// `BPF_LINK_UPDATE`: atomically replaces the program behind a link.
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, link.as_raw_fd() as u32);
    a.put_u32(4, new_prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut a).map(|_| ())
}

/// `BPF_OBJ_PIN`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let p = c_path(path)?;
    let mut a = Attr::new();
    a.put_u64(0, p.as_ptr() as u64);
    a.put_u32(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut a).map(|_| ())
}

/// `BPF_OBJ_GET`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let p = c_path(path)?;
    let mut a = Attr::new();
    a.put_u64(0, p.as_ptr() as u64);
    bpf(BPF_OBJ_GET, &mut a).map(fd_from)
}

/// Outcome of `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// The program's return value (e.g. `TC_ACT_OK` = 0, `TC_ACT_SHOT` = 2).
    pub retval: u32,
    /// Average run time in ns as the kernel measured it over `repeat` runs.
    pub duration_ns: u32,
    /// `__sk_buff` after the run (for tc programs; `mark` at offset 8).
    pub ctx_out: Vec<u8>,
    /// The packet after the run.
    pub data_out: Vec<u8>,
}

/// Size of `struct __sk_buff` on current kernels.
pub const SKB_CTX_LEN: usize = 192;

/// Runs a tc (`sched_cls`) program on `packet` `repeat` times (`BPF_PROG_TEST_RUN`).
pub fn prog_test_run_skb(prog: BorrowedFd<'_>, packet: &[u8], repeat: u32) -> io::Result<TestRun> {
    let mut data_out = vec![0u8; packet.len() + 256];
    let ctx_in = [0u8; SKB_CTX_LEN];
    let mut ctx_out = vec![0u8; SKB_CTX_LEN];
    let mut a = Attr::new();
    a.put_u32(0, prog.as_raw_fd() as u32);
    a.put_u32(8, packet.len() as u32);
    a.put_u32(12, data_out.len() as u32);
    a.put_u64(16, packet.as_ptr() as u64);
    a.put_u64(24, data_out.as_mut_ptr() as u64);
    a.put_u32(32, repeat);
    a.put_u32(40, SKB_CTX_LEN as u32);
    a.put_u32(44, SKB_CTX_LEN as u32);
    a.put_u64(48, ctx_in.as_ptr() as u64);
    a.put_u64(56, ctx_out.as_mut_ptr() as u64);
    bpf(BPF_PROG_TEST_RUN, &mut a)?;
    let ctx_len = (a.get_u32(44) as usize).min(SKB_CTX_LEN);
    ctx_out.truncate(ctx_len);
    let data_len = (a.get_u32(12) as usize).min(data_out.len());
    data_out.truncate(data_len);
    Ok(TestRun {
        retval: a.get_u32(4),
        duration_ns: a.get_u32(36),
        ctx_out,
        data_out,
    })
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// Counts the entries of a map (hash, LRU or LPM trie) by walking its keys with
/// `BPF_MAP_GET_NEXT_KEY`; `key_size` from the map's info.
pub fn map_count(map: BorrowedFd<'_>, key_size: usize) -> io::Result<u64> {
    let mut cur = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut n = 0u64;
    let mut first = true;
    loop {
        let mut a = Attr::new();
        a.put_u32(0, map.as_raw_fd() as u32);
        // A NULL key asks for the first key.
        a.put_u64(8, if first { 0 } else { cur.as_ptr() as u64 });
        a.put_u64(16, next.as_mut_ptr() as u64);
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
            Ok(_) => {
                n += 1;
                first = false;
                std::mem::swap(&mut cur, &mut next);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e),
        }
    }
}

/// `BPF_MAP_UPDATE_ELEM` with raw key/value buffers (for values too large for the stack).
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    a.put_u64(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
}

/// `BPF_MAP_LOOKUP_ELEM` into a caller-sized buffer; `Ok(false)` when the key is absent.
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    a.put_u64(16, value.as_mut_ptr() as u64);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_DELETE_ELEM`; absent keys are not an error.
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}

/// Waits until every BPF program that may be running has finished: an RCU grace period,
/// which user space cannot ask for directly. Writing to a map-in-map from user space does
/// it (the kernel's `maybe_wait_bpf_programs`: `synchronize_rcu()` after the update), so
/// this keeps a one-slot array of maps and rewrites its slot. tc and cgroup programs run
/// inside RCU read-side sections, so after [`RcuBarrier::wait`] none still holds a pointer
/// into a map element it looked up before the call. About 5-20 ms on our 2-vCPU machines.
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

fn map_create(map_type: u32, max_entries: u32, inner_map_fd: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, map_type);
    a.put_u32(4, 4); // key_size
    a.put_u32(8, 4); // value_size (an array's u32; a map fd in the outer map)
    a.put_u32(12, max_entries);
    a.put_u32(20, inner_map_fd);
    bpf(BPF_MAP_CREATE, &mut a).map(fd_from)
}

impl RcuBarrier {
    pub fn new() -> io::Result<Self> {
        let inner = map_create(BPF_MAP_TYPE_ARRAY, 1, 0)?;
        let outer = map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, 1, inner.as_raw_fd() as u32)?;
        Ok(RcuBarrier { outer, inner })
    }

    /// Returns once every program running at the call has finished.
    pub fn wait(&self) -> io::Result<()> {
        let fd = self.inner.as_raw_fd() as u32;
        map_update(self.outer.as_fd(), &0u32.to_ne_bytes(), &fd.to_ne_bytes())
    }
}
