//! A small HTTP/1.1 server and client for L7 tests and probes: the server answers every
//! request `200` with `<name> <METHOD> <path>` (keep-alive, pipelined requests in order);
//! the client sends requests one after the other on one connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{set_recv_timeout, Server};
use crate::netns::NetNs;

fn find(buf: &[u8], pat: &[u8]) -> Option<usize> {
    buf.windows(pat.len()).position(|w| w == pat)
}

/// The `Content-Length` of a message head (0 when absent).
fn content_length(head: &str) -> usize {
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Serves one connection until the client closes it.
fn serve_connection(mut s: TcpStream, name: &str) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = content_length(&head);
            if buf.len() < end + 4 + len {
                break;
            }
            buf.drain(..end + 4 + len);
            let mut line = head.split("\r\n").next().unwrap_or_default().split(' ');
            let (method, path) = (line.next().unwrap_or("?"), line.next().unwrap_or("?"));
            let body = format!("{name} {method} {path}\n");
            // One write: pieces would wait on Nagle for the client's delayed ACK.
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(reply.as_bytes())?;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl Server {
    /// HTTP/1.1 on `[::]:port` in `ns` (both families), a thread per connection.
    pub fn http(ns: &NetNs, port: u16, name: &str) -> io::Result<Server> {
        let name = name.to_string();
        let bind = move || {
            let l = TcpListener::bind(("::", port))?;
            set_recv_timeout(&l, Duration::from_millis(100))?;
            Ok(l)
        };
        Server::start(ns, bind, move |l, stop| {
            while !stop.load(Ordering::Relaxed) {
                let Ok((s, _)) = l.accept() else { continue };
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let name = name.clone();
                std::thread::spawn(move || serve_connection(s, &name));
            }
            Ok(())
        })
    }
}

/// One HTTP response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// Sends `requests` (each a whole message: head and body) on one connection to `target`,
/// waiting for each response before the next, and returns the responses. A connection the
/// far end closes early ends the list.
pub fn http_exchange(
    target: SocketAddr,
    requests: &[String],
    timeout: Duration,
) -> io::Result<Vec<HttpReply>> {
    let mut s = TcpStream::connect_timeout(&target, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    let mut out = Vec::with_capacity(requests.len());
    let mut buf = Vec::new();
    for req in requests {
        s.write_all(req.as_bytes())?;
        match read_reply(&mut s, &mut buf)? {
            Some(reply) => out.push(reply),
            None => return Ok(out),
        }
    }
    Ok(out)
}

/// Reads one response from `s` (`buf` keeps what came beyond it); `None` when the far end
/// closed first.
pub fn read_reply(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<HttpReply>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = content_length(&head);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
                return Ok(Some(HttpReply { status, body }));
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A request message: `method path` with a Host header, the extra headers, and a body.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: weft.test\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    r
}

/// Runs `f` on a current-thread tokio runtime of its own (the test servers and clients
/// live on plain threads inside a namespace).
fn block_on<T>(f: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

impl Server {
    /// HTTP/2 with prior knowledge (h2c, as gRPC speaks it) on `[::]:port` in `ns`: answers
    /// every request `200` with `<name> <METHOD> <path>`.
    pub fn h2(ns: &NetNs, port: u16, name: &str) -> io::Result<Server> {
        use http_body_util::Full;
        let name = name.to_string();
        let bind = move || {
            let l = TcpListener::bind(("::", port))?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        Server::start(ns, bind, move |l, stop| {
            block_on(async move {
                let l = tokio::net::TcpListener::from_std(l)?;
                while !stop.load(Ordering::Relaxed) {
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(100), l.accept()).await;
                    let Ok(Ok((s, _))) = accepted else { continue };
                    let name = name.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                            let body = format!("{name} {} {}\n", req.method(), req.uri().path());
                            async move {
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    bytes::Bytes::from(body),
                                )))
                            }
                        });
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                    });
                }
                Ok(())
            })
        })
    }
}

/// Sends `requests` (method, path) as HTTP/2 with prior knowledge on one connection to
/// `target`, one after the other, and returns the responses.
pub fn h2_exchange(
    target: SocketAddr,
    requests: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<Vec<HttpReply>> {
    use http_body_util::{BodyExt, Empty};
    block_on(async move {
        let s = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(s),
        )
        .await
        .map_err(io::Error::other)?;
        tokio::spawn(conn);
        let mut out = Vec::with_capacity(requests.len());
        for (method, path) in requests {
            let req = hyper::Request::builder()
                .method(*method)
                .uri(format!("http://weft.test{path}"))
                .body(Empty::<bytes::Bytes>::new())
                .map_err(io::Error::other)?;
            let exchange = async {
                let resp = sender.send_request(req).await.map_err(io::Error::other)?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(io::Error::other)?
                    .to_bytes();
                Ok::<_, io::Error>(HttpReply {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                })
            };
            let reply = tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            out.push(reply);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_give_their_content_length() {
        assert_eq!(content_length("POST / HTTP/1.1\r\ncontent-length: 12"), 12);
        assert_eq!(content_length("GET / HTTP/1.1\r\nHost: x"), 0);
        assert_eq!(find(b"ab\r\n\r\ncd", b"\r\n\r\n"), Some(2));
    }
}
