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
use weft_model::flow::rcode_name;
use weft_model::workload::{
    parse_echo_reply, parse_http_response, DesiredProbe, HttpProbe, ProbeOutcome, ResolveProbe,
};
use weft_proto::v1 as pb;

use crate::dns::message;

/// Used when a probe asks for no timeout (0).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest timeout honoured (a probe never holds a slot longer).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest reply read (an echo line, or an HTTP answer: head and body).
const MAX_REPLY: usize = 4096;

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
    /// The HTTP answer's status; 0: none (an echo probe, or no answer).
    #[serde(default)]
    pub http_status: u32,
    /// The DNS answer's response code; empty: none.
    #[serde(default)]
    pub dns_rcode: String,
}

impl ProbeResult {
    pub fn error(id: &str, detail: impl Into<String>) -> Self {
        ProbeResult {
            id: id.to_string(),
            outcome: ProbeOutcome::Error,
            detail: detail.into(),
            latency_us: 0,
            reply_from: String::new(),
            http_status: 0,
            dns_rcode: String::new(),
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
            http_status: r.http_status,
            dns_rcode: r.dns_rcode,
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

/// What one probe does, as the child process gets it.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub target: SocketAddr,
    pub timeout: Duration,
    /// An HTTP request instead of the echo line (the probe id).
    pub http: Option<HttpProbe>,
    /// A DNS lookup before connecting.
    pub resolve: Option<ResolveProbe>,
}

/// The client: resolves the name (when asked), connects to the target, sends the echo line
/// (or the HTTP request) and reads the reply (until it closes, or a newline for the echo),
/// all within the timeout. Runs in the caller's namespace and cgroup.
pub fn probe(r: &Request) -> ProbeResult {
    let start = Instant::now();
    let dns_rcode = match &r.resolve {
        Some(q) => match resolve(r, q) {
            Ok(rcode) => rcode,
            Err(failed) => return failed,
        },
        None => String::new(),
    };
    // Whatever happens next, the lookup's answer is part of the result.
    ProbeResult {
        dns_rcode,
        ..exchange(r, start)
    }
}

/// The probe's lookup: the answer's response code when it names the target, else the
/// probe's result (the lookup failed, was refused, or led elsewhere).
fn resolve(r: &Request, q: &ResolveProbe) -> Result<String, ProbeResult> {
    let (id, target) = (r.id.as_str(), r.target);
    let server = SocketAddr::new(q.server, 53);
    let qtype = if target.is_ipv6() {
        message::TYPE_AAAA
    } else {
        message::TYPE_A
    };
    let answer =
        crate::dns::lookup(server, &q.name, qtype, r.timeout).map_err(|e| ProbeResult {
            outcome: classify(&e),
            detail: format!("resolving {} at {server}: {e}", q.name),
            ..ProbeResult::error(id, "")
        })?;
    let dns_rcode = rcode_name(u16::from(answer.rcode));
    if answer.rcode != 0 {
        // What a pod sees when a DNS rule refuses the name: the lookup fails.
        return Err(ProbeResult {
            outcome: ProbeOutcome::Refused,
            detail: format!("{server} answered {dns_rcode} for {}", q.name),
            dns_rcode,
            ..ProbeResult::error(id, "")
        });
    }
    if !answer.addresses.iter().any(|a| a.ip == target.ip()) {
        let got: Vec<String> = answer.addresses.iter().map(|a| a.ip.to_string()).collect();
        return Err(ProbeResult {
            detail: format!(
                "{} resolved to [{}], not the target {}",
                q.name,
                got.join(", "),
                target.ip()
            ),
            dns_rcode,
            ..ProbeResult::error(id, "")
        });
    }
    Ok(dns_rcode)
}

/// Connects, sends the echo line or the HTTP request, and reads the reply, within what is
/// left of the probe's timeout since `start`.
fn exchange(r: &Request, start: Instant) -> ProbeResult {
    let (id, target, timeout) = (r.id.as_str(), r.target, r.timeout);
    let failed = |stage: &str, e: io::Error| ProbeResult {
        outcome: classify(&e),
        detail: format!("{stage} {target}: {e}"),
        ..ProbeResult::error(id, "")
    };
    let left = || {
        timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1))
    };
    let mut s = match TcpStream::connect_timeout(&target, left()) {
        Ok(s) => s,
        Err(e) => return failed("connecting to", e),
    };
    let (request, line) = match &r.http {
        Some(h) => (
            format!(
                "{} {} HTTP/1.1\r\nhost: {target}\r\nuser-agent: weft-probe\r\nconnection: close\r\n\r\n",
                h.method, h.path
            ),
            h.path.as_str(),
        ),
        None => (format!("{id}\n"), id),
    };
    let sent = s
        .set_read_timeout(Some(left()))
        .and_then(|()| s.set_write_timeout(Some(left())))
        .and_then(|()| s.write_all(request.as_bytes()));
    if let Err(e) = sent {
        return failed("sending to", e);
    }
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                // An HTTP answer is read to its end (`connection: close`); an echo to its line.
                if (r.http.is_none() && buf.contains(&b'\n')) || buf.len() >= MAX_REPLY {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let mut f = failed("reading the reply from", e);
                if f.outcome == ProbeOutcome::Timeout {
                    f.detail = format!("connected to {target} but no reply within {timeout:?}");
                }
                return f;
            }
        }
    }
    let latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let reply = String::from_utf8_lossy(&buf[..buf.len().min(MAX_REPLY)]).into_owned();
    let error = |detail: String| ProbeResult {
        latency_us,
        ..ProbeResult::error(id, detail)
    };
    let quoted = |text: &str| format!("{:?}", text.chars().take(80).collect::<String>());
    let (http_status, body) = match &r.http {
        None => (0, reply.as_str()),
        Some(_) => match parse_http_response(&reply) {
            Some((code, body)) => (u32::from(code), body),
            None => {
                return error(format!(
                    "{target} answered no HTTP response: {}",
                    quoted(&reply)
                ))
            }
        },
    };
    let connected = |reply_from: String, detail: String| ProbeResult {
        id: id.to_string(),
        outcome: ProbeOutcome::Connected,
        detail,
        latency_us,
        reply_from,
        http_status,
        dns_rcode: String::new(),
    };
    match parse_echo_reply(body, line) {
        Some(name) => connected(name.to_string(), String::new()),
        // Any other HTTP answer (a policy's 403) is the result: its status says what it was.
        None if http_status != 0 => connected(
            String::new(),
            format!("HTTP {http_status}: {}", quoted(body.trim())),
        ),
        None if reply.is_empty() => error(format!("{target} closed without an echo reply")),
        None => error(format!(
            "{target} answered something else than the echo: {}",
            quoted(&reply)
        )),
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
        if let Some(h) = &p.http {
            cmd.args(["--http-method", &h.method, "--http-path", &h.path]);
        }
        if let Some(r) = &p.resolve {
            cmd.args(["--resolve", &r.name, "--resolver", &r.server.to_string()]);
        }
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
pub fn child_main(r: &Request, netns: Option<&Path>) -> ProbeResult {
    let _in_ns = match netns.map(crate::netns::enter_netns).transpose() {
        Ok(g) => g,
        Err(e) => {
            return ProbeResult::error(
                &r.id,
                format!(
                    "entering network namespace {}: {e}",
                    netns.unwrap_or(Path::new("")).display()
                ),
            )
        }
    };
    probe(r)
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
            http_status: 403,
            dns_rcode: "NOERROR".into(),
        };
        let w: pb::ProbeResult = r.clone().into();
        assert_eq!(w.id, "p1");
        assert_eq!((w.http_status, w.dns_rcode.as_str()), (403, "NOERROR"));
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
            http: None,
            resolve: None,
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
        let r = probe(&req("p1", addr.into()));
        server.join().expect("server");
        assert_eq!(r.outcome, ProbeOutcome::Connected, "{r:?}");
        assert_eq!(r.reply_from, "echo-a");
        assert_eq!((r.http_status, r.dns_rcode.as_str()), (0, ""));
        // The listener is gone: nothing listens on that port any more.
        let r = probe(&req("p2", addr.into()));
        assert_eq!(r.outcome, ProbeOutcome::Refused, "{r:?}");
        assert!(r.detail.contains(&addr.to_string()), "{}", r.detail);
    }

    fn req(id: &str, target: SocketAddr) -> Request {
        Request {
            id: id.into(),
            target,
            timeout: Duration::from_secs(2),
            http: None,
            resolve: None,
        }
    }

    /// One connection: reads the request head, answers `reply(head)`.
    fn http_server(reply: fn(&str) -> String) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut head = Vec::new();
            let mut b = [0u8; 256];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).expect("read");
                assert!(n > 0, "closed before the head ended");
                head.extend_from_slice(&b[..n]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            s.write_all(reply(&head).as_bytes()).expect("write");
            head
        });
        (addr, t)
    }

    #[test]
    fn an_http_probe_reports_the_status_and_who_answered() {
        let http = Some(HttpProbe {
            method: "GET".into(),
            path: "/public".into(),
        });
        let (addr, t) = http_server(|head| {
            let path = head.split(' ').nth(1).unwrap_or_default().to_string();
            weft_model::workload::http_echo_response("echo-a", &path)
        });
        let r = probe(&Request {
            http: http.clone(),
            ..req("p1", addr)
        });
        let head = t.join().expect("server");
        assert!(head.starts_with("GET /public HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert_eq!(r.outcome, ProbeOutcome::Connected, "{r:?}");
        assert_eq!((r.http_status, r.reply_from.as_str()), (200, "echo-a"));

        // A proxy's refusal is an answer too: connected, 403, nobody's echo.
        let (addr, t) = http_server(|_| {
            "HTTP/1.1 403 Forbidden\r\ncontent-length: 13\r\nconnection: close\r\n\r\nAccess denied"
                .into()
        });
        let r = probe(&Request {
            http: http.clone(),
            ..req("p2", addr)
        });
        t.join().expect("server");
        assert_eq!(r.outcome, ProbeOutcome::Connected, "{r:?}");
        assert_eq!((r.http_status, r.reply_from.as_str()), (403, ""));
        assert!(r.detail.contains("Access denied"), "{}", r.detail);

        // Something that is not HTTP is an error naming what came.
        let (addr, t) = http_server(|_| "SSH-2.0-x\r\n\r\n".into());
        let r = probe(&Request {
            http,
            ..req("p3", addr)
        });
        t.join().expect("server");
        assert_eq!(r.outcome, ProbeOutcome::Error, "{r:?}");
        assert!(r.detail.contains("no HTTP response"), "{}", r.detail);
    }
}
