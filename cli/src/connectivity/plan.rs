//! What `weft connectivity test` creates and checks, and how a check is judged: pure, so
//! the scenarios and the verdict rules are unit-tested without a control plane.
//!
//! Every object of a run carries the label `weft-ct-run=<run id>` and every policy selects
//! only workloads with that label, so a run never changes what the tenant's own workloads
//! may do, and `weft connectivity cleanup` finds leftovers of any run.

use serde::Serialize;
use serde_json::{json, Value};

use crate::flows::Flow;

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
    /// Echo server outside the cluster (node A).
    World,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Client,
        Role::Client2,
        Role::EchoSame,
        Role::EchoOther,
        Role::World,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Client2 => "client2",
            Role::EchoSame => "echo-same",
            Role::EchoOther => "echo-other",
            Role::World => "world",
        }
    }

    /// The role label value policies select on (both echo servers share `echo`).
    pub fn label(self) -> &'static str {
        match self {
            Role::EchoSame | Role::EchoOther => "echo",
            r => r.as_str(),
        }
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
            kind: if role == Role::World { "world" } else { "pod" },
            labels: json!({RUN_LABEL: run, ROLE_LABEL: role.label()}),
            echo_ports: match role {
                Role::Client | Role::Client2 => Vec::new(),
                Role::World => vec![ECHO_PORT],
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

/// What should happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// The echo answers and a `FORWARDED` flow is recorded.
    Allowed,
    /// No answer and a `DROPPED` flow with this drop reason is recorded.
    Denied(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    /// Over IPv6 (the workloads' and the service's IPv6 addresses); its name ends in `/ipv6`.
    pub ipv6: bool,
    pub from: From,
    pub to: To,
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

fn check(name: &str, from: From, to: To, expect: Expect) -> Check {
    Check {
        name: name.to_string(),
        ipv6: false,
        from,
        to,
        expect,
    }
}

/// The scenarios, in order. Checks that need a second node are left out without one.
pub fn scenarios(run: &str, cluster: &str, two_nodes: bool) -> Vec<Scenario> {
    use Expect::{Allowed, Denied};
    use Role::{Client, Client2, EchoOther, EchoSame, World};
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

/// What a probe saw, as the API reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeSeen {
    /// `connected`, `refused`, `timeout` or `error`.
    pub outcome: String,
    pub detail: String,
    /// The echo server that answered.
    pub reply_from: Option<String>,
}

/// What the flow records showed for the probe's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowsSeen {
    /// A flow with the expected verdict (and drop reason).
    Matching,
    /// None with the expected verdict; these verdicts (and reasons) were seen instead.
    Other(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub passed: bool,
    /// Why it failed, or what happened when it passed.
    pub why: String,
}

/// Judges a check from what the probe saw and what the flows showed. For the service, the
/// answer must come from one of the service's backends.
pub fn judge(
    check: &Check,
    probe: &ProbeSeen,
    flows: &FlowsSeen,
    backends: &[String],
) -> Judgement {
    let fail = |why: String| Judgement { passed: false, why };
    match check.expect {
        Expect::Allowed => {
            if probe.outcome != "connected" {
                return fail(format!(
                    "expected the connection to succeed, it ended {}{}",
                    probe.outcome,
                    suffix(&probe.detail)
                ));
            }
            if check.to == To::Service
                && !probe
                    .reply_from
                    .as_ref()
                    .is_some_and(|r| backends.contains(r))
            {
                return fail(format!(
                    "the service answered from {:?}, not one of its backends",
                    probe.reply_from.as_deref().unwrap_or("nobody")
                ));
            }
            match flows {
                FlowsSeen::Matching => Judgement {
                    passed: true,
                    why: format!(
                        "connected{}; FORWARDED flow recorded",
                        probe
                            .reply_from
                            .as_deref()
                            .map(|r| format!(" to {r}"))
                            .unwrap_or_default()
                    ),
                },
                FlowsSeen::Other(seen) => fail(format!(
                    "connected, but no FORWARDED flow was recorded (seen: {})",
                    seen_list(seen)
                )),
            }
        }
        Expect::Denied(reason) => {
            if probe.outcome == "connected" {
                return fail(format!(
                    "expected a policy drop, but the connection succeeded{}",
                    probe
                        .reply_from
                        .as_deref()
                        .map(|r| format!(" (answered by {r})"))
                        .unwrap_or_default()
                ));
            }
            if probe.outcome == "error" {
                return fail(format!("the probe failed to run{}", suffix(&probe.detail)));
            }
            match flows {
                FlowsSeen::Matching => Judgement {
                    passed: true,
                    why: format!("{}; DROPPED ({reason}) flow recorded", probe.outcome),
                },
                FlowsSeen::Other(seen) => fail(format!(
                    "no answer ({}), but no DROPPED {reason} flow was recorded (seen: {})",
                    probe.outcome,
                    seen_list(seen)
                )),
            }
        }
    }
}

fn suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

fn seen_list(seen: &[String]) -> String {
    if seen.is_empty() {
        "no flows".to_string()
    } else {
        seen.join(", ")
    }
}

/// Whether a flow shows the expected verdict.
pub fn flow_matches(expect: Expect, flow: &Flow) -> bool {
    match expect {
        Expect::Allowed => flow.verdict == "FORWARDED",
        Expect::Denied(reason) => {
            flow.verdict == "DROPPED" && flow.drop_reason.as_deref() == Some(reason)
        }
    }
}

/// A flow's verdict (and drop reason) for "seen instead" lists.
pub fn flow_summary(flow: &Flow) -> String {
    match flow.drop_reason.as_deref() {
        Some(r) if !r.is_empty() => format!("{} {r}", flow.verdict),
        _ => flow.verdict.clone(),
    }
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
        use weft_model::policy::{evaluate, FlowProtocol, Peer, Subject, Traffic, Verdict};
        let labels = |r: Role| -> weft_model::labels::Labels {
            [
                (RUN_LABEL.to_string(), "r1".to_string()),
                (ROLE_LABEL.to_string(), r.label().to_string()),
            ]
            .into()
        };
        let peer = |r: Role| {
            if r == Role::World {
                Peer::world("198.51.100.254".parse().expect("ip"))
            } else {
                Peer::endpoint(labels(r))
            }
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
                let egress = evaluate(
                    &specs,
                    &Subject::endpoint(labels(src)),
                    &Traffic::egress(peer(dst), FlowProtocol::Tcp, port),
                )
                .verdict;
                let ingress = if dst == Role::World {
                    Verdict::DefaultAllowed
                } else {
                    evaluate(
                        &specs,
                        &Subject::endpoint(labels(dst)),
                        &Traffic::ingress(peer(src), FlowProtocol::Tcp, port),
                    )
                    .verdict
                };
                let allowed = egress != Verdict::Denied && ingress != Verdict::Denied;
                assert_eq!(
                    allowed,
                    c.expect == Expect::Allowed,
                    "{}: {}",
                    s.name,
                    c.name
                );
                judged += 1;
            }
        }
        assert!(judged >= 12, "{judged}");
    }

    fn seen(outcome: &str, reply_from: Option<&str>) -> ProbeSeen {
        ProbeSeen {
            outcome: outcome.into(),
            detail: String::new(),
            reply_from: reply_from.map(str::to_string),
        }
    }

    #[test]
    fn a_check_passes_only_when_traffic_and_flows_both_agree() {
        let allowed = check(
            "a",
            From::Workload(Role::Client),
            To::Workload(Role::EchoSame, 8080),
            Expect::Allowed,
        );
        let denied = check(
            "d",
            From::Workload(Role::Client),
            To::Workload(Role::EchoSame, 8080),
            Expect::Denied(POLICY_DENIED),
        );
        let svc = check(
            "s",
            From::Workload(Role::Client),
            To::Service,
            Expect::Allowed,
        );
        let ok = FlowsSeen::Matching;
        let none = FlowsSeen::Other(vec![]);
        assert!(judge(&allowed, &seen("connected", Some("x")), &ok, &[]).passed);
        assert!(!judge(&allowed, &seen("timeout", None), &ok, &[]).passed);
        let j = judge(&allowed, &seen("connected", Some("x")), &none, &[]);
        assert!(
            !j.passed && j.why.contains("no FORWARDED flow"),
            "{}",
            j.why
        );
        assert!(judge(&denied, &seen("timeout", None), &ok, &[]).passed);
        let j = judge(&denied, &seen("connected", Some("x")), &ok, &[]);
        assert!(!j.passed && j.why.contains("succeeded"), "{}", j.why);
        let j = judge(
            &denied,
            &seen("timeout", None),
            &FlowsSeen::Other(vec!["FORWARDED".into()]),
            &[],
        );
        assert!(!j.passed && j.why.contains("seen: FORWARDED"), "{}", j.why);
        assert!(!judge(&denied, &seen("error", None), &ok, &[]).passed);
        let backends = vec!["ct-r-echo-same".to_string()];
        assert!(
            judge(
                &svc,
                &seen("connected", Some("ct-r-echo-same")),
                &ok,
                &backends
            )
            .passed
        );
        assert!(
            !judge(
                &svc,
                &seen("connected", Some("someone-else")),
                &ok,
                &backends
            )
            .passed
        );
    }

    #[test]
    fn flows_match_on_verdict_and_drop_reason() {
        let flow = |v: Value| -> Flow { serde_json::from_value(v).expect("a flow") };
        let fwd = flow(json!({"verdict": "FORWARDED"}));
        let drop = flow(json!({"verdict": "DROPPED", "drop_reason": "POLICY_DENIED"}));
        assert!(flow_matches(Expect::Allowed, &fwd));
        assert!(!flow_matches(Expect::Allowed, &drop));
        assert!(flow_matches(Expect::Denied(POLICY_DENIED), &drop));
        assert!(!flow_matches(Expect::Denied(DENY_RULE), &drop));
        assert_eq!(flow_summary(&drop), "DROPPED POLICY_DENIED");
        assert_eq!(flow_summary(&fwd), "FORWARDED");
    }
}
