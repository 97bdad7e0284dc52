//! The test kit of every Weft suite (a dev-dependency only, never a normal one). One job a
//! module:
//!
//! - [`db`]: a fresh, migrated database on the private PostgreSQL `cargo xtask test` starts
//!   (`WEFT_TEST_DATABASE_URL`), and the other environment the harnesses read;
//! - [`server`]: control-api's state, served on loopback (REST, agent service) or driven
//!   in-process, and the [`server::Reply`] every call answers with;
//! - [`fixtures`]: tenants, API tokens and clusters, over any [`fixtures::Rest`] caller;
//! - [`sse`]: a Server-Sent Events reader for the flow stream;
//! - [`tmp`]: temp dirs (the `tempfile` crate), named after the test's tag;
//! - [`ports`]: loopback ports for servers a test starts;
//! - [`run`]: what one run of a command-line program under test did (`weft`, `terraform`);
//! - `bpf` and `netns` (feature `datapath`): whether the datapath can run here, and clients
//!   run inside a pod's network namespace.

pub mod db;
pub mod fixtures;
pub mod ports;
pub mod run;
pub mod server;
pub mod sse;
pub mod tmp;

#[cfg(feature = "datapath")]
pub mod bpf;
#[cfg(feature = "datapath")]
pub mod netns;
