//! Small TCP/UDP servers and clients used by the datapath tests, the benchmark and the
//! `node-agent debug-client` helper (a client that runs inside a given cgroup and network
//! namespace, so socket hooks apply to it).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::NetNs;

pub mod dns;
pub mod http;

/// A server thread inside a namespace that answers every TCP connection (or UDP datagram)
/// with `name\n`. Stops on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

fn readable(fd: i32, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout_ms) > 0 }
}

impl Server {
    /// TCP on `[::]` (both families): per connection, reads the request (up to EOF or the first bytes), answers
    /// `name\n` and waits for the client to close. A small pool of worker threads accepts on
    /// the same listener (a held connection does not block the others; no thread is spawned
    /// per connection, which would dominate connection-rate measurements).
    pub fn tcp(ns: &NetNs, port: u16, name: &str) -> io::Result<Server> {
        const WORKERS: usize = 4;
        let name = format!("{name}\n");
        let bind = move || {
            let l = TcpListener::bind(("::", port))?;
            set_recv_timeout(&l, Duration::from_millis(100))?;
            Ok(Arc::new(l))
        };
        Server::start(ns, bind, move |l, stop| {
            let workers: Vec<_> = (0..WORKERS)
                .map(|_| {
                    let (l, stop, name) = (l.clone(), stop.clone(), name.clone());
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            // Blocking accept wakes one worker per connection (no thundering
                            // herd); SO_RCVTIMEO bounds it so the stop flag is seen.
                            let Ok((mut s, _)) = l.accept() else { continue };
                            let _ = s.set_nodelay(true);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut buf = [0u8; 64];
                            let _ = s.read(&mut buf);
                            let _ = s.write_all(name.as_bytes());
                            // Let the client close first (it resets: no TIME_WAIT on either side).
                            let _ = s.read(&mut buf);
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
            Ok(())
        })
    }

    /// UDP on `[::]` (both families): answers every datagram with `name\n`.
    pub fn udp(ns: &NetNs, port: u16, name: &str) -> io::Result<Server> {
        let name = format!("{name}\n");
        Server::start(
            ns,
            move || UdpSocket::bind(("::", port)),
            move |s, stop| {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if !readable(s.as_raw_fd(), 50) {
                        continue;
                    }
                    if let Ok((_, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(name.as_bytes(), from);
                    }
                }
                Ok(())
            },
        )
    }

    /// Runs a server in `ns` on a thread of its own: `bind` makes its socket (its error is
    /// returned from here, once), then `serve` runs until the stop flag is set.
    fn start<S: 'static>(
        ns: &NetNs,
        bind: impl FnOnce() -> io::Result<S> + Send + 'static,
        serve: impl FnOnce(S, Arc<AtomicBool>) -> io::Result<()> + Send + 'static,
    ) -> io::Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let handle = ns.spawn(move || -> io::Result<()> {
            let s = match bind() {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            };
            serve(s, stop2)
        });
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| io::Error::other("server did not start"))??;
        Ok(Server {
            stop,
            handle: Some(flatten(handle)),
        })
    }
}

fn flatten(h: JoinHandle<io::Result<io::Result<()>>>) -> JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        h.join()
            .map_err(|_| io::Error::other("server panicked"))??
    })
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// SO_RCVTIMEO on a socket (bounds a blocking `accept` on a listener).
fn set_recv_timeout(l: &TcpListener, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid socket fd and option struct.
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes with RST (SO_LINGER 0) so request loops leave no TIME_WAIT behind.
pub fn linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and option struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One TCP connect-request-response; returns (answer, peer address as getpeername sees it).
pub fn tcp_request(target: SocketAddr, timeout: Duration) -> io::Result<(String, SocketAddr)> {
    let mut s = TcpStream::connect_timeout(&target, timeout)?;
    linger_zero(&s);
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    let peer = s.peer_addr()?;
    s.write_all(b"?")?;
    let mut buf = [0u8; 128];
    let mut n = 0;
    while n < buf.len() {
        let k = s.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), peer))
}

/// What a [`sink`] received: bytes, and the time from the first byte to the end.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub bytes: u64,
    pub took: Duration,
}

/// A TCP sink in `ns`: accepts one connection on `addr`, reads it to the end, answers the
/// byte count (`<n>\n`) and returns what it received. Returns once it listens.
pub fn sink(
    ns: &NetNs,
    addr: SocketAddr,
) -> io::Result<std::thread::JoinHandle<io::Result<Received>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || -> io::Result<Received> {
        let listener = TcpListener::bind(addr);
        let _ = ready_tx.send(());
        let (mut conn, _) = listener?.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut buf = vec![0u8; 1 << 18];
        let (mut bytes, mut start) = (0u64, None);
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            start.get_or_insert_with(Instant::now);
            bytes += n as u64;
        }
        conn.write_all(format!("{bytes}\n").as_bytes())?;
        Ok(Received {
            bytes,
            took: start.map_or(Duration::ZERO, |s| s.elapsed()),
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| io::Error::other(format!("the sink on {addr} did not start")))?;
    Ok(std::thread::spawn(move || {
        handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("sink thread panicked")))
            .and_then(|r| r)
    }))
}

/// Sends 128 KiB chunks from the network namespace at `from` to a [`sink`] at `to` while
/// `more(bytes sent so far)` says so; returns the byte count the sink answered.
pub fn send_to_sink(
    from: &Path,
    to: SocketAddr,
    more: impl FnMut(u64) -> bool + Send + 'static,
) -> io::Result<u64> {
    let from = from.to_path_buf();
    let mut more = more;
    std::thread::spawn(move || -> io::Result<u64> {
        let _in = crate::netns::enter_netns(&from)?;
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let chunk = vec![0x5au8; 1 << 17];
        let mut sent = 0u64;
        while more(sent) {
            s.write_all(&chunk)?;
            sent += chunk.len() as u64;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        answer
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("the sink answered {answer:?}")))
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("sender thread panicked")))
}

/// One UDP request on an unconnected socket; returns (answer, source address of the answer).
pub fn udp_request(target: SocketAddr, timeout: Duration) -> io::Result<(String, SocketAddr)> {
    let s = UdpSocket::bind(if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(b"?", target)?;
    let mut buf = [0u8; 128];
    let (n, from) = s.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), from))
}

/// The cookie of the calling thread's network namespace (what the socket LB hashes on).
pub fn netns_cookie() -> io::Result<u64> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: valid socket, buffer and length.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut v as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Options of `node-agent debug-client`.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub target: SocketAddr,
    pub udp: bool,
    /// Number of requests (stops earlier when `duration` elapses).
    pub count: u64,
    pub duration: Option<Duration>,
    /// Print one line per request; otherwise only a summary.
    pub verbose: bool,
    /// Concurrent request loops (threads), so a rate measures what the node sustains
    /// rather than one client's round trips. At least 1.
    pub parallel: usize,
}

/// Runs the client in this process: joins `cgroup` (whole process) and `netns` first.
/// Prints `cookie <n>`, then per request `ok <answer> <peer> <µs>` / `err <error>` when verbose, and
/// finally `summary ok=<n> err=<n> secs=<f> rate=<f>`.
pub fn run_client(
    cgroup: Option<&Path>,
    netns: Option<&Path>,
    opts: &ClientOptions,
) -> io::Result<()> {
    if let Some(cg) = cgroup {
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())?;
    }
    let _guard = match netns {
        Some(p) => Some(crate::netns::enter_netns(p)?),
        None => None,
    };
    let out = io::stdout();
    let mut out = out.lock();
    writeln!(out, "cookie {}", netns_cookie()?)?;
    let start = Instant::now();
    let parallel = opts.parallel.max(1);
    // Threads inherit the namespace entered above; lines are printed after the window, so
    // the measurement carries no per-request write to the pipe.
    let loops: Vec<_> = (0..parallel)
        .map(|k| {
            let opts = opts.clone();
            let count =
                opts.count / parallel as u64 + u64::from((k as u64) < opts.count % parallel as u64);
            std::thread::spawn(move || {
                let mut results = Vec::new();
                for _ in 0..count {
                    if opts.duration.is_some_and(|d| start.elapsed() >= d) {
                        break;
                    }
                    let t0 = Instant::now();
                    let r = if opts.udp {
                        udp_request(opts.target, Duration::from_millis(500))
                    } else {
                        tcp_request(opts.target, Duration::from_millis(1000))
                    };
                    results.push((r, t0.elapsed().as_micros()));
                }
                results
            })
        })
        .collect();
    let mut results = Vec::new();
    for l in loops {
        results.extend(
            l.join()
                .map_err(|_| io::Error::other("a client loop panicked"))?,
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let (mut ok, mut err) = (0u64, 0u64);
    for (r, us) in results {
        match r {
            Ok((answer, peer)) => {
                ok += 1;
                if opts.verbose {
                    writeln!(out, "ok {answer} {peer} {us}")?;
                }
            }
            Err(e) => {
                err += 1;
                if opts.verbose {
                    writeln!(out, "err {}", e.kind())?;
                }
            }
        }
    }
    writeln!(
        out,
        "summary ok={ok} err={err} secs={secs:.3} rate={:.1}",
        ok as f64 / secs.max(1e-9)
    )?;
    Ok(())
}

/// Parsed output of a `debug-client` run.
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    pub cookie: u64,
    /// (answer, peer) per successful request, in order.
    pub answers: Vec<(String, String)>,
    pub errors: Vec<String>,
    pub rate: f64,
    /// Per-request latency in µs (verbose runs).
    pub latencies_us: Vec<u64>,
}

impl ClientReport {
    /// Median request latency in µs (0 without verbose data).
    pub fn p50_us(&self) -> u64 {
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    }
}

impl ClientReport {
    pub fn parse(stdout: &str) -> ClientReport {
        let mut r = ClientReport::default();
        for line in stdout.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("cookie") => r.cookie = f.next().and_then(|v| v.parse().ok()).unwrap_or(0),
                Some("ok") => {
                    let a = f.next().unwrap_or("").to_string();
                    let p = f.next().unwrap_or("").to_string();
                    if let Some(us) = f.next().and_then(|v| v.parse().ok()) {
                        r.latencies_us.push(us);
                    }
                    r.answers.push((a, p));
                }
                Some("err") => r.errors.push(f.collect::<Vec<_>>().join(" ")),
                Some("summary") => {
                    for kv in f {
                        if let Some(v) = kv.strip_prefix("rate=") {
                            r.rate = v.parse().unwrap_or(0.0);
                        }
                    }
                }
                _ => {}
            }
        }
        r
    }
}

/// Spawns `node-agent debug-client` (the binary at `exe`) in `cgroup` and `netns`, waits for
/// it and parses its report.
pub fn spawn_client(
    exe: &Path,
    cgroup: Option<&Path>,
    netns: &NetNs,
    opts: &ClientOptions,
) -> io::Result<ClientReport> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("debug-client")
        .arg("--netns")
        .arg(netns.path())
        .arg("--target")
        .arg(opts.target.to_string())
        .arg("--count")
        .arg(opts.count.to_string());
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    if opts.udp {
        cmd.arg("--udp");
    }
    if opts.verbose {
        cmd.arg("--verbose");
    }
    if let Some(d) = opts.duration {
        cmd.arg("--duration-ms").arg(d.as_millis().to_string());
    }
    cmd.arg("--parallel").arg(opts.parallel.max(1).to_string());
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "debug-client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(ClientReport::parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Forwards TCP connections accepted on `listen` inside the network namespace at `netns` to
/// `to`, connected from the caller's namespace (the demo uses it so agents in node
/// namespaces reach a control plane on the machine's loopback). Runs until killed.
pub fn forward(netns: &Path, listen: SocketAddr, to: SocketAddr) -> io::Result<()> {
    let listener = {
        let _in = crate::netns::enter_netns(netns)?;
        TcpListener::bind(listen)?
    };
    for conn in listener.incoming() {
        let inbound = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        std::thread::spawn(move || {
            let outbound = match TcpStream::connect(to) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%to, error = %e, "cannot reach the target");
                    return;
                }
            };
            let pipe = |mut from: TcpStream, mut into: TcpStream| {
                let _ = io::copy(&mut from, &mut into);
                let _ = into.shutdown(std::net::Shutdown::Write);
            };
            let (a, b) = match (inbound.try_clone(), outbound.try_clone()) {
                (Ok(a), Ok(b)) => (a, b),
                _ => return,
            };
            let t = std::thread::spawn(move || pipe(a, b));
            pipe(outbound, inbound);
            let _ = t.join();
        });
    }
    Ok(())
}
