//! Assembles the HTTP application and serves it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, StatusCode};
use axum::{middleware, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::{ServeConfig, MIN_OPERATOR_TOKEN_LEN};
use crate::error::ApiError;
use crate::extract::BODY_LIMIT;
use crate::install::InstallConfig;
use crate::metrics;
use crate::oidc::Oidc;
use crate::ratelimit::FailureLimiter;
use crate::state::AppState;
use crate::{api, auth, console, db};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP application. Tests drive it with `oneshot`, no socket needed.
pub fn app(state: AppState) -> Router {
    let (router, spec) = api::routes().split_for_parts();
    let timeout = state.request_timeout;
    router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
        .merge(console::router(state.console_dir.as_deref()))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("this route does not accept that method".into())
        })
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                let span = tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id);
                // A caller's W3C trace context makes this request part of its trace.
                if let Some(tp) = req.headers().get(weft_telemetry::TRACEPARENT).and_then(|v| v.to_str().ok()) {
                    weft_telemetry::TraceParent::adopt_str(tp, &span);
                }
                span
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// Connects, migrates and builds the shared state.
pub async fn state(cfg: &ServeConfig) -> anyhow::Result<AppState> {
    let url = cfg
        .database_url
        .as_deref()
        .context("no database: pass --database-url or set DATABASE_URL")?;
    let operator_token_hash = match cfg.operator_token.as_deref() {
        Some(t) if t.len() < MIN_OPERATOR_TOKEN_LEN => {
            anyhow::bail!("the operator token must be at least {MIN_OPERATOR_TOKEN_LEN} characters")
        }
        Some(t) => Some(auth::hash_token(t)),
        None => None,
    };
    let oidc = Oidc::from_config(&cfg.oidc)?.map(Arc::new);
    if let Some(dir) = &cfg.console_dir {
        anyhow::ensure!(
            dir.join("index.html").is_file(),
            "--console-dir {}: no index.html there (build the console: `npm run build` in web-console/)",
            dir.display()
        );
    }
    db::migrate(url).await?;
    let pool = db::connect(url, cfg.db_max_connections).await?;
    let agent_ca_pem = match &cfg.agent_tls_cert {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let agent_binary = cfg.agent_binary.clone().or_else(|| {
        let beside = std::env::current_exe().ok()?.with_file_name("node-agent");
        beside.is_file().then_some(beside)
    });
    let install = InstallConfig::new(
        agent_binary,
        cfg.public_url.clone(),
        cfg.public_agent_url.clone(),
        cfg.agent_listen.port(),
        cfg.agent_tls_cert.is_some(),
        agent_ca_pem,
    );
    Ok(AppState::new(
        pool,
        operator_token_hash,
        oidc,
        FailureLimiter::new(cfg.auth_failure_limit, crate::ratelimit::WINDOW),
    )
    .with_install(install)
    .with_console(cfg.console_dir.clone())
    .with_request_timeout(Duration::from_secs(cfg.request_timeout_seconds)))
}

/// Serves REST and the agent service until SIGTERM or Ctrl-C, then lets requests in
/// flight finish.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let state = state(&cfg).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, "control-api serving");
    state.start_housekeeping(
        Duration::from_secs(cfg.identity_gc_grace_seconds),
        cfg.flow_retention_days,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let tls = match (&cfg.agent_tls_cert, &cfg.agent_tls_key) {
        (Some(cert), Some(key)) => Some(crate::agent::Tls::load(cert, key)?),
        _ => None,
    };
    let agent = crate::agent::serve(
        state.clone(),
        cfg.agent_listen,
        tls,
        stopped(stop_rx.clone()),
    );
    let tasks = state.tasks.clone();
    let rest_tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let router = app(state);
    let rest = async {
        match rest_tls {
            Some(config) => {
                // Browsers that reached the API over TLS keep to it.
                let router =
                    router.layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
                        axum::http::header::STRICT_TRANSPORT_SECURITY,
                        axum::http::HeaderValue::from_static("max-age=31536000"),
                    ));
                let listener = crate::tls::TlsListener::new(listener, config)?;
                crate::server::serve(listener, router, stopped(stop_rx))
                    .await
                    .context("serving HTTPS")
            }
            None => crate::server::serve(listener, router, stopped(stop_rx))
                .await
                .context("serving HTTP"),
        }
    };
    let served = tokio::try_join!(rest, agent);
    // Requests are done (or failed to start): stop the background tasks and wait for them.
    tasks.shutdown().await;
    served?;
    tracing::info!("control-api stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
