//! The web console (`web-console/`, built to static files) at `/console/`.
//!
//! Same origin as the API: no CORS, and the session cookie goes with every call and with
//! `EventSource`. Paths that are not files get `index.html` (the console routes in the
//! browser); hashed files under `assets/` are cached for good; a strict Content Security
//! Policy allows nothing from elsewhere (no CDN, no web fonts).

use std::path::{Path, PathBuf};

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use tower_http::services::{ServeDir, ServeFile};

use crate::error::ApiError;
use crate::state::AppState;

/// Where the console is served.
pub const PREFIX: &str = "/console";

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:";

/// Vite writes content-hashed file names under `assets/`: they never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `/`, `/console` and `/console/*`: the built console in `dir`, or, without one, a 404
/// problem saying that this server has no console.
pub fn router(dir: Option<&Path>) -> Router<AppState> {
    let Some(dir) = dir else {
        let not_served = || async {
            ApiError::NotFound(
                "this server does not serve the web console: start control-api with \
                 --console-dir (WEFT_CONSOLE_DIR) pointing at web-console/dist"
                    .into(),
            )
        };
        return Router::new()
            .route("/", get(not_served))
            .route(PREFIX, get(not_served))
            .route(&format!("{PREFIX}/"), get(not_served))
            .route(&format!("{PREFIX}/{{*path}}"), get(not_served));
    };
    let dir: PathBuf = dir.to_path_buf();
    // A missing hashed asset is a 404, not the index page under a script's name.
    let assets = ServeDir::new(dir.join("assets"));
    let pages = ServeDir::new(&dir).fallback(ServeFile::new(dir.join("index.html")));
    Router::new()
        .route("/", get(|| async { Redirect::to(&format!("{PREFIX}/")) }))
        .nest_service(&format!("{PREFIX}/assets"), assets)
        .nest_service(PREFIX, pages)
        .layer(middleware::from_fn(headers))
}

/// CSP on everything; `immutable` for hashed assets, revalidation for the rest (so a new
/// build's `index.html` is picked up at once).
async fn headers(req: Request, next: Next) -> Response {
    let hashed = req.uri().path().starts_with(&format!("{PREFIX}/assets/"));
    let mut resp = next.run(req).await.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let cache = if hashed && resp.status().is_success() {
        IMMUTABLE
    } else {
        "no-cache"
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}
