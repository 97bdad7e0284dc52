//! Weft's domain model. Pure logic with no I/O: every other Weft crate depends on it.
//!
//! - [`labels`], [`selector`]: labels and Kubernetes-style label selectors (structured and
//!   query syntax).
//! - [`policy`]: the native policy spec (Cilium `Rule` field names), its validation and the
//!   reference evaluator ([`policy::evaluate`]) the compiler and datapath are checked against.
//! - [`cnp`]: import of CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy YAML.
//! - [`desired`]: the desired-state compiler (tenant state → one node's programmable state)
//!   and the deltas between consecutive states.
//! - [`identity`]: reserved, allocated and CIDR security identities.
//! - [`flow`]: flow records as the API shows them, and the `hubble observe`-style filter
//!   over them (parsed from query parameters, matched in memory).
//! - [`workload`]: test workloads and probes (`weft connectivity test`), address allocation
//!   and the echo protocol.
//! - [`routing`]: how a cluster's nodes carry pod traffic to each other (tunnel or native
//!   routes), the routes and MTU that follow.
//! - [`error::FieldError`]: the `{field, message}` every validator returns.

#[macro_use]
mod named_enum;

pub mod cnp;
pub mod contract;
pub mod desired;
pub mod error;
pub mod flow;
pub mod identity;
pub mod labels;
pub mod maglev;
pub mod names;
pub mod policy;
pub mod routing;
pub mod selector;
pub mod service;
pub mod workload;
