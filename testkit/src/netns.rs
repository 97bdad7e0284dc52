//! Clients run inside a pod's network namespace of a test topology: the namespace is
//! entered on a thread of its own, so the test's thread stays where it is.

use std::net::SocketAddr;
use std::time::Duration;

use node_agent::netns::Topology;
use node_agent::tools;

/// How long a pod's client waits for an answer: a dropped packet shows as no answer.
pub const WAIT: Duration = Duration::from_millis(700);

/// A TCP request to `target` from pod `pod` of `topo`; returns who answered.
pub fn tcp_from(
    topo: &Topology,
    pod: usize,
    target: impl Into<SocketAddr>,
) -> std::io::Result<String> {
    let target = target.into();
    topo.pods[pod]
        .ns
        .spawn(move || tools::tcp_request(target, WAIT).map(|(a, _)| a))
        .join()
        .expect("client thread")?
}

/// A UDP request to `target` from pod `pod` of `topo`; returns who answered.
pub fn udp_from(
    topo: &Topology,
    pod: usize,
    target: impl Into<SocketAddr>,
) -> std::io::Result<String> {
    let target = target.into();
    topo.pods[pod]
        .ns
        .spawn(move || tools::udp_request(target, WAIT).map(|(a, _)| a))
        .join()
        .expect("client thread")?
}
