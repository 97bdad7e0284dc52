//! What `weft connectivity test` creates and checks: pure, so the scenarios are unit-tested
//! without a control plane (how a check is judged is [`super::judge`]).
//!
//! Every object of a run carries the label `weft-ct-run=<run id>` and every policy selects
//! only workloads with that label, so a run never changes what the tenant's own workloads
//! may do, and `weft connectivity cleanup` finds leftovers of any run.

use serde::Serialize;
use serde_json::{json, Value};

/// The label every object of a run carries; its value is the run id.
pub const RUN_LABEL: &str = "weft-ct-run";
/// The label naming a workload's role in the run.
pub const ROLE_LABEL: &str = "weft-ct-role";
/// The label naming the scenario a probe belongs to.
pub const SCENARIO_LABEL: &str = "weft-ct-scenario";

/// The echo port every policy scenario talks to, and one outside the port-range rule.
pub const ECHO_PORT: u16 = 8080;
pub const OTHER_PORT: u16 = 9090;
/// The test service's frontend port.
pub const SERVICE_PORT: u16 = 80;

/// A workload's part in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The client the policies are about (node A).
    Client,
    /// A second client with other labels (node A).
    Client2,
    /// Echo server on the client's node.
    EchoSame,
    /// Echo server on the other node.
    EchoOther,
    /// Echo server outside the cluster (node A), and resolver of every name.
    World,
    /// A second one, at another address (node A): what a name `toFQDNs` does not select
    /// resolves to.
    World2,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Client,
        Role::Client2,
        Role::EchoSame,
        Role::EchoOther,
        Role::World,
        Role::World2,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Client2 => "client2",
            Role::EchoSame => "echo-same",
            Role::EchoOther => "echo-other",
            Role::World => "world",
            Role::World2 => "world2",
        }
    }

    /// The role label value policies select on (both echo servers share `echo`, both
    /// world servers `world`).
    pub fn label(self) -> &'static str {
        match self {
            Role::EchoSame | Role::EchoOther => "echo",
            Role::World | Role::World2 => "world",
            r => r.as_str(),
        }
    }

    /// Outside the cluster (a `world` workload).
    pub fn is_world(self) -> bool {
        matches!(self, Role::World | Role::World2)
    }

    /// On the second node (only `echo-other`).
    pub fn on_other_node(self) -> bool {
        self == Role::EchoOther
    }
}

/// A workload to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadPlan {
    pub role: Role,
    pub name: String,
    /// `pod` or `world` (the API's kinds).
    pub kind: &'static str,
    pub labels: Value,
    pub echo_ports: Vec<u16>,
}

/// The run's workloads; without a second node, no `echo-other`.
pub fn workloads(run: &str, two_nodes: bool) -> Vec<WorkloadPlan> {
    Role::ALL
        .into_iter()
        .filter(|r| two_nodes || !r.on_other_node())
        .map(|role| WorkloadPlan {
            role,
            name: workload_name(run, role),
            kind: if role.is_world() { "world" } else { "pod" },
            labels: json!({RUN_LABEL: run, ROLE_LABEL: role.label()}),
            echo_ports: match role {
                Role::Client | Role::Client2 => Vec::new(),
                Role::World | Role::World2 => vec![ECHO_PORT],
                Role::EchoSame | Role::EchoOther => vec![ECHO_PORT, OTHER_PORT],
            },
        })
        .collect()
}

pub fn workload_name(run: &str, role: Role) -> String {
    format!("ct-{run}-{}", role.as_str())
}

pub fn service_name(run: &str) -> String {
    format!("ct-{run}-echo")
}

/// Where a probe starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum From {
    Workload(Role),
    /// The node of `echo-same` (`same`) or the other node.
    Host {
        other_node: bool,
    },
}

/// Where a probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum To {
    Workload(Role, u16),
    /// The test service's VIP and frontend port (backends: the echo servers' `ECHO_PORT`).
    Service,
}

/// What a probe does beyond the echo exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum L7 {
    /// An HTTP request with this method and path instead of the echo line.
    Http {
        method: &'static str,
        path: &'static str,
    },
    /// Resolve this name first, at the target's own resolver (a world workload answers
    /// every name with its own address), as a pod does before it connects to an FQDN.
    Resolve { name: &'static str },
}

/// What should happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// The echo answers (an HTTP check: with 200) and a `FORWARDED` flow is recorded (an
    /// HTTP check: an L7 one).
    Allowed,
    /// No answer and a `DROPPED` flow with this drop reason is recorded.
    Denied(&'static str),
    /// The proxy answers `403 Forbidden` and an L7 `DROPPED` (`POLICY_DENIED`) flow is
    /// recorded.
    HttpDenied,
    /// The lookup is answered `REFUSED` and a DNS `DROPPED` (`POLICY_DENIED`) flow is
    /// recorded.
    DnsRefused,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    /// Over IPv6 (the workloads' and the service's IPv6 addresses); its name ends in `/ipv6`.
    pub ipv6: bool,
    pub from: From,
    pub to: To,
    /// HTTP or a lookup first; none: the echo line.
    pub l7: Option<L7>,
    pub expect: Expect,
}

/// A set of policies and the checks made under them.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    /// Policy bodies for `POST /policies` (named, labelled and scoped to the cluster).
    pub policies: Vec<Value>,
    pub checks: Vec<Check>,
}

/// Policy-level drop reasons, as flows spell them.
pub const POLICY_DENIED: &str = "POLICY_DENIED";
pub const DENY_RULE: &str = "DENY_RULE";

pub(super) fn check(name: &str, from: From, to: To, expect: Expect) -> Check {
    Check {
        name: name.to_string(),
        ipv6: false,
        from,
        to,
        l7: None,
        expect,
    }
}

fn l7_check(name: &str, to: To, l7: L7, expect: Expect) -> Check {
    Check {
        l7: Some(l7),
        ..check(name, From::Workload(Role::Client), to, expect)
    }
}

/// Names the FQDN scenario resolves: `toFQDNs` selects the first; DNS rules allow the
/// first two and refuse the third.
pub const ALLOWED_NAME: &str = "echo.allowed.weft-ct.test";
pub const OTHER_NAME: &str = "echo.other.weft-ct.test";
pub const BLOCKED_NAME: &str = "echo.blocked.weft-ct.test";

/// The scenarios, in order. Checks that need a second node are left out without one.
pub fn scenarios(run: &str, cluster: &str, two_nodes: bool) -> Vec<Scenario> {
    use Expect::{Allowed, Denied, DnsRefused, HttpDenied};
    use Role::{Client, Client2, EchoOther, EchoSame, World, World2};
    let sel = |role: &str| json!({"matchLabels": {RUN_LABEL: run, ROLE_LABEL: role}});
    let policy = |name: &str, spec: Value| {
        json!({
            "name": format!("ct-{run}-{name}"),
            "labels": {RUN_LABEL: run},
            "description": "weft connectivity test (removed when the test ends)",
            "clusters": [cluster],
            "spec": spec,
        })
    };
    let client = From::Workload(Client);
    let all = vec![
        Scenario {
            name: "no-policy",
            description: "nothing selects the test workloads: everything is allowed",
            policies: vec![],
            checks: vec![
                check(
                    "pod-to-pod/same-node",
                    client,
                    To::Workload(EchoSame, ECHO_PORT),
                    Allowed,
                ),
                check(
                    "pod-to-pod/other-node",
                    client,
                    To::Workload(EchoOther, ECHO_PORT),
                    Allowed,
                ),
                check("pod-to-service", client, To::Service, Allowed),
                check(
                    "host-to-pod/same-node",
                    From::Host { other_node: false },
                    To::Workload(EchoSame, ECHO_PORT),
                    Allowed,
                ),
                check(
                    "host-to-pod/other-node",
                    From::Host { other_node: true },
                    To::Workload(EchoSame, ECHO_PORT),
                    Allowed,
                ),
                check(
                    "pod-to-world",
                    client,
                    To::Workload(World, ECHO_PORT),
                    Allowed,
                ),
            ],
        },
        Scenario {
            name: "egress-to-cluster",
            description: "the client may reach only the cluster",
            policies: vec![policy(
                "egress-cluster",
                json!({"endpointSelector": sel("client"), "egress": [{"toEntities": ["cluster"]}]}),
            )],
            checks: vec![
                check(
                    "pod-to-world/denied",
                    client,
                    To::Workload(World, ECHO_PORT),
                    Denied(POLICY_DENIED),
                ),
                check(
                    "pod-to-pod/cluster-allowed",
                    client,
                    To::Workload(EchoOther, ECHO_PORT),
                    Allowed,
                ),
            ],
        },
        Scenario {
            name: "default-deny",
            description: "the echo servers deny all ingress",
            policies: vec![policy(
                "default-deny",
                json!({"endpointSelector": sel("echo"), "enableDefaultDeny": {"ingress": true}}),
            )],
            checks: vec![
                check(
                    "default-deny/same-node",
                    client,
                    To::Workload(EchoSame, ECHO_PORT),
                    Denied(POLICY_DENIED),
                ),
                check(
                    "default-deny/other-node",
                    client,
                    To::Workload(EchoOther, ECHO_PORT),
                    Denied(POLICY_DENIED),
                ),
            ],
        },
        Scenario {
            name: "allow-by-label",
            description: "the echo servers admit the client's labels only",
            policies: vec![policy(
                "allow-client",
                json!({"endpointSelector": sel("echo"), "ingress": [{"fromEndpoints": [sel("client")]}]}),
            )],
            checks: vec![
                check(
                    "allow-by-label/allowed",
                    client,
                    To::Workload(EchoOther, ECHO_PORT),
                    Allowed,
                ),
                check(
                    "allow-by-label/other-labels-denied",
                    From::Workload(Client2),
                    To::Workload(EchoOther, ECHO_PORT),
                    Denied(POLICY_DENIED),
                ),
            ],
        },
        Scenario {
            name: "deny-rule",
            description: "every test client is allowed, client2 is denied: the deny wins",
            policies: vec![policy(
                "deny-client2",
                json!({
                    "endpointSelector": sel("echo"),
                    "ingress": [{"fromEndpoints": [{"matchLabels": {RUN_LABEL: run}}]}],
                    "ingressDeny": [{"fromEndpoints": [sel("client2")]}],
                }),
            )],
            checks: vec![
                check(
                    "deny-rule/denied",
                    From::Workload(Client2),
                    To::Workload(EchoSame, ECHO_PORT),
                    Denied(DENY_RULE),
                ),
                check(
                    "deny-rule/others-allowed",
                    client,
                    To::Workload(EchoSame, ECHO_PORT),
                    Allowed,
                ),
            ],
        },
        Scenario {
            name: "port-range",
            description: "the client may reach ports 8000-8099 of the echo servers",
            policies: vec![policy(
                "port-range",
                json!({
                    "endpointSelector": sel("echo"),
                    "ingress": [{
                        "fromEndpoints": [sel("client")],
                        "toPorts": [{"ports": [{"port": "8000", "endPort": 8099, "protocol": "TCP"}]}],
                    }],
                }),
            )],
            checks: vec![
                check(
                    "port-range/in-range",
                    client,
                    To::Workload(EchoOther, ECHO_PORT),
                    Allowed,
                ),
                check(
                    "port-range/out-of-range",
                    client,
                    To::Workload(EchoOther, OTHER_PORT),
                    Denied(POLICY_DENIED),
                ),
            ],
        },
        Scenario {
            name: "cidr",
            description:
                "the client may reach 198.51.100.0/24 and 2001:db8:5100::/64 (outside the \
                          cluster) only",
            policies: vec![policy(
                "egress-cidr",
                json!({
                    "endpointSelector": sel("client"),
                    "egress": [{"toCIDR": [
                        weft_model::workload::WORLD_NET.to_string(),
                        weft_model::workload::WORLD_NET6.to_string(),
                    ]}],
                }),
            )],
            checks: vec![
                check(
                    "cidr/allowed",
                    client,
                    To::Workload(World, ECHO_PORT),
                    Allowed,
                ),
                check(
                    "cidr/outside-denied",
                    client,
                    To::Workload(EchoSame, ECHO_PORT),
                    Denied(POLICY_DENIED),
                ),
            ],
        },
        Scenario {
            name: "l7-http",
            description: "the echo servers admit GET /public from the client, no other \
                          request (HTTP rules, enforced by the agents' proxy)",
            policies: vec![policy(
                "l7-http",
                json!({
                    "endpointSelector": sel("echo"),
                    "ingress": [{
                        "fromEndpoints": [sel("client")],
                        "toPorts": [{
                            "ports": [{"port": ECHO_PORT.to_string(), "protocol": "TCP"}],
                            "rules": {"http": [{"method": "GET", "path": "/public"}]},
                        }],
                    }],
                }),
            )],
            checks: vec![
                l7_check(
                    "http/allowed-path",
                    To::Workload(EchoSame, ECHO_PORT),
                    L7::Http {
                        method: "GET",
                        path: "/public",
                    },
                    Allowed,
                ),
                l7_check(
                    "http/denied-path",
                    To::Workload(EchoSame, ECHO_PORT),
                    L7::Http {
                        method: "GET",
                        path: "/private",
                    },
                    HttpDenied,
                ),
                l7_check(
                    "http/allowed-path/other-node",
                    To::Workload(EchoOther, ECHO_PORT),
                    L7::Http {
                        method: "GET",
                        path: "/public",
                    },
                    Allowed,
                ),
                l7_check(
                    "http/denied-method/other-node",
                    To::Workload(EchoOther, ECHO_PORT),
                    L7::Http {
                        method: "POST",
                        path: "/public",
                    },
                    HttpDenied,
                ),
            ],
        },
        Scenario {
            name: "fqdn",
            description: "the client may look up *.allowed.weft-ct.test and \
                          *.other.weft-ct.test (DNS rules) and connect only to what \
                          *.allowed.weft-ct.test resolved to (toFQDNs)",
            policies: vec![policy(
                "fqdn",
                json!({
                    "endpointSelector": sel("client"),
                    "egress": [
                        {
                            "toCIDR": [
                                weft_model::workload::WORLD_NET.to_string(),
                                weft_model::workload::WORLD_NET6.to_string(),
                            ],
                            "toPorts": [{
                                "ports": [{"port": "53", "protocol": "UDP"}],
                                "rules": {"dns": [
                                    {"matchPattern": "*.allowed.weft-ct.test"},
                                    {"matchPattern": "*.other.weft-ct.test"},
                                ]},
                            }],
                        },
                        {
                            "toFQDNs": [{"matchPattern": "*.allowed.weft-ct.test"}],
                            "toPorts": [{"ports": [{"port": ECHO_PORT.to_string(), "protocol": "TCP"}]}],
                        },
                    ],
                }),
            )],
            checks: vec![
                l7_check(
                    "fqdn/allowed-name",
                    To::Workload(World, ECHO_PORT),
                    L7::Resolve { name: ALLOWED_NAME },
                    Allowed,
                ),
                l7_check(
                    "fqdn/other-name-denied",
                    To::Workload(World2, ECHO_PORT),
                    L7::Resolve { name: OTHER_NAME },
                    Denied(POLICY_DENIED),
                ),
                l7_check(
                    "fqdn/dns-refused",
                    To::Workload(World, ECHO_PORT),
                    L7::Resolve { name: BLOCKED_NAME },
                    DnsRefused,
                ),
            ],
        },
    ];
    all.into_iter()
        .map(|mut s| {
            s.checks.retain(|c| two_nodes || !needs_two_nodes(c));
            s
        })
        .filter(|s| !s.checks.is_empty())
        .collect()
}

/// Dual stack: every scenario's checks once more over IPv6, each named `<check>/ipv6`.
pub fn add_ipv6(scenarios: &mut [Scenario]) {
    for s in scenarios {
        let v6: Vec<Check> = s
            .checks
            .iter()
            .map(|c| Check {
                name: format!("{}/ipv6", c.name),
                ipv6: true,
                ..c.clone()
            })
            .collect();
        s.checks.extend(v6);
    }
}

fn needs_two_nodes(c: &Check) -> bool {
    matches!(c.to, To::Workload(r, _) if r.on_other_node())
        || matches!(c.from, From::Host { other_node: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn two_nodes_give_at_least_twelve_checks_with_unique_names_and_one_node_fewer() {
        let two = scenarios("abc123", "prod", true);
        let names: Vec<&str> = two
            .iter()
            .flat_map(|s| s.checks.iter().map(|c| c.name.as_str()))
            .collect();
        assert!(names.len() >= 12, "{names:?}");
        assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), names.len());
        let one = scenarios("abc123", "prod", false);
        let one_names: Vec<&str> = one
            .iter()
            .flat_map(|s| s.checks.iter().map(|c| c.name.as_str()))
            .collect();
        assert!(one_names.len() < names.len());
        assert!(!one_names.contains(&"pod-to-pod/other-node"));
        // Nothing in a one-node plan refers to the other node's workload.
        assert!(one
            .iter()
            .flat_map(|s| &s.checks)
            .all(|c| !needs_two_nodes(c)));
        assert!(!workloads("abc123", false)
            .iter()
            .any(|w| w.role == Role::EchoOther));
    }

    #[test]
    fn dual_stack_repeats_every_check_over_ipv6_with_ipv6_in_its_name() {
        let v4 = scenarios("abc123", "prod", true);
        let mut dual = v4.clone();
        add_ipv6(&mut dual);
        for (a, b) in v4.iter().zip(&dual) {
            assert_eq!(b.checks.len(), 2 * a.checks.len(), "{}", a.name);
            assert_eq!(
                a.policies, b.policies,
                "the same policies judge both families"
            );
            for c in &a.checks {
                let v6 = b
                    .checks
                    .iter()
                    .find(|d| d.name == format!("{}/ipv6", c.name))
                    .unwrap_or_else(|| panic!("{} has no IPv6 twin", c.name));
                assert!(v6.ipv6 && !c.ipv6);
                assert_eq!((v6.from, v6.to, v6.expect), (c.from, c.to, c.expect));
            }
        }
        let names: BTreeSet<&str> = dual
            .iter()
            .flat_map(|s| s.checks.iter().map(|c| c.name.as_str()))
            .collect();
        assert_eq!(
            names.len(),
            dual.iter().map(|s| s.checks.len()).sum::<usize>()
        );
        // The CIDR scenario allows the world range of each family.
        let cidr = dual
            .iter()
            .find(|s| s.name == "cidr")
            .expect("cidr scenario");
        let to = &cidr.policies[0]["spec"]["egress"][0]["toCIDR"];
        assert_eq!(to, &json!(["198.51.100.0/24", "2001:db8:5100::/64"]));
    }

    #[test]
    fn every_policy_selects_only_this_runs_workloads_and_is_scoped_to_the_cluster() {
        for s in scenarios("abc123", "prod", true) {
            for p in &s.policies {
                assert_eq!(p["clusters"], json!(["prod"]));
                assert_eq!(p["labels"][RUN_LABEL], "abc123");
                assert!(p["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("ct-abc123-")));
                let sel = &p["spec"]["endpointSelector"]["matchLabels"];
                assert_eq!(sel[RUN_LABEL], "abc123", "{}: {p}", s.name);
                // And the spec is a valid Weft policy.
                let spec: weft_model::policy::PolicySpec =
                    serde_json::from_value(p["spec"].clone()).expect("spec parses");
                assert!(spec.validate().is_ok(), "{}: {p}", s.name);
            }
        }
    }

    #[test]
    fn policies_decide_each_check_as_the_reference_evaluator_does() {
        use weft_model::policy::{
            evaluate, Decision, FlowProtocol, Peer, Reason, Subject, Traffic, Verdict,
        };
        let labels = |r: Role| -> weft_model::labels::Labels {
            [
                (RUN_LABEL.to_string(), "r1".to_string()),
                (ROLE_LABEL.to_string(), r.label().to_string()),
            ]
            .into()
        };
        // A resolving check reaches the address under the name it looked up.
        let peer = |r: Role, name: Option<&str>| {
            if r.is_world() {
                let p = Peer::world("198.51.100.254".parse().expect("ip"));
                name.map_or(p.clone(), |n| p.with_dns_name(n))
            } else {
                Peer::endpoint(labels(r))
            }
        };
        // Allowed only by rules with L7 rules: the proxy decides per request or query.
        let by_proxy = |d: &Decision| {
            d.verdict == Verdict::Allowed && matches!(d.reason, Reason::AllowedBy { l7: true, .. })
        };
        let mut judged = 0;
        for s in scenarios("r1", "prod", true) {
            let specs: Vec<weft_model::policy::PolicySpec> = s
                .policies
                .iter()
                .map(|p| serde_json::from_value(p["spec"].clone()).expect("spec"))
                .collect();
            for c in &s.checks {
                // Host and service checks have no policy on their path here.
                let (From::Workload(src), To::Workload(dst, port)) = (c.from, c.to) else {
                    continue;
                };
                let name = match c.l7 {
                    Some(L7::Resolve { name }) => Some(name),
                    _ => None,
                };
                let egress_to = |peer: Peer, proto, port| {
                    evaluate(
                        &specs,
                        &Subject::endpoint(labels(src)),
                        &Traffic::egress(peer, proto, port),
                    )
                };
                if name.is_some() {
                    // The lookup goes to the DNS proxy, which answers or refuses.
                    let lookup = egress_to(peer(Role::World, None), FlowProtocol::Udp, 53);
                    assert!(by_proxy(&lookup), "{}: {lookup:?}", c.name);
                }
                if c.expect == Expect::DnsRefused {
                    judged += 1;
                    continue;
                }
                let egress = egress_to(peer(dst, name), FlowProtocol::Tcp, port);
                let ingress = if dst.is_world() {
                    Decision {
                        verdict: Verdict::DefaultAllowed,
                        reason: Reason::NotEnforced,
                    }
                } else {
                    evaluate(
                        &specs,
                        &Subject::endpoint(labels(dst)),
                        &Traffic::ingress(peer(src, None), FlowProtocol::Tcp, port),
                    )
                };
                let allowed =
                    egress.verdict != Verdict::Denied && ingress.verdict != Verdict::Denied;
                let want = matches!(c.expect, Expect::Allowed | Expect::HttpDenied);
                assert_eq!(allowed, want, "{}: {}", s.name, c.name);
                if matches!(c.l7, Some(L7::Http { .. })) {
                    assert!(by_proxy(&ingress), "{}: {ingress:?}", c.name);
                }
                judged += 1;
            }
        }
        assert!(judged >= 19, "{judged}");
    }
}
