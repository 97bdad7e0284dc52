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
            // The duration form (`30s`): RFC 3339 may also be written with a space, so only
            // text of that form is held to "before now".
            let duration = text
                .strip_suffix(['s', 'm', 'h', 'd'])
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if duration {
                assert!(t <= now, "a duration is before now: {text:?}");
            }
        }
    }
});
