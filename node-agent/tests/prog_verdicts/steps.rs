//! A packet through a program and what it must come to: the return code and the one counter
//! (verdict, drop reason) it bumps.

use node_agent::datapath::{drop_reason_name, verdict_name, Datapath};
use weft_datapath_common as c;

use crate::common::{TC_ACT_OK, TC_ACT_SHOT};
use crate::run;
use Want::{Dropped, Forward, PassUncounted};

/// No rule allows it (default deny).
pub(crate) const DENIED: Want = Dropped(c::DROP_POLICY_DENIED);
/// A deny rule matched.
pub(crate) const DENY_RULE: Want = Dropped(c::DROP_DENY_RULE);
/// The endpoint address is not in the endpoint map.
pub(crate) const NOT_AN_ENDPOINT: Want = Dropped(c::DROP_UNKNOWN_ENDPOINT);

/// What one packet must come to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Want {
    /// `TC_ACT_OK`, counted as forwarded.
    Forward,
    /// `TC_ACT_SHOT`, counted as dropped for this reason.
    Dropped(u8),
    /// `TC_ACT_OK`, counted nowhere: link-local control traffic (ARP, neighbour discovery)
    /// and the pass-through program.
    PassUncounted,
}

impl Want {
    /// The return code and the counters (verdict, reason) that go up by one.
    pub(crate) fn outcome(self) -> (u32, Vec<(u8, u8)>) {
        match self {
            Forward => (TC_ACT_OK, vec![(c::VERDICT_FORWARDED, c::DROP_NONE)]),
            Dropped(reason) => (TC_ACT_SHOT, vec![(c::VERDICT_DROPPED, reason)]),
            PassUncounted => (TC_ACT_OK, vec![]),
        }
    }
}

/// One packet through one program.
pub(crate) struct Step {
    pub(crate) what: &'static str,
    pub(crate) prog: &'static str,
    pub(crate) pkt: Vec<u8>,
    pub(crate) want: Want,
}

pub(crate) fn step(what: &'static str, prog: &'static str, pkt: Vec<u8>, want: Want) -> Step {
    Step {
        what,
        prog,
        pkt,
        want,
    }
}

/// Counters that moved, by name and by how much: "DROPPED/POLICY_DENIED +1".
fn counted(moved: &[((u8, u8), u64)]) -> String {
    let names: Vec<String> = moved
        .iter()
        .map(|&((v, r), n)| match drop_reason_name(r) {
            "" => format!("{} +{n}", verdict_name(v)),
            reason => format!("{}/{reason} +{n}", verdict_name(v)),
        })
        .collect();
    format!("[{}]", names.join(", "))
}

fn tc_act_name(ret: u32) -> String {
    match ret {
        TC_ACT_OK => "TC_ACT_OK".into(),
        TC_ACT_SHOT => "TC_ACT_SHOT".into(),
        other => other.to_string(),
    }
}

/// Runs `steps` in order; returns one line (naming `case` and the step) for each step whose
/// return code or counters are not the expected ones.
pub(crate) fn check(dp: &Datapath, case: &str, steps: &[Step]) -> Vec<String> {
    let mut failures = Vec::new();
    for s in steps {
        let before = dp.counters().unwrap().rows;
        let got = run(dp, s.prog, &s.pkt);
        let after = dp.counters().unwrap().rows;
        // Every counter that moved, and by how much: exactly the expected one, by one.
        let moved: Vec<((u8, u8), u64)> = after
            .iter()
            .map(|(k, (p, _))| (*k, p - before.get(k).map_or(0, |r| r.0)))
            .filter(|(_, d)| *d != 0)
            .collect();
        let (want_ret, want_rows) = s.want.outcome();
        let want_moved: Vec<((u8, u8), u64)> = want_rows.into_iter().map(|k| (k, 1)).collect();
        if got != want_ret || moved != want_moved {
            failures.push(format!(
                "{case}: {}: returned {}, counted {}; want {}, {}",
                s.what,
                tc_act_name(got),
                counted(&moved),
                tc_act_name(want_ret),
                counted(&want_moved),
            ));
        }
    }
    failures
}

/// [`check`], failing the test with every mismatch.
pub(crate) fn expect(dp: &Datapath, case: &str, steps: &[Step]) {
    let failures = check(dp, case, steps);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
