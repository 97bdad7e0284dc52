//! The L7 proxy: HTTP rules (`toPorts[].rules.http`) enforced per request, in the agent.
//!
//! The datapath hands each connection that hits an L7 allow entry to the listener of that
//! entry's rule set (one transparent listener per direction and rule set, on a port the
//! entry carries; see `datapath-bpf/ebpf/src/proxy.rs`). The accepted socket's local address
//! is the original destination. Each request is checked against the rules: a denied one is
//! answered `403 Forbidden` with `Access denied`, an allowed one is forwarded to the original
//! destination over one upstream connection per client connection: HTTP/1.1 (keep-alive;
//! pipelined requests are answered in order) or HTTP/2 with prior knowledge (h2c, so gRPC:
//! rules on `:path`), as the client speaks.
//!
//! Every request becomes an L7 flow record (`http`: method, URL, protocol, status, latency;
//! verdict `FORWARDED`, or `DROPPED` / `POLICY_DENIED` for a denied one) in the agent's
//! flow export, beside the datapath's.
//!
//! Upstream connections leave from the node's own address, marked so the datapath still
//! judges them as the client: on ingress with the client's identity and "already checked"
//! (`MARK_PROXIED`: the destination's program does not redirect them again), on egress with
//! the client's identity only (the destination's own ingress L7 rules still apply).

pub mod dns;
pub mod rules;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use weft_datapath_common as c;
use weft_model::desired::HttpMatch;
use weft_model::policy::FqdnSelector;

use crate::datapath::{Direction, L7Proxy, L7Rules, Maps};
use crate::flows::FlowQueue;
use rules::{RequestView, RuleSet};
use weft_proto::v1 as pb;

/// The body a 403 carries (as Cilium's proxy).
pub const ACCESS_DENIED: &str = "Access denied\r\n";

/// First port the listeners take (the next free one per new rule set).
pub const DEFAULT_BASE_PORT: u16 = 15001;

type Body = BoxBody<Bytes, hyper::Error>;

/// The identities the datapath gives addresses (the pinned ipcache).
struct Identities(Mutex<Maps>);

impl Identities {
    /// The client's identity: on ingress the one the datapath admitted the connection with
    /// (conntrack: it may have come in the tunnel's VNI, or from another proxy on this
    /// node), on egress the local endpoint's (its address).
    fn of_client(&self, direction: Direction, client: SocketAddr, original: SocketAddr) -> u32 {
        let maps = match self.0.lock() {
            Ok(maps) => maps,
            Err(poisoned) => poisoned.into_inner(),
        };
        let admitted = match direction {
            Direction::Ingress => maps.ct_peer_identity(client, original, c::DIR_INGRESS),
            Direction::Egress => None,
        };
        admitted.unwrap_or_else(|| maps.identity_of(client.ip()))
    }

    fn of(&self, ip: IpAddr) -> u32 {
        match self.0.lock() {
            Ok(maps) => maps.identity_of(ip),
            Err(poisoned) => poisoned.into_inner().identity_of(ip),
        }
    }
}

/// A rule set a listener enforces (owned [`L7Rules`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RulesKey {
    Http(Direction, Vec<HttpMatch>),
    Dns(Vec<FqdnSelector>),
}

impl RulesKey {
    fn of(rules: L7Rules<'_>) -> Self {
        match rules {
            L7Rules::Http(d, h) => RulesKey::Http(d, h.to_vec()),
            L7Rules::Dns(d) => RulesKey::Dns(d.to_vec()),
        }
    }
    fn borrowed(&self) -> L7Rules<'_> {
        match self {
            RulesKey::Http(d, h) => L7Rules::Http(*d, h),
            RulesKey::Dns(d) => L7Rules::Dns(d),
        }
    }
}

/// The node's L7 proxy: listeners per rule set (HTTP: per direction too), started on first
/// use.
pub struct Proxies {
    identities: Arc<Identities>,
    flows: Arc<FlowQueue>,
    listeners: HashMap<RulesKey, Listening>,
    base_port: u16,
    /// Where the DNS proxy writes what answers teach (set once the datapath is shared).
    learner: Arc<std::sync::OnceLock<dns::Learner>>,
}

struct Listening {
    port: u16,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Listening {
    fn running(&self) -> bool {
        self.tasks.iter().all(|t| !t.is_finished())
    }
    fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for l in self.listeners.values() {
            l.stop();
        }
    }
}

impl Proxies {
    /// A proxy reading identities from the maps pinned under `pin_path`. Listeners are
    /// spawned on the current tokio runtime.
    pub fn new(
        pin_path: &std::path::Path,
        base_port: u16,
        flows: Arc<FlowQueue>,
    ) -> Result<Self, String> {
        let maps = Maps::open_pinned(pin_path).map_err(|e| format!("opening the maps: {e}"))?;
        Ok(Proxies {
            identities: Arc::new(Identities(Mutex::new(maps))),
            flows,
            listeners: HashMap::new(),
            base_port,
            learner: Arc::new(std::sync::OnceLock::new()),
        })
    }

    /// Where the DNS proxy's learner is to be set (see [`dns::Learner`]).
    pub fn learner_slot(&self) -> Arc<std::sync::OnceLock<dns::Learner>> {
        self.learner.clone()
    }

    /// Ports of the running listeners.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.values().map(|l| l.port).collect()
    }
}

impl L7Proxy for Proxies {
    fn retain(&mut self, in_use: &std::collections::BTreeSet<L7Rules<'_>>) {
        self.listeners.retain(|key, l| {
            let keep = in_use.contains(&key.borrowed());
            if !keep {
                // Connections already accepted carry on; new ones have no entry here.
                l.stop();
                tracing::info!(port = l.port, "L7 proxy listener stopped: no rule uses it");
            }
            keep
        });
    }

    fn port_for(&mut self, rules: L7Rules<'_>) -> Result<u16, String> {
        let key = RulesKey::of(rules);
        if let Some(l) = self.listeners.get(&key) {
            if l.running() {
                return Ok(l.port);
            }
            l.stop();
        }
        // The lowest free port from the base (stopped listeners' ports are taken again).
        let taken: std::collections::HashSet<u16> = self
            .listeners
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(_, l)| l.port)
            .collect();
        let mut candidates = (self.base_port..u16::MAX).filter(|p| !taken.contains(p));
        let (port, tasks) = loop {
            let Some(port) = candidates.next() else {
                return Err("no free port left for an L7 proxy listener".into());
            };
            match self.start(&key, port) {
                Ok(tasks) => break (port, tasks),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(format!("listening on port {port}: {e}")),
            }
        };
        match &key {
            RulesKey::Http(direction, http) => {
                tracing::info!(port, ?direction, rules = http.len(), "L7 proxy listening")
            }
            RulesKey::Dns(dns) => tracing::info!(port, rules = dns.len(), "DNS proxy listening"),
        }
        self.listeners.insert(key, Listening { port, tasks });
        Ok(port)
    }
}

impl Proxies {
    /// Binds the listeners of `key` on `port` and starts serving them.
    fn start(&self, key: &RulesKey, port: u16) -> io::Result<Vec<tokio::task::JoinHandle<()>>> {
        match key {
            RulesKey::Http(direction, http) => {
                let rules = Arc::new(RuleSet::compile(http).map_err(io::Error::other)?);
                let listener = transparent_listener(port)?;
                let shared = Arc::new(Shared {
                    direction: *direction,
                    rules,
                    identities: self.identities.clone(),
                    flows: self.flows.clone(),
                    idle: Mutex::new(HashMap::new()),
                });
                Ok(vec![tokio::spawn(accept_each(
                    listener,
                    "L7 proxy",
                    move |conn, client, original| serve(conn, client, original, shared.clone()),
                ))])
            }
            RulesKey::Dns(rules) => {
                // UDP and TCP on one port number: both must be free.
                let [v4, v6] = dns::udp_listeners(port)?;
                let tcp = transparent_listener(port)?;
                let shared = Arc::new(dns::Dns {
                    rules: rules.clone(),
                    identities: self.identities.clone(),
                    learner: self.learner.clone(),
                    flows: self.flows.clone(),
                    replies: Default::default(),
                });
                Ok(vec![
                    tokio::spawn(dns::serve_udp(v4, shared.clone())),
                    tokio::spawn(dns::serve_udp(v6, shared.clone())),
                    tokio::spawn(accept_each(
                        tcp,
                        "DNS proxy",
                        move |conn, client, original| {
                            dns::serve_tcp(conn, client, original, shared.clone())
                        },
                    )),
                ])
            }
        }
    }
}

/// What every connection of one listener shares.
struct Shared {
    direction: Direction,
    rules: Arc<RuleSet>,
    identities: Arc<Identities>,
    flows: Arc<FlowQueue>,
    /// Idle upstream HTTP/1.1 connections by (destination, mark), reused by the listener's
    /// next client connections: a client that opens a connection per request must not cost
    /// an upstream connection (and a TIME_WAIT port of the node's) per request.
    idle: Mutex<HashMap<(SocketAddr, u32), Vec<Upstream>>>,
}

/// Idle upstream connections kept per destination and mark.
const IDLE_PER_UPSTREAM: usize = 64;

impl Shared {
    fn take_idle(&self, original: SocketAddr, mark: u32) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&(original, mark))?;
        while let Some(u) = list.pop() {
            if u.is_open() {
                return Some(u);
            }
        }
        None
    }

    fn put_idle(&self, original: SocketAddr, mark: u32, u: Upstream) {
        if !u.is_open() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry((original, mark)).or_default();
        if list.len() < IDLE_PER_UPSTREAM {
            list.push(u);
        }
    }
}

/// One client connection, as its flow records name it.
#[derive(Clone, Copy)]
struct Conn {
    client: SocketAddr,
    original: SocketAddr,
    client_identity: u32,
    server_identity: u32,
    /// What upstream packets carry (see the module doc).
    mark: u32,
}

impl Conn {
    /// The L7 record of one request or query (`denied`: answered by the policy, not
    /// upstream), without its HTTP or DNS part.
    fn flow(&self, direction: Direction, denied: bool, proto: u32) -> pb::Flow {
        pb::Flow {
            time_unix_nanos: crate::flows::unix_nanos_now(),
            src_ip: self.client.ip().to_string(),
            dst_ip: self.original.ip().to_string(),
            src_port: u32::from(self.client.port()),
            dst_port: u32::from(self.original.port()),
            proto,
            src_identity: self.client_identity,
            dst_identity: self.server_identity,
            verdict: if denied { "DROPPED" } else { "FORWARDED" }.into(),
            drop_reason: if denied { "POLICY_DENIED" } else { "" }.into(),
            direction: match direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            }
            .into(),
            observation_point: "l7-proxy".into(),
            count: 1,
            ..Default::default()
        }
    }
}

fn setsockopt(fd: i32, level: i32, name: i32, value: u32) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to a u32 of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A dual-stack listener on `port` that accepts connections to any address
/// (`IP_TRANSPARENT`: the datapath assigns it connections to other hosts' addresses).
fn transparent_listener(port: u16) -> io::Result<TcpListener> {
    let sock = TcpSocket::new_v6()?;
    let fd = sock.as_raw_fd();
    setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    setsockopt(fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
    setsockopt(fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)?;
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))?;
    sock.listen(1024)
}

/// An address with an IPv4-mapped IPv6 address as the IPv4 one (dual-stack sockets).
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Accepts a transparent listener's connections; each is served in a task of its own with
/// its client and original destination (the accepted socket's local address).
async fn accept_each<F, Fut>(listener: TcpListener, what: &'static str, serve: F)
where
    F: Fn(TcpStream, SocketAddr, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                let (Ok(client), Ok(original)) = (conn.peer_addr(), conn.local_addr()) else {
                    continue;
                };
                let _ = conn.set_nodelay(true);
                tokio::spawn(serve(conn, canonical(client), canonical(original)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One client connection: its requests checked one by one, the allowed ones forwarded.
async fn serve(conn: TcpStream, client: SocketAddr, original: SocketAddr, shared: Arc<Shared>) {
    let identity = shared
        .identities
        .of_client(shared.direction, client, original);
    tracing::debug!(%client, %original, identity, "L7 proxy connection");
    let conn_info = Conn {
        client,
        original,
        client_identity: identity,
        server_identity: shared.identities.of(original.ip()),
        mark: match shared.direction {
            Direction::Ingress => c::proxied_mark(identity),
            Direction::Egress => c::identity_mark(identity),
        },
    };
    let upstream = Arc::new(tokio::sync::Mutex::new(None::<Upstream>));
    let (pool, last) = (shared.clone(), upstream.clone());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let upstream = upstream.clone();
        async move {
            let started = std::time::Instant::now();
            let method = req.method().to_string();
            let protocol = format!("{:?}", req.version());
            let headers = shared
                .rules
                .recorded(req.headers())
                .into_iter()
                .map(|(key, value)| pb::HttpHeader { key, value })
                .collect();
            let url = format!(
                "http://{}{}",
                host_of(&req).unwrap_or_default(),
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            );
            let (resp, forwarded) = handle(req, &shared, &upstream, conn_info).await;
            let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            shared.flows.push(pb::Flow {
                http: Some(pb::HttpFlow {
                    method,
                    url,
                    protocol,
                    code: u32::from(resp.status().as_u16()),
                    latency_us,
                    headers,
                }),
                ..conn_info.flow(shared.direction, !forwarded, 6)
            });
            Ok::<_, Infallible>(resp)
        }
    });
    // HTTP/1.1, or HTTP/2 with prior knowledge (h2c: gRPC), told apart by the preface.
    let res = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(conn), service)
        .await;
    if let Err(e) = res {
        tracing::debug!(%client, %original, error = %e, "L7 proxy connection ended");
    }
    // The upstream connection outlives its client: the next client may use it.
    let kept = last.lock().await.take();
    if let Some(u) = kept {
        pool.put_idle(original, conn_info.mark, u);
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// The request's host: its `Host` header, else the target's authority.
fn host_of(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Checks one request; forwards it when allowed. Returns the response and whether the
/// request was allowed (and so went upstream).
async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    upstream: &tokio::sync::Mutex<Option<Upstream>>,
    conn: Conn,
) -> (Response<Body>, bool) {
    let original = conn.original;
    let host = host_of(&req);
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |p| p.as_str());
    let view = RequestView {
        method: req.method().as_str(),
        path,
        host,
        headers: req.headers(),
    };
    if !shared.rules.allows(&view) {
        tracing::debug!(method = %req.method(), path, %original, "L7 request denied");
        return (plain(StatusCode::FORBIDDEN, ACCESS_DENIED), false);
    }
    let h2 = req.version() == hyper::Version::HTTP_2;
    let mut slot = upstream.lock().await;
    let mut ready = match slot.as_mut() {
        Some(s) => s.is_h2() == h2 && s.ready().await,
        None => false,
    };
    if !ready && !h2 {
        if let Some(mut idle) = shared.take_idle(original, conn.mark) {
            ready = idle.ready().await;
            *slot = Some(idle);
        }
    }
    if !ready {
        match connect(original, conn.mark, h2).await {
            Ok(s) => *slot = Some(s),
            Err(e) => {
                tracing::warn!(%original, error = %e, "L7 proxy cannot reach the destination");
                let resp = plain(StatusCode::BAD_GATEWAY, "upstream unreachable\r\n");
                return (resp, true);
            }
        }
    }
    let sent = match slot.as_mut() {
        // HTTP/2 multiplexes: the lock is not held while the response comes.
        Some(Upstream::H2(s)) => {
            let mut s = s.clone();
            drop(slot);
            s.send_request(req).await
        }
        Some(Upstream::H1(s)) => s.send_request(req).await,
        None => {
            let resp = plain(StatusCode::BAD_GATEWAY, "upstream unreachable\r\n");
            return (resp, true);
        }
    };
    match sent {
        Ok(resp) => (resp.map(|b| b.boxed()), true),
        Err(e) => {
            tracing::warn!(%original, error = %e, "L7 proxy upstream request failed");
            *upstream.lock().await = None;
            let resp = plain(StatusCode::BAD_GATEWAY, "upstream request failed\r\n");
            (resp, true)
        }
    }
}

/// The upstream connection of one client connection, in the client's protocol.
enum Upstream {
    H1(hyper::client::conn::http1::SendRequest<Incoming>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

impl Upstream {
    fn is_h2(&self) -> bool {
        matches!(self, Upstream::H2(_))
    }

    /// Whether it may still carry requests (HTTP/1.1 only: HTTP/2 ones are not pooled).
    fn is_open(&self) -> bool {
        match self {
            Upstream::H1(s) => !s.is_closed(),
            Upstream::H2(_) => false,
        }
    }

    async fn ready(&mut self) -> bool {
        match self {
            Upstream::H1(s) => s.ready().await.is_ok(),
            Upstream::H2(s) => s.ready().await.is_ok(),
        }
    }
}

/// A connection to the original destination (HTTP/2 with prior knowledge when the client
/// spoke it, else HTTP/1.1), its packets marked with `mark`.
async fn connect(original: SocketAddr, mark: u32, h2: bool) -> io::Result<Upstream> {
    let sock = match original {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, mark)?;
    let stream = sock.connect(original).await?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    if h2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "L7 proxy upstream connection ended");
            }
        });
        return Ok(Upstream::H2(sender));
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "L7 proxy upstream connection ended");
        }
    });
    Ok(Upstream::H1(sender))
}
