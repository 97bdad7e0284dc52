//! The flow block codec (control-api's `flows::block`, built here alone): decoding a corrupt
//! or foreign block is an error naming the block, never a panic, and what decodes is a
//! block's worth of records with their ids in order.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../control-api/src/flows/block/mod.rs"]
mod block;

use libfuzzer_sys::fuzz_target;
use weft_model::flow::FlowFilter;

fuzz_target!(|data: &[u8]| {
    match block::decode(7, "node-1", "prod", data, &FlowFilter::default(), |_, _| true) {
        Ok(flows) => {
            assert!(flows.len() <= block::MAX_FLOWS);
            for (i, f) in flows.iter().enumerate() {
                assert_eq!(f.id, block::record_id(7, i), "ids follow the block's order");
                assert_eq!(f.record.node, "node-1");
            }
        }
        Err(e) => assert_eq!(e.block, 7, "{e}"),
    }
});
