//! DNS rules and `toFQDNs`: entries for the agent's DNS proxy and FQDN peers.

use super::*;
use crate::policy::FqdnSelector;

const UDP: Option<u8> = Some(PROTO_UDP);
const SCTP: Option<u8> = Some(PROTO_SCTP);

fn pattern(p: &str) -> FqdnSelector {
    FqdnSelector {
        match_name: None,
        match_pattern: Some(p.into()),
    }
}

fn name(n: &str) -> FqdnSelector {
    FqdnSelector {
        match_name: Some(n.into()),
        match_pattern: None,
    }
}

#[test]
fn dns_rules_go_through_the_dns_proxy_and_fqdns_are_peers_of_their_own() {
    let view = with_policies(vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
        "egress": [
           {"toEntities": ["world"],
            "toPorts": [{"ports": [{"port": "53"}],
                         "rules": {"dns": [{"matchPattern": "*.Allowed.test."}, {"matchName": "a.other.test"}]}}]},
           {"toFQDNs": [{"matchPattern": "*.allowed.test"}, {"matchName": "A.other.test"}],
            "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}
        ]})],
        None,
    )]);
    let s = compile_ok(&view, "n1");
    let rules = &s.policy["web-1"];
    let row = |r: &PolicyRule| {
        (
            r.peer_identity,
            r.fqdn.clone(),
            r.proto,
            r.ports,
            r.action,
            r.l7,
            r.dns.clone(),
        )
    };
    let rows: Vec<_> = rules.iter().map(row).collect();
    let selectors = vec![pattern("*.allowed.test"), name("a.other.test")];
    let fqdn = Some(identity::FQDN_PEER);
    assert_eq!(
        rows,
        vec![
            // DNS over TCP and UDP through the proxy (selectors spelled canonically).
            (
                Some(WORLD),
                None,
                TCP,
                Some((53, 53)),
                Allow,
                true,
                selectors.clone()
            ),
            (
                Some(WORLD),
                None,
                UDP,
                Some((53, 53)),
                Allow,
                true,
                selectors.clone()
            ),
            // Each FQDN selector is a peer of its own: never "any peer".
            (
                fqdn,
                Some(pattern("*.allowed.test")),
                TCP,
                Some((8080, 8080)),
                Allow,
                false,
                vec![]
            ),
            (
                fqdn,
                Some(name("a.other.test")),
                TCP,
                Some((8080, 8080)),
                Allow,
                false,
                vec![]
            ),
            // SCTP speaks no DNS: fails closed.
            (
                Some(WORLD),
                None,
                SCTP,
                Some((53, 53)),
                Action::Unsupported,
                false,
                vec![]
            ),
        ]
    );
    assert!(s.unsupported.is_empty(), "{:?}", s.unsupported);
}

#[test]
fn a_plain_allow_on_the_dns_port_keeps_the_proxy_with_every_name_allowed() {
    let view = with_policies(vec![policy(
        "p",
        &[json!({"endpointSelector": {"matchLabels": {"app": "web"}},
        "egress": [
           {"toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}],
                         "rules": {"dns": [{"matchName": "only.test"}]}}]},
           {"toPorts": [{"ports": [{"port": "1", "endPort": 1000, "protocol": "UDP"}]}]},
           {"toPorts": [{"ports": [{"port": "5353", "protocol": "UDP"}],
                         "rules": {"dns": [{"matchName": "x.test"}]}}]},
           {"toPorts": [{"ports": [{"port": "5000", "endPort": 6000, "protocol": "UDP"}],
                         "rules": {"dns": [{"matchName": "y.test"}]}}]}
        ]})],
        None,
    )]);
    let s = compile_ok(&view, "n1");
    let rows: Vec<_> = s.policy["web-1"]
        .iter()
        .map(|r| (r.ports, r.l7, r.dns.clone()))
        .collect();
    assert_eq!(
        rows,
        vec![
            // Port 53 is allowed whatever the name: the proxy stays (toFQDNs must see the
            // answers) and passes every name.
            (Some((1, 1000)), false, vec![]),
            (Some((53, 53)), true, vec![pattern("*")]),
            // The wider entry is split around the narrower one, which takes the wider one's
            // DNS rules too (alternatives).
            (Some((5000, 5352)), true, vec![name("y.test")]),
            (
                Some((5353, 5353)),
                true,
                vec![name("x.test"), name("y.test")]
            ),
            (Some((5354, 6000)), true, vec![name("y.test")]),
        ]
    );
}
