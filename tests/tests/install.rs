//! The one-line install, end to end: inside a fresh network namespace (a new machine on
//! the network), `curl …/install.sh | WEFT_JOIN_TOKEN=T sh -s -- --no-systemd` downloads the
//! agent from the control plane, verifies it, configures and starts it; the node then
//! shows in REST as connected. A bad token fails the install with the agent's reason.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::nodes::agent_bin;
use common::{bpf_available, ControlPlane};
use control_api::api::install::InstallConfig;
use node_agent::netns::{ensure_bpffs, PinDir, Topology};
use serde_json::Value;

/// The API's address inside the "provider" namespace, reachable from the pods.
const API_IP: &str = "10.0.9.1";

/// A directory removed on drop; also stops an agent the script started in it.
struct Machine(weft_testkit::tmp::TempDir);

impl Drop for Machine {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.path().join("state/agent.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: plain syscalls on a pid our install started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let start = Instant::now();
                while unsafe { libc::kill(pid, 0) } == 0 && start.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // The directory itself goes with the TempDir.
    }
}

struct Env {
    cp: ControlPlane,
    owner: String,
    api: String,
    topo: Topology,
    _tls: Machine,
}

impl Env {
    async fn new() -> Env {
        let cp = ControlPlane::new().await;
        let owner = cp.acme_prod().await;

        // The provider's namespace holds the API; the pod namespace is the new machine.
        let topo = Topology::new(1).expect("topology");
        topo.node.ip(&["link", "set", "lo", "up"]).expect("lo up");
        topo.node
            .ip(&["addr", "add", &format!("{API_IP}/32"), "dev", "lo"])
            .expect("API address");
        let (rest, agents) = {
            let _in = topo.node.enter().expect("enter the provider namespace");
            (
                std::net::TcpListener::bind(format!("{API_IP}:0")).expect("bind REST"),
                std::net::TcpListener::bind(format!("{API_IP}:0")).expect("bind agents"),
            )
        };
        let tls = Machine(weft_testkit::tmp::dir("e2e-tls"));
        let (agent_url, ca) = cp.serve_agents_on(tls.0.path(), agents).await;
        let rest_addr: SocketAddr = rest.local_addr().expect("addr");
        let install = InstallConfig::new(
            Some(agent_bin()),
            None,
            Some(agent_url),
            0,
            true,
            Some(std::fs::read(&ca).expect("certificate")),
        );
        let app = control_api::app::app(cp.state.clone().with_install(install));
        rest.set_nonblocking(true).expect("non-blocking");
        let rest = tokio::net::TcpListener::from_std(rest).expect("listener");
        tokio::spawn(async move {
            axum::serve(
                rest,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        Env {
            cp,
            owner,
            api: format!("http://{rest_addr}"),
            topo,
            _tls: tls,
        }
    }

    async fn join_token(&self) -> String {
        self.cp.join_token(&self.owner).await
    }

    /// Runs the install one-liner on the new machine. `nsenter --net` changes only the
    /// network namespace (`ip netns exec` would remount /sys and hide bpffs).
    async fn install(&self, machine: &Machine, pins: &PinDir, token: &str) -> Output {
        let d = machine.0.path().display();
        let line = format!(
            "curl -fsSL {api}/install.sh | WEFT_JOIN_TOKEN={token} sh -s -- --no-systemd \
             --node-name installed-1 --address 10.0.1.1 --label rack=r1 --prefix {d}/usr \
             --config-dir {d}/etc --state-dir {d}/state --pin-path {pins} \
             --api-socket {d}/agent.sock --wait 30",
            api = self.api,
            pins = pins.path().display(),
        );
        let ns = self.topo.pods[0].ns.path();
        tokio::task::spawn_blocking(move || {
            Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .args(["sh", "-c", &line])
                .output()
                .expect("nsenter runs")
        })
        .await
        .expect("install task")
    }

    async fn node(&self, name: &str) -> (StatusCode, Value) {
        let r = self.cp.node(&self.owner, name).await;
        (r.status, r.body)
    }
}

fn mode(p: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).expect("meta").permissions())
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_one_liner_registers_a_node_from_a_fresh_namespace() {
    if !bpf_available("the_install_one_liner_registers_a_node_from_a_fresh_namespace") {
        return;
    }
    ensure_bpffs().expect("bpffs");
    let env = Env::new().await;
    let machine = Machine(weft_testkit::tmp::dir("e2e-machine"));
    let pins = PinDir::create("inst").expect("pin dir");
    let token = env.join_token().await;

    let out = env.install(&machine, &pins, &token).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "install failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("registered as node"), "{stdout}");

    let bin = machine.0.path().join("usr/bin/node-agent");
    assert_eq!(mode(&bin), 0o755);
    assert!(
        std::fs::read(&bin).expect("installed") == std::fs::read(agent_bin()).expect("built"),
        "the installed agent is the served one"
    );
    let env_file = machine.0.path().join("etc/agent.env");
    assert_eq!(mode(&env_file), 0o600);
    let config = std::fs::read_to_string(&env_file).expect("config");
    assert!(
        !config.contains(&token),
        "the used join token is not kept: {config}"
    );
    assert!(config.contains("WEFT_AGENT_CA="), "{config}");
    assert_eq!(mode(&machine.0.path().join("state/credential")), 0o600);

    let start = Instant::now();
    loop {
        let (status, node) = env.node("installed-1").await;
        if status == StatusCode::OK && node["status"]["connected"] == true {
            assert_eq!(node["labels"]["rack"], "r1", "{node}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node installed-1 connected in REST: {status} {node}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_with_a_bad_join_token_fails_with_the_reason() {
    if !bpf_available("an_install_with_a_bad_join_token_fails_with_the_reason") {
        return;
    }
    ensure_bpffs().expect("bpffs");
    let env = Env::new().await;
    let machine = Machine(weft_testkit::tmp::dir("e2e-machine"));
    let pins = PinDir::create("inst").expect("pin dir");

    let out = env
        .install(&machine, &pins, "weft_join_not-a-real-token")
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "install with a bad token succeeded");
    assert!(stderr.contains("stopped before registering"), "{stderr}");
    assert!(
        stderr.contains("join token"),
        "the agent's reason is shown: {stderr}"
    );
    assert!(!machine.0.path().join("state/credential").exists());
    let (status, _) = env.node("installed-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
