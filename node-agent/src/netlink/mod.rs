//! The kernel's network configuration over rtnetlink (links, addresses, routes, neighbours)
//! and named network namespaces, for the endpoint and workload plumbing: no `ip` processes,
//! no parsing of their text. An [`Rtnl`] speaks to the namespace its socket was opened in:
//! [`Rtnl::current`] the calling thread's (the agent's own), [`Rtnl::in_netns`] another one.
//! Every write is a `replace` where the kernel has one, so repeating it repairs.

use std::ffi::CString;
use std::fmt::Display;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A MAC address.
pub type Mac = [u8; 6];

pub mod proxy;
pub mod routes;

/// A rtnetlink socket in one network namespace; its connection task stops on drop.
pub struct Rtnl {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// The kernel's answer as an `io::Error` (its errno kept), prefixed with what was asked.
fn fail(what: impl Display, e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let os = m.to_io();
            io::Error::new(os.kind(), format!("{what}: {os}"))
        }
        other => io::Error::other(format!("{what}: {other}")),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

impl Rtnl {
    /// A socket in the calling thread's network namespace. Needs a tokio runtime.
    pub fn current() -> io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok(Rtnl {
            handle,
            conn: tokio::spawn(conn),
        })
    }

    /// A socket in the network namespace at `path`: a socket belongs to the namespace it
    /// was created in, so the thread enters it just for the `socket(2)` call.
    pub fn in_netns(path: &Path) -> io::Result<Self> {
        let _in = crate::netns::enter_netns(path)?;
        Self::current()
    }

    /// The index of the interface `name`, or `None` when there is none.
    pub async fn index(&self, name: &str) -> io::Result<Option<u32>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(fail(format_args!("looking up {name}"), e)),
        }
    }

    /// The index of the interface `name`, which must exist.
    pub async fn require(&self, name: &str) -> io::Result<u32> {
        self.index(name)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}")))
    }

    /// Interface `index`'s attributes; `None` when there is no such interface.
    async fn link(&self, index: u32) -> io::Result<Option<Vec<LinkAttribute>>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.attributes)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(fail(format_args!("reading interface {index}"), e)),
        }
    }

    /// Interface `index`'s attributes, which must exist.
    async fn require_link(&self, index: u32) -> io::Result<Vec<LinkAttribute>> {
        self.link(index)
            .await?
            .ok_or_else(|| io::Error::other(format!("no interface with index {index}")))
    }

    /// The hardware address of interface `index`.
    pub async fn mac(&self, index: u32) -> io::Result<Mac> {
        self.require_link(index)
            .await?
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) => Mac::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| io::Error::other(format!("interface {index} has no MAC address")))
    }

    /// Creates a veth pair: `name` here, `peer` created directly in the namespace at
    /// `peer_netns` (so it never collides with an interface of that name here).
    pub async fn add_veth(&self, name: &str, peer: &str, peer_netns: &Path) -> io::Result<()> {
        let ns = std::fs::File::open(peer_netns)?;
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| fail(format_args!("adding veth {name} (peer {peer})"), e))
    }

    /// Sets interface `index` up.
    pub async fn set_up(&self, index: u32) -> io::Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| fail(format_args!("setting interface {index} up"), e))
    }

    /// Deletes interface `index`; `Ok(false)` when it was already gone.
    pub async fn delete_link(&self, index: u32) -> io::Result<bool> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
            Err(e) => Err(fail(format_args!("deleting interface {index}"), e)),
        }
    }

    /// `ip addr replace <addr>/<prefix> dev <index>`.
    pub async fn replace_address(&self, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        self.handle
            .address()
            .add(index, addr, prefix)
            .replace()
            .execute()
            .await
            .map_err(|e| fail(format_args!("adding address {addr}/{prefix}"), e))
    }

    /// `ip route replace <dst>/<prefix> [via <gateway>] dev <index>`, either family (the
    /// gateway of the destination's); without a gateway the route is on-link.
    pub async fn replace_route(
        &self,
        dst: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        index: u32,
    ) -> io::Result<()> {
        let what = || format!("adding route {dst}/{prefix}");
        let mut route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, prefix)
            .map_err(|e| io::Error::other(format!("{}: {e}", what())))?
            .output_interface(index);
        route = match gateway {
            Some(gw) => route
                .gateway(gw)
                .map_err(|e| io::Error::other(format!("{}: {e}", what())))?,
            None => route.scope(RouteScope::Link),
        };
        self.handle
            .route()
            .add(route.build())
            .replace()
            .execute()
            .await
            .map_err(|e| fail(what(), e))
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`.
    pub async fn replace_neighbour(&self, index: u32, ip: IpAddr, mac: Mac) -> io::Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| fail(format_args!("adding neighbour {ip}"), e))
    }
}

/// Where named namespaces live (as `ip netns` keeps them).
pub const NETNS_DIR: &str = "/run/netns";

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has a NUL byte", path.display()),
        )
    })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mount(src: &Path, dst: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let (src, dst, none) = (cstr(src)?, cstr(dst)?, c"none");
    // SAFETY: valid NUL-terminated strings; no data argument.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            none.as_ptr(),
            flags,
            std::ptr::null(),
        )
    })
}

/// Makes `/run/netns` a shared mount, so that the namespaces bound under it are seen from
/// other mount namespaces (what `ip netns add` does before its first namespace).
fn share_netns_dir() -> io::Result<()> {
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir)?;
    let shared = libc::MS_SHARED | libc::MS_REC;
    match mount(Path::new("none"), dir, shared) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            mount(dir, dir, libc::MS_BIND | libc::MS_REC)?;
            mount(Path::new("none"), dir, shared)
        }
        other => other,
    }
}

/// Creates the named network namespace `/run/netns/<name>` with its loopback up.
/// Nothing is left behind when a step fails.
pub async fn add_named_netns(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("namespace name {name:?}"),
        ));
    }
    share_netns_dir()?;
    let path = Path::new(NETNS_DIR).join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))?;
    let bound = {
        let path = path.clone();
        // A fresh thread: unshare moves only it into the new namespace, and it ends there.
        std::thread::spawn(move || -> io::Result<()> {
            // SAFETY: affects only this thread's namespace membership.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
            mount(Path::new("/proc/thread-self/ns/net"), &path, libc::MS_BIND)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    };
    let made = async {
        bound?;
        let rtnl = Rtnl::in_netns(&path)?;
        let lo = rtnl.require("lo").await?;
        rtnl.set_up(lo).await
    };
    if let Err(e) = made.await {
        let _ = delete_named_netns(name);
        return Err(e);
    }
    Ok(())
}

/// Deletes the named network namespace (its interfaces go when nothing else holds it);
/// nothing to do when it does not exist.
pub fn delete_named_netns(name: &str) -> io::Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    if !path.exists() {
        return Ok(());
    }
    let c = cstr(&path)?;
    // SAFETY: a valid path; a lazy unmount of our own bind mount.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not mounted (a half-made one); the file still goes.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(io::Error::new(
                e.kind(),
                format!("unmounting {}: {e}", path.display()),
            ));
        }
    }
    std::fs::remove_file(&path)
}
