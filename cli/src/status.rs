//! `weft status`: the tenant's clusters, nodes, and how far policies and services are
//! realized; non-zero exit when something is not ready, `--wait` until it is.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

use crate::client::{seg, Client, Target};
use crate::output::{self, Format};
use crate::{Exit, EXIT_NOT_READY};

/// Show the tenant's health: clusters, nodes, policy and service realization.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  weft status\n  weft status --wait --timeout 5m\n  weft status -o json\n\n\
    Not ready (exit 3): no node connected, a node not connected or unhealthy, a node behind\n\
    the current desired state, a policy or service not realized on all its nodes."
)]
pub struct StatusArgs {
    /// Poll until everything is ready.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits: `90s`, `5m`, `1h`, or seconds.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// Everything status looks at, as the API returned it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub tenant: Value,
    /// (cluster, its nodes, its services)
    pub clusters: Vec<(Value, Vec<Value>, Vec<Value>)>,
    pub policies: Vec<Value>,
}

async fn gather(client: &Client) -> Result<Snapshot> {
    let tenant = client.get(&client.tpath("")?).await?.body;
    let mut clusters = Vec::new();
    for c in client.list_all(&client.tpath("/clusters")?, &[]).await? {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let base = client.tpath(&format!("/clusters/{}", seg(&name)))?;
        let nodes = client.list_all(&format!("{base}/nodes"), &[]).await?;
        let services = client.list_all(&format!("{base}/services"), &[]).await?;
        clusters.push((c, nodes, services));
    }
    let policies = client.list_all(&client.tpath("/policies")?, &[]).await?;
    Ok(Snapshot {
        tenant,
        clusters,
        policies,
    })
}

fn rev(v: &Value) -> i64 {
    v["revision"].as_i64().unwrap_or(0)
}

fn realized(v: &Value) -> (i64, i64) {
    (
        v["status"]["realized_nodes"].as_i64().unwrap_or(0),
        v["status"]["total_nodes"].as_i64().unwrap_or(0),
    )
}

/// The revision a node of `cluster` must have applied: the newest policy or service
/// that applies to it.
fn wanted_revision(s: &Snapshot, cluster: &Value, services: &[Value]) -> i64 {
    let name = cluster["name"].as_str().unwrap_or_default();
    let policies = s
        .policies
        .iter()
        .filter(|p| match p["clusters"].as_array() {
            None => true,
            Some(cs) => cs.iter().any(|c| c.as_str() == Some(name)),
        });
    policies.chain(services.iter()).map(rev).max().unwrap_or(0)
}

/// The summary and every problem, in reading order.
pub fn evaluate(s: &Snapshot) -> Value {
    let mut problems: Vec<String> = Vec::new();
    let (mut total, mut connected) = (0, 0);
    let mut clusters = Vec::new();
    for (c, nodes, services) in &s.clusters {
        let cname = output::cell(&c["name"]);
        let wanted = wanted_revision(s, c, services);
        let mut node_out = Vec::new();
        for n in nodes {
            total += 1;
            let nname = format!("{cname}/{}", output::cell(&n["name"]));
            let st = &n["status"];
            let is_connected = st["connected"].as_bool().unwrap_or(false);
            let applied = st["applied_revision"].as_i64().unwrap_or(0);
            let health = st["health"]["datapath_status"]
                .as_str()
                .unwrap_or("unknown");
            if is_connected {
                connected += 1;
            } else {
                problems.push(format!("node {nname} is not connected"));
            }
            if is_connected && health != "ok" && health != "unknown" {
                let why = st["health"]["last_error"].as_str().unwrap_or_default();
                problems.push(
                    format!("node {nname} datapath is {health} {why}")
                        .trim_end()
                        .to_string(),
                );
            }
            let apply_errors = st["health"]["apply_errors"].as_array().map_or(0, Vec::len);
            if apply_errors > 0 {
                problems.push(format!(
                    "node {nname} failed to apply {apply_errors} item(s)"
                ));
            }
            if applied < wanted {
                problems.push(format!(
                    "node {nname} is at revision {applied}, behind {wanted}"
                ));
            }
            node_out.push(json!({
                "name": n["name"], "connected": is_connected,
                "agent_version": st["agent_version"], "health": health,
                "applied_revision": applied, "wanted_revision": wanted,
                "last_seen": st["last_seen"],
            }));
        }
        let svc_out: Vec<Value> = services
            .iter()
            .map(|sv| {
                let (r, t) = realized(sv);
                if r < t {
                    problems.push(format!(
                        "service {cname}/{} is realized on {r} of {t} nodes",
                        output::cell(&sv["name"])
                    ));
                }
                json!({"name": sv["name"], "realized_nodes": r, "total_nodes": t})
            })
            .collect();
        clusters.push(json!({"name": c["name"], "nodes": node_out, "services": svc_out}));
    }
    if connected == 0 {
        problems.insert(0, "no node is connected".to_string());
    }
    let policies: Vec<Value> = s
        .policies
        .iter()
        .map(|p| {
            let (r, t) = realized(p);
            if r < t {
                problems.push(format!(
                    "policy {} is realized on {r} of {t} nodes",
                    output::cell(&p["name"])
                ));
            }
            json!({"name": p["name"], "realized_nodes": r, "total_nodes": t})
        })
        .collect();
    json!({
        "tenant": {"id": s.tenant["id"], "name": s.tenant["name"]},
        "ready": problems.is_empty(),
        "nodes": {"connected": connected, "total": total},
        "clusters": clusters,
        "policies": policies,
        "problems": problems,
    })
}

fn count_realized(items: impl Iterator<Item = Value>) -> (usize, usize) {
    let mut n = 0;
    let mut ok = 0;
    for i in items {
        n += 1;
        if i["realized_nodes"].as_i64() >= i["total_nodes"].as_i64() {
            ok += 1;
        }
    }
    (ok, n)
}

/// The people's view of [`evaluate`]'s summary.
pub fn render(r: &Value) -> String {
    let mut out = format!(
        "Tenant:    {} ({})\n",
        output::cell(&r["tenant"]["name"]),
        output::cell(&r["tenant"]["id"])
    );
    let clusters = r["clusters"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("Clusters:  {}\n", clusters.len()));
    out.push_str(&format!(
        "Nodes:     {}/{} connected\n",
        r["nodes"]["connected"], r["nodes"]["total"]
    ));
    let rows: Vec<Vec<String>> = clusters
        .iter()
        .flat_map(|c| {
            let cname = output::cell(&c["name"]);
            c["nodes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |n| {
                    vec![
                        cname.clone(),
                        output::cell(&n["name"]),
                        if n["connected"] == true { "yes" } else { "no" }.into(),
                        output::cell(&n["agent_version"]),
                        output::cell(&n["health"]),
                        format!("{}/{}", n["applied_revision"], n["wanted_revision"]),
                    ]
                })
        })
        .collect();
    if !rows.is_empty() {
        for line in output::table(
            &[
                "cluster",
                "node",
                "connected",
                "agent",
                "health",
                "revision",
            ],
            &rows,
        )
        .lines()
        {
            out.push_str(&format!("  {line}\n"));
        }
    }
    let (pok, pn) = count_realized(
        r["policies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter(),
    );
    out.push_str(&format!(
        "Policies:  {pok}/{pn} realized on all their nodes\n"
    ));
    let services = clusters
        .iter()
        .flat_map(|c| c["services"].as_array().cloned().unwrap_or_default());
    let (sok, sn) = count_realized(services);
    out.push_str(&format!(
        "Services:  {sok}/{sn} realized on all their nodes\n"
    ));
    match r["problems"].as_array() {
        Some(ps) if !ps.is_empty() => {
            out.push_str("Status:    NOT READY\n");
            for p in ps {
                out.push_str(&format!("  - {}\n", output::cell(p)));
            }
        }
        _ => out.push_str("Status:    ready\n"),
    }
    out
}

fn show(format: Format, r: &Value) -> Result<()> {
    match format {
        Format::Table => print!("{}", render(r)),
        f => output::print(f, r, &[], Vec::new)?,
    }
    Ok(())
}

fn progress_line(r: &Value, elapsed: Duration) -> String {
    let first = r["problems"][0].as_str().unwrap_or("");
    let more = r["problems"]
        .as_array()
        .map_or(0, Vec::len)
        .saturating_sub(1);
    let more = if more > 0 {
        format!(" (+{more} more)")
    } else {
        String::new()
    };
    format!(
        "waiting {:>4}s: {}/{} nodes connected; {first}{more}",
        elapsed.as_secs(),
        r["nodes"]["connected"],
        r["nodes"]["total"]
    )
}

pub async fn run(target: &Target, a: StatusArgs) -> Result<()> {
    let client = Client::new(target).await?;
    let start = Instant::now();
    // A spinner on a terminal; without one (hidden bar), one line per change of state.
    let bar = if a.wait {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut last_line = String::new();
    loop {
        let r = evaluate(&gather(&client).await?);
        let ready = r["ready"] == true;
        if ready || !a.wait || start.elapsed() >= a.timeout {
            bar.finish_and_clear();
            show(a.output, &r)?;
            if ready {
                return Ok(());
            }
            if a.wait {
                eprintln!("error: not ready after {}s", a.timeout.as_secs());
            }
            return Err(Exit(EXIT_NOT_READY).into());
        }
        let line = progress_line(&r, start.elapsed());
        let key = line
            .split_once(": ")
            .map(|x| x.1)
            .unwrap_or(&line)
            .to_string();
        if bar.is_hidden() {
            if key != last_line {
                eprintln!("{line}");
            }
        } else {
            bar.set_message(line);
        }
        last_line = key;
        let left = a.timeout.saturating_sub(start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, connected: bool, applied: i64, health: &str) -> Value {
        json!({"name": name, "status": {"connected": connected, "applied_revision": applied,
            "agent_version": "0.1.0", "health": {"datapath_status": health, "apply_errors": []}}})
    }

    fn snapshot(nodes: Vec<Value>, policy_realized: (i64, i64)) -> Snapshot {
        Snapshot {
            tenant: json!({"id": "t1", "name": "acme"}),
            clusters: vec![(json!({"name": "edge"}), nodes, vec![])],
            policies: vec![json!({"name": "p", "revision": 10,
                "status": {"realized_nodes": policy_realized.0, "total_nodes": policy_realized.1}})],
        }
    }

    #[test]
    fn all_connected_current_and_realized_is_ready() {
        let r = evaluate(&snapshot(
            vec![node("n1", true, 10, "ok"), node("n2", true, 12, "ok")],
            (2, 2),
        ));
        assert_eq!(r["ready"], true, "{r}");
        assert!(render(&r).contains("Status:    ready"));
        assert!(render(&r).contains("2/2 connected"));
    }

    #[test]
    fn every_kind_of_problem_is_named() {
        let r = evaluate(&snapshot(vec![], (0, 0)));
        assert_eq!(r["problems"], json!(["no node is connected"]));
        let r = evaluate(&snapshot(
            vec![node("n1", true, 9, "degraded"), node("n2", false, 10, "ok")],
            (1, 2),
        ));
        let problems: Vec<String> = serde_json::from_value(r["problems"].clone()).unwrap();
        assert_eq!(
            problems,
            [
                "node edge/n1 datapath is degraded",
                "node edge/n1 is at revision 9, behind 10",
                "node edge/n2 is not connected",
                "policy p is realized on 1 of 2 nodes",
            ]
        );
        assert!(render(&r).contains("NOT READY"));
        assert!(progress_line(&r, Duration::from_secs(3))
            .contains("1/2 nodes connected; node edge/n1 datapath is degraded (+3 more)"));
    }

    #[test]
    fn policies_scoped_elsewhere_do_not_hold_nodes_back() {
        let mut s = snapshot(vec![node("n1", true, 5, "ok")], (0, 0));
        s.policies[0]["clusters"] = json!(["other"]);
        assert_eq!(evaluate(&s)["ready"], true);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 min").is_err());
    }
}
