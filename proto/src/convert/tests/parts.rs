//! A revision split into parts and joined again is the message that was split, for random
//! snapshots and deltas cut at many sizes.

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{delta, state, CASES};
use crate::codec::BUFFER_BYTES;
use crate::parts::{split, Joiner, PartsError, PART_BYTES};
use crate::v1 as pb;

fn message(rng: &mut StdRng) -> pb::SyncResponse {
    let kind = if rng.gen() {
        pb::sync_response::Kind::Snapshot((&state(rng)).into())
    } else {
        pb::sync_response::Kind::Delta((&delta(rng)).into())
    };
    pb::SyncResponse {
        revision: rng.gen(),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        kind: Some(kind),
        continues: false,
    }
}

#[test]
fn parts_join_to_the_message_that_was_split() {
    let mut split_some = 0;
    for seed in 0..CASES {
        let msg = message(&mut StdRng::seed_from_u64(seed));
        for limit in [1, 100, 400, PART_BYTES] {
            let parts = split(msg.clone(), limit);
            assert!(!parts.is_empty(), "seed {seed}");
            split_some += usize::from(parts.len() > 1);
            let mut joiner = Joiner::default();
            let last = parts.len() - 1;
            for (i, part) in parts.into_iter().enumerate() {
                assert_eq!(part.revision, msg.revision, "seed {seed}");
                assert_eq!(part.continues, i < last, "seed {seed} part {i}");
                assert_eq!(part.traceparent.is_empty(), i > 0, "seed {seed} part {i}");
                // Through bytes, as the agent gets them.
                let part = pb::SyncResponse::decode(part.encode_to_vec().as_slice())
                    .expect("prost decodes what it encoded");
                let joined = joiner.push(part).expect("parts in order join");
                assert_eq!(joined.is_some(), i == last, "seed {seed} part {i}");
                if let Some(joined) = joined {
                    assert_eq!(joined, msg, "seed {seed} limit {limit}");
                }
            }
        }
    }
    assert!(
        split_some > CASES as usize,
        "the cases must split: {split_some}"
    );
}

#[test]
fn a_large_snapshot_goes_out_in_parts_of_about_the_size_asked() {
    let entries = (0..40_000u32)
        .map(|i| pb::IpcacheEntry {
            prefix: format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255),
            identity: 256 + i % 1000,
        })
        .collect();
    let msg = pb::SyncResponse {
        revision: 9,
        kind: Some(pb::sync_response::Kind::Snapshot(pb::Snapshot {
            ipcache: entries,
            routing_mode: pb::RoutingMode::Native as i32,
            ..Default::default()
        })),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        ..Default::default()
    };
    let whole = msg.encoded_len();
    assert!(whole > 8 * PART_BYTES, "{whole}");
    let parts = split(msg.clone(), PART_BYTES);
    assert!(parts.len() >= whole / PART_BYTES, "{} parts", parts.len());
    for p in &parts {
        assert!(p.encoded_len() <= PART_BYTES + 64, "{}", p.encoded_len());
        // With gRPC's length prefix, a part fits the buffer a stream starts with.
        assert!(p.encoded_len() + 5 <= BUFFER_BYTES, "{}", p.encoded_len());
        let Some(pb::sync_response::Kind::Snapshot(s)) = &p.kind else {
            panic!("a snapshot's parts are snapshots");
        };
        assert_eq!(s.routing_mode, pb::RoutingMode::Native as i32, "every part");
    }
    let mut joiner = Joiner::default();
    let joined: Vec<_> = parts
        .into_iter()
        .filter_map(|p| joiner.push(p).expect("in order"))
        .collect();
    assert_eq!(joined, vec![msg]);
}

#[test]
fn parts_of_another_revision_or_kind_are_refused() {
    let part = |revision, snapshot: bool, continues| pb::SyncResponse {
        revision,
        kind: Some(if snapshot {
            pb::sync_response::Kind::Snapshot(pb::Snapshot::default())
        } else {
            pb::sync_response::Kind::Delta(pb::Delta::default())
        }),
        continues,
        ..Default::default()
    };
    let mut j = Joiner::default();
    assert_eq!(j.push(part(3, true, true)), Ok(None));
    assert_eq!(
        j.push(part(4, true, false)),
        Err(PartsError::Revision { joining: 3, got: 4 })
    );
    let mut j = Joiner::default();
    assert_eq!(j.push(part(3, true, true)), Ok(None));
    assert_eq!(j.push(part(3, false, false)), Err(PartsError::Kind(3)));
    // A whole message passes through as it is.
    let mut j = Joiner::default();
    assert_eq!(
        j.push(part(5, false, false)),
        Ok(Some(part(5, false, false)))
    );
}
