//! Test workloads and probes of `weft connectivity test`, on a real datapath: the agent's
//! workload code runs inside a node namespace the test made (on a thread that entered it,
//! with its own runtime, as `node-agent run` runs inside a node namespace), creates real
//! namespaces with echo servers, and runs real `node-agent probe` children whose packets
//! cross real veths, the eBPF programs and the socket-LB cgroup hook.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use node_agent::agent::wire::Names;
use node_agent::datapath::{
    Backend, BackendState, Datapath, DatapathConfig, Endpoint, LbAlgorithm, Service,
};
use node_agent::endpoint::manager::{lock, Manager, SharedDatapath};
use node_agent::netns::{unique, Cgroup, NetNs, PinDir};
use node_agent::workload::probe::{ProbeResult, Spawner};
use node_agent::workload::report::SharedOutbox;
use node_agent::workload::{self, Desired, Workloads};
use weft_model::desired::DesiredEndpoint;
use weft_model::labels::Labels;
use weft_model::workload::{
    DesiredProbe, DesiredWorkload, HttpProbe, ProbeOutcome, ResolveProbe, WorkloadKind,
};

const NODE: &str = "n1";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 254);
const ECHO_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 253);
const WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// What one test owns; removed on drop (namespaces by prefix, then pins, cgroup, node).
struct Fixture {
    prefix: String,
    state: weft_testkit::tmp::TempDir,
    pins: PinDir,
    cgroup: Cgroup,
    node: NetNs,
}

impl Fixture {
    fn new() -> Fixture {
        let node = NetNs::create("n").expect("node namespace");
        // The node's own address (a real node has its uplink's): the source of its probes.
        node.ip(&["addr", "add", "192.168.100.1/32", "dev", "lo"])
            .expect("node address");
        let state = weft_testkit::tmp::dir("wlstate");
        Fixture {
            // `wf<tag><pid>x<n>`: swept by `sweep_stale` should this run die.
            prefix: format!("{}-", unique("w")),
            state,
            pins: PinDir::create("wl").expect("pins"),
            cgroup: Cgroup::create("wlcg").expect("cgroup"),
            node,
        }
    }

    fn namespaces(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `f` on a thread inside the node namespace with a current-thread runtime (its
    /// blocking threads and children start in the node namespace too).
    fn on_node<F, Fut>(&self, f: F)
    where
        F: FnOnce(Ctx) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let ctx = Ctx {
            prefix: self.prefix.clone(),
            state: self.state.path().to_path_buf(),
            pins: self.pins.path().to_path_buf(),
            cgroup: self.cgroup.path().to_path_buf(),
        };
        let res = self.node.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(f(ctx));
        });
        match res.join() {
            Ok(r) => r.expect("enter the node namespace"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        workload::remove_namespaces_with_prefix(&self.prefix);
    }
}

#[derive(Clone)]
struct Ctx {
    prefix: String,
    state: PathBuf,
    pins: PathBuf,
    cgroup: PathBuf,
}

/// The agent's parts as `node-agent run` assembles them.
struct Agent {
    dp: SharedDatapath,
    /// What the applied desired state says (the endpoints' identities).
    names: tokio::sync::watch::Sender<Names>,
    endpoints: Arc<Manager>,
    workloads: Workloads,
    outbox: SharedOutbox,
}

impl Ctx {
    async fn agent(&self, cgroup: bool) -> Agent {
        let dp = Datapath::load(DatapathConfig {
            pin_path: self.pins.clone(),
            ..DatapathConfig::default()
        })
        .expect("load datapath");
        dp.attach_cgroup(&self.cgroup).expect("attach cgroup");
        let dp: SharedDatapath = Arc::new(Mutex::new(dp));
        let (names, names_rx) = tokio::sync::watch::channel(Names::default());
        let (endpoints, _changed) =
            Manager::new(&self.state, dp.clone(), names_rx).expect("endpoint manager");
        endpoints.restore().await;
        let outbox = SharedOutbox::load(&self.state);
        let workloads = Workloads::new(
            workload::Config {
                netns_prefix: self.prefix.clone(),
                node_name: NODE.into(),
                state_dir: self.state.clone(),
                probes: Spawner {
                    exe: PathBuf::from(env!("CARGO_BIN_EXE_node-agent")),
                    cgroup: cgroup.then(|| self.cgroup.clone()),
                },
                concurrent_probes: 4,
            },
            endpoints.clone(),
            outbox.clone(),
        )
        .expect("workloads");
        Agent {
            dp,
            names,
            endpoints,
            workloads,
            outbox,
        }
    }
}

impl Agent {
    /// What the control plane would program once it knows the pod: its endpoint entry.
    fn program_endpoint(&self, id: u32, ip: Ipv4Addr, identity: u32, enforce_ingress: bool) {
        lock(&self.dp)
            .apply_endpoint(&Endpoint {
                id,
                ip,
                ip6: None,
                identity,
                ifindex: 0,
                enforce_ingress,
                enforce_egress: false,
            })
            .expect("apply endpoint");
        self.names.send_modify(|n| {
            n.endpoints.retain(|e| e.ips != [IpAddr::V4(ip)]);
            n.endpoints.push(DesiredEndpoint {
                id: format!("ep-{id}"),
                ips: vec![IpAddr::V4(ip)],
                identity,
                enforce_ingress,
                enforce_egress: false,
            });
        });
    }

    async fn apply(&mut self, d: &Desired) {
        let errors = self.workloads.apply(d).await;
        assert!(errors.is_empty(), "reconcile failed: {errors:?}");
    }

    async fn results(&self, ids: &[&str]) -> BTreeMap<String, ProbeResult> {
        results(&self.outbox, ids).await
    }
}

/// Waits for the results of `ids` in `outbox`.
async fn results(outbox: &SharedOutbox, ids: &[&str]) -> BTreeMap<String, ProbeResult> {
    let start = Instant::now();
    loop {
        let got: BTreeMap<String, ProbeResult> = outbox
            .pending()
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        if ids.iter().all(|id| got.contains_key(*id)) {
            return got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "results of {ids:?}: only {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a pin under `dir` names `ifname` (the datapath pins its links per interface).
fn pins_mention(dir: &Path, ifname: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name().to_string_lossy().contains(ifname)
                || (e.file_type().is_ok_and(|t| t.is_dir()) && pins_mention(&e.path(), ifname))
        })
}

fn wl(name: &str, kind: WorkloadKind, ip: Ipv4Addr, labels: &[(&str, &str)]) -> DesiredWorkload {
    DesiredWorkload {
        name: name.into(),
        kind,
        ip,
        ip6: None,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Labels>(),
        echo_ports: vec![8080, 9090],
    }
}

fn probe(id: &str, from: Option<&str>, ip: Ipv4Addr, port: u16, timeout_ms: u32) -> DesiredProbe {
    DesiredProbe {
        id: id.into(),
        from_workload: from.map(str::to_string),
        target: SocketAddrV4::new(ip, port).into(),
        timeout_ms,
        http: None,
        resolve: None,
    }
}

fn outcome(results: &BTreeMap<String, ProbeResult>, id: &str) -> ProbeOutcome {
    results[id].outcome
}

fn link_exists_in(ns: &Path, ifname: &str) -> bool {
    node_agent::netns::ip_in(ns, &["link", "show", ifname]).is_ok()
}

#[test]
fn world_echo_answers_the_node_closed_ports_are_refused_blackholes_time_out() {
    if !bpf_available("world_echo_answers_the_node_closed_ports_are_refused_blackholes_time_out") {
        return;
    }
    let fx = Fixture::new();
    // A blackhole on the node: packets to 203.0.113.9 leave through a veth whose peer drops
    // them (addressed to a MAC it does not have); nothing ever answers.
    let n = |args: &[&str]| fx.node.ip(args).expect("blackhole");
    n(&["link", "add", "bh0", "type", "veth", "peer", "name", "bh1"]);
    n(&["link", "set", "bh0", "up"]);
    n(&["link", "set", "bh1", "up"]);
    n(&["route", "add", "203.0.113.0/24", "dev", "bh0"]);
    n(&[
        "neigh",
        "add",
        "203.0.113.9",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "bh0",
        "nud",
        "permanent",
    ]);
    fx.on_node(|ctx| async move {
        let mut a = ctx.agent(true).await;
        let world = wl("ct-world", WorkloadKind::World, WORLD_IP, &[]);
        let blackhole = Ipv4Addr::new(203, 0, 113, 9);
        let d = Desired {
            workloads: vec![world],
            probes: vec![
                probe("p-echo", None, WORLD_IP, 9090, 2000),
                probe("p-closed", None, WORLD_IP, 81, 2000),
                probe("p-blackhole", None, blackhole, 8080, 300),
                probe("p-nowhere", Some("not-here"), WORLD_IP, 8080, 2000),
                // HTTP to the same echo server; a lookup at the world's own resolver.
                DesiredProbe {
                    http: Some(HttpProbe {
                        method: "GET".into(),
                        path: "/public".into(),
                    }),
                    ..probe("p-http", None, WORLD_IP, 8080, 2000)
                },
                DesiredProbe {
                    resolve: Some(ResolveProbe {
                        name: "echo.allowed.test".into(),
                        server: WORLD_IP.into(),
                    }),
                    ..probe("p-resolve", None, WORLD_IP, 8080, 2000)
                },
            ],
        };
        a.apply(&d).await;
        assert!(a.workloads.serving("ct-world"));
        let r = a
            .results(&[
                "p-echo",
                "p-closed",
                "p-blackhole",
                "p-nowhere",
                "p-http",
                "p-resolve",
            ])
            .await;
        assert_eq!(outcome(&r, "p-http"), ProbeOutcome::Connected, "{r:?}");
        assert_eq!(
            (r["p-http"].http_status, r["p-http"].reply_from.as_str()),
            (200, "ct-world")
        );
        assert_eq!(outcome(&r, "p-resolve"), ProbeOutcome::Connected, "{r:?}");
        assert_eq!(
            (
                r["p-resolve"].dns_rcode.as_str(),
                r["p-resolve"].reply_from.as_str()
            ),
            ("NOERROR", "ct-world")
        );
        assert_eq!(outcome(&r, "p-echo"), ProbeOutcome::Connected, "{r:?}");
        assert_eq!(r["p-echo"].reply_from, "ct-world");
        assert!(r["p-echo"].latency_us > 0);
        assert_eq!(outcome(&r, "p-closed"), ProbeOutcome::Refused, "{r:?}");
        assert_eq!(outcome(&r, "p-blackhole"), ProbeOutcome::Timeout, "{r:?}");
        assert_eq!(outcome(&r, "p-nowhere"), ProbeOutcome::Error, "{r:?}");
        assert!(
            r["p-nowhere"]
                .detail
                .contains("not-here is not on this node"),
            "{}",
            r["p-nowhere"].detail
        );
        // A world workload is no endpoint.
        assert!(a.endpoints.list().await.is_empty());
        // Each probe ran once: applying the same state again starts nothing new.
        a.apply(&d).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.outbox.pending().len(), 6);
    });
}

#[test]
fn pod_probes_reach_pods_world_and_service_vips_through_the_socket_lb_cgroup() {
    if !bpf_available("pod_probes_reach_pods_world_and_service_vips_through_the_socket_lb_cgroup") {
        return;
    }
    let fx = Fixture::new();
    fx.on_node(|ctx| async move {
        let mut a = ctx.agent(true).await;
        let mut d = Desired {
            workloads: vec![
                wl(
                    "ct-client",
                    WorkloadKind::Pod,
                    CLIENT_IP,
                    &[("app", "client")],
                ),
                wl("ct-echo", WorkloadKind::Pod, ECHO_IP, &[("app", "echo")]),
                wl("ct-world", WorkloadKind::World, WORLD_IP, &[]),
            ],
            // Asked at once with the pods: it waits until the client pod is programmed.
            probes: vec![probe("early", Some("ct-client"), WORLD_IP, 8080, 2000)],
        };
        let t0 = Instant::now();
        a.apply(&d).await;
        eprintln!(
            "3 workloads (2 pods, 1 world) serving {:?} after the desired state",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.apply(&d).await;
        assert!(
            a.workloads.waiting(),
            "the probe waits for its pod's endpoint"
        );
        assert!(a.outbox.pending().is_empty(), "{:?}", a.outbox.pending());
        // The pods are the node's endpoints, with their labels, in the agent's namespaces.
        let eps = a.endpoints.list().await;
        let names: Vec<&str> = eps.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["ct-client", "ct-echo"]);
        assert_eq!(eps[1].labels.get("app").map(String::as_str), Some("echo"));
        assert_eq!(
            eps[1].netns,
            workload::netns_name(&ctx.prefix, NODE, "ct-echo")
        );
        // What the control plane sends once it gave them identities.
        a.program_endpoint(1, CLIENT_IP, 1000, false);
        a.program_endpoint(2, ECHO_IP, 1001, false);
        lock(&a.dp)
            .apply_service(&Service {
                id: 1,
                vip: VIP.into(),
                port: 80,
                proto: 6,
                algorithm: LbAlgorithm::Random,
                affinity: None,
                backends: vec![Backend {
                    id: 1,
                    ip: ECHO_IP.into(),
                    port: 8080,
                    weight: 1,
                    state: BackendState::Active,
                }],
            })
            .expect("service");
        a.apply(&d).await;
        let r = a.results(&["early"]).await;
        assert_eq!(outcome(&r, "early"), ProbeOutcome::Connected, "{r:?}");
        assert!(!a.workloads.waiting());
        d.probes = vec![
            probe("pod-to-pod", Some("ct-client"), ECHO_IP, 9090, 2000),
            probe("pod-to-vip", Some("ct-client"), VIP, 80, 2000),
            probe("pod-to-world", Some("ct-client"), WORLD_IP, 8080, 2000),
            probe("node-to-vip", None, VIP, 80, 2000),
        ];
        a.apply(&d).await;
        let r = a
            .results(&["pod-to-pod", "pod-to-vip", "pod-to-world", "node-to-vip"])
            .await;
        for id in ["pod-to-pod", "pod-to-vip", "node-to-vip"] {
            assert_eq!(outcome(&r, id), ProbeOutcome::Connected, "{id}: {r:?}");
            assert_eq!(r[id].reply_from, "ct-echo", "{id}");
        }
        assert_eq!(
            outcome(&r, "pod-to-world"),
            ProbeOutcome::Connected,
            "{r:?}"
        );
        assert_eq!(r["pod-to-world"].reply_from, "ct-world");

        // Without the cgroup the VIP is just an address nobody has: it is the cgroup
        // placement that made the probes above balanced like a pod's process.
        let outside = ctx.state.join("outside");
        std::fs::create_dir_all(&outside).expect("dir");
        let outbox = SharedOutbox::load(&outside);
        let mut plain = Workloads::new(
            workload::Config {
                netns_prefix: format!("{}o-", ctx.prefix),
                node_name: NODE.into(),
                state_dir: outside,
                probes: Spawner {
                    exe: PathBuf::from(env!("CARGO_BIN_EXE_node-agent")),
                    cgroup: None,
                },
                concurrent_probes: 1,
            },
            a.endpoints.clone(),
            outbox.clone(),
        )
        .expect("workloads");
        let errors = plain
            .apply(&Desired {
                workloads: vec![],
                probes: vec![probe("vip-outside-cgroup", None, VIP, 80, 500)],
            })
            .await;
        assert!(errors.is_empty(), "{errors:?}");
        let r = results(&outbox, &["vip-outside-cgroup"]).await;
        assert_ne!(
            outcome(&r, "vip-outside-cgroup"),
            ProbeOutcome::Connected,
            "{r:?}"
        );
        // The pods' veths carry the datapath (pinned links), the world's does not.
        assert!(pins_mention(
            &ctx.pins,
            &node_agent::endpoint::host_ifname("ct-echo")
        ));
        assert!(!pins_mention(
            &ctx.pins,
            &workload::world_ifname("ct-world")
        ));

        // A policy drop looks like a timeout: the echo pod now denies all ingress.
        a.program_endpoint(2, ECHO_IP, 1001, true);
        lock(&a.dp).apply_policy(2, &[]).expect("policy");
        d.probes = vec![probe("denied", Some("ct-client"), ECHO_IP, 8080, 500)];
        a.apply(&d).await;
        let r = a.results(&["denied"]).await;
        assert_eq!(outcome(&r, "denied"), ProbeOutcome::Timeout, "{r:?}");
    });
}

#[test]
fn workloads_come_back_after_a_restart_and_removal_leaves_nothing() {
    if !bpf_available("workloads_come_back_after_a_restart_and_removal_leaves_nothing") {
        return;
    }
    let fx = Fixture::new();
    let d = Desired {
        workloads: vec![
            wl("ct-echo", WorkloadKind::Pod, ECHO_IP, &[("app", "echo")]),
            wl("ct-world", WorkloadKind::World, WORLD_IP, &[]),
        ],
        probes: vec![],
    };
    let d1 = d.clone();
    fx.on_node(|ctx| async move {
        let mut a = ctx.agent(true).await;
        a.apply(&d1).await;
        a.program_endpoint(1, ECHO_IP, 1001, false);
        // The agent goes away (its echo servers with it); namespaces and endpoints stay.
        drop(a);
        let _ = ctx;
    });
    let expected = vec![
        workload::netns_name(&fx.prefix, NODE, "ct-echo"),
        workload::netns_name(&fx.prefix, NODE, "ct-world"),
    ];
    let mut have = fx.namespaces();
    have.sort();
    assert_eq!(have, expected);
    // And one namespace is lost meanwhile (as after a reboot).
    node_agent::netns::ip(&["netns", "del", &expected[1]]).expect("delete world namespace");

    let d2 = d.clone();
    let node_path = fx.node.path();
    fx.on_node(move |ctx| async move {
        let mut a = ctx.agent(true).await;
        let mut d = d2;
        d.probes = vec![
            probe("after-restart-pod", None, ECHO_IP, 8080, 2000),
            probe("after-restart-world", None, WORLD_IP, 9090, 2000),
        ];
        a.apply(&d).await;
        let r = a
            .results(&["after-restart-pod", "after-restart-world"])
            .await;
        assert_eq!(
            outcome(&r, "after-restart-pod"),
            ProbeOutcome::Connected,
            "{r:?}"
        );
        assert_eq!(
            outcome(&r, "after-restart-world"),
            ProbeOutcome::Connected,
            "{r:?}"
        );

        // Removal: endpoint, veths and namespaces go.
        a.apply(&Desired::default()).await;
        assert!(a.endpoints.list().await.is_empty());
        let lxc = node_agent::endpoint::host_ifname("ct-echo");
        assert!(!link_exists_in(&node_path, &lxc), "{lxc} is gone");
        assert!(!link_exists_in(
            &node_path,
            &workload::world_ifname("ct-world")
        ));
    });
    assert!(fx.namespaces().is_empty(), "left: {:?}", fx.namespaces());
}
