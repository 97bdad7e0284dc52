//! Every `GET /flows` parameter: the input is read as a query string (`a=b&c=d`); a filter
//! either parses or names the parameter it refuses, and a parsed one matches a flow without
//! panicking.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use weft_model::flow::{FlowFilter, FlowRecord};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = text
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let now = Utc
        .with_ymd_and_hms(2026, 12, 5, 12, 0, 0)
        .single()
        .expect("a valid time");
    match FlowFilter::parse(pairs.iter().copied(), now) {
        Ok(filter) => {
            let _ = filter.matches(&sample());
        }
        Err(e) => assert!(
            pairs.iter().any(|(name, _)| *name == e.param),
            "the error names a parameter that was given: {e:?}"
        ),
    }
});

fn sample() -> FlowRecord {
    serde_json::from_value(serde_json::json!({
        "time": "2026-12-05T11:59:00Z",
        "verdict": "DROPPED",
        "drop_reason": "POLICY_DENIED",
        "source": {"ip": "10.0.1.5", "port": 40000, "identity": 256, "labels": {"app": "web"},
                   "endpoint": "web-1"},
        "destination": {"ip": "fd00:10:2::5", "port": 8080, "identity": 257,
                        "labels": {"app": "db"}, "endpoint": "db"},
        "protocol": "TCP",
        "node": "node-1",
        "cluster": "prod",
        "service": null,
        "direction": "egress",
        "observation_point": "endpoint-egress",
        "tcp_flags": ["SYN"],
        "bytes": 60,
        "packets": 1,
        "count": 1,
        "type": "L7",
        "l7": {"http": {"method": "GET", "url": "http://weft.test/a/b?c=d", "protocol": "HTTP/1.1",
                        "code": 403, "latency_ms": 0.25}}
    }))
    .expect("the sample flow parses")
}
