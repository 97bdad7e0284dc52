//! The stored form of flows: one node's batch is one *block*, a single row whose flows are
//! packed column by column (protobuf packed varints, strings and label sets once per block
//! in a dictionary). Postgres then pays its per-row costs (heap tuple, index entries, WAL
//! record header, row-level security check) once per block instead of once per flow,
//! which is what lets one 2-core machine ingest over 100,000 flows/s; a row per flow
//! tops out near 25,000 with the indexes a query needs.
//!
//! Each block also carries what lets a query skip it without unpacking it ([`keys`]) and
//! its share of the service map ([`EdgeAgg`]). Everything here is pure: the store
//! ([`super::pg`]) moves blocks in and out of Postgres.
//!
//! - `codec`: packing and unpacking the columns;
//! - `keys`: the keys a block is skipped by;
//! - `edges`: the block's service-map edges.

mod codec;
mod edges;
mod keys;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use weft_model::flow::{DropReason, Verdict};
use weft_model::labels::Labels;

pub use codec::{decode, encode, CorruptBlock, Decoded, Encoded};
pub use edges::{EdgeAgg, EdgeInput, EdgeMap};
pub use keys::required_keys;

/// Flows a block holds at most; a record's id is `block << INDEX_BITS | index`.
pub const MAX_FLOWS: usize = 1 << INDEX_BITS;
const INDEX_BITS: u32 = 16;

/// A record's id, unique across the tenant's flows and growing with ingest order.
pub fn record_id(block: i64, index: usize) -> i64 {
    (block << INDEX_BITS) | index as i64
}

/// One side of a flow, enriched.
#[derive(Debug, Clone)]
pub struct NewPeer {
    pub ip: IpAddr,
    pub port: u16,
    pub endpoint_id: Option<Uuid>,
    pub endpoint_name: Option<String>,
    pub identity: u32,
    /// Shared with the enrichment cache: the same few label sets recur in every batch.
    pub labels: Arc<Labels>,
}

/// A flow ready to store.
#[derive(Debug, Clone)]
pub struct NewFlow {
    pub time: DateTime<Utc>,
    pub src: NewPeer,
    pub dst: NewPeer,
    pub service_id: Option<Uuid>,
    pub service_name: Option<String>,
    pub protocol: u8,
    pub verdict: Verdict,
    pub drop_reason: Option<DropReason>,
    pub direction: String,
    pub observation_point: String,
    pub tcp_flags: u8,
    pub bytes: i64,
    pub packets: i64,
    pub count: i64,
    /// One HTTP request the agent's L7 proxy judged (an `L7` record).
    pub l7: Option<weft_model::flow::L7Info>,
}
