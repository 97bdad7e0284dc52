//! `weft connectivity test`: asks the agents (through the API) for test workloads and a
//! service in front of them, runs the scenarios of [`plan`] — each a set of policies and
//! probes — and checks both the traffic and the flow records it left. Everything it creates
//! carries the run's label and is removed at the end, also after an error or Ctrl-C.

mod judge;
mod plan;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::client::{encode_query, seg, status_of, Client, Target};
use crate::flows;
use crate::output::{self, Format};
use crate::Exit;
use judge::{FlowsSeen, ProbeSeen};
use plan::{Check, Expect, From, Role, Scenario, To, L7, RUN_LABEL};

/// Test that the network behaves as the policies say, on real nodes.
#[derive(Subcommand)]
pub enum ConnectivityCmd {
    Test(TestArgs),
    Cleanup(CleanupArgs),
}

/// Create test workloads on two nodes, run ≥ 12 scenarios (pod to pod on the same and
/// another node, pod to service, host to pod, pod to world; default deny, allow by label,
/// deny rule, port range, CIDR; HTTP rules: an allowed and a denied path and method;
/// DNS rules and toFQDNs: an allowed name, another name, a refused lookup), check each
/// connection and its flow records, then remove everything it created. On dual-stack nodes
/// every check runs over IPv6 too (`…/ipv6`).
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    weft connectivity test\n  \
    weft connectivity test --cluster prod-eu -o json\n  \
    weft connectivity test --service-vip 10.96.200.1 --wait 2m\n\n\
    Needs two connected nodes for the cross-node scenarios (with one, those are left out),\n\
    agents started with --pod-cidr (test workloads get addresses from it; with an IPv6 pod\n\
    CIDR as well, every check is repeated over IPv6), and, for the service scenario,\n\
    agents with a socket-LB cgroup (--cgroup).\n\
    Exit status: 0 all passed, 1 a check failed or the test could not run.")]
pub struct TestArgs {
    /// Cluster to test (default: the tenant's only cluster).
    #[arg(long, short = 'c')]
    cluster: Option<String>,
    /// Virtual IP of the test service; must not be in use in the cluster.
    #[arg(long, default_value = "10.96.255.254")]
    service_vip: std::net::Ipv4Addr,
    /// IPv6 virtual IP of the dual-stack test service (when the nodes have IPv6 pod CIDRs).
    #[arg(long, default_value = "fd00:96::fffe")]
    service_vip6: std::net::Ipv6Addr,
    /// How long to wait for workloads, policies and flows at each step.
    #[arg(long, default_value = "60s", value_parser = crate::status::parse_duration)]
    wait: Duration,
    /// How long a probe waits for an answer before it counts as dropped.
    #[arg(long, default_value_t = 1500)]
    probe_timeout_ms: u32,
    /// Only checks whose name contains this (e.g. `default-deny`).
    #[arg(long)]
    test: Option<String>,
    /// Output format of the summary.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
}

/// Remove everything interrupted runs left behind: workloads, probes, services and
/// policies labelled `weft-ct-run`.
#[derive(Args)]
#[command(after_help = "Examples:\n  weft connectivity cleanup --cluster prod-eu")]
pub struct CleanupArgs {
    #[arg(long, short = 'c')]
    cluster: Option<String>,
    /// Only this run (the id in the objects' names, `ct-<run>-…`).
    #[arg(long)]
    run: Option<String>,
}

pub async fn connectivity(target: &Target, cmd: ConnectivityCmd) -> Result<()> {
    let client = Client::new(target).await?;
    match cmd {
        ConnectivityCmd::Test(a) => test(&client, a).await,
        ConnectivityCmd::Cleanup(a) => {
            let cluster = pick_cluster(&client, a.cluster).await?;
            let selector = match &a.run {
                Some(r) => format!("{RUN_LABEL}={r}"),
                None => RUN_LABEL.to_string(),
            };
            let n = cleanup(&client, &cluster, &selector).await?;
            eprintln!("removed {n} object(s) of connectivity tests");
            Ok(())
        }
    }
}

/// The given cluster; else the tenant's only cluster, or its only one with connected nodes.
async fn pick_cluster(client: &Client, given: Option<String>) -> Result<String> {
    if let Some(c) = given {
        return Ok(c);
    }
    let clusters = client.list_all(&client.tpath("/clusters")?, &[]).await?;
    let mut names: Vec<String> = clusters.iter().map(|c| output::cell(&c["name"])).collect();
    names.sort();
    match names.as_slice() {
        [one] => return Ok(one.clone()),
        [] => bail!("the tenant has no cluster: create one with `weft cluster create NAME`"),
        _ => {}
    }
    let mut with_nodes = Vec::new();
    for name in &names {
        if !connected_nodes(client, name).await?.is_empty() {
            with_nodes.push(name.clone());
        }
    }
    match with_nodes.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "the tenant has {} clusters ({}), {} of them with connected nodes: choose one with \
             --cluster",
            names.len(),
            names.join(", "),
            with_nodes.len()
        ),
    }
}

/// Names of the cluster's connected nodes, sorted.
async fn connected_nodes(client: &Client, cluster: &str) -> Result<Vec<String>> {
    let path = client.tpath(&format!("/clusters/{}/nodes", seg(cluster)))?;
    let mut connected: Vec<String> = client
        .list_all(&path, &[])
        .await
        .with_context(|| format!("listing the nodes of cluster {cluster}"))?
        .iter()
        .filter(|n| n["status"]["connected"].as_bool() == Some(true))
        .map(|n| output::cell(&n["name"]))
        .collect();
    connected.sort();
    Ok(connected)
}

/// One run's context.
struct Run<'a> {
    client: &'a Client,
    /// `/v1/tenants/{t}/clusters/{c}`.
    base: String,
    cluster: String,
    id: String,
    wait: Duration,
    bar: ProgressBar,
}

/// A check's outcome, for the summary.
struct Outcome {
    scenario: &'static str,
    check: Check,
    probe: ProbeSeen,
    latency_us: Option<u64>,
    passed: bool,
    why: String,
}

async fn test(client: &Client, a: TestArgs) -> Result<()> {
    let cluster = pick_cluster(client, a.cluster.clone()).await?;
    let base = client.tpath(&format!("/clusters/{}", seg(&cluster)))?;
    let nodes = connected_nodes(client, &cluster).await?;
    if nodes.is_empty() {
        bail!(
            "cluster {cluster} has no connected node: install an agent (`weft cluster \
             join-token create {cluster}` prints the command) and check `weft status`"
        );
    }
    let id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let run = Run {
        client,
        base,
        cluster: cluster.clone(),
        id: id.clone(),
        wait: a.wait,
        bar,
    };
    note(
        &run.bar,
        &format!(
            "connectivity test {id} on cluster {cluster}, nodes {}",
            nodes.join(", ")
        ),
    );
    let result = tokio::select! {
        r = execute(&run, &nodes, &a) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    run.bar
        .set_message("removing test workloads, policies and the service");
    let cleaned = cleanup(client, &cluster, &format!("{RUN_LABEL}={id}")).await;
    run.bar.finish_and_clear();
    if let Err(e) = &cleaned {
        eprintln!("warning: cleanup incomplete ({e:#}); run `weft connectivity cleanup --cluster {cluster} --run {id}`");
    }
    let outcomes = result?;
    summary(&run, &nodes, &outcomes, a.output)?;
    if outcomes.iter().any(|o| !o.passed) {
        return Err(Exit(1).into());
    }
    Ok(())
}

/// A line above the progress bar (or on stderr when there is no terminal to draw it on).
fn note(bar: &ProgressBar, line: &str) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

async fn execute(run: &Run<'_>, nodes: &[String], a: &TestArgs) -> Result<Vec<Outcome>> {
    let two_nodes = nodes.len() > 1;
    let node_of = |role: Role| {
        if role.on_other_node() {
            &nodes[1]
        } else {
            &nodes[0]
        }
    };
    let only = |scenarios: &mut Vec<Scenario>| {
        if let Some(f) = &a.test {
            for s in scenarios.iter_mut() {
                s.checks.retain(|c| c.name.contains(f.as_str()));
            }
            scenarios.retain(|s| !s.checks.is_empty());
        }
    };
    let mut scenarios = plan::scenarios(&run.id, &run.cluster, two_nodes);
    // Whether the IPv6 checks run is known once the workloads have their addresses; a
    // filter that matches nothing in either family fails before anything is made.
    let mut both = scenarios.clone();
    plan::add_ipv6(&mut both);
    only(&mut both);
    if both.is_empty() {
        bail!(
            "no check name contains {:?}",
            a.test.as_deref().unwrap_or_default()
        );
    }
    if !two_nodes {
        note(
            &run.bar,
            "only one connected node: the cross-node checks are left out",
        );
    }

    // Workloads.
    run.bar.set_message("creating test workloads");
    let mut ips: BTreeMap<Role, String> = BTreeMap::new();
    let mut ips6: BTreeMap<Role, String> = BTreeMap::new();
    let mut names: BTreeMap<Role, String> = BTreeMap::new();
    for w in plan::workloads(&run.id, two_nodes) {
        let body = json!({
            "name": w.name, "node": node_of(w.role), "kind": w.kind,
            "labels": w.labels, "echo_ports": w.echo_ports,
        });
        let created = run
            .client
            .post(&format!("{}/test-workloads", run.base), body)
            .await
            .with_context(|| format!("creating test workload {}", w.name))?
            .body;
        let ip = created["ip"]
            .as_str()
            .ok_or_else(|| anyhow!("the API gave test workload {} no ip", w.name))?;
        ips.insert(w.role, ip.to_string());
        if let Some(ip6) = created["ip6"].as_str() {
            ips6.insert(w.role, ip6.to_string());
        }
        names.insert(w.role, w.name);
    }
    // Dual stack when every workload got an IPv6 address (its node has an IPv6 pod CIDR).
    let dual = ips6.len() == ips.len();
    if dual {
        plan::add_ipv6(&mut scenarios);
    } else {
        note(
            &run.bar,
            "the nodes have no IPv6 pod CIDR (agent --pod-cidr): the IPv6 checks are left out",
        );
    }
    only(&mut scenarios);
    if scenarios.is_empty() {
        bail!(
            "no check name contains {:?} without IPv6 (the IPv6 checks need dual-stack nodes)",
            a.test.as_deref().unwrap_or_default()
        );
    }
    let ips_of = |ipv6: bool| if ipv6 { &ips6 } else { &ips };
    run.bar
        .set_message(format!("waiting for the workloads on {}", nodes.join(", ")));
    wait_workloads_ready(run).await?;

    // The service in front of the echo servers.
    let backends: Vec<Role> = [Role::EchoSame, Role::EchoOther]
        .into_iter()
        .filter(|r| ips.contains_key(r))
        .collect();
    let mut vips = vec![(plan::service_name(&run.id), IpAddr::V4(a.service_vip), &ips)];
    if dual {
        vips.push((
            format!("{}6", plan::service_name(&run.id)),
            IpAddr::V6(a.service_vip6),
            &ips6,
        ));
    }
    for (service, vip, addrs) in &vips {
        run.client
            .post(
                &format!("{}/services", run.base),
                json!({
                    "name": service,
                    "labels": {RUN_LABEL: run.id},
                    "frontends": [{"vip": vip.to_string(), "port": plan::SERVICE_PORT, "protocol": "TCP"}],
                    "backends": backends.iter().map(|r| json!({"address": addrs[r], "port": plan::ECHO_PORT})).collect::<Vec<_>>(),
                }),
            )
            .await
            .with_context(|| format!("creating test service {service} on {vip}"))?;
    }
    run.bar.set_message("waiting for the service on every node");
    for (service, _, _) in &vips {
        wait_realized(
            run,
            &format!("{}/services/{}", run.base, seg(service)),
            "service",
        )
        .await?;
    }
    let backend_names: Vec<String> = backends.iter().map(|r| names[r].clone()).collect();

    let total: usize = scenarios.iter().map(|s| s.checks.len()).sum();
    run.bar.set_length(total as u64);
    let mut outcomes = Vec::new();
    let mut previous: Vec<String> = Vec::new();
    for s in &scenarios {
        run.bar
            .set_message(format!("{}: applying policies", s.name));
        // The next scenario's policies are realized after the removal of these (one
        // revision order), so waiting for the new ones covers both.
        for name in previous.drain(..) {
            delete_ok(
                run.client,
                &format!("{}/{}", run.client.tpath("/policies")?, seg(&name)),
            )
            .await?;
        }
        for p in &s.policies {
            let name = output::cell(&p["name"]);
            run.client
                .post(&run.client.tpath("/policies")?, p.clone())
                .await
                .with_context(|| format!("creating policy {name}"))?;
            previous.push(name);
        }
        for name in &previous {
            wait_realized(
                run,
                &format!("{}/{}", run.client.tpath("/policies")?, seg(name)),
                "policy",
            )
            .await?;
        }
        run.bar.set_message(format!("{}: probing", s.name));
        let since = (chrono::Utc::now() - chrono::Duration::seconds(2))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut probes = Vec::new();
        for c in &s.checks {
            let (from, node) = match c.from {
                From::Workload(r) => (json!(names[&r]), node_of(r).clone()),
                From::Host { other_node } => (
                    Value::Null,
                    if other_node {
                        nodes[1].clone()
                    } else {
                        nodes[0].clone()
                    },
                ),
            };
            let target = match (c.to, c.ipv6) {
                (To::Workload(r, port), false) => format!("{}:{port}", ips[&r]),
                (To::Workload(r, port), true) => format!("[{}]:{port}", ips6[&r]),
                (To::Service, false) => format!("{}:{}", a.service_vip, plan::SERVICE_PORT),
                (To::Service, true) => format!("[{}]:{}", a.service_vip6, plan::SERVICE_PORT),
            };
            let mut body = json!({
                "from": from, "node": node, "target": target,
                "timeout_ms": a.probe_timeout_ms,
                "labels": {RUN_LABEL: run.id, plan::SCENARIO_LABEL: s.name},
            });
            match (c.l7, c.to) {
                (Some(L7::Http { method, path }), _) => {
                    body["http"] = json!({"method": method, "path": path});
                }
                // The target's own resolver (a world workload's answers every name with
                // its address).
                (Some(L7::Resolve { name }), To::Workload(r, _)) => {
                    body["resolve"] = json!({"name": name, "server": ips_of(c.ipv6)[&r]});
                }
                _ => {}
            }
            let p = run
                .client
                .post(&format!("{}/probes", run.base), body)
                .await
                .with_context(|| format!("creating the probe of {}", c.name))?
                .body;
            probes.push(output::cell(&p["id"]));
        }
        let results = wait_probes(run, s.name).await?;
        run.bar.set_message(format!("{}: checking flows", s.name));
        for (c, id) in s.checks.iter().zip(&probes) {
            let r = results
                .get(id)
                .ok_or_else(|| anyhow!("probe {id} of {} vanished", c.name))?;
            let seen = ProbeSeen {
                outcome: output::cell(&r["outcome"]),
                detail: output::cell(&r["detail"]),
                reply_from: r["reply_from"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                http_status: r["http_status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok()),
                dns_rcode: r["dns_rcode"].as_str().map(str::to_string),
            };
            let flows = find_flows(run, c, &seen, ips_of(c.ipv6), &names, &since).await?;
            let j = judge::judge(c, &seen, &flows, &backend_names);
            note(
                &run.bar,
                &format!(
                    "{} {:<38} {}",
                    if j.passed { "✔" } else { "✘" },
                    c.name,
                    j.why
                ),
            );
            run.bar.inc(1);
            outcomes.push(Outcome {
                scenario: s.name,
                check: c.clone(),
                latency_us: r["latency_us"].as_u64(),
                probe: seen,
                passed: j.passed,
                why: j.why,
            });
        }
    }
    Ok(outcomes)
}

/// Sleeps half a second before the next poll; false once `deadline` has passed.
async fn again(deadline: Instant) -> bool {
    if Instant::now() >= deadline {
        return false;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    true
}

async fn list_run(run: &Run<'_>, collection: &str, extra: &str) -> Result<Vec<Value>> {
    let selector = format!("{RUN_LABEL}={}{extra}", run.id);
    run.client
        .list_all(
            &format!("{}/{collection}", run.base),
            &[("labels", selector)],
        )
        .await
}

async fn wait_workloads_ready(run: &Run<'_>) -> Result<()> {
    let deadline = Instant::now() + run.wait;
    loop {
        let items = list_run(run, "test-workloads", "").await?;
        let pending: Vec<String> = items
            .iter()
            .filter(|w| w["ready"].as_bool() != Some(true))
            .map(|w| {
                format!(
                    "{} on {}",
                    output::cell(&w["name"]),
                    output::cell(&w["node"])
                )
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if !again(deadline).await {
            bail!(
                "test workloads not ready after {}s: {}\nhint: the node's agent must speak \
                 capability 2 and have a pod CIDR (--pod-cidr); `weft status` and the agent's \
                 log tell more",
                run.wait.as_secs(),
                pending.join(", ")
            );
        }
    }
}

async fn wait_realized(run: &Run<'_>, path: &str, kind: &str) -> Result<()> {
    let deadline = Instant::now() + run.wait;
    loop {
        let v = run.client.get(path).await?.body;
        let st = &v["status"];
        let (done, total) = (
            st["realized_nodes"].as_i64().unwrap_or(0),
            st["total_nodes"].as_i64().unwrap_or(0),
        );
        if done >= total {
            return Ok(());
        }
        if !again(deadline).await {
            bail!(
                "test {kind} {} realized on {done} of {total} nodes after {}s; see `weft status`",
                output::cell(&v["name"]),
                run.wait.as_secs()
            );
        }
    }
}

/// Waits for every probe of the scenario; returns each one's result by id.
async fn wait_probes(run: &Run<'_>, scenario: &str) -> Result<BTreeMap<String, Value>> {
    let extra = format!(",{}={scenario}", plan::SCENARIO_LABEL);
    let deadline = Instant::now() + run.wait;
    loop {
        let items = list_run(run, "probes", &extra).await?;
        let pending = items.iter().filter(|p| p["status"] != "done").count();
        if pending == 0 {
            return Ok(items
                .iter()
                .map(|p| (output::cell(&p["id"]), p["result"].clone()))
                .collect());
        }
        if !again(deadline).await {
            bail!(
                "{pending} probe(s) of scenario {scenario} have no result after {}s: is the \
                 agent running and connected?",
                run.wait.as_secs()
            );
        }
    }
}

/// Looks for the probe's connection in the flow records: from the source (a test
/// workload, or — for the host — anything that is not one), to the target the packets
/// went to (for the service, the backend that answered), since the scenario began.
async fn find_flows(
    run: &Run<'_>,
    c: &Check,
    seen: &ProbeSeen,
    ips: &BTreeMap<Role, String>,
    names: &BTreeMap<Role, String>,
    since: &str,
) -> Result<FlowsSeen> {
    let mut q: Vec<(&str, String)> = vec![("since", since.to_string()), ("last", "50".into())];
    match c.from {
        From::Workload(r) => q.push(("from_ip", ips[&r].clone())),
        From::Host { .. } => q.push(("not_from_label", RUN_LABEL.to_string())),
    }
    // HTTP checks are judged by the proxy's records of their requests; a refused lookup by
    // the DNS proxy's record of the query.
    match (c.l7, c.expect, c.to) {
        (Some(L7::Http { path, .. }), ..) => {
            q.push(("type", "L7".into()));
            q.push(("http_path", format!("^{}$", regex_escape(path))));
        }
        (Some(L7::Resolve { name }), Expect::DnsRefused, To::Workload(r, _)) => {
            q.push(("type", "L7".into()));
            q.push(("dns_query", format!("^{}\\.$", regex_escape(name))));
            q.push(("to_ip", ips[&r].clone()));
            q.push(("to_port", "53".into()));
            return poll_flows(run, c, &encode_query(&q)).await;
        }
        _ => {}
    }
    match c.to {
        To::Workload(r, port) => {
            q.push(("to_ip", ips[&r].clone()));
            q.push(("to_port", port.to_string()));
        }
        To::Service => {
            let backend = names
                .iter()
                .find(|(_, n)| Some(*n) == seen.reply_from.as_ref())
                .map(|(r, _)| ips[r].clone());
            if let Some(ip) = backend {
                q.push(("to_ip", ip));
            }
            q.push(("to_port", plan::ECHO_PORT.to_string()));
        }
    }
    poll_flows(run, c, &encode_query(&q)).await
}

/// `s` with the characters a flow filter's regular expression would read as syntax
/// escaped.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// Polls the flows `q` selects until one matches what the check expects.
async fn poll_flows(run: &Run<'_>, c: &Check, q: &str) -> Result<FlowsSeen> {
    // Agents send flows in batches: give them a few seconds.
    let deadline = Instant::now() + run.wait.min(Duration::from_secs(15));
    loop {
        let items = flows::recent(run.client, q).await?;
        if items.iter().any(|f| judge::flow_matches(c.expect, f)) {
            return Ok(FlowsSeen::Matching);
        }
        if !again(deadline).await {
            let mut kinds: Vec<String> = items.iter().map(judge::flow_summary).collect();
            kinds.sort();
            kinds.dedup();
            return Ok(FlowsSeen::Other(kinds));
        }
    }
}

/// DELETE that treats "already gone" as done.
async fn delete_ok(client: &Client, path: &str) -> Result<()> {
    match client.delete(path).await {
        Ok(_) => Ok(()),
        Err(e) if status_of(&e) == Some(reqwest::StatusCode::NOT_FOUND) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes probes, the service, policies and workloads matching `selector` (a run's
/// label, or every run's); returns how many objects went. Keeps going after a failure so
/// one refusal leaves as little behind as possible.
async fn cleanup(client: &Client, cluster: &str, selector: &str) -> Result<usize> {
    let base = client.tpath(&format!("/clusters/{}", seg(cluster)))?;
    let q = encode_query(&[("selector", selector.to_string())]);
    let mut removed = 0;
    let mut errors = Vec::new();
    let by_selector = async |path: String| -> Result<usize> {
        let r = client.delete(&format!("{path}?{q}")).await?;
        Ok(r.body["deleted"].as_u64().unwrap_or(0) as usize)
    };
    match by_selector(format!("{base}/probes")).await {
        Ok(n) => removed += n,
        Err(e) => errors.push(format!("probes: {e:#}")),
    }
    let named = [
        (format!("{base}/services"), "service"),
        (client.tpath("/policies")?, "policy"),
    ];
    for (coll, kind) in named {
        let items = match client
            .list_all(&coll, &[("labels", selector.to_string())])
            .await
        {
            Ok(items) => items,
            Err(e) => {
                errors.push(format!("listing {kind} objects: {e:#}"));
                continue;
            }
        };
        for it in items {
            let name = output::cell(&it["name"]);
            match delete_ok(client, &format!("{coll}/{}", seg(&name))).await {
                Ok(()) => removed += 1,
                Err(e) => errors.push(format!("{kind} {name}: {e:#}")),
            }
        }
    }
    match by_selector(format!("{base}/test-workloads")).await {
        Ok(n) => removed += n,
        Err(e) => errors.push(format!("test workloads: {e:#}")),
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        bail!("{}", errors.join("; "))
    }
}

fn expected(e: Expect) -> String {
    match e {
        Expect::Allowed => "allowed".into(),
        Expect::Denied(r) => format!("denied ({r})"),
        Expect::HttpDenied => "HTTP 403".into(),
        Expect::DnsRefused => "DNS REFUSED".into(),
    }
}

fn summary(run: &Run<'_>, nodes: &[String], outcomes: &[Outcome], format: Format) -> Result<()> {
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let failed = outcomes.len() - passed;
    let data = json!({
        "run": run.id,
        "cluster": run.cluster,
        "nodes": nodes,
        "passed": passed,
        "failed": failed,
        "checks": outcomes.iter().map(|o| json!({
            "scenario": o.scenario,
            "name": o.check.name,
            "expected": expected(o.check.expect),
            "passed": o.passed,
            "probe": {
                "outcome": o.probe.outcome,
                "reply_from": o.probe.reply_from,
                "latency_us": o.latency_us,
                "detail": o.probe.detail,
            },
            "detail": o.why,
        })).collect::<Vec<_>>(),
    });
    output::print(
        format,
        &data,
        &["scenario", "check", "expected", "result", "detail"],
        || {
            outcomes
                .iter()
                .map(|o| {
                    vec![
                        o.scenario.to_string(),
                        o.check.name.to_string(),
                        expected(o.check.expect),
                        if o.passed { "passed" } else { "FAILED" }.to_string(),
                        o.why.clone(),
                    ]
                })
                .collect()
        },
    )?;
    if format == Format::Table {
        println!(
            "\n{passed}/{} checks passed{}",
            outcomes.len(),
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
