//! Weft node agent library: the eBPF datapath API, namespace/cgroup helpers for tests and the
//! benchmark, and the node-local debug commands.

pub mod agent;
pub mod datapath;
pub mod debug;
pub mod endpoint;
pub mod netns;
pub mod tools;
