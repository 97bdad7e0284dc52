//! Tests of the flow export.

use std::sync::Arc;

use weft_model::desired::HOST_ENDPOINT_ID;

use super::export::{next_batch, one_stream, unix_nanos_now, RingLost};
use super::*;
use crate::names::Names;
use weft_datapath_common as c;
use weft_model::desired::DesiredEndpoint;
use weft_proto::v1 as pb;

// Real time (the flows' own times are wall-clock): which deadline applies is told apart
// by margins of half an interval.
#[tokio::test]
async fn a_batch_waits_from_when_its_oldest_flow_was_seen() {
    let queue = FlowQueue::new(100);
    let mut ring = RingLost {
        read: Arc::new(|| Some(0)),
        last: 0,
    };
    let now = unix_nanos_now();
    // Seen 2 s ago (the exporter was connecting): sent at once.
    queue.push(pb::Flow {
        time_unix_nanos: now - 2_000_000_000,
        ..Default::default()
    });
    let t = tokio::time::Instant::now();
    let b = next_batch(&queue, &mut ring).await.expect("a batch");
    assert_eq!(b.flows.len(), 1);
    assert!(t.elapsed() < BATCH_WAIT / 2, "{:?}", t.elapsed());
    // Seen just now: waits out the interval for company.
    queue.push(pb::Flow {
        time_unix_nanos: unix_nanos_now(),
        ..Default::default()
    });
    let t = tokio::time::Instant::now();
    assert!(next_batch(&queue, &mut ring).await.is_some());
    let waited = t.elapsed();
    assert!(waited > BATCH_WAIT / 2, "{waited:?}");
    // Nothing queued: an idle interval, then nothing to send.
    let t = tokio::time::Instant::now();
    assert!(next_batch(&queue, &mut ring).await.is_none());
    assert!(t.elapsed() >= BATCH_WAIT, "{:?}", t.elapsed());
}

/// A control plane that cannot be reached (a refused connection on loopback): the stream
/// fails, and every queued flow stays queued for the next one, nothing counted as lost.
#[tokio::test]
async fn a_connection_that_cannot_be_made_leaves_the_flows_queued() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", refused.local_addr().expect("addr"));
    drop(refused);
    let channel = crate::control::channel(&url, None).expect("channel");
    let credential = "weft_node_test".parse().expect("credential");
    let control = crate::control::Control::new(channel, credential);
    let queue = FlowQueue::new(100);
    for i in 0..3 {
        queue.push(pb::Flow {
            time_unix_nanos: unix_nanos_now() - 2_000_000_000 + i,
            ..Default::default()
        });
    }
    queue.add_lost(2);
    let mut ring = RingLost {
        read: Arc::new(|| Some(0)),
        last: 0,
    };
    let stats = FlowStats::default();
    let res = one_stream(&control, &queue, &mut ring, &stats).await;
    assert!(res.is_err(), "nothing listens there");
    let buf = queue.lock();
    assert_eq!((buf.len(), buf.pending_lost()), (3, 2));
    drop(buf);
    let v = stats.view();
    assert_eq!((v.batches_sent, v.flows_sent, v.flows_acked), (0, 0, 0));
}

fn event() -> c::FlowEvent {
    c::FlowEvent {
        ts_ns: 5_000,
        bytes: 60,
        saddr: c::addr_v4([10, 0, 1, 1]),
        daddr: c::addr_v4([10, 0, 2, 7]),
        sport: 40000,
        dport: 8080,
        proto: 6,
        family: c::FAMILY_IPV4,
        verdict: c::VERDICT_DROPPED,
        drop_reason: c::DROP_POLICY_DENIED,
        direction: c::DIR_EGRESS,
        obs_point: c::OBS_FROM_ENDPOINT,
        tcp_flags: 0x02,
        _pad: 0,
        ep_id: 3,
        src_identity: 256,
        dst_identity: 257,
        svc_id: 0,
        _pad2: 0,
    }
}

fn names() -> Names {
    Names {
        endpoints: vec![
            DesiredEndpoint {
                id: "ep-client".into(),
                ips: vec!["10.0.1.1".parse().expect("ip")],
                identity: 256,
                enforce_ingress: false,
                enforce_egress: false,
            },
            DesiredEndpoint {
                id: HOST_ENDPOINT_ID.into(),
                ips: vec!["192.0.2.10".parse().expect("ip")],
                identity: 1,
                enforce_ingress: false,
                enforce_egress: false,
            },
        ],
        endpoint_ids: [(3, "ep-client".to_string())].into(),
        service_ids: [(9, "svc-api".to_string())].into(),
    }
}

#[test]
fn events_map_to_flow_records_with_stable_names_and_ids() {
    let f = to_flow(&event(), 1_700_000_000_000_000_000, &names());
    assert_eq!(f.time_unix_nanos, 1_700_000_000_000_005_000);
    assert_eq!(
        (f.src_ip.as_str(), f.dst_ip.as_str()),
        ("10.0.1.1", "10.0.2.7")
    );
    assert_eq!((f.src_port, f.dst_port, f.proto), (40000, 8080, 6));
    assert_eq!((f.src_identity, f.dst_identity), (256, 257));
    assert_eq!(f.verdict, "DROPPED");
    assert_eq!(f.drop_reason, "POLICY_DENIED");
    assert_eq!(f.direction, "EGRESS");
    assert_eq!(f.observation_point, "endpoint-egress");
    assert_eq!((f.tcp_flags, f.bytes, f.packets, f.count), (2, 60, 1, 1));
    // Local endpoint by address; the remote one is the control plane's to resolve.
    assert_eq!(f.src_endpoint, "ep-client");
    assert_eq!(f.dst_endpoint, "");
    assert_eq!(f.service, "");
}

#[test]
fn translations_name_their_service_and_the_host_is_left_out() {
    let mut e = event();
    e.verdict = c::VERDICT_TRANSLATED;
    e.drop_reason = c::DROP_NONE;
    e.obs_point = c::OBS_SOCK_CONNECT;
    e.saddr = c::addr_v4([192, 0, 2, 10]);
    e.ep_id = 0;
    e.svc_id = 9;
    let f = to_flow(&e, 0, &names());
    assert_eq!(f.verdict, "TRANSLATED");
    assert_eq!(f.drop_reason, "");
    assert_eq!(f.service, "svc-api");
    assert_eq!(f.observation_point, "socket-lb");
    assert_eq!(
        f.src_endpoint, "",
        "the host endpoint is not a tenant endpoint"
    );
    // A number the agent does not know maps to ERROR, never to a wrong verdict.
    e.verdict = 200;
    assert_eq!(to_flow(&e, 0, &names()).verdict, "ERROR");
}

#[test]
fn the_endpoint_falls_back_to_the_datapath_id_on_its_side() {
    let mut e = event();
    e.saddr = c::addr_v4([10, 0, 1, 99]);
    assert_eq!(to_flow(&e, 0, &names()).src_endpoint, "ep-client");
    e.direction = c::DIR_INGRESS;
    let f = to_flow(&e, 0, &names());
    assert_eq!(
        (f.src_endpoint.as_str(), f.dst_endpoint.as_str()),
        ("", "ep-client")
    );
}

#[test]
fn identical_flows_in_a_batch_are_aggregated() {
    let f = to_flow(&event(), 0, &names());
    let mut later = f.clone();
    later.time_unix_nanos += 10;
    later.bytes = 40;
    let mut other = f.clone();
    other.dst_port = 9090;
    let out = aggregate(vec![f.clone(), later, other]);
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].count, out[0].packets, out[0].bytes), (2, 2, 100));
    assert_eq!(out[0].time_unix_nanos, f.time_unix_nanos, "first time kept");
    assert_eq!(out[1].count, 1);
}

#[test]
fn a_full_buffer_keeps_the_newest_and_counts_what_it_evicted() {
    let mut b = FlowBuffer::new(3);
    for port in 1..=5u32 {
        b.push(pb::Flow {
            dst_port: port,
            ..Default::default()
        });
    }
    assert_eq!(b.len(), 3);
    assert_eq!(b.pending_lost(), 2);
    b.add_lost(4);
    let (flows, lost) = b.take(2);
    assert_eq!(flows.iter().map(|f| f.dst_port).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(lost, 6);
    let (flows, lost) = b.take(10);
    assert_eq!(flows.iter().map(|f| f.dst_port).collect::<Vec<_>>(), [5]);
    assert_eq!(lost, 0, "reported once");
    assert!(b.is_empty());
}

#[test]
fn the_monotonic_offset_gives_the_current_time() {
    let mono = crate::datapath::monotonic_ns();
    let unix = i64::try_from(mono).expect("mono") + monotonic_to_unix_offset();
    let now = unix_nanos_now();
    assert!((now - unix).abs() < 1_000_000_000, "{now} vs {unix}");
}
