//! Times in queries (`since=30s`, RFC 3339): any text is a time or an error, never a panic
//! or an overflow.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for now in [
        Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).single(),
        Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).single(),
    ]
    .into_iter()
    .flatten()
    {
        if let Ok(t) = weft_model::flow::parse_time(text, now) {
            if !text.contains('T') && !text.contains('t') {
                assert!(t <= now, "a duration is before now: {text:?}");
            }
        }
    }
});
