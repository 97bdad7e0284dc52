//! What the datapath's numbers stand for in the desired state: published by the sync loop
//! after every apply, read by the flow exporter (ep_id / svc_id -> desired-state ids) and
//! `endpoint list` (identities and ids).

use std::collections::BTreeMap;
use std::net::IpAddr;

use weft_model::desired::DesiredEndpoint;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// The node's endpoints as applied (the host endpoint included).
    pub endpoints: Vec<DesiredEndpoint>,
    /// Datapath endpoint id -> desired-state endpoint id.
    pub endpoint_ids: BTreeMap<u32, String>,
    /// Datapath service id (one per frontend) -> desired-state service id.
    pub service_ids: BTreeMap<u32, String>,
}

impl Names {
    /// The applied endpoint that owns `ip`.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&DesiredEndpoint> {
        self.endpoints.iter().find(|e| e.ips.contains(&ip))
    }
}
