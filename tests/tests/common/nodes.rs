//! Several "nodes" on one machine: a control-plane namespace with a bridge, one network
//! namespace per node joined to it (one L2 segment: node addresses only; the agents route
//! to each other's pods themselves), the real `node-agent run` binary
//! inside each node namespace, and empty pod namespaces for `node-agent endpoint add`.
//! Everything is created by the test, uniquely named, and removed on drop.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use node_agent::netns::{ensure_bpffs, NetNs, PinDir};
use node_agent::tools;
use serde_json::Value;

/// How long a change may take to show.
pub const WITHIN: Duration = Duration::from_secs(10);

/// A binary of this workspace's build, beside the test executable's `deps/` (nextest
/// builds every binary of the workspace).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo xtask test` (it builds every binary)",
        bin.display()
    );
    bin
}

/// The `node-agent` binary of this build.
pub fn agent_bin() -> PathBuf {
    workspace_bin("node-agent")
}

pub use weft_testkit::tmp::TempDir;

/// The underlay: a namespace with a bridge (`192.168.100.254/24`) the nodes hang off.
pub struct Underlay {
    pub ns: NetNs,
}

pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 254);

impl Underlay {
    pub fn new() -> Underlay {
        node_agent::netns::sweep_stale();
        let ns = NetNs::create("u").expect("underlay namespace");
        ns.ip(&["link", "add", "br0", "type", "bridge"])
            .expect("bridge");
        ns.ip(&["addr", "add", &format!("{UNDERLAY_GW}/24"), "dev", "br0"])
            .expect("bridge address");
        ns.ip(&["link", "set", "br0", "up"]).expect("bridge up");
        Underlay { ns }
    }

    /// A TCP listener on the underlay's address (for the control plane's agent service).
    pub fn listen(&self) -> std::net::TcpListener {
        self.ns
            .spawn(|| std::net::TcpListener::bind((UNDERLAY_GW, 0)))
            .join()
            .expect("bind thread")
            .expect("enter underlay")
            .expect("bind")
    }
}

/// A node: its namespace, pins, state directory, agent process and pod namespaces.
/// Field order is drop order: the agent stops first, then pods, pins, the node.
pub struct Node {
    pub agent: Option<Child>,
    pub pods: Vec<NetNs>,
    pub servers: Vec<tools::Server>,
    pub pins: PinDir,
    pub ns: NetNs,
    pub state: TempDir,
    pub name: String,
    /// Underlay address.
    pub address: Ipv4Addr,
    pub socket: PathBuf,
    /// Extra `node-agent run` arguments.
    pub run_args: Vec<String>,
    /// Extra environment of `node-agent run`.
    pub run_env: Vec<(String, String)>,
    /// Prefix of the namespaces of the agent's test workloads (`--workload-netns-prefix`).
    pub workload_prefix: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent();
        node_agent::workload::remove_namespaces_with_prefix(&self.workload_prefix);
    }
}

pub struct Run<'a> {
    pub url: &'a str,
    pub ca: &'a Path,
}

impl Node {
    /// Node `index` (1-based): underlay address `192.168.100.<index>`, pod CIDR
    /// `10.0.<index>.0/24`. The underlay carries node addresses only: the agents route to
    /// each other's pods themselves (tunnel or native, as the cluster says).
    pub fn new(underlay: &Underlay, index: u8) -> Node {
        ensure_bpffs().expect("bpffs");
        let ns = NetNs::create("n").expect("node namespace");
        let address = Ipv4Addr::new(192, 168, 100, index);
        let port = format!("ul{index}");
        underlay
            .ns
            .ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "ul0",
                "netns",
                ns.name(),
            ])
            .expect("underlay link");
        underlay
            .ns
            .ip(&["link", "set", &port, "master", "br0", "up"])
            .expect("bridge port");
        ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "ul0"])
            .expect("node address");
        ns.ip(&["link", "set", "ul0", "up"]).expect("ul0 up");
        let state = weft_testkit::tmp::dir("e2e-node");
        let socket = state.path().join("agent.sock");
        Node {
            agent: None,
            pods: Vec::new(),
            servers: Vec::new(),
            pins: PinDir::create("ee").expect("pin dir"),
            ns,
            state,
            name: format!("node-{index}"),
            address,
            socket,
            run_args: Vec::new(),
            run_env: Vec::new(),
            // `wf<tag><pid>x<n>-`: swept by `sweep_stale` should the test die.
            workload_prefix: format!("{}-", node_agent::netns::unique("w")),
        }
    }

    /// Starts the real `node-agent run` inside the node namespace; waits for its API socket.
    pub fn start_agent(&mut self, run: &Run, join_token: Option<&str>) {
        assert!(self.agent.is_none(), "agent already running");
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("agent.log"))
            .expect("agent log");
        let mut cmd = self.ns.command(agent_bin().to_str().expect("path"));
        cmd.arg("--pin-path")
            .arg(self.pins.path())
            .arg("run")
            .args(["--control-plane", run.url])
            .arg("--ca-cert")
            .arg(run.ca)
            .arg("--state-dir")
            .arg(self.state.path())
            .args(["--node-name", &self.name])
            .args(["--address", &self.address.to_string()])
            .args([
                "--pod-cidr",
                &format!("10.0.{}.0/24", self.address.octets()[3]),
            ])
            .args(["--workload-netns-prefix", &self.workload_prefix])
            .arg("--api-socket")
            .arg(&self.socket)
            .args(["--health-interval-secs", "1"])
            .args(&self.run_args)
            .env("RUST_LOG", "node_agent=info")
            .envs(self.run_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        // From a 0600 file, as an operator would keep it off the command line.
        if let Some(t) = join_token {
            let file = self.state.path().join("join-token");
            std::fs::write(&file, t).expect("join token file");
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("join token file mode");
            cmd.arg("--join-token-file").arg(&file);
        }
        self.agent = Some(cmd.spawn().expect("start node-agent"));
        let start = Instant::now();
        while !self.socket.exists() {
            if let Some(Ok(Some(status))) = self.agent.as_mut().map(Child::try_wait) {
                panic!("{}: agent exited ({status}): {}", self.name, self.log());
            }
            assert!(
                start.elapsed() < WITHIN,
                "{}: API socket: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("agent.log")).unwrap_or_default()
    }

    /// An empty pod namespace (what a container runtime would make).
    pub fn pod(&mut self) -> usize {
        self.pods.push(NetNs::create("p").expect("pod namespace"));
        self.pods.len() - 1
    }

    /// `node-agent endpoint <args>` against this node's agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(agent_bin())
            .arg("endpoint")
            .arg("--api-socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run node-agent endpoint")
    }

    /// `endpoint add`, which must succeed; `ips`: one address, or `v4,v6` (dual stack).
    pub fn add(&self, name: &str, pod: usize, ips: &str, labels: &str) -> String {
        let mut args = vec!["add", "--name", name, "--netns", self.pods[pod].name()];
        for ip in ips.split(',') {
            args.extend(["--ip", ip]);
        }
        args.extend(["--labels", labels]);
        let out = self.cli(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "endpoint add {name}: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        stdout
    }

    /// `endpoint list -o json`.
    pub fn list(&self) -> Vec<Value> {
        let out = self.cli(&["list", "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("list JSON")
    }

    /// `node-agent status` (flow export counters).
    pub fn status(&self) -> Value {
        let out = Command::new(agent_bin())
            .arg("status")
            .arg("--api-socket")
            .arg(&self.socket)
            .output()
            .expect("run node-agent status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Whether an interface exists in the node namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        self.ns.ip(&["link", "show", ifname]).is_ok()
    }

    /// A TCP server answering `name` on port 8080 in a pod.
    pub fn serve(&mut self, pod: usize, name: &str) {
        let srv = tools::Server::tcp(&self.pods[pod], 8080, name).expect("server");
        self.servers.push(srv);
    }
}

/// TCP from a pod (its namespace path) to `target`: the server's answer, or the error.
pub fn tcp(from: &Path, target: impl Into<SocketAddr>) -> std::io::Result<String> {
    tcp_within(from, target, Duration::from_millis(500))
}

/// [`tcp`] with its own timeout for the connect and the answer.
pub fn tcp_within(
    from: &Path,
    target: impl Into<SocketAddr>,
    timeout: Duration,
) -> std::io::Result<String> {
    let (from, target) = (from.to_path_buf(), target.into());
    std::thread::spawn(move || {
        let _in = node_agent::netns::enter_netns(&from)?;
        tools::tcp_request(target, timeout).map(|(a, _)| a)
    })
    .join()
    .expect("client thread")
}

/// Waits (up to [`WITHIN`]) until TCP from `from` to `target` is allowed (`true`) or denied.
pub async fn until_tcp(from: &Path, target: SocketAddrV4, allowed: bool) -> bool {
    let start = Instant::now();
    loop {
        if tokio::task::block_in_place(|| tcp(from, target)).is_ok() == allowed {
            return true;
        }
        if start.elapsed() > WITHIN {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// control-api as a real process (on the test's PostgreSQL, in this namespace), its agent
/// service reached from the nodes through a forwarder on the underlay; killed with SIGKILL
/// on drop. (REST can go through the test's in-process app: same database, and the process
/// LISTENs for its changes.)
pub struct ApiProcess {
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
    agent_addr: std::net::SocketAddr,
}

impl ApiProcess {
    /// Picks free ports, makes the certificate in `dir` and starts the forwarder; returns
    /// the process (not started), the agent URL on the underlay and the certificate.
    pub fn new(underlay: &Underlay, db_url: &str, dir: &Path) -> (ApiProcess, String, PathBuf) {
        let agent_addr =
            std::net::SocketAddr::from(([127, 0, 0, 1], weft_testkit::ports::free_port()));
        let on_underlay = underlay.listen().local_addr().expect("free port");
        let (cert, key) = super::agent_cert(dir, on_underlay.ip());
        let ns = underlay.ns.path();
        // Lives as long as the test process; each connection ends with either side.
        std::thread::spawn(move || tools::forward(&ns, on_underlay, agent_addr));
        let args = vec![
            "--database-url".into(),
            db_url.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--agent-listen".into(),
            agent_addr.to_string(),
            "--agent-tls-cert".into(),
            cert.display().to_string(),
            "--agent-tls-key".into(),
            key.display().to_string(),
        ];
        let api = ApiProcess {
            child: None,
            args,
            log: dir.join("control-api.log"),
            agent_addr,
        };
        (api, format!("https://{on_underlay}"), cert)
    }

    /// Starts it and waits until the agent service accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "control-api already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("control-api log");
        let child = Command::new(workspace_bin("control-api"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start control-api");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect_timeout(&self.agent_addr, Duration::from_millis(200))
            .is_err()
        {
            assert!(
                start.elapsed() < WITHIN,
                "control-api agent service up: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
