//! DNS in the agent: the wire format the DNS proxy reads (`message`). The proxy itself is
//! in `proxy::dns`; what the node learns from the answers it passes, for `toFQDNs`, in
//! `datapath::fqdn`.

pub mod message;
