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
