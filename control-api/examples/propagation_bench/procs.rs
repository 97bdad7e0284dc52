//! The benchmark's processes: control-api replicas (the release binary, TLS on the agent
//! service, one database) and `node-agent sim` fleets, with what `/proc` says about them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use weft_testkit::ports::free_port;

use crate::common::OPERATOR;

/// One control-api process.
pub struct Replica {
    /// `http://127.0.0.1:<port>`.
    pub rest: String,
    /// `https://127.0.0.1:<port>`.
    pub agent: String,
    cmd: (PathBuf, Vec<String>),
    child: Child,
}

impl Replica {
    pub async fn start(
        bin: &Path,
        db_url: &str,
        tls: &(PathBuf, PathBuf),
        http: &reqwest::Client,
    ) -> Result<Replica> {
        let (rest, agent) = (free_port(), free_port());
        let args = vec![
            "--database-url".into(),
            db_url.to_string(),
            "--listen".into(),
            format!("127.0.0.1:{rest}"),
            "--agent-listen".into(),
            format!("127.0.0.1:{agent}"),
            "--agent-tls-cert".into(),
            tls.0.display().to_string(),
            "--agent-tls-key".into(),
            tls.1.display().to_string(),
            "--db-max-connections".into(),
            "32".into(),
        ];
        let child = spawn_replica(bin, &args)?;
        let r = Replica {
            rest: format!("http://127.0.0.1:{rest}"),
            agent: format!("https://127.0.0.1:{agent}"),
            cmd: (bin.to_path_buf(), args),
            child,
        };
        r.ready(http).await?;
        Ok(r)
    }

    async fn ready(&self, http: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let ok = http
                .get(format!("{}/readyz", self.rest))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("control-api at {} not ready within 60 s", self.rest)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGKILL, as a crashed replica.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await.context("killing control-api")
    }

    /// Starts it again on the same ports.
    pub async fn restart(&mut self, http: &reqwest::Client) -> Result<()> {
        self.child = spawn_replica(&self.cmd.0, &self.cmd.1)?;
        self.ready(http).await
    }
}

/// `WEFT_BENCH_REPLICA_WRAP`: a command the replicas run under, for profiling (for example a
/// script running `exec heaptrack -o <dir>/replica.$$ "$@"`; each replica needs its own file).
/// Re-homing's SIGKILL then reaches the wrapper, not the replica: stop the run before it.
fn spawn_replica(bin: &Path, args: &[String]) -> Result<Child> {
    let wrap = std::env::var("WEFT_BENCH_REPLICA_WRAP").unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    let mut cmd = match wrap.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(wrap).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args)
        .env("WEFT_OPERATOR_TOKEN", OPERATOR)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// A `node-agent sim` process: its fleets' progress lines.
pub struct Sim {
    child: Child,
    fleets: Vec<watch::Receiver<Value>>,
}

pub struct SimSpec<'a> {
    pub bin: &'a Path,
    pub urls: &'a [String],
    pub ca: &'a Path,
    pub tokens: &'a [String],
    pub agents: usize,
    pub endpoints: usize,
}

impl Sim {
    pub fn start(s: SimSpec<'_>) -> Result<Sim> {
        let mut cmd = Command::new(s.bin);
        cmd.arg("sim")
            .args(["--agents", &s.agents.to_string()])
            .args(["--endpoints-per-node", &s.endpoints.to_string()])
            .arg("--ca-cert")
            .arg(s.ca)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        for u in s.urls {
            cmd.args(["--control-plane", u]);
        }
        for t in s.tokens {
            cmd.args(["--join-token", t]);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} sim", s.bin.display()))?;
        let stdout = child.stdout.take().context("sim stdout")?;
        let (txs, fleets): (Vec<_>, Vec<_>) =
            s.tokens.iter().map(|_| watch::channel(Value::Null)).unzip();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let fleet = v["fleet"].as_u64().unwrap_or(0) as usize;
                if let Some(tx) = txs.get(fleet) {
                    tx.send_replace(v);
                }
            }
        });
        Ok(Sim { child, fleets })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The fleet's last progress line.
    pub fn progress(&self, fleet: usize) -> Value {
        self.fleets
            .get(fleet)
            .map(|f| f.borrow().clone())
            .unwrap_or(Value::Null)
    }

    /// Waits until the fleet's progress satisfies `done`; fails after `within` with the
    /// progress then.
    pub async fn wait(
        &self,
        fleet: usize,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let mut rx = self.fleets.get(fleet).context("no such fleet")?.clone();
        let got = tokio::time::timeout(within, rx.wait_for(|v| done(v)))
            .await
            .map(|r| r.map(|v| v.clone()));
        match got {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => bail!("the sim process exited: {}", self.progress(fleet)),
            Err(_) => bail!("not within {within:?}: {}", self.progress(fleet)),
        }
    }

    /// Until every agent of the fleet has acked `revision`.
    pub async fn acked(&self, fleet: usize, revision: u64, within: Duration) -> Result<Value> {
        self.wait(fleet, within, |v| v["acked"].as_u64() >= Some(revision))
            .await
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A `Key:   N kB` line of a /proc file, in KiB (0 when it cannot be read).
fn proc_kib(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// CPU time (user + system) `pid` has used, ms.
pub fn cpu_ms(pid: u32) -> f64 {
    // Fields 14 and 15 of /proc/PID/stat, after the parenthesized command name.
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // In USER_HZ, which is 100 on every Linux that exports it to /proc.
    ticks as f64 * 10.0
}

/// CPU time all PostgreSQL processes have used, ms (backends that exited are not counted:
/// the replicas' pools keep theirs).
pub fn postgres_cpu_ms() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(cpu_ms)
        .sum()
}

/// Memory the kernel says can be had, KiB.
pub fn mem_available_kib() -> u64 {
    proc_kib("/proc/meminfo", "MemAvailable:")
}
