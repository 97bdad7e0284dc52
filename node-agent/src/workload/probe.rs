//! Probes: one TCP connection, one echo exchange, one result.
//!
//! The agent runs each probe as a child process (`node-agent probe`, hidden) so that it can
//! sit where a workload's own process would: the child joins the node's socket-LB cgroup
//! before `exec` (a connection to a service VIP is balanced exactly like a pod's) and enters
//! the workload's network namespace before it opens any socket or thread. The child prints
//! one [`ProbeResult`] as JSON on stdout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weft_model::workload::{parse_echo_reply, DesiredProbe, ProbeOutcome};
use weft_proto::v1 as pb;

/// Used when a probe asks for no timeout (0).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest timeout honoured (a probe never holds a slot longer).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest echo reply read.
const MAX_REPLY: usize = 1024;

/// How one probe ended, as reported to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub id: String,
    pub outcome: ProbeOutcome,
    #[serde(default)]
    pub detail: String,
    /// From the start of the connect to the reply.
    #[serde(default)]
    pub latency_us: u64,
    /// The echo server's workload name, when it answered.
    #[serde(default)]
    pub reply_from: String,
}

impl ProbeResult {
    pub fn error(id: &str, detail: impl Into<String>) -> Self {
        ProbeResult {
            id: id.to_string(),
            outcome: ProbeOutcome::Error,
            detail: detail.into(),
            latency_us: 0,
            reply_from: String::new(),
        }
    }
}

impl From<ProbeResult> for pb::ProbeResult {
    fn from(r: ProbeResult) -> Self {
        let outcome = match r.outcome {
            ProbeOutcome::Connected => pb::ProbeOutcome::Connected,
            ProbeOutcome::Refused => pb::ProbeOutcome::Refused,
            ProbeOutcome::Timeout => pb::ProbeOutcome::Timeout,
            ProbeOutcome::Error => pb::ProbeOutcome::Error,
        };
        pb::ProbeResult {
            id: r.id,
            outcome: outcome as i32,
            detail: r.detail,
            latency_us: r.latency_us,
            reply_from: r.reply_from,
        }
    }
}

/// The probe's timeout: 0 means the default, and it is capped.
pub fn timeout_of(p: &DesiredProbe) -> Duration {
    match p.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_TIMEOUT),
    }
}

/// What a failed connect or read means for the probe: refused (an RST or an ICMP error
/// came back), timeout (nothing came back) or error (a local problem).
pub fn classify(e: &io::Error) -> ProbeOutcome {
    match e.raw_os_error() {
        Some(
            libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN
            | libc::ECONNRESET,
        ) => ProbeOutcome::Refused,
        Some(libc::ETIMEDOUT | libc::EAGAIN) => ProbeOutcome::Timeout,
        _ => match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ProbeOutcome::Timeout,
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
                ProbeOutcome::Refused
            }
            _ => ProbeOutcome::Error,
        },
    }
}

/// The client: connects to `target`, sends `line`, reads the echo (until it closes or a
/// newline), all within `timeout`. Runs in the caller's namespace and cgroup.
pub fn probe(id: &str, target: SocketAddr, timeout: Duration, line: &str) -> ProbeResult {
    let start = Instant::now();
    let failed = |stage: &str, e: io::Error| ProbeResult {
        outcome: classify(&e),
        detail: format!("{stage} {target}: {e}"),
        ..ProbeResult::error(id, "")
    };
    let mut s = match TcpStream::connect_timeout(&target, timeout) {
        Ok(s) => s,
        Err(e) => return failed("connecting to", e),
    };
    let left = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(1));
    let exchange = s
        .set_read_timeout(Some(left))
        .and_then(|()| s.set_write_timeout(Some(left)))
        .and_then(|()| s.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = exchange {
        return failed("sending to", e);
    }
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() >= MAX_REPLY {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let mut r = failed("reading the reply from", e);
                if r.outcome == ProbeOutcome::Timeout {
                    r.detail = format!("connected to {target} but no reply within {timeout:?}");
                }
                return r;
            }
        }
    }
    let latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let reply = String::from_utf8_lossy(&buf[..buf.len().min(MAX_REPLY)]).into_owned();
    match parse_echo_reply(&reply, line) {
        Some(name) => ProbeResult {
            id: id.to_string(),
            outcome: ProbeOutcome::Connected,
            detail: String::new(),
            latency_us,
            reply_from: name.to_string(),
        },
        None if reply.is_empty() => ProbeResult {
            latency_us,
            ..ProbeResult::error(id, format!("{target} closed without an echo reply"))
        },
        None => ProbeResult {
            latency_us,
            ..ProbeResult::error(
                id,
                format!(
                    "{target} answered something else than the echo: {:?}",
                    reply.chars().take(80).collect::<String>()
                ),
            )
        },
    }
}

/// How the agent starts probe children.
#[derive(Debug, Clone)]
pub struct Spawner {
    /// The `node-agent` executable.
    pub exe: PathBuf,
    /// The node's socket-LB cgroup (`run --cgroup`); the child joins it before `exec`.
    pub cgroup: Option<PathBuf>,
}

impl Spawner {
    /// Runs `p` in a child (inside `netns` when given: a workload's namespace) and returns
    /// its result; never fails (a failure to run is an `error` result).
    pub async fn run(&self, p: &DesiredProbe, netns: Option<&Path>) -> ProbeResult {
        let timeout = timeout_of(p);
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("probe")
            .args(["--target", &p.target.to_string()])
            .args(["--timeout-ms", &timeout.as_millis().to_string()])
            .args(["--line", &p.id]);
        if let Some(ns) = netns {
            cmd.arg("--netns").arg(ns);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cg) = &self.cgroup {
            let procs = match std::ffi::CString::new(cg.join("cgroup.procs").as_os_str().as_bytes())
            {
                Ok(c) => c,
                Err(_) => return ProbeResult::error(&p.id, "the cgroup path has a NUL byte"),
            };
            // SAFETY: the hook only calls async-signal-safe functions (open, write, close) on
            // memory prepared before the fork.
            unsafe {
                cmd.pre_exec(move || join_cgroup(&procs));
            }
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let where_ = self
                    .cgroup
                    .as_ref()
                    .map(|c| format!(" in cgroup {}", c.display()))
                    .unwrap_or_default();
                return ProbeResult::error(&p.id, format!("starting the probe{where_}: {e}"));
            }
        };
        // The child bounds itself by `timeout`; this only catches a stuck child.
        let out =
            match tokio::time::timeout(timeout + Duration::from_secs(10), child.wait_with_output())
                .await
            {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => return ProbeResult::error(&p.id, format!("running the probe: {e}")),
                Err(_) => return ProbeResult::error(&p.id, "the probe process did not finish"),
            };
        parse_child_output(&p.id, out.status.success(), &out.stdout, &out.stderr)
    }
}

/// Moves the calling (forked, not yet exec'd) process into the cgroup whose `cgroup.procs`
/// is `procs`: writing "0" moves the writer.
fn join_cgroup(procs: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: a valid NUL-terminated path; plain syscalls.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != 1 {
            return Err(err);
        }
    }
    Ok(())
}

/// The child's JSON result, or an `error` result naming what went wrong.
pub fn parse_child_output(id: &str, success: bool, stdout: &[u8], stderr: &[u8]) -> ProbeResult {
    let line = stdout
        .split(|b| *b == b'\n')
        .rev()
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    match serde_json::from_slice::<ProbeResult>(line) {
        Ok(r) if success && r.id == id => r,
        Ok(r) if success => {
            ProbeResult::error(id, format!("the probe process answered for {:?}", r.id))
        }
        _ => {
            let err = String::from_utf8_lossy(stderr);
            let err = err.trim();
            ProbeResult::error(
                id,
                format!(
                    "the probe process failed: {}",
                    if err.is_empty() { "no output" } else { err }
                ),
            )
        }
    }
}

/// `node-agent probe`: enters `netns` (before any thread or socket exists), probes, and
/// returns the result for printing.
pub fn child_main(
    id: &str,
    target: SocketAddr,
    timeout: Duration,
    netns: Option<&Path>,
) -> ProbeResult {
    let _in_ns = match netns.map(crate::netns::enter_netns).transpose() {
        Ok(g) => g,
        Err(e) => {
            return ProbeResult::error(
                id,
                format!(
                    "entering network namespace {}: {e}",
                    netns.unwrap_or(Path::new("")).display()
                ),
            )
        }
    };
    probe(id, target, timeout, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_classify_as_refused_timeout_or_error() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(libc::ECONNREFUSED)), ProbeOutcome::Refused);
        assert_eq!(classify(&os(libc::EHOSTUNREACH)), ProbeOutcome::Refused);
        assert_eq!(classify(&os(libc::ENETUNREACH)), ProbeOutcome::Refused);
        assert_eq!(classify(&os(libc::ETIMEDOUT)), ProbeOutcome::Timeout);
        assert_eq!(classify(&os(libc::EAGAIN)), ProbeOutcome::Timeout);
        assert_eq!(
            classify(&io::Error::new(io::ErrorKind::TimedOut, "connect")),
            ProbeOutcome::Timeout
        );
        assert_eq!(classify(&os(libc::EPERM)), ProbeOutcome::Error);
        assert_eq!(classify(&os(libc::EADDRNOTAVAIL)), ProbeOutcome::Error);
    }

    #[test]
    fn results_encode_for_the_wire() {
        let r = ProbeResult {
            id: "p1".into(),
            outcome: ProbeOutcome::Connected,
            detail: String::new(),
            latency_us: 420,
            reply_from: "echo-a".into(),
        };
        let w: pb::ProbeResult = r.clone().into();
        assert_eq!(w.id, "p1");
        assert_eq!(w.outcome, pb::ProbeOutcome::Connected as i32);
        assert_eq!((w.latency_us, w.reply_from.as_str()), (420, "echo-a"));
        for (o, want) in [
            (ProbeOutcome::Refused, pb::ProbeOutcome::Refused),
            (ProbeOutcome::Timeout, pb::ProbeOutcome::Timeout),
            (ProbeOutcome::Error, pb::ProbeOutcome::Error),
        ] {
            let w: pb::ProbeResult = ProbeResult {
                outcome: o,
                ..r.clone()
            }
            .into();
            assert_eq!(w.outcome, want as i32);
        }
        // The child's JSON round-trips with lowercase outcomes.
        let json = serde_json::to_string(&r).expect("json");
        assert!(json.contains("\"outcome\":\"connected\""), "{json}");
        assert_eq!(parse_child_output("p1", true, json.as_bytes(), b""), r);
    }

    #[test]
    fn bad_child_output_is_an_error_result_naming_it() {
        let r = parse_child_output("p1", false, b"", b"thread 'main' panicked");
        assert_eq!(r.outcome, ProbeOutcome::Error);
        assert!(r.detail.contains("panicked"), "{}", r.detail);
        let other = serde_json::to_vec(&ProbeResult::error("p2", "x")).expect("json");
        let r = parse_child_output("p1", true, &other, b"");
        assert!(r.detail.contains("\"p2\""), "{}", r.detail);
        assert_eq!(
            parse_child_output("p1", true, b"not json\n", b"").outcome,
            ProbeOutcome::Error
        );
    }

    #[test]
    fn timeouts_default_and_cap() {
        let p = |ms| DesiredProbe {
            id: "p".into(),
            from_workload: None,
            target: "10.0.0.1:80".parse().expect("addr"),
            timeout_ms: ms,
        };
        assert_eq!(timeout_of(&p(0)), DEFAULT_TIMEOUT);
        assert_eq!(timeout_of(&p(250)), Duration::from_millis(250));
        assert_eq!(timeout_of(&p(u32::MAX)), MAX_TIMEOUT);
    }

    #[test]
    fn a_probe_to_a_local_echo_connects_and_to_a_closed_port_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = match l.local_addr().expect("addr") {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound to IPv4"),
        };
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).expect("read");
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.write_all(weft_model::workload::echo_reply("echo-a", &line).as_bytes())
                .expect("write");
        });
        let r = probe("p1", addr.into(), Duration::from_secs(2), "p1");
        server.join().expect("server");
        assert_eq!(r.outcome, ProbeOutcome::Connected, "{r:?}");
        assert_eq!(r.reply_from, "echo-a");
        // The listener is gone: nothing listens on that port any more.
        let r = probe("p2", addr.into(), Duration::from_secs(2), "p2");
        assert_eq!(r.outcome, ProbeOutcome::Refused, "{r:?}");
        assert!(r.detail.contains(&addr.to_string()), "{}", r.detail);
    }
}
