//! An agent that stops reading its `Sync` stream: what it has not read stays bounded (the
//! stream's buffer and the HTTP/2 windows, not one message per change it missed), it gets
//! the latest state when it reads again, and no other tenant's agent waits for it.

use super::*;
use common::{next_change, next_sync};
use prost::Message;

/// Changes made while the agent does not read.
const CHANGES: usize = 60;

/// Policy `wide`: web admits TCP 443 from 500 /32s of `10.<net>.x.y` (a large delta each
/// time `net` flips: 500 policy entries and 500 addresses out, 500 in).
fn wide(net: u8) -> serde_json::Value {
    let cidrs: Vec<String> = (0..500u32)
        .map(|i| format!("10.{net}.{}.{}/32", i / 250, i % 250 + 1))
        .collect();
    json!({"name": "wide", "spec": {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromCIDR": cidrs,
                     "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]}})
}

fn sync_from_start(credential: &str) -> tonic::Request<SyncRequest> {
    authed(
        SyncRequest {
            resume_from_revision: 0,
            capability_version: weft_proto::CAPABILITY_VERSION,
        },
        credential,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_reading_gets_the_latest_state_not_every_change() {
    let t = TestApp::new().await;
    let (owner, _a, n1) = node_with(&t, vec![endpoint("web-1", "web", "10.0.1.5")]).await;
    t.created("/v1/tenants/acme/policies", &owner, wide(20))
        .await;
    // The slow agent's client takes little into its own buffers (64 KiB windows), so what
    // it does not read waits on the server's side of the stream.
    let url = weft_testkit::server::agent_url(t.state.clone()).await;
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut stalled = AgentClient::new(channel)
        .sync(sync_from_start(&n1.node_credential))
        .await
        .expect("sync")
        .into_inner();
    let snapshot = next_sync(&mut stalled).await;

    // Another tenant's agent, reading its stream.
    let other = t.tenant("globex").await;
    t.cluster("globex", "prod", &other).await;
    let tok = t
        .join_token("globex", "prod", &other, json!({"name": "g"}))
        .await;
    let mut g = agent(&t).await;
    let gn = g
        .register(register(&tok, "g-1", false))
        .await
        .expect("register")
        .into_inner();
    report_endpoints(
        &mut g,
        &gn.node_credential,
        vec![endpoint("api-1", "api", "10.0.9.5")],
    )
    .await;
    let mut reading = g
        .sync(sync_from_start(&gn.node_credential))
        .await
        .expect("sync")
        .into_inner();
    next_sync(&mut reading).await;

    for i in 0..CHANGES {
        let r = t
            .put(
                "/v1/tenants/acme/policies/wide",
                &owner,
                wide(if i % 2 == 0 { 21 } else { 20 }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let latest = t.revision().await as u64;
    // The other tenant is served meanwhile.
    t.created(
        "/v1/tenants/globex/policies",
        &other,
        json!({"name": "api-closed", "spec": {
            "endpointSelector": {"matchLabels": {"app": "api"}}, "ingress": [{}]}}),
    )
    .await;
    let m = next_change(&mut reading).await;
    let Some(Kind::Delta(d)) = m.kind else {
        panic!("a delta for globex, got {:?}", m.kind)
    };
    assert!(
        d.upsert_endpoints.iter().any(|e| e.enforce_ingress),
        "{d:?}"
    );

    // Reading again: what was held for it, then one delta to the latest state. A revision
    // may come in parts; its last part does not continue.
    let (mut revisions, mut parts, mut bytes) = (0usize, 0usize, 0usize);
    let last = loop {
        let m = next_sync(&mut stalled).await;
        parts += 1;
        bytes += m.encoded_len();
        if !m.continues {
            revisions += 1;
            if m.revision >= latest {
                break m;
            }
        }
    };
    eprintln!(
        "{CHANGES} changes unread: {revisions} revisions held ({parts} messages, {bytes} \
         bytes; snapshot {} bytes)",
        snapshot.encoded_len()
    );
    assert!(
        revisions <= CHANGES / 2,
        "the stream held {revisions} revisions for {CHANGES} changes: one per change"
    );
    // (A view's revision is the database's: the other tenant's change may be in it.)
    assert!(last.revision >= latest);
    assert!(matches!(last.kind, Some(Kind::Delta(_))));
}
