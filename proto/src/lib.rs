//! The agent <-> control-plane gRPC contract.
//!
//! The Rust code under `src/gen/` is generated from `proto/` by `cargo xtask proto` and
//! checked in, so building needs no `protoc`; a test fails when it is stale. [`convert`]
//! turns the wire types into the model's desired-state types and back, for both sides.

pub mod codec;
pub mod convert;
pub mod parts;

/// Capability version this build speaks. Agents send theirs; the control plane answers
/// within the lower of the two. 3: the routing mode and the cluster's nodes in the desired
/// state (older agents ignore those fields). 4: the L7 proxy — HTTP and DNS rules, `toFQDNs`
/// entries, probes that send HTTP or resolve a name. 5: a revision in parts ([`parts`]).
pub const CAPABILITY_VERSION: u32 = 5;

/// The first capability version with test workloads and probes.
pub const CAPABILITY_PROBES: u32 = 2;

/// The first capability version with the L7 proxy. An older agent refuses L7 allows (fail
/// closed, reported) and gives FQDN entries' peer, which no address has, nothing; but it
/// would run an HTTP or resolving probe as a plain connect, so it is not sent those.
pub const CAPABILITY_L7: u32 = 4;

/// The first capability version that joins a revision sent in parts ([`parts`]).
pub const CAPABILITY_PARTS: u32 = 5;

/// `weft.agent.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!("gen/weft.agent.v1.rs");
}

/// Regenerates the Rust code from the `.proto` files into `out_dir`. Used by
/// `cargo xtask proto` (through the test below) and by the staleness test.
pub fn proto_files() -> (&'static str, &'static str) {
    (
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proto/weft/agent/v1/agent.proto"
        ),
        concat!(env!("CARGO_MANIFEST_DIR"), "/proto"),
    )
}
