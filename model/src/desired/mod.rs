//! The desired-state compiler: "compile centrally, program locally".
//!
//! [`compile`] turns one tenant's declared state ([`TenantView`]) into what one node's agent
//! programs ([`NodeDesiredState`]): its endpoints with identities and enforcement flags, the
//! ipcache (prefix → identity), per-endpoint rules resolved to peer identities, and services.
//! [`diff`] and [`apply`] turn consecutive outputs into the deltas streamed to the agent.
//!
//! The rules reproduce [`crate::policy::evaluate`] exactly for every peer the ipcache can
//! name (the tests check it flow by flow). How the peers map onto identities:
//! - endpoint selectors: the identities of the tenant's endpoints in the node's cluster whose
//!   labels match (endpoints of other clusters have no ipcache entry here: from this node
//!   they are outside peers);
//! - entities: their reserved identity; `cluster` = every endpoint identity of the cluster and
//!   every reserved in-cluster identity; `world` = `world` and every CIDR identity;
//!   `world-ipv4`/`-ipv6` = the CIDR identities of that family (the compiler then adds
//!   `0.0.0.0/0` / `::/0` to the CIDRs so every outside address of the family has one);
//!   `all` = any peer;
//! - CIDRs: a CIDR rule allows the identities of every CIDR prefix in the ipcache that lies
//!   inside it and inside none of its `except`s. The datapath resolves an address to its
//!   longest prefix, so this is exactly "inside the CIDR and outside the excepts". In-cluster
//!   addresses have /32 (/128) entries and so never take a CIDR identity: CIDR rules match
//!   only outside peers, as in the evaluator.
//!
//! HTTP rules (`toPorts[].rules.http`) compile to allow entries marked `l7` with the rules
//! ([`PolicyRule::http`]): the agent redirects their TCP connections to its L7 proxy, which
//! checks every request. Other protocols of such a port rule allow nothing. DNS rules
//! (`rules.dns`, egress) compile the same way for UDP and TCP ([`PolicyRule::dns`]), to the
//! agent's DNS proxy.
//!
//! `toFQDNs` selectors are peers of their own: entries with peer [`crate::identity::FQDN_PEER`]
//! (which no address has) and the selector ([`PolicyRule::fqdn`]). The agent learns the
//! addresses of matching names from the answers its DNS proxy passes and gives them
//! node-local identities that these entries then allow.
//!
//! Not enforced (see [`crate::policy::not_enforced`]): the `unmanaged` / `kube-apiserver`
//! entities (world, and host and remote-node for the API server) compile to
//! [`Action::Unsupported`]: nothing is allowed, and the datapath reports such drops as
//! `UNSUPPORTED_RULE`. Deny rules decide at L4, and deny the stand-in peers. An unsupported
//! entry wholly covered by a plain allow is dropped, since the evaluator allows those flows
//! without L7. `health`, `init` and `ingress` select no peer: nothing carries them.
//!
//! The node's host is an endpoint too ([`HOST_ENDPOINT_ID`], identity `host`): `nodeSelector`
//! policies that select the node's labels give its rules.
//!
//! Named ports resolve per destination endpoint, as in Cilium: on ingress against the ports
//! the subject endpoint declares ([`EndpointView::named_ports`]), on egress against those the
//! peer identity's endpoints declare (every endpoint's for an any-peer rule). A name the
//! destination does not declare, or declares for another protocol, matches nothing there:
//! an allow allows nothing and a deny never widens to other ports.
//!
//! Listed in [`NodeDesiredState::unsupported`] as well as compiled fail-closed: `toFQDNs` on
//! deny rules (which validation refuses): every outside peer is denied.
//!
//! The code is laid out by concern: `view` holds the input and output types, `compile`
//! the per-node compiler, `peers` the resolution of one rule's peers and ports into
//! identities, and `delta` the deltas between two states.

mod compile;
mod delta;
mod peers;
mod view;

pub use compile::{compile, find_node, ClusterPlan};
pub use delta::{apply, diff, ipcache_diff, node_ipcache_delta, nodes_diff, Delta};
pub use view::*;

#[cfg(test)]
mod tests;
