//! ipcache, endpoints, services, errors; workloads, probes and cluster settings.

use super::realistic::realistic;
use super::*;

#[test]
fn ipcache_holds_cluster_endpoints_and_nodes() {
    let s = compile_ok(&base(), "n1");
    let want = vec![
        (net("10.0.0.1/32"), HOST),
        (net("10.0.0.2/32"), REMOTE_NODE),
        (net("10.1.0.1/32"), WEB),
        (net("10.1.0.2/32"), WEB),
        (net("10.1.0.3/32"), FRONTEND),
        (net("10.1.0.4/32"), DB),
        (net("fd00::1/128"), HOST),
        (net("fd01::4/128"), DB),
    ];
    let got: Vec<(IpNet, u32)> = s.ipcache.iter().map(|e| (e.prefix, e.identity)).collect();
    assert_eq!(got, want, "other cluster (10.9.x) left out");
    let ids: Vec<&str> = s.endpoints.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["db-1", HOST_ENDPOINT_ID, "web-1"]);
    assert_eq!(endpoint(&s, "db-1").ips, ips(&["10.1.0.4", "fd01::4"]));
    // From n2's point of view n1 is a remote node.
    let n2 = compile_ok(&base(), "n2");
    assert!(n2.ipcache.contains(&IpcacheEntry {
        prefix: net("10.0.0.1/32"),
        identity: REMOTE_NODE
    }));
    assert!(n2.ipcache.contains(&IpcacheEntry {
        prefix: net("10.0.0.2/32"),
        identity: HOST
    }));
}

#[test]
fn services_of_the_cluster_sorted_with_active_flags() {
    let spec = |backends: serde_json::Value| -> ServiceSpec {
        serde_json::from_value(json!({
            "frontends": [{"vip": "10.96.0.11", "port": 443, "protocol": "TCP"},
                          {"vip": "10.96.0.10", "port": 80, "protocol": "TCP"}],
            "backends": backends,
            "algorithm": "maglev",
            "session_affinity": {"timeout_seconds": 60}
        }))
        .expect("service spec")
    };
    let mut view = base();
    view.services = vec![
        ServiceView {
            id: "s2".into(),
            cluster_id: "c1".into(),
            name: "web".into(),
            spec: spec(json!([
                {"address": "10.1.0.2", "port": 8080},
                {"address": "10.1.0.1", "port": 8080, "state": "terminating"},
                {"address": "10.1.0.3", "port": 8080, "weight": 0},
            ])),
        },
        ServiceView {
            id: "s1".into(),
            cluster_id: "c2".into(),
            name: "elsewhere".into(),
            spec: spec(json!([])),
        },
    ];
    let s = compile_ok(&view, "n1");
    assert_eq!(s.services.len(), 1);
    let svc = &s.services[0];
    assert_eq!(
        (svc.id.as_str(), svc.algorithm, svc.affinity_timeout),
        ("s2", Algorithm::Maglev, Some(60))
    );
    let vips: Vec<String> = svc.frontends.iter().map(|f| f.vip.to_string()).collect();
    assert_eq!(vips, ["10.96.0.10", "10.96.0.11"]);
    let backends: Vec<(String, bool)> = svc
        .backends
        .iter()
        .map(|b| (b.address.to_string(), b.active))
        .collect();
    assert_eq!(
        backends,
        [
            ("10.1.0.1".to_string(), false),
            ("10.1.0.2".to_string(), true),
            ("10.1.0.3".to_string(), false)
        ]
    );
}

type Mutation = Box<dyn Fn(&mut TenantView)>;

#[test]
fn inconsistent_input_is_refused() {
    assert_eq!(
        compile(&base(), "nope"),
        Err(CompileError::UnknownNode("nope".into()))
    );
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|v| v.endpoints[0].identity = 7),
            "IdentityOutOfRange",
        ),
        (
            Box::new(|v| v.endpoints[0].identity = CIDR_BASE),
            "IdentityOutOfRange",
        ),
        (
            Box::new(|v| v.endpoints[2].identity = WEB),
            "IdentityLabelsMismatch",
        ),
        (
            Box::new(|v| v.endpoints[2].ips = ips(&["10.1.0.1"])),
            "AddressConflict",
        ),
        (
            Box::new(|v| v.nodes[1].addresses = ips(&["10.1.0.4"])),
            "AddressConflict",
        ),
        (
            Box::new(|v| v.endpoints[1].id = "web-1".into()),
            "DuplicateId",
        ),
        (
            Box::new(|v| v.endpoints[0].id = HOST_ENDPOINT_ID.into()),
            "ReservedEndpointId",
        ),
        (
            Box::new(|v| v.endpoints[0].cluster_id = "c2".into()),
            "EndpointClusterMismatch",
        ),
    ];
    for (mutate, want) in cases {
        let mut view = base();
        mutate(&mut view);
        let err = compile(&view, "n1").expect_err(want);
        assert!(format!("{err:?}").starts_with(want), "{want}: {err:?}");
    }
    // Same identity on two addresses and on another node: fine.
    let mut view = base();
    view.endpoints[1].ips = ips(&["10.1.0.1"]);
    assert!(
        compile(&view, "n1").is_ok(),
        "same identity on one address is no conflict"
    );
}

#[test]
fn workloads_and_probes_go_to_their_own_node_only_and_diff_item_by_item() {
    let view = realistic();
    let n1 = compile_ok(&view, "n1");
    let names = |s: &NodeDesiredState| {
        s.workloads
            .iter()
            .map(|w| w.name.clone())
            .collect::<Vec<_>>()
    };
    let ids = |s: &NodeDesiredState| s.probes.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    assert_eq!(names(&n1), ["ct-client", "ct-world"]);
    assert_eq!(ids(&n1), ["p1", "p2"]);
    let n2 = compile_ok(&view, "n2");
    assert_eq!(names(&n2), ["ct-echo"]);
    assert_eq!(ids(&n2), ["p3"]);
    assert!(compile_ok(&view, "m1").workloads.is_empty());

    // A probe gets its result (leaves the view): only that probe is removed.
    let mut done = view.clone();
    done.probes.retain(|p| p.probe.id != "p1");
    let d = diff(&n1, &compile_ok(&done, "n1"));
    assert_eq!(d.probes_remove, ["p1"]);
    assert!(d.probes_upsert.is_empty() && d.workloads_upsert.is_empty());
    assert!(d.endpoints_upsert.is_empty() && d.policy_upsert.is_empty());
}

#[test]
fn states_stored_before_workloads_existed_still_load() {
    let mut json = serde_json::to_value(compile_ok(&realistic(), "n2")).expect("json");
    let obj = json.as_object_mut().expect("object");
    obj.remove("workloads");
    obj.remove("probes");
    let old: NodeDesiredState = serde_json::from_value(json).expect("old state loads");
    assert!(old.workloads.is_empty() && old.probes.is_empty());
}

#[test]
fn explicit_empty_peer_lists_compile_to_no_entry() {
    for (section, field) in [
        ("ingress", "fromEndpoints"),
        ("ingress", "fromCIDR"),
        ("ingress", "fromCIDRSet"),
        ("ingress", "fromEntities"),
        ("ingressDeny", "fromEndpoints"),
        ("egress", "toEndpoints"),
        ("egress", "toCIDR"),
        ("egress", "toCIDRSet"),
        ("egress", "toEntities"),
        ("egress", "toFQDNs"),
    ] {
        let view = with_policies(vec![policy(
            "p",
            &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
                section: [{field: [], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]})],
            None,
        )]);
        let s = compile_ok(&view, "n1");
        let rules = bare(&s, "web-1");
        assert!(
            rules.is_empty(),
            "{section}.{field}: [] must select nobody: {rules:?}"
        );
        let ep = endpoint(&s, "web-1");
        assert!(
            ep.enforce_ingress || ep.enforce_egress,
            "{section}.{field}: still enforces"
        );
    }
    // Absent: any peer on the port.
    let view = with_policies(vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEndpoints": null, "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]})],
        None,
    )]);
    assert_eq!(
        bare(&compile_ok(&view, "n1"), "web-1"),
        vec![(Ingress, None, TCP, Some((80, 80)), Allow, false)]
    );
}

#[test]
fn allow_host_to_local_pods_is_a_cluster_setting() {
    let spec = json!({"endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}]}],
        "ingressDeny": [{"fromEntities": ["host"], "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]});
    let mut view = with_policies(vec![policy("p", &[spec], None)]);
    let host_allow = (Ingress, Some(HOST), None, None, Allow, false);
    // Off (or a cluster without settings): the host is a peer like any other.
    for setting in [None, Some(false)] {
        view.clusters = setting
            .map(|on| {
                vec![ClusterView {
                    id: "c1".into(),
                    allow_host_to_local_pods: on,
                    routing: Default::default(),
                }]
            })
            .unwrap_or_default();
        let s = compile_ok(&view, "n1");
        assert!(!bare(&s, "web-1").contains(&host_allow), "{setting:?}");
    }
    view.clusters = vec![ClusterView {
        id: "c1".into(),
        allow_host_to_local_pods: true,
        routing: Default::default(),
    }];
    let s = compile_ok(&view, "n1");
    let web = bare(&s, "web-1");
    assert!(web.contains(&host_allow), "{web:?}");
    // Deny rules still win, the host endpoint and non-enforcing endpoints get nothing.
    assert!(web.contains(&(Ingress, Some(HOST), TCP, Some((22, 22)), Deny, false)));
    assert!(bare(&s, "db-1").is_empty());
    assert!(bare(&s, HOST_ENDPOINT_ID).is_empty());
    let origin = &s.policy["web-1"]
        .iter()
        .find(|r| r.peer_identity == Some(HOST) && r.action == Allow)
        .expect("host allow")
        .origin;
    assert_eq!(origin, HOST_TO_LOCAL_PODS_ORIGIN);
    // Only in its own cluster.
    view.clusters[0].id = "c2".into();
    assert!(!bare(&compile_ok(&view, "n1"), "web-1").contains(&host_allow));
}

#[test]
fn named_ports_resolve_per_destination_endpoint() {
    let np = |s: &str| s.parse::<NamedPort>().expect("named port");
    let mut view = base();
    for e in &mut view.endpoints {
        e.named_ports = match e.id.as_str() {
            "web-1" => vec![np("http=8080/TCP"), np("dns=53/UDP")],
            "web-2" => vec![np("http=8081/TCP")],
            "db-1" => vec![np("postgres=5432/TCP")],
            _ => vec![],
        };
    }
    view.policies = vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                         "toPorts": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "TCP"}]}]}],
            "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "db"}}],
                             "toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}, {"port": "ssh", "protocol": "TCP"}]}]}],
            "egress": [{"toEndpoints": [{"matchLabels": {"app": "db"}}],
                        "toPorts": [{"ports": [{"port": "postgres", "protocol": "TCP"}, {"port": "http"}]}]},
                       {"toEndpoints": [{"matchLabels": {"app": "web"}}],
                        "toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}]}]}]})],
        None,
    )];
    let s = compile_ok(&view, "n1");
    assert_eq!(
        bare(&s, "web-1"),
        vec![
            // Ingress: web-1's own `http`; `dns` is UDP there, so the TCP rule matches nothing.
            (
                Ingress,
                Some(FRONTEND),
                TCP,
                Some((8080, 8080)),
                Allow,
                false
            ),
            // The deny resolves too: exactly web-1's http port, and `ssh` (undeclared)
            // denies nothing rather than every TCP port.
            (Ingress, Some(DB), TCP, Some((8080, 8080)), Deny, false),
            // Egress: the peer's declared ports; db declares no `http`.
            (Egress, Some(WEB), TCP, Some((8080, 8080)), Allow, false),
            (Egress, Some(WEB), TCP, Some((8081, 8081)), Allow, false),
            (Egress, Some(DB), TCP, Some((5432, 5432)), Allow, false),
        ]
    );
    // On n2, web-2 declares http=8081: its ingress rule is on 8081.
    let s2 = compile_ok(&view, "n2");
    assert!(bare(&s2, "web-2").contains(&(
        Ingress,
        Some(FRONTEND),
        TCP,
        Some((8081, 8081)),
        Allow,
        false
    )));
    // Nothing declared anywhere: matches nothing, allow or deny.
    let mut bare_view = view.clone();
    for e in &mut bare_view.endpoints {
        e.named_ports.clear();
    }
    let s = compile_ok(&bare_view, "n1");
    assert!(bare(&s, "web-1").is_empty(), "{:?}", bare(&s, "web-1"));
    // And the evaluator agrees flow by flow where it can say (ingress to web-1).
    let specs = &view.policies[0].specs;
    let subject = Subject::endpoint(labels("app=web"));
    let fe = Peer::endpoint(labels("app=frontend"));
    let t = Traffic::ingress(fe.clone(), FlowProtocol::Tcp, 8080).with_named_port("http", 8080);
    assert_eq!(evaluate(specs, &subject, &t).verdict, Verdict::Allowed);
    let t = Traffic::ingress(fe, FlowProtocol::Tcp, 8081).with_named_port("http", 8080);
    assert_eq!(evaluate(specs, &subject, &t).verdict, Verdict::Denied);
}

#[test]
fn one_plan_compiles_every_node_of_its_cluster_as_compile_does() {
    let view = realistic();
    let mut clusters: Vec<&str> = view.nodes.iter().map(|n| n.cluster_id.as_str()).collect();
    clusters.dedup();
    for cluster in clusters {
        let plan = ClusterPlan::new(&view, cluster);
        for node in view.nodes.iter().filter(|n| n.cluster_id == cluster) {
            assert_eq!(
                plan.compile(&view, node),
                compile(&view, &node.id),
                "node {}",
                node.id
            );
        }
    }
    // A node of another cluster is not this plan's to compile.
    let plan = ClusterPlan::new(&base(), "c1");
    assert!(plan.compile(&base(), &base().nodes[2]).is_err());
    // The plan keeps its view's endpoints by position: with a view that lacks them it
    // refuses, rather than compiling whatever endpoints sit there.
    let mut other = base();
    other.endpoints.clear();
    assert_eq!(
        plan.compile(&other, &base().nodes[0]),
        Err(CompileError::UnknownNode(base().nodes[0].id.clone()))
    );
}

#[test]
fn endpoints_alike_share_one_rule_list_across_nodes() {
    let np = |s: &str| s.parse::<NamedPort>().expect("named port");
    let mut view = with_policies(vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                         "toPorts": [{"ports": [{"port": "http"}]}]}]})],
        None,
    )]);
    view.endpoints[0].named_ports = vec![np("http=8080/TCP")];
    view.endpoints[1].named_ports = vec![np("http=8080/TCP")];
    let plan = ClusterPlan::new(&view, "c1");
    let node = |id: &str| view.nodes.iter().find(|n| n.id == id).expect("node");
    let n1 = plan.compile_local(&view, node("n1")).expect("n1");
    let n2 = plan.compile_local(&view, node("n2")).expect("n2");
    // web-1 and web-2: same labels, same named ports, one list held by both nodes.
    assert!(!n1.policy["web-1"].is_empty());
    assert!(Rules::ptr_eq(&n1.policy["web-1"], &n2.policy["web-2"]));
    // And the same as each node compiled on its own.
    assert_eq!(n1.policy, compile_ok(&view, "n1").policy);
    assert_eq!(n2.policy, compile_ok(&view, "n2").policy);

    // Another named port is another list: rules resolve against the endpoint's own ports.
    view.endpoints[1].named_ports = vec![np("http=8081/TCP")];
    let plan = ClusterPlan::new(&view, "c1");
    let n1 = plan.compile_local(&view, node("n1")).expect("n1");
    let n2 = plan.compile_local(&view, node("n2")).expect("n2");
    assert!(!Rules::ptr_eq(&n1.policy["web-1"], &n2.policy["web-2"]));
    assert_ne!(n1.policy["web-1"], n2.policy["web-2"]);
    assert_eq!(n2.policy, compile_ok(&view, "n2").policy);
}

#[test]
fn two_nodes_on_one_address_fail_those_two_nodes_only() {
    let mut view = base();
    view.nodes.push(node("n3", "c1", &["10.0.0.3"], "zone=c"));
    view.nodes[1].addresses = ips(&["10.0.0.1"]);
    let plan = ClusterPlan::new(&view, "c1");
    for n in ["n1", "n2"] {
        let node = find_node(&view, n).expect("node");
        match plan.compile(&view, node) {
            Err(CompileError::AddressConflict { first, second, .. }) => {
                assert_eq!(
                    (first.as_str(), second.as_str()),
                    ("node \"n1\"", "node \"n2\"")
                )
            }
            other => panic!("{n}: {other:?}"),
        }
    }
    let n3 = plan
        .compile(&view, find_node(&view, "n3").expect("node"))
        .expect("a third node is not affected");
    let remote: Vec<u32> = n3
        .ipcache
        .iter()
        .filter(|e| e.prefix == net("10.0.0.1/32"))
        .map(|e| e.identity)
        .collect();
    assert_eq!(remote, [crate::identity::REMOTE_NODE]);
}
