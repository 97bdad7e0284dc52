//! Serves the REST router on a listener (plain TCP or [`crate::tls::TlsListener`]) with the
//! connection timeouts `axum::serve` leaves out: it gives hyper no timer, so a client that
//! sends half a request line (or nothing) held its connection and task forever. Here a
//! request's head must arrive within [`HEADER_READ`] and an HTTP/2 peer must answer pings;
//! a slow body is bounded by the router's request timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

/// Time for a request's line and headers, from the connection's start or the end of the
/// previous response (an idle keep-alive connection is closed after it too).
pub const HEADER_READ: Duration = Duration::from_secs(10);
/// HTTP/2: a ping this often, and the connection closed when one goes unanswered this long.
const H2_PING: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` until `stop` completes, then lets the requests in flight finish (the
/// connections close after their current response) and returns once all have.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .enable_connect_protocol();
    // Every connection task holds a receiver: `closed()` on the sender resolves once the
    // last one is gone. Sending tells them to shut down gracefully.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let router = router.clone();
        let service = tower::service_fn(move |mut req: axum::http::Request<Incoming>| {
            // What `into_make_service_with_connect_info` would have lent the extractors.
            req.extensions_mut().insert(ConnectInfo(addr));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let builder = builder.clone();
        let mut stopping = stop_rx.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(io),
                TowerToHyperService::new(service),
            );
            tokio::pin!(conn);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(%addr, error = %e, "connection ended");
                    }
                    return;
                }
                _ = stopping.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "connection ended while stopping");
            }
            drop(stopping);
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    stop_tx.closed().await;
    Ok(())
}
