//! The demo's nodes: two network namespaces (`weft-demo-n1`, `weft-demo-n2`) hanging off an
//! underlay bridge (`weft-demo-ul`, 192.168.100.0/24: node addresses only; the agents
//! tunnel pod traffic to each other, the cluster's default routing), each running `node-agent run`, with labelled workloads made by
//! `node-agent endpoint add` and a small HTTP server in the web pods. Nothing is created in
//! the machine's own namespace: the agents reach the agent service on its loopback through
//! a forwarder listening inside the underlay namespace. Each agent gets its pod CIDR
//! (`10.0.<i>.0/24`: the control plane allocates `weft connectivity test` workloads from
//! it), a socket-LB cgroup of its own (`<cgroup2>/weft-demo-n<i>`, never the root) and the
//! demo's prefix for the namespaces of test workloads, so `cleanup` finds them all. Dual
//! stack: the nodes also have `fd00:100::<i>` and the pod CIDR `fd00:10:<i>::/64`, and
//! every workload an IPv6 address in it.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{http, sh};

const PREFIX: &str = "weft-demo-";
const UNDERLAY: &str = "weft-demo-ul";
/// The agent service as the nodes see it (the forwarder's address).
pub const AGENT_SERVICE_IP: &str = "192.168.100.254";

/// A workload: node, name, IPv4 and IPv6 address, labels, whether it serves HTTP on 8080.
const WORKLOADS: [(u8, &str, &str, &str, &str, bool); 4] = [
    (
        1,
        "frontend",
        "10.0.1.10",
        "fd00:10:1::10",
        "app=frontend",
        false,
    ),
    (
        1,
        "web-1",
        "10.0.1.11",
        "fd00:10:1::11",
        "app=web,tier=front",
        true,
    ),
    (
        2,
        "web-2",
        "10.0.2.10",
        "fd00:10:2::10",
        "app=web,tier=front",
        true,
    ),
    (2, "db", "10.0.2.20", "fd00:10:2::20", "app=db", false),
];

/// What the demo check fetches over IPv6 from the frontend: web-2, on the other node.
pub const IPV6_CHECK: (&str, &str) = ("frontend", "http://[fd00:10:2::10]:8080/");

/// The cgroup v2 mount point (hybrid hosts mount it at /sys/fs/cgroup/unified).
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .min_by_key(|p| p.as_os_str().len())
}

/// Node `node`'s socket-LB cgroup.
fn node_cgroup(node: &str) -> Result<PathBuf> {
    let root = cgroup2_root().context("no cgroup v2 mount (the socket LB needs one)")?;
    Ok(root.join(ns(node)))
}

fn ip(args: &[&str]) -> Result<()> {
    sh::output(Command::new("ip").args(args)).map(|_| ())
}

fn ns(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(ns(name))
}

/// A detached process (own session): it outlives `cargo xtask demo --detach`.
fn spawn_detached(cmd: &mut Command, log: &Path) -> Result<u32> {
    let log = fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(cmd
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?
        .id())
}

fn in_ns(netns: &str, program: &Path) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns_path(netns).display()))
        .arg("--")
        .arg(program);
    c
}

fn topology() -> Result<()> {
    ip(&["netns", "add", UNDERLAY])?;
    let ul = |args: &[&str]| {
        let mut full = vec!["-n", UNDERLAY];
        full.extend_from_slice(args);
        ip(&full)
    };
    ul(&["link", "set", "lo", "up"])?;
    ul(&["link", "add", "br0", "type", "bridge"])?;
    ul(&[
        "addr",
        "add",
        &format!("{AGENT_SERVICE_IP}/24"),
        "dev",
        "br0",
    ])?;
    ul(&["link", "set", "br0", "up"])?;
    for i in 1..=2u8 {
        let node = ns(&format!("n{i}"));
        ip(&["netns", "add", &node])?;
        let n = |args: &[&str]| {
            let mut full = vec!["-n", node.as_str()];
            full.extend_from_slice(args);
            ip(&full)
        };
        n(&["link", "set", "lo", "up"])?;
        let port = format!("ul{i}");
        ul(&[
            "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", &node,
        ])?;
        ul(&["link", "set", &port, "master", "br0", "up"])?;
        n(&["addr", "add", &format!("192.168.100.{i}/24"), "dev", "ul0"])?;
        n(&["link", "set", "ul0", "up"])?;
        n(&[
            "-6",
            "addr",
            "add",
            &format!("fd00:100::{i}/64"),
            "dev",
            "ul0",
            "nodad",
        ])?;
    }
    for (_, name, ..) in WORKLOADS {
        ip(&["netns", "add", &ns(name)])?;
    }
    Ok(())
}

/// Starts everything; returns `(name, pid)` of each process for the pids file.
pub fn start(
    dir: &Path,
    agent_bin: &Path,
    agent_port: u16,
    ca: &Path,
    api_url: &str,
    token: &str,
) -> Result<Vec<(String, u32)>> {
    if !sh::is_root() {
        bail!("the demo's nodes need root (network namespaces, eBPF)");
    }
    cleanup(dir);
    let mut pids = Vec::new();
    topology()?;
    let agents = dir.join("agents");
    fs::create_dir_all(&agents)?;
    // Agents in node namespaces reach the agent service on the loopback through this.
    let fwd = spawn_detached(
        Command::new(agent_bin)
            .arg("forward")
            .arg("--netns")
            .arg(netns_path("ul"))
            .args(["--listen", &format!("{AGENT_SERVICE_IP}:{agent_port}")])
            .args(["--to", &format!("127.0.0.1:{agent_port}")]),
        &agents.join("forward.log"),
    )?;
    pids.push(("forward".to_string(), fwd));
    let join = http::json(
        api_url,
        "POST",
        "/v1/tenants/acme/clusters/prod-eu/join-tokens",
        token,
        &serde_json::json!({"name": "demo-nodes", "max_uses": 2}),
        201,
    )?;
    let join = join["token"].as_str().context("join token")?.to_string();
    for i in 1..=2u8 {
        let node = format!("n{i}");
        let state = agents.join(&node);
        fs::create_dir_all(&state)?;
        let cgroup = node_cgroup(&node)?;
        fs::create_dir_all(&cgroup)
            .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        let pid = spawn_detached(
            in_ns(&node, agent_bin)
                .arg("--pin-path")
                .arg(format!("/sys/fs/bpf/{PREFIX}{node}"))
                .arg("run")
                .args([
                    "--control-plane",
                    &format!("https://{AGENT_SERVICE_IP}:{agent_port}"),
                ])
                .arg("--ca-cert")
                .arg(ca)
                .arg("--state-dir")
                .arg(&state)
                .args(["--node-name", &format!("demo-{node}")])
                .args(["--address", &format!("192.168.100.{i}")])
                .args(["--address", &format!("fd00:100::{i}")])
                .args(["--pod-cidr", &format!("10.0.{i}.0/24")])
                .args(["--pod-cidr", &format!("fd00:10:{i}::/64")])
                .args(["--workload-netns-prefix", PREFIX])
                .arg("--cgroup")
                .arg(&cgroup)
                .arg("--api-socket")
                .arg(state.join("agent.sock"))
                // Secrets go through the environment: `ps` shows every process's arguments.
                .env("WEFT_JOIN_TOKEN", &join),
            &agents.join(format!("{node}.log")),
        )?;
        pids.push((format!("node-agent-{node}"), pid));
    }
    for (i, name, addr, addr6, labels, serves) in WORKLOADS {
        let socket = agents.join(format!("n{i}")).join("agent.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("node-agent on n{i} did not start; see .weft/agents/n{i}.log");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        sh::run(
            Command::new(agent_bin)
                .args(["endpoint", "--api-socket"])
                .arg(&socket)
                .args(["add", "--name", name, "--netns", &ns(name)])
                .args([
                    "--ip",
                    &format!("{addr}/32"),
                    "--ip",
                    &format!("{addr6}/128"),
                ])
                .args(["--labels", labels]),
        )?;
        if serves {
            let pid = spawn_detached(
                in_ns(name, Path::new("python3"))
                    // `::` takes IPv4 too (a dual-stack socket).
                    .args(["-m", "http.server", "8080", "--bind", "::"])
                    .current_dir(&agents),
                &agents.join(format!("{name}-http.log")),
            )?;
            pids.push((format!("http-{name}"), pid));
        }
    }
    Ok(pids)
}

/// What to try, printed by `demo`.
pub fn hints(dir: &Path) -> String {
    let n1 = dir.join("agents/n1/agent.sock");
    format!(
        "  Nodes:    demo-n1, demo-n2 (namespaces weft-demo-n1/-n2); workloads frontend, web-1 on n1,\n            web-2, db on n2 (namespaces weft-demo-<name>); policy web-from-frontend applies.\n  Try:      nsenter --net=/run/netns/weft-demo-frontend curl -s http://10.0.2.10:8080/ >/dev/null && echo allowed\n            nsenter --net=/run/netns/weft-demo-frontend curl -s -g 'http://[fd00:10:2::10]:8080/' >/dev/null && echo allowed over IPv6\n            nsenter --net=/run/netns/weft-demo-db curl -s -m 2 http://10.0.1.11:8080/ || echo denied\n            node-agent endpoint --api-socket {} list\n",
        n1.display()
    )
}

/// Removes the namespaces (and with them every veth), pins, cgroups and agent state of the
/// demo, whether or not its processes are still alive (they are stopped first by the
/// caller; a process left in a demo cgroup, e.g. a probe, is killed).
pub fn cleanup(dir: &Path) {
    if let Some(root) = cgroup2_root() {
        if let Ok(entries) = fs::read_dir(&root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(PREFIX) && e.path().is_dir() {
                    let _ = fs::write(e.path().join("cgroup.kill"), "1");
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while fs::remove_dir(e.path()).is_err() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(PREFIX) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let _ = fs::remove_dir_all(dir.join("agents"));
}
