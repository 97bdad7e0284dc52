//! A private PostgreSQL cluster: its own data directory, port and password, started from
//! the machine's PostgreSQL binaries (installed from Debian if missing).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sh;

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub password: String,
    bin: PathBuf,
}

/// Finds the newest installed PostgreSQL server binaries, installing them if absent.
pub fn ensure_binaries() -> Result<PathBuf> {
    if let Some(bin) = find_bindir() {
        return Ok(bin);
    }
    sh::apt_install(&["postgresql"])?;
    find_bindir().context("PostgreSQL installed but no server binaries under /usr/lib/postgresql")
}

fn find_bindir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// A loopback port free now, for a process started later to listen on. Taken below the
/// kernel's ephemeral range: a port from `bind(0)` comes from that range, and any connection
/// opened before the server binds it (the server's own database pool, say) may get it as its
/// local port — a CI run's demo failed so ("binding the agent service: Address already in use").
pub fn free_port() -> Result<u16> {
    const LOWEST: u16 = 10_000;
    let ephemeral_from = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_from.saturating_sub(LOWEST);
    if span > 0 {
        // A random start: concurrent runs (CI beside a demo) rarely probe the same ports.
        let start = u16::from_str_radix(&random_hex(2)?, 16).unwrap_or(0) % span;
        for i in 0..span {
            let port = LOWEST + (start + i) % span;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// `bytes` random bytes from the kernel, hex-encoded: passwords and tokens for local use.
pub fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root (initdb refuses root).
fn pg_command(bin: &Path, tool: &str) -> Command {
    let exe = bin.join(tool);
    if sh::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn chown_postgres(path: &Path) -> Result<()> {
    if sh::is_root() {
        sh::run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path),
        )?;
    }
    Ok(())
}

impl Cluster {
    /// Creates a new cluster in `dir` (which must not hold one yet).
    pub fn init(dir: &Path, port: u16) -> Result<Cluster> {
        let bin = ensure_binaries()?;
        let password = random_hex(18)?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let pwfile = dir.join("..").join(format!(".pw-{port}"));
        fs::write(&pwfile, &password)?;
        chown_postgres(dir)?;
        chown_postgres(&pwfile)?;
        let res = sh::output(
            pg_command(&bin, "initdb")
                .arg("-D")
                .arg(dir)
                .args([
                    "-U",
                    "weft",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
        );
        let _ = fs::remove_file(&pwfile);
        res.with_context(|| {
            format!(
                "initdb in {} (the postgres user must be able to reach this folder)",
                dir.display()
            )
        })?;
        let cluster = Cluster {
            dir: dir.to_path_buf(),
            port,
            password,
            bin,
        };
        cluster.save()?;
        Ok(cluster)
    }

    /// Re-opens a cluster created earlier by `init`.
    pub fn open(dir: &Path) -> Result<Cluster> {
        let meta = fs::read_to_string(dir.join("weft-cluster"))
            .with_context(|| format!("no Weft cluster in {}", dir.display()))?;
        let mut lines = meta.lines();
        let port = lines.next().context("cluster metadata: port")?.parse()?;
        let password = lines
            .next()
            .context("cluster metadata: password")?
            .to_string();
        Ok(Cluster {
            dir: dir.to_path_buf(),
            port,
            password,
            bin: ensure_binaries()?,
        })
    }

    fn save(&self) -> Result<()> {
        let meta = self.dir.join("weft-cluster");
        fs::write(&meta, format!("{}\n{}\n", self.port, self.password))?;
        fs::set_permissions(&meta, fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    /// Starts the server on 127.0.0.1 only and waits until it accepts connections.
    pub fn start(&self) -> Result<()> {
        let log = self.dir.join("server.log");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        sh::output(
            pg_command(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(&self.dir)
                .arg("-l")
                .arg(&log)
                .args(["-o", &opts, "-w", "-t", "30", "start"]),
        )
        .with_context(|| format!("starting PostgreSQL (log: {})", log.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("PostgreSQL did not open port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn stop(&self) -> Result<()> {
        sh::output(
            pg_command(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(&self.dir)
                .args(["-m", "fast", "-w", "stop"]),
        )
        .map(|_| ())
    }

    pub fn is_running(&self) -> bool {
        pg_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .arg("status")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://weft:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Runs SQL against the `postgres` database with psql.
    pub fn psql(&self, sql: &str) -> Result<()> {
        sh::output(
            Command::new(self.bin.join("psql"))
                .arg(self.url("postgres"))
                .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql]),
        )
        .map(|_| ())
    }
}
