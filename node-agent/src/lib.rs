//! Weft node agent library: the eBPF datapath API, namespace/cgroup helpers for tests and the
//! benchmark, the node-local debug commands, and the test workloads and probes of
//! `weft connectivity test`.

pub mod agent;
pub mod control;
pub mod datapath;
pub mod debug;
pub mod dns;
pub mod endpoint;
pub mod files;
pub mod flows;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod proxy;
pub mod routing;
pub mod sim;
pub mod tools;
pub mod workload;
