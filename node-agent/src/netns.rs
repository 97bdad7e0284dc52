//! Network namespaces, veth "pods", cgroups and bpffs directories for tests, the benchmark and
//! demos. Everything is uniquely named, created by us, and removed on `Drop` (also when a test
//! panics). Nothing here touches the machine's own interfaces, root cgroup or firewall.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `wf<tag><pid>x<n>`. The tag is letters only:
/// a digit in it would read as part of the pid, and another run's sweep would take the name
/// for a dead process's and remove it while in use.
pub fn unique(tag: &str) -> String {
    debug_assert!(
        tag.chars().all(|c| c.is_ascii_alphabetic()),
        "unique() tags are letters only: {tag:?}"
    );
    format!(
        "wf{tag}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The pid embedded in a name made by [`unique`], if that process is gone.
fn dead_owner(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("wf") else {
        return false;
    };
    let digits: String = rest
        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    match digits.parse::<u32>() {
        Ok(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}

/// Removes namespaces, pin directories and cgroups left by runs of ours that died without
/// running their `Drop` guards (e.g. aborted). Only names made by [`unique`] whose process is
/// gone are touched.
pub fn sweep_stale() {
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead_owner(&name) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/sys/fs/bpf") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix("weft-").is_some_and(dead_owner) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(root) = cgroup2_root() {
        if let Ok(dir) = std::fs::read_dir(&root) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if dead_owner(&name) {
                    let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}

fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip` with the given arguments.
pub fn ip(args: &[&str]) -> io::Result<String> {
    run(Command::new("ip").args(args))
}

/// Runs `ip` inside the network namespace at `path` (`nsenter --net`: works for a path as
/// well as `/run/netns/<name>`, which `ip -n` does not).
pub fn ip_in(path: &Path, args: &[&str]) -> io::Result<String> {
    run(Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .arg("--")
        .arg("ip")
        .args(args))
}

/// A network namespace we created (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn create(tag: &str) -> io::Result<Self> {
        let name = unique(tag);
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs a command inside the namespace with `nsenter` (keeps /sys/fs/bpf and cgroup
    /// mounts visible, unlike `ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> io::Result<String> {
        run(Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .arg("--")
            .args(args))
    }

    /// A `Command` that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> io::Result<NsGuard> {
        enter_netns(&self.path())
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<io::Result<T>> {
        let path = self.path();
        std::thread::spawn(move || {
            let _g = enter_netns(&path)?;
            Ok(f())
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!(ns = %self.name, error = %e, "could not delete namespace");
        }
    }
}

/// Restores the thread's original network namespace on drop.
pub struct NsGuard {
    orig: File,
}

/// Runs `f` on a short-lived thread inside the namespace at `path` and returns what it
/// made (a socket keeps the namespace it was created in); the calling thread and its
/// runtime stay where they are.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let _in = enter_netns(&path)?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &Path) -> io::Result<NsGuard> {
    let orig = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(path)?;
    // SAFETY: setns on valid namespace fds; affects only this thread.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NsGuard { orig })
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        // SAFETY: as above; the original namespace fd is still open.
        if unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // A thread stuck in a test namespace must not go on running other work.
            tracing::error!("could not restore the network namespace");
            std::process::abort();
        }
    }
}

/// The cgroup v2 mount point (hybrid hosts mount it at /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .min_by_key(|p| p.as_os_str().len())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 mount"))
}

/// A child cgroup v2 we created; its processes are killed and it is removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn create(tag: &str) -> io::Result<Self> {
        let path = cgroup2_root()?.join(unique(tag));
        std::fs::create_dir(&path)?;
        Ok(Cgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves a process (all its threads) into this cgroup.
    pub fn add_pid(&self, pid: u32) -> io::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tracing::warn!(cgroup = %self.path.display(), "could not remove cgroup");
    }
}

/// Mounts bpffs at /sys/fs/bpf when it is missing.
pub fn ensure_bpffs() -> io::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"])).map(|_| ())
}

/// A per-run bpffs directory `/sys/fs/bpf/weft-<unique>`, removed (with all pins) on drop.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn create(tag: &str) -> io::Result<Self> {
        ensure_bpffs()?;
        sweep_stale();
        let path = PathBuf::from("/sys/fs/bpf").join(format!("weft-{}", unique(tag)));
        std::fs::create_dir_all(&path)?;
        Ok(PinDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove pins");
        }
    }
}

/// A pod: a namespace with `eth0` (a /32) whose peer `lxcN` sits in the node namespace.
#[derive(Debug)]
pub struct Pod {
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a dual-stack topology.
    pub ip6: Option<Ipv6Addr>,
    pub host_if: String,
}

/// A "node" namespace with routed pods (Cilium-style: /32 per pod, static neighbours, the
/// node forwards between the pods' host-side veths).
#[derive(Debug)]
pub struct Topology {
    // Pods drop before the node (field order).
    pub pods: Vec<Pod>,
    pub node: NetNs,
}

fn link_mac(ns: &NetNs, ifname: &str) -> io::Result<String> {
    let out = ns.ip(&["-br", "link", "show", ifname])?;
    out.split_whitespace()
        .nth(2)
        .map(str::to_string)
        .ok_or_else(|| io::Error::other(format!("no MAC for {ifname}")))
}

/// A permanent neighbour entry (`ip neigh add ADDR lladdr MAC dev DEV nud permanent`), of
/// either family (`ip` tells them apart by the address).
fn permanent_neighbour(ns: &NetNs, addr: &str, mac: &str, dev: &str) -> io::Result<()> {
    ns.ip(&[
        "neigh",
        "add",
        addr,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
    .map(|_| ())
}

const GATEWAY: &str = "169.254.1.1";
/// The pods' IPv6 next hop: link-local, so no address has to be set aside for it.
const GATEWAY6: &str = "fe80::1";

impl Topology {
    /// Creates a node namespace and `n` pods with addresses `10.0.1.1..=10.0.1.n`.
    pub fn new(n: usize) -> io::Result<Self> {
        sweep_stale();
        let node = NetNs::create("n")?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        let mut topo = Topology {
            pods: Vec::new(),
            node,
        };
        for i in 1..=n {
            topo.add_pod(Ipv4Addr::new(10, 0, 1, i as u8))?;
        }
        Ok(topo)
    }

    /// Like [`Topology::new`], with each pod also at `fd00:1::n` (dual stack).
    pub fn dual_stack(n: usize) -> io::Result<Self> {
        let mut topo = Topology::new(0)?;
        topo.node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for i in 1..=n {
            let idx = topo.add_pod(Ipv4Addr::new(10, 0, 1, i as u8))?;
            topo.add_ip6(idx, Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, i as u16))?;
        }
        Ok(topo)
    }

    /// Gives pod `idx` an IPv6 address too, routed like its IPv4 one (a /128 on the node).
    pub fn add_ip6(&mut self, idx: usize, addr: Ipv6Addr) -> io::Result<()> {
        let pod = &self.pods[idx];
        let (host_mac, pod_mac) = (
            link_mac(&self.node, &pod.host_if)?,
            link_mac(&pod.ns, "eth0")?,
        );
        let a = addr.to_string();
        pod.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{a}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        // A link-local gateway is on-link: no route to it needed.
        pod.ns.ip(&[
            "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0",
        ])?;
        permanent_neighbour(&pod.ns, GATEWAY6, &host_mac, "eth0")?;
        self.node.ip(&[
            "-6",
            "route",
            "add",
            &format!("{a}/128"),
            "dev",
            &pod.host_if,
        ])?;
        permanent_neighbour(&self.node, &a, &pod_mac, &pod.host_if)?;
        self.pods[idx].ip6 = Some(addr);
        Ok(())
    }

    /// Adds a pod with the given address; returns its index.
    pub fn add_pod(&mut self, addr: Ipv4Addr) -> io::Result<usize> {
        let idx = self.pods.len();
        let ns = NetNs::create("p")?;
        let host_if = format!("lxc{idx}");
        self.node.ip(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.node.ip(&["link", "set", &host_if, "up"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
        ns.ip(&["route", "add", GATEWAY, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"])?;
        let host_mac = link_mac(&self.node, &host_if)?;
        let pod_mac = link_mac(&ns, "eth0")?;
        permanent_neighbour(&ns, GATEWAY, &host_mac, "eth0")?;
        self.node
            .ip(&["route", "add", &format!("{addr}/32"), "dev", &host_if])?;
        permanent_neighbour(&self.node, &addr.to_string(), &pod_mac, &host_if)?;
        self.pods.push(Pod {
            ns,
            ip: addr,
            ip6: None,
            host_if,
        });
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_names_of_dead_processes_are_stale() {
        let me = super::unique("t");
        assert!(!super::dead_owner(&me), "{me} belongs to a live process");
        assert!(super::dead_owner("wfp4000000000x1"));
        assert!(!super::dead_owner("cni-1234"));
        assert!(!super::dead_owner("wfnotapid"));
    }
}
