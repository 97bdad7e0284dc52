//! `cargo xtask schemathesis`: the OpenAPI fuzzer Schemathesis against a real control-api.
//!
//! It reads `openapi/openapi.json` and checks that what the spec calls valid is accepted,
//! what it calls invalid is refused, and every answer matches the spec. The API runs on a
//! fresh database with a throw-away tenant whose id is fixed as the `tenant` path
//! parameter, and is called with that tenant's owner token. Failures that are inherent
//! are listed, each with its reason, in `openapi/schemathesis-baseline.json`; any other
//! failure fails the run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::test::TestPostgres;
use crate::{http, oidc, pg, sh};

/// Pinned: checks and generation change between releases, and the baseline names
/// failures by this version's signatures.
const VERSION: &str = "4.32.5";
/// CI's time budget for the whole run (`--max-time`): with the API's start-up, about
/// 3 minutes. `cargo xtask fuzz api --minutes N` runs longer.
pub const CI_SECONDS: u32 = 150;
/// CI's seed, so that a failure reproduces; longer runs pick their own.
pub const CI_SEED: u64 = 21;
const BASELINE: &str = "openapi/schemathesis-baseline.json";

/// How long and from where the fuzzer searches.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub seconds: u32,
    pub seed: u64,
}

impl Budget {
    pub const CI: Budget = Budget {
        seconds: CI_SECONDS,
        seed: CI_SEED,
    };
}

/// Standalone (`cargo xtask schemathesis`, CI's budget): its own Postgres, then [`run`].
pub fn main(_args: &[String]) -> Result<()> {
    standalone(Budget::CI)
}

/// Its own Postgres, then [`run`] with `budget`.
pub fn standalone(budget: Budget) -> Result<()> {
    let pg = TestPostgres::start()?;
    let cluster = pg.cluster.as_ref().context("no Postgres")?;
    run(cluster, &pg.dir, budget)
}

/// The Python the venv is made with, and a short name for it: 3.12 or 3.13 when the
/// machine has one (pyenv installs them beside its default), since CPython 3.11 up to
/// 3.11.7 races in `ast.parse` between threads and Schemathesis's two workers hit it (a
/// crash of the tool, not a finding); else `python3`.
fn python() -> (PathBuf, String) {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        let versions = PathBuf::from(home).join(".pyenv/versions");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&versions)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
                        n.is_some_and(|n| n.starts_with("3.12.") || n.starts_with("3.13."))
                    })
                    .map(|p| p.join("bin/python3"))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        candidates.extend(found);
    }
    candidates.extend(["python3.12", "python3.13"].map(PathBuf::from));
    let works = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", "import venv"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let chosen = candidates
        .into_iter()
        .find(works)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let version = Command::new(&chosen)
        .args(["-c", "import sys; print('py%d.%d' % sys.version_info[:2])"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "py3".to_string());
    (chosen, version)
}

/// Installs Schemathesis into a venv under the target dir, unless that version is there.
fn ensure_installed() -> Result<PathBuf> {
    let (python, py) = python();
    let venv = sh::target_dir().join(format!("schemathesis-{VERSION}-{py}"));
    let bin = venv.join("bin/schemathesis");
    let have = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(VERSION));
    if !have {
        eprintln!(
            "xtask: installing schemathesis {VERSION} into {}",
            venv.display()
        );
        if Command::new(&python)
            .args(["-m", "venv", "--help"])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            sh::apt_install(&["python3-venv"])?;
        }
        sh::run(Command::new(&python).arg("-m").arg("venv").arg(&venv))?;
        sh::run(Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            "--disable-pip-version-check",
            &format!("schemathesis=={VERSION}"),
        ]))?;
    }
    Ok(bin)
}

/// Stops the API when the run ends, however it ends.
struct Api(Child);

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the fuzzer against a control-api on a new database in `cluster`.
pub fn run(cluster: &pg::Cluster, dir: &Path, budget: Budget) -> Result<()> {
    let started = Instant::now();
    let bin = ensure_installed()?;
    sh::run(Command::new(env!("CARGO")).args(["build", "-q", "-p", "control-api"]))?;
    let api_bin = sh::target_dir().join("debug/control-api");

    let db = format!("schemathesis_{}", std::process::id());
    cluster.psql(&format!("CREATE DATABASE {db}"))?;
    let port = pg::free_port()?;
    let api_url = format!("http://127.0.0.1:{port}");
    let operator = pg::random_hex(32)?;
    // A real issuer, so that the `/auth/*` routes are served as in production.
    let secret = pg::random_hex(24)?;
    let provider = oidc::Provider::start(
        &dir.join("schemathesis-oidc"),
        &[],
        &[oidc::Client {
            id: "weft-console".into(),
            secret: secret.clone(),
            redirect_uris: vec![format!("{api_url}/auth/callback")],
            grant_types: vec!["authorization_code"],
            access_token_ttl: None,
            public: false,
        }],
        false,
    )?;
    // Kept after the run (the Postgres dir is not), to read what a failure logged.
    let log_path = sh::target_dir().join("schemathesis-control-api.log");
    let log = fs::File::create(&log_path)?;
    let mut api = Api(Command::new(&api_bin)
        .env("DATABASE_URL", cluster.url(&db))
        .env("WEFT_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "WEFT_AGENT_LISTEN",
            format!("127.0.0.1:{}", pg::free_port()?),
        )
        .env("WEFT_OPERATOR_TOKEN", &operator)
        .env("WEFT_OIDC_ISSUER", &provider.issuer)
        .env("WEFT_OIDC_CLIENT_ID", "weft-console")
        .env("WEFT_OIDC_CLIENT_SECRET", &secret)
        .env("WEFT_OIDC_REDIRECT_URL", format!("{api_url}/auth/callback"))
        .env("WEFT_OIDC_AUDIENCE", oidc::AUDIENCE)
        .env("RUST_LOG", "warn")
        // The fuzzer's authentication checks send thousands of bad credentials from one
        // address, and expect 401 for each: 429 is tested in control-api's tests/auth.rs.
        .env("WEFT_AUTH_FAILURE_LIMIT", "1000000")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", api_bin.display()))?);
    wait_ready(&api_url, &mut api.0)?;

    // The throw-away tenant and its owner's token.
    let tenant = http::json(
        &api_url,
        "POST",
        "/v1/tenants",
        &operator,
        &json!({"name": "fuzz", "display_name": "Schemathesis"}),
        201,
    )?;
    let tenant_id = tenant["id"]
        .as_str()
        .context("tenant has no id")?
        .to_string();
    let token = http::json(
        &api_url,
        "POST",
        "/v1/tenants/fuzz/api-tokens",
        &operator,
        &json!({"name": "schemathesis", "role": "owner"}),
        201,
    )?["token"]
        .as_str()
        .context("no token")?
        .to_string();

    let root = sh::root();
    let out = sh::target_dir().join("schemathesis-report");
    let config = dir.join("schemathesis.toml");
    // `If-Match` is fixed as `*` (unconditional), like the tenant: whether an ETag is still
    // current depends on the resource's history, not on the value (a stale one is 412 by
    // design, tested in control-api's tests/resources.rs with malformed ones); and
    // Schemathesis 4.32.5's coverage phase cannot generate a header value in double quotes,
    // so it seeds the optional header with a wrong-type value (`0`, `null`) in cases it
    // calls positive.
    fs::write(
        &config,
        format!("[parameters]\n\"path.tenant\" = \"{tenant_id}\"\n\"header.If-Match\" = \"*\"\n"),
    )?;
    eprintln!(
        "xtask: schemathesis {VERSION} against {api_url} (tenant {tenant_id}), at most {} s, seed {}",
        budget.seconds, budget.seed
    );
    let run = || -> Result<std::process::ExitStatus> {
        Command::new(&bin)
            .arg("--config-file")
            .arg(&config)
            .arg("run")
            .arg(root.join("openapi/openapi.json"))
            .args(["--url", &api_url])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--checks", "all"])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            // Deleting the fixed tenant would leave every later case a 404: the tenant tests
            // cover it (see the baseline's `excluded`).
            .args(["--exclude-operation-id", "delete_tenant"])
            .args(["--max-time", &budget.seconds.to_string()])
            .args(["--workers", "2"])
            .args(["--seed", &budget.seed.to_string()])
            .arg("--baseline")
            .arg(root.join(BASELINE))
            .args(["--report", "json", "--report-dir"])
            .arg(&out)
            .args(["--no-color", "--warnings", "off"])
            // For a closer look at one failure, e.g. `--include-operation-id delete_cluster
            // --phases coverage --report ndjson`.
            .args(
                std::env::var("WEFT_SCHEMATHESIS_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env("NO_COLOR", "1")
            // Its example database (`.schemathesis/`) goes under the target dir.
            .current_dir(sh::target_dir())
            .stdin(Stdio::null())
            .status()
            .context("running schemathesis")
    };
    let mut status = run()?;
    // CPython 3.11.7 (the machine's default) races in `ast.parse` between threads ("AST
    // constructor recursion depth mismatch"), which Hypothesis calls from both workers: a
    // crash of the tool, not a finding. The venv avoids it where a newer Python exists
    // (`python`); where not, such a run is made once more.
    if !status.success() && tool_crashed_only(&out) {
        eprintln!(
            "xtask: schemathesis itself crashed (see its traceback above), running it once more"
        );
        status = run()?;
    }
    drop(api);
    drop(provider);
    match summary(&out) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("xtask: no schemathesis summary: {e:#}"),
    }
    let _ = cluster.psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    eprintln!(
        "xtask: schemathesis finished in {} s; the API's log is {}",
        started.elapsed().as_secs(),
        log_path.display()
    );
    if !status.success() {
        bail!("schemathesis found failures not in {BASELINE} ({status})");
    }
    Ok(())
}

/// The newest JSON report.
fn newest_report(dir: &Path) -> Result<serde_json::Value> {
    let newest = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .context("no JSON report")?;
    Ok(serde_json::from_slice(&fs::read(&newest)?)?)
}

/// Whether the run found nothing new and failed only on errors of the tool itself ("Runtime
/// Error": the report keeps no more detail; a crash that is ours would come back on the rerun).
fn tool_crashed_only(dir: &Path) -> bool {
    let Ok(r) = newest_report(dir) else {
        return false;
    };
    let errors = r["errors"].as_array().cloned().unwrap_or_default();
    r["baseline"]["new"].as_u64() == Some(0)
        && !errors.is_empty()
        && errors.iter().all(|e| e["title"] == "Runtime Error")
}

/// One line from the newest JSON report: operations, test cases, failures.
fn summary(dir: &Path) -> Result<String> {
    let r = newest_report(dir)?;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    Ok(format!(
        "schemathesis: {} operations tested of {} selected; {} test cases generated; \
         {} failures ({} new, {} known from the baseline); {} errors; {:.0} s",
        n(&r["operations"]["tested"]),
        n(&r["operations"]["selected"]),
        n(&r["test_cases"]["generated"]),
        n(&r["baseline"]["new"]) + n(&r["baseline"]["known"]),
        n(&r["baseline"]["new"]),
        n(&r["baseline"]["known"]),
        r["errors"].as_array().map_or(0, Vec::len),
        r["running_time"].as_f64().unwrap_or(0.0),
    ))
}

fn wait_ready(api_url: &str, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("control-api exited during start-up ({status})");
        }
        if http::request(api_url, "GET", "/readyz", None, None).is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("control-api did not become ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
