//! Native policy JSON and its validation: a spec that parses and validates survives a
//! serialize/parse round trip unchanged and still validates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_model::policy::PolicySpec;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<PolicySpec>(data) else {
        return;
    };
    if spec.validate().is_err() {
        return;
    }
    let text = serde_json::to_string(&spec).expect("a parsed spec serializes");
    let again: PolicySpec = serde_json::from_str(&text).expect("what we write parses");
    assert_eq!(spec, again, "round trip through {text}");
    assert!(again.validate().is_ok(), "still valid: {text}");
});
