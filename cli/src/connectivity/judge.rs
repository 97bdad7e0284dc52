//! How a check of `weft connectivity test` is judged from what its probe saw and the flow
//! records it left: pure, unit-tested without a control plane.

use serde::Serialize;

use super::plan::{Check, Expect, To, L7, POLICY_DENIED};
use crate::flows::Flow;

/// What a probe saw, as the API reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeSeen {
    /// `connected`, `refused`, `timeout` or `error`.
    pub outcome: String,
    pub detail: String,
    /// The echo server that answered.
    pub reply_from: Option<String>,
    /// The HTTP answer's status (HTTP checks).
    pub http_status: Option<u16>,
    /// The DNS answer's response code (resolving checks).
    pub dns_rcode: Option<String>,
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
    let pass = |why: String| Judgement { passed: true, why };
    let status = || {
        probe
            .http_status
            .map_or("no HTTP answer".to_string(), |s| format!("HTTP {s}"))
    };
    let rcode = || probe.dns_rcode.as_deref().unwrap_or("no answer");
    // A connection expected to be tried needs its lookup to have worked first.
    if let (Some(L7::Resolve { name }), Expect::Allowed | Expect::Denied(_)) =
        (check.l7, check.expect)
    {
        if probe.dns_rcode.as_deref() != Some("NOERROR") {
            return fail(format!(
                "the lookup of {name} failed ({}), so the connection was never tried{}",
                rcode(),
                suffix(&probe.detail)
            ));
        }
    }
    match check.expect {
        Expect::Allowed => {
            if probe.outcome != "connected" {
                return fail(format!(
                    "expected the connection to succeed, it ended {}{}",
                    probe.outcome,
                    suffix(&probe.detail)
                ));
            }
            if matches!(check.l7, Some(L7::Http { .. })) && probe.http_status != Some(200) {
                return fail(format!(
                    "expected the request to be answered 200, it got {}{}",
                    status(),
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
        Expect::HttpDenied => {
            if probe.outcome != "connected" || probe.http_status != Some(403) {
                return fail(format!(
                    "expected the proxy to answer 403, the probe ended {} with {}{}",
                    probe.outcome,
                    status(),
                    suffix(&probe.detail)
                ));
            }
            match flows {
                FlowsSeen::Matching => pass("403 from the proxy; L7 DROPPED flow recorded".into()),
                FlowsSeen::Other(seen) => fail(format!(
                    "403, but no L7 DROPPED POLICY_DENIED flow was recorded (seen: {})",
                    seen_list(seen)
                )),
            }
        }
        Expect::DnsRefused => {
            if probe.dns_rcode.as_deref() != Some("REFUSED") {
                return fail(format!(
                    "expected the lookup to be refused, it was answered {} and the probe \
                     ended {}{}",
                    rcode(),
                    probe.outcome,
                    suffix(&probe.detail)
                ));
            }
            match flows {
                FlowsSeen::Matching => {
                    pass("REFUSED by the DNS proxy; DNS DROPPED flow recorded".into())
                }
                FlowsSeen::Other(seen) => fail(format!(
                    "REFUSED, but no DNS DROPPED POLICY_DENIED flow was recorded (seen: {})",
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
        Expect::HttpDenied | Expect::DnsRefused => {
            flow.verdict == "DROPPED" && flow.drop_reason.as_deref() == Some(POLICY_DENIED)
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
    use crate::connectivity::plan::{check, From, Role, DENY_RULE};
    use serde_json::{json, Value};

    fn seen(outcome: &str, reply_from: Option<&str>) -> ProbeSeen {
        ProbeSeen {
            outcome: outcome.into(),
            detail: String::new(),
            reply_from: reply_from.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn l7_checks_need_the_status_or_response_code_and_the_l7_flow() {
        use crate::connectivity::plan::L7;
        let l7 = |l7: L7, expect| Check {
            l7: Some(l7),
            ..check(
                "x",
                From::Workload(Role::Client),
                To::Workload(Role::EchoSame, 8080),
                expect,
            )
        };
        let get = L7::Http {
            method: "GET",
            path: "/public",
        };
        let http = |status: u16, from: Option<&str>| ProbeSeen {
            http_status: Some(status),
            ..seen("connected", from)
        };
        let ok = FlowsSeen::Matching;
        let none = FlowsSeen::Other(vec!["FORWARDED".into()]);
        // HTTP allowed: 200 from the echo.
        let allowed = l7(get, Expect::Allowed);
        assert!(judge(&allowed, &http(200, Some("e")), &ok, &[]).passed);
        let j = judge(&allowed, &http(403, None), &ok, &[]);
        assert!(!j.passed && j.why.contains("got HTTP 403"), "{}", j.why);
        // HTTP denied: the proxy's 403 and an L7 drop flow; a 200 or a timeout fails.
        let denied = l7(get, Expect::HttpDenied);
        assert!(judge(&denied, &http(403, None), &ok, &[]).passed);
        let j = judge(&denied, &http(403, None), &none, &[]);
        assert!(!j.passed && j.why.contains("seen: FORWARDED"), "{}", j.why);
        assert!(!judge(&denied, &http(200, Some("e")), &ok, &[]).passed);
        assert!(!judge(&denied, &seen("timeout", None), &ok, &[]).passed);

        // Resolving checks: the lookup must work before a connection counts either way.
        let name = L7::Resolve { name: "a.test" };
        let dns = |outcome: &str, rcode: &str| ProbeSeen {
            dns_rcode: (!rcode.is_empty()).then(|| rcode.to_string()),
            ..seen(outcome, (outcome == "connected").then_some("w"))
        };
        let reach = l7(name, Expect::Allowed);
        assert!(judge(&reach, &dns("connected", "NOERROR"), &ok, &[]).passed);
        let drop = l7(name, Expect::Denied(POLICY_DENIED));
        assert!(judge(&drop, &dns("timeout", "NOERROR"), &ok, &[]).passed);
        let j = judge(&drop, &dns("refused", "REFUSED"), &ok, &[]);
        assert!(!j.passed && j.why.contains("never tried"), "{}", j.why);
        assert!(!judge(&drop, &dns("timeout", ""), &ok, &[]).passed);
        let refused = l7(name, Expect::DnsRefused);
        assert!(judge(&refused, &dns("refused", "REFUSED"), &ok, &[]).passed);
        let j = judge(&refused, &dns("connected", "NOERROR"), &ok, &[]);
        assert!(!j.passed && j.why.contains("answered NOERROR"), "{}", j.why);
        assert!(!judge(&refused, &dns("refused", "REFUSED"), &none, &[]).passed);
        // Both L7 denials match only a POLICY_DENIED drop.
        let f = |v: Value| -> Flow { serde_json::from_value(v).expect("a flow") };
        let l7_drop = f(json!({"verdict": "DROPPED", "drop_reason": "POLICY_DENIED"}));
        assert!(flow_matches(Expect::HttpDenied, &l7_drop));
        assert!(flow_matches(Expect::DnsRefused, &l7_drop));
        assert!(!flow_matches(
            Expect::HttpDenied,
            &f(json!({"verdict": "FORWARDED"}))
        ));
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
