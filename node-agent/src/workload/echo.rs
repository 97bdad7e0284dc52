//! Echo servers of test workloads: TCP listeners created inside the workload's network
//! namespace (a socket keeps the namespace it was created in) and served by the agent's
//! runtime. Each connection gets one answer, [`echo_reply`], to the first line it sends.

use std::io;
use std::net::{Ipv6Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use weft_model::workload::echo_reply;

/// Longest line read from a client.
const MAX_LINE: usize = 1024;
/// A client that sends nothing is closed after this.
const IDLE: Duration = Duration::from_secs(10);

/// Binds `[::]:port` (both families: a dual-stack workload answers on either) inside the namespace at `netns`, on a short-lived thread that
/// entered it (the calling thread and the runtime stay where they are).
pub fn bind_in(netns: &Path, port: u16) -> io::Result<TcpListener> {
    let path: PathBuf = netns.to_path_buf();
    std::thread::spawn(move || {
        let _in = crate::netns::enter_netns(&path)?;
        let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .map_err(|_| io::Error::other("the bind thread panicked"))?
}

/// A running echo server; stops accepting when dropped (connections in progress finish).
#[derive(Debug)]
pub struct Echo {
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `listener` on the current runtime, answering as workload `name`.
pub fn serve(name: &str, listener: TcpListener) -> io::Result<Echo> {
    let l = tokio::net::TcpListener::from_std(listener)?;
    let name = name.to_string();
    let task = tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(answer(name.clone(), s));
                }
                Err(e) => {
                    tracing::warn!(workload = %name, error = %e, "echo accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(Echo { task })
}

async fn answer(name: String, mut s: tokio::net::TcpStream) {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    let read = tokio::time::timeout(IDLE, async {
        while !buf.contains(&b'\n') && buf.len() < MAX_LINE {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let end = buf
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(buf.len())
        .min(MAX_LINE);
    let line = String::from_utf8_lossy(&buf[..end]);
    let _ = s.write_all(echo_reply(&name, &line).as_bytes()).await;
    let _ = s.shutdown().await;
}
