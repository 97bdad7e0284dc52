//! A revision in parts (capability [`CAPABILITY_PARTS`](crate::CAPABILITY_PARTS)).
//!
//! A snapshot holds the node's whole cluster ipcache, so it grows with the fleet; as one
//! message it outgrows gRPC's default 4 MiB decode limit near 100,000 endpoints, and every
//! stream keeps an encode buffer as large as the largest message it ever sent. [`split`]
//! cuts a message into parts of about [`PART_BYTES`] (each list split in order, `continues`
//! set on all but the last); [`Joiner`] puts them back together, so the agent decodes and
//! applies exactly the message that was split, never a part.

use prost::Message;

use crate::v1::sync_response::Kind;
use crate::v1::{Delta, Snapshot, SyncResponse};

/// The size a part aims at (a part holds at least one item, so one larger item makes a
/// larger part): what leaves room in the codec's buffer ([`crate::codec::BUFFER_BYTES`])
/// for a part's envelope and gRPC's 5-byte prefix, so that a stream's encode buffer keeps
/// its first 4 KiB (16 KiB parts grew it to ~10 KiB on average: 5 MB a replica of 500
/// agents).
pub const PART_BYTES: usize = crate::codec::BUFFER_BYTES - 256;

/// The most a joined revision may hold: a control plane sending parts without end is
/// refused rather than followed out of memory.
pub const JOINED_BYTES: usize = 256 * 1024 * 1024;

/// What is wrong with a sequence of parts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PartsError {
    #[error("part of revision {got} arrived while joining revision {joining}")]
    Revision { joining: u64, got: u64 },
    #[error("a part of revision {0} is of another kind (snapshot or delta) than the first")]
    Kind(u64),
    #[error("revision {0} sent in parts holds more than {JOINED_BYTES} bytes")]
    TooLarge(u64),
}

/// `msg` as parts of about `limit` bytes each; one part (`msg` itself) when it fits.
pub fn split(msg: SyncResponse, limit: usize) -> Vec<SyncResponse> {
    // A message without a kind has nothing to cut (and is refused whole by the agent).
    if msg.kind.is_none() || msg.encoded_len() <= limit {
        return vec![msg];
    }
    let (revision, traceparent) = (msg.revision, msg.traceparent);
    let kinds = match msg.kind {
        Some(Kind::Snapshot(s)) => split_snapshot(s, limit)
            .into_iter()
            .map(Kind::Snapshot)
            .collect(),
        Some(Kind::Delta(d)) => split_delta(d, limit).into_iter().map(Kind::Delta).collect(),
        None => vec![],
    };
    let last = kinds.len().saturating_sub(1);
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| SyncResponse {
            revision,
            // Only the first part carries the trace: the joined message has it once.
            traceparent: if i == 0 {
                traceparent.clone()
            } else {
                String::new()
            },
            kind: Some(kind),
            continues: i < last,
        })
        .collect()
}

/// Calls `$m!($args; fields)` with the list fields of a snapshot.
macro_rules! snapshot_lists {
    ($m:ident!($($a:expr),+)) => {
        $m!($($a),+; endpoints, ipcache, policies, services, workloads, probes, nodes)
    };
}

/// Calls `$m!($args; fields)` with the list fields of a delta.
macro_rules! delta_lists {
    ($m:ident!($($a:expr),+)) => {
        $m!($($a),+;
            upsert_endpoints, remove_endpoints, upsert_ipcache, remove_ipcache,
            upsert_policies, remove_policies, upsert_services, remove_services,
            upsert_workloads, remove_workloads, upsert_probes, remove_probes,
            upsert_nodes, remove_nodes)
    };
}

/// Moves the items of the fields of `$whole` into parts of about `$limit` bytes, in order;
/// `$part` starts each part (with the fields every part repeats).
macro_rules! cut {
    ($whole:expr, $limit:expr, $part:expr; $($field:ident),+) => {{
        let mut parts = vec![];
        let mut cur = $part;
        let mut size = 0;
        $(
            for item in $whole.$field {
                // The item's bytes, its length prefix and tag.
                let n = item.encoded_len() + 6;
                if size > 0 && size + n > $limit {
                    parts.push(std::mem::replace(&mut cur, $part));
                    size = 0;
                }
                cur.$field.push(item);
                size += n;
            }
        )+
        parts.push(cur);
        parts
    }};
}

/// Appends the fields of `$b` to those of `$a`.
macro_rules! extend {
    ($a:expr, $b:expr; $($field:ident),+) => {{
        $( $a.$field.extend($b.$field); )+
    }};
}

fn split_snapshot(s: Snapshot, limit: usize) -> Vec<Snapshot> {
    let routing_mode = s.routing_mode;
    let part = || Snapshot {
        routing_mode,
        ..Snapshot::default()
    };
    snapshot_lists!(cut!(s, limit, part()))
}

fn split_delta(d: Delta, limit: usize) -> Vec<Delta> {
    let routing_mode = d.routing_mode;
    let part = || Delta {
        routing_mode,
        ..Delta::default()
    };
    delta_lists!(cut!(d, limit, part()))
}

/// What ends reading a `Sync` stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Rpc(#[from] tonic::Status),
    #[error("refused a sync message: {0}")]
    Parts(#[from] PartsError),
}

/// The agent's side of a `Sync` stream: whole revisions, their parts joined.
pub struct Wholes {
    stream: tonic::Streaming<SyncResponse>,
    joiner: Joiner,
}

impl Wholes {
    pub fn new(stream: tonic::Streaming<SyncResponse>) -> Wholes {
        Wholes {
            stream,
            joiner: Joiner::default(),
        }
    }

    /// The next whole revision; `None` when the stream ended. Cancel-safe: parts already
    /// read stay with `self`.
    pub async fn next(&mut self) -> Result<Option<SyncResponse>, StreamError> {
        loop {
            let Some(part) = self.stream.message().await? else {
                return Ok(None);
            };
            if let Some(whole) = self.joiner.push(part)? {
                return Ok(Some(whole));
            }
        }
    }
}

/// Joins the parts of a revision as they arrive.
#[derive(Default)]
pub struct Joiner {
    joining: Option<(SyncResponse, usize)>,
}

impl Joiner {
    /// Takes the next message of the stream: the whole revision once its last part is in.
    pub fn push(&mut self, msg: SyncResponse) -> Result<Option<SyncResponse>, PartsError> {
        let (whole, held) = match self.joining.take() {
            // A whole message (nearly every one) passes through unmeasured.
            None if !msg.continues => return Ok(Some(msg)),
            None => {
                let size = msg.encoded_len();
                (msg, size)
            }
            Some((mut whole, held)) => {
                if whole.revision != msg.revision {
                    return Err(PartsError::Revision {
                        joining: whole.revision,
                        got: msg.revision,
                    });
                }
                let held = held + msg.encoded_len();
                if held > JOINED_BYTES {
                    return Err(PartsError::TooLarge(msg.revision));
                }
                append(&mut whole, msg)?;
                (whole, held)
            }
        };
        if whole.continues {
            self.joining = Some((whole, held));
            return Ok(None);
        }
        Ok(Some(whole))
    }
}

/// Appends `part`'s lists to `whole`'s; `whole` continues if `part` does.
fn append(whole: &mut SyncResponse, part: SyncResponse) -> Result<(), PartsError> {
    match (&mut whole.kind, part.kind) {
        (Some(Kind::Snapshot(a)), Some(Kind::Snapshot(b))) => snapshot_lists!(extend!(a, b)),
        (Some(Kind::Delta(a)), Some(Kind::Delta(b))) => delta_lists!(extend!(a, b)),
        _ => return Err(PartsError::Kind(whole.revision)),
    }
    whole.continues = part.continues;
    Ok(())
}

// Tested in `convert::tests::parts`, on the random states and deltas made there.
