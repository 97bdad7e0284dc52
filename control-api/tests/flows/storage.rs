//! What storage guarantees: tenant isolation, lost-event counts per node, and retention by
//! partition.

use super::*;

#[tokio::test]
async fn tenants_never_see_each_others_flows() {
    let mut w = world().await;
    let other = w.t.tenant("globex").await;
    // globex has an endpoint of its own; acme's node names its id in a flow.
    let mut gclient = agent_on(w.t.state.clone()).await;
    let gnode = node(&w.t, &mut gclient, &other, "globex", "prod", "g-1").await;
    endpoints(&mut gclient, &gnode, &[("secret-db", "db", "10.0.2.7")]).await;
    let foreign: Uuid = sqlx::query_scalar("SELECT id FROM endpoints WHERE name = 'secret-db'")
        .fetch_one(&w.t.pool)
        .await
        .unwrap();
    let mut f = flow(
        Utc::now(),
        ("10.0.1.5", 42000, w.web),
        ("10.9.9.9", 443, 0),
        6,
        "FORWARDED",
        "",
        SYN,
    );
    f.dst_endpoint = foreign.to_string();
    let n1 = Node {
        credential: w.n1.credential.clone(),
    };
    send(
        &mut w.client,
        &n1,
        vec![FlowBatch {
            flows: vec![f],
            lost: 0,
        }],
    )
    .await;

    // The flow is acme's, and knows nothing of globex's endpoint.
    let r = list(&w.t, &w.owner, &[("from_port", "42000".into())]).await;
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["destination"]["endpoint"], Value::Null);
    // As stored: in a block of acme's, without globex's endpoint.
    type Block = (Uuid, i64, String, String, Vec<String>, Vec<u8>);
    let blocks: Vec<Block> = sqlx::query_as(
        "SELECT tenant_id, id, node_name, cluster_name, keys, data FROM flow_blocks",
    )
    .fetch_all(&w.t.pool)
    .await
    .unwrap();
    let acme: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
        .fetch_one(&w.t.pool)
        .await
        .unwrap();
    let mut found = Vec::new();
    for (tenant, id, node, cluster, keys, data) in &blocks {
        let filter = FlowFilter::parse([("from_port", "42000")], Utc::now()).unwrap();
        let flows =
            control_api::flows::block::decode(*id, node, cluster, data, &filter, |_, _| true)
                .unwrap();
        if !flows.is_empty() {
            found.push((*tenant, flows[0].record.destination.endpoint.clone(), keys));
        }
    }
    assert_eq!(found.len(), 1, "one block holds the flow");
    assert_eq!((found[0].0, found[0].1.as_deref()), (acme, None));
    assert!(
        !found[0].2.iter().any(|k| k.starts_with("de:")),
        "no destination endpoint among the block's keys: {:?}",
        found[0].2
    );

    // globex sees none of acme's flows, by its own tenant or by acme's.
    let r = w.t.get("/v1/tenants/globex/flows", &other).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"], json!([]));
    let r = w.t.get("/v1/tenants/globex/service-map", &other).await;
    assert_eq!(r.body, json!({"nodes": [], "edges": []}));
    for path in [
        "/v1/tenants/acme/flows",
        "/v1/tenants/acme/flows/stream",
        "/v1/tenants/acme/service-map",
    ] {
        let r = w.t.get(path, &other).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        let r = w.t.call("GET", path, None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // The API's role cannot read a partition around the wall either.
    let mut conn = w.t.state.pool.acquire().await.unwrap();
    let part = format!("flow_blocks_p{}", Utc::now().format("%Y%m%d"));
    let direct = sqlx::query(&format!("SELECT count(*) FROM {part}"))
        .execute(&mut *conn)
        .await;
    // Refused as a privilege, not for any other reason (a missing partition would be 42P01).
    weft_testkit::db::assert_refused(
        direct,
        "42501",
        &format!("permission denied for table {part}"),
    );
}

#[tokio::test]
async fn lost_events_are_counted_per_node() {
    let mut w = world().await;
    let mut bad = flow(
        Utc::now(),
        ("not-an-ip", 1, 0),
        ("10.0.2.7", 5432, 0),
        6,
        "FORWARDED",
        "",
        0,
    );
    bad.src_port = 1;
    let n1 = Node {
        credential: w.n1.credential.clone(),
    };
    send(
        &mut w.client,
        &n1,
        vec![
            FlowBatch {
                flows: vec![],
                lost: 5,
            },
            FlowBatch {
                flows: vec![bad],
                lost: 2,
            },
        ],
    )
    .await;
    let m = w.t.call("GET", "/metrics", None, None).await;
    let text = m.body.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains(r#"weft_flows_lost_total{tenant="acme",node="node-1"} 8"#),
        "{text}"
    );
    let r =
        w.t.get("/v1/tenants/acme/clusters/prod/nodes/node-1", &w.owner)
            .await;
    assert_eq!(r.body["status"]["health"]["flows_lost"], 8, "{}", r.body);
    // A health report keeps the count.
    w.client
        .report_health(authed(
            weft_proto::v1::HealthReport::default(),
            &n1.credential,
        ))
        .await
        .unwrap();
    let r =
        w.t.get("/v1/tenants/acme/clusters/prod/nodes/node-1", &w.owner)
            .await;
    assert_eq!(r.body["status"]["health"]["flows_lost"], 8, "{}", r.body);
}

#[tokio::test]
async fn retention_drops_whole_old_partitions() {
    let w = world().await;
    // Partitions back to 20 days ago, and a block of flows 15 days old in one of them.
    sqlx::query("SELECT weft_maintain_flow_partitions(20, 2, NULL)")
        .execute(&w.t.pool)
        .await
        .unwrap();
    let blocks = w.t.count("flow_blocks").await;
    sqlx::query(
        "INSERT INTO flow_blocks (tenant_id, batch, min_time, max_time, node_id, node_name, \
           cluster_id, cluster_name, flows, keys, edges, data) \
         SELECT tenant_id, 0, now() - interval '15 days', now() - interval '15 days', \
           node_id, node_name, cluster_id, cluster_name, flows, keys, edges, data \
         FROM flow_blocks LIMIT 1",
    )
    .execute(&w.t.pool)
    .await
    .unwrap();
    let partitions = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'flow_blocks'::regclass",
        )
        .fetch_one(&w.t.pool)
        .await
        .unwrap()
    };
    assert_eq!(partitions().await, 23);
    assert_eq!(w.t.count("flow_blocks").await, blocks + 1);
    // The maintenance task's work, as the API's role.
    let (created, dropped) = control_api::flows::maintain(&w.t.state.pool, 7)
        .await
        .unwrap();
    assert_eq!((created, dropped), (0, 13));
    assert_eq!(partitions().await, 10);
    assert_eq!(
        w.t.count("flow_blocks").await,
        blocks,
        "the old block went with its day"
    );
    let r = list(&w.t, &w.owner, &[]).await;
    assert_eq!(numbers(&r.body["items"]).len(), 7);
}
