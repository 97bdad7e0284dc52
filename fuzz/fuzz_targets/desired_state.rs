//! The agent's decoding of desired-state messages: bytes from a control plane are a
//! `SyncResponse` or a decode error, a decoded one converts to the model or names the bad
//! item, and a converted one survives encode/decode/convert unchanged (nothing half-read).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_proto::convert::SyncMessage;
use weft_proto::v1 as pb;

fuzz_target!(|data: &[u8]| {
    let Ok(resp) = pb::SyncResponse::decode(data) else {
        return;
    };
    let Ok(msg) = SyncMessage::try_from(resp) else {
        return;
    };
    let bytes = pb::SyncResponse::from(&msg).encode_to_vec();
    let again = pb::SyncResponse::decode(bytes.as_slice()).expect("what we encode decodes");
    let again = SyncMessage::try_from(again).expect("what we encode converts");
    assert_eq!(msg, again);
});
