//! The demo as a user meets it, checked at the end of `cargo xtask test`: `demo --detach`,
//! then the real `weft` binary with the settings the demo prints — `weft status` healthy,
//! `weft connectivity test` with every scenario passing, and drop flows from `weft observe`
//! — then `down`, whatever happened.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{demo, sh};

/// The fewest checks `weft connectivity test` must run against the two demo nodes.
const MIN_CHECKS: u64 = 50;

pub fn check() -> Result<()> {
    eprintln!("xtask: demo check: cargo xtask demo --detach");
    sh::run(Command::new(env!("CARGO")).args(["build", "-q", "-p", "weft-cli"]))?;
    demo::demo(true).context("starting the demo")?;
    let result = checks();
    let down = demo::down();
    if result.is_err() {
        eprintln!("xtask: demo check failed; logs were under .weft/ (removed by down)");
    }
    result?;
    down
}

/// The demo's settings (`.weft/demo.env`).
fn settings() -> Result<BTreeMap<String, String>> {
    let path = sh::root().join(".weft/demo.env");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The frontend fetches web-2's page over IPv6 (other node, through the tunnel; the sample
/// policy admits it), retried while the agents converge.
fn ipv6_across_nodes() -> Result<()> {
    let (from, url) = crate::nodes::IPV6_CHECK;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/weft-demo-{from}"))
            .args([
                "curl",
                "-s",
                "-g",
                "-m",
                "3",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                url,
            ])
            .output()
            .context("running curl in the demo's frontend namespace")?;
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code == "200" {
            eprintln!("xtask: demo check: {from} -> {url} over IPv6: 200");
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{from} -> {url} over IPv6: no 200 within 30 s (curl said {code:?}, {})",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// No process on the machine shows one of the demo's secrets in its arguments (anyone can
/// read `/proc/*/cmdline`): API tokens, the operator token, the demo password, join tokens
/// and the agents' node credentials, which must be files only their owner reads.
fn no_secret_in_arguments(env: &BTreeMap<String, String>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut secrets: Vec<(String, String)> = [
        "WEFT_TOKEN",
        "WEFT_OTHER_TOKEN",
        "WEFT_OPERATOR_TOKEN",
        "WEFT_DEMO_USER_PASSWORD",
    ]
    .iter()
    .filter_map(|k| Some((k.to_string(), env.get(*k)?.clone())))
    .collect();
    for node in ["n1", "n2"] {
        let path = sh::root()
            .join(".weft/agents")
            .join(node)
            .join("credential");
        let mode = std::fs::metadata(&path)
            .with_context(|| format!("the node credential {}", path.display()))?
            .permissions()
            .mode();
        ensure!(
            mode & 0o077 == 0,
            "{} is readable by others (mode {mode:o})",
            path.display()
        );
        let credential = std::fs::read_to_string(&path)?.trim().to_string();
        secrets.push((format!("the credential of {node}"), credential));
    }
    secrets.push(("a join token".into(), "weft_join_".into()));
    let mut processes = 0;
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end between listing and reading.
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        processes += 1;
        let args = String::from_utf8_lossy(&raw).replace('\0', " ");
        for (what, secret) in &secrets {
            ensure!(
                secret.len() < 8 || !args.contains(secret.as_str()),
                "process {pid} shows {what} in its arguments: {}",
                args.split_whitespace().next().unwrap_or("?")
            );
        }
    }
    eprintln!(
        "xtask: demo check: no secret in the arguments of {processes} processes; node credentials 0600"
    );
    Ok(())
}

/// Runs `weft` with the demo's settings; returns its stdout, failing on a non-zero exit.
fn weft(env: &BTreeMap<String, String>, args: &[&str]) -> Result<String> {
    let bin = sh::target_dir().join("debug/weft");
    let mut cmd = Command::new(&bin);
    cmd.args(args)
        .env_remove("WEFT_CONTEXT")
        .env("HOME", sh::root().join(".weft"))
        .env("WEFT_API_URL", &env["WEFT_API_URL"])
        .env("WEFT_TOKEN", &env["WEFT_TOKEN"])
        .env("WEFT_TENANT", "acme");
    eprintln!("xtask: demo check: weft {}", args.join(" "));
    sh::output(&mut cmd)
}

fn checks() -> Result<()> {
    let env = settings()?;
    for key in ["WEFT_API_URL", "WEFT_TOKEN"] {
        ensure!(env.contains_key(key), "demo.env has no {key}");
    }
    let status: Value = serde_json::from_str(&weft(
        &env,
        &["status", "--wait", "--timeout", "90s", "-o", "json"],
    )?)
    .context("weft status -o json is not JSON")?;
    ensure!(
        status["ready"] == true,
        "weft status is not ready: {status}"
    );
    ensure!(
        status["nodes"]["connected"].as_u64() >= Some(2),
        "the demo's two nodes are not connected: {status}"
    );

    no_secret_in_arguments(&env)?;
    ipv6_across_nodes()?;

    let report = weft(&env, &["connectivity", "test", "-o", "json"])?;
    let report: Value =
        serde_json::from_str(&report).context("weft connectivity test -o json is not JSON")?;
    let (passed, failed) = (
        report["passed"].as_u64().unwrap_or(0),
        report["failed"].as_u64().unwrap_or(u64::MAX),
    );
    ensure!(
        failed == 0 && passed >= MIN_CHECKS,
        "weft connectivity test: {passed} passed, {failed} failed (want ≥ {MIN_CHECKS}, none failed): {report:#}"
    );
    // The demo is dual stack: every check runs over IPv6 too.
    let names: Vec<&str> = report["checks"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let ipv6 = names.iter().filter(|n| n.contains("ipv6")).count();
    ensure!(
        ipv6 * 2 == names.len() && ipv6 > 0,
        "weft connectivity test ran {ipv6} IPv6 checks of {}: {names:?}",
        names.len()
    );
    // HTTP rules and DNS/toFQDNs are checked through the agents' proxies, both families.
    for want in [
        "http/denied-path",
        "http/allowed-path/other-node",
        "fqdn/other-name-denied",
        "fqdn/dns-refused/ipv6",
    ] {
        ensure!(
            names.contains(&want),
            "weft connectivity test has no check {want}: {names:?}"
        );
    }
    eprintln!("xtask: demo check: connectivity test passed {passed} checks ({ipv6} over IPv6)");

    let drops: Value = serde_json::from_str(&weft(
        &env,
        &[
            "observe",
            "--verdict",
            "DROPPED",
            "--last",
            "20",
            "-o",
            "json",
        ],
    )?)
    .context("weft observe -o json is not JSON")?;
    let Some(drops) = drops.as_array() else {
        bail!("weft observe -o json did not print a list: {drops}");
    };
    ensure!(!drops.is_empty(), "weft observe found no drop flows");
    ensure!(
        drops.iter().all(|f| f["verdict"] == "DROPPED"),
        "weft observe --verdict DROPPED printed other verdicts: {drops:?}"
    );
    // The connectivity test removed everything it made.
    let left = weft(&env, &["policy", "list", "-o", "json"])?;
    ensure!(
        !left.contains("weft-ct-run"),
        "the connectivity test left policies behind: {left}"
    );
    crate::terraform::demo_quickstart(&env["WEFT_API_URL"], &env["WEFT_TOKEN"])?;
    crate::console::e2e()?;
    Ok(())
}
