//! The live flow stream: following ingest on any replica, and a slow reader told what it missed.

use super::*;

#[tokio::test]
async fn the_live_stream_follows_ingest_on_any_replica() {
    let w = world().await;
    let mut w = w;
    // The follower is on replica B; the agent reports to replica A.
    let replica = w.t.replica().await;
    let app_b = control_api::app::app(replica);
    let mut dropped = Events::open(
        &app_b,
        "/v1/tenants/acme/flows/stream?verdict=DROPPED&to_label=app%3Ddb",
        &w.owner,
    )
    .await;
    let mut on_a = Events::open(
        &w.t.app,
        "/v1/tenants/acme/flows/stream?not_verdict=DROPPED",
        &w.owner,
    )
    .await;
    // Another tenant's follower sees nothing of acme's.
    let other = w.t.tenant("globex").await;
    let mut other_events = Events::open(&app_b, "/v1/tenants/globex/flows/stream", &other).await;
    // Let the followers subscribe before anything is sent.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let now = Utc::now();
    let (web, db) = (w.web, w.db);
    let n1_cred = w.n1.credential.clone();
    let n1 = Node {
        credential: n1_cred,
    };
    send(
        &mut w.client,
        &n1,
        vec![FlowBatch {
            flows: vec![flow(
                now,
                ("10.0.1.5", 41000, web),
                ("10.0.2.7", 5432, db),
                6,
                "FORWARDED",
                "",
                SYN,
            )],
            lost: 0,
        }],
    )
    .await;
    let sent = std::time::Instant::now();
    send(
        &mut w.client,
        &n1,
        vec![FlowBatch {
            flows: vec![flow(
                now,
                ("10.0.1.5", 41001, web),
                ("10.0.2.7", 5432, db),
                6,
                "DROPPED",
                "POLICY_DENIED",
                SYN,
            )],
            lost: 0,
        }],
    )
    .await;
    let (event, data) = dropped
        .next(Duration::from_secs(2))
        .await
        .expect("the dropped flow reaches replica B within 2 s");
    assert!(sent.elapsed() < Duration::from_secs(2));
    assert_eq!(event, "flow");
    assert_eq!(
        data["source"]["port"], 41001,
        "only the matching flow: {data}"
    );
    assert_eq!(data["verdict"], "DROPPED");
    let (_, data) = on_a.next(Duration::from_secs(2)).await.expect("on A too");
    assert_eq!(data["source"]["port"], 41000);
    assert!(
        dropped.next(Duration::from_millis(300)).await.is_none(),
        "nothing else matches"
    );
    assert!(
        on_a.next(Duration::from_millis(300)).await.is_none(),
        "the dropped one does not match `not_verdict=DROPPED`"
    );
    assert!(
        other_events
            .next(Duration::from_millis(300))
            .await
            .is_none(),
        "another tenant's stream stays silent"
    );

    // `last=N` replays the newest N stored matches first, oldest first.
    let mut replay = Events::open(
        &app_b,
        "/v1/tenants/acme/flows/stream?last=2&verdict=DROPPED",
        &w.owner,
    )
    .await;
    let (_, a) = replay.next(Duration::from_secs(2)).await.unwrap();
    let (_, b) = replay.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        (a["source"]["port"].clone(), b["source"]["port"].clone()),
        (json!(5555), json!(41001))
    );
}

#[tokio::test]
async fn a_slow_reader_is_told_what_it_missed_and_ingest_goes_on() {
    let mut w = world().await;
    // Never read: the stream's buffer fills while ingest continues. `since` keeps out the
    // world's flows (a minute old and more): their notices come through PostgreSQL and, on a
    // loaded machine, may arrive after this stream subscribed.
    let mut slow = Events::open(
        &w.t.app,
        "/v1/tenants/acme/flows/stream?since=30s",
        &w.owner,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let now = Utc::now();
    let flows: Vec<Flow> = (0..600)
        .map(|i| {
            flow(
                now,
                ("10.0.1.5", 20000 + i, w.web),
                ("10.0.2.7", 5432, w.db),
                6,
                "FORWARDED",
                "",
                SYN,
            )
        })
        .collect();
    let n1 = Node {
        credential: w.n1.credential.clone(),
    };
    let started = std::time::Instant::now();
    send(&mut w.client, &n1, vec![FlowBatch { flows, lost: 0 }]).await;
    let ingest_took = started.elapsed();
    let stored: i64 = sqlx::query_scalar("SELECT coalesce(sum(flows), 0)::int8 FROM flow_blocks")
        .fetch_one(&w.t.pool)
        .await
        .unwrap();
    assert_eq!(stored, 607, "ingest was not held up (took {ingest_took:?})");
    // Now read: the buffered flows, then a `skipped` event counting the rest.
    let mut flows = 0;
    let mut skipped = None;
    while let Some((event, data)) = slow.next(Duration::from_millis(500)).await {
        match event.as_str() {
            "flow" => flows += 1,
            "skipped" => skipped = Some(data["skipped"].clone()),
            other => panic!("unexpected event {other}"),
        }
        if skipped.is_some() {
            break;
        }
    }
    // The skipped notice is only sent with the next flow; send one more.
    if skipped.is_none() {
        send(
            &mut w.client,
            &n1,
            vec![FlowBatch {
                flows: vec![flow(
                    Utc::now(),
                    ("10.0.1.5", 30000, w.web),
                    ("10.0.2.7", 5432, w.db),
                    6,
                    "FORWARDED",
                    "",
                    SYN,
                )],
                lost: 0,
            }],
        )
        .await;
        // Flows of the first batch may still arrive first (a slow machine); the extra one
        // (port 30000) is not part of the count.
        while let Some((event, data)) = slow.next(Duration::from_secs(2)).await {
            if event == "skipped" {
                skipped = Some(data["skipped"].clone());
                break;
            }
            if event == "flow" && data["source"]["port"] != 30000 {
                flows += 1;
            }
        }
    }
    assert!(flows > 0 && flows < 600, "{flows} flows delivered");
    let skipped = skipped.expect("a skipped event");
    assert_eq!(skipped.as_u64().unwrap() as usize + flows, 600);
}
